//! What a TEE reads of a cluster key transfer once its HPKE ciphertext opened (sent by a
//! peer node of its cluster, which may be compromised): the length-prefixed record list,
//! then each record as a wallet or a threshold share, filed under a key id it must hold.
//! The first 33 bytes are the key id every record is filed under, the next byte the number
//! of key ids announced.
#![no_main]

use custos_tee_core::sync::unpack;
use custos_tee_core::threshold::HeldKey;
use custos_tee_core::wallet::Wallet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((key, rest)) = data.split_at_checked(33) else {
        return;
    };
    let Some((&expected, plaintext)) = rest.split_first() else {
        return;
    };
    let Ok(records) = unpack(plaintext, usize::from(expected % 8)) else {
        return;
    };
    let secp = bitcoin::secp256k1::Secp256k1::new();
    for record in records {
        if HeldKey::is_record(record) {
            drop(HeldKey::from_record(record, key));
        } else {
            drop(Wallet::from_record(&secp, record, key));
        }
    }
});
