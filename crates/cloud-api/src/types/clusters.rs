//! Wallets and their public derivation, clusters, their nodes and audits.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    #[param(
        pattern = "^m(/([0-9]{1,9}|[01][0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])){0,32}$",
        max_length = 512
    )]
    pub path: Option<String>,
    /// First child index of an address list under `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(maximum = 2147483647)]
    pub start: Option<u32>,
    /// Number of children listed (at most 1000); no list without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
}

/// `GET /v1/wallets/{root_id}/xpub` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct XpubQuery {
    /// BIP-32 path below the root, hardened steps allowed, e.g. `m/84'/0'/0'`.
    #[param(
        pattern = "^m(/([0-9]{1,9}|[01][0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])['hH]?){0,32}$",
        max_length = 512
    )]
    pub path: String,
}

/// An extended public key below hardened steps, as a TEE of the wallet's cluster derived it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct XpubView {
    /// Wallet.
    pub root_id: String,
    /// Normalized path.
    pub path: String,
    /// Extended public key at `path` (mainnet encoding, `xpub...`).
    pub xpub: String,
    /// The wallet's master key fingerprint (BIP-32), 8 hex characters: the key origin a
    /// descriptor or PSBT names.
    pub fingerprint: String,
    /// The node whose TEE derived it.
    pub node: String,
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
    /// Keys audited (of every tenant: a count names no key).
    pub checked: u64,
    /// Keys whose audit signature verified (of every tenant).
    pub ok: u64,
    /// Keys of the caller's tenant the node lacks (hex key ids).
    pub missing: Vec<String>,
    /// Keys of the caller's tenant whose audit signature did not verify (hex key ids).
    pub wrong: Vec<String>,
    /// Missing or failing keys that are not the caller's tenant's (another tenant's, or
    /// recorded by no request of this server): counted so the node's trouble shows, never
    /// named.
    #[serde(default)]
    pub hidden: u64,
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
    /// Keys in the cluster's key list (of every tenant).
    pub keys: u64,
    /// Per node.
    pub nodes: Vec<NodeAuditView>,
}
