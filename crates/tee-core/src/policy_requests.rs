//! Changing a wallet's approver group (issue 12 item 3, plan step E2): only a quorum of the
//! group in force changes it, so a valid admin outside the group counts for nothing (and is
//! named in the refusal), and the group an attacker would need is never one it can pick.
//!
//! A change names the policy it replaces by hash (`prev`) and is its version + 1, so an
//! approval made against a policy that has changed since can never apply. Its record is
//! committed before the answer and before any later request of the batch runs: nothing is
//! ever approved under a group that storage may still lose.
//!
//! A threshold key's policy is held with each share, so a change is applied by the TEE of
//! every cluster of the key, each checking it alone: its quorum stays the key's (part of the
//! key's facts), and cluster anchors, when the change sets them, must name one genesis per
//! share and this cluster's own log at this share. That is how a dealt key, or one made
//! before governance, gets a group and anchors (plan step D5).

use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::policy::{KeyPolicy, RULE_CLUSTER_ANCHORS, RULE_VELOCITY_SHARE};
use custos_wire::protocol::*;

use crate::approval::Who;
use crate::platform::{Platform, RecordId};
use crate::threshold::HeldKey;
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

/// The rules a policy may carry for its kind of key: cluster anchors and the velocity
/// share are a threshold key's (`shares`: its number of shares); a threshold key with a
/// window names the share counting it (its node being the limits' velocity holder), one of
/// its own.
pub(crate) fn check_key_kind(policy: &KeyPolicy, shares: Option<usize>) -> Result<(), TeeError> {
    let windowed = policy
        .spend_limits()
        .is_some_and(|l| l.velocity_holder.is_some());
    let share = policy.velocity_share();
    let refused = |m: String| Err(TeeError::PolicyRejected(m));
    match shares {
        None if policy.cluster_anchors().is_some() => refused(format!(
            "rule {RULE_CLUSTER_ANCHORS} (cluster anchors) is for threshold keys, not wallets"
        )),
        None if share.is_some() => refused(format!(
            "rule {RULE_VELOCITY_SHARE} (velocity share) is for threshold keys, not wallets"
        )),
        Some(_) if windowed && share.is_none() => refused(format!(
            "a threshold key's window is counted on the share that takes part in every \
             signing: name it (rule {RULE_VELOCITY_SHARE})"
        )),
        Some(n) if share.is_some_and(|s| usize::from(s) >= n) => refused(format!(
            "velocity share {} of a key of {n} shares",
            share.unwrap_or_default()
        )),
        _ => Ok(()),
    }
}

/// The answer naming `key_id`'s policy and its hash.
fn key_policy(key_id: &[u8], policy: KeyPolicy) -> Response {
    Response::KeyPolicy {
        key_id: key_id.to_vec(),
        hash: policy.hash(),
        policy,
    }
}

/// A key whose policy is read or changed: a wallet, or this node's share of a threshold key.
pub(crate) enum PolicyKey<'a> {
    Wallet(&'a Wallet),
    Share(&'a HeldKey),
}

impl PolicyKey<'_> {
    /// The policy in force ([`KeyPolicy::legacy`] for a key created without a group).
    pub(crate) fn current(&self) -> KeyPolicy {
        match self {
            PolicyKey::Wallet(w) => w.current_policy(),
            PolicyKey::Share(k) => k
                .policy
                .clone()
                .unwrap_or_else(|| KeyPolicy::legacy(k.info.quorum)),
        }
    }

    /// Whose approvals count for the key's requests ([`TeeCore::approvers_for`], or
    /// `approvers_for_share`).
    pub(crate) fn approvers(&self) -> Who {
        match self {
            PolicyKey::Wallet(w) => Who::of(w.policy.as_ref(), w.info.quorum),
            PolicyKey::Share(k) => Who::of(k.policy.as_ref(), k.info.quorum),
        }
    }

    /// The share this TEE signs with, for a threshold key.
    pub(crate) fn share(&self) -> Option<u16> {
        match self {
            PolicyKey::Wallet(_) => None,
            PolicyKey::Share(k) => Some(k.info.share_index),
        }
    }

    fn has_group(&self) -> bool {
        match self {
            PolicyKey::Wallet(w) => w.policy.is_some(),
            PolicyKey::Share(k) => k.policy.is_some(),
        }
    }
}

/// An allowlist may not be loosened faster than the time lock of the policy in force: a
/// change may not remove it, and every entry it adds (or moves earlier) takes effect no
/// sooner than `now` plus that lock, whatever lock the new policy sets for later changes.
fn check_allowlist_change(current: &KeyPolicy, new: &KeyPolicy, now: u64) -> Result<(), TeeError> {
    let Some(old) = current.allowlist() else {
        return Ok(());
    };
    let Some(list) = new.allowlist() else {
        return Err(TeeError::PolicyRejected(
            "the change removes the key's allowlist; entries are added under its time lock".into(),
        ));
    };
    // Lowered, the lock would let the next change add an entry sooner than this one may.
    if list.time_lock_secs < old.time_lock_secs {
        return Err(TeeError::PolicyRejected(format!(
            "the allowlist's time lock of {} s cannot be lowered (to {} s)",
            old.time_lock_secs, list.time_lock_secs
        )));
    }
    if let Some(e) = old.too_early(&list, now).first() {
        return Err(TeeError::PolicyRejected(format!(
            "allowlist entry {} ({}) takes effect at {}, before the time lock of {} s in force \
             ends (at {})",
            e.destination,
            e.asset,
            e.not_before,
            old.time_lock_secs,
            now.saturating_add(old.time_lock_secs)
        )));
    }
    Ok(())
}

impl<P: Platform> TeeCore<P> {
    pub(crate) fn policy_key(&self, key_id: &[u8]) -> Result<PolicyKey<'_>, TeeError> {
        match self.threshold.keys.get(key_id) {
            Some(k) => Ok(PolicyKey::Share(k)),
            None => self.wallet(key_id).map(PolicyKey::Wallet),
        }
    }

    /// [`Request::GetKeyPolicy`]: public facts, no approval.
    pub(crate) fn get_key_policy(&self, key_id: &[u8]) -> Outcome {
        let policy = self.policy_key(key_id)?.current();
        Ok(key_policy(key_id, policy))
    }

    /// What a new policy must keep to for this kind of key: anchors only for a threshold
    /// key, naming this cluster's log at this share; a threshold key's quorum unchanged.
    fn check_kind_rules(&self, key: &PolicyKey<'_>, policy: &KeyPolicy) -> Result<(), TeeError> {
        let anchors = policy.cluster_anchors();
        match key {
            PolicyKey::Wallet(_) => check_key_kind(policy, None),
            PolicyKey::Share(k) => {
                check_key_kind(policy, Some(k.info.clusters.len()))?;
                if policy.quorum != k.info.quorum {
                    return Err(TeeError::PolicyRejected(format!(
                        "quorum {}: a threshold key's quorum is part of the key ({})",
                        policy.quorum, k.info.quorum
                    )));
                }
                match anchors {
                    Some(a) => self.check_own_anchor(
                        &a,
                        k.info.clusters.len(),
                        usize::from(k.info.share_index),
                    ),
                    None => Ok(()),
                }
            }
        }
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
        let key = self.policy_key(key_id)?;
        let current = key.current();
        let who = key.approvers();
        let (legacy, share) = (!key.has_group(), matches!(key, PolicyKey::Share(_)));
        if self.consumed.contains_key(&meta.request_id) {
            return self.repeated_change(meta, key_id, policy, current);
        }
        // A legacy key has no group: until the cluster is governed, any Admin-CA
        // certificate counts for it, so whoever can mint admin certificates could give it a
        // group of their own that would outlive the genesis. Only governors may narrow it.
        if legacy && self.gov.is_none() {
            return Err(TeeError::NotGoverned);
        }
        policy
            .validate()
            .map_err(|e| TeeError::PolicyRejected(e.to_string()))?;
        self.check_kind_rules(&key, policy)?;
        check_allowlist_change(&current, policy, self.platform.now_unix())?;
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
        // A change of the rules needs what the strictest tier needs, every tier group's
        // approvals included ([`KeyPolicy::rules_change_need`]).
        let need = current.rules_change_need();
        let tiered = need.quorum != current.quorum || !need.groups.is_empty();
        let who = if tiered && current.rules != policy.rules {
            Who::of_need(&current.group, &need)
        } else {
            who
        };
        let action = Action::SetKeyPolicy {
            key_id,
            prev,
            policy,
        };
        // A threshold key's change is one message for every cluster of the key, like its
        // signing approvals; a wallet's is scoped to its cluster.
        let scope = if share {
            THRESHOLD_SCOPE.to_string()
        } else {
            self.cluster()?
        };
        self.approve_in_by(&scope, meta, action, approvals, who)?;
        // Consumed first: a storage failure between the two writes can use up the id
        // without the change (the admins approve again), never make the change reusable.
        self.consume_request(meta, Some(key_id))?;
        if share {
            self.replace_share_policy(key_id, policy)?;
        } else {
            self.replace_policies(vec![(key_id.to_vec(), policy.clone())])?;
        }
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

    /// Seals this node's share under its new policy and commits at once, its presignatures
    /// ended first (made with the co-signers the old policy let in); on a failure the share
    /// in memory keeps its policy, so memory never holds what storage lost.
    pub(crate) fn replace_share_policy(
        &mut self,
        key_id: &[u8],
        policy: &KeyPolicy,
    ) -> Result<(), TeeError> {
        let id = RecordId::new(format!(
            "{}{}",
            crate::threshold::SHARE_PREFIX,
            key_hex(key_id)
        ))
        .map_err(storage)?;
        self.end_presignatures_of(key_id).map_err(storage)?;
        let unknown = || TeeError::UnknownKey(key_hex(key_id));
        let held = self.threshold.keys.get_mut(key_id).ok_or_else(unknown)?;
        let before = held.policy.replace(policy.clone());
        let record = held.to_record();
        let written = self
            .platform
            .seal(&id, &record)
            .and_then(|()| self.commit_pending());
        if let Err(e) = written {
            if let Some(held) = self.threshold.keys.get_mut(key_id) {
                held.policy = before;
            }
            return Err(storage(e));
        }
        Ok(())
    }
}
