//! What a TEE reads of threshold keys after opening a sealed dealer bundle or its own
//! store: a key share, an incomplete share, auxiliary data, a stored presignature, a
//! primes set, a sealed primes file; and another party's protocol message in a threshold session (read after
//! its sender's signature was checked, by every participant). The first byte picks the
//! decoder.
#![no_main]

use custos_threshold::{
    inspect, AuxInfo, IncompleteShare, Primes, ProtocolKind, StoredPresignature, ThresholdShare,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => drop(ThresholdShare::from_bytes(body)),
        1 => drop(IncompleteShare::from_bytes(body)),
        2 => drop(AuxInfo::from_bytes(body)),
        3 => drop(StoredPresignature::from_bytes(body)),
        4 => drop(Primes::from_bytes(body)),
        5 => drop(custos_wire::primes::decode_sealed_primes(body)),
        6 => drop(inspect(ProtocolKind::Sign, body)),
        7 => drop(inspect(ProtocolKind::Presign, body)),
        8 => drop(inspect(ProtocolKind::Keygen, body)),
        _ => drop(inspect(ProtocolKind::AuxInfo, body)),
    }
});
