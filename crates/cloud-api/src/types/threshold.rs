//! Threshold keys over the API: share imports, signing, key generation, presignatures,
//! the key views and audits.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

/// `POST /v1/threshold/keys/import`: one cluster's share of a dealt threshold key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportThresholdKeyBody {
    /// Hex of the dealer bundle (postcard encoding of the TEE protocol's
    /// `ThresholdBundle`, at most 256 KiB), as the dealer program wrote it. It is sealed to
    /// one node's device key; the cloud server finds that node by the bundle's recipient
    /// fingerprint and only relays it.
    #[schema(pattern = "^([0-9a-fA-F]{2})+$", max_length = 524288)]
    pub bundle_hex: String,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]. Admins sign the import of share `share_index`
    /// of the key (approval message made with the share's cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
}

/// `POST /v1/threshold/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSignBody {
    /// Threshold key (hex of the 33-byte joint public key).
    #[schema(pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)]
    pub key_id: String,
    /// Non-hardened BIP-32 path below the joint key, e.g. `m/0/1` (`m` for the key
    /// itself; keys without chain code only sign with `m`).
    #[schema(
        pattern = "^m(/([0-9]{1,9}|[01][0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])){0,32}$",
        max_length = 512
    )]
    pub path: String,
    /// The 32-byte digest to sign, hex. May be left out when `message` is given (it is
    /// then SHA-256 of the message; if given, it must be that).
    #[serde(default)]
    #[schema(pattern = "^([0-9a-fA-F]{64})?$", max_length = 64)]
    pub digest: String,
    /// The full message to sign, hex (at most 64 KiB), for a key without chain code
    /// (path `m`): the digest is SHA-256 of it, and the request is served from a
    /// presignature when one is ready (online signing: one short exchange with each of its
    /// t clusters, whose TEEs hash the message themselves), else by the interactive protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^([0-9a-fA-F]{2})*$", max_length = 131072)]
    pub message: Option<String>,
    /// Clusters to sign with, in order of preference: at least t of the key's clusters;
    /// the first t reachable ones take part. Default: the clusters holding an imported
    /// share, healthy ones first. Shown in the request view's `target_node`, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::sign_clusters)]
    pub clusters: Option<Vec<String>>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]; the approval message is made with the cluster
    /// `*threshold*` (the action spans clusters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `POST /v1/threshold/keys`: a new t-of-n threshold key made by distributed key generation
/// between the TEEs of its n clusters (no dealer, and no single TEE, ever holds the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThresholdKeyBody {
    /// The n clusters, in share order: cluster i holds share i (2 to 64, distinct,
    /// configured).
    #[schema(schema_with = super::schema::key_clusters)]
    pub clusters: Vec<String>,
    /// Signers the key needs (t, 2 ≤ t ≤ n).
    #[schema(minimum = 2, maximum = 64)]
    pub threshold: u16,
    /// Distinct admins required to create and to use the key (1..=16).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// BIP-32 derivation of non-hardened children (a chain code); default true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub hd: bool,
    /// The key's approver group, fixed at creation and sealed with every share (see
    /// [`CreateWalletBody::group`]; `quorum` is of this group). With a group, the server
    /// names one executing node per cluster when it records the request, the approval
    /// message binds their device keys, and every attempt runs on those nodes only: a
    /// retry can never make a second key. Absent: a key generation without group or
    /// executors (any `quorum` admins approve it), kept for deployments without groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::approver_group)]
    pub group: Option<Vec<String>>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]; the approval message is made with the cluster
    /// `*threshold*` (the action spans clusters) and covers t, n's clusters in order, HD and
    /// the quorum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
    /// The key's transaction rules, with a `group` only (as [`CreateWalletBody::rules`],
    /// sealed with every share and part of what is approved; a window names its
    /// `velocity_share` and that share's node as `velocity_holder`). Absent: transactions
    /// only (raw digests are off for new keys); `{}`: raw digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::PolicyRules>,
}

/// Where one share of a threshold key was imported (or made, by distributed key
/// generation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdShareView {
    /// Share index.
    pub share_index: u16,
    /// Cluster holding it.
    pub cluster: String,
    /// Node whose TEE imported (or made) it (the cluster's other nodes sync it).
    pub node: String,
    /// Unix milliseconds.
    pub imported_at_ms: u64,
    /// The import request (or the key's creation request).
    pub request_id: String,
}

/// A threshold key known to the cloud server (recorded by its first share import, or by the
/// distributed key generation that made it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdKeyView {
    /// Hex of the 33-byte compressed joint public key.
    pub key_id: String,
    /// Extended public key of the joint key (depth 0) when HD derivation is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xpub: Option<String>,
    /// Signers needed (t).
    pub threshold: u16,
    /// Cluster holding each share, by share index (n entries).
    pub clusters: Vec<String>,
    /// Distinct admins required to use it.
    pub quorum: u8,
    /// `dealer` or `dkg`.
    pub origin: String,
    /// Shares whose import completed through this server (or that its key generation made).
    pub shares: Vec<ThresholdShareView>,
    /// Share indexes not (yet) imported through this server.
    pub missing_shares: Vec<u16>,
    /// When it was recorded (Unix milliseconds).
    pub created_at_ms: u64,
    /// The request that recorded it (a share import or the key's creation).
    pub created_by_request: String,
}

/// `GET /v1/threshold/keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdKeyList {
    /// Oldest first.
    pub keys: Vec<ThresholdKeyView>,
}

/// A threshold share imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdShareResult {
    /// Joint public key, hex.
    pub key_id: String,
    /// Share index imported.
    pub share_index: u16,
    /// Cluster holding it.
    pub cluster: String,
    /// Node whose TEE imported it.
    pub node: String,
    /// Extended public key of the joint key, when HD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xpub: Option<String>,
}

/// A threshold key made by distributed key generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdKeyResult {
    /// Joint public key (compressed), hex: the key's id.
    pub key_id: String,
    /// Extended public key of the joint key (depth 0), when HD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xpub: Option<String>,
    /// Signers needed (t).
    pub threshold: u16,
    /// Cluster holding each share, by share index.
    pub clusters: Vec<String>,
    /// Distinct admins required to use it.
    pub quorum: u8,
    /// `dkg`.
    pub origin: String,
    /// Where each share is held: cluster and the node whose TEE made it (the cluster's
    /// other nodes sync it).
    pub shares: Vec<ThresholdKeyShare>,
}

/// One share of a key made by distributed key generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdKeyShare {
    /// Share index.
    pub share_index: u16,
    /// Cluster holding it.
    pub cluster: String,
    /// Node whose TEE made and holds it.
    pub node: String,
}

/// `POST /v1/threshold/keys/{key_id}/presignatures`: make presignatures ahead of time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakePresignaturesBody {
    /// How many (1 to 64); each is one session between t clusters.
    #[schema(minimum = 1, maximum = 64)]
    pub count: u32,
    /// The t clusters to make them with (default: the healthiest share holders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::presign_clusters)]
    pub clusters: Option<Vec<String>>,
}

/// A presignature, held inside its t signers' TEEs (never anywhere else).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PresignatureView {
    /// Its id (the session's execution id), hex.
    pub id: String,
    /// The clusters holding it, in signing order.
    pub clusters: Vec<String>,
    /// The node of each cluster whose TEE holds it.
    pub nodes: Vec<String>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// The ready presignatures of a threshold key; after making some, also what was made and
/// what failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PresignaturePool {
    /// Threshold key, hex.
    pub key_id: String,
    /// Ready presignatures, oldest (next used) first.
    pub ready: Vec<PresignatureView>,
    /// Made by this call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made: Vec<PresignatureView>,
    /// Sessions of this call that failed, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// One session of a threshold key audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdAuditSessionView {
    /// Clusters that took part, in signing order.
    pub clusters: Vec<String>,
    /// The random audit message signed (8 bytes, hex).
    pub message_hex: String,
    /// r, 32 bytes hex, when the session returned a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    /// s, 32 bytes hex (low-s), when the session returned a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    /// Recovery id, when the session returned a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u8>,
    /// The signature verified against the key's root public key over
    /// `audit_digest(message)`.
    pub verified: bool,
    /// Why the session failed (`code: message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Clusters the failure was blamed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blamed: Vec<String>,
}

/// One cluster's result in a threshold key audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdAuditClusterView {
    /// Cluster name.
    pub cluster: String,
    /// At least one session the cluster took part in produced a verified signature.
    pub ok: bool,
    /// Why not, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A threshold key audit (patent \[0086\]): audit signing sessions covering every cluster
/// holding a share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdAuditReport {
    /// Hex of the joint public key.
    pub key_id: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Unix milliseconds.
    pub finished_at_ms: u64,
    /// Every session run.
    pub sessions: Vec<ThresholdAuditSessionView>,
    /// Every cluster holding a share, by share index.
    pub clusters: Vec<ThresholdAuditClusterView>,
}
