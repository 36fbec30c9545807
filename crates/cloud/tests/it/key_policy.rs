//! Changing a wallet's approver group (issue 12, item 3): only a quorum of the group in
//! force changes it. Attacks first: another group's quorum (genuine admins of the Admin CA,
//! outside the group) is refused by the server by name and, sent straight to the TEE, by
//! the TEE; a proposal overtaken by another change never applies; a removed admin's approval
//! of a signature no longer counts.

use custos_cloud_api::*;
use custos_test_kit::governance::admin_keys;
use custos_test_kit::*;
use custos_wire::approval::Action;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{Request, RequestMeta, TeeError};

use crate::groups::{mallory, not_in_group, tee_approval};

/// A wallet of dc1 approved by alice and bob (2 of them): its root id and the node
/// holding it.
async fn wallet(s: &TestServer) -> (String, String) {
    let c = &s.client;
    let view = c.create_wallet(&s.wallet_body("dc1", 2, 2)).await.unwrap();
    let message = message_of(&view);
    c.approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let done = c
        .approve(&view.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    let Some(RequestResult::Wallet(w)) = done.result else {
        panic!("{done:?}")
    };
    (w.root_id, done.target_node.expect("the executing node"))
}

/// The new group `names` with `quorum`, as a body.
fn body(s: &TestServer, names: &[&str], quorum: u8) -> KeyPolicyBody {
    keys_body(&admin_keys(&s.pki, names), quorum)
}

/// The new group of admin key fingerprints `keys` with `quorum`, as a body.
fn keys_body(keys: &[[u8; 32]], quorum: u8) -> KeyPolicyBody {
    KeyPolicyBody {
        rules: None,
        group: keys.iter().map(hex::encode).collect(),
        quorum,
        request_id: None,
        expires_at: None,
    }
}

/// A sign request on `root_id` approved by the admins `by` (by index), one by one.
async fn sign(s: &TestServer, root_id: &str, by: &[usize]) -> Result<RequestView, ClientError> {
    let c = &s.client;
    let view = c
        .sign(&SignRequestBody {
            root_id: root_id.into(),
            path: "m/0".into(),
            digest: "11".repeat(32),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await?;
    let message = message_of(&view);
    let mut last = view;
    for i in by {
        last = c.approve(&last.id, &s.pki.approve(*i, &message)).await?;
    }
    Ok(last)
}

#[tokio::test]
async fn only_a_quorum_of_the_group_in_force_changes_it() {
    let s = TestServer::start().await;
    let c = &s.client;
    let mallory = mallory(&s);
    let carol = &s.pki.admins[2];
    let (root_id, holder) = wallet(&s).await;
    let first = c.wallet_policy(&root_id).await.unwrap();
    let in_force =
        custos_cloud_api::approval::new_wallet_policy(admin_keys(&s.pki, &["alice", "bob"]), 2);
    assert_eq!(
        (first.version, &first.group, first.quorum),
        (1, &s.group_of(2), 2)
    );
    assert_eq!(first.hash, hex::encode(in_force.hash()));

    // Carol and mallory propose themselves: the view shows both groups; the server refuses
    // each of them by name, records nothing.
    let coup = c
        .set_wallet_policy(
            &root_id,
            &keys_body(&[carol.key_fingerprint(), mallory.key_fingerprint()], 2),
        )
        .await
        .unwrap();
    assert_eq!(coup.kind, RequestKind::SetKeyPolicy);
    assert_eq!(coup.quorum, 2);
    let terms = coup.key_policy.clone().expect("the change is shown");
    assert_eq!(terms.current_group, s.group_of(2));
    assert_eq!(
        (terms.version, terms.prev.as_str()),
        (2, first.hash.as_str())
    );
    let described = review::describe(&coup);
    for fp in terms.current_group.iter().chain(&terms.group) {
        assert!(described.contains(fp.as_str()), "{described} lacks {fp}");
    }
    assert!(described.contains("from 2 of"), "{described}");
    let message = message_of(&coup);
    for admin in [carol, &mallory] {
        let approval = approval::sign_approval(admin, &message).unwrap();
        not_in_group(c.approve(&coup.id, &approval).await.unwrap_err(), admin);
    }
    assert!(c.request(&coup.id).await.unwrap().approvals.is_empty());

    // The TEE decides anyway: the same change approved by carol and mallory, sent to the
    // holder's TEE, is refused naming an outsider.
    let meta = RequestMeta {
        request_id: rand::random(),
        expires_at: now() + 600,
    };
    let key_id = hex::decode(&root_id).unwrap();
    let mut outsiders = vec![carol.key_fingerprint(), mallory.key_fingerprint()];
    outsiders.sort();
    let stolen = KeyPolicy {
        version: 2,
        group: outsiders,
        quorum: 2,
        rules: vec![],
    };
    let tee_message = Action::SetKeyPolicy {
        key_id: &key_id,
        prev: &in_force.hash(),
        policy: &stolen,
    }
    .message("dc1", &meta);
    let request = Request::SetKeyPolicy {
        meta,
        key_id: key_id.clone(),
        prev: in_force.hash(),
        policy: stolen,
        approvals: vec![
            tee_approval(carol, &tee_message),
            tee_approval(&mallory, &tee_message),
        ],
    };
    match call_core(
        &mut s.gateway.node("dc1", &holder).core.lock().unwrap(),
        &request,
    ) {
        Err(TeeError::ApproverNotInGroup {
            key_fingerprint, ..
        }) => {
            assert!([carol.key_fingerprint(), mallory.key_fingerprint()].contains(&key_fingerprint))
        }
        other => panic!("expected approver_not_in_group, got {other:?}"),
    }
    assert_eq!(c.wallet_policy(&root_id).await.unwrap(), first);

    // Two proposals from the same policy: the group in force (alice and bob) approves the
    // one that drops alice for carol, 1 of them; the other, overtaken, is refused when
    // submitted.
    let change = c
        .set_wallet_policy(&root_id, &body(&s, &["carol", "bob"], 1))
        .await
        .unwrap();
    let stale = c
        .set_wallet_policy(&root_id, &body(&s, &["alice", "carol"], 1))
        .await
        .unwrap();
    let message = message_of(&change);
    c.approve(&change.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let done = c
        .approve(&change.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let after = c.wallet_policy(&root_id).await.unwrap();
    assert_eq!(
        (after.version, &after.group, after.quorum),
        (2, &done.key_policy.unwrap().group, 1)
    );
    let mut new_group = admin_keys(&s.pki, &["bob", "carol"]);
    new_group.sort();
    assert_eq!(
        after.group,
        new_group.iter().map(hex::encode).collect::<Vec<_>>()
    );
    // Later signatures wait for the new quorum.
    assert_eq!(c.wallet(&root_id).await.unwrap().quorum, 1);
    let message = message_of(&stale);
    c.approve(&stale.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let refused = c
        .approve(&stale.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
    assert_eq!(refused.error.unwrap().code, "tee_policy_conflict");
    assert_eq!(c.wallet_policy(&root_id).await.unwrap().version, 2);

    // Alice, removed, no longer counts for a signature; carol, of the new group, signs.
    let without = sign(&s, &root_id, &[0]).await.unwrap();
    assert_eq!(without.status, RequestStatus::Refused, "{without:?}");
    assert_eq!(without.error.unwrap().code, "tee_approver_not_in_group");
    let signed = sign(&s, &root_id, &[2]).await.unwrap();
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_new_group_is_checked_before_anything_is_recorded() {
    let s = TestServer::start().await;
    let c = &s.client;
    let (root_id, _) = wallet(&s).await;
    let bad = [
        body(&s, &["alice"], 2),
        KeyPolicyBody {
            rules: None,
            group: vec!["00".repeat(32); 33],
            ..body(&s, &["alice"], 1)
        },
        KeyPolicyBody {
            rules: None,
            group: vec![],
            ..body(&s, &["alice"], 1)
        },
        // The group and quorum in force: nothing to change.
        body(&s, &["alice", "bob"], 2),
    ];
    for b in &bad {
        let e = c.set_wallet_policy(&root_id, b).await.unwrap_err();
        assert_eq!(code(e), "invalid_group", "{b:?}");
    }
    let e = c
        .set_wallet_policy(&"02".repeat(33), &body(&s, &["alice"], 1))
        .await
        .unwrap_err();
    assert_eq!(code(e), "unknown_wallet");
    assert_eq!(
        code(c.wallet_policy(&"03".repeat(33)).await.unwrap_err()),
        "unknown_wallet"
    );
    s.stop().await;
}
