//! What a TEE reads of threshold keys after opening a sealed dealer bundle or its own
//! store: a key share, an incomplete share, auxiliary data, a stored presignature, a
//! primes file. The first byte picks the decoder.
#![no_main]

use custos_threshold::{AuxInfo, IncompleteShare, Primes, StoredPresignature, ThresholdShare};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => drop(ThresholdShare::from_bytes(body)),
        1 => drop(IncompleteShare::from_bytes(body)),
        2 => drop(AuxInfo::from_bytes(body)),
        3 => drop(StoredPresignature::from_bytes(body)),
        4 => drop(Primes::from_bytes(body)),
        _ => drop(Primes::list_from_bytes(body)),
    }
});
