//! The request lifecycle without HTTP, with a clock the test moves: expiry and crash
//! recovery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use custos_cloud::access::Principal;
use custos_cloud::gateway::Gateway;
use custos_cloud::{generate_api_token, Clock, Cloud};
use custos_cloud_api::{CreateWalletBody, RequestStatus, Scope};

use custos_test_kit::*;

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Setup {
    pki: Pki,
    gateway: Arc<FakeGateway>,
    cloud: Arc<Cloud>,
    now: Arc<AtomicU64>,
    db: TestDb,
}

async fn setup(db: TestDb) -> Setup {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 1)]);
    let (_, hash) = generate_api_token();
    let config = TestServer::config_for(&pki, &db.url, &hash);
    let now = Arc::new(AtomicU64::new(system_ms()));
    let n = now.clone();
    let clock: Clock = Arc::new(move || n.load(Ordering::SeqCst));
    let gw: Arc<dyn Gateway> = gateway.clone();
    let cloud = Cloud::open_with_clock(&config, gw, clock).await.unwrap();
    Setup {
        pki,
        gateway,
        cloud,
        now,
        db,
    }
}

/// The test token's holder (tenant `default`, every scope).
fn tester() -> Principal {
    Principal {
        name: "tester".into(),
        tenant: "default".into(),
        scopes: Scope::ALL.to_vec(),
    }
}

/// A wallet creation on dc1 with `quorum` of the group alice, bob, carol.
fn create(s: &Setup, quorum: u8) -> CreateWalletBody {
    CreateWalletBody {
        rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
        cluster: "dc1".into(),
        quorum,
        group: governance::admin_keys(&s.pki, &ADMINS)
            .iter()
            .map(hex::encode)
            .collect(),
        executor: None,
        request_id: None,
        expires_at: None,
        approvals: vec![],
    }
}

#[tokio::test]
async fn pending_requests_expire_and_are_never_submitted() {
    let s = setup(TestDb::sqlite()).await;
    let view = s
        .cloud
        .create_wallet(&tester(), create(&s, 2))
        .await
        .unwrap()
        .view;
    let message = message_of(&view);
    s.cloud
        .approve("default", &view.id, s.pki.approve(0, &message))
        .await
        .unwrap();
    assert_eq!(s.cloud.sweep_expired().await.unwrap(), 0);

    s.now.fetch_add(
        (view.expires_at + 1) * 1000 - s.now.load(Ordering::SeqCst) + 1,
        Ordering::SeqCst,
    );
    assert_eq!(s.cloud.sweep_expired().await.unwrap(), 1);
    let r = s.cloud.request("default", &view.id).await.unwrap();
    assert_eq!(r.status, RequestStatus::Expired);
    assert_eq!(r.events.last().unwrap().event, "expired");
    let e = s
        .cloud
        .approve("default", &view.id, s.pki.approve(1, &message))
        .await
        .unwrap_err();
    assert_eq!(e.code, custos_cloud_api::ErrorCode::RequestExpired);
    assert!(s.gateway.executed("CreateGroupWallet").is_empty());
    s.db.cleanup().await;
}

#[tokio::test]
async fn reading_a_request_past_its_window_expires_it() {
    let s = setup(TestDb::sqlite()).await;
    let view = s
        .cloud
        .create_wallet(&tester(), create(&s, 1))
        .await
        .unwrap()
        .view;
    s.now.store((view.expires_at + 5) * 1000, Ordering::SeqCst);
    assert_eq!(
        s.cloud.request("default", &view.id).await.unwrap().status,
        RequestStatus::Expired
    );
    s.db.cleanup().await;
}

#[tokio::test]
async fn crash_recovery_resubmits_with_the_same_id() {
    for db in databases("crash_recovery_resubmits_with_the_same_id").await {
        let engine = db.engine;
        let s = setup(db).await;
        let view = s
            .cloud
            .create_wallet(&tester(), create(&s, 1))
            .await
            .unwrap()
            .view;
        let message = message_of(&view);
        // The cluster executes the request but the answer never comes back; then the server
        // "crashes" while the request is in `submitting`.
        s.gateway.lose_next.store(100, Ordering::SeqCst);
        let e = s
            .cloud
            .approve("default", &view.id, s.pki.approve(0, &message))
            .await
            .unwrap_err();
        assert_eq!(e.code, custos_cloud_api::ErrorCode::ClusterUnavailable);
        s.gateway.lose_next.store(0, Ordering::SeqCst);
        let store = s.cloud.store();
        let mut row = store.request(&view.id).await.unwrap().unwrap();
        assert_eq!(row.status, RequestStatus::Failed);
        row.status = RequestStatus::Submitting;
        store
            .update_request(&row, "submitting", "state at the crash".into(), None)
            .await
            .unwrap();

        // A fresh server on the same database resumes it.
        let (_, hash) = generate_api_token();
        let config = TestServer::config_for(&s.pki, &s.db.url, &hash);
        let gw: Arc<dyn Gateway> = s.gateway.clone();
        let restarted = Cloud::open(&config, gw).await.unwrap();
        assert_eq!(restarted.recover().await.unwrap(), 1);
        let r = restarted.request("default", &view.id).await.unwrap();
        assert_eq!(r.status, RequestStatus::Completed, "{engine}: {r:?}");
        assert_eq!(restarted.wallets("default").await.unwrap().wallets.len(), 1);
        // Every submission used the request's own id, and the TEE ran it once.
        let id = hex::decode(&view.id).unwrap();
        let submits: Vec<_> = s
            .gateway
            .calls()
            .into_iter()
            .filter(|c| c.op == "submit:CreateGroupWallet")
            .collect();
        assert!(submits.iter().all(|c| c.request_id.to_vec() == id));
        assert_eq!(s.gateway.executed("CreateGroupWallet").len(), 1, "{engine}");
        assert_eq!(restarted.recover().await.unwrap(), 0);
        s.db.cleanup().await;
    }
}

/// A wallet creation recorded before approver groups (any Admin-CA admin would count for
/// it, on any node) is never executed: its approval and its submission are refused.
#[tokio::test]
async fn a_creation_made_before_groups_is_refused_at_submission() {
    let s = setup(TestDb::sqlite()).await;
    let view = s
        .cloud
        .create_wallet(&tester(), create(&s, 2))
        .await
        .unwrap()
        .view;
    let store = s.cloud.store();
    let mut row = store.request(&view.id).await.unwrap().unwrap();
    row.terms = custos_cloud::terms::Terms::CreateWallet { node: None };
    let row = store
        .update_request(&row, "approved", "as a legacy row".into(), None)
        .await
        .unwrap();
    let legacy = s.cloud.request("default", &view.id).await.unwrap();
    assert!(custos_cloud_api::approval::approval_message(&legacy).is_err());
    // A new approval: refused, naming the reason.
    let message = hex::decode(&legacy.approval_message).unwrap();
    let e = s
        .cloud
        .approve("default", &view.id, s.pki.approve(0, &message))
        .await
        .unwrap_err();
    assert_eq!(e.code, custos_cloud_api::ErrorCode::ApprovalFormatChanged);
    // Left in `submitting` by an older server: resubmitted, and refused for good.
    let mut stuck = row.clone();
    stuck.status = RequestStatus::Submitting;
    store
        .update_request(&stuck, "submitting", "state at the upgrade".into(), None)
        .await
        .unwrap();
    let (_, hash) = generate_api_token();
    let config = TestServer::config_for(&s.pki, &s.db.url, &hash);
    let gw: Arc<dyn Gateway> = s.gateway.clone();
    let restarted = Cloud::open(&config, gw).await.unwrap();
    assert_eq!(restarted.recover().await.unwrap(), 1);
    let r = restarted.request("default", &view.id).await.unwrap();
    assert_eq!(r.status, RequestStatus::Refused, "{r:?}");
    assert_eq!(r.error.unwrap().code, "approval_format_changed");
    assert!(s
        .gateway
        .calls()
        .iter()
        .all(|c| !c.op.contains("CreateWallet")));
    s.db.cleanup().await;
}
