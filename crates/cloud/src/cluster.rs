//! Talking to clusters through their (untrusted) relays: retries with the same request id,
//! and verification of every TEE answer against the serving node's certified device key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_pki::TrustRoot;
use custos_proto::cluster::link_reply::Result as LinkResult;
use custos_proto::cluster::link_request::Op;
use custos_proto::cluster::{
    AuditReport, AuditRequest, ClusterStatus, LinkReply, LinkRequest, StatusRequest, TeeCall,
};
use custos_proto::RefusalCode;
use custos_wire::client::{decode_outcome, verify_signed_response};
use custos_wire::governance::device_key_fingerprint;
use custos_wire::protocol::{encode_request, CertChain, Outcome, Request, Response};
use rand::RngCore;

use crate::gateway::{Gateway, GatewayError};
use crate::Clock;

/// How long a verified device key is used before its chain is fetched and checked again
/// (so an expired or replaced certificate is noticed).
const DEVICE_KEY_TTL_MS: u64 = 10 * 60 * 1000;
/// First pause between tries of a relay call; doubles each time.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// The code recorded on a request whose last attempt's outcome is unknown.
pub const OUTCOME_UNKNOWN: &str = "bridge_outcome_unknown";

/// Why a cluster call did not produce a usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No such cluster configured.
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// The relay could not be reached (after retries).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The relay refused the cloud server's call.
    #[error("relay rejected the call: {0}")]
    Rejected(String),
    /// The bridge refused the operation (final unless its code may be retried).
    #[error("bridge refused ({}): {message}", code.as_str())]
    Refused {
        /// Bridge's code.
        code: RefusalCode,
        /// Bridge's message.
        message: String,
    },
    /// The request reached `node` but its answer was lost: it may have taken effect there.
    /// Retried with the same id on that node only, whose TEE answers its first outcome.
    #[error("outcome unknown on node {node}: {message}")]
    OutcomeUnknown {
        /// The node the request may have executed on.
        node: String,
        /// Bridge's message.
        message: String,
    },
    /// An answer failed verification (device chain or response signature).
    #[error("answer failed verification: {0}")]
    Unverified(String),
    /// An undecodable answer, or one of the wrong kind.
    #[error("relay protocol error: {0}")]
    Protocol(String),
}

impl CallError {
    /// Whether the same request id may be sent again: every failure to get a usable
    /// answer, except a bridge refusal that the bridge stored as the request id's final
    /// answer (all but "no node could serve now", [`RefusalCode::may_retry`]).
    pub fn may_retry(&self) -> bool {
        match self {
            CallError::Refused { code, .. } => code.may_retry(),
            _ => true,
        }
    }

    /// The stable code recorded on a request that ended with this error.
    pub fn code(&self) -> String {
        match self {
            CallError::UnknownCluster(_) => "unknown_cluster".into(),
            CallError::Unavailable(_) => "cluster_unavailable".into(),
            CallError::Rejected(_) => "relay_rejected".into(),
            CallError::Refused { code, .. } => format!("bridge_{}", snake(code.as_str())),
            CallError::OutcomeUnknown { .. } => OUTCOME_UNKNOWN.into(),
            CallError::Unverified(_) => "unverified_response".into(),
            CallError::Protocol(_) => "relay_protocol".into(),
        }
    }
}

impl From<GatewayError> for CallError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::UnknownCluster(c) => CallError::UnknownCluster(c),
            GatewayError::Unavailable(m) => CallError::Unavailable(m),
            GatewayError::Rejected(m) => CallError::Rejected(m),
            GatewayError::Protocol(m) => CallError::Protocol(m),
        }
    }
}

/// `CamelCase`, `kebab-case` or anything else to `snake_case` of `[a-z0-9_]`, at most 64
/// characters (codes from the bridge and TEE variant names become stable API codes).
pub(crate) fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
        if out.len() >= 64 {
            break;
        }
    }
    out.truncate(64);
    out.trim_matches('_').to_string()
}

/// A TEE answer whose signature verified.
#[derive(Debug)]
pub struct TeeAnswer {
    /// The node that served it (its device certificate verified).
    pub node: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER of the device key whose signature verified
    /// (`custos_wire::governance::device_key_fingerprint`). A genuine certificate names a
    /// node but does not make its key the one approvals bound: a caller whose terms fix the
    /// executing key compares it with this.
    pub key_fingerprint: [u8; 32],
    /// What the TEE answered.
    pub outcome: Outcome,
}

struct DeviceKey {
    public_key: Vec<u8>,
    chain: CertChain,
    verified_at_ms: u64,
}

/// A node's device certificate chain, verified.
#[derive(Clone, Debug)]
pub struct VerifiedDevice {
    /// Certified device key D (SEC1 uncompressed).
    pub public_key: Vec<u8>,
    /// The chain: device, Cluster CA, Device CA certificates.
    pub chain: CertChain,
}

/// Access to every cluster through one [`Gateway`].
pub struct Clusters {
    gateway: Arc<dyn Gateway>,
    trust_root: TrustRoot,
    attempts: u32,
    clock: Clock,
    devices: Mutex<HashMap<(String, String), DeviceKey>>,
}

/// A fresh random id for calls that are not requests of their own (status, device
/// chains, audits).
pub(crate) fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

impl Clusters {
    /// `attempts` tries per relay call on transport failures.
    pub fn new(
        gateway: Arc<dyn Gateway>,
        trust_root: TrustRoot,
        attempts: u32,
        clock: Clock,
    ) -> Self {
        Clusters {
            gateway,
            trust_root,
            attempts: attempts.max(1),
            clock,
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// One link request, retried with the same id on transport failures. A bridge refusal
    /// is returned as [`CallError::Refused`].
    pub async fn link(
        &self,
        cluster: &str,
        request_id: [u8; 16],
        request: LinkRequest,
        attempts: u32,
    ) -> Result<LinkResult, CallError> {
        let mut pause = RETRY_BASE;
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .gateway
                .forward(cluster, request_id, request.clone())
                .await
            {
                Ok(LinkReply {
                    result: Some(LinkResult::Refused(r)),
                }) if r.refusal_code() == RefusalCode::OutcomeUnknown && !r.node.is_empty() => {
                    // The name comes through the relay: a request is pinned to it, so it
                    // must be a name a node can have.
                    if let Err(e) = custos_pki::check_name(&r.node) {
                        return Err(CallError::Protocol(format!(
                            "outcome-unknown refusal names no valid node: {e}"
                        )));
                    }
                    return Err(CallError::OutcomeUnknown {
                        node: r.node,
                        message: r.message,
                    });
                }
                Ok(LinkReply {
                    result: Some(LinkResult::Refused(r)),
                }) => {
                    return Err(CallError::Refused {
                        code: r.refusal_code(),
                        message: r.message,
                    })
                }
                Ok(LinkReply { result: Some(r) }) => return Ok(r),
                Ok(LinkReply { result: None }) => {
                    return Err(CallError::Protocol("empty link reply".into()))
                }
                Err(e) if e.is_transient() && tries < attempts => {
                    tracing::warn!(
                        cluster,
                        request_id = %hex::encode(request_id),
                        attempt = tries,
                        error = %e,
                        "relay call failed; retrying with the same request id"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The bridge's status of `cluster`; `retry` false for quick reachability probes.
    pub async fn status(&self, cluster: &str, retry: bool) -> Result<ClusterStatus, CallError> {
        let attempts = if retry { self.attempts } else { 1 };
        let op = Op::Status(StatusRequest {});
        match self
            .link(cluster, random_id(), LinkRequest { op: Some(op) }, attempts)
            .await?
        {
            LinkResult::Status(s) => Ok(s),
            _ => Err(CallError::Protocol(
                "status answered with another kind".into(),
            )),
        }
    }

    /// Runs an audit now (`latest` false) or fetches the last report (`latest` true).
    pub async fn audit(&self, cluster: &str, latest: bool) -> Result<AuditReport, CallError> {
        let op = if latest {
            Op::LastAudit(AuditRequest {})
        } else {
            Op::Audit(AuditRequest {})
        };
        let attempts = self.attempts;
        match self
            .link(cluster, random_id(), LinkRequest { op: Some(op) }, attempts)
            .await?
        {
            LinkResult::Audit(a) => Ok(a),
            _ => Err(CallError::Protocol(
                "audit answered with another kind".into(),
            )),
        }
    }

    /// Sends an encoded TEE request; the serving node, its signed response and (when the
    /// bridge attached it) that node's device chain, not yet verified.
    async fn submit_raw(
        &self,
        cluster: &str,
        request_id: [u8; 16],
        request: &[u8],
        node: Option<&str>,
    ) -> Result<(String, Vec<u8>, Option<CertChain>), CallError> {
        let op = Op::Submit(TeeCall {
            request: request.to_vec(),
            node: node.unwrap_or_default().to_string(),
            request_id: hex::encode(request_id),
        });
        let reply = self
            .link(
                cluster,
                request_id,
                LinkRequest { op: Some(op) },
                self.attempts,
            )
            .await?;
        let LinkResult::Submitted(reply) = reply else {
            return Err(CallError::Protocol(
                "submit answered with another kind".into(),
            ));
        };
        if custos_pki::check_name(&reply.node).is_err() {
            return Err(CallError::Unverified(format!(
                "answer names an invalid node {:?}",
                reply.node
            )));
        }
        if let Some(n) = node {
            if reply.node != n {
                return Err(CallError::Unverified(format!(
                    "asked node {n:?}, answered by {:?}",
                    reply.node
                )));
            }
        }
        let chain = reply.chain.map(|c| CertChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        });
        Ok((reply.node, reply.response, chain))
    }

    /// The certified device key D of `node`, from the cache or by fetching its chain
    /// through the relay and verifying it: chain to the trust root, this cluster, and the
    /// certificate's node name equal to the node that answered.
    pub async fn device_key(
        &self,
        cluster: &str,
        node: &str,
        refresh: bool,
    ) -> Result<Vec<u8>, CallError> {
        Ok(self.device(cluster, node, refresh).await?.public_key)
    }

    /// The verified device certificate chain of `node` (cached like [`Clusters::device_key`]),
    /// e.g. to name a threshold session's participants.
    pub async fn device_chain(&self, cluster: &str, node: &str) -> Result<CertChain, CallError> {
        Ok(self.device(cluster, node, false).await?.chain)
    }

    /// The verified device identity of `node` from the cache, if it is fresh.
    fn cached(&self, cluster: &str, node: &str) -> Option<VerifiedDevice> {
        let now_ms = (self.clock)();
        let cache = self.devices.lock().expect("device cache lock");
        let d = cache.get(&(cluster.to_string(), node.to_string()))?;
        (now_ms.saturating_sub(d.verified_at_ms) < DEVICE_KEY_TTL_MS).then(|| VerifiedDevice {
            public_key: d.public_key.clone(),
            chain: d.chain.clone(),
        })
    }

    /// Verifies a device chain that came through the (untrusted) relay for `served`:
    /// chain to the trust root, this cluster, the certificate's node name equal to the
    /// node that answered. Nothing is cached: the caller first checks that the response
    /// the chain came with is signed by its key, then [`Clusters::remember`]s it.
    fn verify_chain(
        &self,
        cluster: &str,
        served: &str,
        chain: CertChain,
    ) -> Result<VerifiedDevice, CallError> {
        let now_s = (self.clock)() / 1000;
        let identity = self
            .trust_root
            .verify_device(&chain.clone().into(), Some(cluster), now_s)
            .map_err(|e| CallError::Unverified(format!("device chain of {served}: {e}")))?;
        if identity.node != served {
            return Err(CallError::Unverified(format!(
                "device certificate names {:?}, the answer came from {served:?}",
                identity.node
            )));
        }
        Ok(VerifiedDevice {
            public_key: identity.public_key,
            chain,
        })
    }

    /// Caches a device whose chain verified and whose key signed a response just now.
    fn remember(&self, cluster: &str, node: &str, device: &VerifiedDevice) {
        tracing::info!(cluster, node, "device certificate verified");
        self.devices.lock().expect("device cache lock").insert(
            (cluster.to_string(), node.to_string()),
            DeviceKey {
                public_key: device.public_key.clone(),
                chain: device.chain.clone(),
                verified_at_ms: (self.clock)(),
            },
        );
    }

    /// The verified device identity of `node`, from the cache unless `refresh`.
    pub async fn device(
        &self,
        cluster: &str,
        node: &str,
        refresh: bool,
    ) -> Result<VerifiedDevice, CallError> {
        if !refresh {
            if let Some(d) = self.cached(cluster, node) {
                return Ok(d);
            }
        }
        let request = encode_request(&Request::DeviceChain);
        let (served, response, _) = self
            .submit_raw(cluster, random_id(), &request, Some(node))
            .await?;
        // The chain comes in a response signed by the very key it certifies: read it
        // unverified, verify the chain, then check the response against the chain's key.
        let chain = match decode_outcome(&response) {
            Ok(Ok(Response::DeviceChain(chain))) => chain,
            Ok(Ok(_)) => {
                return Err(CallError::Protocol(
                    "DeviceChain answered with another kind".into(),
                ))
            }
            Ok(Err(e)) => {
                return Err(CallError::Unverified(format!(
                    "node {node} has no usable device chain: {e}"
                )))
            }
            Err(e) => return Err(CallError::Protocol(e.to_string())),
        };
        let device = self.verify_chain(cluster, &served, chain)?;
        let _chain_outcome = verify_signed_response(&device.public_key, &request, &response)
            .map_err(|e| CallError::Unverified(format!("device chain response of {node}: {e}")))?;
        self.remember(cluster, &served, &device);
        Ok(device)
    }

    /// Submits an encoded TEE request (to `node` only, or routed by the bridge) under
    /// `request_id`, and returns the outcome once its signature verified with the serving
    /// node's certified device key: the cached one, else the one of the chain the bridge
    /// attached to the reply (no second round trip), else one fetched anew.
    pub async fn tee_call(
        &self,
        cluster: &str,
        request_id: [u8; 16],
        request: &[u8],
        node: Option<&str>,
    ) -> Result<TeeAnswer, CallError> {
        let (served, response, carried) =
            self.submit_raw(cluster, request_id, request, node).await?;
        let verified = |key: &[u8]| -> Result<TeeAnswer, CallError> {
            let outcome = verify_signed_response(key, request, &response)
                .map_err(|e| CallError::Unverified(format!("response of node {served}: {e}")))?;
            let key_fingerprint = device_key_fingerprint(key).ok_or_else(|| {
                CallError::Unverified(format!("device key of {served} is not P-256"))
            })?;
            Ok(TeeAnswer {
                node: served.clone(),
                key_fingerprint,
                outcome,
            })
        };
        if let Some(d) = self.cached(cluster, &served) {
            // A failure may mean the node was re-certified since it was cached: try anew.
            if let Ok(answer) = verified(&d.public_key) {
                return Ok(answer);
            }
        } else if let Some(chain) = carried {
            // An invalid attached chain is no verdict on the response: fetch the chain.
            if let Ok(device) = self.verify_chain(cluster, &served, chain) {
                if let Ok(answer) = verified(&device.public_key) {
                    self.remember(cluster, &served, &device);
                    return Ok(answer);
                }
            }
        }
        let key = self.device_key(cluster, &served, true).await?;
        verified(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::snake;

    #[test]
    fn snake_case_codes() {
        assert_eq!(snake("ApprovalRejected"), "approval_rejected");
        assert_eq!(snake("no-healthy-node"), "no_healthy_node");
        assert_eq!(snake("already_snake"), "already_snake");
        assert_eq!(snake("  Weird  Code!"), "weird_code");
        assert!(snake(&"A".repeat(200)).len() <= 64);
    }
}
