//! The REST API end to end on 127.0.0.1: real HTTP, the typed client, the real database,
//! real TEE cores behind a fake relay/link/bridge.

use std::str::FromStr;
use std::sync::atomic::Ordering;

use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::{ecdsa::Signature, Message, PublicKey, Secp256k1};
use custos_cloud::config::RelayToken;
use custos_cloud_api::client::ClientError;
use custos_cloud_api::*;
use custos_wire::approval::Action;
use custos_wire::protocol::RequestMeta;
use serde_json::{json, Value};

use custos_test_kit::*;

const VECTOR2_SEED: &str = "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542";
const VECTOR2_M: &str = "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB";
const VECTOR2_M0: &str = "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH";
const MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

/// A wallet on `cluster` with `quorum` of the group alice, bob, carol, created on its node1
/// with inline approvals by the first `quorum` of them (one call).
pub(crate) async fn wallet(s: &TestServer, cluster: &str, quorum: u8) -> WalletView {
    let (mut body, message) = s.presigned_wallet(cluster, quorum, 3, "node1");
    body.approvals = (0..quorum as usize)
        .map(|i| s.pki.approve(i, &message))
        .collect();
    let view = s.client.create_wallet(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::Wallet(w)) = &view.result else {
        panic!("no wallet result: {view:?}")
    };
    s.client.wallet(&w.root_id).await.unwrap()
}

async fn get_json(s: &TestServer, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = s.raw().get(s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_raw(
    s: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
    content_type: &str,
) -> (u16, Value) {
    let r = s
        .raw()
        .post(s.url(path))
        .bearer_auth(&s.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// Every `$ref` in the document points at something that exists.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r.strip_prefix('#').expect("local reference");
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

/// The routes the server must serve (a removed route fails here, a new undocumented one
/// cannot exist since routes are registered from their documentation).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/wallets"),
    ("get", "/v1/wallets"),
    ("post", "/v1/wallets/import"),
    ("get", "/v1/wallets/{root_id}"),
    ("get", "/v1/wallets/{root_id}/derive"),
    ("get", "/v1/wallets/{root_id}/xpub"),
    ("get", "/v1/wallets/{root_id}/policy"),
    ("put", "/v1/wallets/{root_id}/policy"),
    ("post", "/v1/sign-requests"),
    ("post", "/v1/psbt-requests"),
    ("post", "/v1/eth-requests"),
    ("get", "/v1/requests"),
    ("get", "/v1/requests/{id}"),
    ("post", "/v1/requests/{id}/approvals"),
    ("post", "/v1/requests/{id}/rejections"),
    ("post", "/v1/requests/{id}/retry"),
    ("get", "/v1/clusters"),
    ("get", "/v1/clusters/{name}"),
    ("post", "/v1/clusters/{name}/audits"),
    ("get", "/v1/clusters/{name}/audits/latest"),
    ("post", "/v1/threshold/keys/import"),
    ("post", "/v1/threshold/keys"),
    ("get", "/v1/threshold/keys"),
    ("get", "/v1/threshold/keys/{key_id}"),
    ("post", "/v1/threshold/keys/{key_id}/audit"),
    ("get", "/v1/threshold/keys/{key_id}/audit"),
    ("post", "/v1/threshold/sign"),
    ("post", "/v1/threshold/keys/{key_id}/presignatures"),
    ("get", "/v1/threshold/keys/{key_id}/presignatures"),
    ("get", "/v1/threshold/keys/{key_id}/policy"),
    ("put", "/v1/threshold/keys/{key_id}/policy"),
    ("post", "/v1/clusters/{name}/genesis"),
    ("post", "/v1/clusters/{name}/members"),
    ("post", "/v1/clusters/{name}/members/tickets"),
    ("get", "/v1/clusters/{name}/members"),
    ("post", "/v1/clusters/{name}/members/{node}/remove"),
    ("post", "/v1/clusters/{name}/revocations"),
    ("post", "/v1/clusters/{name}/governors"),
    ("get", "/v1/clusters/{name}/governance"),
    ("get", "/openapi.json"),
    ("get", "/.well-known/openapi.json"),
];

#[tokio::test]
async fn openapi_document_is_valid_and_lists_every_route() {
    let s = TestServer::start().await;
    let (status, doc) = get_json(&s, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let (_, again) = get_json(&s, "/.well-known/openapi.json", None).await;
    assert_eq!(doc, again);
    let text = serde_json::to_string(&doc).unwrap();
    let spec = oas3::from_json(&text).expect("OpenAPI 3.1 document parses");
    spec.validate_version().expect("supported OpenAPI version");
    check_refs(&doc, &doc);
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    assert!(doc["components"]["schemas"]["ApiErrorBody"].is_object());
    let description = doc["info"]["description"].as_str().unwrap();
    for c in [
        "unauthorized",
        "invalid_digest",
        "hardened_path",
        "approval_invalid",
    ] {
        assert!(description.contains(c), "{c} not described");
    }

    let mut documented: Vec<(String, String)> = spec
        .operations()
        .map(|(path, method, _)| (method.as_str().to_ascii_lowercase(), path))
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Every documented operation is served: protected ones answer 401 without a token
    // (not 404/405), public ones 200. Error responses are documented with the error schema.
    for (method, path) in &documented {
        let url = s.url(
            &path
                .replace("{root_id}", &"02".repeat(33))
                .replace("{key_id}", &"03".repeat(33))
                .replace("{id}", &"00".repeat(16))
                .replace("{name}", "dc1"),
        );
        let req = match method.as_str() {
            "get" => s.raw().get(url),
            "post" => s.raw().post(url).json(&json!({})),
            "put" => s.raw().put(url).json(&json!({})),
            m => panic!("unexpected method {m}"),
        };
        let r = req.send().await.unwrap();
        let op = &doc["paths"][path][method];
        if path.contains("openapi") {
            assert_eq!(r.status().as_u16(), 200, "{method} {path}");
            assert_eq!(op["security"], json!([{}]), "{path} must not need a token");
        } else {
            assert_eq!(r.status().as_u16(), 401, "{method} {path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(err_code(&body), "unauthorized");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} lacks 401"
            );
        }
    }
    let (status, body) = get_json(&s, "/v1/nothing-here", Some(&s.token)).await;
    assert_eq!((status, err_code(&body)), (404, "not_found"));
    let r = s
        .raw()
        .delete(s.url("/v1/wallets"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    s.stop().await;
}

#[tokio::test]
async fn missing_or_unknown_token_is_unauthorized() {
    let s = TestServer::start().await;
    for token in [None, Some("not-a-token"), Some("")] {
        let (status, body) = get_json(&s, "/v1/wallets", token).await;
        assert_eq!((status, err_code(&body)), (401, "unauthorized"));
    }
    let r = s
        .raw()
        .get(s.url("/v1/wallets"))
        .header("authorization", format!("Basic {}", s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let bad = custos_cloud_api::client::CloudClient::new(&s.url(""), "wrong").unwrap();
    assert_eq!(code(bad.wallets().await.unwrap_err()), "unauthorized");
    assert!(s.client.wallets().await.unwrap().wallets.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_refused_on_every_post_route() {
    let s = TestServer::start().await;
    let id = "00".repeat(16);
    for path in [
        "/v1/wallets".to_string(),
        "/v1/wallets/import".to_string(),
        "/v1/sign-requests".to_string(),
        format!("/v1/requests/{id}/approvals"),
    ] {
        let (status, body) = post_raw(&s, &path, "{\"cluster\":", "application/json").await;
        assert_eq!((status, err_code(&body)), (400, "malformed_json"), "{path}");
        let (status, body) = post_raw(&s, &path, "{}", "application/json").await;
        assert_eq!(
            (status, err_code(&body)),
            (400, "malformed_json"),
            "{path} missing fields"
        );
        let (status, body) = post_raw(&s, &path, "[1,2]", "application/json").await;
        assert_eq!((status, err_code(&body)), (400, "malformed_json"), "{path}");
        let (status, body) = post_raw(&s, &path, "{}", "text/plain").await;
        assert_eq!(
            (status, err_code(&body)),
            (415, "unsupported_media_type"),
            "{path}"
        );
        let huge = format!(
            "{{\"cluster\":\"{}\"}}",
            "a".repeat(custos_cloud::http::MAX_BODY)
        );
        let (status, body) = post_raw(&s, &path, huge, "application/json").await;
        assert_eq!((status, err_code(&body)), (413, "body_too_large"), "{path}");
    }
    // Unknown fields are refused rather than silently ignored.
    let (status, body) = post_raw(
        &s,
        "/v1/wallets",
        r#"{"cluster":"dc1","quorum":1,"quorom":2}"#,
        "application/json",
    )
    .await;
    assert_eq!((status, err_code(&body)), (400, "malformed_json"));
    // Wrong types.
    let (status, body) = post_raw(
        &s,
        "/v1/wallets",
        r#"{"cluster":"dc1","quorum":"two"}"#,
        "application/json",
    )
    .await;
    assert_eq!((status, err_code(&body)), (400, "malformed_json"));
    s.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_stable_error_codes() {
    let s = TestServer::start().await;
    let c = &s.client;
    let w = wallet(&s, "dc1", 1).await;
    let sign = |root_id: &str, path: &str, digest: &str| SignRequestBody {
        root_id: root_id.into(),
        path: path.into(),
        digest: digest.into(),
        request_id: None,
        expires_at: None,
        approvals: vec![],
    };
    let d = "ab".repeat(32);
    assert_eq!(
        code(
            c.sign(&sign(&w.root_id, "m/0", &"ab".repeat(31)))
                .await
                .unwrap_err()
        ),
        "invalid_digest"
    );
    assert_eq!(
        code(
            c.sign(&sign(&w.root_id, "m/0", &"zz".repeat(32)))
                .await
                .unwrap_err()
        ),
        "invalid_digest"
    );
    assert_eq!(
        code(c.sign(&sign(&w.root_id, "m/x", &d)).await.unwrap_err()),
        "invalid_path"
    );
    assert_eq!(
        code(c.sign(&sign(&w.root_id, "0/1", &d)).await.unwrap_err()),
        "invalid_path"
    );
    assert_eq!(
        code(
            c.sign(&sign(&"02".repeat(33), "m/0", &d))
                .await
                .unwrap_err()
        ),
        "unknown_wallet"
    );
    assert_eq!(
        code(c.sign(&sign("02abcd", "m/0", &d)).await.unwrap_err()),
        "invalid_root_id"
    );
    let mut body = sign(&w.root_id, "m/0", &d);
    body.expires_at = Some(1);
    assert_eq!(code(c.sign(&body).await.unwrap_err()), "invalid_expiry");
    body.expires_at = Some(now() + 8 * 24 * 3600);
    assert_eq!(code(c.sign(&body).await.unwrap_err()), "invalid_expiry");
    let mut body = sign(&w.root_id, "m/0", &d);
    body.request_id = Some("xyz".into());
    assert_eq!(code(c.sign(&body).await.unwrap_err()), "invalid_request_id");
    let mut body = sign(&w.root_id, "m/0", &d);
    body.approvals = vec![s.pki.approve(0, b"x"); 17];
    assert_eq!(code(c.sign(&body).await.unwrap_err()), "too_many_approvals");

    let create = |cluster: &str, quorum: u8| s.wallet_body(cluster, quorum, 3);
    assert_eq!(
        code(c.create_wallet(&create("nope", 1)).await.unwrap_err()),
        "unknown_cluster"
    );
    assert_eq!(
        code(c.create_wallet(&create("dc1", 0)).await.unwrap_err()),
        "invalid_quorum"
    );
    assert_eq!(
        code(c.create_wallet(&create("dc1", 17)).await.unwrap_err()),
        "invalid_quorum"
    );
    let taken = c.create_wallet(&create("dc1", 1)).await.unwrap();
    let mut again = create("dc1", 1);
    again.request_id = Some(taken.id.clone());
    assert_eq!(
        code(c.create_wallet(&again).await.unwrap_err()),
        "request_exists"
    );

    assert_eq!(
        code(c.request(&"00".repeat(16)).await.unwrap_err()),
        "unknown_request"
    );
    assert_eq!(
        code(c.request("00ff").await.unwrap_err()),
        "invalid_request_id"
    );
    let approval = s.pki.approve(0, b"whatever");
    assert_eq!(
        code(c.approve(&"00".repeat(16), &approval).await.unwrap_err()),
        "unknown_request"
    );
    assert_eq!(
        code(c.retry(&"00".repeat(16)).await.unwrap_err()),
        "unknown_request"
    );
    assert_eq!(
        code(c.wallet(&"03".repeat(33)).await.unwrap_err()),
        "unknown_wallet"
    );
    assert_eq!(code(c.wallet("zz").await.unwrap_err()), "invalid_root_id");
    assert_eq!(
        code(c.cluster("nope").await.unwrap_err()),
        "unknown_cluster"
    );
    assert_eq!(
        code(c.run_audit("nope").await.unwrap_err()),
        "unknown_cluster"
    );
    assert_eq!(
        code(c.latest_audit("nope").await.unwrap_err()),
        "unknown_cluster"
    );

    let q = |path: &str, start: Option<u32>, count: Option<u32>| DeriveQuery {
        path: Some(path.into()),
        start,
        count,
    };
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/0'/1", None, None))
                .await
                .unwrap_err()
        ),
        "hardened_path"
    );
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/0h", None, None))
                .await
                .unwrap_err()
        ),
        "hardened_path"
    );
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/a", None, None))
                .await
                .unwrap_err()
        ),
        "invalid_path"
    );
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/0", Some(0), Some(1001)))
                .await
                .unwrap_err()
        ),
        "invalid_range"
    );
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/0", Some(u32::MAX - 2), Some(5)))
                .await
                .unwrap_err()
        ),
        "invalid_range"
    );
    assert_eq!(
        code(
            c.derive(&w.root_id, &q("m/0", Some(3), None))
                .await
                .unwrap_err()
        ),
        "invalid_range"
    );
    assert_eq!(
        code(
            c.derive(&"02".repeat(33), &q("m/0", None, None))
                .await
                .unwrap_err()
        ),
        "unknown_wallet"
    );
    let (status, body) = get_json(
        &s,
        &format!("/v1/wallets/{}/derive?count=x", w.root_id),
        Some(&s.token),
    )
    .await;
    assert_eq!((status, err_code(&body)), (400, "invalid_query"));

    let (status, body) = get_json(&s, "/v1/requests?limit=501", Some(&s.token)).await;
    assert_eq!((status, err_code(&body)), (400, "invalid_query"));
    let (status, body) = get_json(&s, "/v1/requests?status=bogus", Some(&s.token)).await;
    assert_eq!((status, err_code(&body)), (400, "invalid_query"));
    let (status, body) = get_json(&s, "/v1/requests?colour=red", Some(&s.token)).await;
    assert_eq!((status, err_code(&body)), (400, "invalid_query"));

    let import = |mnemonic: Option<&str>, seed: Option<&str>| ImportWalletBody {
        cluster: "dc1".into(),
        quorum: 1,
        mnemonic: mnemonic.map(SecretText::new),
        passphrase: None,
        seed_hex: seed.map(SecretText::new),
        request_id: None,
        expires_at: None,
        approvals: vec![],
        group: None,
        rules: None,
    };
    assert_eq!(
        code(c.import_wallet(&import(None, None)).await.unwrap_err()),
        "invalid_secret"
    );
    assert_eq!(
        code(
            c.import_wallet(&import(Some(MNEMONIC), Some(VECTOR2_SEED)))
                .await
                .unwrap_err()
        ),
        "invalid_secret"
    );
    assert_eq!(
        code(
            c.import_wallet(&import(None, Some("abcd")))
                .await
                .unwrap_err()
        ),
        "invalid_secret"
    );
    let wrong_words = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon zoo";
    let e = c
        .import_wallet(&import(Some(wrong_words), None))
        .await
        .unwrap_err();
    assert!(
        !e.to_string().contains("abandon"),
        "the error echoes the secret: {e}"
    );
    assert_eq!(code(e), "invalid_secret");
    s.stop().await;
}

#[tokio::test]
async fn create_wallet_waits_for_distinct_approvals_then_completes() {
    let s = TestServer::start().await;
    let c = &s.client;
    let view = c.create_wallet(&s.wallet_body("dc1", 2, 3)).await.unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval);
    assert_eq!(view.kind, RequestKind::CreateWallet);
    assert_eq!(view.created_by, "tester");
    let message = message_of(&view);

    // A signature over something else, and an untrusted certificate, are refused.
    let wrong = s.pki.approve(0, b"another message");
    assert_eq!(
        code(c.approve(&view.id, &wrong).await.unwrap_err()),
        "approval_invalid"
    );
    let foreign = Pki::new();
    let untrusted = foreign.approve(0, &message);
    assert_eq!(
        code(c.approve(&view.id, &untrusted).await.unwrap_err()),
        "approval_invalid"
    );
    let mut garbled = s.pki.approve(0, &message);
    garbled.admin_cert_pem =
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
    assert_eq!(
        code(c.approve(&view.id, &garbled).await.unwrap_err()),
        "approval_invalid"
    );

    let one = c
        .approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap();
    assert_eq!(one.status, RequestStatus::PendingApproval);
    assert_eq!(one.approvals.len(), 1);
    assert_eq!(one.approvals[0].admin, "alice");
    // Pending without quorum: nothing was sent to the cluster.
    assert!(s
        .gateway
        .calls()
        .iter()
        .all(|c| c.op != "submit:CreateGroupWallet"));
    assert_eq!(
        code(
            c.approve(&view.id, &s.pki.approve(0, &message))
                .await
                .unwrap_err()
        ),
        "duplicate_approval"
    );
    // alice's own key certified again under another name is still alice: an admin is the
    // certified key, not the subject.
    let alice_key =
        std::sync::Arc::new(custos_pki::FileKey::load(&s.pki.admin_folder("alice").key()).unwrap());
    let again = s
        .pki
        .pki
        .sign_admin_csr(&custos_pki::admin_csr("alicia", alice_key.clone()).unwrap())
        .unwrap();
    let alicia =
        custos_pki::AdminSigner::new(alice_key, &again.cert_pem, &again.admin_ca_pem).unwrap();
    let by_alicia = custos_cloud_api::approval::sign_approval(&alicia, &message).unwrap();
    assert_eq!(
        code(c.approve(&view.id, &by_alicia).await.unwrap_err()),
        "duplicate_approval"
    );

    let done = c
        .approve(&view.id, &s.pki.approve(1, &message))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.attempts, 1);
    let Some(RequestResult::Wallet(w)) = &done.result else {
        panic!("{done:?}")
    };
    let xpub = Xpub::from_str(&w.xpub).unwrap();
    assert_eq!(hex::encode(xpub.public_key.serialize()), w.root_id);
    assert_eq!(done.root_id.as_deref(), Some(w.root_id.as_str()));
    let events: Vec<&str> = done.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        ["created", "approved", "approved", "submitting", "completed"]
    );
    assert_eq!(s.gateway.executed("CreateGroupWallet").len(), 1);
    assert_eq!(
        s.gateway.executed("CreateGroupWallet")[0]
            .request_id
            .to_vec(),
        hex::decode(&view.id).unwrap()
    );

    let listed = c.wallets().await.unwrap().wallets;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].root_id, w.root_id);
    assert_eq!(listed[0].quorum, 2);
    assert_eq!(listed[0].created_by_request, view.id);
    assert_eq!(
        code(
            c.approve(&view.id, &s.pki.approve(2, &message))
                .await
                .unwrap_err()
        ),
        "not_pending"
    );
    assert_eq!(code(c.retry(&view.id).await.unwrap_err()), "not_pending");

    // Signing with the 2-of-n wallet: pending after one approval, signed after two.
    let digest = [0x42u8; 32];
    let req = c
        .sign(&SignRequestBody {
            root_id: w.root_id.clone(),
            path: "m/44'/0'/0'/0/3".into(),
            digest: hex::encode(digest),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(req.status, RequestStatus::PendingApproval);
    assert_eq!(req.quorum, 2);
    assert_eq!(req.path.as_deref(), Some("m/44'/0'/0'/0/3"));
    let m = message_of(&req);
    c.approve(&req.id, &s.pki.approve(2, &m)).await.unwrap();
    assert!(s.gateway.executed("Sign").is_empty());
    let signed = c.approve(&req.id, &s.pki.approve(0, &m)).await.unwrap();
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    let Some(RequestResult::Signature(sig)) = &signed.result else {
        panic!("{signed:?}")
    };
    let secp = Secp256k1::verification_only();
    let pk = PublicKey::from_slice(&hex::decode(&sig.public_key).unwrap()).unwrap();
    let der = Signature::from_der(&hex::decode(&sig.signature_der).unwrap()).unwrap();
    secp.verify_ecdsa(&Message::from_digest(digest), &der, &pk)
        .unwrap();

    let list = c
        .requests(&RequestQuery {
            status: Some(RequestStatus::Completed),
            kind: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        list.requests
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [signed.id.as_str(), view.id.as_str()]
    );
    let list = c
        .requests(&RequestQuery {
            status: None,
            kind: Some(RequestKind::Sign),
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(list.requests.len(), 1);
    assert_eq!(list.requests[0].kind, RequestKind::Sign);
    s.stop().await;
}

#[tokio::test]
async fn pre_approved_sign_is_one_call_and_verified() {
    let s = TestServer::start().await;
    let w = wallet(&s, "dc1", 1).await;
    let root = Xpub::from_str(&w.xpub).unwrap();
    let secp = Secp256k1::new();
    for (i, path) in ["m/0/7", "m/44'/0'/0'/0/3", "m"].iter().enumerate() {
        let id = [i as u8 + 1; 16];
        let digest = [i as u8 + 0x30; 32];
        let meta = RequestMeta {
            request_id: id,
            expires_at: now() + 300,
        };
        let steps = custos_cloud_api::path::parse_path(path).unwrap();
        let key_id = hex::decode(&w.root_id).unwrap();
        let message = Action::Sign {
            key_id: &key_id,
            path: &steps,
            digest: &digest,
        }
        .message("dc1", &meta);
        let calls_before = s.gateway.calls().len();
        let view = s
            .client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: path.to_string(),
                digest: hex::encode(digest),
                request_id: Some(hex::encode(id)),
                expires_at: Some(meta.expires_at),
                approvals: vec![s.pki.approve(1, &message)],
            })
            .await
            .unwrap();
        assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
        assert_eq!(view.id, hex::encode(id));
        let Some(RequestResult::Signature(sig)) = &view.result else {
            panic!("{view:?}")
        };
        if !custos_cloud_api::path::has_hardened(&steps) {
            let child = custos_cloud_api::path::derive_xpub(&secp, &root, &steps).unwrap();
            assert_eq!(sig.public_key, hex::encode(child.public_key.serialize()));
        }
        // One relay call for the signature (the device chain was fetched when the wallet
        // was created).
        let calls: Vec<_> = s.gateway.calls()[calls_before..].to_vec();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].request_id, id);
    }
    s.stop().await;
}

/// A client that hangs up while its request executes does not leave it `submitting` (hyper
/// drops a handler's future when the connection closes; the server runs the call to its
/// end on a task of its own): the request completes, executed once, and no later call is
/// needed to finish it.
#[tokio::test]
async fn a_request_whose_client_hangs_up_still_completes() {
    let s = TestServer::start().await;
    let w = wallet(&s, "dc1", 1).await;
    let id = [0x5au8; 16];
    let digest = [0x42u8; 32];
    let meta = RequestMeta {
        request_id: id,
        expires_at: now() + 300,
    };
    let key_id = hex::decode(&w.root_id).unwrap();
    let message = Action::Sign {
        key_id: &key_id,
        path: &[0, 1],
        digest: &digest,
    }
    .message("dc1", &meta);
    let body = SignRequestBody {
        root_id: w.root_id.clone(),
        path: "m/0/1".into(),
        digest: hex::encode(digest),
        request_id: Some(hex::encode(id)),
        expires_at: Some(meta.expires_at),
        approvals: vec![s.pki.approve(0, &message)],
    };
    // The link takes a second; the caller gives up after a fifth of it.
    s.gateway.delay_ms.store(1000, Ordering::SeqCst);
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    let e = impatient
        .post(format!("http://{}/v1/sign-requests", s.addr))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    s.gateway.delay_ms.store(0, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let view = loop {
        let v = s.client.request(&hex::encode(id)).await.unwrap();
        if v.status != RequestStatus::Submitting || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let executed: Vec<_> = s
        .gateway
        .calls()
        .into_iter()
        .filter(|c| c.request_id == id && c.executed)
        .collect();
    assert_eq!(executed.len(), 1, "{executed:?}");
    s.stop().await;
}

#[tokio::test]
async fn tee_refusal_ends_refused_with_the_tee_code() {
    let s = TestServer::start().await;
    let w = wallet(&s, "dc1", 1).await;
    // The bridge routes to a node lacking the key (nodes not yet in sync): the TEE refuses.
    let holder = s.gateway.clusters["dc1"]
        .nodes
        .iter()
        .find(|n| n.served.load(Ordering::SeqCst) > 0)
        .unwrap();
    holder.healthy.store(false, Ordering::SeqCst);
    let req = s
        .client
        .sign(&SignRequestBody {
            root_id: w.root_id.clone(),
            path: "m/1".into(),
            digest: "11".repeat(32),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let done = s
        .client
        .approve(&req.id, &s.pki.approve(0, &message_of(&req)))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Refused, "{done:?}");
    assert_eq!(done.error.as_ref().unwrap().code, "tee_unknown_key");
    assert!(done.result.is_none());
    // Refusals are final.
    assert_eq!(
        code(s.client.retry(&req.id).await.unwrap_err()),
        "not_pending"
    );
    s.stop().await;
}

#[tokio::test]
async fn transport_failures_fail_the_request_and_retries_reuse_its_id() {
    let s = TestServer::start().await;
    let c = &s.client;
    let view = c.create_wallet(&s.wallet_body("dc2", 1, 1)).await.unwrap();
    let id = hex::decode(&view.id).unwrap();
    let message = message_of(&view);

    // The relay is down through every attempt: 503, the request is failed, not lost.
    s.gateway.down.store(true, Ordering::SeqCst);
    let e = c
        .approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap_err();
    match &e {
        ClientError::Api {
            status,
            code,
            request_id,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (503, "cluster_unavailable"));
            assert_eq!(request_id.as_deref(), Some(view.id.as_str()));
        }
        other => panic!("{other}"),
    }
    let failed = c.request(&view.id).await.unwrap();
    assert_eq!(failed.status, RequestStatus::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, "cluster_unavailable");
    assert!(s.gateway.executed("CreateGroupWallet").is_empty());

    // Back up, but the first answer is lost on the way back every time: the cluster executed
    // the request once; every try used the same id.
    s.gateway.down.store(false, Ordering::SeqCst);
    s.gateway.lose_next.store(100, Ordering::SeqCst);
    assert_eq!(
        code(c.retry(&view.id).await.unwrap_err()),
        "cluster_unavailable"
    );
    s.gateway.lose_next.store(0, Ordering::SeqCst);
    let done = c.retry(&view.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.attempts, 3);
    let tries: Vec<_> = s
        .gateway
        .calls()
        .into_iter()
        .filter(|c| c.op == "submit:CreateGroupWallet")
        .collect();
    assert!(tries.len() >= 3, "{tries:?}");
    assert!(tries.iter().all(|c| c.request_id.to_vec() == id));
    // Executed exactly once by the TEE: a second execution would have been refused as a
    // replayed create request.
    assert_eq!(s.gateway.executed("CreateGroupWallet").len(), 1);
    assert_eq!(c.wallets().await.unwrap().wallets.len(), 1);

    // A transient failure inside one call is retried transparently.
    s.gateway.fail_next.store(1, Ordering::SeqCst);
    let w = wallet(&s, "dc2", 1).await;
    assert_eq!(w.cluster, "dc2");
    s.stop().await;
}

#[tokio::test]
async fn tampered_cluster_answers_are_never_accepted() {
    let s = TestServer::start().await;
    let view = s
        .client
        .create_wallet(&s.wallet_body("dc1", 1, 1))
        .await
        .unwrap();
    // From here every answer is forged (naming the executor verified its chain first).
    s.gateway.tamper.store(true, Ordering::SeqCst);
    let e = s
        .client
        .approve(&view.id, &s.pki.approve(0, &message_of(&view)))
        .await
        .unwrap_err();
    assert_eq!(code(e), "unverified_response");
    let r = s.client.request(&view.id).await.unwrap();
    assert_eq!(r.status, RequestStatus::Failed);
    assert_eq!(r.error.unwrap().code, "unverified_response");
    assert!(s.client.wallets().await.unwrap().wallets.is_empty());
    s.stop().await;
}

/// A wallet creation approved at once by alice (quorum 1) on `cluster`: its outcome.
async fn create_approved(
    s: &TestServer,
    cluster: &str,
) -> Result<RequestView, custos_cloud_api::client::ClientError> {
    let view = s
        .client
        .create_wallet(&s.wallet_body(cluster, 1, 1))
        .await
        .unwrap();
    s.client
        .approve(&view.id, &s.pki.approve(0, &message_of(&view)))
        .await
}

#[tokio::test]
async fn the_executors_chain_is_fetched_once_for_a_creation() {
    let s = TestServer::start().await;
    let w = create_approved(&s, "dc2").await.unwrap();
    assert_eq!(w.status, RequestStatus::Completed);
    // The creation verified its executor's chain to name its device key; the answer
    // verified with that key: no second round trip for the chain.
    let ops: Vec<String> = s.gateway.calls().into_iter().map(|c| c.op).collect();
    assert!(
        ops.iter().any(|o| o == "submit:CreateGroupWallet"),
        "{ops:?}"
    );
    let fetches = ops.iter().filter(|o| *o == "submit:DeviceChain").count();
    assert_eq!(fetches, 1, "{ops:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_rogue_chain_with_the_reply_is_never_used() {
    let s = TestServer::start().await;
    let fetches = |s: &TestServer| {
        s.gateway
            .calls()
            .iter()
            .filter(|c| c.op == "submit:DeviceChain")
            .count()
    };
    // The relay attaches another cluster's node chain to dc2's answers: it does not verify
    // for dc2, so the server fetches node1's own chain (signed by its key) and uses that.
    let other_cluster = s.gateway.clusters["dc1"].nodes[0].chain();
    *s.gateway.rogue_chain.lock().unwrap() = Some(other_cluster);
    let first = create_approved(&s, "dc2").await.unwrap();
    assert_eq!(first.status, RequestStatus::Completed);
    assert_eq!(fetches(&s), 1);
    // The key cached is node1's own: the next answer verifies without another fetch.
    let second = create_approved(&s, "dc2").await.unwrap();
    assert_eq!(second.status, RequestStatus::Completed);
    assert_eq!(fetches(&s), 1);
    // The chain of the cluster's other node, attached to node1's answer: the same.
    let dc1 = &s.gateway.clusters["dc1"].nodes;
    dc1[1].healthy.store(false, Ordering::SeqCst);
    *s.gateway.rogue_chain.lock().unwrap() = Some(dc1[1].chain());
    let third = create_approved(&s, "dc1").await.unwrap();
    assert_eq!(third.status, RequestStatus::Completed);
    assert_eq!(fetches(&s), 2);
    // A forged answer is refused whichever chain comes with it.
    s.gateway.tamper.store(true, Ordering::SeqCst);
    let e = create_approved(&s, "dc1").await.unwrap_err();
    assert_eq!(code(e), "unverified_response");
    assert_eq!(s.client.wallets().await.unwrap().wallets.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn import_seals_the_secret_and_matches_bip32_vector_2() {
    let db = TestDb::sqlite();
    let db_file = db
        .url
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc")
        .to_string();
    let s = TestServer::start_on(db).await;
    let c = &s.client;
    let body = ImportWalletBody {
        cluster: "dc1".into(),
        quorum: 1,
        mnemonic: None,
        passphrase: None,
        seed_hex: Some(SecretText::new(VECTOR2_SEED)),
        request_id: None,
        expires_at: None,
        approvals: vec![],
        group: None,
        rules: None,
    };
    assert!(
        !format!("{body:?}").contains("fffcf9"),
        "Debug shows the seed"
    );
    let view = c.import_wallet(&body).await.unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval);
    assert_eq!(view.kind, RequestKind::ImportWallet);
    let node = view.target_node.clone().expect("sealed to a node");
    let root_id = view.root_id.clone().unwrap();
    let done = c
        .approve(&view.id, &s.pki.approve(2, &message_of(&view)))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let imports = s.gateway.executed("ImportWalletSealed");
    assert_eq!(imports.len(), 1);
    let served: Vec<_> = s.gateway.clusters["dc1"]
        .nodes
        .iter()
        .filter(|n| n.name == node)
        .map(|n| n.served.load(Ordering::SeqCst))
        .collect();
    assert!(served[0] >= 2, "import did not go to the sealed-to node");

    let w = c.wallet(&root_id).await.unwrap();
    assert_eq!(w.xpub, VECTOR2_M);
    let d = c
        .derive(
            &root_id,
            &DeriveQuery {
                path: Some("m/0".into()),
                start: None,
                count: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(d.xpub, VECTOR2_M0);
    assert_eq!(d.path, "m/0");
    assert_eq!(d.network, "bitcoin");
    assert!(d.address.starts_with("bc1q"));
    let list = c
        .derive(
            &root_id,
            &DeriveQuery {
                path: Some("m/0".into()),
                start: Some(5),
                count: Some(3),
            },
        )
        .await
        .unwrap()
        .addresses
        .unwrap();
    assert_eq!(list.iter().map(|a| a.index).collect::<Vec<_>>(), [5, 6, 7]);
    let secp = Secp256k1::new();
    let child =
        custos_cloud_api::path::derive_xpub(&secp, &Xpub::from_str(VECTOR2_M0).unwrap(), &[6])
            .unwrap();
    assert_eq!(
        list[1].public_key,
        hex::encode(child.public_key.serialize())
    );
    assert_eq!(list[1].path, "m/0/6");
    let root_only = c.derive(&root_id, &DeriveQuery::default()).await.unwrap();
    assert_eq!(root_only.xpub, VECTOR2_M);

    // Importing the same wallet again is refused early.
    assert_eq!(
        code(c.import_wallet(&body).await.unwrap_err()),
        "wallet_exists"
    );

    // A mnemonic import (BIP-39 vector with passphrase), pre-approved in the same call.
    let mnemonic_body = ImportWalletBody {
        cluster: "dc2".into(),
        quorum: 1,
        mnemonic: Some(SecretText::new(MNEMONIC)),
        passphrase: Some(SecretText::new("TREZOR")),
        seed_hex: None,
        request_id: None,
        expires_at: None,
        approvals: vec![],
        group: None,
        rules: None,
    };
    let pending = c.import_wallet(&mnemonic_body).await.unwrap();
    let done = c
        .approve(&pending.id, &s.pki.approve(0, &message_of(&pending)))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

    // Neither secret ever reached the database.
    let db = s.stop_keeping_db().await;
    let mut bytes = std::fs::read(&db_file).unwrap();
    if let Ok(wal) = std::fs::read(format!("{db_file}-wal")) {
        bytes.extend(wal);
    }
    let hay = String::from_utf8_lossy(&bytes);
    assert!(!hay.contains(VECTOR2_SEED) && !hay.contains(&VECTOR2_SEED.to_uppercase()));
    assert!(!hay.contains("abandon abandon"));
    assert!(!hay.contains("TREZOR"));
    db.cleanup().await;
}

#[tokio::test]
async fn clusters_status_and_audits() {
    let s = TestServer::start().await;
    let list = s.client.clusters().await.unwrap().clusters;
    assert_eq!(
        list.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["dc1", "dc2", "dc3"]
    );
    assert!(list[0].reachable && list[1].reachable);
    assert_eq!(list[0].nodes, Some(2));
    assert_eq!(list[0].healthy_nodes, Some(2));
    // dc3 is configured but its relay does not answer.
    assert!(!list[2].reachable);
    assert!(list[2].error.is_some());

    let st = s.client.cluster("dc1").await.unwrap();
    assert_eq!(st.nodes.len(), 2);
    assert_eq!(st.healthy, 2);
    let audit = s.client.run_audit("dc1").await.unwrap();
    assert_eq!(audit.nodes.len(), 2);
    // The fake's missing key is no wallet of this server: counted, not named.
    assert!(audit.nodes[0].missing.is_empty());
    assert_eq!(audit.nodes[0].hidden, 1);
    let latest = s.client.latest_audit("dc2").await.unwrap();
    assert_eq!(latest.nodes.len(), 1);

    s.gateway.down.store(true, Ordering::SeqCst);
    assert_eq!(
        code(s.client.cluster("dc1").await.unwrap_err()),
        "cluster_unavailable"
    );
    assert_eq!(
        code(s.client.run_audit("dc1").await.unwrap_err()),
        "cluster_unavailable"
    );
    let list = s.client.clusters().await.unwrap().clusters;
    assert!(list.iter().all(|c| !c.reachable));
    s.stop().await;
}

#[tokio::test]
async fn lifecycle_on_every_database() {
    for db in databases("lifecycle_on_every_database").await {
        let engine = db.engine;
        let s = TestServer::start_on(db).await;
        let w = wallet(&s, "dc1", 1).await;
        let req = s
            .client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: "m/3/4".into(),
                digest: "77".repeat(32),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let done = s
            .client
            .approve(&req.id, &s.pki.approve(0, &message_of(&req)))
            .await
            .unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{engine}: {done:?}");
        let got = s.client.request(&req.id).await.unwrap();
        assert_eq!(got.result, done.result, "{engine}");
        assert_eq!(got.events.len(), 4, "{engine}");
        s.stop().await;
    }
}

#[tokio::test]
async fn https_with_a_custom_root() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 1)]);
    // A server certificate for 127.0.0.1 from a throwaway CA.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();

    let db = TestDb::sqlite();
    let (token, hash) = custos_cloud::generate_api_token();
    let mut config = TestServer::config_for(&pki, &db.url, &hash);
    config.clusters.truncate(1);
    config.clusters[0].relay_token = RelayToken::new("t");
    config.tls_cert = Some(dir.path().join("tls.crt"));
    config.tls_key = Some(dir.path().join("tls.key"));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw: std::sync::Arc<dyn custos_cloud::gateway::Gateway> = gateway;
    let task = tokio::spawn(custos_cloud::run_with(
        config,
        gw,
        move |a| {
            let _ = ready_tx.send(a);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = ready_rx.await.unwrap();
    let url = format!("https://{addr}");
    let client =
        custos_cloud_api::client::CloudClient::with_root_pem(&url, &token, &ca.pem()).unwrap();
    assert!(client.wallets().await.unwrap().wallets.is_empty());
    assert_eq!(client.clusters().await.unwrap().clusters.len(), 1);
    let untrusting = custos_cloud_api::client::CloudClient::new(&url, &token).unwrap();
    assert!(matches!(
        untrusting.wallets().await.unwrap_err(),
        ClientError::Transport(_)
    ));
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
}
