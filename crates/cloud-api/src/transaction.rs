//! A transaction request's intent as the server shows it: approvers read it only after
//! checking that it hashes to the `intent_hash` they sign, so a server showing one
//! transaction and asking approval of another is caught before anything is signed (and the
//! TEE refuses a PSBT whose own intent is not the approved one).

use custos_tx::Intent;
use custos_wire::protocol::BitcoinNetwork;

use crate::TransactionView;

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

/// The intent `view` shows and its hash, once the hash it claims is the intent's own and
/// the intent is for the network it names.
pub fn checked_intent(view: &TransactionView) -> Result<(Intent, [u8; 32]), String> {
    let intent: Intent = serde_json::from_value(view.intent.clone())
        .map_err(|e| format!("the transaction's intent is unreadable: {e}"))?;
    let hash = intent.hash();
    if hex::encode(hash) != view.intent_hash.to_ascii_lowercase() {
        return Err(format!(
            "the intent shown hashes to {}, the request claims {}: refusing to sign",
            hex::encode(hash),
            view.intent_hash
        ));
    }
    let Intent::Bitcoin(b) = &intent;
    if b.network != view.network {
        return Err(format!(
            "the intent is for network {}, the request names {}",
            b.network, view.network
        ));
    }
    Ok((intent, hash))
}
