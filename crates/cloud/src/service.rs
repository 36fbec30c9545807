//! The cloud server's logic, independent of HTTP: requests, approvals, submission through
//! the relays, verification of answers, wallets and derivation.
//!
//! By flow: `lifecycle` (any request from creation to its recorded outcome), `wallets`
//! (wallet requests, their execution in one cluster's TEE, derivation), `threshold`
//! (threshold keys and the sessions run across clusters); this file holds the state, its
//! opening, and what the flows share (verdicts, TEE requests, approval messages, views of
//! clusters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1};
use bitcoin::Network;
use custos_pki::{AdminCache, TrustRoot, VerifiedAdmin};
use custos_proto::cluster::ClusterStatus;
use custos_wire::approval::{check_signature, Approval, MAX_APPROVAL_LIFETIME_SECS};
use custos_wire::import::{import_key_id, seal_import};
use custos_wire::protocol::{
    encode_request, EcdsaSignature, ImportSecret, KeyInfo, Request, RequestMeta, Response,
    SecretBytes, SecretString, TeeError, MAX_APPROVALS,
};
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use zeroize::Zeroizing;

use crate::access::{Principal, Tokens};
use crate::approval::decode_approval;
use crate::cluster::{random_id, CallError, Clusters, TeeAnswer};
use crate::config::{CloudConfig, ClusterConfig};
use crate::db::{
    Record, RequestRow, Store, StoreError, StoredApproval, ThresholdKeyRow, ThresholdShareRow,
    WalletRow,
};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::terms::{KeyId, Terms};
use crate::Clock;
use custos_cloud_api::approval::{
    parse_digest, parse_fingerprint, parse_group, parse_request_id, parse_root_id,
};
use custos_cloud_api::path::{
    derive_xpub, has_hardened, p2wpkh_address, parse_network, parse_path, PathError,
};
use custos_cloud_api::*;

mod audits;
mod child_keys;
mod executors;
mod governance;
mod key_policy;
mod lifecycle;
mod rejection;
mod threshold;
mod transactions;
mod wallets;

pub use child_keys::ChildKeys;
pub use rejection::{rejection_message, REJECTED, REJECTION_DOMAIN};
pub use wallets::verify_sign_result;

pub use threshold::{
    check_threshold_key_info, decode_bundle, threshold_xpub, MAX_BUNDLE, MAX_KEYGEN_EXCHANGES,
    MAX_PRESIGNATURES_PER_CALL, MAX_THRESHOLD_CLUSTERS, MAX_THRESHOLD_EXCHANGES,
    THRESHOLD_KEYGEN_TIMEOUT, THRESHOLD_SESSION_TIMEOUT,
};

use custos_wire::protocol::{format_path, MAX_QUORUM};
/// Most children one derive call lists.
pub const MAX_DERIVE_COUNT: u32 = 1000;
/// Most requests one list call returns.
pub const MAX_LIST: u32 = 500;
/// Compare-and-swap retries when approvals race.
const CAS_RETRIES: usize = 8;

/// Failures opening the service.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The trust root could not be read or is not a Custos Root CA.
    #[error("trust root {path}: {reason}")]
    TrustRoot {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a creation or approval call produced.
#[derive(Debug)]
pub struct RequestOutcome {
    /// The request as it now stands.
    pub view: RequestView,
    /// Whether it was submitted to its cluster during this call.
    pub submitted: bool,
}

/// A request about to be recorded.
struct Draft {
    cluster: String,
    quorum: u8,
    terms: Terms,
    id: [u8; 16],
    expires_at: u64,
    approvals: Vec<ApprovalBody>,
    /// The wallet's recorded xpub when the caller already read it (sign requests).
    wallet_xpub: Option<String>,
}

/// The cloud server's state.
pub struct Cloud {
    store: Store,
    clusters: Clusters,
    cluster_config: Vec<ClusterConfig>,
    trust_root: TrustRoot,
    tokens: Tokens,
    ttl_secs: u64,
    network: Network,
    clock: Clock,
    secp: Secp256k1<All>,
    admins: Mutex<AdminCache>,
    /// Clusters blamed by the last failed attempt of a threshold request (request id →
    /// clusters), avoided by its next attempt when the caller named none.
    threshold_blamed: Mutex<HashMap<String, Vec<String>>>,
    /// This process among the cloud servers sharing the database.
    replica: crate::replica::Replica,
    /// Presignatures to keep ready per key without chain code (0: on request only).
    presignature_pool: u32,
    /// Wallets read from the store (absence is never cached). Only a wallet's quorum
    /// changes: a request this server completes forgets its row, and a heartbeat that sees
    /// another replica forgets every row.
    wallets: Mutex<WalletCache>,
    /// Parents of recently signed paths, so that checking a signature's key costs one
    /// derivation step.
    child_keys: ChildKeys,
    /// Wallet creations chosen so far per cluster: the next executor is the serving node
    /// after the last one chosen (round-robin), so creations spread over the nodes.
    executor_turns: Mutex<HashMap<String, usize>>,
    /// Per cluster, what was last verified of its governance log: whom an executor choice
    /// may name, without a log read per creation.
    known_logs: Mutex<HashMap<String, executors::KnownLog>>,
    /// The version of each cluster's governance log this server last pushed to a node of
    /// another cluster, by (node's cluster, node, log's cluster): a co-signer's TEE checks
    /// another cluster's participants against that log (plan step D5), and a log is sent
    /// again only once it has moved on. In memory only: after a restart every log is pushed
    /// once more (harmless, the TEE keeps what it holds).
    foreign_pushed: Mutex<HashMap<(String, String, String), u64>>,
    /// What `/metrics` reports.
    metrics: Arc<crate::metrics::Metrics>,
    /// The approvers' console, when served.
    console: Option<crate::config::ConsoleConfig>,
    /// Where request events are notified.
    webhooks: crate::webhooks::Webhooks,
}

/// The wallet rows [`Cloud`] read, and how many times it forgot one: a row read from the
/// store while a wallet was forgotten may be the old one, and is not kept.
#[derive(Default)]
struct WalletCache {
    rows: HashMap<String, WalletRow>,
    forgotten: u64,
}

/// Most wallets [`Cloud`] keeps in memory (the cache is emptied when full).
const WALLET_CACHE: usize = 100_000;

/// The system clock (Unix milliseconds).
pub fn system_clock() -> Clock {
    Arc::new(custos_pki::clock::now_unix_ms)
}

/// `tee_` + the TEE refusal's stable code ([`TeeError::code`]).
pub fn tee_code(e: &TeeError) -> String {
    format!("tee_{}", e.code())
}

impl Cloud {
    /// Opens the database (migrating it) and sets up cluster access through `gateway`.
    pub async fn open(
        config: &CloudConfig,
        gateway: Arc<dyn Gateway>,
    ) -> Result<Arc<Self>, OpenError> {
        Self::open_on(config, gateway, system_clock(), true).await
    }

    /// [`Cloud::open`] with a chosen clock (tests move time forward to expire requests),
    /// which also judges replicas' liveness (instead of the database's clock).
    pub async fn open_with_clock(
        config: &CloudConfig,
        gateway: Arc<dyn Gateway>,
        clock: Clock,
    ) -> Result<Arc<Self>, OpenError> {
        Self::open_on(config, gateway, clock, false).await
    }

    async fn open_on(
        config: &CloudConfig,
        gateway: Arc<dyn Gateway>,
        clock: Clock,
        db_clock: bool,
    ) -> Result<Arc<Self>, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let trust_root = load_trust_root(&config.trust_root)?;
        let url = config
            .db_url
            .as_deref()
            .ok_or_else(|| OpenError::Config("db_url is not set (use CloudConfig::load)".into()))?;
        let store = Store::connect(url).await?;
        let tokens = Tokens::new(&config.api_tokens);
        let mut secp = Secp256k1::new();
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed[..]);
        // Blinds libsecp256k1's context against side channels.
        secp.seeded_randomize(&seed);
        let replica = crate::replica::Replica::new(clock(), config.replica_ttl_secs, db_clock);
        let webhooks =
            crate::webhooks::Webhooks::open(&config.webhooks).map_err(OpenError::Config)?;
        Ok(Arc::new(Cloud {
            store,
            clusters: Clusters::new(
                gateway,
                trust_root.clone(),
                config.submit_attempts,
                clock.clone(),
            ),
            cluster_config: config.clusters.clone(),
            trust_root,
            tokens,
            ttl_secs: config.request_ttl_secs,
            network: parse_network(&config.network).map_err(OpenError::Config)?,
            clock,
            secp,
            admins: Mutex::new(AdminCache::default()),
            threshold_blamed: Mutex::new(HashMap::new()),
            replica,
            presignature_pool: config.presignature_pool,
            wallets: Mutex::new(WalletCache::default()),
            child_keys: ChildKeys::default(),
            executor_turns: Mutex::new(HashMap::new()),
            known_logs: Mutex::new(HashMap::new()),
            foreign_pushed: Mutex::new(HashMap::new()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            console: config.console.clone(),
            webhooks,
        }))
    }

    /// The configured clusters' names, in configuration order.
    pub fn configured_clusters(&self) -> Vec<String> {
        self.cluster_config.iter().map(|c| c.name.clone()).collect()
    }

    /// The approvers' console's configuration, when it is served.
    pub fn console_config(&self) -> Option<&crate::config::ConsoleConfig> {
        self.console.as_ref()
    }

    /// The configured webhooks.
    pub(crate) fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.webhooks
    }

    /// This server's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The database handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This process as one of the cloud servers sharing the database.
    pub fn replica(&self) -> &crate::replica::Replica {
        &self.replica
    }

    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The holder of the API token `token`, if it is configured.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        self.tokens.principal(token)
    }

    /// The configured API tokens with their rate limits.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    fn cluster_config(&self, name: &str) -> Result<&ClusterConfig, ApiError> {
        self.cluster_config
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownCluster,
                    format!("no cluster {name:?} is configured"),
                )
            })
    }

    // ----- requests -------------------------------------------------------------------

    fn request_id_and_expiry(
        &self,
        request_id: Option<&str>,
        expires_at: Option<u64>,
    ) -> Result<([u8; 16], u64), ApiError> {
        let id = match request_id {
            Some(s) => {
                parse_request_id(s).map_err(|m| ApiError::new(ErrorCode::InvalidRequestId, m))?
            }
            None => random_id(),
        };
        let now = self.now_secs();
        let expires_at = expires_at.unwrap_or(now + self.ttl_secs);
        if expires_at <= now || expires_at > now + MAX_APPROVAL_LIFETIME_SECS {
            return Err(ApiError::new(
                ErrorCode::InvalidExpiry,
                format!(
                    "expires_at must be after now ({now}) and at most {MAX_APPROVAL_LIFETIME_SECS} s ahead"
                ),
            ));
        }
        Ok((id, expires_at))
    }

    fn check_quorum(quorum: u8) -> Result<(), ApiError> {
        if quorum == 0 || quorum > MAX_QUORUM {
            return Err(ApiError::new(
                ErrorCode::InvalidQuorum,
                format!("quorum {quorum} outside 1..={MAX_QUORUM}"),
            ));
        }
        Ok(())
    }

    // ----- clusters ---------------------------------------------------------------------

    /// `GET /v1/clusters`: every configured cluster with a quick reachability probe.
    pub async fn cluster_list(&self) -> ClusterList {
        let probes = self.cluster_config.iter().map(|c| async move {
            let probe = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.clusters.status(&c.name, false),
            )
            .await
            .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())));
            match probe {
                Ok(s) => ClusterView {
                    name: c.name.clone(),
                    relay: c.relay.to_string(),
                    reachable: true,
                    nodes: Some(s.nodes.len() as u32),
                    healthy_nodes: Some(s.nodes.iter().filter(|n| n.healthy).count() as u32),
                    keys: Some(s.keys),
                    error: None,
                },
                Err(e) => ClusterView {
                    name: c.name.clone(),
                    relay: c.relay.to_string(),
                    reachable: false,
                    nodes: None,
                    healthy_nodes: None,
                    keys: None,
                    error: Some(e.to_string()),
                },
            }
        });
        ClusterList {
            clusters: futures::future::join_all(probes).await,
        }
    }

    /// `GET /v1/clusters/{name}`.
    pub async fn cluster_status(&self, name: &str) -> Result<ClusterStatusView, ApiError> {
        self.cluster_config(name)?;
        let s = self
            .clusters
            .status(name, true)
            .await
            .map_err(call_api_error)?;
        Ok(status_view(s))
    }
}

/// How one submission of a request ended, as [`Cloud::finish`] records it.
pub(crate) enum Verdict {
    /// Done, its answer verified: `completed`.
    Completed(Box<Completion>),
    /// Not done, and another submission with the same id may succeed: `failed`.
    Failed(Failure),
    /// Final: `refused` (a retry cannot help; a new request needs new approvals).
    Refused(Failure),
    /// Sent to `node`, answer lost: stays `submitting`, pinned to that node, and is sent
    /// again with the same id until it completes or its approvals expire.
    Unknown {
        /// The node it may have executed on.
        node: String,
        /// Why.
        failure: Failure,
    },
}

/// A completed request's verified result, with what it records besides itself.
pub(crate) struct Completion {
    /// The node (or, for threshold requests, the clusters) that served it.
    node: String,
    result: RequestResult,
    recorded: Record,
}

impl Verdict {
    fn completed(node: String, result: RequestResult, recorded: Record) -> Self {
        Verdict::Completed(Box::new(Completion {
            node,
            result,
            recorded,
        }))
    }

    /// [`Verdict::Failed`] when `may_retry`, else [`Verdict::Refused`].
    pub(crate) fn ended(failure: Failure, may_retry: bool) -> Self {
        if may_retry {
            Verdict::Failed(failure)
        } else {
            Verdict::Refused(failure)
        }
    }
}

/// Why a submission did not complete: a stable code and a message for humans.
pub(crate) struct Failure {
    code: String,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Writes the failure into `row` with `status`; the event's name and detail.
    fn record(self, row: &mut RequestRow, status: RequestStatus) -> (&'static str, String, Record) {
        row.status = status;
        let detail = format!("{}: {}", self.code, self.message);
        row.error_code = Some(self.code);
        row.error_message = Some(self.message);
        (status.as_str(), detail, Record::Nothing)
    }
}

/// The TEE request of a non-threshold request, encoded.
fn tee_request(row: &RequestRow) -> Result<Vec<u8>, String> {
    let meta = RequestMeta {
        request_id: parse_request_id(&row.id)?,
        expires_at: row.expires_at,
    };
    let request = row
        .terms
        .tee_request(meta, row.quorum, tee_approvals(row)?)
        .ok_or("threshold requests run as sessions")?;
    Ok(encode_request(&request))
}

/// The exact bytes an admin signs to approve `row`.
fn message_of(row: &RequestRow) -> Vec<u8> {
    let meta = RequestMeta {
        // Ids are written by this server as 16 bytes of hex and checked when read back.
        request_id: parse_request_id(&row.id).unwrap_or_default(),
        expires_at: row.expires_at,
    };
    row.terms.approval_message(&row.cluster, row.quorum, &meta)
}

/// The approvals of a request as the TEE takes them: those that meet its requirements
/// ([`executors::needed_approvals`]), never more than the TEE accepts.
fn tee_approvals(row: &RequestRow) -> Result<Vec<Approval>, String> {
    executors::needed_approvals(row)
        .into_iter()
        .map(|a| {
            let hex = |s: &str| hex::decode(s).map_err(|e| e.to_string());
            Ok(Approval {
                admin_cert: hex(&a.cert)?,
                admin_ca: hex(&a.ca)?,
                signature: hex(&a.signature)?,
                webauthn: match &a.webauthn {
                    None => None,
                    Some(w) => Some(custos_wire::approval::PasskeyAssertion {
                        authenticator_data: hex(&w.authenticator_data_hex)?,
                        client_data_json: hex(&w.client_data_json_hex)?,
                    }),
                },
            })
        })
        .collect()
}

fn response_name(r: &Response) -> String {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

pub(crate) fn load_trust_root(path: &std::path::Path) -> Result<TrustRoot, OpenError> {
    let err = |reason: String| OpenError::TrustRoot {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let der =
        custos_pki::pem_to_der(&pem, "Root CA certificate").map_err(|e| err(e.to_string()))?;
    TrustRoot::from_der(&der).map_err(|e| err(e.to_string()))
}

/// An API error for a cluster call made on the caller's behalf.
fn call_api_error(e: CallError) -> ApiError {
    match e {
        CallError::UnknownCluster(c) => {
            ApiError::new(ErrorCode::UnknownCluster, format!("no cluster {c:?}"))
        }
        CallError::Unavailable(m) => ApiError::new(ErrorCode::ClusterUnavailable, m),
        CallError::Rejected(m) => ApiError::new(ErrorCode::RelayRejected, m),
        CallError::Refused { code, message } => ApiError::new(
            ErrorCode::BridgeRefused,
            format!("{}: {message}", code.as_str()),
        ),
        e @ CallError::OutcomeUnknown { .. } => {
            ApiError::new(ErrorCode::BridgeRefused, e.to_string())
        }
        CallError::Unverified(m) | CallError::Protocol(m) => {
            ApiError::new(ErrorCode::UnverifiedResponse, m)
        }
    }
}

fn status_view(s: ClusterStatus) -> ClusterStatusView {
    ClusterStatusView {
        healthy: s.nodes.iter().filter(|n| n.healthy).count() as u32,
        cluster: s.cluster,
        keys: s.keys,
        nodes: s
            .nodes
            .into_iter()
            .map(|n| NodeStatusView {
                node: n.node,
                endpoint: n.endpoint,
                healthy: n.healthy,
                keys_held: n.keys_held,
                served: n.served,
                failures: n.failures,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::lifecycle::base_view;
    use super::*;
    use bitcoin::bip32::{ChildNumber, Xpriv};
    use bitcoin::NetworkKind;
    use custos_wire::approval::THRESHOLD_SCOPE;
    use custos_wire::protocol::HARDENED;

    /// A row of `terms` in its scope, completed with `result` when given.
    fn row_of(terms: Terms, result: Option<&str>) -> RequestRow {
        let cluster = if terms.spans() {
            THRESHOLD_SCOPE
        } else {
            "dc1"
        };
        RequestRow {
            result: result.map(String::from),
            ..RequestRow::sample(cluster, terms)
        }
    }

    /// Approvers recompute the approval message from the view (never trusting the
    /// server's bytes); the server makes it from the terms. Both agree for every kind.
    #[test]
    fn the_view_gives_approvers_the_message_the_server_checks() {
        let g = PublicKey::from_secret_key(
            &Secp256k1::new(),
            &bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).unwrap(),
        )
        .serialize();
        let bundle = custos_wire::protocol::ThresholdBundle {
            key: custos_wire::protocol::ThresholdKeyInfo {
                key_id: g.to_vec(),
                chain_code: None,
                threshold: 2,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 2,
                origin: custos_wire::protocol::ThresholdOrigin::Dealer,
                share_index: 0,
            },
            recipient_fingerprint: [0; 32],
            dealer_cert: vec![],
            dealer_ca: vec![],
            enc: vec![],
            ciphertext: vec![],
            signature: vec![],
        };
        let all = [
            Terms::CreateGroupWallet {
                group: vec![[1; 32], [2; 32], [3; 32]],
                executor_node: "node2".into(),
                executor: [9; 32],
                rules: vec![],
            },
            Terms::ImportWallet {
                root_id: g,
                node: "node1".into(),
                sealed: custos_wire::import::SealedImport {
                    enc: vec![1],
                    ciphertext: vec![2],
                },
                group: vec![],
                rules: vec![],
            },
            Terms::ImportWallet {
                root_id: g,
                node: "node1".into(),
                sealed: custos_wire::import::SealedImport {
                    enc: vec![1],
                    ciphertext: vec![2],
                },
                group: vec![[1; 32], [2; 32]],
                rules: vec![],
            },
            // A group import with its transaction rules, rebuilt by the approver.
            Terms::ImportWallet {
                root_id: g,
                node: "node1".into(),
                sealed: custos_wire::import::SealedImport {
                    enc: vec![1],
                    ciphertext: vec![2],
                },
                group: vec![[1; 32], [2; 32]],
                rules: custos_cloud_api::PolicyRules::new_wallet_default()
                    .to_rules()
                    .unwrap(),
            },
            Terms::Sign {
                root_id: g,
                path: vec![HARDENED | 44, 0, 7],
                digest: [3; 32],
            },
            Terms::ImportThresholdKey {
                node: "node1".into(),
                bundle,
            },
            Terms::ThresholdSign {
                key_id: g,
                path: vec![],
                digest: Sha256::digest(b"m").into(),
                message: Some(b"m".to_vec()),
                clusters: Some(vec!["dc2".into(), "dc1".into()]),
            },
            Terms::CreateThresholdKey {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
            },
            Terms::CreateGroupThresholdKey {
                threshold: 2,
                hd: false,
                clusters: vec!["dc1".into(), "dc2".into()],
                group: vec![[1; 32], [2; 32], [3; 32]],
                executor_nodes: vec!["node2".into(), "node1".into()],
                executors: vec![[8; 32], [9; 32]],
                anchors: Vec::new(),
                rules: Vec::new(),
            },
            Terms::CreateGroupThresholdKey {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                group: vec![[1; 32], [2; 32]],
                executor_nodes: vec!["node2".into(), "node1".into()],
                executors: vec![[8; 32], [9; 32]],
                anchors: vec![[5; 32], [6; 32]],
                rules: custos_cloud_api::PolicyRules::new_wallet_default()
                    .to_rules()
                    .unwrap(),
            },
            Terms::Governance(crate::terms::GovTerms {
                version: 2,
                prev: [4; 32],
                change: custos_wire::governance::GovChange::SetGovernors {
                    governors: vec![[1; 32], [2; 32], [3; 32]],
                    quorum: 2,
                },
            }),
            Terms::Governance(crate::terms::GovTerms {
                version: 5,
                prev: [6; 32],
                change: custos_wire::governance::GovChange::Remove {
                    key_fingerprint: [7; 32],
                    reason: "decommissioned".into(),
                },
            }),
        ];
        // A wallet's group change and a threshold key's (with and without anchors).
        let policy =
            |version, group: Vec<[u8; 32]>, anchors: &[[u8; 32]]| custos_wire::policy::KeyPolicy {
                version,
                ..custos_cloud_api::approval::new_threshold_policy(group, 2, anchors)
            };
        let anchors = [[5; 32], [6; 32]];
        let clusters = || vec!["dc1".to_string(), "dc2".to_string()];
        let changes = [
            crate::terms::PolicyTerms::new(
                g,
                &policy(1, vec![[1; 32], [2; 32]], &[]),
                &policy(2, vec![[1; 32], [3; 32]], &[]),
            ),
            crate::terms::PolicyTerms::threshold(
                g,
                clusters(),
                vec![],
                &custos_wire::policy::KeyPolicy::legacy(2),
                &policy(1, vec![[1; 32], [3; 32]], &[]),
            ),
            crate::terms::PolicyTerms::threshold(
                g,
                clusters(),
                anchors.to_vec(),
                &policy(3, vec![[1; 32], [2; 32]], &anchors),
                &policy(4, vec![[2; 32], [3; 32]], &anchors),
            ),
        ];
        for terms in all.into_iter().chain(changes.map(Terms::SetKeyPolicy)) {
            let kind = terms.kind();
            let row = row_of(terms, None);
            row.terms.check(&row.cluster, row.quorum).unwrap();
            let view = base_view(&row);
            assert_eq!(
                custos_cloud_api::approval::approval_message(&view).unwrap(),
                message_of(&row),
                "{kind:?}"
            );
        }
        // A creation made before approver groups is shown, but no approver signs it.
        let legacy = base_view(&row_of(Terms::CreateWallet { node: None }, None));
        assert!(custos_cloud_api::approval::approval_message(&legacy).is_err());
        // A completed creation shows the wallet it made, from its result.
        let done = row_of(
            Terms::CreateWallet { node: None },
            Some(&format!(r#"{{"root_id":"{}","xpub":"x"}}"#, hex::encode(g))),
        );
        assert_eq!(base_view(&done).root_id, Some(hex::encode(g)));
    }

    fn sign(
        secp: &Secp256k1<All>,
        key: &bitcoin::secp256k1::SecretKey,
        digest: &[u8; 32],
    ) -> EcdsaSignature {
        let rs = secp.sign_ecdsa_recoverable(&Message::from_digest(*digest), key);
        let (recid, compact) = rs.serialize_compact();
        EcdsaSignature {
            r: compact[..32].try_into().unwrap(),
            s: compact[32..].try_into().unwrap(),
            v: recid.to_i32() as u8,
            public_key: PublicKey::from_secret_key(secp, key).serialize().to_vec(),
        }
    }

    #[test]
    fn sign_results_are_verified_against_the_wallet() {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(NetworkKind::Main, &[7u8; 32]).unwrap();
        let xpub = Xpub::from_priv(&secp, &master).to_string();
        let path = [0u32, 7];
        let steps: Vec<ChildNumber> = path.iter().map(|&i| ChildNumber::from(i)).collect();
        let child = master.derive_priv(&secp, &steps).unwrap();
        let digest = [9u8; 32];
        let good = sign(&secp, &child.private_key, &digest);
        let keys = ChildKeys::default();
        let r = verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &good).unwrap();
        assert_eq!(r.public_key, hex::encode(&good.public_key));

        // A valid signature by the wrong key (the root instead of the child).
        let wrong_key = sign(&secp, &master.private_key, &digest);
        let e =
            verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &wrong_key).unwrap_err();
        assert!(e.contains("wallet's key"), "{e}");
        // Over another digest.
        let e =
            verify_sign_result(&secp, &keys, &[8u8; 32], &path, Some(&xpub), &good).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // A valid signature returned with another key than the one that made it.
        let mut lie = good.clone();
        lie.public_key = wrong_key.public_key.clone();
        let e = verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &lie).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // The right key in its uncompressed form.
        let mut long = good.clone();
        long.public_key = PublicKey::from_slice(&good.public_key)
            .unwrap()
            .serialize_uncompressed()
            .to_vec();
        let r = verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &long).unwrap();
        assert_eq!(
            r.public_key,
            hex::encode(&good.public_key),
            "given compressed"
        );
        // Wrong recovery id.
        let mut bad_v = good.clone();
        bad_v.v ^= 1;
        assert!(verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &bad_v).is_err());
        // High s.
        let mut high = good.clone();
        let n = bitcoin::secp256k1::constants::CURVE_ORDER;
        let mut s = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(good.s[i]) - borrow;
            s[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        high.s = s;
        let e = verify_sign_result(&secp, &keys, &digest, &path, Some(&xpub), &high).unwrap_err();
        assert!(e.contains("low-s"), "{e}");
        // Hardened paths cannot be checked against the xpub, the signature still is.
        let hardened = [1u32 << 31];
        assert!(
            verify_sign_result(&secp, &keys, &digest, &hardened, Some(&xpub), &wrong_key).is_ok()
        );
        assert!(
            verify_sign_result(&secp, &keys, &[8u8; 32], &hardened, Some(&xpub), &wrong_key)
                .is_err()
        );
    }

    #[test]
    fn tee_error_codes() {
        assert_eq!(
            tee_code(&TeeError::ApprovalRejected {
                index: 0,
                fault: custos_wire::protocol::ApprovalFault::BadSignature,
                detail: String::new()
            }),
            "tee_approval_rejected"
        );
        assert_eq!(
            tee_code(&TeeError::RootAlreadyPinned),
            "tee_root_already_pinned"
        );
        assert_eq!(
            tee_code(&TeeError::UnknownKey("x".into())),
            "tee_unknown_key"
        );
        // A co-signer lacking another cluster's log (plan step D5): the server pushes it and
        // starts again once; a second refusal fails the attempt under this code.
        assert_eq!(
            tee_code(&TeeError::ForeignLogMissing {
                cluster: "dc2".into(),
                genesis_id: [1; 32],
            }),
            "tee_foreign_log_missing"
        );
    }
}
