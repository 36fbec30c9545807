//! Synthetic PSBTs, for benchmarks and tests only: spends of a wallet known by its extended
//! public key, built as a watch-only wallet builds them, but from made-up funding
//! transactions (one per input, so each input's value is proven by its previous
//! transaction). Outputs go to a recipient and optionally back to the wallet; every key
//! origin is named under the wallet's fingerprint. They spend nothing that exists.

use crate::btc::{WalletKeys, XpubKeys};
use crate::InputKind;
use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{PublicKey, Secp256k1};
use bitcoin::{
    absolute, transaction, Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Txid, Witness, XOnlyPublicKey,
};

/// The wallet side of a spend: its keys (an extended public key's, or any other
/// [`WalletKeys`]).
pub struct Spend<'a> {
    keys: Box<dyn WalletKeys + 'a>,
    inputs: Vec<(InputKind, Vec<u32>, u64)>,
    outputs: Vec<(ScriptBuf, u64, Option<Vec<u32>>)>,
}

/// The `kind` output script of `key`.
pub fn script_of(kind: InputKind, key: &PublicKey) -> ScriptBuf {
    let wpkh = ScriptBuf::new_p2wpkh(&CompressedPublicKey(*key).wpubkey_hash());
    match kind {
        InputKind::P2wpkh => wpkh,
        InputKind::P2shP2wpkh => ScriptBuf::new_p2sh(&wpkh.script_hash()),
        InputKind::P2trKeyPath => ScriptBuf::new_p2tr(
            &Secp256k1::verification_only(),
            XOnlyPublicKey::from(*key),
            None,
        ),
    }
}

impl Spend<'static> {
    /// A spend from the wallet `xpub` (an `xpub...` string; non-hardened paths below it).
    pub fn from(xpub: &str) -> Self {
        Spend::with(XpubKeys(xpub.parse().expect("an xpub")))
    }
}

impl<'a> Spend<'a> {
    /// A spend from the wallet whose keys are `keys`.
    pub fn with(keys: impl WalletKeys + 'a) -> Self {
        Spend {
            keys: Box::new(keys),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The wallet's key at `path`.
    pub fn key(&self, path: &[u32]) -> PublicKey {
        self.keys.public_key(path).expect("a path of the wallet")
    }

    /// Spends `sat` received at `path` as a `kind` output.
    pub fn input(mut self, kind: InputKind, path: &[u32], sat: u64) -> Self {
        self.inputs.push((kind, path.to_vec(), sat));
        self
    }

    /// Pays `sat` to `script`.
    pub fn pay(mut self, script: ScriptBuf, sat: u64) -> Self {
        self.outputs.push((script, sat, None));
        self
    }

    /// Returns `sat` to the wallet's P2WPKH at `path`, named as change.
    pub fn change(mut self, path: &[u32], sat: u64) -> Self {
        let script = script_of(InputKind::P2wpkh, &self.key(path));
        self.outputs.push((script, sat, Some(path.to_vec())));
        self
    }

    /// The PSBT.
    pub fn psbt(&self) -> Psbt {
        let fp = Fingerprint::from(self.keys.fingerprint());
        let origin = |p: &[u32]| {
            let steps: Vec<ChildNumber> = p.iter().map(|&s| s.into()).collect();
            (fp, DerivationPath::from(steps))
        };
        let funding: Vec<Transaction> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, (kind, path, sat))| Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: OutPoint::new(Txid::from_byte_array([i as u8 + 1; 32]), 0),
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                }],
                output: vec![TxOut {
                    value: Amount::from_sat(*sat),
                    script_pubkey: script_of(*kind, &self.key(path)),
                }],
            })
            .collect();
        let tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: funding
                .iter()
                .map(|f| TxIn {
                    previous_output: OutPoint::new(f.compute_txid(), 0),
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: self
                .outputs
                .iter()
                .map(|(script, sat, _)| TxOut {
                    value: Amount::from_sat(*sat),
                    script_pubkey: script.clone(),
                })
                .collect(),
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).expect("an unsigned transaction");
        for (i, ((kind, path, _), f)) in self.inputs.iter().zip(&funding).enumerate() {
            let key = self.key(path);
            let input = &mut psbt.inputs[i];
            input.witness_utxo = Some(f.output[0].clone());
            input.non_witness_utxo = Some(f.clone());
            if *kind == InputKind::P2trKeyPath {
                let x = XOnlyPublicKey::from(key);
                input.tap_internal_key = Some(x);
                input.tap_key_origins.insert(x, (vec![], origin(path)));
            } else {
                input.bip32_derivation.insert(key, origin(path));
                if *kind == InputKind::P2shP2wpkh {
                    input.redeem_script = Some(script_of(InputKind::P2wpkh, &key));
                }
            }
        }
        for (o, (_, _, change)) in self.outputs.iter().enumerate() {
            if let Some(path) = change {
                psbt.outputs[o]
                    .bip32_derivation
                    .insert(self.key(path), origin(path));
            }
        }
        psbt
    }
}
