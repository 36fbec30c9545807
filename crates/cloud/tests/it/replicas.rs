//! Two cloud servers (replicas) on one database, without HTTP, with a clock the test moves:
//! a live replica's request is never resubmitted by the other, a dead one's is, once; job
//! leases are exclusive, expire, and are handed over at a clean shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use custos_cloud::access::Principal;
use custos_cloud::gateway::Gateway;
use custos_cloud::replica::Job;
use custos_cloud::{generate_api_token, Clock, Cloud};
use custos_cloud_api::{CreateWalletBody, RequestStatus, Scope};

use custos_test_kit::*;

const TTL_MS: u64 = custos_cloud::config::DEFAULT_REPLICA_TTL_SECS * 1000;

struct Two {
    pki: Pki,
    gateway: Arc<FakeGateway>,
    first: Arc<Cloud>,
    second: Arc<Cloud>,
    now: Arc<AtomicU64>,
    config: custos_cloud::CloudConfig,
    clock: Clock,
}

impl Two {
    /// One more replica on the same database, started now.
    async fn another(&self) -> Arc<Cloud> {
        let gw: Arc<dyn Gateway> = self.gateway.clone();
        Cloud::open_with_clock(&self.config, gw, self.clock.clone())
            .await
            .unwrap()
    }
}

async fn two(url: &str) -> Two {
    two_with_ttl(url, custos_cloud::config::DEFAULT_REPLICA_TTL_SECS).await
}

async fn two_with_ttl(url: &str, ttl_secs: u64) -> Two {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 1)]);
    let (_, hash) = generate_api_token();
    let mut config = TestServer::config_for(&pki, url, &hash);
    config.replica_ttl_secs = ttl_secs;
    let now = Arc::new(AtomicU64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    ));
    let n = now.clone();
    let clock: Clock = Arc::new(move || n.load(Ordering::SeqCst));
    let gw: Arc<dyn Gateway> = gateway.clone();
    let first = Cloud::open_with_clock(&config, gw.clone(), clock.clone())
        .await
        .unwrap();
    let second = Cloud::open_with_clock(&config, gw, clock.clone())
        .await
        .unwrap();
    Two {
        pki,
        gateway,
        first,
        second,
        now,
        config,
        clock,
    }
}

fn tester() -> Principal {
    Principal {
        name: "tester".into(),
        tenant: "default".into(),
        scopes: Scope::ALL.to_vec(),
    }
}

/// A wallet creation on dc1, quorum 1 of the test group, pending.
async fn pending_wallet(t: &Two, cloud: &Cloud) -> custos_cloud_api::RequestView {
    cloud
        .create_wallet(
            &tester(),
            CreateWalletBody {
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                cluster: "dc1".into(),
                quorum: 1,
                group: governance::admin_keys(&t.pki, &ADMINS)
                    .iter()
                    .map(hex::encode)
                    .collect(),
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            },
        )
        .await
        .unwrap()
        .view
}

/// A wallet creation approved through the first replica, executed by the cluster but its
/// answer lost (the request ends `failed`, retryable with its id).
async fn approved_unanswered(t: &Two) -> custos_cloud_api::RequestView {
    let view = pending_wallet(t, &t.first).await;
    t.gateway.lose_next.store(100, Ordering::SeqCst);
    let _ = t
        .first
        .approve("default", &view.id, t.pki.approve(0, &message_of(&view)))
        .await;
    t.gateway.lose_next.store(0, Ordering::SeqCst);
    view
}

/// A replica whose heartbeat is older than half its TTL starts no submission (another may
/// be taking its requests over), refusing by name with nothing done; its next good
/// heartbeat lets it go on.
#[tokio::test]
async fn a_replica_without_a_fresh_heartbeat_starts_no_submission() {
    let db = TestDb::sqlite();
    let t = two_with_ttl(&db.url, 3).await;
    t.first.heartbeat("first").await.unwrap();
    let view = pending_wallet(&t, &t.first).await;
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert!(!t.first.replica().fresh());
    let e = t
        .first
        .approve("default", &view.id, t.pki.approve(0, &message_of(&view)))
        .await
        .unwrap_err();
    assert_eq!(e.code, custos_cloud_api::ErrorCode::ReplicaUnavailable);
    let row = t.first.store().request(&view.id).await.unwrap().unwrap();
    assert_eq!(row.status, RequestStatus::PendingApproval);
    assert!(t.gateway.executed("CreateGroupWallet").is_empty());
    t.first.heartbeat("first").await.unwrap();
    let done = t
        .first
        .approve("default", &view.id, t.pki.approve(0, &message_of(&view)))
        .await
        .unwrap();
    assert_eq!(done.view.status, RequestStatus::Completed);
    db.cleanup().await;
}

/// A request this replica owns in `submitting` but no longer executes (its call ended
/// before recording an outcome) is resubmitted by this replica, and by no other.
#[tokio::test]
async fn a_replica_resubmits_its_own_request_whose_call_ended() {
    let db = TestDb::sqlite();
    let t = two(&db.url).await;
    let view = approved_unanswered(&t).await;
    let store = t.first.store();
    let mut row = store.request(&view.id).await.unwrap().unwrap();
    row.status = RequestStatus::Submitting;
    row.owner = Some(t.first.replica().id.clone());
    store
        .update_request(&row, "submitting", "its call ended".into(), None)
        .await
        .unwrap();
    assert_eq!(t.second.recover_own().await.unwrap(), 0);
    assert_eq!(t.first.recover_own().await.unwrap(), 1);
    let done = store.request(&view.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(t.first.recover_own().await.unwrap(), 0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_resubmitted_only_once_its_replica_is_dead() {
    for db in databases("a_request_is_resubmitted_only_once_its_replica_is_dead").await {
        let engine = db.engine;
        let t = two(&db.url).await;
        t.first.heartbeat("first").await.unwrap();
        t.second.heartbeat("second").await.unwrap();
        // Approved through the first replica, which executes it but never hears back: left
        // as it would be mid-call (submitting, its owner).
        let view = approved_unanswered(&t).await;
        let store = t.first.store();
        let mut row = store.request(&view.id).await.unwrap().unwrap();
        row.status = RequestStatus::Submitting;
        row.owner = Some(t.first.replica().id.clone());
        store
            .update_request(&row, "submitting", "in flight on the first".into(), None)
            .await
            .unwrap();

        // A replica started after that change: the old recovery (anything last changed
        // before this server started) would have sent it a second time now.
        let sent = || {
            t.gateway
                .calls()
                .iter()
                .filter(|c| c.op == "submit:CreateGroupWallet")
                .count()
        };
        let before = sent();
        t.now.fetch_add(1000, Ordering::SeqCst);
        t.first.heartbeat("first").await.unwrap();
        let late = t.another().await;
        late.heartbeat("late").await.unwrap();
        assert_eq!(late.recover().await.unwrap(), 0, "{engine}");
        assert_eq!(t.second.recover().await.unwrap(), 0, "{engine}");
        assert_eq!(sent(), before, "{engine}");

        // The first replica dies: once its heartbeat is older than the TTL, the second
        // resubmits the request with its own id, and nothing is left to resubmit.
        t.now.fetch_add(TTL_MS + 1, Ordering::SeqCst);
        t.second.heartbeat("second").await.unwrap();
        assert_eq!(t.second.recover().await.unwrap(), 1, "{engine}");
        let done = store.request(&view.id).await.unwrap().unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{engine}: {done:?}");
        let resubmitted: Vec<_> = done
            .events
            .iter()
            .filter(|e| e.event == "resubmitting")
            .collect();
        assert_eq!(resubmitted.len(), 1, "{engine}: {:?}", done.events);
        assert!(resubmitted[0]
            .detail
            .ends_with(&format!("by replica {}", t.second.replica().id)));
        assert_eq!(t.gateway.executed("CreateGroupWallet").len(), 1, "{engine}");
        assert_eq!(t.second.recover().await.unwrap(), 0, "{engine}");
        assert_eq!(t.first.recover().await.unwrap(), 0, "{engine}");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_leases_are_exclusive_expire_and_are_handed_over_at_shutdown() {
    for db in databases("job_leases_are_exclusive_expire_and_are_handed_over_at_shutdown").await {
        let engine = db.engine;
        let t = two(&db.url).await;
        assert_eq!(
            t.first.heartbeat("first").await.unwrap(),
            Job::ALL,
            "{engine}"
        );
        assert!(
            t.second.heartbeat("second").await.unwrap().is_empty(),
            "{engine}"
        );
        for job in Job::ALL {
            assert!(t.first.replica().holds(job) && !t.second.replica().holds(job));
        }
        // Renewed while the first beats, whatever the second tries.
        t.now.fetch_add(TTL_MS / 2, Ordering::SeqCst);
        assert_eq!(t.first.heartbeat("first").await.unwrap(), Job::ALL);
        t.now.fetch_add(TTL_MS / 2 + 1, Ordering::SeqCst);
        assert!(t.second.heartbeat("second").await.unwrap().is_empty());

        // The first stops beating: its leases run out and change hands once (term 2).
        t.now.fetch_add(TTL_MS, Ordering::SeqCst);
        assert_eq!(t.second.heartbeat("second").await.unwrap(), Job::ALL);
        assert!(t.first.heartbeat("first").await.unwrap().is_empty());
        assert!(!t.first.replica().holds(Job::Refill), "{engine}");
        let leases = t.first.store().leases().await.unwrap();
        assert!(
            leases
                .iter()
                .all(|l| l.holder == t.second.replica().id && l.term == 2),
            "{engine}: {leases:?}"
        );

        // A clean shutdown hands them over at once, and forgets the replica.
        t.second.retire().await.unwrap();
        assert!(!t.second.replica().holds(Job::Recovery));
        assert_eq!(t.first.heartbeat("first").await.unwrap(), Job::ALL);
        let live = t.first.store().replicas().await.unwrap();
        assert_eq!(live.len(), 1, "{engine}: {live:?}");
        assert_eq!(live[0].id, t.first.replica().id);

        // Many replicas racing for a free job: exactly one gets it.
        let store = t.first.store().clone();
        let at = t.now.load(Ordering::SeqCst);
        let racers = (0..8).map(|k| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .try_lease("race", &format!("racer-{k}"), at, at + TTL_MS)
                    .await
                    .unwrap()
            })
        });
        let won: Vec<_> = futures::future::join_all(racers)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .filter(Option::is_some)
            .collect();
        assert_eq!(won, vec![Some(1)], "{engine}");
        db.cleanup().await;
    }
}
