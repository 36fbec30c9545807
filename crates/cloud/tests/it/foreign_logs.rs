//! Other clusters' governance logs pushed to co-signers before a session (plan step D5):
//! each participant's TEE gets the current log of every other governed cluster of the
//! session once per version (a TEE holding no anchored key refuses it, and is not asked
//! again until the log moves on), and a start refused `foreign_log_missing` has the log
//! pushed to that node and is sent once more.
//!
//! The key generations are the scripted ones of `dkg.rs`; in front of them, each cluster's
//! TEEs keep the cluster's log (applied through the API, verified like a TEE verifies it)
//! and note every log of another cluster they are sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use custos_cloud_api::*;
use custos_pki::TrustRoot;
use custos_test_kit::*;
use custos_wire::governance::{verify_log, GovEntry};
use custos_wire::protocol::{GovView, Outcome, Request, Response, TeeError};

use crate::dkg::{approve, body, Sim};
use crate::scripted::{self, CLUSTERS};

/// One `ApplyGovernance` of another cluster's log, as a TEE received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Push {
    /// The receiving node's cluster and name.
    cluster: String,
    node: String,
    /// Whose log, and the versions of the first and last entries sent.
    log: String,
    first: u64,
    last: u64,
}

/// A node that refuses key generation starts `foreign_log_missing` until `log` (of genesis
/// `genesis_id`) is pushed to it.
#[derive(Clone)]
struct Missing {
    cluster: String,
    node: String,
    log: String,
    genesis_id: [u8; 32],
}

/// The governance side of every scripted TEE.
struct Govs {
    root: TrustRoot,
    /// Each governed cluster's log, as its TEEs hold it.
    logs: Mutex<HashMap<String, Vec<GovEntry>>>,
    pushes: Mutex<Vec<Push>>,
    /// Whether the TEEs hold a key anchored at other clusters (else they refuse others'
    /// logs, as a TEE holding only keys without anchors does).
    anchored: AtomicBool,
    missing: Mutex<Option<Missing>>,
    /// (cluster, node) of each start refused `foreign_log_missing`.
    refused: Mutex<Vec<(String, String)>>,
}

impl Govs {
    fn handle(
        &self,
        keygen: &Script,
        cluster: &str,
        node: &str,
        chain: &custos_wire::protocol::CertChain,
        request: Request,
    ) -> Outcome {
        let view = |log: &str, entries: &[GovEntry], since: usize| {
            let state = verify_log(&self.root, log, None, entries)
                .map_err(|e| TeeError::GovernanceRejected(e.to_string()))?;
            Ok(Response::Governance(GovView::of(
                &state,
                entries[since.min(entries.len())..].to_vec(),
            )))
        };
        match request {
            Request::Governance { cluster: c, since } => {
                let logs = self.logs.lock().unwrap();
                match logs.get(&c) {
                    Some(entries) if c == cluster => view(&c, entries, since as usize),
                    _ => Err(TeeError::NotGoverned),
                }
            }
            // This cluster's own log, extended through the API.
            Request::ApplyGovernance {
                cluster: c,
                entries,
            } if c == cluster => {
                let mut logs = self.logs.lock().unwrap();
                let log = logs.entry(c.clone()).or_default();
                for e in entries {
                    if e.version as usize == log.len() {
                        log.push(e);
                    }
                }
                view(&c, log, usize::MAX)
            }
            Request::ApplyGovernance {
                cluster: c,
                entries,
            } => {
                self.pushes.lock().unwrap().push(Push {
                    cluster: cluster.into(),
                    node: node.into(),
                    log: c.clone(),
                    first: entries.first().map_or(0, |e| e.version),
                    last: entries.last().map_or(0, |e| e.version),
                });
                let mut missing = self.missing.lock().unwrap();
                if missing
                    .as_ref()
                    .is_some_and(|m| m.cluster == cluster && m.node == node && m.log == c)
                {
                    *missing = None;
                }
                if !self.anchored.load(Ordering::SeqCst) {
                    return Err(TeeError::GovernanceRejected(format!(
                        "no held key anchors cluster {c:?}"
                    )));
                }
                view(&c, &entries, usize::MAX)
            }
            Request::ThresholdGroupKeygenStart { .. }
                if self
                    .missing
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|m| m.cluster == cluster && m.node == node) =>
            {
                let Missing {
                    log, genesis_id, ..
                } = self.missing.lock().unwrap().clone().unwrap();
                self.refused
                    .lock()
                    .unwrap()
                    .push((cluster.into(), node.into()));
                Err(TeeError::ForeignLogMissing {
                    cluster: log,
                    genesis_id,
                })
            }
            other => keygen(cluster, node, chain, other),
        }
    }

    /// The pushes received so far, sorted, and forgotten.
    fn take_pushes(&self) -> Vec<Push> {
        let mut v = std::mem::take(&mut *self.pushes.lock().unwrap());
        v.sort();
        v
    }
}

fn fp(s: &TestServer, name: &str) -> String {
    hex::encode(s.pki.admin(name).key_fingerprint())
}

/// Approves a governance request by alice and bob (the governors, both needed at first).
async fn approved(s: &TestServer, view: RequestView) {
    let message = message_of(&view);
    s.client
        .approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let done = s
        .client
        .approve(&view.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
}

/// Starts `cluster`'s log with governors alice and bob and `members`.
async fn govern(s: &TestServer, cluster: &str, members: &[&str]) {
    let genesis = GenesisBody {
        governors: vec![fp(s, "alice"), fp(s, "bob")],
        quorum: 2,
        members: members.iter().map(|m| m.to_string()).collect(),
        measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
            allow_software: true,
            ..Default::default()
        }),
        request_id: None,
        expires_at: None,
    };
    let view = s.client.propose_genesis(cluster, &genesis).await.unwrap();
    approved(s, view).await;
}

/// A group key generation over dc1, dc2 and dc3, approved and completed; the nodes that
/// made it, by share.
async fn make_key(s: &TestServer) -> Vec<String> {
    let mut b = body(&CLUSTERS, 2, 1);
    b.group = Some(vec![fp(s, "alice")]);
    let view = s.client.create_threshold_key(&b).await.unwrap();
    let done = approve(s, &view, &[0]).await;
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    view.target_node
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

fn push(cluster: &str, node: &str, log: &str, last: u64) -> Push {
    Push {
        cluster: cluster.into(),
        node: node.into(),
        log: log.into(),
        first: 0,
        last,
    }
}

#[tokio::test]
async fn logs_are_pushed_once_per_node_and_version_and_after_foreign_log_missing() {
    let sim = Sim::new();
    let keygen = sim.script();
    let pki_root: Arc<Mutex<Option<Arc<Govs>>>> = Arc::default();
    let slot = pki_root.clone();
    let script: Script = Arc::new(move |cluster, node, chain, request| {
        let govs = slot.lock().unwrap().clone().expect("governance side set");
        govs.handle(&keygen, cluster, node, chain, request)
    });
    let s = scripted::server(TestDb::sqlite(), script).await;
    let govs = Arc::new(Govs {
        root: s.pki.root.clone(),
        logs: Mutex::default(),
        pushes: Mutex::default(),
        anchored: AtomicBool::new(false),
        missing: Mutex::default(),
        refused: Mutex::default(),
    });
    *pki_root.lock().unwrap() = Some(govs.clone());

    // dc1 and dc2 governed, dc3 not: the key anchors nothing (dc3 has no log to anchor).
    govern(&s, "dc1", &["node1", "node2"]).await;
    govern(&s, "dc2", &["node1"]).await;
    assert!(govs.take_pushes().is_empty(), "no session yet");

    // First key: every participant gets the other governed clusters' logs (version 0),
    // never dc3's (ungoverned) nor its own; TEEs without anchored keys refuse them.
    let nodes = make_key(&s).await;
    assert_eq!(nodes[0], "node1");
    assert_eq!(
        govs.take_pushes(),
        [
            push("dc1", "node1", "dc2", 0),
            push("dc2", "node1", "dc1", 0),
            push("dc3", "node1", "dc1", 0),
            push("dc3", "node1", "dc2", 0),
        ]
    );

    // Second key: only dc1's other node (its turn now) is new; the rest were pushed this
    // version already (refused or not).
    let nodes = make_key(&s).await;
    assert_eq!(nodes[0], "node2");
    assert_eq!(govs.take_pushes(), [push("dc1", "node2", "dc2", 0)]);

    // dc1's log moves on (version 1): its log goes again to every other participant.
    let change = s
        .client
        .set_governors(
            "dc1",
            &GovernorsBody {
                governors: vec![fp(&s, "alice"), fp(&s, "bob")],
                quorum: 1,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    approved(&s, change).await;
    make_key(&s).await;
    assert_eq!(
        govs.take_pushes(),
        [
            push("dc2", "node1", "dc1", 1),
            push("dc3", "node1", "dc1", 1)
        ]
    );
    make_key(&s).await;
    assert!(govs.take_pushes().is_empty(), "nothing new to push");

    // dc2's node names dc1's log missing at the start (say it got an anchored key by
    // sync): the log is pushed to it at once, whatever was pushed before, and the start is
    // sent once more; the key is made.
    let genesis: [u8; 32] = hex::decode(s.client.members("dc1").await.unwrap().genesis_id)
        .unwrap()
        .try_into()
        .unwrap();
    govs.anchored.store(true, Ordering::SeqCst);
    *govs.missing.lock().unwrap() = Some(Missing {
        cluster: "dc2".into(),
        node: "node1".into(),
        log: "dc1".into(),
        genesis_id: genesis,
    });
    let before = sim.group_starts.lock().unwrap().len();
    make_key(&s).await;
    assert_eq!(
        *govs.refused.lock().unwrap(),
        [("dc2".to_string(), "node1".to_string())]
    );
    assert_eq!(govs.take_pushes(), [push("dc2", "node1", "dc1", 1)]);
    let starts: Vec<(String, String)> = sim.group_starts.lock().unwrap()[before..]
        .iter()
        .map(|g| (g.cluster.clone(), g.node.clone()))
        .collect();
    assert_eq!(
        starts.len(),
        3,
        "the refused start never reached the key generation"
    );
    assert!(starts.contains(&("dc2".to_string(), "node1".to_string())));
    s.stop().await;
}
