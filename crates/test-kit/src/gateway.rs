//! A fake [`Gateway`] that behaves like the relays, links and bridges of several clusters
//! (exactly-once per request id, routing, status, audits, failure injection), in front of
//! real in-memory TEE cores or *scripted* TEEs: nodes with a real device key certified by
//! the cluster's CA, whose answers come from a test-provided [`Script`] and are signed with
//! that key like a TEE's, so the cloud server verifies them as it verifies real ones (used to
//! play the TEE side of threshold sessions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use custos_cloud::gateway::{BoxFuture, Gateway, GatewayError};
use custos_pki::AdminSigner;
use custos_proto::cluster::link_reply::Result as LinkResult;
use custos_proto::cluster::link_request::Op;
use custos_proto::cluster::{
    AuditReport, ClusterStatus, DeviceChain, LinkRefusal, LinkReply, LinkRequest, NodeAudit,
    NodeStatus, TeeReply,
};
use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_wire::protocol::{
    decode_request, response_transcript, CertChain, Outcome, Request, Response, SignedResponse,
    TeeError,
};
use prost::Message;

use crate::pki::Pki;
use crate::platform::MemPlatform;

/// What a scripted TEE answers: given its cluster, node name, own device chain and the
/// decoded request (anything but `DeviceChain`, which it answers itself).
pub type Script = Arc<dyn Fn(&str, &str, &CertChain, Request) -> Outcome + Send + Sync>;

/// A TEE stand-in with a certified device key: it signs whatever its script answers.
pub struct ScriptedTee {
    pub(crate) signer: AdminSigner,
    pub chain: CertChain,
}

impl ScriptedTee {
    /// SHA-256 of its device certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.chain.device).into()
    }

    fn handle(
        &self,
        cluster: &str,
        node: &str,
        request: &[u8],
        script: Option<&Script>,
    ) -> Vec<u8> {
        let outcome: Outcome = match decode_request(request) {
            Err(e) => Err(e),
            Ok(Request::DeviceChain) => Ok(Response::DeviceChain(self.chain.clone())),
            Ok(r) => match script {
                Some(s) => s(cluster, node, &self.chain, r),
                None => Err(TeeError::InvalidRequest("no script".into())),
            },
        };
        let body = postcard::to_allocvec(&outcome).unwrap();
        let signature = self
            .signer
            .sign(&response_transcript(request, &body))
            .expect("a scripted TEE's file key signs");
        postcard::to_allocvec(&SignedResponse {
            body,
            signature: Some(signature),
        })
        .unwrap()
    }
}

pub struct FakeNode {
    pub name: String,
    pub healthy: AtomicBool,
    pub core: Mutex<TeeCore<MemPlatform>>,
    pub served: AtomicU32,
    /// Answers instead of `core` when set.
    pub scripted: Option<ScriptedTee>,
}

impl FakeNode {
    /// Its device certificate chain, as the bridge hands it out.
    pub fn chain(&self) -> CertChain {
        match &self.scripted {
            Some(tee) => tee.chain.clone(),
            None => match call_core(&mut self.core.lock().unwrap(), &Request::DeviceChain) {
                Ok(Response::DeviceChain(c)) => c,
                other => panic!("no device chain: {other:?}"),
            },
        }
    }
}

/// A stand-in that answers instead of one node (see [`FakeGateway::impostor`]).
pub struct Impostor {
    /// The cluster of the node it answers for.
    pub cluster: String,
    /// The node name it answers under.
    pub node: String,
    /// Its key and chain.
    pub tee: ScriptedTee,
    /// What it answers (`DeviceChain` aside, which it answers with its own chain).
    pub script: Script,
}

pub struct FakeCluster {
    pub name: String,
    pub nodes: Vec<FakeNode>,
}

/// One call the gateway received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    pub request_id: [u8; 16],
    /// `submit:<TEE request kind>`, `status`, `audit`, `last_audit`.
    pub op: String,
    /// Whether the cluster executed it (false: injected failure or deduplicated).
    pub executed: bool,
}

/// The payload a request id was first used with, and the reply it got.
type Executed = (Vec<u8>, LinkReply);

/// Behaves like the relays, the links and the bridges of several clusters.
pub struct FakeGateway {
    pub clusters: HashMap<String, FakeCluster>,
    /// Exactly-once: first (payload, reply) per request id.
    done: Mutex<HashMap<[u8; 16], Executed>>,
    pub calls: Mutex<Vec<Call>>,
    /// The next N calls fail before reaching the cluster.
    pub fail_next: AtomicU32,
    /// The next N calls are executed but their replies lost (transport error).
    pub lose_next: AtomicU32,
    /// Every call fails (relay down).
    pub down: AtomicBool,
    /// Responses to TEE calls get a corrupted D signature (a malicious relay).
    pub tamper: AtomicBool,
    /// Replies carry this device chain instead of the serving node's (a malicious relay or
    /// bridge).
    pub rogue_chain: Mutex<Option<CertChain>>,
    /// Every call routed to this node is answered by this scripted TEE instead, and the
    /// reply carries its chain (unless [`FakeGateway::rogue_chain`] is set): a bridge that
    /// registered, under a node's name, a key made outside any TEE with a genuine Cluster-CA
    /// certificate, or a compromised bridge relaying such a key's answers.
    pub impostor: Mutex<Option<Impostor>>,
    /// The script of scripted nodes.
    script: Option<Script>,
    /// Calls of these (cluster, op) fail before reaching the cluster (e.g. `("dc2",
    /// "submit:ThresholdFeed")`).
    pub fail_ops: Mutex<Vec<(String, String)>>,
    /// Key ids every node's audit reports as missing (default: one id no wallet has).
    pub audit_missing: Mutex<Vec<Vec<u8>>>,
    /// Key ids every node's audit reports as failing verification (default: none).
    pub audit_wrong: Mutex<Vec<Vec<u8>>>,
    /// Milliseconds every call waits before it reaches the cluster (a slow link).
    pub delay_ms: AtomicU64,
}

fn request_kind(r: &Request) -> String {
    let v = serde_json::to_value(r).unwrap();
    match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(m) => m.keys().next().unwrap().clone(),
        _ => "?".into(),
    }
}

impl FakeGateway {
    /// Clusters `(name, node count)`.
    pub fn new(pki: &Pki, clusters: &[(&str, usize)]) -> Arc<Self> {
        let clusters = clusters
            .iter()
            .map(|(name, n)| {
                let nodes = (1..=*n)
                    .map(|i| {
                        let node = format!("node{i}");
                        FakeNode {
                            core: Mutex::new(pki.node(name, &node)),
                            name: node,
                            healthy: AtomicBool::new(true),
                            served: AtomicU32::new(0),
                            scripted: None,
                        }
                    })
                    .collect();
                (
                    name.to_string(),
                    FakeCluster {
                        name: name.to_string(),
                        nodes,
                    },
                )
            })
            .collect();
        Arc::new(FakeGateway {
            clusters,
            done: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
            lose_next: AtomicU32::new(0),
            down: AtomicBool::new(false),
            tamper: AtomicBool::new(false),
            rogue_chain: Mutex::new(None),
            impostor: Mutex::new(None),
            script: None,
            fail_ops: Mutex::new(Vec::new()),
            audit_missing: Mutex::new(vec![vec![2; 33]]),
            audit_wrong: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
        })
    }

    /// Clusters `(name, node count)` of scripted TEEs answering with `script`.
    pub fn scripted(pki: &Pki, clusters: &[(&str, usize)], script: Script) -> Arc<Self> {
        let clusters = clusters
            .iter()
            .map(|(name, n)| {
                let nodes = (1..=*n)
                    .map(|i| {
                        let node = format!("node{i}");
                        FakeNode {
                            core: Mutex::new(
                                TeeCore::open(MemPlatform::default(), "memory").unwrap(),
                            ),
                            scripted: Some(pki.scripted_tee(name, &node)),
                            name: node,
                            healthy: AtomicBool::new(true),
                            served: AtomicU32::new(0),
                        }
                    })
                    .collect();
                (
                    name.to_string(),
                    FakeCluster {
                        name: name.to_string(),
                        nodes,
                    },
                )
            })
            .collect();
        Arc::new(FakeGateway {
            clusters,
            done: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
            lose_next: AtomicU32::new(0),
            down: AtomicBool::new(false),
            tamper: AtomicBool::new(false),
            rogue_chain: Mutex::new(None),
            impostor: Mutex::new(None),
            script: Some(script),
            fail_ops: Mutex::new(Vec::new()),
            audit_missing: Mutex::new(vec![vec![2; 33]]),
            audit_wrong: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
        })
    }

    /// The scripted TEE of `cluster`/`node`.
    pub fn scripted_tee(&self, cluster: &str, node: &str) -> &ScriptedTee {
        self.node(cluster, node)
            .scripted
            .as_ref()
            .expect("a scripted node")
    }

    /// A node.
    pub fn node(&self, cluster: &str, node: &str) -> &FakeNode {
        self.clusters[cluster]
            .nodes
            .iter()
            .find(|n| n.name == node)
            .expect("a node of the gateway")
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls that executed a TEE request of `kind` (e.g. "Sign").
    pub fn executed(&self, kind: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.executed && c.op == format!("submit:{kind}"))
            .collect()
    }

    fn take(flag: &AtomicU32) -> bool {
        flag.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn op_name(req: &LinkRequest) -> String {
        match &req.op {
            Some(Op::Submit(c)) => match decode_request(&c.request) {
                Ok(r) => format!("submit:{}", request_kind(&r)),
                Err(_) => "submit:?".into(),
            },
            Some(Op::Status(_)) => "status".into(),
            Some(Op::Audit(_)) => "audit".into(),
            Some(Op::LastAudit(_)) => "last_audit".into(),
            None => "none".into(),
        }
    }

    fn record(&self, cluster: &str, id: [u8; 16], op: String, executed: bool) {
        self.calls.lock().unwrap().push(Call {
            cluster: cluster.into(),
            request_id: id,
            op,
            executed,
        });
    }

    fn refused(code: &str, message: &str) -> LinkReply {
        LinkReply {
            result: Some(LinkResult::Refused(LinkRefusal {
                code: code.into(),
                message: message.into(),
                node: String::new(),
            })),
        }
    }

    /// What the bridge would do with `req`.
    fn execute(&self, c: &FakeCluster, req: &LinkRequest) -> LinkReply {
        match &req.op {
            Some(Op::Submit(call)) => {
                let node = if call.node.is_empty() {
                    // Route like the bridge: a healthy node holding the key, else the first
                    // healthy node (a policy change goes to the holder: the fake clusters'
                    // wallets live on one node, so that is every holder).
                    let key = match decode_request(&call.request) {
                        Ok(Request::Sign { key_id, .. })
                        | Ok(Request::SetKeyPolicy { key_id, .. })
                        | Ok(Request::GetKeyPolicy { key_id }) => Some(key_id),
                        _ => None,
                    };
                    let holds = |n: &FakeNode| match &key {
                        None => true,
                        Some(k) => {
                            let mut core = n.core.lock().unwrap();
                            matches!(
                                call_core(&mut core, &Request::ListKeys),
                                Ok(Response::Keys(keys)) if keys.iter().any(|i| &i.key_id == k)
                            )
                        }
                    };
                    c.nodes
                        .iter()
                        .filter(|n| n.healthy.load(Ordering::SeqCst))
                        .find(|n| holds(n))
                        .or_else(|| c.nodes.iter().find(|n| n.healthy.load(Ordering::SeqCst)))
                } else {
                    c.nodes.iter().find(|n| n.name == call.node)
                };
                let Some(node) = node else {
                    return Self::refused("no_healthy_node", "no node can serve this request");
                };
                let impostor = self.impostor.lock().unwrap();
                let impostor = impostor
                    .as_ref()
                    .filter(|i| i.cluster == c.name && i.node == node.name);
                let mut response = match (impostor, &node.scripted) {
                    (Some(i), _) => {
                        i.tee
                            .handle(&c.name, &node.name, &call.request, Some(&i.script))
                    }
                    (None, Some(tee)) => {
                        tee.handle(&c.name, &node.name, &call.request, self.script.as_ref())
                    }
                    (None, None) => node.core.lock().unwrap().handle_bytes(&call.request),
                };
                node.served.fetch_add(1, Ordering::SeqCst);
                if self.tamper.load(Ordering::SeqCst) {
                    let mut signed: SignedResponse = postcard::from_bytes(&response).unwrap();
                    if let Some(sig) = &mut signed.signature {
                        let last = sig.len() - 1;
                        sig[last] ^= 1;
                    }
                    response = postcard::to_allocvec(&signed).unwrap();
                }
                // Like the bridge: every answer carries the serving node's chain.
                let chain = self
                    .rogue_chain
                    .lock()
                    .unwrap()
                    .clone()
                    .or_else(|| impostor.map(|i| i.tee.chain.clone()))
                    .unwrap_or_else(|| node.chain());
                let chain = Some(DeviceChain {
                    device: chain.device,
                    cluster_ca: chain.cluster_ca,
                    device_ca: chain.device_ca,
                });
                LinkReply {
                    result: Some(LinkResult::Submitted(TeeReply {
                        response,
                        node: node.name.clone(),
                        chain,
                    })),
                }
            }
            Some(Op::Status(_)) => {
                let nodes: Vec<NodeStatus> = c
                    .nodes
                    .iter()
                    .map(|n| {
                        let held = match call_core(&mut n.core.lock().unwrap(), &Request::ListKeys)
                        {
                            Ok(Response::Keys(k)) => k.len() as u64,
                            _ => 0,
                        };
                        NodeStatus {
                            node: n.name.clone(),
                            endpoint: format!("127.0.0.1:{}", 7000),
                            healthy: n.healthy.load(Ordering::SeqCst),
                            keys_held: held,
                            served: u64::from(n.served.load(Ordering::SeqCst)),
                            failures: 0,
                            // The fake bridge keeps no registration: unknown.
                            cert_not_after: 0,
                        }
                    })
                    .collect();
                LinkReply {
                    result: Some(LinkResult::Status(ClusterStatus {
                        cluster: c.name.clone(),
                        keys: nodes.iter().map(|n| n.keys_held).max().unwrap_or(0),
                        nodes,
                    })),
                }
            }
            Some(Op::Audit(_)) | Some(Op::LastAudit(_)) => LinkReply {
                result: Some(LinkResult::Audit(AuditReport {
                    started_at_ms: 1,
                    finished_at_ms: 2,
                    keys: 1,
                    nodes: c
                        .nodes
                        .iter()
                        .map(|n| NodeAudit {
                            node: n.name.clone(),
                            checked: 1,
                            ok: 1,
                            missing: self.audit_missing.lock().unwrap().clone(),
                            wrong: self.audit_wrong.lock().unwrap().clone(),
                            error: String::new(),
                        })
                        .collect(),
                })),
            },
            None => Self::refused("malformed", "empty link request"),
        }
    }
}

impl Gateway for FakeGateway {
    fn forward<'a>(
        &'a self,
        cluster: &'a str,
        request_id: [u8; 16],
        request: LinkRequest,
    ) -> BoxFuture<'a, Result<LinkReply, GatewayError>> {
        Box::pin(async move {
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            let op = Self::op_name(&request);
            let failing = self
                .fail_ops
                .lock()
                .unwrap()
                .iter()
                .any(|(c, o)| c == cluster && *o == op);
            if failing || self.down.load(Ordering::SeqCst) || Self::take(&self.fail_next) {
                self.record(cluster, request_id, op, false);
                return Err(GatewayError::Unavailable("relay down (test)".into()));
            }
            let Some(c) = self.clusters.get(cluster) else {
                return Err(GatewayError::UnknownCluster(cluster.into()));
            };
            let payload = request.encode_to_vec();
            let cached = self.done.lock().unwrap().get(&request_id).cloned();
            let reply = match cached {
                Some((p, reply)) => {
                    if p != payload {
                        return Err(GatewayError::Rejected(
                            "request id reused with another payload".into(),
                        ));
                    }
                    self.record(cluster, request_id, op, false);
                    reply
                }
                None => {
                    let reply = self.execute(c, &request);
                    self.done
                        .lock()
                        .unwrap()
                        .insert(request_id, (payload, reply.clone()));
                    self.record(cluster, request_id, op, true);
                    reply
                }
            };
            if Self::take(&self.lose_next) {
                return Err(GatewayError::Unavailable("reply lost (test)".into()));
            }
            Ok(reply)
        })
    }
}

/// One request to an in-memory TEE core, through its byte interface (committed, signed) like
/// a real TEE process; the outcome is decoded without checking the signature.
pub fn call_core<P: Platform>(core: &mut TeeCore<P>, request: &Request) -> Outcome {
    let signed = core.handle_bytes(&custos_wire::protocol::encode_request(request));
    custos_wire::client::decode_outcome(&signed).expect("the core answers a signed response")
}
