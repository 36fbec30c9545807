//! Threshold keys through the REST API: share imports, the cloud server's orchestration of
//! signing sessions across clusters, aborts and retries, and input validation.
//!
//! The TEE side is played by scripted TEEs (certified device keys, answers signed like a
//! TEE's) running a stand-in of the protocol: four rounds named after the patent's phases,
//! each participant broadcasting one message and sending one point-to-point message to
//! every other participant per round, checking that everything it receives arrives
//! unaltered, from the right sender, for the right session and round; after the last
//! round each returns the signature of the child key (made here with libsecp256k1). The
//! real protocol through real TEEs is tested end to end in crates/custos.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1};
use bitcoin::NetworkKind;
use custos_cloud_api::client::ClientError;
use custos_cloud_api::*;
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::{
    CertChain, EcdsaSignature, Outcome, Request, RequestMeta, Response, SessionRef, TeeError,
    ThresholdBundle, ThresholdKeyInfo, ThresholdOrigin, ThresholdSignParams,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use custos_test_kit::*;

use crate::scripted::{self, clusters_of, session_of, StandIn, Tees, CLUSTERS};

/// Signing: four rounds named after the patent's phases.
const SIGNING: StandIn = StandIn {
    phases: &["getAB", "getAB_and_R", "getR", "getSig"],
    padding: |_| 0,
};

// ----- the TEE side, scripted ------------------------------------------------------------

/// How a cluster's scripted TEE misbehaves.
#[derive(Clone, Debug)]
enum Misbehave {
    /// Refuses `ThresholdStart` with this error.
    RefuseStart(TeeError),
    /// Aborts the session when the messages of `round` are complete, blaming `blamed`.
    AbortAt { round: u16, blamed: Vec<String> },
    /// Takes part but never sends a message.
    Silent,
    /// Returns a signature by the joint key itself instead of the child key.
    WrongKey,
}

struct SimSession {
    pos: u16,
    n: u16,
    round: u16,
    got: usize,
    params: ThresholdSignParams,
    silent: bool,
}

/// The TEE side of every cluster: the joint key (held whole here, as a test may), and what
/// every scripted TEE shares (the running sessions, a log of what each cluster was asked:
/// "start" | "feed" | "abort").
struct Sim {
    master: Xpriv,
    secp: Secp256k1<All>,
    tees: Tees<Misbehave, SimSession>,
}

impl Deref for Sim {
    type Target = Tees<Misbehave, SimSession>;
    fn deref(&self) -> &Self::Target {
        &self.tees
    }
}

impl Sim {
    fn new() -> Arc<Sim> {
        Arc::new(Sim {
            master: Xpriv::new_master(NetworkKind::Main, &[42u8; 32]).unwrap(),
            secp: Secp256k1::new(),
            tees: Tees::default(),
        })
    }

    fn script(self: &Arc<Self>) -> Script {
        let sim = self.clone();
        Arc::new(move |cluster, node, chain, request| sim.handle(cluster, node, chain, request))
    }

    fn key_info(&self, share_index: u16) -> ThresholdKeyInfo {
        let xpub = Xpub::from_priv(&self.secp, &self.master);
        ThresholdKeyInfo {
            key_id: xpub.public_key.serialize().to_vec(),
            chain_code: Some(xpub.chain_code.to_bytes()),
            threshold: 2,
            clusters: CLUSTERS.iter().map(|c| c.to_string()).collect(),
            quorum: 2,
            origin: ThresholdOrigin::Dealer,
            share_index,
        }
    }

    fn child(&self, path: &[u32]) -> Xpriv {
        let steps: Vec<ChildNumber> = path.iter().map(|&i| ChildNumber::from(i)).collect();
        self.master.derive_priv(&self.secp, &steps).unwrap()
    }

    fn sign(&self, params: &ThresholdSignParams) -> EcdsaSignature {
        let key = self.child(&params.path).private_key;
        let rs = self
            .secp
            .sign_ecdsa_recoverable(&Message::from_digest(params.digest), &key);
        let (recid, compact) = rs.serialize_compact();
        EcdsaSignature {
            r: compact[..32].try_into().unwrap(),
            s: compact[32..].try_into().unwrap(),
            v: recid.to_i32() as u8,
            public_key: PublicKey::from_secret_key(&self.secp, &key)
                .serialize()
                .to_vec(),
        }
    }

    fn handle(&self, cluster: &str, _node: &str, chain: &CertChain, request: Request) -> Outcome {
        let behaviour = self.behaviour(cluster);
        match request {
            Request::ImportThresholdBundle { bundle, .. } => {
                let fingerprint: [u8; 32] = Sha256::digest(&chain.device).into();
                if fingerprint != bundle.recipient_fingerprint {
                    return Err(TeeError::SealedImportRejected(
                        "sealed to another node".into(),
                    ));
                }
                Ok(Response::ThresholdKey(bundle.key))
            }
            Request::ThresholdStart {
                meta,
                attempt,
                params,
                ..
            } => {
                let session = SessionRef {
                    request_id: meta.request_id,
                    attempt,
                };
                self.log(cluster, "start", session);
                if let Some(Misbehave::RefuseStart(e)) = behaviour {
                    return Err(e);
                }
                let Some(pos) = params
                    .signers
                    .iter()
                    .position(|s| s.chain.device == chain.device)
                else {
                    return Err(TeeError::ThresholdRejected(
                        "this node is not a signer".into(),
                    ));
                };
                let signer_cluster = &CLUSTERS[usize::from(params.signers[pos].share_index)];
                assert_eq!(*signer_cluster, cluster, "share index of the wrong cluster");
                let mut sessions = self.sessions.lock().unwrap();
                if sessions.contains_key(&(cluster.to_string(), session)) {
                    return Err(TeeError::ThresholdRejected(
                        "session already started".into(),
                    ));
                }
                let (pos, n) = (pos as u16, params.signers.len() as u16);
                let silent = matches!(behaviour, Some(Misbehave::Silent));
                sessions.insert(
                    (cluster.to_string(), session),
                    SimSession {
                        pos,
                        n,
                        round: 1,
                        got: 0,
                        params,
                        silent,
                    },
                );
                Ok(Response::ThresholdRound {
                    session,
                    phase: SIGNING.phase(1).into(),
                    outgoing: if silent {
                        vec![]
                    } else {
                        SIGNING.messages(session, pos, n, 1)
                    },
                    signature: None,
                })
            }
            Request::ThresholdFeed { session, messages } => {
                self.log(cluster, "feed", session);
                let mut sessions = self.sessions.lock().unwrap();
                let key = (cluster.to_string(), session);
                let Some(st) = sessions.get_mut(&key) else {
                    return Err(TeeError::UnknownSession(hex::encode(session.request_id)));
                };
                let phase = SIGNING.phase(st.round);
                for m in &messages {
                    if !SIGNING.intact(m, session, st.round, st.pos, st.n) {
                        let sender = usize::from(m.sender).min(st.params.signers.len() - 1);
                        let blamed = CLUSTERS[usize::from(st.params.signers[sender].share_index)];
                        sessions.remove(&key);
                        return Err(TeeError::ThresholdAborted {
                            session: hex::encode(session.request_id),
                            blamed: vec![blamed.into()],
                            phase: phase.into(),
                            detail: format!("bad message {m:?}"),
                        });
                    }
                    st.got += 1;
                }
                if st.got < StandIn::expected(st.n) {
                    return Ok(Response::ThresholdRound {
                        session,
                        phase: phase.into(),
                        outgoing: vec![],
                        signature: None,
                    });
                }
                if let Some(Misbehave::AbortAt { round, blamed }) = &behaviour {
                    if *round == st.round {
                        sessions.remove(&key);
                        return Err(TeeError::ThresholdAborted {
                            session: hex::encode(session.request_id),
                            blamed: blamed.clone(),
                            phase: phase.into(),
                            detail: "a message did not verify (injected)".into(),
                        });
                    }
                }
                if st.round == SIGNING.last_round() {
                    let mut params = st.params.clone();
                    if matches!(behaviour, Some(Misbehave::WrongKey)) {
                        params.path.clear();
                    }
                    let signature = self.sign(&params);
                    sessions.remove(&key);
                    return Ok(Response::ThresholdRound {
                        session,
                        phase: phase.into(),
                        outgoing: vec![],
                        signature: Some(signature),
                    });
                }
                st.round += 1;
                st.got = 0;
                Ok(Response::ThresholdRound {
                    session,
                    phase: SIGNING.phase(st.round).into(),
                    outgoing: if st.silent {
                        vec![]
                    } else {
                        SIGNING.messages(session, st.pos, st.n, st.round)
                    },
                    signature: None,
                })
            }
            Request::ThresholdAbort { session, .. } => {
                self.log(cluster, "abort", session);
                self.sessions
                    .lock()
                    .unwrap()
                    .remove(&(cluster.to_string(), session));
                Ok(Response::ThresholdAborted(session))
            }
            other => Err(TeeError::InvalidRequest(format!("unexpected {other:?}"))),
        }
    }
}

// ----- the cloud side -----------------------------------------------------------------------

struct Setup {
    s: TestServer,
    sim: Arc<Sim>,
}

/// Clusters dc1 (two nodes), dc2 and dc3 of scripted TEEs.
async fn setup(db: TestDb) -> Setup {
    let sim = Sim::new();
    let s = scripted::server(db, sim.script()).await;
    Setup { s, sim }
}

fn bundle_for(s: &TestServer, key: ThresholdKeyInfo, node: &str) -> ThresholdBundle {
    let cluster = key.clusters[usize::from(key.share_index)].clone();
    ThresholdBundle {
        key,
        recipient_fingerprint: s.gateway.scripted_tee(&cluster, node).fingerprint(),
        dealer_cert: vec![1; 40],
        dealer_ca: vec![2; 40],
        enc: vec![3; 32],
        ciphertext: vec![4; 3000],
        signature: vec![5; 70],
    }
}

fn bundle_hex(b: &ThresholdBundle) -> String {
    hex::encode(postcard::to_allocvec(b).unwrap())
}

fn random_id() -> [u8; 16] {
    rand::random()
}

/// Imports `bundle` with the approvals of its quorum given up front.
async fn import(s: &TestServer, bundle: &ThresholdBundle) -> RequestView {
    let id = random_id();
    let meta = RequestMeta {
        request_id: id,
        expires_at: now() + 600,
    };
    let k = &bundle.key;
    let message = Action::ImportThresholdKey {
        quorum: k.quorum,
        key_id: &k.key_id,
        share_index: k.share_index,
    }
    .message(&k.clusters[usize::from(k.share_index)], &meta);
    let approvals = (0..usize::from(k.quorum))
        .map(|i| s.pki.approve(i, &message))
        .collect();
    s.client
        .import_threshold_key(&ImportThresholdKeyBody {
            bundle_hex: bundle_hex(bundle),
            request_id: Some(hex::encode(id)),
            expires_at: Some(meta.expires_at),
            approvals,
        })
        .await
        .unwrap()
}

async fn import_all(s: &TestServer, sim: &Sim) -> String {
    for i in 0..3u16 {
        let view = import(s, &bundle_for(s, sim.key_info(i), "node1")).await;
        assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    }
    hex::encode(sim.key_info(0).key_id)
}

fn sign_body(key_id: &str, path: &str, digest: [u8; 32]) -> ThresholdSignBody {
    ThresholdSignBody {
        key_id: key_id.into(),
        path: path.into(),
        digest: hex::encode(digest),
        message: None,
        clusters: None,
        request_id: None,
        expires_at: None,
        approvals: vec![],
    }
}

/// `body` with the approvals of admins 0 and 1 given up front.
fn approved(s: &TestServer, mut body: ThresholdSignBody, path: &[u32]) -> ThresholdSignBody {
    let id = random_id();
    let meta = RequestMeta {
        request_id: id,
        expires_at: now() + 600,
    };
    let key_id = hex::decode(&body.key_id).unwrap();
    let digest: [u8; 32] = hex::decode(&body.digest).unwrap().try_into().unwrap();
    let message = Action::ThresholdSign {
        key_id: &key_id,
        path,
        digest: &digest,
    }
    .message(THRESHOLD_SCOPE, &meta);
    body.request_id = Some(hex::encode(id));
    body.expires_at = Some(meta.expires_at);
    body.approvals = vec![s.pki.approve(0, &message), s.pki.approve(1, &message)];
    body
}

/// Checks a signature independently: low-s, valid for the digest with the child key of
/// the joint key at `path`, and `v` recovering that key.
fn verify(sim: &Sim, view: &RequestView, path: &[u32], digest: [u8; 32]) -> SignResult {
    let Some(RequestResult::Signature(sig)) = &view.result else {
        panic!("no signature: {view:?}")
    };
    let secp = Secp256k1::verification_only();
    let child = PublicKey::from_secret_key(&sim.secp, &sim.child(path).private_key);
    assert_eq!(sig.public_key, hex::encode(child.serialize()));
    let compact: Vec<u8> = [hex::decode(&sig.r).unwrap(), hex::decode(&sig.s).unwrap()].concat();
    let signature = Signature::from_compact(&compact).unwrap();
    let mut normalized = signature;
    normalized.normalize_s();
    assert_eq!(normalized, signature, "high s");
    let msg = Message::from_digest(digest);
    secp.verify_ecdsa(&msg, &signature, &child).unwrap();
    let recoverable =
        RecoverableSignature::from_compact(&compact, RecoveryId::from_i32(sig.v.into()).unwrap())
            .unwrap();
    assert_eq!(secp.recover_ecdsa(&msg, &recoverable).unwrap(), child);
    assert_eq!(
        hex::decode(&sig.signature_der).unwrap(),
        signature.serialize_der().to_vec()
    );
    sig.clone()
}

fn start_link_id(request_id: &str, attempt: u8, cluster: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"custos-threshold-start");
    h.update(hex::decode(request_id).unwrap());
    h.update([attempt]);
    h.update(cluster.as_bytes());
    h.finalize()[..16].try_into().unwrap()
}

#[tokio::test]
async fn shares_are_imported_and_t_clusters_sign() {
    for db in databases("shares_are_imported_and_t_clusters_sign").await {
        let engine = db.engine;
        let Setup { s, sim } = setup(db).await;
        let c = &s.client;

        // An import waits for its quorum; its approval message is the TEE's, made with the
        // share's cluster.
        let b0 = bundle_for(&s, sim.key_info(0), "node1");
        let pending = c
            .import_threshold_key(&ImportThresholdKeyBody {
                bundle_hex: bundle_hex(&b0),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        assert_eq!(pending.status, RequestStatus::PendingApproval);
        assert_eq!(pending.kind, RequestKind::ImportThresholdKey);
        assert_eq!(pending.cluster, "dc1");
        assert_eq!(pending.share_index, Some(0));
        assert_eq!(pending.quorum, 2);
        assert_eq!(pending.target_node.as_deref(), Some("node1"));
        let message = message_of(&pending);
        let meta = RequestMeta {
            request_id: hex::decode(&pending.id).unwrap().try_into().unwrap(),
            expires_at: pending.expires_at,
        };
        assert_eq!(
            message,
            Action::ImportThresholdKey {
                quorum: 2,
                key_id: &b0.key.key_id,
                share_index: 0
            }
            .message("dc1", &meta)
        );
        c.approve(&pending.id, &s.pki.approve(0, &message))
            .await
            .unwrap();
        let done = c
            .approve(&pending.id, &s.pki.approve(2, &message))
            .await
            .unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{engine}: {done:?}");
        let Some(RequestResult::ThresholdShare(share)) = &done.result else {
            panic!("{done:?}")
        };
        let xpub = Xpub::from_priv(&sim.secp, &sim.master).to_string();
        assert_eq!(
            (
                share.share_index,
                share.cluster.as_str(),
                share.node.as_str()
            ),
            (0, "dc1", "node1")
        );
        assert_eq!(share.xpub.as_deref(), Some(xpub.as_str()));
        let key_id = hex::encode(&b0.key.key_id);
        let k = c.threshold_key(&key_id).await.unwrap();
        assert_eq!(k.missing_shares, [1, 2]);

        // The other two shares; then share 0 again, sealed to dc1's other node (the server
        // finds the node by the certificate fingerprint the bundle names).
        for i in 1..3u16 {
            let view = import(&s, &bundle_for(&s, sim.key_info(i), "node1")).await;
            assert_eq!(view.status, RequestStatus::Completed, "{engine}: {view:?}");
        }
        let again = import(&s, &bundle_for(&s, sim.key_info(0), "node2")).await;
        assert_eq!(again.target_node.as_deref(), Some("node2"));
        assert_eq!(
            again.status,
            RequestStatus::Completed,
            "{engine}: {again:?}"
        );

        let list = c.threshold_keys().await.unwrap();
        assert_eq!(list.keys.len(), 1);
        let k = &list.keys[0];
        assert_eq!(k.key_id, key_id);
        assert_eq!(k.xpub.as_deref(), Some(xpub.as_str()));
        assert_eq!((k.threshold, k.quorum, k.origin.as_str()), (2, 2, "dealer"));
        assert_eq!(k.clusters, CLUSTERS);
        assert!(k.missing_shares.is_empty());
        let placed: Vec<(u16, &str, &str)> = k
            .shares
            .iter()
            .map(|s| (s.share_index, s.cluster.as_str(), s.node.as_str()))
            .collect();
        assert_eq!(
            placed,
            [
                (0, "dc1", "node2"),
                (1, "dc2", "node1"),
                (2, "dc3", "node1")
            ],
            "{engine}: a re-import moves the share to its new node"
        );
        assert_eq!(c.threshold_key(&key_id.to_uppercase()).await.unwrap(), *k);

        // A bundle whose facts differ from the recorded key is refused up front.
        let mut other = sim.key_info(1);
        other.threshold = 3;
        let e = c
            .import_threshold_key(&ImportThresholdKeyBody {
                bundle_hex: bundle_hex(&bundle_for(&s, other, "node1")),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), "threshold_key_mismatch");

        // Signing waits for the key's quorum, approved with the threshold scope.
        let path = [0u32, 1];
        let digest = [0x5au8; 32];
        let view = c
            .threshold_sign(&sign_body(&key_id, "m/0/1", digest))
            .await
            .unwrap();
        assert_eq!(view.status, RequestStatus::PendingApproval);
        assert_eq!(
            (view.kind, view.cluster.as_str(), view.quorum),
            (RequestKind::ThresholdSign, THRESHOLD_SCOPE, 2)
        );
        assert_eq!(view.root_id.as_deref(), Some(key_id.as_str()));
        let message = message_of(&view);
        let meta = RequestMeta {
            request_id: hex::decode(&view.id).unwrap().try_into().unwrap(),
            expires_at: view.expires_at,
        };
        assert_eq!(
            message,
            Action::ThresholdSign {
                key_id: &b0.key.key_id,
                path: &path,
                digest: &digest
            }
            .message(THRESHOLD_SCOPE, &meta)
        );
        assert!(sim.logged("start").is_empty());
        c.approve(&view.id, &s.pki.approve(1, &message))
            .await
            .unwrap();
        let done = c
            .approve(&view.id, &s.pki.approve(0, &message))
            .await
            .unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{engine}: {done:?}");
        let sig = verify(&sim, &done, &path, digest);
        assert_eq!(
            sig.clusters.as_deref(),
            Some(&["dc1".to_string(), "dc2".to_string()][..])
        );

        // Both participants got the same start once, under the deterministic link id;
        // nothing was aborted.
        let session = session_of(&done, 0);
        assert_eq!(clusters_of(sim.logged("start"), session), ["dc1", "dc2"]);
        assert!(sim.logged("abort").is_empty());
        let starts: Vec<_> = s
            .gateway
            .calls()
            .into_iter()
            .filter(|c| c.op == "submit:ThresholdStart")
            .collect();
        assert_eq!(starts.len(), 2);
        for call in &starts {
            assert_eq!(call.request_id, start_link_id(&done.id, 0, &call.cluster));
        }
        // Four exchanges of two feeds (one per participant).
        assert_eq!(s.gateway.executed("ThresholdFeed").len(), 8);
        // dc1's share was last imported on node2: that node signs.
        let events: Vec<(&str, &str)> = done
            .events
            .iter()
            .map(|e| (e.event.as_str(), e.detail.as_str()))
            .collect();
        assert!(
            events.contains(&(
                "session",
                "attempt 0: dc1/node2 (share 0), dc2/node1 (share 1)"
            )),
            "{events:?}"
        );
        assert_eq!(events.last().unwrap().0, "completed");

        // Named clusters take part in the order given; a pre-approved request is signed in
        // the same call; `m` signs with the joint key itself.
        let mut body = approved(&s, sign_body(&key_id, "m", digest), &[]);
        body.clusters = Some(vec!["dc3".into(), "dc1".into()]);
        let view = c.threshold_sign(&body).await.unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{engine}: {view:?}");
        assert_eq!(view.target_node.as_deref(), Some("dc3,dc1"));
        let sig = verify(&sim, &view, &[], digest);
        assert_eq!(
            sig.clusters.as_deref(),
            Some(&["dc3".to_string(), "dc1".to_string()][..])
        );

        // The recorded node of a share is down: another node of its cluster stands in
        // (when the cluster is named; by itself the server prefers clusters whose
        // importing node is up).
        s.gateway
            .node("dc1", "node2")
            .healthy
            .store(false, Ordering::SeqCst);
        let body = approved(&s, sign_body(&key_id, "m/7", [1u8; 32]), &[7]);
        let view = c.threshold_sign(&body).await.unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{engine}: {view:?}");
        let sig = verify(&sim, &view, &[7], [1u8; 32]);
        assert_eq!(
            sig.clusters.as_deref(),
            Some(&["dc2".to_string(), "dc3".to_string()][..])
        );
        let mut body = approved(&s, sign_body(&key_id, "m/7", [1u8; 32]), &[7]);
        body.clusters = Some(vec!["dc1".into(), "dc2".into()]);
        let view = c.threshold_sign(&body).await.unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{engine}: {view:?}");
        verify(&sim, &view, &[7], [1u8; 32]);
        assert!(view
            .events
            .iter()
            .any(|e| e.event == "session" && e.detail.contains("dc1/node1 (share 0)")));

        // Requests of both kinds are listed and filtered like the others.
        let list = c
            .requests(&RequestQuery {
                status: Some(RequestStatus::Completed),
                kind: Some(RequestKind::ThresholdSign),
                limit: None,
            })
            .await
            .unwrap();
        assert_eq!(list.requests.len(), 4, "{engine}");
        let imports = c
            .requests(&RequestQuery {
                status: None,
                kind: Some(RequestKind::ImportThresholdKey),
                limit: None,
            })
            .await
            .unwrap();
        assert_eq!(imports.requests.len(), 4, "{engine}");
        assert!(imports.requests.iter().all(|r| r.share_index.is_some()));
        s.stop().await;
    }
}

#[tokio::test]
async fn a_failing_participant_aborts_the_session_and_a_retry_signs() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let c = &s.client;
    let key_id = import_all(&s, &sim).await;
    let path = [3u32];
    let digest = [0x11u8; 32];

    // dc2 refuses to open the session: the request fails naming dc2 and the phase, and
    // dc1, which had opened it, is told to abort it.
    sim.misbehave(
        "dc2",
        Misbehave::RefuseStart(TeeError::ThresholdRejected(
            "share 1 is not held here".into(),
        )),
    );
    let view = c
        .threshold_sign(&approved(&s, sign_body(&key_id, "m/3", digest), &path))
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let e = view.error.clone().unwrap();
    assert_eq!(e.code, "tee_threshold_rejected");
    assert!(
        e.message.contains("dc2") && e.message.contains("getAB") && e.message.contains("attempt 0"),
        "{e:?}"
    );
    let attempt0 = session_of(&view, 0);
    assert_eq!(clusters_of(sim.logged("start"), attempt0), ["dc1", "dc2"]);
    assert_eq!(clusters_of(sim.logged("abort"), attempt0), ["dc1"]);
    assert!(s
        .gateway
        .executed("ThresholdAbort")
        .iter()
        .all(|c| c.cluster == "dc1"));

    // The retry is the next attempt; dc2, blamed last time, is passed over.
    sim.behave();
    let retried = c.retry(&view.id).await.unwrap();
    assert_eq!(retried.status, RequestStatus::Completed, "{retried:?}");
    assert_eq!(retried.attempts, 2);
    let sig = verify(&sim, &retried, &path, digest);
    assert_eq!(
        sig.clusters.as_deref(),
        Some(&["dc1".to_string(), "dc3".to_string()][..])
    );
    assert_eq!(
        clusters_of(sim.logged("start"), session_of(&view, 1)),
        ["dc1", "dc3"]
    );

    // dc3 aborts in getR, blaming dc1 for a message that did not verify: the failure names
    // dc1 and the phase; dc1 is told to abort.
    sim.misbehave(
        "dc3",
        Misbehave::AbortAt {
            round: 3,
            blamed: vec!["dc1".into()],
        },
    );
    let mut body = approved(&s, sign_body(&key_id, "m/3", digest), &path);
    body.clusters = Some(vec!["dc1".into(), "dc3".into()]);
    let view = c.threshold_sign(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let e = view.error.clone().unwrap();
    assert_eq!(e.code, "tee_threshold_aborted");
    assert!(
        e.message.contains("getR") && e.message.contains("blamed: dc1"),
        "{e:?}"
    );
    assert_eq!(
        clusters_of(sim.logged("abort"), session_of(&view, 0)),
        ["dc1"]
    );
    // Named clusters stay the ones used by a retry.
    sim.behave();
    let retried = c.retry(&view.id).await.unwrap();
    assert_eq!(retried.status, RequestStatus::Completed, "{retried:?}");
    assert_eq!(
        verify(&sim, &retried, &path, digest).clusters.as_deref(),
        Some(&["dc1".to_string(), "dc3".to_string()][..])
    );

    // A participant that never sends anything stalls the session: aborted, both named.
    sim.misbehave("dc2", Misbehave::Silent);
    let mut body = approved(&s, sign_body(&key_id, "m/3", digest), &path);
    body.clusters = Some(vec!["dc1".into(), "dc2".into()]);
    let view = c.threshold_sign(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let e = view.error.clone().unwrap();
    assert_eq!(e.code, "threshold_aborted");
    assert!(
        e.message.contains("stalled") && e.message.contains("dc2"),
        "{e:?}"
    );
    assert_eq!(
        clusters_of(sim.logged("abort"), session_of(&view, 0)),
        ["dc1", "dc2"]
    );
    sim.behave();

    // dc2 becomes unreachable once the session runs: the request fails naming dc2 and the
    // phase; both participants are told to abort (dc2's relay takes the abort again).
    s.gateway
        .fail_ops
        .lock()
        .unwrap()
        .push(("dc2".into(), "submit:ThresholdFeed".into()));
    let mut body = approved(&s, sign_body(&key_id, "m/3", digest), &path);
    body.clusters = Some(vec!["dc2".into(), "dc1".into()]);
    let view = c.threshold_sign(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let e = view.error.clone().unwrap();
    assert_eq!(e.code, "threshold_aborted");
    assert!(
        e.message
            .contains("cluster dc2 (node node1) failed in getAB")
            && e.message.contains("unavailable"),
        "{e:?}"
    );
    assert_eq!(
        clusters_of(sim.logged("abort"), session_of(&view, 0)),
        ["dc1", "dc2"]
    );
    s.gateway.fail_ops.lock().unwrap().clear();

    // The participants' signatures disagree, or are by the wrong key: nothing is returned.
    sim.misbehave("dc1", Misbehave::WrongKey);
    let mut body = approved(&s, sign_body(&key_id, "m/3", digest), &path);
    body.clusters = Some(vec!["dc1".into(), "dc3".into()]);
    let view = c.threshold_sign(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let e = view.error.clone().unwrap();
    assert_eq!(e.code, "bad_signature");
    assert!(e.message.contains("disagree"), "{e:?}");
    assert!(view.result.is_none());
    sim.misbehave("dc3", Misbehave::WrongKey);
    let retried = c.retry(&view.id).await.unwrap();
    assert_eq!(retried.status, RequestStatus::Failed, "{retried:?}");
    let e = retried.error.clone().unwrap();
    assert_eq!(e.code, "bad_signature");
    assert!(e.message.contains("wallet's key at m/3"), "{e:?}");
    sim.behave();

    // Fewer than t named clusters can take part: failed as cluster_unavailable (the call
    // answers 503 naming the request), nothing started.
    s.gateway
        .node("dc2", "node1")
        .healthy
        .store(false, Ordering::SeqCst);
    let starts_before = sim.logged("start").len();
    let mut body = approved(&s, sign_body(&key_id, "m/3", digest), &path);
    body.clusters = Some(vec!["dc2".into(), "dc3".into()]);
    let e = c.threshold_sign(&body).await.unwrap_err();
    let ClientError::Api {
        status,
        code,
        message,
        request_id,
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!((status, code.as_str()), (503, "cluster_unavailable"));
    assert!(message.contains("dc2: no healthy node"), "{message}");
    assert_eq!(sim.logged("start").len(), starts_before);
    let failed = c.request(&request_id.unwrap()).await.unwrap();
    assert_eq!(failed.status, RequestStatus::Failed);
    s.gateway
        .node("dc2", "node1")
        .healthy
        .store(true, Ordering::SeqCst);
    let retried = c.retry(&failed.id).await.unwrap();
    assert_eq!(retried.status, RequestStatus::Completed, "{retried:?}");

    // A refusal no retry can fix (the approvals) ends the request as refused.
    sim.misbehave(
        "dc1",
        Misbehave::RefuseStart(TeeError::QuorumNotMet {
            required: 2,
            approved: 1,
        }),
    );
    let view = c
        .threshold_sign(&approved(&s, sign_body(&key_id, "m/3", digest), &path))
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::Refused, "{view:?}");
    assert_eq!(view.error.unwrap().code, "tee_quorum_not_met");
    assert_eq!(code_of(c.retry(&view.id).await), "not_pending");
    s.stop().await;
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    code(r.unwrap_err())
}

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn threshold_routes_refuse_bad_input_with_stable_codes() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let c = &s.client;

    for path in ["/v1/threshold/keys/import", "/v1/threshold/sign"] {
        for body in [
            "{\"key_id\":",
            "{}",
            "[1]",
            "{\"bundle_hex\":\"00\",\"colour\":1}",
        ] {
            let (status, v) = s.post(path, body).await;
            assert_eq!(
                (status, err_code(&v)),
                (400, "malformed_json"),
                "{path} {body}"
            );
        }
        let r = s.raw().post(s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let import_body = |hex: String| ImportThresholdKeyBody {
        bundle_hex: hex,
        request_id: None,
        expires_at: None,
        approvals: vec![],
    };
    for bad in ["zz".to_string(), "0".into(), "00ff".into(), String::new()] {
        assert_eq!(
            code_of(c.import_threshold_key(&import_body(bad.clone())).await),
            "invalid_bundle",
            "{bad:?}"
        );
    }
    // The import route takes bodies beyond the general 64 KiB (a bundle of up to 256 KiB),
    // but not beyond its own limit.
    let (status, v) = s
        .post(
            "/v1/threshold/keys/import",
            serde_json::to_string(&import_body("00".repeat(270 * 1024))).unwrap(),
        )
        .await;
    assert_eq!((status, err_code(&v)), (400, "invalid_bundle"));
    assert!(v["error"]["message"].as_str().unwrap().contains("at most"));
    let (status, v) = s
        .post(
            "/v1/threshold/keys/import",
            serde_json::to_string(&import_body("00".repeat(600 * 1024))).unwrap(),
        )
        .await;
    assert_eq!((status, err_code(&v)), (413, "body_too_large"));
    let (status, v) = s
        .post(
            "/v1/threshold/sign",
            format!(
                "{{\"key_id\":\"{}\"}}",
                "a".repeat(custos_cloud::http::MAX_THRESHOLD_SIGN_BODY)
            ),
        )
        .await;
    assert_eq!((status, err_code(&v)), (413, "body_too_large"));

    // Inconsistent facts, a share of an unconfigured cluster, an unknown recipient.
    let mut k = sim.key_info(0);
    k.share_index = 3;
    let mut b = bundle_for(&s, sim.key_info(0), "node1");
    b.key = k;
    assert_eq!(
        code_of(c.import_threshold_key(&import_body(bundle_hex(&b))).await),
        "invalid_bundle"
    );
    let mut k = sim.key_info(0);
    k.clusters[0] = "dc9".into();
    b.key = k;
    assert_eq!(
        code_of(c.import_threshold_key(&import_body(bundle_hex(&b))).await),
        "unknown_cluster"
    );
    let mut b = bundle_for(&s, sim.key_info(1), "node1");
    b.recipient_fingerprint = [9u8; 32];
    assert_eq!(
        code_of(c.import_threshold_key(&import_body(bundle_hex(&b))).await),
        "bundle_recipient_unknown"
    );

    // Signing before any key is known, and malformed fields.
    let key_id = hex::encode(sim.key_info(0).key_id);
    let d = [1u8; 32];
    assert_eq!(
        code_of(c.threshold_sign(&sign_body(&key_id, "m/0", d)).await),
        "unknown_threshold_key"
    );
    assert_eq!(
        code_of(c.threshold_sign(&sign_body("02abcd", "m/0", d)).await),
        "invalid_key_id"
    );
    assert_eq!(
        code_of(
            c.threshold_sign(&sign_body(&format!("02{}", "00".repeat(32)), "m/0", d))
                .await
        ),
        "unknown_threshold_key",
        "not a point: no key has this id"
    );
    assert_eq!(
        code_of(c.threshold_sign(&sign_body(&key_id, "m/0'/1", d)).await),
        "hardened_path"
    );
    assert_eq!(
        code_of(c.threshold_sign(&sign_body(&key_id, "m/x", d)).await),
        "invalid_path"
    );
    let mut short = sign_body(&key_id, "m/0", d);
    short.digest = "ab".repeat(31);
    assert_eq!(code_of(c.threshold_sign(&short).await), "invalid_digest");
    let mut unknown = sign_body(&key_id, "m/0", d);
    unknown.clusters = Some(vec!["dc1".into(), "nope".into()]);
    assert_eq!(code_of(c.threshold_sign(&unknown).await), "unknown_cluster");
    assert_eq!(
        code_of(c.threshold_key(&key_id).await),
        "unknown_threshold_key"
    );
    assert_eq!(code_of(c.threshold_key("zz").await), "invalid_key_id");
    assert!(c.threshold_keys().await.unwrap().keys.is_empty());

    // With the key known: cluster lists that cannot make t distinct share holders.
    import_all(&s, &sim).await;
    for (clusters, expected) in [
        (vec!["dc1"], "invalid_clusters"),
        (vec!["dc1", "dc1"], "invalid_clusters"),
        (vec![], "invalid_clusters"),
        (vec!["dc1", "nope"], "unknown_cluster"),
    ] {
        let mut body = sign_body(&key_id, "m/0", d);
        body.clusters = Some(clusters.iter().map(|c| c.to_string()).collect());
        assert_eq!(
            code_of(c.threshold_sign(&body).await),
            expected,
            "{clusters:?}"
        );
    }
    assert_eq!(
        code_of(c.threshold_sign(&sign_body(&key_id, "m/1/2'", d)).await),
        "hardened_path"
    );
    let mut body = sign_body(&key_id, "m/0", d);
    body.approvals = vec![s.pki.approve(0, b"not this request")];
    assert_eq!(code_of(c.threshold_sign(&body).await), "approval_invalid");
    s.stop().await;
}

#[tokio::test]
async fn approve_command_shows_and_signs_threshold_requests() {
    use custos_cloud_api::review::{describe, list_pending, review_and_approve};
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let key_id = import_all(&s, &sim).await;
    let b = bundle_for(&s, sim.key_info(2), "node1");
    let import = s
        .client
        .import_threshold_key(&ImportThresholdKeyBody {
            bundle_hex: bundle_hex(&b),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let shown = describe(&import);
    assert!(
        shown.contains("import a share of a threshold key")
            && shown.contains(&key_id)
            && shown.contains("share         2")
            && shown.contains("dc3")
            && shown.contains("sealed to     node1"),
        "{shown}"
    );
    let mut body = sign_body(&key_id, "m/0/1", [2u8; 32]);
    body.clusters = Some(vec!["dc2".into(), "dc3".into()]);
    let sign = s.client.threshold_sign(&body).await.unwrap();
    let shown = describe(&sign);
    assert!(
        shown.contains("sign a digest with a threshold key")
            && shown.contains(THRESHOLD_SCOPE)
            && shown.contains("m/0/1")
            && shown.contains(&"02".repeat(32))
            && shown.contains("preferred     dc2,dc3"),
        "{shown}"
    );

    let mut out = Vec::new();
    list_pending(&s.client, &mut out).await.unwrap();
    let listed = String::from_utf8_lossy(&out).to_string();
    assert!(
        listed.contains("import_threshold_key") && listed.contains("threshold_sign"),
        "{listed}"
    );
    for (id, admins) in [(&import.id, [0, 2]), (&sign.id, [1, 2])] {
        for (i, admin) in admins.into_iter().enumerate() {
            let signer = &s.pki.admins[admin];
            let done = review_and_approve(
                &s.client,
                id,
                ADMINS[admin],
                signer,
                true,
                &mut &b""[..],
                &mut Vec::new(),
            )
            .await
            .unwrap();
            let expected = if i == 0 {
                RequestStatus::PendingApproval
            } else {
                RequestStatus::Completed
            };
            assert_eq!(done.status, expected, "{done:?}");
        }
    }
    let done = s.client.request(&sign.id).await.unwrap();
    verify(&sim, &done, &[0, 1], [2u8; 32]);
    s.stop().await;
}

/// A threshold key belongs to the tenant whose requests made it: another tenant's token
/// lists none, reads it as unknown, cannot sign, audit or make presignatures with it, and
/// the refusals record nothing.
#[tokio::test]
async fn another_tenant_cannot_see_or_use_a_threshold_key() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let key_id = import_all(&s, &sim).await;
    let other = s.client_as("other");
    assert!(other.threshold_keys().await.unwrap().keys.is_empty());
    let body = approved(&s, sign_body(&key_id, "m/1", [9; 32]), &[1]);
    let presign = MakePresignaturesBody {
        count: 1,
        clusters: None,
    };
    for code in [
        code_of(other.threshold_key(&key_id).await),
        code_of(other.threshold_sign(&body).await),
        code_of(other.threshold_audit(&key_id).await),
        code_of(other.latest_threshold_audit(&key_id).await),
        code_of(other.presignatures(&key_id).await),
        code_of(other.make_presignatures(&key_id, &presign).await),
    ] {
        assert_eq!(code, "unknown_threshold_key");
    }
    assert!(other
        .requests(&RequestQuery::default())
        .await
        .unwrap()
        .requests
        .is_empty());
    // Its own tenant still has it.
    assert_eq!(s.client.threshold_keys().await.unwrap().keys.len(), 1);
    s.stop().await;
}
