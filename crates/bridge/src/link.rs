//! The bridge's end of the link (patent FIG. 1, internal relay): link payloads are
//! [`LinkRequest`]s from the cluster's external relay, answered with [`LinkReply`]s.
//!
//! The link authenticates every envelope with the external relay's key, which the bridge
//! pins from a relay certificate it verifies against the Root (relay role, this cluster);
//! the bridge signs its answers with its own certified key. Refusals travel in-band as
//! [`LinkRefusal`] so that they are stored by the link's exactly-once store like any answer.

use std::path::PathBuf;
use std::time::Duration;

use custos_link::qr::{QrDirs, QrServer};
use custos_link::{
    serve_serial, serve_tcp, LinkKeys, LinkServer, Reply, SerialLine, SpoolDirs, SpoolServer,
};
use custos_pki::{pem_to_der, DeviceChain, TrustRoot};
use custos_proto::cluster::link_reply::Result as Answer;
use custos_proto::cluster::link_request::Op;
use custos_proto::cluster::{LinkRefusal, LinkReply, LinkRequest};
use custos_proto::RefusalCode;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::service::BridgeService;
use crate::BridgeError;

/// Where the bridge takes link envelopes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// The external relay's certificate (PEM, from `PkiDir::issue_service(.., Relay)`);
    /// only envelopes signed by its key are accepted.
    pub relay_cert: PathBuf,
    /// The exactly-once store (redb file) of answered request ids.
    pub dedup_db: PathBuf,
    /// Stream transport: address to listen on (a serial line stands behind it in a
    /// physical deployment).
    #[serde(default)]
    pub tcp: Option<std::net::SocketAddr>,
    /// Spool transport: directory the external relay writes requests to.
    #[serde(default)]
    pub spool_inbound: Option<PathBuf>,
    /// Spool transport: directory the bridge writes answers to.
    #[serde(default)]
    pub spool_outbound: Option<PathBuf>,
    /// Milliseconds between scans of the spool inbound directory (and of the QR
    /// captured-images directory).
    #[serde(default = "default_spool_poll")]
    pub spool_poll_ms: u64,
    /// QR transport: directory the bridge draws reply frames into, for its screen.
    #[serde(default)]
    pub qr_screen: Option<PathBuf>,
    /// QR transport: directory a camera writes its images of the relay's frames to.
    #[serde(default)]
    pub qr_captured: Option<PathBuf>,
    /// Serial transport: the serial device wired to the relay's (e.g. `/dev/ttyUSB0`).
    #[serde(default)]
    pub serial_device: Option<PathBuf>,
    /// Serial transport: line rate, baud (8N1).
    #[serde(default = "default_baud")]
    pub serial_baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

fn default_spool_poll() -> u64 {
    20
}

/// Stable code of a refusal, from the gRPC status the shared bridge logic returns.
fn refusal(status: Status) -> LinkRefusal {
    let code = match status.code() {
        Code::InvalidArgument => RefusalCode::InvalidRequest,
        Code::NotFound => RefusalCode::NotFound,
        Code::PermissionDenied => RefusalCode::PermissionDenied,
        Code::Unavailable => RefusalCode::Unavailable,
        Code::DeadlineExceeded => RefusalCode::OutcomeUnknown,
        Code::FailedPrecondition => RefusalCode::FailedPrecondition,
        Code::ResourceExhausted => RefusalCode::ResourceExhausted,
        _ => RefusalCode::Internal,
    };
    let mut refusal = LinkRefusal::new(code, status.message());
    if let Some(node) = status.metadata().get(crate::routing::NODE_HEADER) {
        refusal.node = node.to_str().unwrap_or_default().to_string();
    }
    refusal
}

impl BridgeService {
    /// Answers one link payload. Never fails: every refusal is an in-band answer. "No node
    /// could serve" and "outcome unknown" are transient (not stored), so that a retry of the
    /// same request id is served once a node is back (the same node for the latter); every
    /// other answer is final for its request id.
    pub(crate) async fn link_dispatch(&self, payload: Vec<u8>) -> Reply {
        let mut op_name = "malformed";
        let answer = match LinkRequest::decode(payload.as_slice()) {
            Err(e) => Answer::Refused(LinkRefusal::new(
                RefusalCode::MalformedRequest,
                format!("undecodable link request: {e}"),
            )),
            Ok(LinkRequest { op: None }) => Answer::Refused(LinkRefusal::new(
                RefusalCode::MalformedRequest,
                "link request names no operation",
            )),
            Ok(LinkRequest { op: Some(op) }) => {
                op_name = match &op {
                    Op::Submit(_) => "submit",
                    Op::Status(_) => "status",
                    Op::Audit(_) => "audit",
                    Op::LastAudit(_) => "last_audit",
                };
                let result = match op {
                    Op::Submit(call) => self
                        .route("link:relay".into(), call)
                        .await
                        .map(Answer::Submitted),
                    Op::Status(_) => Ok(Answer::Status(self.cluster_status())),
                    Op::Audit(_) => self.audit_round().await.map(Answer::Audit),
                    Op::LastAudit(_) => self.last_audit_report().await.map(Answer::Audit),
                };
                result.unwrap_or_else(|s| Answer::Refused(refusal(s)))
            }
        };
        let outcome = match &answer {
            Answer::Refused(_) => "refused",
            _ => "answered",
        };
        self.metrics().link(op_name, outcome);
        let transient = matches!(&answer, Answer::Refused(r) if r.refusal_code().may_retry());
        let bytes = LinkReply {
            result: Some(answer),
        }
        .encode_to_vec();
        if transient {
            Reply::Transient(bytes)
        } else {
            Reply::Final(bytes)
        }
    }
}

/// Verifies the relay certificate, pins its key and starts the configured transports.
pub(crate) async fn start(
    config: &LinkConfig,
    cluster: &str,
    root: &TrustRoot,
    chain_cas: (&[u8], &[u8]),
    own_pkcs8: &[u8],
    service: BridgeService,
    now_unix: u64,
) -> Result<Option<std::net::SocketAddr>, BridgeError> {
    let pem = std::fs::read_to_string(&config.relay_cert).map_err(|e| {
        BridgeError::Serve(format!("cannot read {}: {e}", config.relay_cert.display()))
    })?;
    let relay = DeviceChain {
        device: pem_to_der(&pem, "external relay certificate")?,
        cluster_ca: chain_cas.0.to_vec(),
        device_ca: chain_cas.1.to_vec(),
    };
    let relay_id = root.verify_relay(&relay, Some(cluster), now_unix)?;
    let link_err = |e: custos_link::LinkError| BridgeError::Serve(format!("link: {e}"));
    let keys = LinkKeys::from_pkcs8(own_pkcs8, relay_id.public_key.clone()).map_err(link_err)?;
    let server = LinkServer::open_with_replies(&config.dedup_db, cluster, keys, move |payload| {
        let service = service.clone();
        async move { Ok::<_, String>(service.link_dispatch(payload).await) }
    })
    .map_err(link_err)?;
    let mut tcp_addr = None;
    if let Some(addr) = config.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| BridgeError::Serve(format!("bind link {addr}: {e}")))?;
        tcp_addr = Some(
            listener
                .local_addr()
                .map_err(|e| BridgeError::Serve(e.to_string()))?,
        );
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp(listener, server).await {
                tracing::error!(error = %e, "link stream transport stopped");
            }
        });
    }
    match (&config.spool_inbound, &config.spool_outbound) {
        (Some(inbound), Some(outbound)) => {
            let spool = SpoolServer::new(
                SpoolDirs {
                    inbound: inbound.clone(),
                    outbound: outbound.clone(),
                },
                server.clone(),
                Duration::from_millis(config.spool_poll_ms.max(1)),
            )
            .map_err(link_err)?;
            tokio::spawn(async move {
                if let Err(e) = spool.run().await {
                    tracing::error!(error = %e, "link spool transport stopped");
                }
            });
        }
        (None, None) => {}
        _ => {
            return Err(BridgeError::Serve(
                "link spool transport needs both spool_inbound and spool_outbound".into(),
            ))
        }
    }
    match (&config.qr_screen, &config.qr_captured) {
        (Some(screen), Some(captured)) => {
            let dirs = QrDirs {
                screen: screen.clone(),
                captured: captured.clone(),
            };
            let poll = Duration::from_millis(config.spool_poll_ms.max(1));
            let qr = QrServer::new(dirs, server.clone(), poll).map_err(link_err)?;
            tokio::spawn(async move {
                if let Err(e) = qr.run().await {
                    tracing::error!(error = %e, "link QR transport stopped");
                }
            });
        }
        (None, None) => {}
        _ => {
            return Err(BridgeError::Serve(
                "link QR transport needs both qr_screen and qr_captured".into(),
            ))
        }
    }
    if let Some(device) = &config.serial_device {
        let line = SerialLine::open(device, config.serial_baud).map_err(link_err)?;
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_serial(line, server).await {
                tracing::error!(error = %e, "link serial transport stopped");
            }
        });
    }
    let transports = [
        config.tcp.is_some(),
        config.spool_inbound.is_some(),
        config.qr_screen.is_some(),
        config.serial_device.is_some(),
    ];
    if !transports.contains(&true) {
        return Err(BridgeError::Serve(
            "link configured without a transport (set tcp, the spool or QR directories, or a \
             serial device)"
                .into(),
        ));
    }
    tracing::info!(cluster, relay = %relay_id.fingerprint.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>(), "link endpoint up");
    Ok(tcp_addr)
}
