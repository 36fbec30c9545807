//! Key sync between the nodes of a cluster: wallets and threshold shares sealed to a peer's
//! certified device key, and such transfers opened and stored.

use custos_pki::TrustRoot;
use custos_wire::protocol::*;
use zeroize::Zeroizing;

use crate::platform::Platform;
use crate::sync;
use crate::threshold::HeldKey;
use crate::wallet::{key_hex, Wallet};
use crate::TeeCore;

/// Largest plaintext of one key transfer: the import request that carries it must stay under
/// [`MAX_REQUEST_LEN`] (a threshold share is about 14 KB, a wallet record under 100 bytes).
const MAX_TRANSFER_PLAINTEXT: usize = 3 * 1024 * 1024;

/// Refuses a key list that names a key twice (a transfer must land whole or not at all).
fn reject_duplicates(key_ids: &[Vec<u8>]) -> Result<(), TeeError> {
    let mut seen = std::collections::HashSet::with_capacity(key_ids.len());
    match key_ids.iter().find(|k| !seen.insert(k.as_slice())) {
        Some(k) => Err(TeeError::InvalidRequest(format!(
            "key {} listed twice",
            key_hex(k)
        ))),
        None => Ok(()),
    }
}

/// The policy of a transferred wallet record when it is later than the held one's: how a
/// node that missed a [`Request::SetKeyPolicy`] catches up (the sender is a checked member
/// TEE, which only ever seals a policy it applied). An equal or earlier version is ignored,
/// never a downgrade and never a refusal: one key behind on the sender must not stop the
/// rest of the transfer. The record must be the same key (chain code included).
fn newer_policy(
    held: &Wallet,
    incoming: Wallet,
) -> Result<Option<custos_wire::policy::KeyPolicy>, TeeError> {
    if incoming.info.xpub != held.info.xpub {
        return Err(TeeError::TransferRejected(format!(
            "record {}: another extended key than the wallet held",
            key_hex(&held.info.key_id)
        )));
    }
    let held_version = held.current_policy().version;
    Ok(incoming.policy.clone().filter(|p| p.version > held_version))
}

/// [`newer_policy`] for a threshold share: the record must be the very share held (the
/// same public facts, share index included).
fn newer_share_policy(
    held: &HeldKey,
    incoming: HeldKey,
) -> Result<Option<custos_wire::policy::KeyPolicy>, TeeError> {
    if incoming.info != held.info {
        return Err(TeeError::TransferRejected(format!(
            "record {}: other key facts than the share held",
            key_hex(&held.info.key_id)
        )));
    }
    let held_version = held.policy.as_ref().map_or(0, |p| p.version);
    Ok(incoming.policy.filter(|p| p.version > held_version))
}

impl<P: Platform> TeeCore<P> {
    pub(crate) fn export_keys(&mut self, requester: CertChain, key_ids: &[Vec<u8>]) -> Outcome {
        let (own, own_chain) = self.identity()?.clone();
        if key_ids.is_empty() || key_ids.len() > MAX_TRANSFER_KEYS {
            return Err(TeeError::InvalidRequest(format!(
                "{} keys requested, 1..={} per transfer",
                key_ids.len(),
                MAX_TRANSFER_KEYS
            )));
        }
        reject_duplicates(key_ids)?;
        let now = self.platform.now_unix();
        let recipient = self
            .root()?
            .verify_device(&requester.into(), Some(&own.cluster), now)
            .map_err(|e| TeeError::RequesterRejected(e.to_string()))?;
        // A certificate is not membership: once governed, only a current member gets keys.
        self.check_member(&recipient)?;
        let mut records = Vec::with_capacity(key_ids.len());
        let mut total = 0usize;
        for k in key_ids {
            let record = self.transfer_record(k)?;
            total += record.len() + 4;
            if total > MAX_TRANSFER_PLAINTEXT {
                return Err(TeeError::InvalidRequest(format!(
                    "the keys requested exceed {MAX_TRANSFER_PLAINTEXT} bytes in one transfer; \
                     ask for fewer"
                )));
            }
            records.push(record);
        }
        let plaintext = sync::pack(&records);
        drop(records);
        let context = sync::transfer_context(
            &own.cluster,
            &own.fingerprint,
            &recipient.fingerprint,
            key_ids,
        );
        let (enc, ciphertext) = sync::seal(
            &mut self.platform,
            &recipient.public_key,
            &context,
            &plaintext,
        )?;
        let d = self.device.as_ref().expect("identity implies a device key");
        let signature = d.sign(&sync::transfer_transcript(&context, &enc, &ciphertext));
        Ok(Response::KeyTransfer(KeyTransfer {
            cluster: own.cluster,
            sender: own_chain.into(),
            recipient_fingerprint: recipient.fingerprint,
            key_ids: key_ids.to_vec(),
            enc,
            ciphertext,
            signature,
        }))
    }

    pub(crate) fn import_keys(&mut self, t: &KeyTransfer) -> Outcome {
        let reject = |m: String| TeeError::TransferRejected(m);
        let (own, _) = self.identity()?.clone();
        if t.cluster != own.cluster {
            return Err(reject(format!("transfer is for cluster {:?}", t.cluster)));
        }
        if t.recipient_fingerprint != own.fingerprint {
            return Err(reject("transfer is addressed to another node".into()));
        }
        if t.key_ids.is_empty() || t.key_ids.len() > MAX_TRANSFER_KEYS {
            return Err(reject(format!("{} keys in one transfer", t.key_ids.len())));
        }
        reject_duplicates(&t.key_ids)?;
        let now = self.platform.now_unix();
        let sender = self
            .root()?
            .verify_device(&t.sender.clone().into(), Some(&own.cluster), now)
            .map_err(|e| reject(format!("sender certificate: {e}")))?;
        // Checked before anything is opened: a non-member's keys are never even decrypted.
        self.check_member(&sender)?;
        let context = sync::transfer_context(
            &own.cluster,
            &sender.fingerprint,
            &own.fingerprint,
            &t.key_ids,
        );
        TrustRoot::verify_device_signature(
            &sender,
            &sync::transfer_transcript(&context, &t.enc, &t.ciphertext),
            &t.signature,
        )
        .map_err(|e| reject(e.to_string()))?;
        let d = self.device.as_ref().expect("identity implies a device key");
        let plaintext = sync::open(&d.private_scalar()?[..], t, &context)?;
        let records = sync::unpack(&plaintext, t.key_ids.len())?;
        // Every record is checked before any is stored: a transfer lands whole or not at all.
        let mut fresh = Vec::new();
        let mut fresh_shares = Vec::new();
        let mut already_held = 0u32;
        // Held wallets and shares whose sender holds a later policy (a change this node
        // missed).
        let mut upgrades = Vec::new();
        let mut share_upgrades = Vec::new();
        for (record, key_id) in records.into_iter().zip(&t.key_ids) {
            if HeldKey::is_record(record) {
                let k = HeldKey::from_record(record, key_id)
                    .map_err(|e| reject(format!("record {}: {e}", key_hex(key_id))))?;
                if let Some(held) = self.threshold.keys.get(key_id) {
                    already_held += 1;
                    // As for wallets: a member passes on a policy change this node missed.
                    if let Some(policy) =
                        newer_share_policy(held, k)?.filter(|_| self.gov.is_some())
                    {
                        share_upgrades.push((key_id.clone(), policy));
                    }
                    continue;
                }
                // A cluster syncs its own share only.
                let holder = &k.info.clusters[usize::from(k.info.share_index)];
                if *holder != own.cluster {
                    return Err(reject(format!(
                        "record {}: share {} belongs to cluster {holder:?}",
                        key_hex(key_id),
                        k.info.share_index
                    )));
                }
                // A peer (of another build, or compromised) never brings in a share whose
                // Paillier primes this TEE would refuse from a dealer or a key generation.
                k.share
                    .check_paillier(self.threshold.test_primes)
                    .map_err(crate::threshold::primes::primes_refused)?;
                fresh_shares.push(k);
                continue;
            }
            let w = Wallet::from_record(&self.secp, record, key_id)
                .map_err(|e| reject(format!("record {}: {e}", key_hex(key_id))))?;
            if let Some(held) = self.wallets.get(key_id) {
                already_held += 1;
                // Ungoverned, any certified device is a sender (no member check), so a
                // policy it brings has no quorum behind it: only members pass on changes.
                if let Some(policy) = newer_policy(held, w)?.filter(|_| self.gov.is_some()) {
                    upgrades.push((key_id.clone(), policy));
                }
                continue;
            }
            fresh.push(w);
        }
        let mut imported = Vec::with_capacity(fresh.len() + fresh_shares.len());
        for w in fresh {
            imported.push(w.info.key_id.clone());
            self.store_wallet(w)?;
        }
        for k in fresh_shares {
            imported.push(k.info.key_id.clone());
            self.store_threshold_key(k)?;
        }
        if !upgrades.is_empty() {
            self.replace_policies(upgrades)?;
        }
        for (key_id, policy) in share_upgrades {
            self.replace_share_policy(&key_id, &policy)?;
        }
        Ok(Response::KeysImported {
            imported,
            already_held,
        })
    }

    /// The transfer record of a held key: a wallet's, or else a threshold share's.
    fn transfer_record(&self, key_id: &[u8]) -> Result<Zeroizing<Vec<u8>>, TeeError> {
        if let Some(w) = self.wallets.get(key_id) {
            return Ok(w.to_record());
        }
        match self.threshold_key(key_id) {
            Ok(k) => Ok(k.to_record()),
            Err(TeeError::UnknownKey(_)) => self.wallet(key_id).map(|w| w.to_record()),
            Err(e) => Err(e),
        }
    }
}
