//! A wallet's approver group changed on a real deployment (issue 12, item 3, plan step E2):
//! proposed with `custos wallet policy`, approved through REST by the group in force, sent
//! by the bridge to every node. Attacker first: an admin outside the group in force does not
//! count; afterwards every node's TEE holds the new group and the admin removed from it no
//! longer signs.

use std::time::{Duration, Instant};

use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use custos::wallet::policy::{run, PolicyArgs, PolicyOutcome};
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{Request, Response};
use tonic::transport::Channel;

use crate::cluster::submit_with_chain;
use crate::common::exe;

const DC: &str = "dc1";
const NODES: [&str; 2] = ["dc1-node1", "dc1-node2"];

/// Signs the message recomputed from the view and posts it.
async fn approve(
    client: &CloudClient,
    view: &RequestView,
    admin: &AdminSigner,
) -> Result<RequestView, ClientError> {
    let message = approval_message(view).expect("the view carries its terms");
    assert_eq!(hex::encode(&message), view.approval_message);
    client
        .approve(&view.id, &sign_approval(admin, &message).unwrap())
        .await
}

fn fp(admin: &AdminSigner) -> String {
    hex::encode(admin.key_fingerprint())
}

/// The policy of `key` in `node`'s TEE, asked through the link (`None` while it lacks it).
async fn policy_on(link: &mut BridgeClient<Channel>, key: &[u8], node: &str) -> Option<KeyPolicy> {
    let req = Request::GetKeyPolicy {
        key_id: key.to_vec(),
    };
    match submit_with_chain(link, &req, node).await.unwrap() {
        (Ok(Response::KeyPolicy { policy, .. }), by, _) => {
            assert_eq!(by, node);
            Some(policy)
        }
        _ => None,
    }
}

/// A sign request of `root_id` approved by `admin` alone (the wallet's quorum is 1).
async fn sign(client: &CloudClient, root_id: &str, admin: &AdminSigner) -> RequestView {
    let view = client
        .sign(&SignRequestBody {
            root_id: root_id.into(),
            path: "m/0".into(),
            digest: "22".repeat(32),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    approve(client, &view, admin).await.unwrap()
}

/// Starts one cluster of two nodes with admins alice, bob and carol (syncing every second).
fn deploy(dir: &std::path::Path) -> Deployment {
    Deployment::start(
        &exe(),
        dir,
        &DeploymentOptions {
            clusters: vec![(DC.into(), LinkTransport::Tcp)],
            nodes: 2,
            admins: ["alice", "bob", "carol"].map(String::from).to_vec(),
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap()
}

/// Creates a wallet of group {alice, bob}, quorum 1, and waits until both nodes hold it;
/// returns its root id.
async fn group_wallet(
    client: &CloudClient,
    link: &mut BridgeClient<Channel>,
    alice: &AdminSigner,
    bob: &AdminSigner,
) -> String {
    let wallet = client
        .create_wallet(&CreateWalletBody {
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            cluster: DC.into(),
            quorum: 1,
            group: vec![fp(alice), fp(bob)],
            executor: None,
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let wallet = approve(client, &wallet, alice).await.unwrap();
    assert_eq!(wallet.status, RequestStatus::Completed, "{wallet:?}");
    let root_id = wallet.root_id.clone().unwrap();
    let key = hex::decode(&root_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in NODES {
        while policy_on(link, &key, node).await.is_none() {
            assert!(Instant::now() < deadline, "{node} never got the wallet");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    root_id
}

/// `custos wallet policy` arguments for `root_id`: show it, or propose `group`, quorum 1.
fn policy_args(d: &Deployment, root_id: &str, group: Option<Vec<String>>) -> PolicyArgs {
    PolicyArgs {
        rules: None,
        api: d.api_url.clone(),
        token: d.api_token.clone(),
        api_root_ca: None,
        root: Some(root_id.into()),
        threshold_key: None,
        show: group.is_none(),
        quorum: group.is_some().then_some(1),
        group: group.unwrap_or_default(),
        group_certs: vec![],
    }
}

#[test]
fn a_wallet_group_changed_through_rest_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = deploy(dir.path());
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        let mut link = d.cluster(DC).unwrap().link_client().await.unwrap();
        // Both nodes hold the wallet (by sync) before its group changes.
        let root_id = group_wallet(&client, &mut link, &alice, &bob).await;
        let key = hex::decode(&root_id).unwrap();

        // Alice is replaced by carol, proposed with `custos wallet policy`.
        let mut out = Vec::new();
        let change = policy_args(&d, &root_id, Some(vec![fp(&carol), fp(&bob)]));
        let PolicyOutcome::Proposed(view) = run(&change, &mut out).await.unwrap() else {
            panic!("not proposed")
        };
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("change the approvers of wallet"), "{out}");
        assert_eq!(view.kind, RequestKind::SetKeyPolicy);

        // Carol, of the new group but not of the group in force, does not count.
        let e = approve(&client, &view, &carol).await.unwrap_err();
        assert_eq!(e.code(), Some("approver_not_in_group"), "{e}");
        assert!(e.to_string().contains(&fp(&carol)), "{e}");
        let done = approve(&client, &view, &bob).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

        // Every node's TEE holds the new group.
        let mut group = vec![carol.key_fingerprint(), bob.key_fingerprint()];
        group.sort();
        for node in NODES {
            let p = policy_on(&mut link, &key, node).await.expect("held");
            assert_eq!((p.version, &p.group, p.quorum), (2, &group, 1), "{node}");
        }
        let mut out = Vec::new();
        let PolicyOutcome::Shown(shown) = run(&policy_args(&d, &root_id, None), &mut out)
            .await
            .unwrap()
        else {
            panic!("not shown")
        };
        assert_eq!(shown.version, 2);
        assert!(String::from_utf8(out).unwrap().contains(&fp(&carol)));

        // Alice, removed, no longer signs; carol does.
        let refused = sign(&client, &root_id, &alice).await;
        assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
        assert_eq!(
            refused.error.as_ref().map(|e| e.code.as_str()),
            Some("tee_approver_not_in_group"),
            "{refused:?}"
        );
        let signed = sign(&client, &root_id, &carol).await;
        assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    });
}

/// Attacker first: node2 is down while alice is removed from the wallet's group, then comes
/// back holding the wallet under the old group while node1 is down. Routed the key, node2's
/// TEE would sign for alice. The bridge recorded the change's version and asks node2's TEE
/// its policy before routing it the key: behind, node2 serves nothing for the wallet until
/// its sync has brought the new group from node1.
#[test]
fn a_holder_that_missed_a_group_change_is_not_routed_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = deploy(dir.path());
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        // Governed (a synced policy is taken only from members): alice and bob govern.
        let genesis = client
            .propose_genesis(
                DC,
                &GenesisBody {
                    governors: vec![fp(&alice), fp(&bob)],
                    quorum: 1,
                    members: NODES.map(String::from).to_vec(),
                    measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
                        allow_software: true,
                        ..Default::default()
                    }),
                    request_id: None,
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        let genesis = approve(&client, &genesis, &alice).await.unwrap();
        assert_eq!(genesis.status, RequestStatus::Completed, "{genesis:?}");
        let mut link = d.cluster(DC).unwrap().link_client().await.unwrap();
        let root_id = group_wallet(&client, &mut link, &alice, &bob).await;
        let key = hex::decode(&root_id).unwrap();

        // node2 goes down; alice is replaced by carol, applied by node1 alone.
        let cluster = d.cluster_mut(DC).unwrap();
        cluster.kill_node_server(1);
        cluster.kill_tee(1);
        let change = policy_args(&d, &root_id, Some(vec![fp(&carol), fp(&bob)]));
        let PolicyOutcome::Proposed(view) = run(&change, &mut Vec::new()).await.unwrap() else {
            panic!("not proposed")
        };
        let done = approve(&client, &view, &bob).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

        // node1 goes down, node2 comes back with the old group and registers.
        let cluster = d.cluster_mut(DC).unwrap();
        cluster.kill_node_server(0);
        cluster.restart_node(1).unwrap();
        let old = policy_on(&mut link, &key, NODES[1]).await.expect("held");
        assert_eq!(old.version, 1, "node2 was down during the change");

        // Alice's approval sent straight to node2 through the link (a relay-token holder
        // naming the node) is not delivered either.
        let meta = custos::ops::new_meta(600);
        let digest = [0x33; 32];
        let action = custos_wire::approval::Action::Sign {
            key_id: &key,
            path: &[0],
            digest: &digest,
        };
        let pinned = Request::Sign {
            meta: meta.clone(),
            key_id: key.clone(),
            path: vec![0],
            digest,
            approvals: custos::ops::approvals(&[&alice], DC, &meta, &action).unwrap(),
        };
        let e = submit_with_chain(&mut link, &pinned, NODES[1])
            .await
            .expect_err("a node behind the key's policy was sent an approval");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

        // Alice asks to sign: the only node up is node2, which must not be routed the key.
        let attempt = sign(&client, &root_id, &alice).await;
        assert_ne!(attempt.status, RequestStatus::Completed, "{attempt:?}");
        assert!(attempt.result.is_none(), "{attempt:?}");

        // node1 back: node2 syncs the record from it and enforces the new group.
        d.cluster_mut(DC).unwrap().restart_node(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = policy_on(&mut link, &key, NODES[1]).await;
            if p.as_ref().is_some_and(|p| p.version == 2) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node2 never took the change: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let refused = sign(&client, &root_id, &alice).await;
        assert_eq!(
            refused.error.as_ref().map(|e| e.code.as_str()),
            Some("tee_approver_not_in_group"),
            "{refused:?}"
        );
        let signed = sign(&client, &root_id, &carol).await;
        assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
        // The first attempt never completed afterwards either.
        let attempt = client.request(&attempt.id).await.unwrap();
        assert_ne!(attempt.status, RequestStatus::Completed, "{attempt:?}");
    });
}
