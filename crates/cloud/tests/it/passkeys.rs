//! Passkey approvals through the API (issue 17, step P2): the console's assertion travels
//! as the approval's `webauthn` part, the server checks it as the TEE does (refusing a
//! phishing site's by name, recording nothing), stores it, and the TEE checks it again
//! before it signs.

use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, Secp256k1};
use custos_cloud_api::*;
use custos_test_kit::passkey::{Made, ORIGIN};
use custos_test_kit::*;

#[tokio::test]
async fn a_passkey_approval_is_checked_by_the_server_stored_and_signed_by_the_tee() {
    let s = TestServer::start().await;
    let c = &s.client;
    let dave = s.pki.enroll_passkey_admin("dave");
    // A wallet of alice and dave, one of them needed; alice creates it with her key file.
    let mut body = s.wallet_body("dc1", 1, 1);
    body.group.push(hex::encode(dave.passkey.fp()));
    body.group.sort();
    let root_id = s.created_wallet(&body, 1).await;

    let digest = [0x42u8; 32];
    let request = c
        .sign(&SignRequestBody {
            root_id,
            path: "m/0/1".into(),
            digest: hex::encode(digest),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let message = message_of(&request);

    // A phishing site relayed the challenge: the browser wrote its own origin.
    let mut phished = Made::honest(ORIGIN, &message, dave.passkey.next_counter());
    phished.origin = "https://console.custos.test.evil.example".into();
    match c
        .approve(&request.id, &ApprovalBody::from(&dave.approval(&phished)))
        .await
    {
        Err(custos_cloud_api::ClientError::Api { code, message, .. }) => {
            assert_eq!(code, "approval_invalid", "{message}");
            assert!(message.contains("wrong_origin"), "{message}");
        }
        other => panic!("a phished assertion was taken: {other:?}"),
    }
    // A plain signature by the passkey admin's certificate is no approval either.
    let mut plain = ApprovalBody::from(&dave.approve(&message));
    plain.webauthn = None;
    let e = c.approve(&request.id, &plain).await.unwrap_err();
    assert!(e.to_string().contains("assertion_missing"), "{e}");
    assert!(c.request(&request.id).await.unwrap().approvals.is_empty());

    let signed = c
        .approve(&request.id, &ApprovalBody::from(&dave.approve(&message)))
        .await
        .unwrap();
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    let Some(RequestResult::Signature(sig)) = &signed.result else {
        panic!("{signed:?}")
    };
    let pk = PublicKey::from_slice(&hex::decode(&sig.public_key).unwrap()).unwrap();
    let der = Signature::from_der(&hex::decode(&sig.signature_der).unwrap()).unwrap();
    Secp256k1::verification_only()
        .verify_ecdsa(&Message::from_digest(digest), &der, &pk)
        .unwrap();
    assert_eq!(s.gateway.executed("Sign").len(), 1);
    s.stop().await;
}
