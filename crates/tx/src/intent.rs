//! The intent: what a transaction does, in the terms an approver checks, and its one
//! canonical encoding, whose hash approvals sign.
//!
//! Encoding (every field [`put`]: u32 big-endian length, then the bytes): the domain
//! [`INTENT_DOMAIN`], the chain (`bitcoin`), then for Bitcoin the network name, the
//! transaction version (i32 BE), the lock time (u32 BE), the input count (u32 BE) and per
//! input its previous txid (32 bytes, in the transaction's byte order), vout (u32 BE),
//! sequence (u32 BE), value in sat (u64 BE), kind (one byte,
//! [`InputKind::tag`]) and derivation path (each step u32 BE, hardened steps with the high
//! bit); the output count (u32 BE) and per output its script, amount in sat (u64 BE) and
//! change path (empty field for an external output, else a one byte `1` field followed by
//! the path field); and the fee in sat (u64 BE). For Ethereum, the chain `ethereum` and one
//! field, the intent's JSON ([`ethereum`]). [`Intent::hash`] is SHA-256 of it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use custos_wire::field::put;

pub mod ethereum;
pub use ethereum::{Erc20Call, EthMessage, EthTransaction, EthTypedData, EthereumIntent};

/// Domain separation tag of intent encodings.
pub const INTENT_DOMAIN: &[u8] = b"CUSTOS-INTENT-V1\0";

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "chain", rename_all = "snake_case")]
pub enum Intent {
    /// A Bitcoin transaction (from a PSBT).
    Bitcoin(BitcoinIntent),
    /// An Ethereum transaction, personal message or typed data.
    Ethereum(EthereumIntent),
}

/// A Bitcoin transaction as its approvers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitcoinIntent {
    /// `bitcoin`, `testnet`, `signet` or `regtest`: how addresses are written.
    pub network: String,
    /// The transaction's version (2 enables relative lock times).
    pub version: i32,
    /// The transaction's lock time.
    pub lock_time: u32,
    /// Every input, each the wallet's own.
    pub inputs: Vec<BitcoinInput>,
    /// Every output.
    pub outputs: Vec<BitcoinOutput>,
    /// Inputs minus outputs, sat.
    pub fee_sat: u64,
}

/// One input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitcoinInput {
    /// The id of the transaction whose output it spends, hex in the usual (displayed,
    /// reversed) order.
    #[serde(with = "hex::serde")]
    pub txid: [u8; 32],
    /// That output's index.
    pub vout: u32,
    /// The input's sequence (relative lock time, replaceability, whether the lock time
    /// holds).
    pub sequence: u32,
    /// Its value, sat (proven by its previous transaction for segwit v0, committed to by
    /// the signature for taproot).
    pub value_sat: u64,
    /// The script kind spent.
    pub kind: InputKind,
    /// The wallet path of its key (hardened steps with the high bit set;
    /// [`path_string`] writes it as `m/84'/0'/0'/0/3`).
    pub path: Vec<u32>,
}

/// One output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitcoinOutput {
    /// Its address on the network, when the script has one: written from the script when
    /// the intent is built, never read back (not encoded, being a function of the script
    /// and the network; [`Intent::describe`] writes it again from the script).
    #[serde(default, skip_deserializing)]
    pub address: Option<String>,
    /// Its script.
    #[serde(with = "hex::serde")]
    pub script: Vec<u8>,
    /// Amount, sat.
    pub amount_sat: u64,
    /// The wallet path it returns to, when it is change (its script is the one the wallet
    /// derives there); `None`: it leaves the wallet.
    pub change_path: Option<Vec<u32>>,
}

/// The script kinds signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Native segwit v0 key hash.
    P2wpkh,
    /// Segwit v0 key hash nested in P2SH.
    P2shP2wpkh,
    /// Taproot, key path, no script tree (BIP-86).
    P2trKeyPath,
}

impl InputKind {
    /// Its byte in the intent encoding.
    pub fn tag(self) -> u8 {
        match self {
            InputKind::P2wpkh => 1,
            InputKind::P2shP2wpkh => 2,
            InputKind::P2trKeyPath => 3,
        }
    }
}

/// A path as `m/84'/0'/0'/0/3`.
pub fn path_string(path: &[u32]) -> String {
    let mut s = String::from("m");
    for &step in path {
        if step & 0x8000_0000 != 0 {
            s.push_str(&format!("/{}'", step & 0x7fff_ffff));
        } else {
            s.push_str(&format!("/{step}"));
        }
    }
    s
}

fn put_path(out: &mut Vec<u8>, path: &[u32]) {
    let bytes: Vec<u8> = path.iter().flat_map(|s| s.to_be_bytes()).collect();
    put(out, &bytes);
}

impl Intent {
    /// The canonical encoding (module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        put(&mut out, INTENT_DOMAIN);
        match self {
            Intent::Bitcoin(b) => {
                put(&mut out, b"bitcoin");
                b.encode_into(&mut out);
            }
            Intent::Ethereum(e) => {
                put(&mut out, b"ethereum");
                put(
                    &mut out,
                    &serde_json::to_vec(e).expect("an intent always serializes"),
                );
            }
        }
        out
    }

    /// SHA-256 of [`Intent::encode`]: what approvals sign.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The intent as lines an approver reads.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Intent::Bitcoin(b) => b.describe(),
            Intent::Ethereum(e) => e.describe(),
        }
    }
}

impl BitcoinIntent {
    fn encode_into(&self, out: &mut Vec<u8>) {
        put(out, self.network.as_bytes());
        put(out, &self.version.to_be_bytes());
        put(out, &self.lock_time.to_be_bytes());
        put(out, &(self.inputs.len() as u32).to_be_bytes());
        for i in &self.inputs {
            let mut txid = i.txid;
            // Shown in the usual (reversed) order; encoded in the transaction's.
            txid.reverse();
            put(out, &txid);
            put(out, &i.vout.to_be_bytes());
            put(out, &i.sequence.to_be_bytes());
            put(out, &i.value_sat.to_be_bytes());
            put(out, &[i.kind.tag()]);
            put_path(out, &i.path);
        }
        put(out, &(self.outputs.len() as u32).to_be_bytes());
        for o in &self.outputs {
            put(out, &o.script);
            put(out, &o.amount_sat.to_be_bytes());
            match &o.change_path {
                None => put(out, &[]),
                Some(p) => {
                    put(out, &[1]);
                    put_path(out, p);
                }
            }
        }
        put(out, &self.fee_sat.to_be_bytes());
    }

    /// Sum of the outputs that leave the wallet, sat.
    pub fn sent_sat(&self) -> u64 {
        self.outputs
            .iter()
            .filter(|o| o.change_path.is_none())
            .map(|o| o.amount_sat)
            .sum()
    }

    fn describe(&self) -> Vec<String> {
        let btc = |sat: u64| format!("{}.{:08} BTC", sat / 100_000_000, sat % 100_000_000);
        let mut lines = vec![format!(
            "Bitcoin ({}): send {} to {} recipient(s), fee {}; version {}, lock time {}",
            self.network,
            btc(self.sent_sat()),
            self.outputs
                .iter()
                .filter(|o| o.change_path.is_none())
                .count(),
            btc(self.fee_sat),
            self.version,
            self.lock_time
        )];
        for o in &self.outputs {
            let to = crate::btc::address_of(&o.script, &self.network)
                .unwrap_or_else(|| format!("script {}", hex::encode(&o.script)));
            lines.push(match &o.change_path {
                None => format!("  pay    {} to {to}", btc(o.amount_sat)),
                Some(p) => format!(
                    "  change {} to {to} (wallet {})",
                    btc(o.amount_sat),
                    path_string(p)
                ),
            });
        }
        for i in &self.inputs {
            lines.push(format!(
                "  spend  {} from {}:{} ({:?}, wallet {}, sequence {:#x})",
                btc(i.value_sat),
                hex::encode(i.txid),
                i.vout,
                i.kind,
                path_string(&i.path),
                i.sequence
            ));
        }
        lines
    }
}
