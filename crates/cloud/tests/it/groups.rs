//! Wallet creations name the new key's approver group and the one node that executes them
//! (issue 12, items 3 and 5). Attacks first: an admin outside the group, however genuine
//! its certificate, never counts (the server refuses it early, the TEE decides), and the
//! approvals name one node only.

use std::sync::Arc;

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::NetworkKind;
use custos_cloud_api::approval::{new_wallet_policy, sign_approval};
use custos_cloud_api::client::ClientError;
use custos_cloud_api::*;
use custos_pki::{AdminFolder, AdminSigner};
use custos_test_kit::governance::{admin_keys, member};
use custos_test_kit::*;
use custos_wire::approval::{Action, Approval};
use custos_wire::protocol::{KeyInfo, Origin, Request, RequestMeta, Response, TeeError};

/// A genuine admin of the Admin CA for a new subject, with a key of its own, enrolled now.
pub(crate) fn mallory(s: &TestServer) -> AdminSigner {
    AdminFolder::new(s.pki.path().join("admins").join("mallory"))
        .enroll("mallory", &s.pki.pki)
        .unwrap()
}

/// The error of a refused call must be `approver_not_in_group`, naming `admin`'s key.
pub(crate) fn not_in_group(e: ClientError, admin: &AdminSigner) {
    match e {
        ClientError::Api { code, message, .. } => {
            assert_eq!(code, "approver_not_in_group", "{message}");
            let fp = hex::encode(admin.key_fingerprint());
            assert!(message.contains(&fp), "{message} does not name {fp}");
        }
        other => panic!("expected an API error, got {other}"),
    }
}

/// The TEE form of `signer`'s approval of `message`.
pub(crate) fn tee_approval(signer: &AdminSigner, message: &[u8]) -> Approval {
    Approval::by_key_file(signer, message).unwrap()
}

#[tokio::test]
async fn an_admin_outside_the_group_never_counts() {
    let s = TestServer::start().await;
    let c = &s.client;
    let mallory = mallory(&s);
    let carol = &s.pki.admins[2];

    // Inline: refused before anything is recorded.
    let (mut body, message) = s.presigned_wallet("dc1", 1, 2, "node1");
    body.approvals = vec![sign_approval(&mallory, &message).unwrap()];
    not_in_group(c.create_wallet(&body).await.unwrap_err(), &mallory);
    let id = body.request_id.clone().unwrap();
    assert_eq!(code(c.request(&id).await.unwrap_err()), "unknown_request");

    // One by one: carol (an admin, not of this group) and mallory are refused by name and
    // recorded nowhere; alice and bob, the group, create the wallet.
    let view = c.create_wallet(&s.wallet_body("dc1", 2, 2)).await.unwrap();
    assert_eq!(view.group, Some(s.group_of(2)));
    let node = view.target_node.clone().expect("an executing node");
    assert_eq!(view.executor, Some(hex::encode(s.executor("dc1", &node))));
    let described = review::describe(&view);
    assert!(described.contains(&node), "{described}");
    assert!(described.contains(&s.group_of(2)[1]), "{described}");
    let message = message_of(&view);
    for admin in [carol, &mallory] {
        let approval = sign_approval(admin, &message).unwrap();
        not_in_group(c.approve(&view.id, &approval).await.unwrap_err(), admin);
    }
    assert!(c.request(&view.id).await.unwrap().approvals.is_empty());
    c.approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let done = c
        .approve(&view.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(s.gateway.executed("CreateGroupWallet").len(), 1);

    // The TEE decides, whatever the cloud server checks: the group's own message approved by
    // alice with carol, or with mallory, is refused naming the outsider's key.
    let meta = RequestMeta {
        request_id: rand::random(),
        expires_at: now() + 600,
    };
    let executor = s.executor("dc1", "node1");
    let policy = new_wallet_policy(admin_keys(&s.pki, &["alice", "bob"]), 2);
    let message = Action::CreateGroupWallet {
        policy: &policy,
        executor: &executor,
    }
    .message("dc1", &meta);
    let alice = &s.pki.admins[0];
    for outsider in [carol, &mallory] {
        let request = Request::CreateGroupWallet {
            meta: meta.clone(),
            policy: policy.clone(),
            executor,
            approvals: vec![
                tee_approval(alice, &message),
                tee_approval(outsider, &message),
            ],
        };
        let outcome = call_core(
            &mut s.gateway.node("dc1", "node1").core.lock().unwrap(),
            &request,
        );
        match outcome {
            Err(TeeError::ApproverNotInGroup {
                key_fingerprint, ..
            }) => assert_eq!(key_fingerprint, outsider.key_fingerprint()),
            other => panic!("expected approver_not_in_group, got {other:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn the_approvals_name_one_node_and_creations_spread_over_the_nodes() {
    let s = TestServer::start().await;
    let c = &s.client;
    // Round-robin over dc1's two serving nodes.
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let view = c.create_wallet(&s.wallet_body("dc1", 1, 1)).await.unwrap();
        nodes.push(view.target_node.unwrap());
    }
    nodes.sort();
    assert_eq!(nodes, ["node1", "node1", "node2", "node2"]);

    // A caller pre-signing names the executor by its device key; an unknown one is refused.
    let (mut body, message) = s.presigned_wallet("dc1", 1, 1, "node2");
    body.approvals = vec![s.pki.approve(0, &message)];
    let mut stranger = body.clone();
    stranger.executor = Some("ab".repeat(32));
    assert_eq!(
        code(c.create_wallet(&stranger).await.unwrap_err()),
        "unknown_executor"
    );
    let done = c.create_wallet(&body).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.target_node.as_deref(), Some("node2"));

    // The same approvals sent to the other node's TEE make nothing there (not_executor).
    let Some(RequestResult::Wallet(w)) = &done.result else {
        panic!("{done:?}")
    };
    let meta = RequestMeta {
        request_id: hex::decode(&done.id).unwrap().try_into().unwrap(),
        expires_at: done.expires_at,
    };
    let request = Request::CreateGroupWallet {
        meta,
        policy: new_wallet_policy(admin_keys(&s.pki, &["alice"]), 1),
        executor: s.executor("dc1", "node2"),
        approvals: vec![tee_approval(&s.pki.admins[0], &message)],
    };
    let on = |node: &str| {
        call_core(
            &mut s.gateway.node("dc1", node).core.lock().unwrap(),
            &request,
        )
    };
    assert!(matches!(on("node1"), Err(TeeError::NotExecutor { .. })));
    match on("node2") {
        Ok(Response::Wallet(info)) => assert_eq!(hex::encode(info.key_id), w.root_id),
        other => panic!("the executor answers the wallet it made, got {other:?}"),
    }

    // Group and quorum are checked up front.
    let mut bad = s.wallet_body("dc1", 3, 2);
    assert_eq!(
        code(c.create_wallet(&bad).await.unwrap_err()),
        "invalid_group"
    );
    bad = s.wallet_body("dc1", 1, 2);
    bad.group[1] = bad.group[0].clone();
    assert_eq!(
        code(c.create_wallet(&bad).await.unwrap_err()),
        "invalid_group"
    );
    bad.group = vec!["00".repeat(32); 33];
    assert_eq!(
        code(c.create_wallet(&bad).await.unwrap_err()),
        "invalid_group"
    );
    bad.group = vec![];
    assert_eq!(
        code(c.create_wallet(&bad).await.unwrap_err()),
        "invalid_group"
    );
    s.stop().await;
}

/// Issue 12's acceptance: a creation answered under the executor's node name by another
/// device key — a genuine Cluster-CA certificate on a key made outside any TEE, whose
/// answers a compromised bridge relays, chain and all — is refused naming both keys, the
/// request does not complete and the wallet whose seed the attacker chose is stored nowhere.
#[tokio::test]
async fn an_answer_signed_by_another_key_under_the_executors_name_is_refused() {
    let s = TestServer::start().await;
    let c = &s.client;
    let before = c.wallets().await.unwrap().wallets;
    let view = c.create_wallet(&s.wallet_body("dc1", 1, 1)).await.unwrap();
    let node = view.target_node.clone().expect("an executing node");
    let executor = s.executor("dc1", &node);
    assert_eq!(view.executor, Some(hex::encode(executor)));

    // The attacker's seed, and a key of its own certified by dc1's CA for the node's name.
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NetworkKind::Main, &[7u8; 32]).unwrap();
    let xpub = Xpub::from_priv(&secp, &master);
    let chosen = KeyInfo {
        key_id: xpub.public_key.serialize().to_vec(),
        xpub: xpub.to_string(),
        quorum: 1,
        origin: Origin::Generated,
    };
    let impostor = s.pki.scripted_tee("dc1", &node);
    let impostor_key = member(&s.pki, &impostor.chain).key_fingerprint;
    assert_ne!(impostor_key, executor);
    let answer = chosen.clone();
    *s.gateway.impostor.lock().unwrap() = Some(Impostor {
        cluster: "dc1".into(),
        node: node.clone(),
        tee: impostor,
        script: Arc::new(move |_, _, _, request| match request {
            Request::CreateGroupWallet { .. } => Ok(Response::Wallet(answer.clone())),
            other => Err(TeeError::InvalidRequest(format!("impostor: {other:?}"))),
        }),
    });

    let approved = c
        .approve(&view.id, &s.pki.approve(0, &message_of(&view)))
        .await;
    assert_eq!(s.gateway.executed("CreateGroupWallet").len(), 1);
    let stored = c.wallets().await.unwrap().wallets;
    assert_eq!(
        stored.len(),
        before.len(),
        "the impostor's wallet was stored: {stored:?} (approval answered {approved:?})"
    );
    let root_id = hex::encode(&chosen.key_id);
    assert_eq!(
        code(c.wallet(&root_id).await.unwrap_err()),
        "unknown_wallet"
    );
    match approved {
        Err(ClientError::Api { code, message, .. }) => {
            assert_eq!(code, "executor_key_mismatch", "{message}");
            for fp in [executor, impostor_key] {
                let fp = hex::encode(fp);
                assert!(message.contains(&fp), "{message} does not name {fp}");
            }
        }
        other => panic!("expected executor_key_mismatch, got {other:?}"),
    }
    let after = c.request(&view.id).await.unwrap();
    assert_eq!(after.status, RequestStatus::Failed, "{after:?}");
    assert!(after.result.is_none(), "{after:?}");
    assert_eq!(
        after.error.as_ref().map(|e| e.code.as_str()),
        Some("executor_key_mismatch")
    );
    s.stop().await;
}
