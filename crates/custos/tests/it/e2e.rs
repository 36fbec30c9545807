//! End to end through real processes and the REST API (patent FIG. 1 and 16): cloud server →
//! external relay → link (TCP or spool) → bridge → vault node → TEE core process.
//!
//! Signatures are verified with an independent verifier (RustCrypto k256) against the
//! public key derived from the wallet's xpub; a request without quorum stays pending and
//! never reaches a TEE; a digest changed behind the approvers' backs is refused by the TEE;
//! the audit finds a key removed from one node and sync repairs it.

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::*;
use bitcoin::bip32::{DerivationPath, Xpub};
use custos::cluster::LinkTransport;
use custos::deployment::{approve, Deployment, DeploymentOptions};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{
    CreateWalletBody, ImportWalletBody, RequestResult, RequestStatus, RequestView, SecretText,
    SignRequestBody, SignResult,
};
use custos_pki::AdminSigner;
use custos_wire::protocol::EcdsaSignature;

fn deploy(dir: &std::path::Path, transport: LinkTransport, nodes: usize) -> Deployment {
    Deployment::start(
        &exe(),
        dir,
        &DeploymentOptions {
            clusters: vec![(CLUSTER.into(), transport)],
            nodes,
            admins: vec!["alice".into(), "bob".into()],
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap()
}

/// A wallet approved, created and used by all of `signers` (its group).
async fn create_wallet(client: &CloudClient, signers: &[&AdminSigner]) -> (String, String) {
    let mut view = client
        .create_wallet(&CreateWalletBody {
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            cluster: CLUSTER.into(),
            quorum: signers.len() as u8,
            group: signers
                .iter()
                .map(|s| hex::encode(s.key_fingerprint()))
                .collect(),
            executor: None,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap();
    for s in signers {
        view = approve(client, s, &view.id).await.unwrap();
    }
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    match view.result {
        Some(RequestResult::Wallet(w)) => (w.root_id, w.xpub),
        other => panic!("no wallet: {other:?}"),
    }
}

async fn sign_request(
    client: &CloudClient,
    root_id: &str,
    path: &str,
    digest: [u8; 32],
) -> RequestView {
    client
        .sign(&SignRequestBody {
            root_id: root_id.into(),
            path: path.into(),
            digest: hex::encode(digest),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap()
}

fn signature(view: &RequestView) -> SignResult {
    match &view.result {
        Some(RequestResult::Signature(s)) => s.clone(),
        other => panic!(
            "request {} has no signature: {other:?} {:?}",
            view.id, view.error
        ),
    }
}

/// Checks `sig` over `digest` with k256 against the child of `xpub` at `path`.
pub(crate) fn verify_against_xpub(sig: &SignResult, digest: &[u8; 32], xpub: &str, path: &str) {
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let child = Xpub::from_str(xpub)
        .unwrap()
        .derive_pub(&secp, &DerivationPath::from_str(path).unwrap())
        .unwrap()
        .public_key
        .serialize();
    let sig = EcdsaSignature {
        r: hex::decode(&sig.r).unwrap().try_into().unwrap(),
        s: hex::decode(&sig.s).unwrap().try_into().unwrap(),
        v: sig.v,
        public_key: hex::decode(&sig.public_key).unwrap(),
    };
    verify_independently(&sig, digest, &child);
}

/// History entries of the bridge that mention request `id` (hex).
async fn bridge_history_of(dep: &Deployment, id: &str) -> Vec<custos_metadata::Entry> {
    let db = custos_metadata::MetadataDb::connect(&dep.clusters[0].db_url)
        .await
        .unwrap();
    db.history(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.request_id.as_deref() == Some(id))
        .collect()
}

fn rest_flows(transport: LinkTransport) {
    let tmp = tempfile::tempdir().unwrap();
    let dep = deploy(tmp.path(), transport, 2);
    let alice = dep.admin("alice").unwrap();
    let bob = dep.admin("bob").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bridge_metrics = &dep.clusters[0].bridge_metrics_url;
    let before = crate::metrics::metrics_at(&dep.metrics_url);
    let bridge_before = crate::metrics::metrics_at(bridge_metrics);
    let relay_metrics = &dep.clusters[0].relay.as_ref().unwrap().metrics_url;
    let relay_before = crate::metrics::metrics_at(relay_metrics);
    let node_calls = |dep: &Deployment| -> Option<f64> {
        let answered = r#"custos_node_tee_calls_total{"outcome": "answered"}"#;
        dep.clusters[0]
            .nodes
            .iter()
            .map(|n| {
                crate::metrics::metrics_at(&n.metrics_url)
                    .map(|m| crate::metrics::sample(&m, answered))
            })
            .sum()
    };
    let nodes_before = node_calls(&dep);
    let mut signed_id = String::new();
    rt.block_on(async {
        let (root_id, xpub) = create_wallet(&client, &[&alice, &bob]).await;

        // Quorum 2: signed only after the second approval, verified independently.
        let digest = [0x5au8; 32];
        let view = sign_request(&client, &root_id, "m/0/3", digest).await;
        assert_eq!(view.status, RequestStatus::PendingApproval);
        let view = approve(&client, &alice, &view.id).await.unwrap();
        assert_eq!(view.status, RequestStatus::PendingApproval);
        let view = approve(&client, &bob, &view.id).await.unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
        verify_against_xpub(&signature(&view), &digest, &xpub, "m/0/3");
        let fetched = client.request(&view.id).await.unwrap();
        assert_eq!(fetched.result, view.result);
        signed_id = view.id.clone();

        // Without quorum: stays pending, never reaches the cluster (nothing in the
        // bridge's history under its id), and is not signed.
        let lonely = sign_request(&client, &root_id, "m/0/4", [0x11; 32]).await;
        let lonely = approve(&client, &alice, &lonely.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lonely = client.request(&lonely.id).await.unwrap();
        assert_eq!(lonely.status, RequestStatus::PendingApproval);
        assert!(lonely.result.is_none() && lonely.attempts == 0, "{lonely:?}");
        assert!(bridge_history_of(&dep, &lonely.id).await.is_empty());
        assert!(!bridge_history_of(&dep, &view.id).await.is_empty());

        // Import from a raw seed (BIP-32 test vector 1), sealed to one node's device key.
        let view = client
            .import_wallet(&ImportWalletBody {
                cluster: CLUSTER.into(),
                quorum: 1,
                mnemonic: None,
                passphrase: None,
                seed_hex: Some(SecretText::new("000102030405060708090a0b0c0d0e0f")),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
                group: None,
                rules: None,
            })
            .await
            .unwrap();
        let view = approve(&client, &alice, &view.id).await.unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
        match &view.result {
            Some(RequestResult::Wallet(w)) => assert_eq!(
                w.xpub,
                "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"
            ),
            other => panic!("{other:?}"),
        }
    });
    // One id follows the signature through every service's JSON log (issue 16).
    let cluster_logs = dep.clusters[0].dir.join("logs");
    let logged = |log: &std::path::Path, message: &str| {
        crate::logs::lines_naming(log, &signed_id)
            .iter()
            .any(|l| l["message"] == message)
    };
    assert!(logged(&dep.dir.join("logs/cloud.log"), "request created"));
    assert!(logged(&dep.dir.join("logs/cloud.log"), "request completed"));
    assert!(logged(
        &cluster_logs.join("relay.log"),
        "forwarded over the link"
    ));
    let routed = crate::logs::lines_naming(&cluster_logs.join("bridge.log"), &signed_id);
    assert!(
        routed.iter().any(|l| l["message"] == "request routed"
            && l["kind"] == "sign"
            && l["outcome"] == "ok"),
        "{routed:?}"
    );
    let served_by = routed
        .iter()
        .find_map(|l| l["node"].as_str().filter(|n| !n.is_empty()))
        .expect("the bridge names the node");
    assert!(logged(
        &cluster_logs.join(format!("{served_by}.log")),
        "TEE call"
    ));

    // The request without its second approval waits: the open-requests gauge shows it once
    // the server has counted (every 5 s).
    if crate::metrics::metrics_at(&dep.metrics_url).is_some() {
        let pending = r#"custos_cloud_requests_open{"status": "pending_approval"}"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = crate::metrics::metrics_at(&dep.metrics_url).unwrap();
            if crate::metrics::sample(&now, pending) >= 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{now:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    // The cloud server's metrics moved as the flows ran (issue 16).
    if let (Some(before), Some(after)) = (bridge_before, crate::metrics::metrics_at(bridge_metrics))
    {
        use crate::metrics::sample;
        let moved = |s: &str| sample(&after, s) - sample(&before, s);
        let routed = r#"custos_bridge_requests_total{"kind": "sign", "outcome": "ok"}"#;
        assert_eq!(moved(routed), 1.0, "{after:?}");
        let submits = r#"custos_bridge_link_requests_total{"op": "submit", "outcome": "answered"}"#;
        assert!(moved(submits) >= 3.0, "{after:?}");
    }
    if let (Some(before), Some(after)) = (relay_before, crate::metrics::metrics_at(relay_metrics)) {
        let moved =
            |s: &str| crate::metrics::sample(&after, s) - crate::metrics::sample(&before, s);
        assert!(
            moved(r#"custos_relay_forwards_total{"outcome": "ok"}"#) >= 3.0,
            "{after:?}"
        );
        assert!(
            moved("custos_relay_forwards_seconds_count{}") >= 3.0,
            "{after:?}"
        );
        // Every forward has its answer: nothing waits on the link; retries are exported.
        assert_eq!(
            after.get("custos_relay_link_in_flight{}"),
            Some(&0.0),
            "{after:?}"
        );
        assert!(
            after.contains_key("custos_relay_link_retries_total{}"),
            "{after:?}"
        );
    }
    if let (Some(before), Some(after)) = (nodes_before, node_calls(&dep)) {
        // The creation, the signature and the import, besides the bridge's health checks.
        assert!(after - before >= 3.0, "{before} -> {after}");
    }
    if let (Some(before), Some(after)) = (before, crate::metrics::metrics_at(&dep.metrics_url)) {
        use crate::metrics::sample;
        let moved = |s: &str| sample(&after, s) - sample(&before, s);
        assert_eq!(
            moved(r#"custos_cloud_requests_created_total{"kind": "sign"}"#),
            2.0,
            "{after:?}"
        );
        let signed = r#"custos_cloud_requests_ended_total{"kind": "sign", "status": "completed"}"#;
        assert_eq!(moved(signed), 1.0, "{after:?}");
        let calls = format!(
            r#"custos_cloud_tee_calls_total{{"cluster": "{CLUSTER}", "outcome": "answered"}}"#
        );
        assert_eq!(
            moved(&calls),
            3.0,
            "a creation, a signature, an import: {after:?}"
        );
        assert_eq!(
            moved(r#"custos_cloud_request_seconds_count{"kind": "sign"}"#),
            1.0,
            "{after:?}"
        );
    }
}

#[test]
fn rest_flows_over_the_tcp_link() {
    rest_flows(LinkTransport::Tcp);
}

#[test]
fn rest_flows_over_the_spool_link() {
    rest_flows(LinkTransport::Spool);
}

#[test]
fn a_digest_changed_after_approval_is_refused_by_the_tee() {
    let tmp = tempfile::tempdir().unwrap();
    let dep = deploy(tmp.path(), LinkTransport::Tcp, 1);
    let alice = dep.admin("alice").unwrap();
    let bob = dep.admin("bob").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (root_id, _) = create_wallet(&client, &[&alice, &bob]).await;
        let view = sign_request(&client, &root_id, "m/0/1", [0x01; 32]).await;
        approve(&client, &alice, &view.id).await.unwrap();
        // Someone with write access to the cloud server's database swaps the digest after
        // alice approved; bob is then shown (and approves) the swapped request.
        let db = tmp.path().join("cloud.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let swapped = hex::encode([0x66u8; 32]);
        let n = sqlx::query("UPDATE requests SET terms = REPLACE(terms, ?, ?) WHERE id = ?")
            .bind(hex::encode([0x01u8; 32]))
            .bind(&swapped)
            .bind(&view.id)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1);
        let end = approve(&client, &bob, &view.id).await.unwrap();
        assert_eq!(end.status, RequestStatus::Refused, "{end:?}");
        assert!(end.result.is_none());
        let code = end
            .error
            .as_ref()
            .map(|e| e.code.clone())
            .unwrap_or_default();
        assert!(
            code.starts_with("tee_"),
            "refusal must come from the TEE: {end:?}"
        );
        // The bridge logged the TEE's refusal.
        let history = bridge_history_of(&dep, &view.id).await;
        assert!(
            history
                .iter()
                .any(|e| e.outcome != "ok" && e.outcome != "received"),
            "{history:?}"
        );
    });
}

#[test]
fn audit_through_the_cloud_finds_a_removed_key_and_sync_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = deploy(tmp.path(), LinkTransport::Tcp, 2);
    let alice = dep.admin("alice").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut roots = Vec::new();
    for _ in 0..2 {
        roots.push(rt.block_on(create_wallet(&client, &[&alice])).0);
    }
    dep.clusters[0]
        .wait_synced(2, Duration::from_secs(60))
        .unwrap();
    let clean = rt.block_on(client.run_audit(CLUSTER)).unwrap();
    assert!(
        clean
            .nodes
            .iter()
            .all(|n| n.ok == 2 && n.missing.is_empty()),
        "{clean:?}"
    );

    let victim = roots[1].clone();
    let cluster = &mut dep.clusters[0];
    cluster.kill_tee(1);
    remove_record(&cluster.nodes[1].tee.store, &format!("wallet/{victim}"));
    cluster.restart_node(1).unwrap();

    let report = rt.block_on(client.run_audit(CLUSTER)).unwrap();
    let n2 = report.nodes.iter().find(|n| n.node == "dc1-node2").unwrap();
    assert_eq!(n2.missing, vec![victim.clone()], "{report:?}");

    // Flagged → sync: the node holds the key again and the next audit is clean.
    dep.clusters[0]
        .wait_synced(2, Duration::from_secs(60))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = rt.block_on(client.run_audit(CLUSTER)).unwrap();
        if after
            .nodes
            .iter()
            .all(|n| n.ok == 2 && n.missing.is_empty())
        {
            let latest = rt.block_on(client.latest_audit(CLUSTER)).unwrap();
            assert_eq!(latest, after);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit never clean again: {after:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The bridge's metrics tell the on-call engineer the same (issue 16): node 2 flagged,
    // and once it reported its sync no node lacks a key (the report may trail the audit).
    let url = &dep.clusters[0].bridge_metrics_url;
    if crate::metrics::metrics_at(url).is_some() {
        use crate::metrics::sample;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = crate::metrics::metrics_at(url).unwrap();
            let audits = |node: &str, outcome: &str| {
                sample(
                    &m,
                    &format!(
                        r#"custos_bridge_audits_total{{"node": "{node}", "outcome": "{outcome}"}}"#
                    ),
                )
            };
            assert!(audits("dc1-node2", "flagged") >= 1.0, "{m:?}");
            assert!(audits("dc1-node1", "ok") >= 3.0, "{m:?}");
            let settled = ["dc1-node1", "dc1-node2"].iter().all(|node| {
                let healthy = format!(r#"custos_bridge_node_healthy{{"node": "{node}"}}"#);
                let missing = format!(r#"custos_bridge_node_keys_missing{{"node": "{node}"}}"#);
                m.get(&healthy) == Some(&1.0) && m.get(&missing) == Some(&0.0)
            });
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "{m:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn no_node_available_fails_retryably_and_the_same_request_is_served_later() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = deploy(tmp.path(), LinkTransport::Tcp, 1);
    let alice = dep.admin("alice").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (root_id, xpub) = rt.block_on(create_wallet(&client, &[&alice]));
    dep.clusters[0].kill_node_server(0);
    let digest = [0x77u8; 32];
    let view = rt.block_on(async {
        let view = sign_request(&client, &root_id, "m/1/2", digest).await;
        approve(&client, &alice, &view.id).await.unwrap()
    });
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    assert_eq!(
        view.error.as_ref().map(|e| e.code.as_str()),
        Some("bridge_unavailable")
    );
    dep.clusters[0].restart_node(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let v = rt.block_on(client.retry(&view.id)).unwrap();
        if v.status == RequestStatus::Completed || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.id, view.id, "served under the same request id");
    verify_against_xpub(&signature(&done), &digest, &xpub, "m/1/2");
}
