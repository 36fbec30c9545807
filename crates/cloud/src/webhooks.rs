//! Webhook notifications: request events POSTed to the operator's receivers, signed with
//! an HMAC, retried with backoff until a receiver answers 2xx.
//!
//! * **Nothing lost, nothing invented.** The outbox is each request's lifecycle log,
//!   written in the same statement as every state change; `requests.notified` is how far
//!   the webhooks job has read it (`migrations/0010_webhooks.sql`). The job turns the new
//!   log entries into one delivery per webhook and moves `notified` on, in one transaction:
//!   a crash before the commit fans the same entries out again, after it the deliveries are
//!   stored. The job runs on the replica holding the `webhooks` lease
//!   ([`crate::replica::Job::Webhooks`]); two runs at once still write each delivery once
//!   (the move of `notified` is a compare-and-swap and a delivery's key is its event id).
//! * **Which entries are events** ([`events_after`]): `created` while the request waits
//!   for approvals (`request.pending`), its first `submitting` (`request.approved`: quorum
//!   reached), `completed`, `refused` and `rejected` (`request.refused`), `expired`,
//!   `failed`. Individual approvals, resubmissions and unknown outcomes are not.
//! * **Delivery**: every run, per webhook, its due deliveries oldest first; each attempt
//!   is signed afresh (`custos_cloud_api::webhook`, HMAC-SHA256 over `timestamp.body`). A
//!   2xx answer delivers it; anything else (refused connection, timeout, another status,
//!   a redirect) retries it after `retry_base_ms`, doubling up to `retry_max_ms`, and ends
//!   that webhook's turn in this run, so a receiver that is down gets at most one attempt
//!   per run. After `give_up_after_secs` a delivery is abandoned, with its last error kept
//!   and logged. Receivers get each event at least once (a crash between a 2xx and its
//!   record sends it again): they deduplicate on the event id. Events of one request
//!   arrive in order unless a retry is pending; `occurred_at` and the id's seq order them.
//! * Webhooks are the server's configuration: replicas sharing a database should list the
//!   same ones (the lease holder's list is the one delivered). A webhook removed from the
//!   configuration keeps its pending rows, unsent, until it returns.

use std::time::Duration;

use zeroize::Zeroizing;

use custos_cloud_api::webhook::{
    self, EventError, EventRequest, EventType, WebhookEvent, EVENT_HEADER, EVENT_ID_HEADER,
    MIN_SECRET_BYTES, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

use crate::config::WebhookConfig;
use crate::db::{NewDelivery, RequestRow, StoreError};
use crate::service::Cloud;

/// Requests fanned out per database read.
const FAN_OUT_BATCH: usize = 200;
/// Deliveries read per webhook and database read.
const DELIVERY_BATCH: usize = 64;
/// Reads per webhook and run: a run ends even while events keep arriving.
const MAX_BATCHES: usize = 16;
/// Time allowed for one attempt (connect, send, answer's head).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ended deliveries are kept (for operators reading the table).
const KEEP_ENDED_MS: u64 = 7 * 24 * 3600 * 1000;

/// The configured webhooks, ready to send.
pub struct Webhooks {
    hooks: Vec<Hook>,
}

struct Hook {
    name: String,
    url: reqwest::Url,
    secret: Zeroizing<Vec<u8>>,
    events: Vec<EventType>,
    tenants: Vec<String>,
    retry_base_ms: u64,
    retry_max_ms: u64,
    give_up_ms: u64,
    http: reqwest::Client,
}

impl Webhooks {
    /// Reads every webhook's secret (and roots) and builds its client; names the webhook
    /// and the file at fault.
    pub fn open(configs: &[WebhookConfig]) -> Result<Self, String> {
        let hooks = configs.iter().map(Hook::open).collect::<Result<_, _>>()?;
        Ok(Webhooks { hooks })
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }
}

impl Hook {
    fn open(c: &WebhookConfig) -> Result<Self, String> {
        let at = |m: String| format!("webhook {:?}: {m}", c.name);
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| at(format!("cannot read {}: {e}", p.display())))
        };
        let raw = Zeroizing::new(read(&c.secret_file)?);
        let secret = Zeroizing::new(raw.trim_ascii().to_vec());
        if secret.len() < MIN_SECRET_BYTES {
            return Err(at(format!(
                "the secret in {} is shorter than {MIN_SECRET_BYTES} bytes",
                c.secret_file.display()
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("custos-cloud/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_file {
            let pem = read(ca)?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| at(format!("{}: {e}", ca.display())))?;
            if roots.is_empty() {
                return Err(at(format!("{}: no certificate", ca.display())));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        Ok(Hook {
            name: c.name.clone(),
            url: reqwest::Url::parse(&c.url).map_err(|e| at(format!("url: {e}")))?,
            secret,
            events: c.event_types(),
            tenants: c.tenants.clone(),
            retry_base_ms: c.retry_base_ms,
            retry_max_ms: c.retry_max_ms,
            give_up_ms: c.give_up_after_secs.saturating_mul(1000),
            http: builder.build().map_err(|e| at(e.to_string()))?,
        })
    }

    fn wants(&self, e: &WebhookEvent) -> bool {
        self.events.contains(&e.event)
            && (self.tenants.is_empty() || self.tenants.contains(&e.request.tenant))
    }

    /// Delay before the attempt after `failed` failed ones.
    fn backoff_ms(&self, failed: u32) -> u64 {
        let doubled = self
            .retry_base_ms
            .saturating_mul(1u64 << failed.saturating_sub(1).min(32));
        doubled.min(self.retry_max_ms)
    }

    /// One attempt: `Ok` on a 2xx answer.
    async fn send(&self, d: &crate::db::DeliveryRow, now_secs: u64) -> Result<(), String> {
        let answer = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, &d.event_id)
            .header(EVENT_HEADER, &d.event)
            .header(TIMESTAMP_HEADER, now_secs.to_string())
            .header(
                SIGNATURE_HEADER,
                webhook::sign(&self.secret, now_secs, d.body.as_bytes()),
            )
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| {
                // The URL stays out of logs (the webhook's name is in them); the causes
                // (refused, timed out, certificate) say what to fix.
                let e = e.without_url();
                let mut text = format!("not delivered: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                text
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// The webhook events in `row`'s log after position `after`, oldest first, with their
/// positions; each links to the request's console page when `console_origin` is set.
pub fn events_after(
    row: &RequestRow,
    after: i64,
    console_origin: Option<&str>,
) -> Vec<(i64, WebhookEvent)> {
    let log = &row.events;
    let mut out = Vec::new();
    for (i, e) in log.iter().enumerate().filter(|(_, e)| e.seq > after) {
        let event = match e.event.as_str() {
            // Stored submitting at once: it arrived with its quorum and never waited.
            "created" if log.get(i + 1).is_some_and(|n| n.event == "submitting") => continue,
            "created" => EventType::Pending,
            "submitting" if log[..i].iter().any(|p| p.event == "submitting") => continue,
            "submitting" => EventType::Approved,
            "completed" => EventType::Completed,
            "refused" | "rejected" => EventType::Refused,
            "expired" => EventType::Expired,
            "failed" => EventType::Failed,
            _ => continue,
        };
        let error = match e.event.as_str() {
            "rejected" => Some((
                crate::service::REJECTED.to_string(),
                format!("rejected by admin {}", e.detail),
            )),
            // Written `code: message` (`Failure::record`).
            "refused" | "failed" => Some(match e.detail.split_once(": ") {
                Some((code, message)) => (code.to_string(), message.to_string()),
                None => (e.event.clone(), e.detail.clone()),
            }),
            "expired" => Some(("expired".to_string(), e.detail.clone())),
            _ => None,
        };
        out.push((
            e.seq,
            WebhookEvent {
                id: format!("{}.{}", row.id, e.seq),
                event,
                occurred_at: e.at,
                request: EventRequest {
                    id: row.id.clone(),
                    kind: row.kind(),
                    cluster: row.cluster.clone(),
                    tenant: row.tenant.clone(),
                    status: event.status(),
                    quorum: row.quorum,
                },
                error: error.map(|(code, message)| EventError { code, message }),
                console_url: console_origin.map(|o| format!("{o}/console/requests/{}", row.id)),
            },
        ));
    }
    out
}

impl Cloud {
    /// One run of the webhooks job: fans new lifecycle events out into deliveries, sends
    /// those due, forgets those ended a week ago. Returns the deliveries made.
    pub async fn notify(&self) -> Result<usize, StoreError> {
        let hooks = self.webhooks();
        if hooks.is_empty() {
            self.store().skip_notifications().await?;
            return Ok(0);
        }
        self.fan_out(hooks).await?;
        let runs = hooks.hooks.iter().map(|h| self.deliver(h));
        let delivered = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<Result<Vec<usize>, StoreError>>()?;
        self.store()
            .prune_deliveries(self.now_ms().saturating_sub(KEEP_ENDED_MS))
            .await?;
        let pending = self.store().pending_deliveries().await?;
        for h in &hooks.hooks {
            let n = pending
                .iter()
                .find(|(w, _)| *w == h.name)
                .map_or(0, |p| p.1);
            self.metrics().webhook_pending(&h.name, n);
        }
        Ok(delivered.iter().sum())
    }

    async fn fan_out(&self, hooks: &Webhooks) -> Result<(), StoreError> {
        let console = self.console_config().map(|c| c.origin.as_str());
        for _ in 0..MAX_BATCHES {
            let batch = self.store().unnotified_requests(FAN_OUT_BATCH).await?;
            for (row, notified) in &batch {
                let mut deliveries = Vec::new();
                for (seq, event) in events_after(row, *notified, console) {
                    let body = serde_json::to_string(&event).expect("events serialize");
                    for h in hooks.hooks.iter().filter(|h| h.wants(&event)) {
                        deliveries.push(NewDelivery {
                            webhook: h.name.clone(),
                            event_id: event.id.clone(),
                            request_id: row.id.clone(),
                            seq,
                            event: event.event.as_str().to_string(),
                            body: body.clone(),
                            occurred_at: event.occurred_at,
                        });
                    }
                }
                self.store()
                    .fan_out(&row.id, *notified, row.version, deliveries)
                    .await?;
            }
            if batch.len() < FAN_OUT_BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Sends `hook`'s due deliveries until one fails (or [`MAX_BATCHES`] reads).
    async fn deliver(&self, hook: &Hook) -> Result<usize, StoreError> {
        let mut delivered = 0;
        for _ in 0..MAX_BATCHES {
            let now = self.now_ms();
            let due = self
                .store()
                .due_deliveries(&hook.name, now, DELIVERY_BATCH)
                .await?;
            for d in &due {
                let now = self.now_ms();
                let outcome = hook.send(d, now / 1000).await;
                let failed = outcome.is_err();
                let outcome = outcome.map_err(|e| {
                    let age = now.saturating_sub(d.occurred_at);
                    let retry = (age < hook.give_up_ms)
                        .then(|| now.saturating_add(hook.backoff_ms(d.attempts + 1)));
                    match retry {
                        Some(_) => tracing::warn!(webhook = %hook.name, event_id = %d.event_id, attempt = d.attempts + 1, error = %e, "webhook delivery failed; retrying later"),
                        None => tracing::error!(webhook = %hook.name, event_id = %d.event_id, attempts = d.attempts + 1, error = %e, "webhook delivery abandoned"),
                    }
                    self.metrics().webhook_attempt(&hook.name, if retry.is_some() { "retry" } else { "abandoned" });
                    (e, retry)
                });
                self.store()
                    .delivery_attempted(&hook.name, &d.event_id, now, outcome)
                    .await?;
                if failed {
                    return Ok(delivered);
                }
                self.metrics().webhook_attempt(&hook.name, "delivered");
                delivered += 1;
            }
            if due.len() < DELIVERY_BATCH {
                break;
            }
        }
        Ok(delivered)
    }
}
