//! API access control through real HTTP: tenants see only their own requests, wallets and
//! threshold keys (another tenant's are "unknown", never "forbidden"), and a token sending
//! faster than its rate limit is answered 429 with `Retry-After`. (Scopes are checked
//! route by route from the OpenAPI document, in `openapi.rs`.)

use custos_cloud_api::*;
use custos_test_kit::*;
use custos_wire::approval::Action;
use custos_wire::protocol::RequestMeta;
use serde_json::Value;

/// A sign request with its quorum of approvals given up front.
fn approved_sign(s: &TestServer, w: &WalletView, digest: [u8; 32]) -> SignRequestBody {
    let id: [u8; 16] = rand::random();
    let meta = RequestMeta {
        request_id: id,
        expires_at: now() + 600,
    };
    let root_id = hex::decode(&w.root_id).unwrap();
    let message = Action::Sign {
        key_id: &root_id,
        path: &[0],
        digest: &digest,
    }
    .message(&w.cluster, &meta);
    SignRequestBody {
        root_id: w.root_id.clone(),
        path: "m/0".into(),
        digest: hex::encode(digest),
        request_id: Some(hex::encode(id)),
        expires_at: Some(meta.expires_at),
        approvals: (0..usize::from(w.quorum))
            .map(|i| s.pki.approve(i, &message))
            .collect(),
    }
}

fn code_of<T: std::fmt::Debug>(r: Result<T, custos_cloud_api::client::ClientError>) -> String {
    code(r.expect_err("refused"))
}

#[tokio::test]
async fn another_tenant_sees_none_of_a_tenants_requests_and_wallets() {
    for db in databases("another_tenant_sees_none").await {
        let s = TestServer::start_on(db).await;
        // Tenant `default` (the test token): a completed wallet, a signature with it, and
        // a request still waiting for approvals.
        let w = crate::api::wallet(&s, "dc1", 1).await;
        let signed = s
            .client
            .sign(&approved_sign(&s, &w, [7; 32]))
            .await
            .unwrap();
        assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
        let pending = s
            .client
            .create_wallet(&s.wallet_body("dc2", 2, 2))
            .await
            .unwrap();
        let other = s.client_as("other");

        // Lists: nothing of the first tenant.
        assert!(other.wallets().await.unwrap().wallets.is_empty());
        assert!(other
            .requests(&RequestQuery::default())
            .await
            .unwrap()
            .requests
            .is_empty());
        // By id: unknown, exactly as an id that never existed.
        assert_eq!(code_of(other.wallet(&w.root_id).await), "unknown_wallet");
        assert_eq!(
            code_of(other.derive(&w.root_id, &DeriveQuery::default()).await),
            "unknown_wallet"
        );
        for id in [&signed.id, &pending.id, &w.created_by_request] {
            assert_eq!(code_of(other.request(id).await), "unknown_request");
            assert_eq!(code_of(other.retry(id).await), "unknown_request");
        }
        let approval = s.pki.approve(0, &message_of(&pending));
        assert_eq!(
            code_of(other.approve(&pending.id, &approval).await),
            "unknown_request"
        );
        // Signing with the first tenant's wallet: refused as unknown, nothing recorded.
        assert_eq!(
            code_of(other.sign(&approved_sign(&s, &w, [8; 32])).await),
            "unknown_wallet"
        );
        assert!(other
            .requests(&RequestQuery::default())
            .await
            .unwrap()
            .requests
            .is_empty());

        // The first tenant still sees all of it, and the other tenant's own work is its own.
        assert_eq!(s.client.wallets().await.unwrap().wallets.len(), 1);
        let own = other
            .create_wallet(&s.wallet_body("dc1", 1, 1))
            .await
            .unwrap();
        assert_eq!(other.request(&own.id).await.unwrap().id, own.id);
        assert_eq!(code_of(s.client.request(&own.id).await), "unknown_request");
        let mine: Vec<String> = s
            .client
            .requests(&RequestQuery::default())
            .await
            .unwrap()
            .requests
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(
            !mine.contains(&own.id) && mine.contains(&pending.id),
            "{mine:?}"
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn a_burst_beyond_the_rate_limit_gets_429_with_retry_after() {
    let s = TestServer::start().await;
    let limited = s.guest_token("limited").to_string();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut served = 0;
    let mut refused = None;
    // The token allows a burst of 2 and one more per second: 50 calls in a row cannot all
    // pass unless the machine takes most of a minute for them.
    for _ in 0..50 {
        let r = http
            .get(s.url("/v1/wallets"))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
        served += 1;
    }
    let r = refused.expect("no call was refused: the rate limit is not applied");
    assert!(served >= 2, "the burst of 2 was not allowed ({served})");
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Limits are per token: the test token is served meanwhile.
    s.client.wallets().await.unwrap();
    s.stop().await;
}

/// A wallet of the tenant of `client`, made in `cluster` with its quorum given up front.
async fn wallet_of(s: &TestServer, client: &CloudClient, cluster: &str) -> WalletView {
    let (mut body, message) = s.presigned_wallet(cluster, 1, 1, "node1");
    body.approvals = vec![s.pki.approve(0, &message)];
    let view = client.create_wallet(&body).await.unwrap();
    let Some(RequestResult::Wallet(w)) = &view.result else {
        panic!("no wallet result: {view:?}")
    };
    client.wallet(&w.root_id).await.unwrap()
}

/// Every key id a cluster audit report names.
fn audit_ids(report: &AuditReportView) -> Vec<String> {
    report
        .nodes
        .iter()
        .flat_map(|n| n.missing.iter().chain(&n.wrong).cloned())
        .collect()
}

/// The attack: an `operate` token of another tenant runs (or reads) the cluster's key
/// audit and learns the first tenant's key ids from what the nodes lack or fail on. Each
/// tenant sees only its own keys named; the others' findings are counted, never named.
#[tokio::test]
async fn another_tenant_sees_none_of_a_tenants_key_ids_in_audits() {
    let s = TestServer::start().await;
    let other = s.client_as("other");
    let mine = wallet_of(&s, &s.client, "dc1").await;
    let theirs = wallet_of(&s, &other, "dc1").await;
    let id = |w: &WalletView| hex::decode(&w.root_id).unwrap();
    // Every node lacks the first tenant's wallet and fails the other's; one id is nobody's.
    *s.gateway.audit_missing.lock().unwrap() = vec![id(&mine), vec![2; 33]];
    *s.gateway.audit_wrong.lock().unwrap() = vec![id(&theirs)];

    for report in [
        other.run_audit("dc1").await.unwrap(),
        other.latest_audit("dc1").await.unwrap(),
    ] {
        let named = audit_ids(&report);
        assert!(!named.contains(&mine.root_id), "{report:?}");
        assert!(!named.contains(&"02".repeat(33)), "{report:?}");
        assert_eq!(named, vec![theirs.root_id.clone(); 2], "{report:?}");
        assert!(report.nodes.iter().all(|n| n.hidden == 2), "{report:?}");
    }
    let report = s.client.run_audit("dc1").await.unwrap();
    assert_eq!(audit_ids(&report), vec![mine.root_id.clone(); 2]);
    assert!(report.nodes.iter().all(|n| n.hidden == 2), "{report:?}");
    // A read-only token of the first tenant reads the latest report the same way.
    let reader = s.client_as("reader").latest_audit("dc1").await.unwrap();
    assert_eq!(audit_ids(&reader), vec![mine.root_id.clone(); 2]);
    s.stop().await;
}

/// The attack: a token that may only create requests (`request`, no `approve`) carries the
/// approvals inline in the create call and gets its request executed without any approver
/// token taking part. Every request-creating route refuses such a call as a whole, 403
/// `scope_missing` naming `approve`, and records nothing; without approvals the same token
/// still creates the request, which then waits for an approver.
#[tokio::test]
async fn inline_approvals_need_the_approve_scope() {
    let s = TestServer::start().await;
    let requester = s.guest_token("requester").to_string();
    let w = crate::api::wallet(&s, "dc1", 1).await;
    let (mut create, message) = s.presigned_wallet("dc1", 1, 1, "node1");
    create.approvals = vec![s.pki.approve(0, &message)];
    let approvals = serde_json::to_value(&create.approvals).unwrap();
    let key_id = "02".repeat(33);
    let calls = [
        ("/v1/wallets", serde_json::to_value(&create).unwrap()),
        (
            "/v1/wallets/import",
            serde_json::json!({"cluster": "dc1", "quorum": 1, "seed_hex": "00".repeat(32),
                "approvals": approvals}),
        ),
        (
            "/v1/sign-requests",
            serde_json::to_value(approved_sign(&s, &w, [5; 32])).unwrap(),
        ),
        (
            "/v1/threshold/keys/import",
            serde_json::json!({"bundle_hex": "00", "approvals": approvals}),
        ),
        (
            "/v1/threshold/keys",
            serde_json::json!({"clusters": ["dc1", "dc2"], "threshold": 2, "quorum": 1,
                "hd": false, "approvals": approvals}),
        ),
        (
            "/v1/threshold/sign",
            serde_json::json!({"key_id": key_id, "path": "m", "digest": "00".repeat(32),
                "approvals": approvals}),
        ),
    ];
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for (path, body) in &calls {
        let r = http
            .post(s.url(path))
            .bearer_auth(&requester)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "scope_missing", "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("`approve`"), "{path}: {message}");
    }
    // Nothing recorded: the tenant has only the wallet it made with the test token.
    let requests = s
        .client
        .requests(&RequestQuery::default())
        .await
        .unwrap()
        .requests;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(s.client.wallets().await.unwrap().wallets.len(), 1);

    // Without approvals the requester creates the request; an approver adds the approval.
    let mut body = calls[0].1.clone();
    body["approvals"] = serde_json::json!([]);
    let r = http
        .post(s.url("/v1/wallets"))
        .bearer_auth(&requester)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let pending: RequestView = r.json().await.unwrap();
    let approval = s.pki.approve(0, &message_of(&pending));
    let done = s.client.approve(&pending.id, &approval).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    s.stop().await;
}
