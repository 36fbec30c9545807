//! Threshold keys made by distributed key generation, through the REST API: the request and
//! its approval message, the cloud server's orchestration across every cluster of the key
//! (with the empty feeds that collect what a TEE is still computing), the key recorded only
//! when every TEE reported the same one, failures and retries, and input validation.
//!
//! The TEE side is played by scripted TEEs (certified device keys, answers signed like a
//! TEE's) running a stand-in of the protocol: a `keygen` round and an `auxInfo` round, each
//! participant broadcasting one message and sending one point-to-point message to every
//! other per round, checking everything it receives; before its `auxInfo` messages it
//! reports `computing` for two calls; at the end each reports the key with its own share
//! index. The real protocol through real TEEs is tested end to end in crates/custos
//! (tests/it/dkg.rs).

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use custos_cloud_api::*;
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::{
    CertChain, Outcome, Request, RequestMeta, Response, SessionRef, TeeError, ThresholdKeyInfo,
    ThresholdKeygenParams, ThresholdMessage, ThresholdOrigin,
};

use custos_test_kit::*;

use crate::scripted::{self, distinct_clusters_of, session_of, StandIn, Tees, CLUSTERS};

/// Key generation, then aux-info generation.
const KEYGEN: StandIn = StandIn {
    phases: &["keygen", "auxInfo"],
    padding: aux_info_padding,
};

/// Aux-info messages are large (about 220 KB each in the real protocol).
fn aux_info_padding(round: u16) -> usize {
    if round == 2 {
        200_000
    } else {
        0
    }
}

/// Empty feeds a scripted TEE answers `computing` before its aux-info messages.
const COMPUTE_POLLS: u32 = 2;

// ----- the TEE side, scripted ------------------------------------------------------------

#[derive(Clone, Debug)]
pub(crate) enum Misbehave {
    /// Refuses `ThresholdKeygenStart` with this error.
    RefuseStart(TeeError),
    /// Reports a different key at the end.
    OtherKey,
}

pub(crate) struct SimSession {
    pos: u16,
    n: u16,
    round: u16,
    got: usize,
    /// Calls left answering `computing` before the aux-info messages.
    computing: u32,
    params: ThresholdKeygenParams,
}

/// The TEE side of every cluster: what every scripted TEE shares (the running sessions, a
/// log of what each cluster was asked: "start" | "feed" | "poll" (an empty feed) | "abort").
#[derive(Default)]
pub(crate) struct Sim {
    tees: Tees<Misbehave, SimSession>,
    /// Every group key generation start.
    pub(crate) group_starts: std::sync::Mutex<Vec<GroupStart>>,
}

/// Where a group key generation's attempt started, and the executors it named.
#[derive(Clone, Debug)]
pub(crate) struct GroupStart {
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) attempt: u8,
    pub(crate) executors: Vec<[u8; 32]>,
}

impl Deref for Sim {
    type Target = Tees<Misbehave, SimSession>;
    fn deref(&self) -> &Self::Target {
        &self.tees
    }
}

/// The joint key every honest participant computes (from the session, so each test's key
/// is new).
fn joint_key(session: &SessionRef, salt: u8) -> (Vec<u8>, [u8; 32]) {
    let mut sk = [salt; 32];
    sk[..16].copy_from_slice(&session.request_id);
    let sk = SecretKey::from_slice(&sk).unwrap();
    let pk = PublicKey::from_secret_key(&Secp256k1::new(), &sk);
    (pk.serialize().to_vec(), [salt ^ 0x55; 32])
}

impl Sim {
    pub(crate) fn new() -> Arc<Sim> {
        Arc::new(Sim::default())
    }

    pub(crate) fn script(self: &Arc<Self>) -> Script {
        let sim = self.clone();
        Arc::new(move |cluster, node, chain, request| sim.handle(cluster, node, chain, request))
    }

    fn round(
        session: SessionRef,
        round: u16,
        outgoing: Vec<ThresholdMessage>,
        computing: bool,
        key: Option<ThresholdKeyInfo>,
    ) -> Outcome {
        Ok(Response::ThresholdKeygenRound {
            session,
            phase: KEYGEN.phase(round).into(),
            outgoing,
            computing,
            key,
        })
    }

    fn handle(&self, cluster: &str, node: &str, chain: &CertChain, request: Request) -> Outcome {
        let behaviour = self.behaviour(cluster);
        match request {
            // The stand-in runs a group key generation like a legacy one, once it noted
            // where it started and which executors it names.
            Request::ThresholdGroupKeygenStart {
                meta,
                attempt,
                params,
                executors,
                approvals,
                ..
            } => {
                self.group_starts.lock().unwrap().push(GroupStart {
                    cluster: cluster.to_string(),
                    node: node.to_string(),
                    attempt,
                    executors,
                });
                let legacy = Request::ThresholdKeygenStart {
                    meta,
                    attempt,
                    params,
                    approvals,
                };
                self.handle(cluster, node, chain, legacy)
            }
            Request::ThresholdKeygenStart {
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
                    .participants
                    .iter()
                    .position(|p| p.chain.device == chain.device)
                else {
                    return Err(TeeError::ThresholdRejected("not a participant".into()));
                };
                assert_eq!(params.participants[pos].share_index, pos as u16);
                assert_eq!(params.clusters[pos], cluster, "share of the wrong cluster");
                let n = params.participants.len() as u16;
                self.sessions.lock().unwrap().insert(
                    (cluster.to_string(), session),
                    SimSession {
                        pos: pos as u16,
                        n,
                        round: 1,
                        got: 0,
                        computing: 0,
                        params,
                    },
                );
                Self::round(
                    session,
                    1,
                    KEYGEN.messages(session, pos as u16, n, 1),
                    false,
                    None,
                )
            }
            Request::ThresholdFeed { session, messages } => {
                self.log(
                    cluster,
                    if messages.is_empty() { "poll" } else { "feed" },
                    session,
                );
                let mut sessions = self.sessions.lock().unwrap();
                let key = (cluster.to_string(), session);
                let Some(st) = sessions.get_mut(&key) else {
                    return Err(TeeError::UnknownSession(hex::encode(session.request_id)));
                };
                for m in &messages {
                    let intact = KEYGEN.intact(m, session, st.round, st.pos, st.n);
                    assert!(intact, "{cluster} got {m:?} in round {}", st.round);
                    st.got += 1;
                }
                if st.computing > 0 {
                    assert!(messages.is_empty(), "a feed while computing");
                    st.computing -= 1;
                    if st.computing > 0 {
                        return Self::round(session, 2, vec![], true, None);
                    }
                    return Self::round(
                        session,
                        2,
                        KEYGEN.messages(session, st.pos, st.n, 2),
                        false,
                        None,
                    );
                }
                if st.got < StandIn::expected(st.n) {
                    return Self::round(session, st.round, vec![], false, None);
                }
                if st.round < KEYGEN.last_round() {
                    // Keygen done: aux-info's first step computes for a while.
                    st.round = 2;
                    st.got = 0;
                    st.computing = COMPUTE_POLLS;
                    return Self::round(session, 2, vec![], true, None);
                }
                let salt = if matches!(behaviour, Some(Misbehave::OtherKey)) {
                    2
                } else {
                    1
                };
                let (key_id, chain_code) = joint_key(&session, salt);
                let info = ThresholdKeyInfo {
                    key_id,
                    chain_code: st.params.hd.then_some(chain_code),
                    threshold: st.params.threshold,
                    clusters: st.params.clusters.clone(),
                    quorum: st.params.quorum,
                    origin: ThresholdOrigin::Dkg,
                    share_index: st.pos,
                };
                sessions.remove(&key);
                Self::round(session, 2, vec![], false, Some(info))
            }
            Request::ThresholdAbort { session, .. } => {
                self.log(cluster, "abort", session);
                self.sessions
                    .lock()
                    .unwrap()
                    .remove(&(cluster.to_string(), session));
                Ok(Response::ThresholdAborted(session))
            }
            // Ungoverned clusters, as a real TEE without a log answers.
            Request::Governance { .. } => Err(TeeError::NotGoverned),
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

pub(crate) fn body(clusters: &[&str], threshold: u16, quorum: u8) -> CreateThresholdKeyBody {
    CreateThresholdKeyBody {
        group: None,
        clusters: clusters.iter().map(|c| c.to_string()).collect(),
        threshold,
        quorum,
        hd: true,
        request_id: None,
        expires_at: None,
        approvals: vec![],
        rules: None,
    }
}

/// Approves `view` by admins `admins` (each recomputing the message from the fields).
pub(crate) async fn approve(s: &TestServer, view: &RequestView, admins: &[usize]) -> RequestView {
    let message = message_of(view);
    let mut last = view.clone();
    for &i in admins {
        last = s
            .client
            .approve(&view.id, &s.pki.approve(i, &message))
            .await
            .unwrap();
    }
    last
}

#[tokio::test]
async fn every_cluster_makes_the_key_and_it_is_recorded_once_all_agree() {
    for db in databases("every_cluster_makes_the_key").await {
        let Setup { s, sim } = setup(db).await;
        let c = &s.client;
        let view = c
            .create_threshold_key(&body(&CLUSTERS, 2, 2))
            .await
            .unwrap();
        assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
        assert_eq!(view.kind, RequestKind::CreateThresholdKey);
        assert_eq!(view.cluster, THRESHOLD_SCOPE);
        assert_eq!(
            (view.threshold, view.hd, view.clusters.clone()),
            (
                Some(2),
                Some(true),
                Some(CLUSTERS.iter().map(|c| c.to_string()).collect())
            )
        );
        assert!(
            view.summary.contains("2-of-3") && view.summary.contains("dc1, dc2, dc3"),
            "{}",
            view.summary
        );
        // The approval message is the TEE's own encoding of exactly these terms.
        let meta = RequestMeta {
            request_id: hex::decode(&view.id).unwrap().try_into().unwrap(),
            expires_at: view.expires_at,
        };
        let clusters = view.clusters.clone().unwrap();
        let expected = Action::CreateThresholdKey {
            quorum: 2,
            threshold: 2,
            hd: true,
            clusters: &clusters,
        }
        .message(THRESHOLD_SCOPE, &meta);
        assert_eq!(view.approval_message, hex::encode(&expected));

        let pending = approve(&s, &view, &[0]).await;
        assert_eq!(pending.status, RequestStatus::PendingApproval);
        assert!(sim.logged("start").is_empty(), "nothing before quorum");
        let done = approve(&s, &view, &[1]).await;
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let Some(RequestResult::ThresholdKey(key)) = &done.result else {
            panic!("no key: {done:?}");
        };
        let session = session_of(&done, 0);
        let (key_id, chain_code) = joint_key(&session, 1);
        assert_eq!(key.key_id, hex::encode(&key_id));
        assert_eq!(done.root_id.as_deref(), Some(key.key_id.as_str()));
        assert_eq!(
            (key.threshold, key.quorum, key.origin.as_str()),
            (2, 2, "dkg")
        );
        let xpub = custos_cloud::service::threshold_xpub(&key_id, &chain_code).unwrap();
        assert_eq!(key.xpub.as_deref(), Some(xpub.to_string().as_str()));
        assert_eq!(
            key.shares
                .iter()
                .map(|s| (s.share_index, s.cluster.as_str(), s.node.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (0, "dc1", "node1"),
                (1, "dc2", "node1"),
                (2, "dc3", "node1")
            ]
        );
        // Every cluster took part, and those computing were polled with empty feeds.
        assert_eq!(distinct_clusters_of(sim.logged("start"), session), CLUSTERS);
        assert_eq!(
            sim.logged("poll").len(),
            3 * COMPUTE_POLLS as usize,
            "{:?}",
            sim.logged("poll")
        );
        assert!(sim.logged("abort").is_empty());
        assert!(done.events.iter().any(|e| e.event == "session"));

        let recorded = c.threshold_key(&key.key_id).await.unwrap();
        assert_eq!(recorded.origin, "dkg");
        assert_eq!(recorded.xpub, key.xpub);
        assert!(recorded.missing_shares.is_empty(), "{recorded:?}");
        assert_eq!(recorded.shares.len(), 3);
        assert_eq!(recorded.created_by_request, done.id);
        assert_eq!(
            c.threshold_keys().await.unwrap().keys.len(),
            1,
            "one key recorded"
        );
        // A key without HD derivation has no xpub; approvals may come with the request.
        let mut plain = body(&["dc2", "dc3"], 2, 1);
        plain.hd = false;
        let id: [u8; 16] = rand::random();
        let meta = RequestMeta {
            request_id: id,
            expires_at: now() + 600,
        };
        let clusters = plain.clusters.clone();
        let message = Action::CreateThresholdKey {
            quorum: 1,
            threshold: 2,
            hd: false,
            clusters: &clusters,
        }
        .message(THRESHOLD_SCOPE, &meta);
        plain.request_id = Some(hex::encode(id));
        plain.expires_at = Some(meta.expires_at);
        plain.approvals = vec![s.pki.approve(2, &message)];
        let done = c.create_threshold_key(&plain).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let Some(RequestResult::ThresholdKey(key)) = &done.result else {
            panic!("no key: {done:?}");
        };
        assert_eq!(key.xpub, None);
        assert_eq!(key.clusters, ["dc2", "dc3"]);
        s.stop().await;
    }
}

#[tokio::test]
async fn failures_name_the_cluster_and_a_retry_makes_the_key() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let c = &s.client;

    // dc2 has no primes ready: the attempt fails (retryable), the others are told to abort.
    sim.misbehave(
        "dc2",
        Misbehave::RefuseStart(TeeError::PrimesNotReady(
            "this TEE started generating safe primes".into(),
        )),
    );
    let view = c
        .create_threshold_key(&body(&CLUSTERS, 2, 1))
        .await
        .unwrap();
    let failed = approve(&s, &view, &[0]).await;
    assert_eq!(failed.status, RequestStatus::Failed, "{failed:?}");
    let e = failed.error.clone().unwrap();
    assert_eq!(e.code, "tee_primes_not_ready");
    assert!(e.message.contains("dc2"), "{}", e.message);
    let first = session_of(&view, 0);
    assert_eq!(
        distinct_clusters_of(sim.logged("abort"), first),
        ["dc1", "dc3"]
    );
    sim.behave();
    let done = c.retry(&view.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(
        distinct_clusters_of(sim.logged("start"), session_of(&view, 1)),
        CLUSTERS
    );

    // A cluster without a healthy node: nothing starts anywhere.
    s.gateway
        .node("dc3", "node1")
        .healthy
        .store(false, Ordering::SeqCst);
    let view = c
        .create_threshold_key(&body(&CLUSTERS, 3, 1))
        .await
        .unwrap();
    let starts = sim.logged("start").len();
    let failed = s
        .client
        .approve(&view.id, &s.pki.approve(0, &message_of(&view)))
        .await;
    assert_eq!(code(failed.unwrap_err()), "cluster_unavailable");
    let stored = c.request(&view.id).await.unwrap();
    assert_eq!(stored.status, RequestStatus::Failed);
    assert!(
        stored
            .error
            .unwrap()
            .message
            .contains("dc3: no healthy node"),
        "names the cluster"
    );
    assert_eq!(sim.logged("start").len(), starts);
    s.gateway
        .node("dc3", "node1")
        .healthy
        .store(true, Ordering::SeqCst);
    let done = c.retry(&view.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

    // Participants reporting different keys: refused, nothing recorded.
    sim.misbehave("dc3", Misbehave::OtherKey);
    let keys_before = c.threshold_keys().await.unwrap().keys.len();
    let view = c
        .create_threshold_key(&body(&CLUSTERS, 2, 1))
        .await
        .unwrap();
    let refused = approve(&s, &view, &[0]).await;
    assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
    let e = refused.error.unwrap();
    assert_eq!(e.code, "threshold_key_mismatch");
    assert!(e.message.contains("dc3"), "{}", e.message);
    assert_eq!(c.threshold_keys().await.unwrap().keys.len(), keys_before);
    assert_eq!(code(c.retry(&view.id).await.unwrap_err()), "not_pending");
    s.stop().await;
}

#[tokio::test]
async fn key_creation_refuses_bad_input_with_stable_codes() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let c = &s.client;
    for bad in [
        "{\"clusters\":",
        "{}",
        "[1]",
        "{\"clusters\":[\"dc1\",\"dc2\"],\"threshold\":2}",
        "{\"clusters\":[\"dc1\",\"dc2\"],\"threshold\":2,\"quorum\":1,\"colour\":1}",
        "{\"clusters\":[\"dc1\",\"dc2\"],\"threshold\":-2,\"quorum\":1}",
        "{\"clusters\":\"dc1,dc2\",\"threshold\":2,\"quorum\":1}",
    ] {
        let (status, v) = s.post("/v1/threshold/keys", bad).await;
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap_or("")),
            (400, "malformed_json"),
            "{bad}"
        );
    }
    let r = s
        .raw()
        .post(s.url("/v1/threshold/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // `hd` defaults to true.
    let (status, v) = s
        .post(
            "/v1/threshold/keys",
            "{\"clusters\":[\"dc1\",\"dc2\"],\"threshold\":2,\"quorum\":1}",
        )
        .await;
    assert_eq!((status, v["hd"].as_bool()), (202, Some(true)), "{v}");

    let many: Vec<String> = (0..65).map(|i| format!("dc{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (b, expected) in [
        (body(&["dc1", "dc9"], 2, 1), "unknown_cluster"),
        (body(&["dc1", "dc2", "dc3"], 4, 1), "invalid_threshold"),
        (body(&["dc1", "dc2", "dc3"], 1, 1), "invalid_threshold"),
        (body(&["dc1", "dc2", "dc3"], 0, 1), "invalid_threshold"),
        (body(&["dc1", "dc2", "dc1"], 2, 1), "invalid_clusters"),
        (body(&["dc1"], 2, 1), "invalid_clusters"),
        (body(&[], 2, 1), "invalid_clusters"),
        (body(&many, 2, 1), "invalid_clusters"),
        (body(&["dc1", "dc2"], 2, 0), "invalid_quorum"),
        (body(&["dc1", "dc2"], 2, 17), "invalid_quorum"),
    ] {
        assert_eq!(
            code(c.create_threshold_key(&b).await.unwrap_err()),
            expected,
            "{b:?}"
        );
    }
    let mut b = body(&CLUSTERS, 2, 1);
    b.request_id = Some("zz".into());
    assert_eq!(
        code(c.create_threshold_key(&b).await.unwrap_err()),
        "invalid_request_id"
    );
    let mut b = body(&CLUSTERS, 2, 1);
    b.expires_at = Some(1);
    assert_eq!(
        code(c.create_threshold_key(&b).await.unwrap_err()),
        "invalid_expiry"
    );
    // An approval of other terms (here: t = 3) does not count for these.
    let mut b = body(&CLUSTERS, 2, 1);
    let id: [u8; 16] = rand::random();
    let meta = RequestMeta {
        request_id: id,
        expires_at: now() + 600,
    };
    let clusters = b.clusters.clone();
    let other_terms = Action::CreateThresholdKey {
        quorum: 1,
        threshold: 3,
        hd: true,
        clusters: &clusters,
    }
    .message(THRESHOLD_SCOPE, &meta);
    b.request_id = Some(hex::encode(id));
    b.expires_at = Some(meta.expires_at);
    b.approvals = vec![s.pki.approve(0, &other_terms)];
    assert_eq!(
        code(c.create_threshold_key(&b).await.unwrap_err()),
        "approval_invalid"
    );
    assert!(sim.logged("start").is_empty());
    s.stop().await;
}

#[tokio::test]
async fn approve_command_shows_the_terms_of_a_key_creation() {
    use custos_cloud_api::review::{describe, list_pending, review_and_approve};
    let Setup { s, sim: _ } = setup(TestDb::sqlite()).await;
    let mut b = body(&["dc3", "dc1", "dc2"], 2, 2);
    b.hd = false;
    let view = s.client.create_threshold_key(&b).await.unwrap();
    let shown = describe(&view);
    assert!(
        shown.contains("create a threshold key by distributed key generation")
            && shown.contains(THRESHOLD_SCOPE)
            && shown.contains("2 of 3")
            && shown.contains("0: dc3, 1: dc1, 2: dc2")
            && shown.contains("no (root key only)")
            && shown.contains("quorum        2"),
        "{shown}"
    );
    let mut out = Vec::new();
    list_pending(&s.client, &mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("create_threshold_key"));
    let approve = |admin: usize| {
        let (client, id) = (&s.client, view.id.clone());
        let signer = &s.pki.admins[admin];
        async move {
            review_and_approve(
                client,
                &id,
                ADMINS[admin],
                signer,
                true,
                &mut &b""[..],
                &mut Vec::new(),
            )
            .await
            .unwrap()
        }
    };
    let after = approve(0).await;
    assert_eq!(after.status, RequestStatus::PendingApproval);
    let done = approve(1).await;
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    s.stop().await;
}

/// A key generation with an approver group names one executing node per cluster when it is
/// recorded (in the view and in the approval message), and every attempt runs on exactly
/// those nodes: a failed attempt's retry never moves a share to another node of its
/// cluster, so it can never make a second key under the same approvals.
#[tokio::test]
async fn a_group_key_generation_runs_on_its_pinned_nodes_on_every_attempt() {
    let Setup { s, sim } = setup(TestDb::sqlite()).await;
    let c = &s.client;
    let group = custos_test_kit::governance::admin_keys(&s.pki, &["alice", "bob"]);
    let mut grouped = body(&CLUSTERS, 2, 2);
    grouped.group = Some(group.iter().map(hex::encode).collect());
    // An earlier creation took dc1's first turn: this one's dc1 executor is the next node.
    c.create_threshold_key(&grouped).await.unwrap();
    let view = c.create_threshold_key(&grouped).await.unwrap();
    let executors: Vec<[u8; 32]> = view
        .executors
        .clone()
        .expect("executors named")
        .iter()
        .map(|e| hex::decode(e).unwrap().try_into().unwrap())
        .collect();
    assert_eq!(executors.len(), CLUSTERS.len());
    let nodes: Vec<String> = view
        .target_node
        .clone()
        .expect("executing nodes named")
        .split(',')
        .map(String::from)
        .collect();
    assert_eq!(nodes[0], "node2", "round-robin over dc1's nodes");
    assert_eq!(
        view.group,
        Some(group.iter().map(hex::encode).collect::<Vec<_>>())
    );
    // No cluster is governed: the key anchors none (co-signers checked by certificate).
    assert_eq!(view.anchors, None);
    // The approval message binds the group and every executor.
    let meta = RequestMeta {
        request_id: hex::decode(&view.id).unwrap().try_into().unwrap(),
        expires_at: view.expires_at,
    };
    let clusters = view.clusters.clone().unwrap();
    // No rules asked: transactions only, raw digests off for the new key.
    let mut policy = custos_cloud_api::approval::new_wallet_policy(group.clone(), 2);
    policy.rules.push(custos_wire::policy::Rule {
        tag: custos_wire::policy::RULE_TRANSACTIONS_ONLY,
        body: vec![],
    });
    let expected = Action::CreateGroupThresholdKey {
        policy: &policy,
        threshold: 2,
        hd: true,
        clusters: &clusters,
        executors: &executors,
    }
    .message(THRESHOLD_SCOPE, &meta);
    assert_eq!(view.approval_message, hex::encode(&expected));
    assert_eq!(message_of(&view), expected);
    assert!(
        custos_cloud_api::review::describe(&view).contains(&hex::encode(executors[0])),
        "the approver is shown the executors"
    );

    // dc2 has no primes ready: the first attempt fails; the retry runs on the same nodes.
    sim.misbehave(
        "dc2",
        Misbehave::RefuseStart(TeeError::PrimesNotReady("generating".into())),
    );
    let failed = approve(&s, &view, &[0, 1]).await;
    assert_eq!(failed.status, RequestStatus::Failed, "{failed:?}");
    sim.behave();
    let done = c.retry(&view.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let Some(RequestResult::ThresholdKey(key)) = &done.result else {
        panic!("no key: {done:?}");
    };
    let made_on: Vec<&str> = key.shares.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(made_on, nodes);

    let starts: Vec<_> = sim
        .group_starts
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.executors == executors)
        .cloned()
        .collect();
    let attempts: std::collections::BTreeSet<u8> = starts.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts.into_iter().collect::<Vec<_>>(), [0, 1]);
    for s in &starts {
        let i = CLUSTERS.iter().position(|c| *c == s.cluster).unwrap();
        assert_eq!(
            s.node, nodes[i],
            "attempt {} of {} moved",
            s.attempt, s.cluster
        );
    }
    s.stop().await;
}
