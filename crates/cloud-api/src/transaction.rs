//! A transaction request's intent as the server shows it: approvers read it only after
//! checking that it hashes to the `intent_hash` they sign, so a server showing one
//! transaction and asking approval of another is caught before anything is signed (and the
//! TEE refuses a PSBT whose own intent is not the approved one).

use custos_tx::Intent;
use custos_wire::protocol::BitcoinNetwork;

use crate::TransactionView;

/// The `network` of an Ethereum request's [`TransactionView`] (its chain id is the intent's).
pub const ETHEREUM: &str = "ethereum";

/// The `network` a [`TransactionView`] of `intent` names.
pub fn network_of(intent: &Intent) -> &str {
    match intent {
        Intent::Bitcoin(b) => &b.network,
        Intent::Ethereum(_) => ETHEREUM,
    }
}

/// The network names of the API, each with the wire's network.
pub const NETWORKS: [(&str, BitcoinNetwork); 4] = [
    ("bitcoin", BitcoinNetwork::Bitcoin),
    ("testnet", BitcoinNetwork::Testnet),
    ("signet", BitcoinNetwork::Signet),
    ("regtest", BitcoinNetwork::Regtest),
];

/// The wire's network of an API network name (no `testnet4`: the TEE signs for these four).
pub fn wire_network(name: &str) -> Result<BitcoinNetwork, String> {
    NETWORKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .ok_or_else(|| {
            format!("unknown network {name:?}: one of bitcoin, testnet, signet, regtest")
        })
}

/// The API's name of a network.
pub fn network_name(network: BitcoinNetwork) -> &'static str {
    NETWORKS
        .iter()
        .find(|(_, w)| *w == network)
        .map(|(n, _)| *n)
        .expect("every network is named")
}

/// The intent `view` shows and its hash, once the hash it claims is the intent's own, the
/// intent is for the network it names, and the JSON shown is exactly the TEE's form of it
/// (every field hashed, each Bitcoin address the one its script has): a client showing the
/// JSON as it is shows nothing the hash does not cover.
pub fn checked_intent(view: &TransactionView) -> Result<(Intent, [u8; 32]), String> {
    let mut intent: Intent = serde_json::from_value(view.intent.clone())
        .map_err(|e| format!("the transaction's intent is unreadable: {e}"))?;
    if let Intent::Bitcoin(b) = &mut intent {
        for o in &mut b.outputs {
            o.address = custos_tx::btc::address_of(&o.script, &b.network);
        }
    }
    if serde_json::to_value(&intent).ok().as_ref() != Some(&view.intent) {
        return Err(
            "the intent shown is not the TEE's form of it (an address that is not its \
             script's, or fields the hash does not cover): refusing to sign"
                .into(),
        );
    }
    let hash = intent.hash();
    if hex::encode(hash) != view.intent_hash.to_ascii_lowercase() {
        return Err(format!(
            "the intent shown hashes to {}, the request claims {}: refusing to sign",
            hex::encode(hash),
            view.intent_hash
        ));
    }
    let network = network_of(&intent);
    if network != view.network {
        return Err(format!(
            "the intent is for network {network}, the request names {}",
            view.network
        ));
    }
    Ok((intent, hash))
}
