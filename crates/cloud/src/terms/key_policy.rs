//! The terms of a `set_key_policy` request: replace a wallet's or a threshold key's approver
//! group (issue 12, item 3). The request's quorum is the quorum of the group **in force**,
//! whose admins approve; the new group counts only afterwards.
//!
//! Stored as `{"kind":"set_key_policy","root_id":"<33 bytes hex>","current_version":N,
//! "current_group":["<32 bytes hex>",…],"prev":"<32 bytes hex>","version":N+1,
//! "group":["<32 bytes hex>",…],"quorum":M}`: the policy in force when the request was made
//! (named by its hash `prev` in the approval message) and the new one. A threshold key's
//! change adds `"clusters":["dc1",…]` (its shares' clusters, by share index: where the change
//! is sent, and its scope is [`THRESHOLD_SCOPE`]) and, when its policy has them,
//! `"anchors":["<32 bytes hex>",…]` (cluster anchors, part of both policies alike: carried
//! over unchanged). Rows stored before threshold keys' changes have neither: wallets. A
//! wallet's transaction rules (issue 14) are `"current_rules"` and `"rules"` (postcard hex of
//! the policy's rules other than anchors; absent when none), in both policies as shown.

use custos_cloud_api::approval::new_threshold_policy;
use custos_cloud_api::key_policy::{change_view, policies};
use custos_cloud_api::KeyPolicyChange;
use custos_wire::approval::THRESHOLD_SCOPE;
use custos_wire::policy::{GroupTier, KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};
use serde::{Deserialize, Serialize};

use super::KeyId;

/// A wallet's or threshold key's approver group change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTerms {
    /// The wallet, or the threshold key (its joint public key).
    #[serde(with = "super::hex_bytes")]
    pub root_id: KeyId,
    /// Version of the policy in force when the request was made (0: a legacy key).
    pub current_version: u32,
    /// Its group (empty for a legacy key), sorted.
    #[serde(with = "super::hex_list")]
    pub current_group: Vec<[u8; 32]>,
    /// Its hash: what the TEE compares with the policy it holds.
    #[serde(with = "super::hex_bytes")]
    pub prev: [u8; 32],
    /// The new policy's version (`current_version + 1`).
    pub version: u32,
    /// The new group, sorted and distinct.
    #[serde(with = "super::hex_list")]
    pub group: Vec<[u8; 32]>,
    /// The new quorum.
    pub quorum: u8,
    /// A threshold key's clusters, by share index: the change is sent to each, approved
    /// once for all of them ([`THRESHOLD_SCOPE`]). Empty for a wallet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// A threshold key's cluster anchors (genesis ids by share index), in the policy in
    /// force and carried over into the new one. Empty when it has none (and for a wallet).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::fingerprint_list"
    )]
    pub anchors: Vec<[u8; 32]>,
    /// The transaction rules in force (the policy's rules but anchors).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::postcard_hex"
    )]
    pub current_rules: Vec<Rule>,
    /// The quorum of the policy in force, when the request needs more (the highest approval
    /// tier's, for a change of a policy with tiers that touches its rules); absent: the
    /// request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_quorum: Option<u8>,
    /// For a change of the rules of a policy with tiers of other groups: those tiers,
    /// whose groups approve too (besides the request's quorum of `current_group`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::postcard_hex"
    )]
    pub tiers: Vec<GroupTier>,
    /// The new policy's transaction rules.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::postcard_hex"
    )]
    pub rules: Vec<Rule>,
}

/// The rules of `policy` but its cluster anchors (carried separately).
fn transaction_rules(policy: &KeyPolicy) -> Vec<Rule> {
    policy
        .rules
        .iter()
        .filter(|r| r.tag != RULE_CLUSTER_ANCHORS)
        .cloned()
        .collect()
}

/// `policy` with `rules` after its own.
fn with(mut policy: KeyPolicy, rules: &[Rule]) -> KeyPolicy {
    policy.rules.extend_from_slice(rules);
    policy
}

impl PolicyTerms {
    /// The terms replacing `current` (of wallet `root_id`) by `new`.
    pub fn new(root_id: KeyId, current: &KeyPolicy, new: &KeyPolicy) -> Self {
        PolicyTerms {
            root_id,
            current_version: current.version,
            current_group: current.group.clone(),
            prev: current.hash(),
            version: new.version,
            group: new.group.clone(),
            quorum: new.quorum,
            clusters: Vec::new(),
            anchors: Vec::new(),
            current_rules: transaction_rules(current),
            rules: transaction_rules(new),
            current_quorum: None,
            tiers: Vec::new(),
        }
    }

    /// The terms replacing `current` of threshold key `key_id`, whose shares are held by
    /// `clusters`, by `new` with the cluster anchors `anchors` both carry.
    pub fn threshold(
        key_id: KeyId,
        clusters: Vec<String>,
        anchors: Vec<[u8; 32]>,
        current: &KeyPolicy,
        new: &KeyPolicy,
    ) -> Self {
        PolicyTerms {
            clusters,
            anchors,
            ..Self::new(key_id, current, new)
        }
    }

    /// Whether this changes a threshold key's policy (on every cluster of the key, under
    /// one approval message of scope [`THRESHOLD_SCOPE`]).
    pub fn is_threshold(&self) -> bool {
        !self.clusters.is_empty()
    }

    /// The new policy, as approved and sent.
    pub fn policy(&self) -> KeyPolicy {
        with(
            KeyPolicy {
                version: self.version,
                ..new_threshold_policy(self.group.clone(), self.quorum, &self.anchors)
            },
            &self.rules,
        )
    }

    /// The change as the API shows it, for a request needing `current_quorum` approvals.
    pub fn view(&self, request_quorum: u8) -> KeyPolicyChange {
        let current_quorum = self.current_quorum.unwrap_or(request_quorum);
        let current = if self.current_version == 0 {
            KeyPolicy::legacy(current_quorum)
        } else {
            with(
                KeyPolicy {
                    version: self.current_version,
                    ..new_threshold_policy(
                        self.current_group.clone(),
                        current_quorum,
                        &self.anchors,
                    )
                },
                &self.current_rules,
            )
        };
        let mut view = change_view(&current, &self.policy());
        // The stored hash, not the recomputed one: a row whose hash disagrees with its group
        // is refused by `check` (the same rebuild approvers run).
        view.prev = hex::encode(self.prev);
        view
    }

    /// Checks with the approvers' own rebuild: the group in force hashes to `prev`, the new
    /// policy is valid and one version later; a threshold key's clusters are names, distinct,
    /// and its anchors (if any) one per cluster; a wallet's change has no anchors. The scope
    /// ([`THRESHOLD_SCOPE`] for a threshold key) is checked by [`super::Terms::check`].
    pub fn check(&self, current_quorum: u8) -> Result<(), String> {
        if self.is_threshold() {
            for (i, c) in self.clusters.iter().enumerate() {
                custos_pki::check_name(c).map_err(|e| e.to_string())?;
                if self.clusters[..i].contains(c) {
                    return Err(format!("cluster {c} named twice"));
                }
            }
            if !self.anchors.is_empty() && self.anchors.len() != self.clusters.len() {
                return Err(format!(
                    "{} cluster anchors for {} clusters",
                    self.anchors.len(),
                    self.clusters.len()
                ));
            }
            bitcoin::secp256k1::PublicKey::from_slice(&self.root_id)
                .map_err(|_| "key id is not a point of secp256k1".to_string())?;
        } else if !self.anchors.is_empty() {
            return Err("a wallet's policy has no cluster anchors".into());
        }
        policies(&self.view(current_quorum), current_quorum, &self.anchors).map(|_| ())
    }

    /// Where the change applies, in words: "cluster dc1" for a wallet's (`cluster`: the
    /// request's), "clusters dc1, dc2 (one approval for all)" for a threshold key's.
    pub fn place(&self, cluster: &str) -> String {
        if self.is_threshold() {
            format!(
                "clusters {} (one approval for all, scope {THRESHOLD_SCOPE})",
                self.clusters.join(", ")
            )
        } else {
            format!("cluster {cluster}")
        }
    }
}
