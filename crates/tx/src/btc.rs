//! Bitcoin: a PSBT (BIP-174) checked, its intent built and its signature hashes computed
//! here, never taken from the caller.
//!
//! [`plan_psbt`] accepts a PSBT only when every input is the wallet's own (a derivation under
//! the wallet's fingerprint whose key the wallet derives and whose script it owns: P2WPKH,
//! P2SH-P2WPKH, or P2TR key path without a script tree), every input's value is proven
//! (segwit v0: its whole previous transaction, matching; taproot: the signature commits to
//! every spent output), and every input asks for `SIGHASH_ALL` (or taproot's default). An
//! output is change when its PSBT entry names a wallet path and the wallet's key there owns
//! its script; any other output leaves the wallet. The plan holds the intent, one
//! [`SignJob`] per input (its path and signature hash) and, once the caller signed each with
//! the key it derives, [`PsbtPlan::finish`] returns the PSBT with the signatures in place.

use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{self, All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, Amount, CompressedPublicKey, Network, ScriptBuf, TxOut, XOnlyPublicKey};

use crate::intent::{BitcoinInput, BitcoinIntent, BitcoinOutput, InputKind, Intent};
use crate::TxError;

/// Largest PSBT accepted, bytes.
pub const MAX_PSBT_BYTES: usize = 1024 * 1024;
/// Most inputs of one PSBT.
pub const MAX_INPUTS: usize = 500;
/// Most outputs of one PSBT.
pub const MAX_OUTPUTS: usize = 500;
/// Most key origins under the wallet's fingerprint tried per output and kind to recognise
/// change (a wallet names one).
const MAX_ORIGINS_TRIED: usize = 4;

/// The wallet whose keys sign: its BIP-32 master fingerprint and its public key at a path
/// (the TEE derives it from the seed it holds; hardened steps included).
pub trait WalletKeys {
    /// The master key's fingerprint, as PSBT key origins name it.
    fn fingerprint(&self) -> [u8; 4];
    /// The public key at `path`.
    fn public_key(&self, path: &[u32]) -> Result<secp256k1::PublicKey, TxError>;
}

impl<T: WalletKeys + ?Sized> WalletKeys for &T {
    fn fingerprint(&self) -> [u8; 4] {
        (**self).fingerprint()
    }

    fn public_key(&self, path: &[u32]) -> Result<secp256k1::PublicKey, TxError> {
        (**self).public_key(path)
    }
}

/// The keys of an extended public key (a watch-only wallet): what a PSBT's intent is
/// computed with outside the TEE, for paths without hardened steps below it.
pub struct XpubKeys(pub bitcoin::bip32::Xpub);

impl WalletKeys for XpubKeys {
    fn fingerprint(&self) -> [u8; 4] {
        self.0.fingerprint().to_bytes()
    }

    fn public_key(&self, path: &[u32]) -> Result<secp256k1::PublicKey, TxError> {
        let steps: Vec<bitcoin::bip32::ChildNumber> = path.iter().map(|&s| s.into()).collect();
        self.0
            .derive_pub(&Secp256k1::verification_only(), &steps)
            .map(|x| x.public_key)
            .map_err(|e| TxError::Signing(format!("{}: {e}", crate::intent::path_string(path))))
    }
}

/// One signature to make: input `input` with the key at `path`, over `sighash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignJob {
    /// Input index.
    pub input: usize,
    /// Wallet path of the key.
    pub path: Vec<u32>,
    /// Script kind (ECDSA for segwit v0, Schnorr with the BIP-86 tweak for taproot).
    pub kind: InputKind,
    /// The signature hash this crate computed.
    pub sighash: [u8; 32],
    /// The key the wallet derives at `path` (untweaked for taproot).
    pub public_key: secp256k1::PublicKey,
    /// Taproot: whether the PSBT asked for `SIGHASH_ALL` explicitly (else the default).
    explicit_all: bool,
}

/// A checked PSBT: its intent and the signatures it needs (read-only: what was planned is
/// what [`PsbtPlan::finish`] places).
pub struct PsbtPlan {
    psbt: Psbt,
    intent: Intent,
    jobs: Vec<SignJob>,
}

/// A signature made for a [`SignJob`].
pub enum InputSignature {
    /// Segwit v0.
    Ecdsa(secp256k1::ecdsa::Signature),
    /// Taproot key path.
    Schnorr(secp256k1::schnorr::Signature),
}

/// The network's name in intents.
pub fn network_name(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "bitcoin",
        Network::Testnet => "testnet",
        Network::Signet => "signet",
        Network::Regtest => "regtest",
        _ => "unknown",
    }
}

/// The address of `script` on the network named `network` ([`network_name`]), if it has one.
pub fn address_of(script: &[u8], network: &str) -> Option<String> {
    let network = [
        Network::Bitcoin,
        Network::Testnet,
        Network::Signet,
        Network::Regtest,
    ]
    .into_iter()
    .find(|n| network_name(*n) == network)?;
    Address::from_script(bitcoin::Script::from_bytes(script), network)
        .ok()
        .map(|a| a.to_string())
}

fn value(input: usize, v: Amount, what: &str) -> Result<u64, TxError> {
    if v > Amount::MAX_MONEY {
        return Err(TxError::ValueOutOfRange {
            what: format!("{what} #{input}"),
        });
    }
    Ok(v.to_sat())
}

/// Checks `bytes` (a binary PSBT) as a spend of the wallet `keys` on `network` and plans its
/// signatures (module documentation).
pub fn plan_psbt(
    bytes: &[u8],
    network: Network,
    keys: &impl WalletKeys,
) -> Result<PsbtPlan, TxError> {
    if bytes.len() > MAX_PSBT_BYTES {
        return Err(TxError::TooLarge {
            what: "PSBT bytes",
            len: bytes.len(),
            max: MAX_PSBT_BYTES,
        });
    }
    let psbt = Psbt::deserialize(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
    let tx = &psbt.unsigned_tx;
    let (n_in, n_out) = (tx.input.len(), tx.output.len());
    if n_in == 0 {
        return Err(TxError::NoInputs);
    }
    if n_out == 0 {
        return Err(TxError::NoOutputs);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in tx.input.iter().enumerate() {
        if !seen.insert(input.previous_output) {
            return Err(TxError::DuplicateInput { input: i });
        }
    }
    for (what, len, max) in [
        ("inputs", n_in, MAX_INPUTS),
        ("outputs", n_out, MAX_OUTPUTS),
    ] {
        if len > max {
            return Err(TxError::TooLarge { what, len, max });
        }
    }
    let secp = Secp256k1::verification_only();
    let fingerprint = Fingerprint::from(keys.fingerprint());
    let mut spent = Vec::with_capacity(n_in);
    let mut owned = Vec::with_capacity(n_in);
    for i in 0..n_in {
        let (utxo, kind) = spent_output(&psbt, i)?;
        let (path, public_key, explicit_all) = input_key(&psbt, i, kind, fingerprint, keys)?;
        owns_script(&secp, kind, &public_key, &utxo.script_pubkey)
            .map_err(|reason| TxError::KeyMismatch { input: i, reason })?;
        owned.push((kind, path, public_key, explicit_all));
        spent.push(utxo);
    }
    // A v0 signature commits to its own input's value only: if a taproot input's value
    // were misstated next to it, the v0 signatures would still hold for a fee nobody saw.
    if owned.iter().any(|o| o.0 != InputKind::P2trKeyPath) {
        if let Some(i) = (0..n_in).find(|&i| {
            owned[i].0 == InputKind::P2trKeyPath && psbt.inputs[i].non_witness_utxo.is_none()
        }) {
            return Err(TxError::InputValueUnproven { input: i });
        }
    }
    let sighashes = sighashes(&psbt, &spent, &owned)?;
    let mut inputs = Vec::with_capacity(n_in);
    let mut jobs = Vec::with_capacity(n_in);
    let mut total_in: u64 = 0;
    for (i, ((kind, path, public_key, explicit_all), sighash)) in
        owned.into_iter().zip(sighashes).enumerate()
    {
        let v = value(i, spent[i].value, "input")?;
        total_in += v;
        let prev = tx.input[i].previous_output;
        let mut txid = prev.txid.to_byte_array();
        txid.reverse();
        inputs.push(BitcoinInput {
            txid,
            vout: prev.vout,
            sequence: tx.input[i].sequence.to_consensus_u32(),
            value_sat: v,
            kind,
            path: path.clone(),
        });
        jobs.push(SignJob {
            input: i,
            path,
            kind,
            sighash,
            public_key,
            explicit_all,
        });
    }
    let mut outputs = Vec::with_capacity(n_out);
    let mut total_out: u64 = 0;
    for (o, out) in tx.output.iter().enumerate() {
        let amount = value(o, out.value, "output")?;
        total_out += amount;
        outputs.push(BitcoinOutput {
            address: address_of(out.script_pubkey.as_bytes(), network_name(network)),
            script: out.script_pubkey.to_bytes(),
            amount_sat: amount,
            change_path: change_path(&secp, &psbt, o, &out.script_pubkey, fingerprint, keys),
        });
    }
    if total_out > total_in {
        return Err(TxError::OutputsExceedInputs {
            inputs: total_in,
            outputs: total_out,
        });
    }
    let intent = Intent::Bitcoin(BitcoinIntent {
        network: network_name(network).into(),
        version: tx.version.0,
        lock_time: tx.lock_time.to_consensus_u32(),
        inputs,
        outputs,
        fee_sat: total_in - total_out,
    });
    Ok(PsbtPlan { psbt, intent, jobs })
}

/// The output input `i` spends and its kind, its value proven.
fn spent_output(psbt: &Psbt, i: usize) -> Result<(TxOut, InputKind), TxError> {
    let input = &psbt.inputs[i];
    if input.final_script_sig.is_some() || input.final_script_witness.is_some() {
        return Err(TxError::InputFinalized { input: i });
    }
    let prev = psbt.unsigned_tx.input[i].previous_output;
    // The previous transaction, when given, proves the output spent: it must hash to the
    // outpoint's txid, and the witness_utxo (when also given) must be its output.
    let proven = match &input.non_witness_utxo {
        Some(tx) => {
            if tx.compute_txid() != prev.txid {
                return Err(TxError::UtxoMismatch {
                    input: i,
                    reason: "its previous transaction hashes to another txid".into(),
                });
            }
            let out = tx
                .output
                .get(prev.vout as usize)
                .ok_or(TxError::UtxoMismatch {
                    input: i,
                    reason: format!("its previous transaction has no output {}", prev.vout),
                })?;
            Some(out.clone())
        }
        None => None,
    };
    let utxo = match (&input.witness_utxo, proven.as_ref()) {
        (Some(w), Some(p)) if w != p => {
            return Err(TxError::UtxoMismatch {
                input: i,
                reason: "its witness_utxo is not the previous transaction's output".into(),
            })
        }
        (Some(w), _) => w.clone(),
        // A segwit input given by its previous transaction only (BIP-174 allows it).
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(TxError::MissingUtxo { input: i }),
    };
    let script = &utxo.script_pubkey;
    let kind = if script.is_p2wpkh() {
        InputKind::P2wpkh
    } else if script.is_p2tr() {
        if input.tap_merkle_root.is_some() || !input.tap_scripts.is_empty() {
            return Err(TxError::TaprootScriptTree { input: i });
        }
        InputKind::P2trKeyPath
    } else if script.is_p2sh()
        && input
            .redeem_script
            .as_ref()
            .is_some_and(|r| r.is_p2wpkh() && ScriptBuf::new_p2sh(&r.script_hash()) == *script)
    {
        InputKind::P2shP2wpkh
    } else {
        return Err(TxError::UnsupportedScript {
            input: i,
            script: script.to_hex_string(),
        });
    };
    if proven.is_none() && kind != InputKind::P2trKeyPath {
        return Err(TxError::InputValueUnproven { input: i });
    }
    Ok((utxo, kind))
}

/// The wallet path and key of input `i` (the one derivation under the wallet's
/// fingerprint), checked against what the wallet derives there; and whether a taproot input
/// asked for `SIGHASH_ALL` explicitly.
fn input_key(
    psbt: &Psbt,
    i: usize,
    kind: InputKind,
    fingerprint: Fingerprint,
    keys: &impl WalletKeys,
) -> Result<(Vec<u32>, secp256k1::PublicKey, bool), TxError> {
    let input = &psbt.inputs[i];
    let foreign = || TxError::ForeignInput {
        input: i,
        fingerprint: fingerprint.to_string(),
    };
    let mismatch = |reason: String| TxError::KeyMismatch { input: i, reason };
    let sighash = input.sighash_type.map(|t| t.to_u32());
    let refused = |t: u32| TxError::SighashTypeRefused {
        input: i,
        sighash_type: t,
    };
    if kind == InputKind::P2trKeyPath {
        let explicit_all = match sighash {
            None | Some(0) => false,
            Some(1) => true,
            Some(t) => return Err(refused(t)),
        };
        let mut ours = input
            .tap_key_origins
            .iter()
            .filter(|(_, (leaves, (fp, _)))| *fp == fingerprint && leaves.is_empty());
        let (xonly, (_, (_, path))) = ours.next().ok_or_else(foreign)?;
        if ours.next().is_some() {
            return Err(mismatch("two key-path keys of this wallet".into()));
        }
        let path = steps(path);
        let key = keys.public_key(&path)?;
        if key.x_only_public_key().0 != *xonly {
            return Err(mismatch(format!(
                "the wallet's key at {} is not the input's",
                crate::intent::path_string(&path)
            )));
        }
        if input.tap_internal_key.is_some_and(|k| k != *xonly) {
            return Err(mismatch("its internal key is not the wallet's".into()));
        }
        return Ok((path, key, explicit_all));
    }
    if let Some(t) = sighash.filter(|t| *t != EcdsaSighashType::All as u32) {
        return Err(refused(t));
    }
    let mut ours = input
        .bip32_derivation
        .iter()
        .filter(|(_, (fp, _))| *fp == fingerprint);
    let (named, (_, path)) = ours.next().ok_or_else(foreign)?;
    if ours.next().is_some() {
        return Err(mismatch("two keys of this wallet".into()));
    }
    let path = steps(path);
    let key = keys.public_key(&path)?;
    if key != *named {
        return Err(mismatch(format!(
            "the wallet's key at {} is not the input's",
            crate::intent::path_string(&path)
        )));
    }
    Ok((path, key, false))
}

fn steps(path: &DerivationPath) -> Vec<u32> {
    path.into_iter().map(|c| u32::from(*c)).collect()
}

/// Whether `key` owns `script` as a `kind` output: `Err` says how it does not.
fn owns_script(
    secp: &Secp256k1<secp256k1::VerifyOnly>,
    kind: InputKind,
    key: &secp256k1::PublicKey,
    script: &ScriptBuf,
) -> Result<(), String> {
    if *script != script_of(secp, kind, key) {
        return Err(format!(
            "the key's {kind:?} script is not the output it spends"
        ));
    }
    Ok(())
}

/// The `kind` script of `key`.
fn script_of(
    secp: &Secp256k1<secp256k1::VerifyOnly>,
    kind: InputKind,
    key: &secp256k1::PublicKey,
) -> ScriptBuf {
    let compressed = CompressedPublicKey(*key);
    match kind {
        InputKind::P2wpkh => ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash()),
        InputKind::P2shP2wpkh => {
            let redeem = ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash());
            ScriptBuf::new_p2sh(&redeem.script_hash())
        }
        InputKind::P2trKeyPath => ScriptBuf::new_p2tr(secp, XOnlyPublicKey::from(*key), None),
    }
}

/// The wallet path output `o` returns to: a path its PSBT entry names under the wallet's
/// fingerprint at which the wallet's key owns the output's script.
fn change_path(
    secp: &Secp256k1<secp256k1::VerifyOnly>,
    psbt: &Psbt,
    o: usize,
    script: &ScriptBuf,
    fingerprint: Fingerprint,
    keys: &impl WalletKeys,
) -> Option<Vec<u32>> {
    let out = psbt.outputs.get(o)?;
    let kinds = [
        InputKind::P2wpkh,
        InputKind::P2shP2wpkh,
        InputKind::P2trKeyPath,
    ];
    // The key named must own the script before anything is derived (a hash or a tweak per
    // entry): only then is the wallet's key at its path derived, once, to confirm it. Only
    // the first few entries under the wallet's fingerprint are tried, so that a PSBT full of
    // them (whose preview needs no approval) cannot keep the TEE hashing.
    let ours = |origin: &&(Fingerprint, DerivationPath)| origin.0 == fingerprint;
    let v0 = out
        .bip32_derivation
        .iter()
        .filter(|(_, origin)| ours(origin))
        .take(MAX_ORIGINS_TRIED)
        .filter_map(|(key, origin)| {
            kinds[..2]
                .iter()
                .any(|k| script_of(secp, *k, key) == *script)
                .then_some(origin)
        });
    let tr = out
        .tap_key_origins
        .iter()
        .filter(|(_, (_, origin))| ours(&origin))
        .take(MAX_ORIGINS_TRIED)
        .filter_map(|(x, (_, origin))| {
            (ScriptBuf::new_p2tr(secp, *x, None) == *script).then_some(origin)
        });
    let (_, path) = v0.chain(tr).next()?;
    let path = steps(path);
    let key = keys.public_key(&path).ok()?;
    kinds
        .iter()
        .any(|k| script_of(secp, *k, &key) == *script)
        .then_some(path)
}

/// Each input's signature hash: BIP-143 for segwit v0 (its script code from the key hash),
/// BIP-341 key path for taproot (over every spent output).
pub(crate) fn sighashes(
    psbt: &Psbt,
    spent: &[TxOut],
    owned: &[(InputKind, Vec<u32>, secp256k1::PublicKey, bool)],
) -> Result<Vec<[u8; 32]>, TxError> {
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let prevouts = Prevouts::All(spent);
    let mut out = Vec::with_capacity(owned.len());
    for (i, (kind, _, key, explicit_all)) in owned.iter().enumerate() {
        let fail = |e: String| TxError::Signing(format!("input #{i}: {e}"));
        let hash = match kind {
            InputKind::P2wpkh | InputKind::P2shP2wpkh => {
                let script = ScriptBuf::new_p2wpkh(&CompressedPublicKey(*key).wpubkey_hash());
                cache
                    .p2wpkh_signature_hash(i, &script, spent[i].value, EcdsaSighashType::All)
                    .map_err(|e| fail(e.to_string()))?
                    .to_byte_array()
            }
            InputKind::P2trKeyPath => {
                let t = if *explicit_all {
                    TapSighashType::All
                } else {
                    TapSighashType::Default
                };
                cache
                    .taproot_key_spend_signature_hash(i, &prevouts, t)
                    .map_err(|e| fail(e.to_string()))?
                    .to_byte_array()
            }
        };
        out.push(hash);
    }
    Ok(out)
}

impl SignJob {
    /// Signs this job with `secret`, the wallet's private key at [`SignJob::path`] (checked
    /// against the job's key): ECDSA (RFC 6979, low-s) for segwit v0; for taproot, Schnorr
    /// with the key tweaked as BIP-86 says, `aux` the fresh randomness BIP-340 mixes in.
    pub fn sign(
        &self,
        secp: &Secp256k1<All>,
        secret: &SecretKey,
        aux: &[u8; 32],
    ) -> Result<InputSignature, TxError> {
        if secret.public_key(secp) != self.public_key {
            return Err(TxError::Signing(format!(
                "input #{}: the key given is not the wallet's at its path",
                self.input
            )));
        }
        let msg = Message::from_digest(self.sighash);
        Ok(match self.kind {
            InputKind::P2wpkh | InputKind::P2shP2wpkh => {
                InputSignature::Ecdsa(secp.sign_ecdsa(&msg, secret))
            }
            InputKind::P2trKeyPath => {
                let tweaked = Keypair::from_secret_key(secp, secret).tap_tweak(secp, None);
                InputSignature::Schnorr(secp.sign_schnorr_with_aux_rand(
                    &msg,
                    &tweaked.to_keypair(),
                    aux,
                ))
            }
        })
    }
}

impl PsbtPlan {
    /// What the transaction does.
    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    /// The signatures it needs, one per input, in input order.
    pub fn jobs(&self) -> &[SignJob] {
        &self.jobs
    }

    /// The PSBT (binary) with `signatures` (one per job, in job order) placed in its inputs:
    /// `partial_sigs` for segwit v0, `tap_key_sig` for taproot. Each is verified against its
    /// job's hash and key first.
    pub fn finish(mut self, signatures: Vec<InputSignature>) -> Result<Vec<u8>, TxError> {
        if signatures.len() != self.jobs.len() {
            return Err(TxError::Signing(format!(
                "{} signatures for {} inputs",
                signatures.len(),
                self.jobs.len()
            )));
        }
        let secp = Secp256k1::verification_only();
        for (job, sig) in self.jobs.iter().zip(signatures) {
            let msg = Message::from_digest(job.sighash);
            let input = &mut self.psbt.inputs[job.input];
            let bad = |e: secp256k1::Error| {
                TxError::Signing(format!(
                    "input #{}: signature does not verify: {e}",
                    job.input
                ))
            };
            match sig {
                InputSignature::Ecdsa(s) if job.kind != InputKind::P2trKeyPath => {
                    secp.verify_ecdsa(&msg, &s, &job.public_key).map_err(bad)?;
                    input.partial_sigs.insert(
                        bitcoin::PublicKey::new(job.public_key),
                        bitcoin::ecdsa::Signature::sighash_all(s),
                    );
                }
                InputSignature::Schnorr(s) if job.kind == InputKind::P2trKeyPath => {
                    let (output_key, _) =
                        XOnlyPublicKey::from(job.public_key).tap_tweak(&secp, None);
                    secp.verify_schnorr(&s, &msg, &output_key.to_x_only_public_key())
                        .map_err(bad)?;
                    input.tap_key_sig = Some(bitcoin::taproot::Signature {
                        signature: s,
                        sighash_type: if job.explicit_all {
                            TapSighashType::All
                        } else {
                            TapSighashType::Default
                        },
                    });
                }
                _ => {
                    return Err(TxError::Signing(format!(
                        "input #{}: a signature of the wrong kind",
                        job.input
                    )))
                }
            }
        }
        Ok(self.psbt.serialize())
    }
}

#[cfg(test)]
mod tests;
