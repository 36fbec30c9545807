//! The VaultNode gRPC service and the node server's main loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use custos_net::{
    client_config, connect_lazy, peer_info, serve_tls, server_config, PeerCache, TlsIdentity,
};
use custos_pki::{pem_to_der, validity_window, DeviceChain, DeviceIdentity, TrustRoot};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::vault_node_server::{VaultNode, VaultNodeServer};
use custos_proto::cluster::{
    ExportReply, ExportRequest, HealthReply, HealthRequest, RegisterRequest, SyncNowReply,
    SyncNowRequest, TeeCall, TeeReply,
};
use custos_wire::protocol::{decode_request, RelayClass, Request, Response};
use tokio::sync::Notify;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::members::Members;
use crate::sync::{SyncError, Syncer};
use crate::{NodeConfig, NodeError, TeePool, MAX_MESSAGE};

/// Who is calling, after the application-level certificate check.
#[derive(Clone)]
enum Caller {
    Bridge,
    Peer(DeviceChain, DeviceIdentity),
}

use custos_pki::clock::now_unix;

pub(crate) fn tee_status(e: custos_wire::client::ClientError) -> Status {
    match e {
        custos_wire::client::ClientError::Tee(t) => Status::failed_precondition(t.to_string()),
        other => Status::unavailable(format!("TEE core unavailable: {other}")),
    }
}

struct NodeService {
    cluster: String,
    root: TrustRoot,
    tee: TeePool,
    syncer: Arc<Syncer>,
    callers: PeerCache<Caller>,
    members: Arc<Members>,
    /// What `/metrics` reports: the bridge's requests the TEE executed.
    metrics: Arc<custos_net::metrics::CallMetrics>,
}

impl NodeService {
    /// The bridge of this cluster, or a vault node of this cluster that is a current member
    /// of its governed log (any certified node while ungoverned); anyone else is refused with
    /// the reason (and the refusal logged).
    fn caller<T>(&self, req: &GrpcRequest<T>) -> Result<Caller, Status> {
        let peer = peer_info(req).ok_or_else(|| Status::unauthenticated("no TLS peer"))?;
        let caller = self.certified_caller(peer)?;
        // Membership is checked on every call, outside the certificate cache, so a removal
        // takes effect as soon as the view is refreshed rather than when the cache expires.
        if let Caller::Peer(_, id) = &caller {
            self.members.admit(id).map_err(|e| {
                tracing::warn!(
                    peer = %peer.remote_addr,
                    node = %id.node,
                    code = e.code(),
                    reason = %e,
                    "refused caller"
                );
                Status::permission_denied(e.to_string())
            })?;
        }
        Ok(caller)
    }

    /// The caller as its certificate chain proves it, cached per chain.
    fn certified_caller(&self, peer: &custos_net::PeerInfo) -> Result<Caller, Status> {
        self.callers.get_or_verify(peer, || {
            let refuse = |reason: String| {
                tracing::warn!(peer = %peer.remote_addr, %reason, "refused caller");
                Status::permission_denied(format!("refused: {reason}"))
            };
            let chain = peer.device_chain().ok_or_else(|| {
                refuse(format!(
                    "peer presented {} certificate(s), a cluster member presents 3",
                    peer.certs.len()
                ))
            })?;
            let now = now_unix();
            if self
                .root
                .verify_bridge(&chain, Some(&self.cluster), now)
                .is_ok()
            {
                return Ok(Caller::Bridge);
            }
            match self.root.verify_device(&chain, Some(&self.cluster), now) {
                Ok(id) => Ok(Caller::Peer(chain, id)),
                Err(e) => Err(refuse(e.to_string())),
            }
        })
    }

    fn bridge_only<T>(&self, req: &GrpcRequest<T>) -> Result<(), Status> {
        match self.caller(req)? {
            Caller::Bridge => Ok(()),
            Caller::Peer(..) => Err(Status::permission_denied(
                "only the cluster's bridge may call this",
            )),
        }
    }
}

#[tonic::async_trait]
impl VaultNode for NodeService {
    async fn execute(&self, req: GrpcRequest<TeeCall>) -> Result<GrpcResponse<TeeReply>, Status> {
        self.bridge_only(&req)?;
        let call = req.into_inner();
        let decoded =
            decode_request(&call.request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if decoded.relay_class() != RelayClass::Relayed {
            return Err(Status::permission_denied(
                "this TEE operation is not relayed from the bridge",
            ));
        }
        let started = std::time::Instant::now();
        let response = self.tee.forward(&call.request).await;
        let outcome = if response.is_ok() {
            "answered"
        } else {
            "failed"
        };
        let took = started.elapsed();
        self.metrics.record(outcome, took.as_secs_f64());
        // The id is the bridge's reading of the request, for logs only: nothing is decided
        // on it.
        tracing::info!(
            request_id = %call.request_id.get(..64).unwrap_or(&call.request_id),
            outcome,
            duration_us = took.as_micros() as u64,
            "TEE call"
        );
        if matches!(decoded, Request::ApplyGovernance { .. }) {
            // Refused or not, ask the TEE what it holds now: the forwarded answer is not
            // checked here, the view the TEE signs for the node is.
            self.members.refresh_or_log(&self.tee).await;
        }
        let response = response.map_err(tee_status)?;
        Ok(GrpcResponse::new(TeeReply {
            response,
            node: self.syncer.node.clone(),
            chain: None,
        }))
    }

    async fn health(
        &self,
        req: GrpcRequest<HealthRequest>,
    ) -> Result<GrpcResponse<HealthReply>, Status> {
        self.bridge_only(&req)?;
        let Response::Status(s) = self.tee.call(Request::Status).await.map_err(tee_status)? else {
            return Err(Status::internal("unexpected TEE status response"));
        };
        Ok(GrpcResponse::new(HealthReply {
            node: self.syncer.node.clone(),
            wallets: s.wallets as u64,
            corrupt_records: s
                .corrupt_records
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect(),
        }))
    }

    async fn sync_now(
        &self,
        req: GrpcRequest<SyncNowRequest>,
    ) -> Result<GrpcResponse<SyncNowReply>, Status> {
        self.bridge_only(&req)?;
        let (imported, missing) = self
            .syncer
            .sync_once()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(GrpcResponse::new(SyncNowReply {
            imported: imported as u64,
            missing: missing as u64,
        }))
    }

    async fn export_keys(
        &self,
        req: GrpcRequest<ExportRequest>,
    ) -> Result<GrpcResponse<ExportReply>, Status> {
        let Caller::Peer(chain, _) = self.caller(&req)? else {
            return Err(Status::permission_denied(
                "keys are exported to vault nodes only",
            ));
        };
        let key_ids = req.into_inner().key_ids;
        // The TEE checks the requester's chain itself; the chain passed is the one the peer
        // proved possession of in the TLS handshake.
        let resp = self
            .tee
            .call(Request::ExportKeys {
                requester: chain.into(),
                key_ids,
            })
            .await
            .map_err(tee_status)?;
        let Response::KeyTransfer(t) = resp else {
            return Err(Status::internal("unexpected TEE response to ExportKeys"));
        };
        Ok(GrpcResponse::new(ExportReply {
            transfer: postcard::to_allocvec(&t).expect("transfers serialize"),
        }))
    }
}

/// Runs a vault node server until the process ends.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    let socket = config.tee_socket.clone();
    let conns = config.tee_connections;
    let (tee, device_key) = tokio::task::spawn_blocking(move || TeePool::connect(&socket, conns))
        .await
        .map_err(|e| NodeError::Serve(e.to_string()))??;
    let Response::DeviceChain(chain) = tee.call(Request::DeviceChain).await? else {
        return Err(NodeError::NotProvisioned("no device chain".into()));
    };
    let root_pem = std::fs::read_to_string(&config.root_ca).map_err(|e| {
        NodeError::Config(custos_config::ConfigError::Read {
            path: config.root_ca.display().to_string(),
            reason: e.to_string(),
        })
    })?;
    let root_der = pem_to_der(&root_pem, "Root CA certificate")?;
    let root = TrustRoot::from_der(&root_der)?;
    let me = root.verify_device(&chain.clone().into(), Some(&config.cluster), now_unix())?;
    if me.node != config.node {
        return Err(NodeError::NotProvisioned(format!(
            "TEE is certified as node {:?}, configuration says {:?}",
            me.node, config.node
        )));
    }
    // The pool pins the key the TEE's status named; what the node trusts in signed answers
    // (its governance view above all) must come from the certified key.
    if device_key != me.public_key {
        return Err(NodeError::NotProvisioned(
            "TEE signs with a key other than the one its device certificate certifies".into(),
        ));
    }
    let members = Arc::new(Members::new(config.cluster.clone()));
    // Before serving: a governed node must never serve a moment on certificates alone.
    members.refresh(&tee).await?;
    // The chain is read once: a renewed certificate is presented after a restart.
    let (not_before, not_after) = validity_window(&[&chain.device])?;
    tracing::info!(
        node = %config.node,
        certificate = %hex::encode(me.fingerprint),
        not_after,
        "device certificate"
    );
    let lifetime = crate::cert_age::Lifetime {
        not_before,
        not_after,
    };
    tokio::spawn(crate::cert_age::watch(config.node.clone(), lifetime));

    // The TLS key is D inside the TEE: the handshake signature is made by the TEE, which
    // signs nothing but TLS 1.3 CertificateVerify inputs.
    let signer_pool = tee.clone();
    let identity = TlsIdentity::from_remote_signer(
        vec![
            chain.device.clone(),
            chain.cluster_ca.clone(),
            chain.device_ca.clone(),
        ],
        Arc::new(move |msg: &[u8]| {
            match signer_pool.call_blocking(&Request::SignTls {
                message: msg.to_vec(),
            }) {
                Ok(Response::TlsSignature(sig)) => Ok(sig),
                Ok(_) => Err("unexpected TEE response".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }),
    )?;
    let server_cfg = server_config(&identity, &root_der)?;
    let client_cfg = client_config(&identity, &root_der)?;
    let bridge_channel = connect_lazy(
        config.bridge,
        &format!("bridge.{}.custos", config.cluster),
        client_cfg.clone(),
    )?;
    let bridge = BridgeClient::new(bridge_channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);

    let trigger = Arc::new(Notify::new());
    let syncer = Arc::new(Syncer::new(
        config.node.clone(),
        config.cluster.clone(),
        tee.clone(),
        bridge.clone(),
        client_cfg,
        members.clone(),
    ));
    let service = NodeService {
        cluster: config.cluster.clone(),
        root,
        tee: tee.clone(),
        syncer: syncer.clone(),
        callers: PeerCache::new(Duration::from_secs(60)),
        members: members.clone(),
        metrics: Arc::new(custos_net::metrics::CallMetrics::new(
            "custos_node",
            "tee_calls",
            "Requests from the bridge executed by this node's TEE",
            0.0001,
        )),
    };
    if let Some(at) = config.metrics_listen {
        let metrics = Arc::clone(&service.metrics);
        custos_net::metrics::spawn_metrics(at, "node", Arc::new(move || metrics.encode()))
            .await
            .map_err(|e| NodeError::Serve(format!("bind metrics {at}: {e}")))?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| NodeError::Serve(format!("bind {}: {e}", config.listen)))?;
    let local: SocketAddr = listener
        .local_addr()
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    let incoming = serve_tls(listener, server_cfg).await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                VaultNodeServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming(incoming),
    );
    tracing::info!(node = %config.node, listen = %local, "vault node server listening");

    // Join (or rejoin) the cluster: register, then catch up on every key created meanwhile.
    let endpoint = config.advertise.unwrap_or(local).to_string();
    let registrar = || {
        let syncer = syncer.clone();
        let mut bridge = bridge.clone();
        let node = config.node.clone();
        let members = members.clone();
        let endpoint = endpoint.clone();
        async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let held = syncer.held_keys().await.unwrap_or_default();
                let req = RegisterRequest {
                    node: node.clone(),
                    endpoint: endpoint.clone(),
                    held,
                    // The bridge pushes the entries this node lacks (none: all of them).
                    gov_version: members.view().map(|v| v.version),
                };
                match bridge.register(req).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bridge registration failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    };
    registrar().await;
    println!("custos-node ready {} {}", config.node, local);
    let interval = Duration::from_secs(config.sync_interval_secs.max(1));
    let periodic = {
        let syncer = syncer.clone();
        let trigger = trigger.clone();
        async move {
            loop {
                match syncer.sync_once().await {
                    Ok(_) => {}
                    Err(SyncError::NotRegistered(why)) => {
                        tracing::warn!(reason = %why, "the bridge forgot this node; registering again");
                        registrar().await;
                    }
                    Err(e) => tracing::warn!(error = %e, "sync round failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = trigger.notified() => {}
                }
            }
        }
    };
    tokio::select! {
        r = server => r
            .map_err(|e| NodeError::Serve(e.to_string()))?
            .map_err(|e| NodeError::Serve(e.to_string())),
        _ = periodic => Ok(()),
    }
}

#[cfg(test)]
mod tests;
