//! Rejecting a pending request (the console's "Reject" and `POST
//! /v1/requests/{id}/rejections`, issue 17), attacker first: the TEE
//! never sees a rejection, so this server alone decides who may refuse a request, and
//! refuses, by name and with nothing recorded, an admin outside the key's group, an
//! approval presented as a rejection, and a rejection of a request already decided. A
//! group member's rejection refuses the request (`rejected_by_admin`) and nothing executes.

use std::sync::Arc;

use custos_cloud::gateway::Gateway;
use custos_cloud::Cloud;
use custos_cloud_api::approval::rejection_message;
use custos_cloud_api::*;
use custos_test_kit::*;

#[tokio::test]
async fn only_a_member_of_the_keys_group_rejects_and_nothing_executes() {
    let s = TestServer::start().await;
    let c = &s.client;
    // Alice's and bob's wallet, both needed.
    let root_id = s.created_wallet(&s.wallet_body("dc1", 2, 2), 2).await;
    let request = c
        .sign(&SignRequestBody {
            root_id,
            path: "m/0/1".into(),
            digest: hex::encode([0x42u8; 32]),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let message = message_of(&request);
    let rejection = rejection_message(&message);
    // Through the API (`POST /v1/requests/{id}/rejections`), as the console's service call.

    // Carol is a genuine admin, but not of this wallet's group (a raw digest's request
    // names no group: the key's policy in force, read from a TEE, says who approves).
    let e = c
        .reject(&request.id, &s.pki.approve(2, &rejection))
        .await
        .unwrap_err();
    assert_eq!(code(e), "approver_not_in_group");
    // Alice's approval is no rejection (its domain differs): the signature does not verify.
    let e = c
        .reject(&request.id, &s.pki.approve(0, &message))
        .await
        .unwrap_err();
    assert_eq!(code(e), "approval_invalid");
    // Another tenant's view of the request: it does not exist.
    let e = s
        .client_as("other")
        .reject(&request.id, &s.pki.approve(1, &rejection))
        .await
        .unwrap_err();
    assert_eq!(code(e), "unknown_request");
    // Creating requests is not approving them, nor rejecting them.
    let e = s
        .client_as("requester")
        .reject(&request.id, &s.pki.approve(1, &rejection))
        .await
        .unwrap_err();
    assert_eq!(code(e), "scope_missing");
    let still = c.request(&request.id).await.unwrap();
    assert_eq!(still.status, RequestStatus::PendingApproval);

    c.approve(&request.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    let refused = c
        .reject(&request.id, &s.pki.approve(1, &rejection))
        .await
        .unwrap();
    assert_eq!(refused.status, RequestStatus::Refused);
    let error = refused.error.unwrap();
    assert_eq!(error.code, "rejected_by_admin");
    assert!(error.message.contains("bob"), "{}", error.message);
    assert!(refused.events.iter().any(|e| e.event == "rejected"));
    // Decided: neither an approval nor a second rejection moves it.
    let e = c
        .approve(&request.id, &s.pki.approve(1, &message))
        .await
        .unwrap_err();
    assert_eq!(code(e), "not_pending");
    let e = c
        .reject(&request.id, &s.pki.approve(0, &rejection))
        .await
        .unwrap_err();
    assert_eq!(code(e), "not_pending");
    assert!(s.gateway.executed("Sign").is_empty(), "nothing was signed");
    s.stop().await;
}

/// A transaction request records the group in force when it was made; the TEE counts the
/// one in force when it executes. An admin the group has dropped since rejects nothing.
#[tokio::test]
async fn an_admin_dropped_from_the_group_since_the_request_rejects_nothing() {
    let s = TestServer::start().await;
    let c = &s.client;
    let mut body = s.wallet_body("dc1", 1, 2);
    body.rules = Some(PolicyRules::per_transaction_limit(
        "bitcoin:regtest",
        "100000",
    ));
    let root_id = s.created_wallet(&body, 1).await;
    let xpub = c.wallet(&root_id).await.unwrap().xpub;
    let psbt = custos_tx::synthetic::Spend::from(xpub.as_str())
        .input(custos_tx::InputKind::P2wpkh, &[0, 1], 80_000)
        .pay(bitcoin::ScriptBuf::new_op_return([1u8; 4]), 79_000)
        .psbt();
    let request = c
        .sign_psbt(&SignPsbtBody::new(&root_id, "regtest", &psbt.serialize()))
        .await
        .unwrap();
    // Alice alone now.
    let change = c
        .set_wallet_policy(
            &root_id,
            &KeyPolicyBody {
                rules: body.rules.clone(),
                group: s.group_of(1),
                quorum: 1,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let done = c
        .approve(&change.id, &s.pki.approve(0, &message_of(&change)))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

    let gw: Arc<dyn Gateway> = s.gateway.clone();
    let cloud = Cloud::open(&s.config, gw).await.unwrap();
    let rejection = rejection_message(&message_of(&request));
    let e = cloud
        .reject("default", &request.id, s.pki.approve(1, &rejection))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::ApproverNotInGroup,
        "bob was dropped: {e:?}"
    );
    assert_eq!(
        cloud.approvers("default", &request.id).await.unwrap(),
        Some(s.group_of(1))
    );
    let refused = cloud
        .reject("default", &request.id, s.pki.approve(0, &rejection))
        .await
        .unwrap();
    assert_eq!(refused.status, RequestStatus::Refused);
    cloud.store().close().await;
    s.stop().await;
}
