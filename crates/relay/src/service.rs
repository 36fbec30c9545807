//! The `ExternalRelay` gRPC service and the process around it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use custos_link::qr::{QrDirs, QrTransport};
use custos_link::{
    AnswerCheck, ClientConfig, ClientTransport, LinkClient, LinkError, LinkKeys, LinkStats,
    SerialLine, SerialTransport, SpoolDirs, SpoolTransport, TcpTransport, MAX_PAYLOAD,
};
use custos_net::{
    client_config_without_identity, connect_lazy, serve_tls, server_config_without_client_auth,
    TlsIdentity,
};
use custos_pki::{pem_to_der, DeviceChain, Service, TrustRoot};
use custos_proto::cluster::external_relay_server::{ExternalRelay, ExternalRelayServer};
use custos_proto::cluster::{RelayAnswer, RelayCall};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::{RelayConfig, TransportConfig, MAX_MESSAGE};

/// gRPC metadata key of the cloud server's bearer token (`Bearer <token>`).
pub const RELAY_TOKEN_HEADER: &str = "authorization";

/// Failures of the external relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Unusable configuration or file.
    #[error("{0}")]
    Config(String),
    /// A certificate did not verify.
    #[error(transparent)]
    Pki(#[from] custos_pki::PkiError),
    /// TLS set-up failed.
    #[error(transparent)]
    Net(#[from] custos_net::NetError),
    /// The link could not be set up.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Serving failed.
    #[error("relay server: {0}")]
    Serve(String),
}

struct RelayService<T> {
    client: Arc<LinkClient<T>>,
    token_sha256: [u8; 32],
    metrics: Arc<custos_net::metrics::CallMetrics>,
}

impl<T> RelayService<T> {
    fn authorize<M>(&self, req: &Request<M>) -> Result<(), Status> {
        let token = req
            .metadata()
            .get(RELAY_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("bearer token required"))?;
        // Comparing digests, not tokens: the timing of a mismatch says nothing useful
        // about the token.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if digest != self.token_sha256 {
            return Err(Status::unauthenticated("bearer token not accepted"));
        }
        Ok(())
    }
}

/// A link failure's name in the metrics.
fn outcome_of(e: &LinkError) -> &'static str {
    match e {
        LinkError::Timeout => "timeout",
        LinkError::Io(_) => "io",
        LinkError::Refused { .. } => "refused",
        LinkError::Handler(_) => "handler_failed",
        LinkError::RequestIdReused => "request_id_reused",
        LinkError::Oversize { .. } => "oversize",
        LinkError::BadSignature | LinkError::UnexpectedResponse(_) => "not_authentic",
        _ => "other",
    }
}

/// How a link failure is reported to the cloud server.
fn status_of(e: LinkError) -> Status {
    let message = e.to_string();
    match e {
        LinkError::Timeout | LinkError::Io(_) => Status::unavailable(message),
        LinkError::RequestIdReused => Status::already_exists(message),
        LinkError::Oversize { .. } => Status::resource_exhausted(message),
        LinkError::Refused { .. } | LinkError::Handler(_) => Status::failed_precondition(message),
        // An answer that is not authentic, or addressed to another request: the link or
        // the bridge is not who it should be.
        LinkError::BadSignature
        | LinkError::WrongCluster { .. }
        | LinkError::Malformed(_)
        | LinkError::UnsupportedVersion(_)
        | LinkError::UnexpectedResponse(_) => Status::data_loss(message),
        _ => Status::internal(message),
    }
}

#[tonic::async_trait]
impl<T: ClientTransport + 'static> ExternalRelay for RelayService<T> {
    async fn forward(&self, req: Request<RelayCall>) -> Result<Response<RelayAnswer>, Status> {
        if let Err(refused) = self.authorize(&req) {
            self.metrics.record("unauthenticated", 0.0);
            return Err(refused);
        }
        let started = std::time::Instant::now();
        let call = req.into_inner();
        let request_id: [u8; 16] = call.request_id.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "request_id must be 16 bytes, got {}",
                call.request_id.len()
            ))
        })?;
        if call.payload.len() > MAX_PAYLOAD {
            return Err(Status::resource_exhausted(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                call.payload.len()
            )));
        }
        let answer = self.client.request_with_id(request_id, call.payload).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) => outcome_of(e),
        };
        self.metrics
            .record(outcome, started.elapsed().as_secs_f64());
        let payload = answer.map_err(|e| {
            tracing::warn!(request_id = %hex::encode(request_id), error = %e, "link request failed");
            status_of(e)
        })?;
        tracing::info!(
            request_id = %hex::encode(request_id),
            duration_us = started.elapsed().as_micros() as u64,
            "forwarded over the link"
        );
        Ok(Response::new(RelayAnswer { payload }))
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<String, RelayError> {
    std::fs::read_to_string(path)
        .map_err(|e| RelayError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A lazy channel to `cluster`'s external relay at `endpoint`, accepting only a server
/// that proves the relay certificate of that cluster under `trust_root`.
pub fn connect_relay(
    endpoint: SocketAddr,
    trust_root: &TrustRoot,
    cluster: &str,
) -> Result<Channel, RelayError> {
    let config = client_config_without_identity(trust_root.der())?;
    Ok(connect_lazy(
        endpoint,
        &Service::Relay.server_name(cluster),
        config,
    )?)
}

/// Runs the relay until the process ends; prints `custos-relay ready <cluster> <addr>`
/// once it serves.
pub async fn run(config: RelayConfig) -> Result<(), RelayError> {
    let root_der = pem_to_der(&read(&config.root_ca, "Root CA")?, "Root CA certificate")?;
    let root = TrustRoot::from_der(&root_der)?;
    let cluster_ca = pem_to_der(&read(&config.cluster_ca, "Cluster CA")?, "Cluster CA")?;
    let device_ca = pem_to_der(&read(&config.device_ca, "Device CA")?, "Device CA")?;
    let chain_of = |device: Vec<u8>| DeviceChain {
        device,
        cluster_ca: cluster_ca.clone(),
        device_ca: device_ca.clone(),
    };
    let now = custos_pki::clock::now_unix();
    let own_cert = pem_to_der(
        &read(&config.cert, "relay certificate")?,
        "relay certificate",
    )?;
    root.verify_relay(&chain_of(own_cert.clone()), Some(&config.cluster), now)?;
    let bridge_cert = pem_to_der(&read(&config.bridge_cert, "bridge certificate")?, "bridge")?;
    let bridge = root.verify_bridge(&chain_of(bridge_cert), Some(&config.cluster), now)?;
    let key_pem = zeroize::Zeroizing::new(read(&config.key, "relay key")?);
    let key_der = zeroize::Zeroizing::new(pem_to_der(&key_pem, "relay private key")?);
    let keys = LinkKeys::from_pkcs8(&key_der, bridge.public_key.clone())?;
    let identity = TlsIdentity::from_local_key(
        vec![own_cert, cluster_ca.clone(), device_ca.clone()],
        &key_der,
    )?;
    let tls = server_config_without_client_auth(&identity)?;
    let mut token_sha256 = [0u8; 32];
    hex::decode_to_slice(&config.token_sha256, &mut token_sha256)
        .map_err(|e| RelayError::Config(format!("token_sha256: {e}")))?;
    let link_config = ClientConfig {
        attempt_timeout: Duration::from_millis(config.attempt_timeout_ms.max(10)),
        max_attempts: config.max_attempts.max(1),
        ..ClientConfig::new(config.cluster.clone())
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| RelayError::Serve(format!("bind {}: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| RelayError::Serve(e.to_string()))?;
    let incoming = serve_tls(listener, tls).await;
    let ready = |what: &str| {
        tracing::info!(cluster = %config.cluster, listen = %local, transport = what, "external relay serving");
        println!("custos-relay ready {} {local}", config.cluster);
    };
    match &config.transport {
        TransportConfig::Tcp { address } => {
            let client = LinkClient::new(TcpTransport::new(*address), keys, link_config);
            serve(
                client,
                token_sha256,
                incoming,
                config.metrics_listen,
                || ready("tcp"),
            )
            .await
        }
        TransportConfig::Spool {
            outbound,
            inbound,
            poll_ms,
        } => {
            let transport = SpoolTransport::new(
                SpoolDirs {
                    outbound: outbound.clone(),
                    inbound: inbound.clone(),
                },
                Duration::from_millis((*poll_ms).max(1)),
            )?;
            let client = LinkClient::new(transport, keys, link_config);
            serve(
                client,
                token_sha256,
                incoming,
                config.metrics_listen,
                || ready("spool"),
            )
            .await
        }
        TransportConfig::Qr {
            screen,
            captured,
            poll_ms,
        } => {
            let transport = QrTransport::new(
                QrDirs {
                    screen: screen.clone(),
                    captured: captured.clone(),
                },
                Duration::from_millis((*poll_ms).max(1)),
                AnswerCheck::new(keys.peer_public(), &config.cluster),
            )?;
            let client = LinkClient::new(transport, keys, link_config);
            serve(
                client,
                token_sha256,
                incoming,
                config.metrics_listen,
                || ready("qr"),
            )
            .await
        }
        TransportConfig::Serial { device, baud } => {
            let transport = SerialTransport::new(
                SerialLine::open(device, *baud)?,
                AnswerCheck::new(keys.peer_public(), &config.cluster),
            );
            let client = LinkClient::new(transport, keys, link_config);
            serve(
                client,
                token_sha256,
                incoming,
                config.metrics_listen,
                || ready("serial"),
            )
            .await
        }
    }
}

/// The link client's queue depth and retries, read at each scrape.
struct LinkCollector(Arc<dyn Fn() -> LinkStats + Send + Sync>);

impl std::fmt::Debug for LinkCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCollector")
    }
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = (self.0)();
        let depth = ConstGauge::new(i64::try_from(stats.in_flight).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "link_in_flight",
            "Requests sent over the link and not answered yet (the link's queue)",
            None,
            depth.metric_type(),
        )?;
        depth.encode(metric)?;
        let retries = ConstCounter::new(stats.retries);
        let metric = encoder.encode_descriptor(
            "link_retries",
            "Link attempts repeated after a failed or timed-out one",
            None,
            retries.metric_type(),
        )?;
        retries.encode(metric)
    }
}

async fn serve<T: ClientTransport + 'static>(
    client: LinkClient<T>,
    token_sha256: [u8; 32],
    incoming: custos_net::TlsIncoming,
    metrics_listen: Option<std::net::SocketAddr>,
    ready: impl FnOnce(),
) -> Result<(), RelayError> {
    let client = Arc::new(client);
    let mut metrics = custos_net::metrics::CallMetrics::new(
        "custos_relay",
        "forwards",
        "Calls of the cloud server carried over the link, retries included",
        0.0001,
    );
    let link = Arc::clone(&client);
    metrics
        .registry_mut()
        .register_collector(Box::new(LinkCollector(Arc::new(move || link.stats()))));
    let metrics = Arc::new(metrics);
    if let Some(at) = metrics_listen {
        let m = Arc::clone(&metrics);
        custos_net::metrics::spawn_metrics(at, "relay", Arc::new(move || m.encode()))
            .await
            .map_err(|e| RelayError::Serve(format!("bind metrics {at}: {e}")))?;
    }
    let service = RelayService {
        client,
        token_sha256,
        metrics,
    };
    // Ready only once every listener, the metrics' too, is bound.
    ready();
    tonic::transport::Server::builder()
        .add_service(
            ExternalRelayServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| RelayError::Serve(e.to_string()))
}
