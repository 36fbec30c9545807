//! A threshold key's approver group changed through the API (issue 12, item 3): one approval
//! by a quorum of the group in force, valid for every cluster (scope `*threshold*`), sent to
//! each cluster of the key; the key's quorum cannot change and its cluster anchors are carried
//! over unchanged. Attacks first: a change to another quorum, an admin outside the group in
//! force, a proposal overtaken by another change.
//!
//! The key is made by the scripted key generation of `dkg.rs`. In front of it each cluster's
//! stand-in TEE holds the key's policy with its share and checks a change as the TEE core
//! does (`policy_requests.rs`, tested there against real cores): the approval message of
//! scope `*threshold*`, signatures verified against the Root and counted only for the group
//! in force, the policy replaced (`prev`), the next version, the key's quorum, and a replay
//! of the applied change answered with the policy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use custos_cloud_api::*;
use custos_pki::TrustRoot;
use custos_test_kit::governance::admin_keys;
use custos_test_kit::*;
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::policy::{KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};
use custos_wire::protocol::{CertChain, Outcome, Request, Response, TeeError};

use crate::dkg::{approve, body, Sim};
use crate::groups::{mallory, not_in_group};
use crate::scripted::{self, CLUSTERS};

/// The policy side of every scripted TEE: the key's policy as each cluster holds it (both
/// nodes of a cluster alike, as the bridge's fan-out leaves them).
struct Policies {
    root: TrustRoot,
    held: Mutex<HashMap<String, KeyPolicy>>,
    /// (cluster, request id) of each change applied.
    used: Mutex<HashSet<(String, [u8; 16])>>,
}

impl Policies {
    fn handle(
        &self,
        keygen: &Script,
        cluster: &str,
        node: &str,
        chain: &CertChain,
        request: Request,
    ) -> Outcome {
        let answer = |key_id: Vec<u8>, policy: KeyPolicy| {
            Ok(Response::KeyPolicy {
                key_id,
                hash: policy.hash(),
                policy,
            })
        };
        let held = || {
            self.held
                .lock()
                .unwrap()
                .get(cluster)
                .cloned()
                .ok_or_else(|| TeeError::UnknownKey("no share here".into()))
        };
        match request {
            Request::GetKeyPolicy { key_id } => answer(key_id, held()?),
            Request::SetKeyPolicy {
                meta,
                key_id,
                prev,
                policy,
                approvals,
            } => {
                let current = held()?;
                if self
                    .used
                    .lock()
                    .unwrap()
                    .contains(&(cluster.to_string(), meta.request_id))
                {
                    return if current == policy {
                        answer(key_id, current)
                    } else {
                        Err(TeeError::RequestReplayed("another change".into()))
                    };
                }
                if policy.quorum != current.quorum {
                    return Err(TeeError::PolicyRejected(format!(
                        "quorum {}: a threshold key's quorum is part of the key ({})",
                        policy.quorum, current.quorum
                    )));
                }
                policy
                    .validate()
                    .map_err(|e| TeeError::PolicyRejected(e.to_string()))?;
                if prev != current.hash() {
                    return Err(TeeError::PolicyConflict {
                        key: hex::encode(&key_id),
                        expected: current.hash(),
                        found: prev,
                    });
                }
                if current.version + 1 != policy.version {
                    return Err(TeeError::PolicyRejected("version".into()));
                }
                // One message for every cluster of the key.
                let message = Action::SetKeyPolicy {
                    key_id: &key_id,
                    prev: &prev,
                    policy: &policy,
                }
                .message(THRESHOLD_SCOPE, &meta);
                let mut counted = HashSet::new();
                for (i, a) in approvals.iter().enumerate() {
                    let admin = self
                        .root
                        .verify_admin_signature(
                            &a.admin_cert,
                            &a.admin_ca,
                            now(),
                            &message,
                            &a.signature,
                        )
                        .map_err(|e| TeeError::InvalidRequest(format!("approval {i}: {e}")))?;
                    if !current.group.contains(&admin.key) {
                        return Err(TeeError::ApproverNotInGroup {
                            index: i as u32,
                            admin: admin.name,
                            key_fingerprint: admin.key,
                        });
                    }
                    counted.insert(admin.key);
                }
                if counted.len() < usize::from(current.quorum) {
                    return Err(TeeError::QuorumNotMet {
                        required: current.quorum,
                        approved: counted.len() as u8,
                    });
                }
                self.used
                    .lock()
                    .unwrap()
                    .insert((cluster.to_string(), meta.request_id));
                self.held
                    .lock()
                    .unwrap()
                    .insert(cluster.to_string(), policy.clone());
                answer(key_id, policy)
            }
            other => keygen(cluster, node, chain, other),
        }
    }
}

/// Fake genesis ids of the three clusters' logs, by share.
const ANCHORS: [[u8; 32]; 3] = [[0xa1; 32], [0xa2; 32], [0xa3; 32]];

fn anchored(s: &TestServer, version: u32, names: &[&str], quorum: u8) -> KeyPolicy {
    let mut group = admin_keys(&s.pki, names);
    group.sort();
    KeyPolicy {
        version,
        group,
        quorum,
        rules: vec![Rule {
            tag: RULE_CLUSTER_ANCHORS,
            body: ANCHORS.concat(),
        }],
    }
}

/// A server of scripted TEEs, and a 2-of-3 key over dc1, dc2 and dc3 made with group alice
/// and bob, quorum 2, whose shares hold that group with cluster anchors (version 1).
async fn setup() -> (TestServer, Arc<Policies>, String) {
    let sim = Sim::new();
    let keygen = sim.script();
    let slot: Arc<Mutex<Option<Arc<Policies>>>> = Arc::default();
    let side = slot.clone();
    let script: Script = Arc::new(move |cluster, node, chain, request| {
        let policies = side.lock().unwrap().clone().expect("policy side set");
        policies.handle(&keygen, cluster, node, chain, request)
    });
    let s = scripted::server(TestDb::sqlite(), script).await;
    let policies = Arc::new(Policies {
        root: s.pki.root.clone(),
        held: Mutex::default(),
        used: Mutex::default(),
    });
    *slot.lock().unwrap() = Some(policies.clone());
    let mut b = body(&CLUSTERS, 2, 2);
    b.group = Some(s.group_of(2));
    let view = s.client.create_threshold_key(&b).await.unwrap();
    let done = approve(&s, &view, &[0, 1]).await;
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let Some(RequestResult::ThresholdKey(key)) = done.result else {
        panic!("{done:?}")
    };
    for c in CLUSTERS {
        let v1 = anchored(&s, 1, &["alice", "bob"], 2);
        policies.held.lock().unwrap().insert(c.to_string(), v1);
    }
    (s, policies, key.key_id)
}

fn keys_body(s: &TestServer, names: &[&str], quorum: u8) -> KeyPolicyBody {
    KeyPolicyBody {
        rules: None,
        group: admin_keys(&s.pki, names).iter().map(hex::encode).collect(),
        quorum,
        request_id: None,
        expires_at: None,
    }
}

fn held(p: &Policies) -> Vec<KeyPolicy> {
    let held = p.held.lock().unwrap();
    CLUSTERS.iter().map(|c| held[*c].clone()).collect()
}

#[tokio::test]
async fn a_threshold_keys_group_changes_on_every_cluster_under_one_approval() {
    let (s, policies, key_id) = setup().await;
    let c = &s.client;
    let v1 = anchored(&s, 1, &["alice", "bob"], 2);
    let shown = c.threshold_key_policy(&key_id).await.unwrap();
    assert_eq!(
        (shown.version, shown.quorum, &shown.hash),
        (1, 2, &hex::encode(v1.hash()))
    );
    assert_eq!(
        shown.anchors,
        Some(ANCHORS.iter().map(hex::encode).collect())
    );
    assert_eq!(shown.node, "node1");

    // The key's quorum is part of the key: another is refused before anything is recorded,
    // naming why.
    let e = c
        .set_threshold_key_policy(&key_id, &keys_body(&s, &["bob", "carol"], 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("part of the key"), "{e}");
    assert_eq!(code(e), "invalid_quorum");
    let e = c
        .set_threshold_key_policy(&key_id, &keys_body(&s, &["alice", "bob"], 2))
        .await
        .unwrap_err();
    assert_eq!(code(e), "invalid_group");
    let listed = c.requests(&RequestQuery::default()).await.unwrap();
    assert!(
        listed
            .requests
            .iter()
            .all(|r| r.kind != RequestKind::SetKeyPolicy),
        "a refused proposal was recorded"
    );

    // Carol replaces alice: one request for every cluster, its message of scope
    // `*threshold*`, the anchors in both policies.
    let change = c
        .set_threshold_key_policy(&key_id, &keys_body(&s, &["bob", "carol"], 2))
        .await
        .unwrap();
    let stale = c
        .set_threshold_key_policy(&key_id, &keys_body(&s, &["alice", "carol"], 2))
        .await
        .unwrap();
    assert_eq!(
        (change.kind, change.cluster.as_str(), change.quorum),
        (RequestKind::SetKeyPolicy, THRESHOLD_SCOPE, 2)
    );
    assert_eq!(change.clusters, Some(CLUSTERS.map(String::from).to_vec()));
    assert_eq!(
        change.anchors,
        Some(ANCHORS.iter().map(hex::encode).collect())
    );
    let v2 = anchored(&s, 2, &["bob", "carol"], 2);
    let meta = custos_wire::protocol::RequestMeta {
        request_id: hex::decode(&change.id).unwrap().try_into().unwrap(),
        expires_at: change.expires_at,
    };
    let key = hex::decode(&key_id).unwrap();
    let expected = Action::SetKeyPolicy {
        key_id: &key,
        prev: &v1.hash(),
        policy: &v2,
    }
    .message(THRESHOLD_SCOPE, &meta);
    // `message_of` recomputes it from the view as `custos approve` does, and compares.
    let message = message_of(&change);
    assert_eq!(message, expected);
    let described = review::describe(&change);
    for needle in [
        "change the approvers of threshold key",
        "every cluster of the key",
        "dc1, dc2, dc3",
    ] {
        assert!(described.contains(needle), "{described} lacks {needle}");
    }

    // Outsiders of the group in force count for nothing: mallory (a genuine admin) and
    // carol (only in the new group) are refused by name, nothing recorded.
    let mallory = mallory(&s);
    for admin in [&mallory, &s.pki.admins[2]] {
        let approval = approval::sign_approval(admin, &message).unwrap();
        not_in_group(c.approve(&change.id, &approval).await.unwrap_err(), admin);
    }
    assert!(c.request(&change.id).await.unwrap().approvals.is_empty());

    // Alice and bob approve once; every cluster applies it.
    let done = approve(&s, &change, &[0, 1]).await;
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let Some(RequestResult::KeyPolicy(result)) = &done.result else {
        panic!("{done:?}")
    };
    assert_eq!((result.version, &result.hash), (2, &hex::encode(v2.hash())));
    assert_eq!(held(&policies), vec![v2.clone(); 3]);
    let sent: Vec<String> = s
        .gateway
        .executed("SetKeyPolicy")
        .into_iter()
        .map(|c| c.cluster)
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    for c in CLUSTERS {
        assert!(sent.iter().any(|s| s == c), "{c} was not sent the change");
    }
    let after = c.threshold_key_policy(&key_id).await.unwrap();
    assert_eq!((after.version, after.hash), (2, hex::encode(v2.hash())));
    // The key's recorded quorum is unchanged.
    assert_eq!(c.threshold_key(&key_id).await.unwrap().quorum, 2);

    // The other proposal, made against version 1, is refused by the TEEs when approved.
    let refused = approve(&s, &stale, &[0, 1]).await;
    assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
    let error = refused.error.unwrap();
    assert_eq!(error.code, "tee_policy_conflict");
    assert!(error.message.contains("cluster dc1"), "{}", error.message);
    assert_eq!(held(&policies), vec![v2; 3]);
    s.stop().await;
}

/// A cluster that cannot be reached leaves the change failed, naming it; the clusters that
/// applied it answer the retry with the policy, and the retry completes it.
#[tokio::test]
async fn an_unreachable_cluster_leaves_the_change_failed_and_a_retry_completes_it() {
    let (s, policies, key_id) = setup().await;
    let c = &s.client;
    let change = c
        .set_threshold_key_policy(&key_id, &keys_body(&s, &["bob", "carol"], 2))
        .await
        .unwrap();
    s.gateway
        .fail_ops
        .lock()
        .unwrap()
        .push(("dc3".into(), "submit:SetKeyPolicy".into()));
    let message = message_of(&change);
    c.approve(&change.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    // The caller waiting for the submission hears why it did not complete.
    let e = c
        .approve(&change.id, &s.pki.approve(1, &message))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cluster dc3"), "{e}");
    assert_eq!(code(e), "cluster_unavailable");
    let failed = c.request(&change.id).await.unwrap();
    assert_eq!(failed.status, RequestStatus::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert_eq!(error.code, "cluster_unavailable");
    assert!(
        error.message.contains("cluster dc3") && error.message.contains("applied on dc1, dc2"),
        "{}",
        error.message
    );
    let v2 = anchored(&s, 2, &["bob", "carol"], 2);
    let v1 = anchored(&s, 1, &["alice", "bob"], 2);
    assert_eq!(held(&policies), vec![v2.clone(), v2.clone(), v1]);

    s.gateway.fail_ops.lock().unwrap().clear();
    let done = c.retry(&change.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(held(&policies), vec![v2; 3]);
    s.stop().await;
}

/// The routes refuse a malformed or unknown key, and another tenant's key is unknown.
#[tokio::test]
async fn the_threshold_policy_routes_refuse_bad_keys() {
    let (s, _, key_id) = setup().await;
    let c = &s.client;
    for bad in ["zz", "04"] {
        let id = format!("{bad}{}", "11".repeat(32));
        assert_eq!(
            code(c.threshold_key_policy(&id).await.unwrap_err()),
            "invalid_key_id"
        );
    }
    let unknown = format!("02{}", "11".repeat(32));
    assert_eq!(
        code(c.threshold_key_policy(&unknown).await.unwrap_err()),
        "unknown_threshold_key"
    );
    assert_eq!(
        code(
            c.set_threshold_key_policy(&unknown, &keys_body(&s, &["bob"], 1))
                .await
                .unwrap_err()
        ),
        "unknown_threshold_key"
    );
    let other = s.client_as("other");
    assert_eq!(
        code(other.threshold_key_policy(&key_id).await.unwrap_err()),
        "unknown_threshold_key"
    );
    s.stop().await;
}
