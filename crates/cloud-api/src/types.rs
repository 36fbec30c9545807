//! The REST API's wire types with their OpenAPI schemas.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

/// A compressed secp256k1 public key: a wallet's root id or a threshold key's id.
pub type KeyId = [u8; 33];

/// What a request asks a cluster to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Generate a new wallet (BIP-32 root seed) inside a TEE.
    CreateWallet,
    /// Import an existing seed, sealed to one node's device key.
    ImportWallet,
    /// Sign a 32-byte digest with a wallet's child key.
    Sign,
    /// Import one cluster's share of a dealt threshold key (a dealer bundle sealed to one
    /// node).
    ImportThresholdKey,
    /// Sign a 32-byte digest with the child key of a threshold key, by t of its clusters.
    ThresholdSign,
    /// Create a threshold key by distributed key generation between its clusters' TEEs.
    CreateThresholdKey,
}

impl RequestKind {
    /// The stable name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::CreateWallet => "create_wallet",
            RequestKind::ImportWallet => "import_wallet",
            RequestKind::Sign => "sign",
            RequestKind::ImportThresholdKey => "import_threshold_key",
            RequestKind::ThresholdSign => "threshold_sign",
            RequestKind::CreateThresholdKey => "create_threshold_key",
        }
    }

    /// Every kind.
    pub const ALL: [RequestKind; 6] = [
        Self::CreateWallet,
        Self::ImportWallet,
        Self::Sign,
        Self::ImportThresholdKey,
        Self::ThresholdSign,
        Self::CreateThresholdKey,
    ];

    /// Whether the request concerns a threshold key.
    pub fn is_threshold(self) -> bool {
        matches!(
            self,
            Self::ImportThresholdKey | Self::ThresholdSign | Self::CreateThresholdKey
        )
    }

    /// Parses [`RequestKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a request is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for admin approvals.
    PendingApproval,
    /// Quorum reached; sent to the cluster, answer not yet recorded.
    Submitting,
    /// The cluster executed it; `result` holds the verified answer.
    Completed,
    /// The TEE or the bridge refused it (final); `error` says why.
    Refused,
    /// The cluster could not be reached or its answer did not verify; may be retried with
    /// the same request id (the link executes each id at most once).
    Failed,
    /// The approval window passed without quorum.
    Expired,
}

impl RequestStatus {
    /// The stable name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::PendingApproval => "pending_approval",
            RequestStatus::Submitting => "submitting",
            RequestStatus::Completed => "completed",
            RequestStatus::Refused => "refused",
            RequestStatus::Failed => "failed",
            RequestStatus::Expired => "expired",
        }
    }

    /// Parses [`RequestStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PendingApproval,
            Self::Submitting,
            Self::Completed,
            Self::Refused,
            Self::Failed,
            Self::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A secret text field (mnemonic, passphrase, seed hex): zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        SecretText(Zeroizing::new(s.into()))
    }

    /// The secret itself; callers must not log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One admin's approval: the admin certificate with its Admin CA, and an ECDSA P-256
/// signature over the request's approval message (`approval_message` of the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// Admin certificate (PEM).
    pub admin_cert_pem: String,
    /// Admin CA certificate (PEM).
    pub admin_ca_pem: String,
    /// DER signature, hex.
    pub signature_hex: String,
}

/// `POST /v1/wallets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWalletBody {
    /// Cluster that generates and holds the wallet.
    pub cluster: String,
    /// Distinct admins required to create and to use the wallet (1..=16).
    pub quorum: u8,
    /// Request id (32 hex characters); chosen by the server if absent. Needed up front
    /// only to pre-sign approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Unix seconds after which approvals are void (default: the server's request TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Approvals signed in advance; reaching quorum submits at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalBody>,
}

/// `POST /v1/wallets/import`: exactly one of `mnemonic` and `seed_hex`. The secret is
/// sealed at once to one node's certified device key and never stored or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportWalletBody {
    /// Cluster that will hold the wallet.
    pub cluster: String,
    /// Distinct admins required to use the wallet (1..=16).
    pub quorum: u8,
    /// BIP-39 mnemonic (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub mnemonic: Option<SecretText>,
    /// BIP-39 passphrase (with `mnemonic` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub passphrase: Option<SecretText>,
    /// Raw BIP-32 seed, 16 to 64 bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub seed_hex: Option<SecretText>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]. Admins sign the import of the root public key
    /// the secret yields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalBody>,
}

impl fmt::Debug for ImportWalletBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets are SecretText (redacted) already; listed explicitly so a new field
        // cannot slip in unreviewed.
        f.debug_struct("ImportWalletBody")
            .field("cluster", &self.cluster)
            .field("quorum", &self.quorum)
            .field("mnemonic", &self.mnemonic.as_ref().map(|_| "[redacted]"))
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .field("seed_hex", &self.seed_hex.as_ref().map(|_| "[redacted]"))
            .field("request_id", &self.request_id)
            .field("expires_at", &self.expires_at)
            .field("approvals", &self.approvals.len())
            .finish()
    }
}

/// `POST /v1/sign-requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequestBody {
    /// Wallet (hex of the 33-byte root public key).
    pub root_id: String,
    /// BIP-32 path, e.g. `m/44'/0'/0'/0/3` (hardened steps allowed).
    pub path: String,
    /// The 32-byte digest to sign, hex.
    pub digest: String,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]: with quorum here, the request is signed in the
    /// same call (200).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalBody>,
}

/// `POST /v1/threshold/keys/import`: one cluster's share of a dealt threshold key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportThresholdKeyBody {
    /// Hex of the dealer bundle (postcard encoding of the TEE protocol's
    /// `ThresholdBundle`, at most 256 KiB), as the dealer program wrote it. It is sealed to
    /// one node's device key; the cloud server finds that node by the bundle's recipient
    /// fingerprint and only relays it.
    pub bundle_hex: String,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]. Admins sign the import of share `share_index`
    /// of the key (approval message made with the share's cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalBody>,
}

/// `POST /v1/threshold/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSignBody {
    /// Threshold key (hex of the 33-byte joint public key).
    pub key_id: String,
    /// Non-hardened BIP-32 path below the joint key, e.g. `m/0/1` (`m` for the key
    /// itself; keys without chain code only sign with `m`).
    pub path: String,
    /// The 32-byte digest to sign, hex. May be left out when `message` is given (it is
    /// then SHA-256 of the message; if given, it must be that).
    #[serde(default)]
    pub digest: String,
    /// The full message to sign, hex (at most 64 KiB), for a key without chain code
    /// (path `m`): the digest is SHA-256 of it, and the request is served from a
    /// presignature when one is ready (online signing: one short exchange with each of its
    /// t clusters, whose TEEs hash the message themselves), else by the interactive protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Clusters to sign with, in order of preference: at least t of the key's clusters;
    /// the first t reachable ones take part. Default: the clusters holding an imported
    /// share, healthy ones first. Shown in the request view's `target_node`, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]; the approval message is made with the cluster
    /// `*threshold*` (the action spans clusters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    pub clusters: Vec<String>,
    /// Signers the key needs (t, 2 ≤ t ≤ n).
    pub threshold: u16,
    /// Distinct admins required to create and to use the key (1..=16).
    pub quorum: u8,
    /// BIP-32 derivation of non-hardened children (a chain code); default true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub hd: bool,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]; the approval message is made with the cluster
    /// `*threshold*` (the action spans clusters) and covers t, n's clusters in order, HD and
    /// the quorum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalBody>,
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

/// A wallet known to the cloud server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletView {
    /// Hex of the 33-byte compressed root public key.
    pub root_id: String,
    /// Cluster holding it.
    pub cluster: String,
    /// Root extended public key.
    pub xpub: String,
    /// Distinct admins required to use it.
    pub quorum: u8,
    /// When it was recorded (Unix milliseconds).
    pub created_at_ms: u64,
    /// The request that created or imported it.
    pub created_by_request: String,
}

/// `GET /v1/wallets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletList {
    /// Oldest first.
    pub wallets: Vec<WalletView>,
}

/// `GET /v1/wallets/{root_id}/derive` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeriveQuery {
    /// Non-hardened BIP-32 path below the root, e.g. `m/0/7` (default `m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// First child index of an address list under `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u32>,
    /// Number of children listed (at most 1000); no list without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// A derived child address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DerivedAddress {
    /// Child index under the derivation path.
    pub index: u32,
    /// Full path of the child.
    pub path: String,
    /// Compressed public key, hex.
    pub public_key: String,
    /// P2WPKH address.
    pub address: String,
}

/// Public derivation from a wallet's xpub (no TEE involved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeriveView {
    /// Wallet.
    pub root_id: String,
    /// Normalized path.
    pub path: String,
    /// Extended public key at `path`.
    pub xpub: String,
    /// Compressed public key at `path`, hex.
    pub public_key: String,
    /// P2WPKH address of `public_key`.
    pub address: String,
    /// Bitcoin network of the addresses.
    pub network: String,
    /// Children `start..start+count` of `path`, when `count` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<DerivedAddress>>,
}

/// An approval recorded on a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// Admin common name.
    pub admin: String,
    /// SHA-256 of the admin certificate, hex.
    pub fingerprint: String,
    /// When the cloud server accepted it (Unix milliseconds).
    pub approved_at_ms: u64,
}

/// One lifecycle event of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened (`created`, `approved`, `submitting`, `completed`, ...).
    pub event: String,
    /// Details (never secrets).
    pub detail: String,
}

/// A verified secp256k1 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignResult {
    /// r, 32 bytes hex.
    pub r: String,
    /// s, 32 bytes hex (low-s).
    pub s: String,
    /// Recovery id (0 or 1).
    pub v: u8,
    /// Compressed public key that signed, hex.
    pub public_key: String,
    /// The signature DER-encoded, hex.
    pub signature_der: String,
    /// Threshold signing: the clusters that signed, in signing order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Threshold signing from a presignature: its id, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presignature: Option<String>,
}

/// `POST /v1/threshold/keys/{key_id}/presignatures`: make presignatures ahead of time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MakePresignaturesBody {
    /// How many (1 to 64); each is one session between t clusters.
    pub count: u32,
    /// The t clusters to make them with (default: the healthiest share holders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// A wallet created or imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletResult {
    /// Hex of the root public key.
    pub root_id: String,
    /// Root extended public key.
    pub xpub: String,
}

/// What a completed request produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RequestResult {
    /// Of a `sign` or `threshold_sign` request.
    Signature(SignResult),
    /// Of a `create_wallet` or `import_wallet` request.
    Wallet(WalletResult),
    /// Of an `import_threshold_key` request.
    ThresholdShare(ThresholdShareResult),
    /// Of a `create_threshold_key` request.
    ThresholdKey(ThresholdKeyResult),
}

/// Why a request was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestError {
    /// Stable code, e.g. `tee_approval_rejected`, `cluster_unavailable`, `bad_signature`.
    pub code: String,
    /// For humans.
    pub message: String,
}

/// A request with everything an approver needs to check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    /// 16 bytes, hex: also the TEE request id and the link's exactly-once key.
    pub id: String,
    /// What it asks.
    pub kind: RequestKind,
    /// Target cluster (`*threshold*` for threshold signing and key creation, which span
    /// clusters).
    pub cluster: String,
    /// Lifecycle state.
    pub status: RequestStatus,
    /// Wallet (sign, import; create once completed), or threshold key (threshold kinds;
    /// key creation once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// Threshold import: index of the share imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_index: Option<u16>,
    /// Threshold key creation: signers the new key needs (t).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u16>,
    /// Threshold key creation: whether the key gets a chain code (HD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<bool>,
    /// Threshold key creation: the cluster of each share, by share index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// BIP-32 path (sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Digest, hex (sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Threshold signing of a full message: the message, hex (`digest` is its SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Distinct admin approvals required.
    pub quorum: u8,
    /// Approvals so far (distinct admins).
    pub approvals: Vec<ApprovalView>,
    /// Unix seconds after which approvals are void.
    pub expires_at: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    /// API token name that created it.
    pub created_by: String,
    /// Import: the node the secret (or threshold bundle) is sealed to. Threshold signing:
    /// the clusters the caller named, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Submissions so far.
    pub attempts: u32,
    /// Hex of the exact bytes an admin signs to approve (Custos approval message).
    /// Approvers should recompute it from the fields above rather than trust it.
    pub approval_message: String,
    /// One-line description for humans.
    pub summary: String,
    /// Verified result, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RequestResult>,
    /// Refusal or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RequestError>,
    /// Lifecycle log, oldest first (empty in lists).
    #[serde(default)]
    pub events: Vec<EventView>,
}

/// `GET /v1/requests` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// Only requests in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<RequestStatus>)]
    pub status: Option<RequestStatus>,
    /// Only requests of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<RequestKind>)]
    pub kind: Option<RequestKind>,
    /// At most this many (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestView>,
}

/// A configured cluster and whether its relay answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// Cluster name.
    pub name: String,
    /// External relay address.
    pub relay: String,
    /// The relay answered a status request.
    pub reachable: bool,
    /// Nodes known to the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Healthy nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_nodes: Option<u32>,
    /// Keys in the cluster key list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// Why it is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/clusters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    /// In configuration order.
    pub clusters: Vec<ClusterView>,
}

/// One vault node as the bridge sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatusView {
    /// Node name.
    pub node: String,
    /// Where the node server listens (cluster intranet).
    pub endpoint: String,
    /// Passing health checks.
    pub healthy: bool,
    /// Keys it holds.
    pub keys_held: u64,
    /// Requests served.
    pub served: u64,
    /// Failed requests.
    pub failures: u64,
}

/// `GET /v1/clusters/{name}`: the bridge's view of its cluster (reported by the bridge,
/// not signed by a TEE: informational).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatusView {
    /// Cluster name as the bridge reports it.
    pub cluster: String,
    /// Keys in the cluster key list.
    pub keys: u64,
    /// Healthy nodes.
    pub healthy: u32,
    /// Every node.
    pub nodes: Vec<NodeStatusView>,
}

/// One node's part of an audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeAuditView {
    /// Node name.
    pub node: String,
    /// Keys audited.
    pub checked: u64,
    /// Keys whose audit signature verified.
    pub ok: u64,
    /// Keys the node lacks (hex key ids).
    pub missing: Vec<String>,
    /// Keys whose audit signature did not verify (hex key ids).
    pub wrong: Vec<String>,
    /// Why the node could not be audited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A key audit report (patent \[0086\]), as run by the cluster's bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditReportView {
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Unix milliseconds.
    pub finished_at_ms: u64,
    /// Keys in the key list.
    pub keys: u64,
    /// Per node.
    pub nodes: Vec<NodeAuditView>,
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

/// The error document of every failed API call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiErrorDetail,
}

/// Inside [`ApiErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorDetail {
    /// Stable snake_case code (see the API description).
    pub code: String,
    /// For humans.
    pub message: String,
    /// The request concerned, when one was created (e.g. `cluster_unavailable` after a
    /// request was recorded: retry it with `POST /v1/requests/{id}/retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
