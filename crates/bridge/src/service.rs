//! The Bridge gRPC service, node registry, health checks and routing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use custos_metadata::{KeyRecord, MetadataDb, NewEntry};
use custos_net::{
    client_config, connect_lazy, peer_info, serve_tls, server_config, PeerCache, TlsIdentity,
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
    decode_request, encode_request, Origin, Request, Response, ThresholdOrigin,
};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::audit::{audit_signature_valid, fresh_message, summary};
use crate::routing::{describe, node_lacks_key, Described};
use crate::{BridgeConfig, BridgeError, MAX_MESSAGE};
use custos_config::ConfigError;

use custos_pki::clock::now_unix;

mod upkeep;

fn now_ms() -> i64 {
    i64::try_from(custos_pki::clock::now_unix_ms()).unwrap_or(i64::MAX)
}

struct NodeEntry {
    endpoint: String,
    client: VaultNodeClient<Channel>,
    device_key: Vec<u8>,
    /// The chain the node presented when it registered (its `device_key` is the chain's).
    chain: custos_proto::cluster::DeviceChain,
    healthy: bool,
    held: HashSet<Vec<u8>>,
    /// Keys of the list this node is not known to hold: what its next sync must fetch.
    /// Kept beside `held` so a sync round costs O(missing), not O(all keys).
    missing: HashSet<Vec<u8>>,
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
    last_audit: tokio::sync::Mutex<Option<AuditReport>>,
    /// One audit at a time.
    audit_running: tokio::sync::Mutex<()>,
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
    /// Checks the caller's certificate chain; a refusal is written to the history.
    async fn caller<T>(&self, req: &GrpcRequest<T>, what: &str) -> Result<Caller, Status> {
        let st = &self.state;
        let Some(peer) = peer_info(req) else {
            return Err(Status::unauthenticated("no TLS peer"));
        };
        let verdict = st
            .callers
            .get_or_verify(peer, || match peer.device_chain() {
                None => Err(format!(
                    "presented {} certificate(s), a cluster member presents 3",
                    peer.certs.len()
                )),
                Some(chain) => {
                    let now = now_unix();
                    match st.root.verify_device(&chain, Some(&st.cluster), now) {
                        Ok(id) => Ok(Caller::Node(id)),
                        Err(device_err) => st
                            .root
                            .verify_bridge(&chain, Some(&st.cluster), now)
                            .map(Caller::Link)
                            .map_err(|_| device_err.to_string()),
                    }
                }
            });
        let refused = match verdict {
            Ok(c) => return Ok(c),
            Err(r) => r,
        };
        tracing::warn!(peer = %peer.remote_addr, %refused, what, "refused caller");
        let _ = st
            .db
            .append(NewEntry {
                kind: "refusal".into(),
                actor: peer.remote_addr.to_string(),
                outcome: "permission_denied".into(),
                detail: format!("{what}: {refused}"),
                ..Default::default()
            })
            .await;
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
        self.state.db.append(entry).await.map(|_| ()).map_err(|e| {
            Status::unavailable(format!("history cannot be written, request refused: {e}"))
        })
    }

    /// Nodes to try for a request, best first: healthy holders (rotated), then unhealthy
    /// holders (their health may be stale), or any node for requests making a new key.
    fn candidates(&self, d: &Described, pinned: &str) -> Vec<String> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        if !pinned.is_empty() {
            return if nodes.contains_key(pinned) {
                vec![pinned.to_string()]
            } else {
                Vec::new()
            };
        }
        let eligible = |n: &NodeEntry| match (&d.key_id, d.any_node) {
            (Some(k), false) => n.held.contains(k),
            _ => true,
        };
        let mut healthy: Vec<String> = Vec::new();
        let mut rest: Vec<String> = Vec::new();
        for (name, n) in nodes.iter() {
            if eligible(n) {
                if n.healthy {
                    healthy.push(name.clone())
                } else {
                    rest.push(name.clone())
                }
            }
        }
        if healthy.is_empty() && rest.is_empty() {
            // The bridge may not know every holder yet: let any node answer authoritatively.
            healthy = nodes
                .iter()
                .filter(|(_, n)| n.healthy)
                .map(|(k, _)| k.clone())
                .collect();
        }
        if !healthy.is_empty() {
            let start = self.state.rr.fetch_add(1, Ordering::Relaxed) % healthy.len();
            healthy.rotate_left(start);
        }
        healthy.extend(rest);
        healthy
    }

    fn node_client(&self, name: &str) -> Option<(VaultNodeClient<Channel>, Vec<u8>)> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(name)
            .map(|n| (n.client.clone(), n.device_key.clone()))
    }

    fn node_chain(&self, name: &str) -> Option<custos_proto::cluster::DeviceChain> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(name).map(|n| n.chain.clone())
    }

    fn mark(&self, name: &str, ok: bool) {
        let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.get_mut(name) {
            if ok {
                n.served += 1;
                n.healthy = true;
            } else {
                n.failures += 1;
                n.healthy = false;
            }
        }
    }

    fn record_new_key(&self, node: &str, info: &custos_wire::protocol::KeyInfo) {
        let origin = match info.origin {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
        };
        self.record_key(node, &info.key_id, &info.xpub, info.quorum, origin);
    }

    /// A threshold share a node now holds joins the key list, so that the cluster's other
    /// nodes fetch it by sync like a wallet ([0073]-[0074]).
    fn record_threshold_share(&self, node: &str, info: &custos_wire::protocol::ThresholdKeyInfo) {
        self.state
            .threshold
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.key_id.clone());
        let origin = match info.origin {
            ThresholdOrigin::Dealer => "threshold-dealer",
            ThresholdOrigin::Dkg => "threshold-dkg",
        };
        let description = format!(
            "threshold {}-of-{} share {}",
            info.threshold,
            info.clusters.len(),
            info.share_index
        );
        self.record_key(node, &info.key_id, &description, info.quorum, origin);
    }

    fn record_key(&self, node: &str, key_id: &[u8], xpub: &str, quorum: u8, origin: &str) {
        let st = &self.state;
        st.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.to_vec(), xpub.to_string());
        for (name, n) in st
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            if name == node {
                n.held.insert(key_id.to_vec());
                n.missing.remove(key_id);
            } else if !n.held.contains(key_id) {
                n.missing.insert(key_id.to_vec());
            }
        }
        st.pending_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(KeyRecord {
                key_id: hex::encode(key_id),
                xpub: xpub.to_string(),
                quorum: quorum as i64,
                origin: origin.to_string(),
                created_at_ms: now_ms(),
                created_on: node.to_string(),
            });
        st.sync_trigger.notify_one();
    }

    /// Routes one TEE request with failover; logs it before and after (fail closed).
    pub(crate) async fn route(&self, actor: String, call: TeeCall) -> Result<TeeReply, Status> {
        let request =
            decode_request(&call.request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let d = describe(&request).ok_or_else(|| {
            Status::invalid_argument("this TEE operation is not routed by the bridge")
        })?;
        let entry = |node: Option<String>, outcome: String, detail: String, us: i64| NewEntry {
            kind: d.kind.into(),
            request_id: d.request_id.clone(),
            actor: actor.clone(),
            key_id: d.key_id.as_ref().map(hex::encode),
            path: d.path.clone(),
            approvers: d.approvers.clone(),
            node,
            outcome,
            detail,
            duration_us: us,
        };
        self.log(entry(None, "received".into(), String::new(), 0))
            .await?;
        let t0 = Instant::now();
        let mut tried = Vec::new();
        for node in self.candidates(&d, &call.node) {
            let Some((mut client, device_key)) = self.node_client(&node) else {
                continue;
            };
            tried.push(node.clone());
            let fwd = TeeCall {
                request: call.request.clone(),
                node: String::new(),
            };
            let reply = tokio::time::timeout(self.state.call_timeout, client.execute(fwd)).await;
            let reply = match reply {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    tracing::warn!(%node, status = %status.message(), "node failed; failing over");
                    self.mark(&node, false);
                    continue;
                }
                Err(_) if d.kind == "create-wallet" => {
                    // The node may have created the wallet: another node must not create a
                    // second one. The caller retries with the same request id, which the TEE
                    // refuses if it was executed (and the node's key reaches the list when
                    // it re-registers).
                    self.mark(&node, false);
                    let us = t0.elapsed().as_micros() as i64;
                    let detail = format!("node {node} timed out; outcome unknown");
                    self.log(entry(
                        Some(node),
                        "outcome_unknown".into(),
                        detail.clone(),
                        us,
                    ))
                    .await?;
                    return Err(Status::deadline_exceeded(detail));
                }
                Err(_) => {
                    tracing::warn!(%node, "node timed out; failing over");
                    self.mark(&node, false);
                    continue;
                }
            };
            // The answer must come from that node's TEE (its D), untouched by the relay.
            let outcome = match verify_signed_response(&device_key, &call.request, &reply.response)
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(%node, error = %e, "response not signed by the node's TEE");
                    self.mark(&node, false);
                    continue;
                }
            };
            let us = t0.elapsed().as_micros() as i64;
            let (code, detail) = match &outcome {
                Ok(resp) => {
                    match resp {
                        Response::Wallet(info) => self.record_new_key(&node, info),
                        Response::ThresholdKey(info)
                        | Response::ThresholdKeygenRound {
                            key: Some(info), ..
                        } => self.record_threshold_share(&node, info),
                        _ => {}
                    }
                    ("ok".to_string(), String::new())
                }
                Err(e) if node_lacks_key(e) && call.node.is_empty() => {
                    // This holder lost the key: try the next one and let sync repair it.
                    if let Some(k) = &d.key_id {
                        if let Some(n) = self
                            .state
                            .nodes
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_mut(&node)
                        {
                            n.held.remove(k);
                            n.missing.insert(k.clone());
                        }
                    }
                    self.state.sync_trigger.notify_one();
                    continue;
                }
                Err(e) => (e.code().to_string(), e.to_string()),
            };
            self.mark(&node, true);
            self.log(entry(Some(node.clone()), code, detail, us))
                .await?;
            // Every answer carries the node's chain (not part of the request, so the
            // exactly-once store compares the same bytes whatever the caller knows).
            let chain = self.node_chain(&node);
            return Ok(TeeReply {
                response: reply.response,
                node,
                chain,
            });
        }
        let us = t0.elapsed().as_micros() as i64;
        let detail = format!("no node could serve; tried {tried:?}");
        let code = custos_proto::RefusalCode::Unavailable.as_str().to_string();
        self.log(entry(None, code, detail.clone(), us)).await?;
        Err(Status::unavailable(detail))
    }
}

#[tonic::async_trait]
impl Bridge for BridgeService {
    async fn audit(
        &self,
        req: GrpcRequest<AuditRequest>,
    ) -> Result<GrpcResponse<AuditReport>, Status> {
        self.link_caller(&req, "audit").await?;
        Ok(GrpcResponse::new(self.audit_round().await?))
    }

    async fn last_audit(
        &self,
        req: GrpcRequest<AuditRequest>,
    ) -> Result<GrpcResponse<AuditReport>, Status> {
        self.link_caller(&req, "last-audit").await?;
        self.last_audit_report().await.map(GrpcResponse::new)
    }

    async fn register(
        &self,
        req: GrpcRequest<RegisterRequest>,
    ) -> Result<GrpcResponse<RegisterReply>, Status> {
        let id = self.node_caller(&req, "register").await?;
        // The chain `node_caller` verified, kept to hand to callers that ask for it.
        let chain = peer_info(&req)
            .and_then(|p| p.device_chain())
            .map(|c| custos_proto::cluster::DeviceChain {
                device: c.device,
                cluster_ca: c.cluster_ca,
                device_ca: c.device_ca,
            })
            .ok_or_else(|| Status::permission_denied("no device chain"))?;
        let r = req.into_inner();
        if r.node != id.node {
            return Err(Status::permission_denied(format!(
                "certificate is for node {:?}, not {:?}",
                id.node, r.node
            )));
        }
        let addr: SocketAddr = r
            .endpoint
            .parse()
            .map_err(|_| Status::invalid_argument("endpoint must be host:port"))?;
        let channel = connect_lazy(
            addr,
            &format!("{}.{}.custos", id.node, self.state.cluster),
            self.state.client_cfg.clone(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let client = VaultNodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let held: HashSet<Vec<u8>> = r.held.into_iter().collect();
        let held_count = held.len();
        let missing: HashSet<Vec<u8>> = self
            .state
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|k| !held.contains(*k))
            .cloned()
            .collect();
        self.state
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.node.clone(),
                NodeEntry {
                    endpoint: r.endpoint.clone(),
                    client,
                    device_key: id.public_key.clone(),
                    chain,
                    healthy: true,
                    held,
                    missing,
                    served: 0,
                    failures: 0,
                },
            );
        self.log(NewEntry {
            kind: "register".into(),
            actor: id.node.clone(),
            node: Some(id.node.clone()),
            outcome: "ok".into(),
            detail: format!("endpoint {}, holds {held_count} key(s)", r.endpoint),
            ..Default::default()
        })
        .await?;
        // Keys this node holds that the list lacks (e.g. created while the bridge was down)
        // join the list, with their public facts read from the node's TEE.
        let this = self.clone();
        let node = id.node.clone();
        tokio::spawn(async move { this.learn_keys(&node).await });
        self.state.sync_trigger.notify_one();
        Ok(GrpcResponse::new(RegisterReply {
            cluster: self.state.cluster.clone(),
        }))
    }

    async fn key_list(
        &self,
        req: GrpcRequest<KeyListRequest>,
    ) -> Result<GrpcResponse<KeyListReply>, Status> {
        let id = self.node_caller(&req, "key-list").await?;
        let missing_only = req.get_ref().missing_only;
        let st = &self.state;
        // Lock order everywhere: keys, then nodes.
        let keys = st.keys.read().unwrap_or_else(|p| p.into_inner());
        let nodes = st.nodes.read().unwrap_or_else(|p| p.into_inner());
        let holders = |k: &Vec<u8>| -> Vec<String> {
            nodes
                .iter()
                .filter(|(_, n)| n.held.contains(k))
                .map(|(name, _)| name.clone())
                .collect()
        };
        let entries: Vec<KeyEntry> = match (missing_only, nodes.get(&id.node)) {
            (true, Some(me)) => me
                .missing
                .iter()
                .map(|k| KeyEntry {
                    key_id: k.clone(),
                    xpub: keys.get(k).cloned().unwrap_or_default(),
                    holders: holders(k),
                })
                .collect(),
            _ => keys
                .iter()
                .map(|(k, xpub)| KeyEntry {
                    key_id: k.clone(),
                    xpub: xpub.clone(),
                    holders: holders(k),
                })
                .collect(),
        };
        let endpoints = nodes
            .iter()
            .map(|(name, n)| NodeEndpoint {
                node: name.clone(),
                endpoint: n.endpoint.clone(),
                healthy: n.healthy,
            })
            .collect();
        Ok(GrpcResponse::new(KeyListReply {
            keys: entries,
            nodes: endpoints,
        }))
    }

    async fn report_sync(&self, req: GrpcRequest<SyncReport>) -> Result<GrpcResponse<Ack>, Status> {
        let id = self.node_caller(&req, "report-sync").await?;
        let r = req.into_inner();
        let count = r.imported.len();
        {
            let keys = self.state.keys.read().unwrap_or_else(|p| p.into_inner());
            let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = nodes.get_mut(&id.node) {
                // Only keys of the list count; a node cannot claim arbitrary ids.
                for k in r.imported.into_iter().filter(|k| keys.contains_key(k)) {
                    n.missing.remove(&k);
                    n.held.insert(k);
                }
            }
        }
        self.log(NewEntry {
            kind: "sync".into(),
            actor: id.node.clone(),
            node: Some(id.node.clone()),
            outcome: "ok".into(),
            detail: format!("imported {count} key(s), {} still missing", r.missing),
            ..Default::default()
        })
        .await?;
        Ok(GrpcResponse::new(Ack {}))
    }

    async fn submit(&self, req: GrpcRequest<TeeCall>) -> Result<GrpcResponse<TeeReply>, Status> {
        let actor = match self.caller(&req, "submit").await? {
            Caller::Link(id) => format!("link:{}", id.node),
            Caller::Node(id) => {
                return Err(Status::permission_denied(format!(
                    "vault node {} may not submit requests",
                    id.node
                )))
            }
        };
        self.route(actor, req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn status(
        &self,
        req: GrpcRequest<StatusRequest>,
    ) -> Result<GrpcResponse<ClusterStatus>, Status> {
        self.caller(&req, "status").await?;
        Ok(GrpcResponse::new(self.cluster_status()))
    }
}

impl BridgeService {
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

/// Runs a bridge server until the process ends.
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
    let server_cfg = server_config(&identity, &root_der)?;
    let client_cfg = client_config(&identity, &root_der)?;
    let db = MetadataDb::connect(&config.db_url).await?;
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
        last_audit: tokio::sync::Mutex::new(None),
        audit_running: tokio::sync::Mutex::new(()),
        call_timeout: Duration::from_millis(config.call_timeout_ms.max(100)),
    });
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
        tokio::spawn(async move { s.sync_pusher().await });
        let s = service.clone();
        tokio::spawn(async move { s.key_flusher().await });
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
    tonic::transport::Server::builder()
        .add_service(
            BridgeServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| BridgeError::Serve(e.to_string()))
}
