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
            .create_wallet(&CreateWalletBody {
                cluster: "dc2".into(),
                quorum: 2,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
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
            .create_wallet(&CreateWalletBody {
                cluster: "dc1".into(),
                quorum: 1,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
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
