//! The demo's webhook receiver (issue 17): the cloud server notifies it of every request
//! event; at the end, every request the deployment holds must have had the event of the
//! state it is in, each delivery HMAC-verified on arrival as a receiver would
//! (`custos_cloud_api::webhook::verify`); an event sent again (deliveries are at least
//! once) must be the same signed body.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use custos_cloud::config::WebhookConfig;
use custos_cloud_api::webhook::{self, Delivery, WebhookEvent};
use custos_cloud_api::{RequestQuery, RequestStatus};
use serde_json::json;
use tokio::runtime::Runtime;
use zeroize::Zeroizing;

use super::{fail, AnyError, Demo};

/// Longest wait for the last events to arrive.
const DRAIN: Duration = Duration::from_secs(30);

/// What the receiver got: each delivery checked when it arrived (its signature and time),
/// with the body.
struct Got {
    secret: Zeroizing<String>,
    log: Mutex<Vec<(Result<WebhookEvent, String>, Bytes)>>,
}

/// A receiver on a loopback port, with the secret it shares with the cloud server.
pub(super) struct Receiver {
    url: String,
    got: Arc<Got>,
}

async fn record(State(got): State<Arc<Got>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = Delivery {
        event_id: h(webhook::EVENT_ID_HEADER),
        event: h(webhook::EVENT_HEADER),
        timestamp: h(webhook::TIMESTAMP_HEADER),
        signature: h(webhook::SIGNATURE_HEADER),
    };
    let now = custos_pki::clock::now_unix_ms() / 1000;
    let checked = webhook::verify(
        got.secret.as_bytes(),
        delivery,
        &body,
        now,
        webhook::DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|e| e.to_string());
    let answer = match checked {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNAUTHORIZED,
    };
    got.log.lock().expect("webhook log").push((checked, body));
    answer
}

impl Receiver {
    /// Starts it on `rt` and writes the secret to `dir/webhook.secret` (0600); returns the
    /// webhook entry of the cloud server's configuration.
    pub(super) fn start(rt: &Runtime, dir: &Path) -> Result<(Receiver, WebhookConfig), AnyError> {
        let secret = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
        let file = dir.join("webhook.secret");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)?;
            f.write_all(secret.as_bytes())?;
        }
        let listener = rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))?;
        let url = format!("http://{}/custos-events", listener.local_addr()?);
        let got = Arc::new(Got {
            secret,
            log: Mutex::default(),
        });
        let app = axum::Router::new().fallback(record).with_state(got.clone());
        // Ends with the runtime, at the end of the demo.
        rt.spawn(async move { axum::serve(listener, app).await });
        let mut hook = WebhookConfig::new("demo", url.clone(), file);
        hook.retry_base_ms = 200;
        Ok((Receiver { url, got }, hook))
    }

    /// Every delivery so far, each verified when it arrived; how many repeated an event
    /// already delivered (at least once: a run cut between an answer and its record sends
    /// again), each repeat the same signed body.
    fn events(&self) -> Result<(Vec<WebhookEvent>, usize), AnyError> {
        let log = self.got.log.lock().expect("webhook log");
        let mut first: HashMap<&str, &Bytes> = HashMap::new();
        let (mut events, mut repeats) = (Vec::new(), 0);
        for (checked, body) in log.iter() {
            let event = checked
                .as_ref()
                .map_err(|e| fail(&format!("a webhook delivery did not verify: {e}")))?;
            match first.get(event.id.as_str()) {
                Some(earlier) if *earlier == body => repeats += 1,
                Some(_) => {
                    return Err(fail(&format!(
                        "webhook event {} delivered twice with different bodies",
                        event.id
                    )))
                }
                None => {
                    first.insert(&event.id, body);
                    events.push(event.clone());
                }
            }
        }
        Ok((events, repeats))
    }
}

impl Demo {
    /// Waits until every request the deployment holds had the event of its state.
    pub(super) fn webhooks(
        &mut self,
        rt: &Runtime,
        rx: &Receiver,
    ) -> Result<serde_json::Value, AnyError> {
        let deadline = Instant::now() + DRAIN;
        let (events, repeats, requests) = loop {
            let requests = rt.block_on(self.every_request())?;
            let (events, repeats) = rx.events()?;
            let seen: HashSet<(&str, RequestStatus)> = events
                .iter()
                .map(|e| (e.request.id.as_str(), e.event.status()))
                .collect();
            let missing = requests
                .iter()
                .find(|(id, status)| !seen.contains(&(id.as_str(), *status)));
            match missing {
                None => break (events, repeats, requests.len()),
                Some((id, status)) if Instant::now() > deadline => {
                    return Err(fail(&format!(
                        "no webhook event for request {id} ({}) within {} s",
                        status.as_str(),
                        DRAIN.as_secs()
                    )))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &events {
            *by_type.entry(e.event.as_str()).or_default() += 1;
        }
        self.steps.ok(
            "webhooks",
            format!(
                "{} events about {requests} requests received at {}, each HMAC-verified on \
                 arrival ({repeats} sent again); every request had the event of its state \
                 ({by_type:?})",
                events.len(),
                rx.url
            ),
        );
        Ok(json!({
            "url": rx.url,
            "events": events.len(),
            "requests": requests,
            "by_type": by_type,
            "repeated": repeats,
            "verified": true,
        }))
    }

    /// Every request's id and state (the newest 500 in each state).
    async fn every_request(&self) -> Result<Vec<(String, RequestStatus)>, AnyError> {
        let mut all = Vec::new();
        for status in [
            RequestStatus::PendingApproval,
            RequestStatus::Submitting,
            RequestStatus::Completed,
            RequestStatus::Refused,
            RequestStatus::Failed,
            RequestStatus::Expired,
        ] {
            let query = RequestQuery {
                status: Some(status),
                kind: None,
                limit: Some(500),
            };
            let list = self.client.requests(&query).await?;
            all.extend(list.requests.into_iter().map(|r| (r.id, r.status)));
        }
        Ok(all)
    }
}
