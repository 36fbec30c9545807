//! What a TEE reads of a transaction to sign (issue 14): a binary PSBT planned as a spend of
//! a wallet, an Ethereum transaction's signing payload (legacy RLP or EIP-1559), EIP-712
//! typed data and an EIP-191 personal message. The first byte picks the decoder.
#![no_main]

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use custos_tx::btc::{plan_psbt, XpubKeys};
use custos_tx::eth::plan_eth;
use custos_wire::protocol::EthPayload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let secp = Secp256k1::new();
    // A fixed wallet: whose keys the inputs claim does not matter to the decoders.
    let root = Xpriv::new_master(Network::Regtest, &[7u8; 32]).expect("valid seed");
    let xpub = Xpub::from_priv(&secp, &root);
    match which % 4 {
        0 => drop(plan_psbt(body, Network::Regtest, &XpubKeys(xpub))),
        1 => drop(plan_eth(
            &EthPayload::Transaction(body.to_vec()),
            &[0, 1],
            &xpub.public_key,
        )),
        2 => drop(plan_eth(
            &EthPayload::TypedData(String::from_utf8_lossy(body).into_owned()),
            &[0, 1],
            &xpub.public_key,
        )),
        _ => drop(plan_eth(
            &EthPayload::PersonalMessage(body.to_vec()),
            &[0, 1],
            &xpub.public_key,
        )),
    }
});
