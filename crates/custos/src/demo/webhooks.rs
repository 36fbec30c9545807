//! The demo's webhook receiver (issue 17): the cloud server notifies it of every request
//! event; at the end, every request the deployment holds must have had the event of the
//! state it is in, each delivery HMAC-verified as a receiver would
//! (`custos_cloud_api::webhook::verify`), no event delivered twice.

use std::collections::{BTreeMap, HashSet};
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

type Log = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver on a loopback port, with the secret it shares with the cloud server.
pub(super) struct Receiver {
    url: String,
    secret: Zeroizing<String>,
    log: Log,
}

async fn record(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> StatusCode {
    log.lock().expect("webhook log").push((headers, body));
    StatusCode::NO_CONTENT
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
        let log = Log::default();
        let app = axum::Router::new().fallback(record).with_state(log.clone());
        // Ends with the runtime, at the end of the demo.
        rt.spawn(async move { axum::serve(listener, app).await });
        let mut hook = WebhookConfig::new("demo", url.clone(), file);
        hook.retry_base_ms = 200;
        Ok((Receiver { url, secret, log }, hook))
    }

    /// Every delivery so far, verified.
    fn events(&self) -> Result<Vec<WebhookEvent>, AnyError> {
        let now = custos_pki::clock::now_unix_ms() / 1000;
        let log = self.log.lock().expect("webhook log");
        log.iter()
            .map(|(headers, body)| {
                let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let delivery = Delivery {
                    event_id: h(webhook::EVENT_ID_HEADER),
                    event: h(webhook::EVENT_HEADER),
                    timestamp: h(webhook::TIMESTAMP_HEADER),
                    signature: h(webhook::SIGNATURE_HEADER),
                };
                webhook::verify(
                    self.secret.as_bytes(),
                    delivery,
                    body,
                    now,
                    webhook::DEFAULT_TOLERANCE_SECS,
                )
                .map_err(|e| fail(&format!("a webhook delivery did not verify: {e}")))
            })
            .collect()
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
        let (events, requests) = loop {
            let requests = rt.block_on(self.every_request())?;
            let events = rx.events()?;
            let seen: HashSet<(&str, RequestStatus)> = events
                .iter()
                .map(|e| (e.request.id.as_str(), e.event.status()))
                .collect();
            let missing = requests
                .iter()
                .find(|(id, status)| !seen.contains(&(id.as_str(), *status)));
            match missing {
                None => break (events, requests.len()),
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
        let unique: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if unique.len() != events.len() {
            return Err(fail(&format!(
                "{} webhook events delivered twice",
                events.len() - unique.len()
            )));
        }
        let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &events {
            *by_type.entry(e.event.as_str()).or_default() += 1;
        }
        self.steps.ok(
            "webhooks",
            format!(
                "{} events about {requests} requests received at {}, each HMAC-verified, \
                 none twice; every request had the event of its state ({by_type:?})",
                events.len(),
                rx.url
            ),
        );
        Ok(json!({
            "url": rx.url,
            "events": events.len(),
            "requests": requests,
            "by_type": by_type,
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
