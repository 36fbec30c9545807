//! One approval, one effect (issue 12 item 5), through real processes: a create-wallet whose
//! answer is lost between a node and the bridge (a proxy in front of each node server drops
//! it after the TEE answered) never makes a second wallet on another node; the cloud server
//! sends the same request id to the same node again and records the one wallet that exists.
//! The approvals name that node (`create-wallet-v2`): no other node's TEE would act on them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::proxy::{front_two_nodes, ReplyDropper};
use crate::common::*;
use custos::cluster::LinkTransport;
use custos::deployment::{approve, Deployment, DeploymentOptions};
use custos_cloud_api::{CreateWalletBody, RequestResult, RequestStatus};
use custos_wire::protocol::{Request, Response};

#[test]
fn a_create_wallet_whose_answer_is_lost_makes_exactly_one_wallet() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = Deployment::start(
        &exe(),
        tmp.path(),
        &DeploymentOptions {
            clusters: vec![(CLUSTER.into(), LinkTransport::Tcp)],
            nodes: 2,
            admins: vec!["alice".into()],
            // No periodic sync: a peer's sync call must not meet an armed proxy first.
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let alice = dep.admin("alice").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxies = front_two_nodes(&rt, &mut dep, &client, CLUSTER);

    // The request names its executor (its device chain fetched now, before any proxy is
    // armed); then the executor's answer is lost, and so would the other node's be.
    let (id, executor) = rt.block_on(async {
        let view = client
            .create_wallet(&CreateWalletBody {
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                cluster: CLUSTER.into(),
                quorum: 1,
                group: vec![hex::encode(alice.key_fingerprint())],
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await
            .unwrap();
        let executor = view
            .target_node
            .clone()
            .expect("the executing node is named");
        assert!(view.executor.is_some(), "{view:?}");
        for p in &proxies {
            p.arm();
        }
        (
            approve(&client, &alice, &view.id).await.unwrap().id,
            executor,
        )
    });
    let done = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let v = client.request(&id).await.unwrap();
            if v.status != RequestStatus::Submitting || Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // (A later reply to a peer's sync call may be lost too: that is no create-wallet.)
    assert!(proxies.iter().map(ReplyDropper::dropped).sum::<usize>() >= 1);
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let Some(RequestResult::Wallet(w)) = &done.result else {
        panic!("no wallet: {done:?}")
    };
    assert!(
        done.events.iter().any(|e| e.event == "outcome_unknown"),
        "{:?}",
        done.events
    );
    assert!(
        done.events
            .iter()
            .any(|e| e.event == "completed" && e.detail.contains(&executor)),
        "made by another node than {executor}: {:?}",
        done.events
    );

    // Every TEE of the cluster, asked directly: one wallet exists, the one recorded.
    let cluster = dep.cluster_mut(CLUSTER).unwrap();
    let mut made = BTreeSet::new();
    for node in &cluster.nodes {
        let mut tee = node.tee.client().unwrap();
        match tee.call(&Request::ListKeys).unwrap() {
            Response::Keys(keys) => made.extend(keys.into_iter().map(|k| hex::encode(k.key_id))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(made, BTreeSet::from([w.root_id.clone()]));
    let wallets = rt.block_on(client.wallets()).unwrap().wallets;
    assert_eq!(wallets.len(), 1, "{wallets:?}");
    assert_eq!(wallets[0].root_id, w.root_id);
}

/// The bridge's side, without the cloud server: a create-wallet resent with no pin (the
/// outcome-unknown answer naming the node was itself lost on the way back) still goes to
/// the node it was first sent to, never to a second one.
#[test]
fn a_create_wallet_resent_without_its_pin_goes_to_the_same_node() {
    use custos::cluster::{Cluster, ClusterOptions};
    use custos::ops::{approvals, new_meta};
    use custos_proto::cluster::TeeCall;
    use custos_wire::approval::Action;
    use custos_wire::protocol::encode_request;

    let pki = Pki::new();
    let mut cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("c"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 2,
            db_url: None,
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxies = rt.block_on(async { [ReplyDropper::start().await, ReplyDropper::start().await] });
    for (i, proxy) in proxies.iter().enumerate() {
        cluster.advertise_node(i, proxy.addr).unwrap();
        proxy.set_upstream(cluster.nodes[i].addr.unwrap());
    }
    let mut link = rt.block_on(cluster.link_client()).unwrap();
    let advertised: BTreeSet<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = link
                .status(custos_proto::cluster::StatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let endpoints: BTreeSet<String> = s.nodes.iter().map(|n| n.endpoint.clone()).collect();
            if endpoints == advertised && s.nodes.iter().all(|n| n.healthy) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nodes not behind their proxies: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    for p in &proxies {
        p.arm();
    }
    let meta = new_meta(600);
    let request = encode_request(&Request::CreateWallet {
        meta: meta.clone(),
        quorum: 1,
        approvals: approvals(
            &[pki.admin("alice")],
            CLUSTER,
            &meta,
            &Action::CreateWallet { quorum: 1 },
        )
        .unwrap(),
    });
    let call = || TeeCall {
        request: request.clone(),
        node: String::new(),
        ..Default::default()
    };
    let lost = rt.block_on(link.submit(call())).unwrap_err();
    assert_eq!(lost.code(), tonic::Code::DeadlineExceeded, "{lost:?}");
    let first = lost
        .metadata()
        .get("custos-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("the refusal names the node");
    // The resend carries no pin. From here every node answers (a peer's sync call may
    // have been the one to meet the other armed proxy): a second node would make a wallet.
    for p in &proxies {
        p.disarm();
    }
    // The cut connection may fail a resend or two more (the channel reconnects): each is
    // outcome-unknown on the same node again, as a caller resending with backoff sees it.
    let reply = rt.block_on(async {
        for _ in 0..50 {
            match link.submit(call()).await {
                Ok(reply) => return reply.into_inner(),
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
                    assert_eq!(
                        e.metadata()
                            .get("custos-node")
                            .and_then(|v| v.to_str().ok()),
                        Some(first.as_str()),
                        "{e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        panic!("the node never answered the resend");
    });
    assert_eq!(reply.node, first, "resent to the node it was first sent to");
    let Ok(Response::Wallet(w)) = custos_wire::client::decode_outcome(&reply.response).unwrap()
    else {
        panic!("no wallet")
    };
    assert!(proxies.iter().map(ReplyDropper::dropped).sum::<usize>() >= 1);
    let mut made = BTreeSet::new();
    for node in &cluster.nodes {
        match node.tee.client().unwrap().call(&Request::ListKeys).unwrap() {
            Response::Keys(keys) => made.extend(keys.into_iter().map(|k| k.key_id)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(made, BTreeSet::from([w.key_id]));
}
