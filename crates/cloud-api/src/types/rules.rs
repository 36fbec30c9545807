//! A key's transaction rules as the API writes them (issue 14): what the TEE enforces before
//! it signs a transaction, whatever quorum approved it. Amounts are decimal strings (wei do
//! not fit a JSON number), fingerprints hex. [`crate::rules`] turns them into the policy's
//! rules and back, the same way on the server and in approvers' tools.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The transaction rules of a key's policy. Every rule needs `transactions_only` (a raw
/// digest would sign around it); without `spend_limits` the key signs no transaction
/// (default deny).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRules {
    /// The key signs only transactions its TEE parses and shows, never a raw digest.
    #[serde(default)]
    pub transactions_only: bool,
    /// What the key may send per asset (at most 16 assets, each once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub spend_limits: Vec<SpendLimitView>,
    /// With a rolling window: the node (device key fingerprint, hex) whose TEE alone signs
    /// the key's transactions, since the window's record lives in one TEE (for a threshold
    /// key: the node of its `velocity_share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{64}$", max_length = 64)]
    pub velocity_holder: Option<String>,
    /// A threshold key with a window: the share (its index) that takes part in every
    /// signing, whose node (`velocity_holder`) counts the window for the key; every
    /// participant refuses a signer set without it. Threshold keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 63)]
    pub velocity_share: Option<u16>,
    /// The only destinations the key may pay; absent: any within the limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowlist: Option<AllowlistView>,
    /// More approvals above amounts: of the key's group, or of another group besides the
    /// key's quorum (`group`, at most 4 admins; each such tier reached applies). At most 8
    /// tiers, all requirements together at most 16 approvals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub approval_tiers: Vec<ApprovalTierView>,
}

/// What a key may send of one asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendLimitView {
    /// The asset: `bitcoin:<network>` (sat leaving the wallet, fee included).
    #[schema(pattern = "^[A-Za-z0-9:._-]{1,64}$", max_length = 64)]
    pub asset: String,
    /// Most one transaction may send (decimal, the asset's smallest unit).
    #[schema(pattern = "^[0-9]{1,39}$", max_length = 39)]
    pub per_transaction: String,
    /// Rolling window, seconds (0: none).
    pub window_secs: u64,
    /// Most the transactions of any window may send together (decimal).
    #[schema(pattern = "^[0-9]{1,39}$", max_length = 39)]
    pub per_window: String,
    /// Most transactions within any window (at most 10000).
    #[schema(maximum = 10000)]
    pub count_per_window: u32,
}

/// The destinations a key may pay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowlistView {
    /// How long after a policy change an entry it adds may be paid at the earliest, seconds.
    pub time_lock_secs: u64,
    /// At most 24 entries, each (asset, destination) once.
    #[schema(max_items = 24)]
    pub entries: Vec<AllowEntryView>,
}

/// One destination a key may pay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowEntryView {
    /// The asset.
    #[schema(pattern = "^[A-Za-z0-9:._-]{1,64}$", max_length = 64)]
    pub asset: String,
    /// The destination, as the intent writes it (an address).
    #[schema(pattern = "^[A-Za-z0-9:._-]{1,100}$", max_length = 100)]
    pub destination: String,
    /// From when it may be paid (Unix seconds).
    pub not_before: u64,
}

/// A tier of another group a request must satisfy (a transaction that reaches it, or a
/// change of the rules of a policy that has it): `quorum` of its group besides the
/// request's quorum of the key's group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TierNeedView {
    /// The tier (with its `group`).
    pub tier: ApprovalTierView,
    /// Distinct admins of its group among the approvals so far.
    pub approved: u8,
}

/// Above `above` of `asset`, a transaction needs `quorum` approvals of the key's group or,
/// with `group`, of that group besides the key's quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalTierView {
    /// The asset.
    #[schema(pattern = "^[A-Za-z0-9:._-]{1,64}$", max_length = 64)]
    pub asset: String,
    /// The amount above which the tier applies (decimal).
    #[schema(pattern = "^[0-9]{1,39}$", max_length = 39)]
    pub above: String,
    /// Distinct approvers needed: of the key's group (more than the policy's quorum), or
    /// of `group`.
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// Another group than the key's (admin key fingerprints, hex), none of its admins in
    /// the key's group: above the amount, `quorum` of them approve besides the key's own
    /// quorum (a risk officer, the executives). Absent: the key's group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = super::schema::tier_group)]
    pub group: Vec<String>,
}
