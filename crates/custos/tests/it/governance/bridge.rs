//! Membership at the bridge (plan steps F1 and F2), on a real cluster: once a genesis is
//! applied through the bridge, only members register, under their own names. A rogue with a
//! genuine dc1 certificate (for an existing node's name or a new one) cannot register nor take
//! a name over (nor after a bridge restart, which verifies the stored log again), nor get
//! keys from a member's node server; an admitted node registers, gets the log it missed
//! pushed to its TEE and syncs wallets through the real sync loop; once removed, it gets
//! no wallet made afterwards.

use std::time::Duration;

use custos::cluster::{Cluster, ClusterOptions};
use custos::ops::{approvals, new_meta};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::StatusRequest;
use custos_test_kit::governance::{member, GovLog};
use custos_wire::approval::Action;
use custos_wire::governance::{entry_hash, GovChange};
use custos_wire::protocol::{CertChain, Request, Response, TeeError};
use tonic::transport::Channel;

use crate::common::*;

use crate::cluster::submit_with_chain as submit;

/// The chain `node` registered with, as the bridge hands it out with an answer.
async fn chain_of(link: &mut BridgeClient<Channel>, node: &str) -> CertChain {
    let (_, by, chain) = submit(link, &Request::ListKeys, node).await.unwrap();
    assert_eq!(by, node);
    chain.unwrap()
}

/// A P-256 key made outside any TEE with a genuine dc1 certificate naming `node`.
fn rogue_identity(pki: &Pki, node: &str) -> custos_net::TlsIdentity {
    custos::rogue::identity(&pki.pki, CLUSTER, node).unwrap()
}

async fn endpoints(link: &mut BridgeClient<Channel>) -> Vec<(String, String)> {
    link.status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| (n.node, n.endpoint))
        .collect()
}

/// The key ids node `i`'s TEE holds, asked of the TEE process itself (not through the
/// bridge, which no longer routes to a removed node).
fn tee_keys(cluster: &Cluster, i: usize) -> Vec<Vec<u8>> {
    let mut tee = cluster.nodes[i].tee.client().unwrap();
    match tee.call(&Request::ListKeys).unwrap() {
        Response::Keys(keys) => keys.into_iter().map(|k| k.key_id).collect(),
        other => panic!("not a key list: {other:?}"),
    }
}

/// Polls `done` every 200 ms, at most `polls` times; whether it became true.
async fn wait_for(mut done: impl FnMut() -> bool, polls: usize) -> bool {
    for _ in 0..polls {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done()
}

/// A wallet of group {alice, bob} made by `node` (device chain `chain`), approved by both;
/// its key id.
async fn create_on(
    pki: &Pki,
    link: &mut BridgeClient<Channel>,
    node: &str,
    chain: &CertChain,
) -> Vec<u8> {
    let meta = new_meta(600);
    let executor = member(pki, chain).key_fingerprint;
    let policy = custos_cloud_api::approval::new_wallet_policy(
        custos_test_kit::governance::admin_keys(pki, &["alice", "bob"]),
        1,
    );
    let action = Action::CreateGroupWallet {
        policy: &policy,
        executor: &executor,
    };
    let req = Request::CreateGroupWallet {
        approvals: approvals(
            &[pki.admin("alice"), pki.admin("bob")],
            CLUSTER,
            &meta,
            &action,
        )
        .unwrap(),
        meta,
        policy,
        executor,
    };
    match submit(link, &req, node).await.unwrap() {
        (Ok(Response::Wallet(k)), by, _) => {
            assert_eq!(by, node);
            k.key_id
        }
        other => panic!("no wallet: {other:?}"),
    }
}

#[test]
fn rogue_register_and_name_takeover_refused() {
    let pki = Pki::new();
    let mut cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("gov"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 3,
            db_url: None,
            sync_interval_secs: 2,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = cluster.link_client().await.unwrap();
        let [n1, n2, n3] = ["dc1-node1", "dc1-node2", "dc1-node3"];
        let mut chains = Vec::new();
        for n in [n1, n2, n3] {
            chains.push(chain_of(&mut link, n).await);
        }

        // Genesis through the bridge, naming node1 and node2: node3 leaves the registry.
        let mut log = GovLog::genesis(
            &pki,
            CLUSTER,
            &["alice", "bob", "carol"],
            2,
            vec![member(&pki, &chains[0]), member(&pki, &chains[1])],
            &["alice", "bob"],
        );
        let genesis = log.entries()[0].clone();
        let apply = Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: log.entries().to_vec(),
        };
        match submit(&mut link, &apply, "").await.unwrap() {
            (Ok(Response::Governance(v)), _, _) => {
                assert_eq!((v.version, v.head), (0, entry_hash(CLUSTER, &genesis)));
            }
            other => panic!("genesis not applied: {other:?}"),
        }
        let before = endpoints(&mut link).await;
        let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [n1, n2], "a non-member stays registered");

        // The rogue: a genuine dc1 certificate for node1's name, with its own key.
        let root = custos_pki::pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap();
        let rogue = rogue_identity(&pki, n1);
        let e = custos::rogue::try_register(cluster.bridge_addr, CLUSTER, n1, &rogue, &root)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("not_a_member:"), "{e:?}");
        assert_eq!(
            endpoints(&mut link).await,
            before,
            "the name was taken over"
        );
        // Nor under a name of its own, nor at a member's node server asking for its keys.
        let stranger = rogue_identity(&pki, "dc1-rogue");
        let e = custos::rogue::try_register(
            cluster.bridge_addr,
            CLUSTER,
            "dc1-rogue",
            &stranger,
            &root,
        )
        .await
        .unwrap_err();
        assert!(e.message().starts_with("not_a_member:"), "{e:?}");
        let server = cluster.nodes[1].addr.unwrap();
        let e = custos::rogue::try_export(server, CLUSTER, n2, &rogue, &root)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("not_a_member"), "{e:?}");
        assert_eq!(endpoints(&mut link).await, before);

        // The refusal reaches the history as a summary row (the first within a second).
        let db = custos_metadata::MetadataDb::connect(&cluster.db_url)
            .await
            .unwrap();
        let mut found = None;
        for _ in 0..100 {
            let history = db.history(0, 10_000).await.unwrap();
            found = history
                .iter()
                .filter_map(|e| custos_metadata::RefusalSummary::from_entry(e).unwrap())
                .find(|s| s.source == "bridge:app" && s.reason == "not_a_member");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let found = found.expect("no not_a_member refusal summary");
        assert!(found.example.contains(n1), "{found:?}");
        let history = db.history(0, 10_000).await.unwrap();
        assert!(
            history.iter().any(|e| e.kind == "governance"
                && e.outcome == "ok"
                && e.detail.contains("genesis")),
            "no governance history row: {history:?}"
        );

        // Approvals of a change that was shelved and relayed after they expired: refused
        // before any TEE hears of it, and the log stays where it was.
        let late = log.next_entry_expiring(
            GovChange::Remove {
                key_fingerprint: member(&pki, &chains[1]).key_fingerprint,
                reason: "shelved".into(),
            },
            &["alice", "bob"],
            custos_test_kit::platform::now() - 60,
        );
        let apply = Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: vec![late],
        };
        let e = submit(&mut link, &apply, "").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("governance_expired:"), "{e:?}");
        let asked = Request::Governance {
            cluster: CLUSTER.into(),
            since: 0,
        };
        match submit(&mut link, &asked, n2).await.unwrap() {
            (Ok(Response::Governance(v)), _, _) => assert_eq!(v.version, 0),
            other => panic!("no view: {other:?}"),
        }

        // Node3 admitted: its server registers again (and its TEE gets the log pushed).
        let admit = log
            .admit(member(&pki, &chains[2]), &["bob", "carol"])
            .clone();
        let apply = Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: vec![admit],
        };
        match submit(&mut link, &apply, "").await.unwrap() {
            (Ok(Response::Governance(v)), _, _) => assert_eq!(v.version, 1),
            other => panic!("admission not applied: {other:?}"),
        }
        cluster.kill_node_server(2);
        cluster.start_node_server(2).unwrap();
        let names: Vec<String> = endpoints(&mut link)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [n1, n2, n3]);
        // Its TEE missed both entries while it was out: the bridge pushed them when it
        // registered (bounded wait: 50 polls of 200 ms).
        let asked = Request::Governance {
            cluster: CLUSTER.into(),
            since: 0,
        };
        let mut seen = None;
        for _ in 0..50 {
            seen = match submit(&mut link, &asked, n3).await.unwrap() {
                (Ok(Response::Governance(v)), _, _) => Some(v.version),
                _ => None,
            };
            if seen == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(seen, Some(1), "node3's TEE did not get the log");

        // Admitted, node3 syncs by itself: a wallet made on node1 reaches its TEE through
        // the bridge's key list and node1's export (bounded wait: 150 polls of 200 ms).
        let first = create_on(&pki, &mut link, n1, &chains[0]).await;
        assert!(
            wait_for(|| tee_keys(&cluster, 2).contains(&first), 150).await,
            "node3 never synced the wallet made after its admission"
        );

        // Removed, node3 gets nothing new: the bridge drops it, refuses its sync calls, and
        // no member's TEE exports to it, while node2 goes on syncing.
        let removed = log
            .remove(
                member(&pki, &chains[2]).key_fingerprint,
                &["alice", "carol"],
            )
            .clone();
        let apply = Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: vec![removed],
        };
        match submit(&mut link, &apply, "").await.unwrap() {
            (Ok(Response::Governance(v)), _, _) => assert_eq!(v.version, 2),
            other => panic!("removal not applied: {other:?}"),
        }
        let names: Vec<String> = endpoints(&mut link)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [n1, n2], "a removed node stays registered");
        let second = create_on(&pki, &mut link, n1, &chains[0]).await;
        assert!(
            wait_for(|| tee_keys(&cluster, 1).contains(&second), 150).await,
            "node2 never synced the second wallet"
        );
        // node3's server keeps its sync loop (every 2 s) running: three more rounds later
        // its TEE still lacks the wallet (the bridge refuses its key-list calls).
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !tee_keys(&cluster, 2).contains(&second),
            "a removed node got a wallet made after its removal"
        );

        // The bridge's database comes back without the removal (restored from an older
        // copy): the restarted bridge verifies the log it has (version 1) and, told by a
        // member's TEE that it holds more, learns the removal there, checked against its own
        // log, before node3 could be taken back.
        cluster.kill_bridge();
        {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&cluster.db_url).await.unwrap();
            let gone = sqlx::query("DELETE FROM governance WHERE version = 2")
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(gone.rows_affected(), 1);
            pool.close().await;
        }
        cluster.restart_bridge().unwrap();
        let rogue = rogue_identity(&pki, n2);
        let e = custos::rogue::try_register(cluster.bridge_addr, CLUSTER, n2, &rogue, &root)
            .await
            .unwrap_err();
        assert!(e.message().starts_with("not_a_member:"), "{e:?}");

        // The members' servers, told by the restarted bridge that it does not know them at
        // their next sync round (every 2 s), register again and serve; node3 stays out.
        let mut link = cluster.link_client().await.unwrap();
        let mut names = Vec::new();
        for _ in 0..150 {
            names = endpoints(&mut link)
                .await
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>();
            // node3 (a member at version 1) may register until a member's TEE shows the
            // bridge its removal.
            if names == [n1, n2] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(names, [n1, n2], "members did not register again");
        create_on(&pki, &mut link, n2, &chains[1]).await;
        let db = custos_metadata::MetadataDb::connect(&cluster.db_url)
            .await
            .unwrap();
        let stored = db.governance_entries(0).await.unwrap();
        assert_eq!(stored.len(), 3, "the bridge did not learn the removal back");
        let history = db.history(0, 10_000).await.unwrap();
        assert!(
            history
                .iter()
                .any(|h| h.kind == "governance" && h.detail.contains("caught up from")),
            "no history row says the log was caught up"
        );
    });
}

/// Another cluster's log relayed to this cluster's bridge (plan step D5: co-signers check a
/// foreign participant against its cluster's log) is forwarded to the TEEs, pinned or to
/// every serving node, and answered with a TEE's signed answer; the bridge neither verifies
/// it as its own log, nor stores it, nor writes a governance history row, and its own log
/// and registry stay as they were. Here no TEE holds a key anchored at dc2, so each refuses
/// it by name. What became of the forwards reaches the history as aggregated rows
/// (`bridge:foreign-log`), one per outcome.
#[test]
fn a_foreign_log_is_forwarded_never_adopted() {
    let pki = Pki::new();
    let options = |name: &str, nodes| ClusterOptions {
        name: name.into(),
        nodes,
        db_url: None,
        sync_interval_secs: 2,
        audit_interval_secs: 0,
        link: None,
    };
    let dc1 = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("gov1"),
        &options(CLUSTER, 2),
    )
    .unwrap();
    let dc2 = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("gov2"),
        &options("dc2", 1),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = dc1.link_client().await.unwrap();
        let [n1, n2] = ["dc1-node1", "dc1-node2"];
        let mut chains = Vec::new();
        for n in [n1, n2] {
            chains.push(chain_of(&mut link, n).await);
        }
        let own = GovLog::genesis(
            &pki,
            CLUSTER,
            &["alice", "bob"],
            2,
            vec![member(&pki, &chains[0]), member(&pki, &chains[1])],
            &["alice", "bob"],
        );
        let apply = Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: own.entries().to_vec(),
        };
        assert!(matches!(
            submit(&mut link, &apply, "").await.unwrap().0,
            Ok(Response::Governance(_))
        ));
        let db = custos_metadata::MetadataDb::connect(&dc1.db_url)
            .await
            .unwrap();
        let governance_rows =
            |h: &[custos_metadata::Entry]| h.iter().filter(|e| e.kind == "governance").count();
        let rows_before = governance_rows(&db.history(0, 10_000).await.unwrap());
        let before = endpoints(&mut link).await;

        // dc2's log, made from its own node's chain.
        let mut link2 = dc2.link_client().await.unwrap();
        let chain2 = chain_of(&mut link2, "dc2-node1").await;
        let foreign = GovLog::genesis(
            &pki,
            "dc2",
            &["alice", "bob"],
            2,
            vec![member(&pki, &chain2)],
            &["alice", "bob"],
        );
        let apply = Request::ApplyGovernance {
            cluster: "dc2".into(),
            entries: foreign.entries().to_vec(),
        };
        // Pinned: that node's TEE answers (signed, checked by the bridge), by name.
        for node in [n1, n2] {
            match submit(&mut link, &apply, node).await.unwrap() {
                (Err(TeeError::GovernanceRejected(m)), by, _) => {
                    assert_eq!(by, node);
                    assert!(m.contains("dc2"), "{m}");
                }
                other => panic!("not the TEE's refusal: {other:?}"),
            }
        }
        // Unpinned: sent to every serving node, one signed answer relayed.
        match submit(&mut link, &apply, "").await.unwrap() {
            (Err(TeeError::GovernanceRejected(m)), by, _) => {
                assert!([n1, n2].contains(&by.as_str()), "{by}");
                assert!(m.contains("dc2"), "{m}");
            }
            other => panic!("not a TEE's refusal: {other:?}"),
        }
        // The limits of an apply hold for foreign logs too.
        let empty = Request::ApplyGovernance {
            cluster: "dc2".into(),
            entries: Vec::new(),
        };
        let e = submit(&mut link, &empty, "").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("governance_rejected:"), "{e:?}");
        // The forwards' outcomes reach the history as aggregated rows (the first of an
        // outcome within about a second): refused by the TEEs, and not relayed (empty).
        let forwards = |h: &[custos_metadata::Entry]| {
            h.iter()
                .filter_map(|e| custos_metadata::RefusalSummary::from_entry(e).unwrap())
                .filter(|s| s.source == "bridge:foreign-log")
                .map(|s| (s.reason, s.example))
                .collect::<Vec<_>>()
        };
        let mut history = Vec::new();
        for _ in 0..100 {
            history = db.history(0, 10_000).await.unwrap();
            if forwards(&history).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut seen = forwards(&history);
        seen.sort();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "not_relayed");
        assert!(
            seen[0].1.contains("governance_rejected: 0 entries"),
            "{seen:?}"
        );
        assert_eq!(seen[1].0, "refused_by_tee");
        assert!(
            seen[1]
                .1
                .starts_with("cluster \"dc2\" entries 0..=0: answered by dc1-node"),
            "{seen:?}"
        );
        // Nothing of dc2's log reached dc1's own: same history (read first: a log read
        // writes rows of its own), registry and log.
        assert_eq!(governance_rows(&history), rows_before, "{history:?}");
        assert!(
            !history
                .iter()
                .any(|e| e.detail.contains("dc2") && e.actor != "bridge:foreign-log"),
            "{history:?}"
        );
        assert_eq!(endpoints(&mut link).await, before);
        let asked = Request::Governance {
            cluster: CLUSTER.into(),
            since: 0,
        };
        match submit(&mut link, &asked, n1).await.unwrap() {
            (Ok(Response::Governance(v)), _, _) => {
                assert_eq!((v.cluster.as_str(), v.version), (CLUSTER, 0));
            }
            other => panic!("no view: {other:?}"),
        }
    });
}
