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

#[test]
fn a_wallet_group_changed_through_rest_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(
        &exe(),
        dir.path(),
        &DeploymentOptions {
            clusters: vec![(DC.into(), LinkTransport::Tcp)],
            nodes: 2,
            admins: ["alice", "bob", "carol"].map(String::from).to_vec(),
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            cloud_db_url: None,
        },
    )
    .unwrap();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        let mut link = d.cluster(DC).unwrap().link_client().await.unwrap();
        let wallet = client
            .create_wallet(&CreateWalletBody {
                cluster: DC.into(),
                quorum: 1,
                group: vec![fp(&alice), fp(&bob)],
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let wallet = approve(&client, &wallet, &alice).await.unwrap();
        assert_eq!(wallet.status, RequestStatus::Completed, "{wallet:?}");
        let root_id = wallet.root_id.clone().unwrap();
        let key = hex::decode(&root_id).unwrap();
        // Both nodes hold the wallet (by sync) before its group changes.
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in NODES {
            while policy_on(&mut link, &key, node).await.is_none() {
                assert!(Instant::now() < deadline, "{node} never got the wallet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }

        // Alice is replaced by carol, proposed with `custos wallet policy`.
        let args = |show: bool| PolicyArgs {
            api: d.api_url.clone(),
            token: d.api_token.clone(),
            api_root_ca: None,
            root: root_id.clone(),
            show,
            group: if show {
                vec![]
            } else {
                vec![fp(&carol), fp(&bob)]
            },
            group_certs: vec![],
            quorum: (!show).then_some(1),
        };
        let mut out = Vec::new();
        let PolicyOutcome::Proposed(view) = run(&args(false), &mut out).await.unwrap() else {
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
        let PolicyOutcome::Shown(shown) = run(&args(true), &mut out).await.unwrap() else {
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
