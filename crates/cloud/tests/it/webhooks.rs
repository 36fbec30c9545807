//! Webhook notifications (issue 17): a receiver on loopback gets every request event once,
//! each with a valid HMAC, in its request's order, also when it is down for a while and the
//! cloud server restarts meanwhile (the deliveries wait in the database and are retried);
//! a webhook listening to refusals only gets those. On both database engines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use custos_cloud::config::WebhookConfig;
use custos_cloud::db::Store;
use custos_cloud_api::approval::rejection_message;
use custos_cloud_api::webhook::{self, Delivery, EventType, WebhookEvent};
use custos_cloud_api::*;
use custos_test_kit::*;

/// Each webhook's secret (two webhooks never share one).
fn secret(hook: &str) -> String {
    format!("{hook}-4f1c0a9e7d2b6c3e8f5a1d0b9c7e2f4a6b8d0c1e3f5a7b9d")
}

/// One POST the receiver got.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A webhook receiver on loopback that can be stopped and started again on its address.
struct Receiver {
    addr: SocketAddr,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn record(State(log): State<Log>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
    });
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start(addr: SocketAddr, log: Log) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(record).with_state(log.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Receiver {
            addr,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops listening (connections refused until [`Receiver::start`] on the same address).
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits (at most 40 s) until `n` deliveries arrived.
    async fn until(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries arrived",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hook(name: &str, at: SocketAddr, dir: &std::path::Path) -> WebhookConfig {
    let file = dir.join(format!("{name}.secret"));
    std::fs::write(&file, format!("{}\n", secret(name))).unwrap();
    let mut h = WebhookConfig::new(name, format!("http://{at}/{name}"), file);
    h.retry_base_ms = 100;
    h.retry_max_ms = 400;
    h
}

/// A receiver on loopback, and a server on `db` notifying the webhooks `hooks` lists (given
/// the receiver's address and a folder for their secrets).
async fn with_receiver(
    db: TestDb,
    hooks: impl FnOnce(SocketAddr, &std::path::Path) -> Vec<WebhookConfig>,
) -> (tempfile::TempDir, Receiver, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), Log::default()).await;
    let listed = hooks(rx.addr, dir.path());
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 2), ("dc2", 1)]);
    // Metrics on a loopback port of their own (`/metrics`).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_at = metrics.local_addr().unwrap();
    drop(metrics);
    let s = TestServer::start_configured(pki, gateway, db, move |c| {
        c.webhooks = listed;
        c.metrics_listen = Some(metrics_at);
    })
    .await;
    (dir, rx, s)
}

/// The value of the metric line starting with `name ` on `s`'s `/metrics`.
async fn metric(s: &TestServer, name: &str) -> String {
    let at = s.config.metrics_listen.unwrap();
    let text = reqwest::get(format!("http://{at}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_string()
}

async fn pending_sign(s: &TestServer, root_id: &str, expires_at: Option<u64>) -> RequestView {
    s.client
        .sign(&SignRequestBody {
            root_id: root_id.to_string(),
            path: "m/0/7".into(),
            digest: hex::encode(rand::random::<[u8; 32]>()),
            request_id: None,
            expires_at,
            approvals: vec![],
        })
        .await
        .unwrap()
}

/// Every delivery checked as a receiver would ([`webhook::verify`]), by webhook.
fn verified(log: &Log) -> BTreeMap<String, Vec<WebhookEvent>> {
    let now = custos_pki::clock::now_unix_ms() / 1000;
    let mut by_hook: BTreeMap<String, Vec<WebhookEvent>> = BTreeMap::new();
    for r in log.lock().unwrap().iter() {
        let h = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
        let headers = Delivery {
            event_id: h(webhook::EVENT_ID_HEADER),
            event: h(webhook::EVENT_HEADER),
            timestamp: h(webhook::TIMESTAMP_HEADER),
            signature: h(webhook::SIGNATURE_HEADER),
        };
        let name = r.path.trim_start_matches('/').to_string();
        let event = webhook::verify(secret(&name).as_bytes(), headers, &r.body, now, 300)
            .unwrap_or_else(|e| panic!("delivery to {} refused: {e}", r.path));
        by_hook.entry(name).or_default().push(event);
    }
    by_hook
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_its_receivers_once_signed_across_an_outage_and_a_restart() {
    for db in databases("webhooks").await {
        every_event_once(db).await;
    }
}

async fn every_event_once(db: TestDb) {
    let (_dir, mut rx, s) = with_receiver(db, |at, folder| {
        let mut refusals = hook("refusals", at, folder);
        refusals.events = vec!["request.refused".into()];
        // Another tenant's: hears of none of these requests.
        let mut acme = hook("acme", at, folder);
        acme.tenants = vec!["acme".into()];
        vec![hook("ops", at, folder), refusals, acme]
    })
    .await;
    let log = rx.log.clone();

    // A wallet created with two approvals, and a signature approved by both: each is
    // pending, approved, completed.
    let root_id = s.created_wallet(&s.wallet_body("dc1", 2, 2), 2).await;
    let signed = pending_sign(&s, &root_id, None).await;
    let message = message_of(&signed);
    for admin in 0..2 {
        s.client
            .approve(&signed.id, &s.pki.approve(admin, &message))
            .await
            .unwrap();
    }
    rx.until(6).await;

    // The receiver goes down. Meanwhile a request is rejected, another expires, and the
    // cloud server restarts.
    rx.stop().await;
    let rejected = pending_sign(&s, &root_id, None).await;
    let refusal = rejection_message(&message_of(&rejected));
    s.client
        .reject(&rejected.id, &s.pki.approve(1, &refusal))
        .await
        .unwrap();
    let soon = custos_pki::clock::now_unix_ms() / 1000 + 2;
    let expiring = pending_sign(&s, &root_id, Some(soon)).await;
    let store = Store::connect(s.config.db_url.as_deref().unwrap())
        .await
        .unwrap();
    // Tried, refused by the closed port, and tried again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ops = store.deliveries("ops").await.unwrap();
        if ops.iter().any(|d| d.state == "pending" && d.attempts >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "no retries seen: {ops:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while custos_pki::clock::now_unix_ms() / 1000 <= soon {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = s.client.request(&expiring.id).await.unwrap();
    assert_eq!(expired.status, RequestStatus::Expired);
    let s = s.restart_configured(|_| {}).await;

    let mut rx = Receiver::start(rx.addr, log.clone()).await;
    // 4 more to `ops` (pending and refused, pending and expired), 1 to `refusals`.
    rx.until(11).await;
    // Two more runs of the job: nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.count(), 11);

    let by_hook = verified(&log);
    use EventType::*;
    let ops = &by_hook["ops"];
    let mut ids: Vec<&str> = ops.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ops.len(), "an event delivered twice: {ops:?}");
    let mut per_request: BTreeMap<&str, Vec<EventType>> = BTreeMap::new();
    for e in ops {
        assert_eq!(e.request.tenant, "default");
        per_request.entry(&e.request.id).or_default().push(e.event);
    }
    let wallet = per_request
        .keys()
        .find(|id| {
            ![&signed.id, &rejected.id, &expiring.id]
                .iter()
                .any(|o| o.as_str() == **id)
        })
        .copied()
        .expect("the wallet creation's events");
    assert_eq!(per_request[wallet], [Pending, Approved, Completed]);
    assert_eq!(
        per_request[signed.id.as_str()],
        [Pending, Approved, Completed]
    );
    assert_eq!(per_request[rejected.id.as_str()], [Pending, Refused]);
    assert_eq!(per_request[expiring.id.as_str()], [Pending, Expired]);
    assert_eq!(per_request.len(), 4);
    let refused = ops.iter().find(|e| e.event == Refused).unwrap();
    assert_eq!(refused.error.as_ref().unwrap().code, "rejected_by_admin");
    let lapsed = ops.iter().find(|e| e.event == Expired).unwrap();
    assert_eq!(lapsed.error.as_ref().unwrap().code, "request_expired");

    let refusals = &by_hook["refusals"];
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].id, refused.id);
    assert!(!by_hook.contains_key("acme"));
    assert!(store.deliveries("acme").await.unwrap().is_empty());

    // The database agrees: every delivery delivered, those of the outage after retries.
    for name in ["ops", "refusals"] {
        let rows = store.deliveries(name).await.unwrap();
        assert!(rows.iter().all(|d| d.state == "delivered"), "{rows:?}");
    }
    let ops_rows = store.deliveries("ops").await.unwrap();
    let first_down = format!("{}.1", rejected.id);
    let late = ops_rows.iter().find(|d| d.event_id == first_down).unwrap();
    assert!(late.attempts >= 3, "{late:?}");
    let error = late.last_error.as_deref().unwrap();
    assert!(error.contains("Connection refused"), "{error}");
    store.close().await;
    rx.stop().await;
    s.stop().await;
}

/// A replica listing other webhooks (a configuration half rolled out) pauses the fan-out:
/// no event is dropped for the webhooks it lacks; once it is gone, they go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_webhook_list_pauses_the_fan_out_and_nothing_is_lost() {
    let (_dir, mut rx, s) =
        with_receiver(TestDb::sqlite(), |at, folder| vec![hook("ops", at, folder)]).await;
    let log = rx.log.clone();
    let root_id = s.created_wallet(&s.wallet_body("dc1", 1, 1), 1).await;
    rx.until(3).await;

    let store = Store::connect(s.config.db_url.as_deref().unwrap())
        .await
        .unwrap();
    let now = store.db_now_ms().await.unwrap();
    store
        .heartbeat(
            "0123456789abcdef",
            "127.0.0.1:1",
            now,
            now,
            60_000,
            "another list",
        )
        .await
        .unwrap();
    let waiting = pending_sign(&s, &root_id, None).await;
    // Three runs of the job: nothing fanned out, nothing sent; the pause is a metric to
    // alert on.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(rx.count(), 3);
    assert_eq!(store.deliveries("ops").await.unwrap().len(), 3);
    assert_eq!(metric(&s, "custos_cloud_webhook_fan_out_paused").await, "1");

    store.retire("0123456789abcdef", 0).await.unwrap();
    rx.until(4).await;
    assert_eq!(metric(&s, "custos_cloud_webhook_fan_out_paused").await, "0");
    let events = &verified(&log)["ops"];
    assert_eq!(events[3].request.id, waiting.id);
    assert_eq!(events[3].event, EventType::Pending);
    store.close().await;
    rx.stop().await;
    s.stop().await;
}

/// With no webhook anywhere, request rows are left alone and only a time moves; a webhook
/// configured later hears of what happens from then on, not of the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_configured_later_hears_only_of_what_happens_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let mut rx = Receiver::start("127.0.0.1:0".parse().unwrap(), log.clone()).await;
    let s = TestServer::start().await;
    let root_id = s.created_wallet(&s.wallet_body("dc1", 1, 1), 1).await;
    let store = Store::connect(s.config.db_url.as_deref().unwrap())
        .await
        .unwrap();
    let (deadline, made) = (
        Instant::now() + Duration::from_secs(20),
        custos_pki::clock::now_unix_ms(),
    );
    while store.skipped_before().await.unwrap() <= made {
        assert!(Instant::now() < deadline, "the skipped time does not move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (at, folder) = (rx.addr, dir.path().to_path_buf());
    let s = s
        .restart_configured(move |c| c.webhooks = vec![hook("ops", at, &folder)])
        .await;
    let later = pending_sign(&s, &root_id, None).await;
    rx.until(1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = &verified(&log)["ops"];
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].request.id, later.id);
    store.close().await;
    rx.stop().await;
    s.stop().await;
}
