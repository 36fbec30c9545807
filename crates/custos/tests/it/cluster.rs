//! A real cluster on loopback (bridge, node servers, TEE processes): wallets created through
//! one node reach every node by sync, every node signs identically, failover keeps a stream
//! of signing requests whole while nodes are killed, restarted nodes resync, foreign nodes
//! receive nothing (strangers to the PKI are refused by the bridge's TLS layer), and the
//! history detects tampering. Runs against SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use crate::common::*;
use custos::cluster::{Cluster, ClusterOptions};
use custos::ops::{approvals, new_meta};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::{StatusRequest, TeeCall};
use custos_test_kit::{TestDb, DEFAULT_PG_URL};
use custos_wire::approval::Action;
use custos_wire::protocol::{encode_request, KeyInfo, Outcome, Request, Response};
use tonic::transport::Channel;

/// Runs `test` with the URL of a fresh PostgreSQL schema of its own (the test kit's, so
/// concurrent tests and runs never collide), dropped once `test` returned. Unlike the test
/// kit's own PostgreSQL variants, an unreachable server fails these tests as it always did.
fn on_postgres(name: &str, test: impl FnOnce(Option<String>)) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt
        .block_on(TestDb::postgres(name))
        .unwrap_or_else(|| panic!("{name} needs PostgreSQL (default {DEFAULT_PG_URL})"));
    test(Some(db.url.clone()));
    rt.block_on(db.cleanup());
}

fn start(pki: &Pki, name: &str, nodes: usize, db_url: Option<String>) -> Cluster {
    Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join(name),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes,
            db_url,
            sync_interval_secs: 2,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap()
}

async fn submit(
    link: &mut BridgeClient<Channel>,
    req: &Request,
    node: &str,
) -> Result<(Outcome, String), tonic::Status> {
    submit_with_chain(link, req, node)
        .await
        .map(|(outcome, by, _)| (outcome, by))
}

/// Submits `req` through the link endpoint (to `node`, or any) and returns the outcome, the
/// node that served it and the device chain the bridge hands out with the answer.
pub(crate) async fn submit_with_chain(
    link: &mut BridgeClient<Channel>,
    req: &Request,
    node: &str,
) -> Result<(Outcome, String, Option<custos_wire::protocol::CertChain>), tonic::Status> {
    let reply = link
        .submit(TeeCall {
            request: encode_request(req),
            node: node.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((
        custos_wire::client::decode_outcome(&reply.response).unwrap(),
        reply.node,
        reply.chain.map(|c| custos_wire::protocol::CertChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        }),
    ))
}

async fn create(pki: &Pki, link: &mut BridgeClient<Channel>) -> (KeyInfo, String) {
    let meta = new_meta(600);
    let req = Request::CreateWallet {
        meta: meta.clone(),
        quorum: 1,
        approvals: approvals(
            &[pki.admin("alice")],
            CLUSTER,
            &meta,
            &Action::CreateWallet { quorum: 1 },
        )
        .unwrap(),
    };
    match submit(link, &req, "").await.unwrap() {
        (Ok(Response::Wallet(k)), node) => (k, node),
        other => panic!("unexpected {other:?}"),
    }
}

fn sign_request(pki: &Pki, key: &[u8], path: &[u32], digest: [u8; 32]) -> Request {
    let meta = new_meta(600);
    let action = Action::Sign {
        key_id: key,
        path,
        digest: &digest,
    };
    Request::Sign {
        meta: meta.clone(),
        key_id: key.to_vec(),
        path: path.to_vec(),
        digest,
        approvals: approvals(&[pki.admin("alice")], CLUSTER, &meta, &action).unwrap(),
    }
}

fn sync_and_sign_identically(db_url: Option<String>) {
    let pki = Pki::new();
    let cluster = start(&pki, "c", 3, db_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = cluster.link_client().await.unwrap();
        let mut created = Vec::new();
        for _ in 0..12 {
            created.push(create(&pki, &mut link).await);
        }
        cluster.wait_synced(12, Duration::from_secs(60)).unwrap();
        let (key, _) = &created[5];
        let path = [44 | 1 << 31, 0, 9];
        let req = sign_request(&pki, &key.key_id, &path, [0x5a; 32]);
        let mut sigs = Vec::new();
        for n in &cluster.nodes {
            let (outcome, served_by) = submit(&mut link, &req, &n.name).await.unwrap();
            assert_eq!(served_by, n.name);
            let Ok(Response::Signature(sig)) = outcome else {
                panic!("{outcome:?}")
            };
            sigs.push(sig);
        }
        assert!(
            sigs.windows(2).all(|w| w[0] == w[1]),
            "nodes signed differently"
        );
        let mut tee = cluster.nodes[2].tee.client().unwrap();
        let Response::Xpub { public_key, .. } = tee
            .call(&Request::GetXpub {
                key_id: key.key_id.clone(),
                path: path.to_vec(),
            })
            .unwrap()
        else {
            panic!()
        };
        verify_independently(&sigs[0], &[0x5a; 32], &public_key);
        let status = link.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.keys, 12);
        assert!(
            status.nodes.iter().all(|n| n.healthy && n.keys_held == 12),
            "{status:?}"
        );
    });
    drop(cluster);
}

#[test]
fn sqlite_wallets_sync_to_every_node_and_sign_identically() {
    sync_and_sign_identically(None);
}

#[test]
fn postgres_wallets_sync_to_every_node_and_sign_identically() {
    on_postgres("sync_and_sign_identically", sync_and_sign_identically);
}

fn failover_and_resync(db_url: Option<String>) {
    let pki = Pki::new();
    let mut cluster = start(&pki, "f", 3, db_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut link = rt.block_on(cluster.link_client()).unwrap();
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(rt.block_on(create(&pki, &mut link)).0);
    }
    cluster.wait_synced(4, Duration::from_secs(60)).unwrap();

    // A bounded stream of signing requests; nodes die in the middle of it.
    let total = 60;
    let mut served_by = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..total {
        assert!(Instant::now() < deadline, "stream took too long");
        if i == 15 {
            cluster.kill_node_server(0);
        }
        if i == 35 {
            cluster.kill_tee(1);
        }
        let key = &keys[i % keys.len()];
        let digest = [i as u8; 32];
        let req = sign_request(&pki, &key.key_id, &[i as u32], digest);
        let (outcome, node) = rt
            .block_on(submit(&mut link, &req, ""))
            .unwrap_or_else(|e| panic!("request {i} lost: {e}"));
        let Ok(Response::Signature(sig)) = outcome else {
            panic!("request {i}: {outcome:?}")
        };
        assert_eq!(sig.s[0] & 0x80, 0, "low-s");
        *served_by.entry(node).or_default() += 1;
    }
    assert_eq!(served_by.values().sum::<usize>(), total);
    assert!(served_by.len() >= 2, "{served_by:?}");

    // Keys created while two nodes are down reach them once they are back.
    for _ in 0..3 {
        keys.push(rt.block_on(create(&pki, &mut link)).0);
    }
    cluster.restart_node(0).unwrap();
    cluster.restart_node(1).unwrap();
    cluster.wait_synced(7, Duration::from_secs(60)).unwrap();
    for n in &cluster.nodes {
        let mut c = n.tee.client().unwrap();
        let Response::Keys(held) = c.call(&Request::ListKeys).unwrap() else {
            panic!()
        };
        for k in &keys {
            assert!(
                held.iter().any(|h| h.key_id == k.key_id),
                "{} lacks a key",
                n.name
            );
        }
    }
    drop(link);
    drop(rt);
}

#[test]
fn sqlite_failover_under_load_and_resync_after_restart() {
    failover_and_resync(None);
}

#[test]
fn postgres_failover_under_load_and_resync_after_restart() {
    on_postgres("failover_and_resync", failover_and_resync);
}

/// A TLS client identity with a local key: a device certificate of `cluster` issued by
/// `pki`, or (cluster None) a self-signed certificate from no CA at all.
pub(crate) fn outsider_identity(pki: &Pki, cluster: Option<&str>) -> custos_net::TlsIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["intruder.dc1.custos".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intruder");
    let chain = match cluster {
        Some(c) => {
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            let cert = pki.pki.sign_device_csr(c, &csr).unwrap();
            vec![
                custos_pki::pem_to_der(&cert, "c").unwrap(),
                custos_pki::pem_to_der(&pki.pki.cluster_ca_pem(c).unwrap(), "c").unwrap(),
                custos_pki::pem_to_der(&pki.pki.device_ca_pem().unwrap(), "c").unwrap(),
            ]
        }
        None => vec![params.self_signed(&key).unwrap().der().to_vec()],
    };
    custos_net::TlsIdentity::from_local_key(chain, &key.serialize_der()).unwrap()
}

#[test]
fn foreign_nodes_receive_nothing_and_refusals_are_logged() {
    use custos_proto::cluster::vault_node_client::VaultNodeClient;
    use custos_proto::cluster::{ExportRequest, KeyListRequest, RegisterRequest};

    let pki = Pki::new();
    let cluster = start(&pki, "x", 1, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = cluster.link_client().await.unwrap();
        let (key, _) = create(&pki, &mut link).await;
        let root = custos_pki::pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap();
        for (label, cluster_of) in [("other cluster", Some("dc2")), ("no CA", None)] {
            let cfg =
                custos_net::client_config(&outsider_identity(&pki, cluster_of), &root).unwrap();
            let bridge = custos_net::connect(cluster.bridge_addr, "bridge.dc1.custos", cfg.clone());
            let register = RegisterRequest {
                node: "intruder".into(),
                endpoint: "127.0.0.1:9".into(),
                held: vec![],
                gov_version: None,
            };
            if cluster_of.is_some() {
                // A chain that reaches the Root: the application refuses it, by name.
                let mut bridge = BridgeClient::new(bridge.await.unwrap());
                let e = bridge.register(register).await.unwrap_err();
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{label}: {e:?}");
                let e = bridge
                    .key_list(KeyListRequest {
                        missing_only: false,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{label}: {e:?}");
            } else {
                // No chain to the Root: the bridge's TLS layer refuses it; the application
                // never answers (the alert itself is checked by the bridge_flood test).
                if let Ok(ch) = bridge.await {
                    let e = BridgeClient::new(ch).register(register).await.unwrap_err();
                    assert_ne!(e.code(), tonic::Code::PermissionDenied, "{label}: {e:?}");
                }
            }
            // Asking a vault node directly for the key is refused too (by its application).
            let node_addr = cluster.nodes[0].addr.unwrap();
            let ch = custos_net::connect(node_addr, "dc1-node1.dc1.custos", cfg)
                .await
                .unwrap();
            let e = VaultNodeClient::new(ch)
                .export_keys(ExportRequest {
                    key_ids: vec![key.key_id.clone()],
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{label}: {e:?}");
        }
        // Both kinds of refusal at the bridge reach the history as aggregated rows (the first
        // of a kind within about a second), with the reason; never one row per attempt.
        let db = custos_metadata::MetadataDb::connect(&cluster.db_url)
            .await
            .unwrap();
        let mut summaries = Vec::new();
        // Bounded wait: 100 polls of 200 ms.
        for _ in 0..100 {
            let history = db.history(0, 10_000).await.unwrap();
            assert!(history.iter().all(|e| e.kind != "refusal"), "{history:?}");
            summaries = history
                .iter()
                .filter_map(|e| custos_metadata::RefusalSummary::from_entry(e).unwrap())
                .collect::<Vec<_>>();
            let has = |source: &str, reason: &str| {
                summaries
                    .iter()
                    .any(|s| s.source == source && s.reason == reason)
            };
            if has("bridge:app", "wrong_cluster") && has("bridge:tls", "unknown_issuer") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let wrong = summaries
            .iter()
            .find(|s| s.reason == "wrong_cluster")
            .unwrap_or_else(|| panic!("no application refusal recorded: {summaries:?}"));
        assert!(
            wrong.example.contains("register") && wrong.example.contains("dc2"),
            "{wrong:?}"
        );
        assert!(
            summaries
                .iter()
                .any(|s| s.source == "bridge:tls" && s.reason == "unknown_issuer"),
            "no TLS refusal recorded: {summaries:?}"
        );
    });
}

fn db_verify(url: &str) -> (bool, String) {
    let out = std::process::Command::new(exe())
        .args(["db", "verify", "--url", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn db_verify_detects_edits_and_deletions(db_url: Option<String>) {
    let pki = Pki::new();
    let mut cluster = start(&pki, "v", 1, db_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = cluster.link_client().await.unwrap();
        for _ in 0..3 {
            create(&pki, &mut link).await;
        }
    });
    cluster.kill_bridge();
    let url = cluster.db_url.clone();
    let (ok, out) = db_verify(&url);
    assert!(ok, "{out}");
    let exec = |sql: &'static str| {
        rt.block_on(async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        })
    };
    exec("UPDATE history SET detail = 'nothing to see' WHERE seq = 3");
    let (ok, out) = db_verify(&url);
    assert!(!ok && out.contains("edited"), "{out}");
    exec("UPDATE history SET detail = '' WHERE seq = 3");
    let (ok, out) = db_verify(&url);
    assert!(ok, "restoring the row restores the chain: {out}");
    exec("DELETE FROM history WHERE seq = 4");
    let (ok, out) = db_verify(&url);
    assert!(!ok && out.contains("deleted"), "{out}");
}

#[test]
fn sqlite_db_verify_detects_edited_and_deleted_rows() {
    db_verify_detects_edits_and_deletions(None);
}

#[test]
fn postgres_db_verify_detects_edited_and_deleted_rows() {
    on_postgres(
        "db_verify_detects_edits_and_deletions",
        db_verify_detects_edits_and_deletions,
    );
}

#[test]
fn audit_finds_a_removed_key_and_sync_repairs_it() {
    use custos_proto::cluster::AuditRequest;
    let pki = Pki::new();
    let mut cluster = start(&pki, "a", 2, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut link = rt.block_on(cluster.link_client()).unwrap();
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(rt.block_on(create(&pki, &mut link)).0);
    }
    cluster.wait_synced(3, Duration::from_secs(60)).unwrap();
    let clean = rt
        .block_on(link.audit(AuditRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(clean.keys, 3);
    assert!(
        clean.nodes.iter().all(|n| n.ok == 3 && n.error.is_empty()),
        "{clean:?}"
    );

    // Remove one key from node 2's sealed store behind the cluster's back; its node server
    // stays up, so the bridge still believes node 2 holds the key.
    let victim = &keys[1].key_id;
    cluster.kill_tee(1);
    remove_record(
        &cluster.nodes[1].tee.store,
        &format!("wallet/{}", hex::encode(victim)),
    );
    cluster.restart_node(1).unwrap();

    let report = rt
        .block_on(link.audit(AuditRequest {}))
        .unwrap()
        .into_inner();
    let n2 = report.nodes.iter().find(|n| n.node == "dc1-node2").unwrap();
    assert_eq!(n2.missing, vec![victim.clone()], "{report:?}");
    assert_eq!(n2.ok, 2);
    let n1 = report.nodes.iter().find(|n| n.node == "dc1-node1").unwrap();
    assert_eq!(n1.ok, 3, "{report:?}");

    // The flag triggered a sync: node 2 holds the key again, and a new audit is clean.
    cluster.wait_synced(3, Duration::from_secs(60)).unwrap();
    let after = rt
        .block_on(link.audit(AuditRequest {}))
        .unwrap()
        .into_inner();
    assert!(
        after
            .nodes
            .iter()
            .all(|n| n.ok == 3 && n.missing.is_empty()),
        "{after:?}"
    );
    let last = rt
        .block_on(link.last_audit(AuditRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(last, after);
    // Audits are in the history.
    let audits = rt.block_on(async {
        let db = custos_metadata::MetadataDb::connect(&cluster.db_url)
            .await
            .unwrap();
        db.history(0, 10_000).await.unwrap()
    });
    assert!(audits
        .iter()
        .any(|e| e.kind == "audit" && e.outcome == "flagged" && e.detail.contains("1 missing")));
}
