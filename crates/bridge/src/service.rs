//! The Bridge gRPC service, node registry, health checks and routing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use custos_metadata::{KeyRecord, MetadataDb, NewEntry};
use custos_net::{
    client_config, connect_lazy, peer_info, serve_tls, server_config_anchored, PeerCache,
    TlsIdentity, TlsRefusal,
};
use custos_pki::{pem_to_der, DeviceIdentity, TrustRoot};
use custos_proto::cluster::bridge_server::{Bridge, BridgeServer};
use custos_proto::cluster::vault_node_client::VaultNodeClient;
use custos_proto::cluster::{
    Ack, AuditReport, AuditRequest, ClusterStatus, HealthRequest, KeyEntry, KeyListReply,
    KeyListRequest, NodeAudit, NodeEndpoint, NodeStatus, RegisterReply, RegisterRequest,
    StatusRequest, SyncNowRequest, SyncReport, TeeCall, TeeReply,
};
use custos_wire::client::verify_signed_response;
use custos_wire::protocol::{
    decode_request, encode_request, Origin, Request, Response, TeeError, ThresholdOrigin,
};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::audit::{audit_signature_valid, fresh_message, summary};
use crate::refusals::{app_reason, Layer, RefusalTally};
use crate::routing::{describe, node_lacks_key, Described};
use crate::{BridgeConfig, BridgeError, MAX_MESSAGE};
use custos_config::ConfigError;

use custos_pki::clock::now_unix;

mod foreign_governance;
mod governance;
mod grpc;
mod key_policy;
mod policy_check;
mod route;
mod sent_to;
mod upkeep;

pub use governance::GovernanceLoadError;

fn now_ms() -> i64 {
    i64::try_from(custos_pki::clock::now_unix_ms()).unwrap_or(i64::MAX)
}

struct NodeEntry {
    endpoint: String,
    client: VaultNodeClient<Channel>,
    device_key: Vec<u8>,
    /// The chain the node presented when it registered (its `device_key` is the chain's).
    chain: custos_proto::cluster::DeviceChain,
    /// notAfter of that chain's device certificate (Unix seconds), shown in `Status`.
    cert_not_after: u64,
    healthy: bool,
    held: HashSet<Vec<u8>>,
    /// Keys of the list this node is not known to hold: what its next sync must fetch.
    /// Kept beside `held` so a sync round costs O(missing), not O(all keys).
    missing: HashSet<Vec<u8>>,
    /// Keys this node reports as held whose policy changed since they were made: routed
    /// nothing until its TEE shows the latest version (`policy_check`).
    checking: HashSet<Vec<u8>>,
    served: u64,
    failures: u64,
}

struct State {
    cluster: String,
    root: TrustRoot,
    db: MetadataDb,
    client_cfg: Arc<rustls::ClientConfig>,
    nodes: RwLock<BTreeMap<String, NodeEntry>>,
    keys: RwLock<BTreeMap<Vec<u8>, String>>,
    /// Keys of the list that are threshold shares (T and P): synced like wallets, never
    /// audited with a root-key signature (they have no single signing key).
    threshold: RwLock<HashSet<Vec<u8>>>,
    pending_keys: std::sync::Mutex<Vec<KeyRecord>>,
    rr: AtomicUsize,
    sync_trigger: Notify,
    call_timeout: Duration,
    callers: PeerCache<Caller>,
    /// Refused callers, counted here and written as aggregated history rows.
    refusals: Arc<RefusalTally>,
    last_audit: tokio::sync::Mutex<Option<AuditReport>>,
    /// Where each one-effect request was sent ([`crate::routing::Described::one_effect`]):
    /// a later envelope with its id goes there only, whatever it asks, so that a resend
    /// whose pin was lost with an answer never reaches a second node (also after a restart:
    /// kept in the metadata DB).
    sent_to: sent_to::SentTo,
    /// One audit at a time.
    audit_running: tokio::sync::Mutex<()>,
    /// The cluster's membership: the state of the admin-approved governance log, verified
    /// against the Root (`None` while the cluster has no genesis: any device registers).
    gov: RwLock<Option<custos_wire::governance::GovState>>,
    /// The configured genesis id, if one is pinned.
    gov_pin: Option<[u8; 32]>,
    /// Held while a governance change or a key policy change is fanned out, and while a
    /// registration is checked against the membership and entered, so none of them sees a
    /// state being replaced.
    gov_apply: tokio::sync::Mutex<()>,
    /// The latest policy each changed key is under, as recorded in the metadata DB: a holder
    /// whose TEE enforces less is not routed the key (`policy_check`).
    policies: RwLock<std::collections::HashMap<Vec<u8>, policy_check::PolicyMark>>,
    /// What `/metrics` reports.
    metrics: Arc<crate::metrics::Metrics>,
    /// One policy check at a time.
    policy_checks: tokio::sync::Mutex<()>,
}

/// Who called the bridge, after the application-level certificate check.
#[derive(Clone)]
enum Caller {
    /// A vault node of this cluster.
    Node(DeviceIdentity),
    /// The cluster's relay side (bridge-role certificate): the link endpoint.
    Link(DeviceIdentity),
}

#[derive(Clone)]
pub(crate) struct BridgeService {
    state: Arc<State>,
}

impl BridgeService {
    /// Checks the caller's certificate chain; a refusal is counted and reaches the history
    /// as part of an aggregated row ([`RefusalTally`]), since a stranger can repeat it at will.
    async fn caller<T>(&self, req: &GrpcRequest<T>, what: &str) -> Result<Caller, Status> {
        let st = &self.state;
        let Some(peer) = peer_info(req) else {
            return Err(Status::unauthenticated("no TLS peer"));
        };
        let verdict = st
            .callers
            .get_or_verify(peer, || match peer.device_chain() {
                None => Err((
                    "not_a_device_chain",
                    format!(
                        "presented {} certificate(s), a cluster member presents 3",
                        peer.certs.len()
                    ),
                )),
                Some(chain) => {
                    let now = now_unix();
                    match st.root.verify_device(&chain, Some(&st.cluster), now) {
                        Ok(id) => Ok(Caller::Node(id)),
                        Err(device_err) => st
                            .root
                            .verify_bridge(&chain, Some(&st.cluster), now)
                            .map(Caller::Link)
                            .map_err(|_| (app_reason(&device_err), device_err.to_string())),
                    }
                }
            });
        let (code, refused) = match verdict {
            Ok(c) => return Ok(c),
            Err(r) => r,
        };
        tracing::debug!(peer = %peer.remote_addr, %refused, what, "refused caller");
        let leaf = peer.certs.first().map(|c| {
            let d = ring::digest::digest(&ring::digest::SHA256, c);
            <[u8; 32]>::try_from(d.as_ref()).expect("SHA-256 is 32 bytes")
        });
        st.refusals.record(Layer::App, code, leaf, now_ms(), || {
            format!("{what} from {}: {refused}", peer.remote_addr)
        });
        Err(Status::permission_denied(format!("refused: {refused}")))
    }

    async fn node_caller<T>(
        &self,
        req: &GrpcRequest<T>,
        what: &str,
    ) -> Result<DeviceIdentity, Status> {
        match self.caller(req, what).await? {
            Caller::Node(id) => Ok(id),
            Caller::Link(_) => Err(Status::permission_denied("only vault nodes may call this")),
        }
    }

    async fn log(&self, entry: NewEntry) -> Result<(), Status> {
        if entry.outcome != "received" {
            self.state
                .metrics
                .routed(&entry.kind, &entry.outcome, entry.duration_us);
            tracing::info!(
                request_id = entry.request_id.as_deref().unwrap_or_default(),
                kind = %entry.kind,
                node = entry.node.as_deref().unwrap_or_default(),
                outcome = %entry.outcome,
                duration_us = entry.duration_us,
                "request routed"
            );
        }
        self.state.db.append(entry).await.map(|_| ()).map_err(|e| {
            Status::unavailable(format!("history cannot be written, request refused: {e}"))
        })
    }
}

impl BridgeService {
    /// This bridge's metrics.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.state.metrics
    }

    /// The last audit report, if an audit has run since start-up.
    pub(crate) async fn last_audit_report(&self) -> Result<AuditReport, Status> {
        self.state
            .last_audit
            .lock()
            .await
            .clone()
            .ok_or_else(|| Status::not_found("no audit has run yet"))
    }

    /// The cluster's nodes and key count as the registry sees them now.
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        let st = &self.state;
        let keys = st.keys.read().unwrap_or_else(|p| p.into_inner()).len();
        let nodes = st.nodes.read().unwrap_or_else(|p| p.into_inner());
        ClusterStatus {
            cluster: st.cluster.clone(),
            keys: keys as u64,
            nodes: nodes
                .iter()
                .map(|(name, n)| NodeStatus {
                    node: name.clone(),
                    endpoint: n.endpoint.clone(),
                    healthy: n.healthy,
                    keys_held: n.held.len() as u64,
                    served: n.served,
                    failures: n.failures,
                    cert_not_after: n.cert_not_after,
                })
                .collect(),
        }
    }
}

impl BridgeService {
    async fn link_caller<T>(&self, req: &GrpcRequest<T>, what: &str) -> Result<(), Status> {
        match self.caller(req, what).await? {
            Caller::Link(_) => Ok(()),
            Caller::Node(id) => Err(Status::permission_denied(format!(
                "vault node {} may not call {what}",
                id.node
            ))),
        }
    }

    /// Audits every key of the list on every registered node; flags missing and wrong
    /// answers, repairs missing keys through sync, and writes one history line per node.
    pub(crate) async fn audit_round(&self) -> Result<AuditReport, Status> {
        let _one = self.state.audit_running.lock().await;
        let started = now_ms();
        let keys: Vec<Vec<u8>> = {
            let threshold = self
                .state
                .threshold
                .read()
                .unwrap_or_else(|p| p.into_inner());
            self.state
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .filter(|k| !threshold.contains(*k))
                .cloned()
                .collect()
        };
        let nodes: Vec<String> = self
            .state
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut report = AuditReport {
            started_at_ms: started as u64,
            finished_at_ms: 0,
            keys: keys.len() as u64,
            nodes: Vec::new(),
        };
        for node in nodes {
            let n = self.audit_node(&node, &keys).await;
            let outcome = if !n.error.is_empty() {
                "unreachable"
            } else if n.missing.is_empty() && n.wrong.is_empty() {
                "ok"
            } else {
                "flagged"
            };
            self.state.metrics.audited(&node, outcome);
            if !n.missing.is_empty() {
                let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = nodes.get_mut(&node) {
                    for k in &n.missing {
                        e.held.remove(k);
                        e.missing.insert(k.clone());
                    }
                }
                self.state.sync_trigger.notify_one();
            }
            self.log(NewEntry {
                kind: "audit".into(),
                actor: "bridge".into(),
                node: Some(node.clone()),
                outcome: outcome.into(),
                detail: summary(&n),
                ..Default::default()
            })
            .await?;
            report.nodes.push(n);
        }
        report.finished_at_ms = now_ms() as u64;
        *self.state.last_audit.lock().await = Some(report.clone());
        Ok(report)
    }
}

fn read_pem(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Runs a bridge server until the process receives SIGTERM or SIGINT; then it stops
/// accepting, lets calls in flight finish (bounded), writes the refusals still counted to the
/// history and returns.
pub async fn run(config: BridgeConfig) -> Result<(), BridgeError> {
    let root_der = pem_to_der(&read_pem(&config.root_ca)?, "Root CA certificate")?;
    let root = TrustRoot::from_der(&root_der)?;
    let chain = vec![
        pem_to_der(&read_pem(&config.cert)?, "bridge certificate")?,
        pem_to_der(&read_pem(&config.cluster_ca)?, "Cluster CA certificate")?,
        pem_to_der(&read_pem(&config.device_ca)?, "Device CA certificate")?,
    ];
    root.verify_bridge(
        &custos_pki::DeviceChain {
            device: chain[0].clone(),
            cluster_ca: chain[1].clone(),
            device_ca: chain[2].clone(),
        },
        Some(&config.cluster),
        now_unix(),
    )?;
    let key_pem = zeroize::Zeroizing::new(read_pem(&config.key)?);
    let key_der = zeroize::Zeroizing::new(pem_to_der(&key_pem, "bridge private key")?);
    let cas = (chain[1].clone(), chain[2].clone());
    let identity = TlsIdentity::from_local_key(chain, &key_der)?;
    let refusals = Arc::new(RefusalTally::new(Duration::from_secs(
        config.refusal_summary_secs.max(1),
    )));
    let observer = {
        let refusals = refusals.clone();
        Arc::new(move |r: TlsRefusal| {
            refusals.record(
                Layer::Tls,
                r.reason.as_str(),
                r.leaf_sha256,
                now_ms(),
                || format!("TLS handshake refused: {}", r.reason),
            )
        })
    };
    let server_cfg = server_config_anchored(&identity, &root_der, observer)?;
    let client_cfg = client_config(&identity, &root_der)?;
    let db = MetadataDb::connect(&config.db_url).await?;
    let gov_pin = config.genesis_pin().map_err(|reason| {
        BridgeError::Config(ConfigError::Invalid {
            path: "genesis_id".into(),
            reason,
        })
    })?;
    let gov = governance::load_governance(&db, &root, &config.cluster, gov_pin).await?;
    let sent_to = sent_to::SentTo::restore(&db).await?;
    let policies = policy_check::load(&db).await?;
    let records = db.keys().await?;
    let threshold = records
        .iter()
        .filter(|k| k.origin.starts_with("threshold"))
        .filter_map(|k| hex::decode(&k.key_id).ok())
        .collect();
    let keys = records
        .into_iter()
        .filter_map(|k| hex::decode(&k.key_id).ok().map(|id| (id, k.xpub)))
        .collect();
    let state = Arc::new(State {
        cluster: config.cluster.clone(),
        root,
        db,
        client_cfg,
        nodes: RwLock::new(BTreeMap::new()),
        keys: RwLock::new(keys),
        threshold: RwLock::new(threshold),
        pending_keys: std::sync::Mutex::new(Vec::new()),
        rr: AtomicUsize::new(0),
        sync_trigger: Notify::new(),
        callers: PeerCache::new(Duration::from_secs(60)),
        refusals,
        last_audit: tokio::sync::Mutex::new(None),
        audit_running: tokio::sync::Mutex::new(()),
        sent_to,
        call_timeout: Duration::from_millis(config.call_timeout_ms.max(100)),
        gov: RwLock::new(gov),
        gov_pin,
        gov_apply: tokio::sync::Mutex::new(()),
        policies: RwLock::new(policies),
        policy_checks: tokio::sync::Mutex::new(()),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    });
    if let Some(at) = config.metrics_listen {
        // The render holds the state, not the other way round: no cycle.
        let st = Arc::clone(&state);
        let render = move || {
            for (name, n) in st.nodes.read().unwrap_or_else(|p| p.into_inner()).iter() {
                st.metrics.node(name, n.healthy, n.missing.len());
            }
            st.metrics.encode()
        };
        custos_net::metrics::spawn_metrics(at, "bridge", Arc::new(render))
            .await
            .map_err(|e| BridgeError::Serve(format!("bind metrics {at}: {e}")))?;
    }
    let service = BridgeService { state };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| BridgeError::Serve(format!("bind {}: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| BridgeError::Serve(e.to_string()))?;
    let incoming = serve_tls(listener, server_cfg).await;
    {
        let s = service.clone();
        let every = Duration::from_millis(config.health_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                s.health_round().await;
            }
        });
        let s = service.clone();
        // Apart from the health rounds: a check waits on TEE answers.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                s.policy_round().await;
            }
        });
        let s = service.clone();
        tokio::spawn(async move { s.sync_pusher().await });
        let s = service.clone();
        tokio::spawn(async move { s.key_flusher().await });
        let s = service.clone();
        tokio::spawn(async move { s.refusal_flusher().await });
        let db = service.state.db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(sent_to::PRUNE_EVERY).await;
                if let Err(e) = sent_to::SentTo::prune(&db).await {
                    tracing::warn!(error = %e, "cannot delete old sent-to records");
                }
            }
        });
        if config.audit_interval_secs > 0 {
            let s = service.clone();
            let every = Duration::from_secs(config.audit_interval_secs);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = s.audit_round().await {
                        tracing::error!(error = %e.message(), "scheduled audit failed");
                    }
                }
            });
        }
    }
    let link_addr = match &config.link {
        Some(link) => {
            crate::link::start(
                link,
                &config.cluster,
                &service.state.root,
                (&cas.0, &cas.1),
                &key_der,
                service.clone(),
                now_unix(),
            )
            .await?
        }
        None => None,
    };
    tracing::info!(cluster = %config.cluster, listen = %local, "bridge server listening");
    // The gRPC address stays the last word: launchers parse it from there.
    match link_addr {
        Some(l) => println!("custos-bridge ready {} link={l} {local}", config.cluster),
        None => println!("custos-bridge ready {} {}", config.cluster, local),
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                BridgeServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    tokio::select! {
        r = &mut server => {
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BridgeError::Serve(e.to_string())),
                Err(e) => Err(BridgeError::Serve(e.to_string())),
            };
        }
        s = stop_signal() => s?,
    }
    tracing::info!(cluster = %config.cluster, "bridge stopping");
    let _ = stop_tx.send(());
    // Long-lived channels of nodes may not close by themselves; do not wait for ever.
    if tokio::time::timeout(Duration::from_secs(5), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    let written = service
        .state
        .refusals
        .flush(&service.state.db, now_ms(), true)
        .await?;
    tracing::info!(
        summaries = written,
        "bridge stopped; refusal counts written"
    );
    Ok(())
}

/// SIGTERM (what service managers and launchers send) or SIGINT.
async fn stop_signal() -> Result<(), BridgeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| BridgeError::Serve(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => {
            r.map_err(|e| BridgeError::Serve(format!("cannot watch SIGINT: {e}")))?;
        }
    }
    Ok(())
}
