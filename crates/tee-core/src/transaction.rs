//! Transactions the TEE understands (issue 14): a PSBT is parsed, checked and hashed here
//! (`custos-tx`), its intent computed here, and it is signed only under approvals of that
//! intent. The approvals are checked against the intent the caller claims was approved,
//! then the transaction's own intent is compared with that claim, so a transaction swapped
//! after approval is refused by name (`intent_mismatch`), not as a bad signature.

use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1};
use custos_tx::btc::{plan_psbt, WalletKeys};
use custos_tx::eth::{plan_eth, EthPlan};
use custos_tx::TxError;
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::protocol::*;
use zeroize::Zeroizing;

use custos_tx::policy::{
    approval_need, encode_record, evaluate_all, spends_of, tier_quorum, Member, PolicyRefusal,
    ShareSigning,
};
use custos_wire::governance::device_key_fingerprint;

use crate::approval::Who;
use crate::platform::{Platform, RecordId};
use crate::wallet::{key_hex, Wallet};
use crate::{replayed, storage, TeeCore, Undo, VELOCITY_PREFIX};

/// What a [`Request::SignPsbt`] asks.
pub(crate) struct PsbtRequest<'a> {
    pub key_id: &'a [u8],
    pub network: BitcoinNetwork,
    pub psbt: &'a [u8],
    pub intent_hash: [u8; 32],
}

/// What a [`Request::SignEthereum`] asks.
pub(crate) struct EthRequest<'a> {
    pub key_id: &'a [u8],
    pub path: &'a [u32],
    pub payload: &'a EthPayload,
    pub intent_hash: [u8; 32],
}

/// A wallet's keys as `custos-tx` asks for them.
struct Keys<'a> {
    wallet: &'a Wallet,
    secp: &'a Secp256k1<All>,
}

impl WalletKeys for Keys<'_> {
    fn fingerprint(&self) -> [u8; 4] {
        self.wallet.fingerprint(self.secp)
    }

    fn public_key(&self, path: &[u32]) -> Result<PublicKey, TxError> {
        self.wallet
            .with_child(self.secp, path, |k| k.public_key(self.secp))
            .map_err(|e| TxError::Signing(e.to_string()))
    }
}

/// A `custos-tx` refusal as the TEE's.
pub(crate) fn rejected(e: TxError) -> TeeError {
    TeeError::TransactionRejected {
        code: e.code().into(),
        reason: e.to_string(),
    }
}

/// What a signed transaction's request id is kept with: SHA-256 of a domain, the key, the
/// intent and the policy it passed (32 bytes, never a key id's 33). A repeat is signed
/// without the policy checked again, so only under the very policy that allowed it: a
/// threshold attempt that never made its signature cannot be finished after the key's
/// group tightened the rules.
fn signed_marker(key_id: &[u8], intent_hash: &[u8; 32], policy_hash: &[u8; 32]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"CUSTOS-SIGNED-TX-V2\0");
    h.update((key_id.len() as u32).to_be_bytes());
    h.update(key_id);
    h.update(intent_hash);
    h.update(policy_hash);
    h.finalize().to_vec()
}

fn tier_refused(reason: String) -> TeeError {
    TeeError::TransactionPolicyRefused {
        rule: "approval_tier".into(),
        reason,
    }
}

fn policy_refused(e: PolicyRefusal) -> TeeError {
    TeeError::TransactionPolicyRefused {
        rule: e.rule().into(),
        reason: e.to_string(),
    }
}

impl<P: Platform> TeeCore<P> {
    /// The approvals of the intent a transaction request claims, by the key's group (a
    /// threshold key's in the threshold scope, like its signings). Checked before anything
    /// is parsed, a few signature checks, so that nobody without them makes this TEE parse
    /// and derive for a large transaction. Admins of a tier's other group may be among
    /// them; whether they are needed is [`Self::check_tier`]'s call once the intent is
    /// known.
    pub(crate) fn approve_intent(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        intent_hash: &[u8; 32],
        approvals: &[Approval],
    ) -> Result<(), TeeError> {
        let key = self.policy_key(key_id)?;
        let scope = self.transaction_scope(key.share())?;
        let who = match (key.approvers(), key.current().group_tiers()) {
            (Who::Group { group, quorum }, Some(t)) => {
                let tiers = t.tiers.into_iter().map(|t| (t.group, 0));
                Who::Groups(std::iter::once((group, quorum)).chain(tiers).collect())
            }
            (who, _) => who,
        };
        let action = Action::SignTransaction {
            key_id,
            intent_hash,
        };
        self.approve_in_by(&scope, meta, action, approvals, who)
    }

    fn transaction_scope(&self, share: Option<u16>) -> Result<String, TeeError> {
        match share {
            Some(_) => Ok(THRESHOLD_SCOPE.to_string()),
            None => self.cluster(),
        }
    }

    /// The key's approval tiers on `intent`: above a tier's amount, the approvals must be
    /// that tier's quorum of the key's group, and that of each tier of another group the
    /// amount reaches (refused `approval_tier`, naming the group, otherwise).
    pub(crate) fn check_tier(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        intent_hash: &[u8; 32],
        intent: &custos_tx::Intent,
        approvals: &[Approval],
    ) -> Result<(), TeeError> {
        let key = self.policy_key(key_id)?;
        let (policy, scope) = (key.current(), self.transaction_scope(key.share())?);
        let spends = spends_of(intent);
        let need = approval_need(&policy, &spends);
        if need.quorum == policy.quorum && need.groups.is_empty() {
            return Ok(());
        }
        let action = Action::SignTransaction {
            key_id,
            intent_hash,
        };
        // The key's group first, then each tier group reached, each met by its own admins;
        // then the other tier groups, admitted as the gate admitted them, asked for nothing.
        let mut groups = vec![(policy.group.clone(), need.quorum)];
        groups.extend(need.groups.iter().map(|t| (t.group.clone(), t.quorum)));
        let others = policy.group_tiers().map(|g| g.tiers).unwrap_or_default();
        groups.extend(others.into_iter().map(|t| (t.group, 0)));
        let all = Who::Groups(groups.clone());
        match self.approve_in_by(&scope, meta, action.clone(), approvals, all) {
            Err(TeeError::QuorumNotMet { .. }) => {}
            done => return done,
        }
        // Which requirement is short, for the refusal to name it: each alone, the other
        // groups' admins admitted (on a refusal's path only).
        for (i, (group, quorum)) in groups.iter().enumerate() {
            let alone = groups
                .iter()
                .enumerate()
                .map(|(j, (g, q))| (g.clone(), if i == j { *q } else { 0 }))
                .collect();
            let Err(TeeError::QuorumNotMet { approved, .. }) =
                self.approve_in_by(&scope, meta, action.clone(), approvals, Who::Groups(alone))
            else {
                continue;
            };
            let whose = match i.checked_sub(1).and_then(|t| need.groups.get(t)) {
                None => {
                    let spend = tier_quorum(&policy, &spends).map(|(_, s)| s);
                    let by =
                        spend.map_or(String::new(), |s| format!(" ({} of {})", s.amount, s.asset));
                    format!("the key's group{by}")
                }
                Some(t) => format!(
                    "the group of the tier above {} of {} ({} admins, first {})",
                    t.above,
                    t.asset,
                    group.len(),
                    hex::encode(&group[0][..8])
                ),
            };
            return Err(tier_refused(format!(
                "the transaction needs {quorum} approvals of {whose}, {approved} given"
            )));
        }
        Err(tier_refused(
            "the approvals meet no requirement alone".into(),
        ))
    }

    /// The key's policy on `intent` (default deny): limits, allowlist, window. The request
    /// id is consumed and the window record sealed with the transaction counted, both
    /// committed before the signatures leave. A repeat of a request signed here (its answer
    /// lost) is counted once: it signs the same transaction again.
    pub(crate) fn check_spend(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        (intent_hash, intent): (&[u8; 32], &custos_tx::Intent),
        signers: Option<&[u16]>,
    ) -> Result<(), TeeError> {
        let key = self.policy_key(key_id)?;
        let (policy, share) = (key.current(), key.share());
        let threshold = match (share, signers) {
            (None, None) => None,
            (Some(share), Some(signers)) => Some(ShareSigning {
                share,
                signers: signers.to_vec(),
            }),
            _ => {
                return Err(TeeError::InvalidRequest(format!(
                    "key {} signs transactions {}",
                    key_hex(key_id),
                    if share.is_some() {
                        "in threshold sessions only"
                    } else {
                        "alone, in no threshold session"
                    }
                )))
            }
        };
        // The id is kept with what it signed: only that very transaction signs again under
        // it, never another intent approved under a used id, nor anything under the id of
        // another kind of request.
        let signed = signed_marker(key_id, intent_hash, &policy.hash());
        if let Some(made) = self.first_made(meta)? {
            if made != signed {
                return Err(replayed(
                    meta,
                    "it was used for another request than this transaction",
                ));
            }
            return Ok(());
        }
        let name = format!("{VELOCITY_PREFIX}{}", key_hex(key_id));
        if let Some(reason) = self.corrupt.get(&name) {
            return Err(TeeError::KeyRecordCorrupt {
                key: key_hex(key_id),
                reason: reason.clone(),
            });
        }
        let (own, _) = self.identity()?;
        let node = device_key_fingerprint(&own.public_key).unwrap_or([0; 32]);
        let history = self.velocity.get(key_id).map_or(&[][..], Vec::as_slice);
        let now = self.platform.now_unix();
        let member = Member { node, threshold };
        let verdict = evaluate_all(&policy, &spends_of(intent), now, &member, history)
            .map_err(policy_refused)?;
        self.consume_request(meta, Some(&signed))?;
        if let Some(record) = verdict.record {
            let id = RecordId::new(name).map_err(storage)?;
            self.platform
                .seal(&id, &encode_record(&record))
                .map_err(storage)?;
            let before = self.velocity.insert(key_id.to_vec(), record);
            self.journal
                .push((self.current, Undo::Velocity(key_id.to_vec(), before)));
        }
        Ok(())
    }

    /// `Request::PreviewPsbt`: the intent [`Self::sign_psbt`] would sign, computed with the
    /// wallet's own keys (hardened paths included), and its hash. Nothing is stored.
    /// For a threshold key, the intent [`Self::threshold_psbt_start`] would sign.
    pub(crate) fn preview_psbt(
        &self,
        key_id: &[u8],
        network: BitcoinNetwork,
        psbt: &[u8],
    ) -> Outcome {
        let plan = if self.threshold.keys.contains_key(key_id) {
            plan_psbt(psbt, network.network(), &self.share_keys(key_id)?)
        } else {
            let keys = Keys {
                wallet: self.wallet(key_id)?,
                secp: &self.secp,
            };
            plan_psbt(psbt, network.network(), &keys)
        };
        intent_response(plan.map_err(rejected)?.intent())
    }

    /// `Request::SignPsbt`: checks the approvals of the intent claimed by the wallet's
    /// approvers, plans the PSBT against the wallet and compares its intent with that claim,
    /// applies the key's policy ([`Self::check_spend`]), then signs every input with the key
    /// the wallet derives at its path.
    pub(crate) fn sign_psbt(
        &mut self,
        meta: &RequestMeta,
        tx: PsbtRequest<'_>,
        approvals: &[Approval],
    ) -> Outcome {
        self.wallet(tx.key_id)?;
        self.approve_intent(meta, tx.key_id, &tx.intent_hash, approvals)?;
        let keys = Keys {
            wallet: self.wallet(tx.key_id)?,
            secp: &self.secp,
        };
        let plan = plan_psbt(tx.psbt, tx.network.network(), &keys).map_err(rejected)?;
        let computed = plan.intent().hash();
        if computed != tx.intent_hash {
            return Err(TeeError::IntentMismatch {
                claimed: tx.intent_hash,
                computed,
            });
        }
        self.check_tier(meta, tx.key_id, &computed, plan.intent(), approvals)?;
        self.check_spend(meta, tx.key_id, (&computed, plan.intent()), None)?;
        // BIP-340's auxiliary randomness, one per input (ECDSA inputs ignore theirs).
        let mut aux = Zeroizing::new(vec![[0u8; 32]; plan.jobs().len()]);
        for a in aux.iter_mut() {
            self.platform.random(a).map_err(storage)?;
        }
        let wallet = self.wallet(tx.key_id)?;
        let mut signatures = Vec::with_capacity(plan.jobs().len());
        for (job, aux) in plan.jobs().iter().zip(aux.iter()) {
            let signature = wallet
                .with_child(&self.secp, &job.path, |key| job.sign(&self.secp, key, aux))?
                .map_err(rejected)?;
            signatures.push(signature);
        }
        let psbt = plan.finish(signatures).map_err(rejected)?;
        Ok(Response::SignedPsbt {
            psbt,
            intent_hash: computed,
        })
    }

    /// The plan of an Ethereum payload signed by the wallet's key at `path`.
    fn plan_ethereum(
        &self,
        key_id: &[u8],
        path: &[u32],
        payload: &EthPayload,
    ) -> Result<EthPlan, TeeError> {
        let wallet = self.wallet(key_id)?;
        let key = wallet.with_child(&self.secp, path, |k| k.public_key(&self.secp))?;
        plan_eth(payload, path, &key).map_err(rejected)
    }

    /// `Request::PreviewEthereum`: the intent [`Self::sign_ethereum`] would sign, and its
    /// hash. Nothing is stored.
    pub(crate) fn preview_ethereum(
        &self,
        key_id: &[u8],
        path: &[u32],
        payload: &EthPayload,
    ) -> Outcome {
        let plan = self.plan_ethereum(key_id, path, payload)?;
        intent_response(plan.intent())
    }

    /// `Request::SignEthereum`: as [`Self::sign_psbt`], for an Ethereum transaction,
    /// personal message or typed data signed by the wallet's key at its path.
    pub(crate) fn sign_ethereum(
        &mut self,
        meta: &RequestMeta,
        eth: EthRequest<'_>,
        approvals: &[Approval],
    ) -> Outcome {
        self.wallet(eth.key_id)?;
        self.approve_intent(meta, eth.key_id, &eth.intent_hash, approvals)?;
        let plan = self.plan_ethereum(eth.key_id, eth.path, eth.payload)?;
        let computed = plan.intent().hash();
        if computed != eth.intent_hash {
            return Err(TeeError::IntentMismatch {
                claimed: eth.intent_hash,
                computed,
            });
        }
        self.check_tier(meta, eth.key_id, &computed, plan.intent(), approvals)?;
        self.check_spend(meta, eth.key_id, (&computed, plan.intent()), None)?;
        let sighash = Message::from_digest(plan.sighash());
        let signature = self
            .wallet(eth.key_id)?
            .with_child(&self.secp, eth.path, |k| {
                self.secp.sign_ecdsa_recoverable(&sighash, k)
            })?;
        let signed = plan.finish(&self.secp, &signature).map_err(rejected)?;
        Ok(Response::SignedEthereum {
            signature: signed.signature,
            raw_transaction: signed.raw_transaction,
            intent_hash: computed,
        })
    }
}

/// The answer to a preview: the intent's hash and its JSON.
fn intent_response(intent: &custos_tx::Intent) -> Outcome {
    Ok(Response::TransactionIntent {
        intent_hash: intent.hash(),
        intent_json: serde_json::to_vec(intent)
            .map_err(|e| TeeError::InvalidRequest(format!("intent: {e}")))?,
    })
}
