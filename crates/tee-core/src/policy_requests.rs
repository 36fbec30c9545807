//! Changing a wallet's approver group (issue 12 item 3, plan step E2): only a quorum of the
//! group in force changes it, so a valid admin outside the group counts for nothing (and is
//! named in the refusal), and the group an attacker would need is never one it can pick.
//!
//! A change names the policy it replaces by hash (`prev`) and is its version + 1, so an
//! approval made against a policy that has changed since can never apply. Its record is
//! committed before the answer and before any later request of the batch runs: nothing is
//! ever approved under a group that storage may still lose.
//!
//! Threshold keys are refused by name here: one made by a group key generation (plan step
//! W2b) carries its group, fixed at creation; changing it is not built yet (it needs the
//! change applied at every cluster of the key). A threshold key without a group stays
//! approved by the cluster's governors.

use custos_wire::approval::{Action, Approval};
use custos_wire::policy::{KeyPolicy, RULE_CLUSTER_ANCHORS};
use custos_wire::protocol::*;

use crate::platform::{Platform, RecordId};
use crate::wallet::{key_hex, Wallet};
use crate::{replayed, storage, TeeCore, WALLET_PREFIX};

/// Checks the policy a new key (wallet or threshold key) is created under: valid, and at
/// version 1, since each later change is +1 (a key created at `u32::MAX` could never be
/// changed, and one created at a later version would pass for a key whose group changed).
pub(crate) fn check_new_policy(policy: &KeyPolicy) -> Result<(), TeeError> {
    policy
        .validate()
        .map_err(|e| TeeError::PolicyRejected(e.to_string()))?;
    if usize::from(policy.quorum) > usize::from(MAX_QUORUM) {
        return Err(TeeError::PolicyRejected(format!(
            "quorum {} over {MAX_QUORUM}",
            policy.quorum
        )));
    }
    if policy.version != 1 {
        return Err(TeeError::PolicyRejected(format!(
            "a new key's policy has version 1, not {}",
            policy.version
        )));
    }
    Ok(())
}

/// The answer naming `key_id`'s policy and its hash.
fn key_policy(key_id: &[u8], policy: KeyPolicy) -> Response {
    Response::KeyPolicy {
        key_id: key_id.to_vec(),
        hash: policy.hash(),
        policy,
    }
}

impl<P: Platform> TeeCore<P> {
    /// The wallet whose policy is read or changed; a threshold key is refused by name rather
    /// than reported unknown.
    fn policy_wallet(&self, key_id: &[u8]) -> Result<&Wallet, TeeError> {
        if self.threshold.keys.contains_key(key_id) {
            return Err(TeeError::PolicyRejected(format!(
                "key {} is a threshold key: its approver group is fixed at creation (changing \
                 or reading it here is not supported yet)",
                key_hex(key_id)
            )));
        }
        self.wallet(key_id)
    }

    /// [`Request::GetKeyPolicy`]: public facts, no approval.
    pub(crate) fn get_key_policy(&self, key_id: &[u8]) -> Outcome {
        let policy = self.policy_wallet(key_id)?.current_policy();
        Ok(key_policy(key_id, policy))
    }

    /// [`Request::SetKeyPolicy`]: checks the new policy, that it replaces the policy in force
    /// (`prev`, version + 1), and approvals by a quorum of the group in force (the cluster's
    /// governors for a legacy wallet once governed); then seals and commits the wallet under
    /// it, with the request id consumed, before the wallet in memory takes it.
    pub(crate) fn set_key_policy(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        prev: &[u8; 32],
        policy: &KeyPolicy,
        approvals: &[Approval],
    ) -> Outcome {
        let wallet = self.policy_wallet(key_id)?;
        let current = wallet.current_policy();
        let who = Self::approvers_for(wallet);
        if self.consumed.contains_key(&meta.request_id) {
            return self.repeated_change(meta, key_id, policy, current);
        }
        // A legacy wallet has no group: until the cluster is governed, any Admin-CA
        // certificate counts for it, so whoever can mint admin certificates could give it a
        // group of their own that would outlive the genesis. Only governors may narrow it.
        if wallet.policy.is_none() && self.gov.is_none() {
            return Err(TeeError::NotGoverned);
        }
        policy
            .validate()
            .map_err(|e| TeeError::PolicyRejected(e.to_string()))?;
        if policy.rules.iter().any(|r| r.tag == RULE_CLUSTER_ANCHORS) {
            return Err(TeeError::PolicyRejected(format!(
                "rule {RULE_CLUSTER_ANCHORS} (cluster anchors) is for threshold keys, not wallets"
            )));
        }
        let expected = current.hash();
        if *prev != expected {
            return Err(TeeError::PolicyConflict {
                key: key_hex(key_id),
                expected,
                found: *prev,
            });
        }
        if current.version.checked_add(1) != Some(policy.version) {
            return Err(TeeError::PolicyRejected(format!(
                "version {} does not follow the current version {} (+1)",
                policy.version, current.version
            )));
        }
        let action = Action::SetKeyPolicy {
            key_id,
            prev,
            policy,
        };
        self.approve_by(meta, action, approvals, who)?;
        // Consumed first: a storage failure between the two writes can use up the id
        // without the change (the admins approve again), never make the change reusable.
        self.consume_request(meta, Some(key_id))?;
        self.replace_policies(vec![(key_id.to_vec(), policy.clone())])?;
        Ok(key_policy(key_id, policy.clone()))
    }

    /// A policy change whose request id is used already. The very change repeated (its
    /// answer was lost on the way back) gets the same answer while that policy is in force;
    /// the answer is public and changes nothing, so no approval is checked again. Anything
    /// else under a used id is refused, naming the difference: one approval, one change.
    fn repeated_change(
        &self,
        meta: &RequestMeta,
        key_id: &[u8],
        policy: &KeyPolicy,
        current: KeyPolicy,
    ) -> Outcome {
        let made = self
            .first_made(meta)?
            .ok_or_else(|| replayed(meta, "its first use changed no key"))?;
        if made != key_id {
            return Err(replayed(
                meta,
                format!(
                    "it was used for key {}, this repeat is for key {}",
                    key_hex(&made),
                    key_hex(key_id)
                ),
            ));
        }
        if current != *policy {
            return Err(replayed(
                meta,
                format!(
                    "key {} is at policy version {} ({}), this repeat asks for version {} ({})",
                    key_hex(key_id),
                    current.version,
                    hex::encode(current.hash()),
                    policy.version,
                    hex::encode(policy.hash())
                ),
            ));
        }
        Ok(key_policy(key_id, current))
    }

    /// Seals each wallet's record under its new policy and commits at once (with whatever
    /// the batch has pending); only then do the wallets in memory take the policies. On a
    /// failed commit nothing changes here, and the batch's other writes are marked failed.
    pub(crate) fn replace_policies(
        &mut self,
        changes: Vec<(Vec<u8>, KeyPolicy)>,
    ) -> Result<(), TeeError> {
        for (key_id, policy) in &changes {
            let record = self.wallet(key_id)?.record_with(policy);
            let id =
                RecordId::new(format!("{WALLET_PREFIX}{}", key_hex(key_id))).map_err(storage)?;
            self.platform.seal(&id, &record).map_err(storage)?;
        }
        self.commit_pending().map_err(storage)?;
        for (key_id, policy) in changes {
            if let Some(w) = self.wallets.get_mut(&key_id) {
                w.set_policy(policy);
            }
        }
        Ok(())
    }
}
