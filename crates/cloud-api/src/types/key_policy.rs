//! A wallet's or threshold key's approver group over the API (issue 12, item 3): the policy
//! in force as a node's TEE reports it, the body that proposes a new one, and the change as
//! an approver reads it (the group in force and the new one side by side).
//!
//! Admins are named by key fingerprint (hex SHA-256 of the certified SubjectPublicKeyInfo,
//! `custos admin fingerprint`), never by name.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `PUT /v1/wallets/{root_id}/policy` and `PUT /v1/threshold/keys/{key_id}/policy`: replace
/// the key's approver group and quorum. A quorum of the group **in force** approves the
/// change; the new group takes over from then on. A threshold key's quorum is part of the key
/// and cannot change: `quorum` must be the key's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicyBody {
    /// The new approver group: key fingerprints of 1 to 32 distinct admins, any order (the
    /// server sorts them).
    #[schema(schema_with = super::schema::approver_group)]
    pub group: Vec<String>,
    /// Distinct admins of the new group needed from then on (1..=16, at most its size).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// The key's new transaction rules (a wallet's only), in full; absent: the rules in force
    /// are kept. The TEE refuses a change its rules forbid (an allowlist entry removed, its
    /// time lock lowered, an added entry payable before the time lock in force ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::PolicyRules>,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A wallet's or threshold key's policy as a node's TEE signed it (`GET
/// /v1/wallets/{root_id}/policy`, `GET /v1/threshold/keys/{key_id}/policy`), or as a
/// completed `set_key_policy` request left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPolicyView {
    /// The wallet or threshold key (hex of the 33-byte root or joint public key).
    pub root_id: String,
    /// 1 at creation, +1 on every change; 0 for a wallet sealed before approver groups
    /// (then `group` is empty and any admin the TEE accepts counts).
    pub version: u32,
    /// The approver group: admin key fingerprints, hex, sorted.
    pub group: Vec<String>,
    /// Distinct admins of the group needed.
    pub quorum: u8,
    /// Hash of the policy (what a change names as the policy it replaces), hex.
    pub hash: String,
    /// A threshold key's cluster anchors (rule `RULE_CLUSTER_ANCHORS`): the genesis id of
    /// each share's cluster's governance log, by share index, hex; part of the hash. Absent
    /// when the policy has none (always for a wallet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Vec<String>>,
    /// The key's transaction rules (absent when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::PolicyRules>,
    /// The node whose TEE answered.
    pub node: String,
}

/// The terms of a `set_key_policy` request: the policy in force when it was proposed and the
/// one that replaces it. The approval message names the replaced policy by its hash,
/// recomputed from `current_*` (so an approver signs exactly the group shown), and the new
/// one in full. A threshold key's cluster anchors are the request's `anchors`, part of both
/// policies alike (a change carries them over unchanged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPolicyChange {
    /// Version of the policy in force.
    pub current_version: u32,
    /// Its group (empty for a wallet sealed before approver groups).
    pub current_group: Vec<String>,
    /// Its quorum (also the request's `quorum`: the approvals this change needs).
    pub current_quorum: u8,
    /// Its hash, hex (informational; approvers recompute it from the three fields above).
    pub prev: String,
    /// Version of the new policy (`current_version + 1`).
    pub version: u32,
    /// The new group, hex, sorted.
    pub group: Vec<String>,
    /// The new quorum.
    pub quorum: u8,
    /// The transaction rules in force (part of the hash `prev` names); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_rules: Option<crate::PolicyRules>,
    /// The new policy's transaction rules; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::PolicyRules>,
}
