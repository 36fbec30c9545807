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
//!   A row this server cannot read is moved on without deliveries (logged), so that it
//!   holds no other request's events back.
//! * **One list for every replica.** Each replica writes a fingerprint of its
//!   `[[webhooks]]` list (names, URLs, events, tenants; and its schema and protocol
//!   versions, so that a server unable to read a newer one's rows does not pass them by)
//!   with its heartbeat; `notified` moves only while every live replica wrote the mover's
//!   fingerprint, a condition of the moving statement itself (`fan_out_paused` is logged
//!   until they agree). A replica rolled out with a new list therefore never sees the old
//!   list's holder move past the events its new webhook should get. With no webhook
//!   anywhere, the job only moves a time (`webhook_skipped`) before which events count as
//!   read, leaving request rows alone (nothing costs the requests' own writes): a webhook
//!   configured later hears of what happens from about then on.
//! * **Which entries are events**: see [`events_after`].
//! * **Delivery**: every run, per webhook, its due deliveries oldest first, a request's
//!   events in their order (a later one waits while an earlier one is pending); each attempt
//!   signed afresh (`custos_cloud_api::webhook`, HMAC-SHA256 over `timestamp.body`). A 2xx
//!   answer delivers it. Otherwise it is retried after `retry_base_ms`, doubling up to
//!   `retry_max_ms`, and that webhook's turn ends for this run; when no connection could be
//!   made at all (refused, unreachable, TLS handshake), the webhook is held
//!   (`webhook_holds`): none of its deliveries, old or new, is tried before then, so a
//!   receiver that is down gets one attempt per backoff period. A receiver that answers
//!   badly or too slowly holds back only that delivery (and its request's later events). A run
//!   gives each webhook at most [`TURN`] and stops at shutdown or when the lease is lost.
//!   A delivery still failing `give_up_after_secs` after it was written is abandoned, its
//!   last error kept and logged. Receivers get each event at least once (a crash between a
//!   2xx and its record sends it again): they deduplicate on the event id.
//! * A webhook removed from the configuration keeps its pending rows, unsent, until it
//!   returns; deliveries that ended are forgotten after a week.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use custos_cloud_api::webhook::{
    self, EventType, EVENT_HEADER, EVENT_ID_HEADER, MIN_SECRET_BYTES, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use custos_cloud_api::RequestKind;

use crate::config::WebhookConfig;
use crate::db::{Agreement, Attempt, DeliveryRow, NewDelivery, StoreError, Unnotified};
use crate::replica::Job;
use crate::service::Cloud;

mod events;

pub use events::{body_of, events_after};

/// Requests fanned out per database read.
const FAN_OUT_BATCH: usize = 200;
/// Reads per run: a run ends even while events keep arriving.
const MAX_BATCHES: usize = 16;
/// Deliveries read per webhook and database read.
const DELIVERY_BATCH: usize = 64;
/// Longest a run spends on one webhook (its deliveries go on at the next run).
pub const TURN: Duration = Duration::from_secs(5);
/// Time allowed to connect to a receiver.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one attempt (connect, send, answer's head).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ended deliveries are kept (for operators reading the table).
const KEEP_ENDED_MS: u64 = 7 * 24 * 3600 * 1000;

/// The configured webhooks, ready to send.
pub struct Webhooks {
    hooks: Vec<Hook>,
    /// Of the list, as replicas compare it (hex SHA-256).
    fingerprint: String,
    /// Whether fan-out is paused (replicas disagree), so that it is logged once per pause.
    paused: AtomicBool,
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
    /// and the file at fault. Two webhooks may not share a secret: a delivery captured on
    /// its way to one would verify at the other.
    pub fn open(configs: &[WebhookConfig]) -> Result<Self, String> {
        let hooks: Vec<Hook> = configs.iter().map(Hook::open).collect::<Result<_, _>>()?;
        for (i, a) in hooks.iter().enumerate() {
            if let Some(b) = hooks[..i].iter().find(|b| b.secret == a.secret) {
                return Err(format!(
                    "webhooks {:?} and {:?} share a secret: give each its own",
                    b.name, a.name
                ));
            }
        }
        // What decides which deliveries are written, in a canonical order; secrets are not
        // part of it (the sender signs with its own at each attempt).
        let mut listed: Vec<_> = hooks
            .iter()
            .map(|h| {
                let mut tenants = h.tenants.clone();
                tenants.sort();
                tenants.dedup();
                let events: Vec<&str> = h.events.iter().map(|e| e.as_str()).collect();
                (h.name.clone(), h.url.to_string(), events, tenants)
            })
            .collect();
        listed.sort();
        let canonical = serde_json::to_vec(&(
            crate::db::schema_version(),
            custos_wire::protocol::PROTOCOL_VERSION,
            RequestKind::ALL.map(RequestKind::as_str),
            EventType::ALL.map(EventType::as_str),
            listed,
        ))
        .expect("lists serialize");
        Ok(Webhooks {
            hooks,
            fingerprint: hex::encode(Sha256::digest(canonical)),
            paused: AtomicBool::new(false),
        })
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// What replicas compare (written with each heartbeat).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
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
        // Text, so that the receiver's copy is the same bytes whatever tool reads it.
        if secret.len() < MIN_SECRET_BYTES || !secret.iter().all(u8::is_ascii_graphic) {
            return Err(at(format!(
                "the secret in {} must be {MIN_SECRET_BYTES} printable ASCII characters or \
                 more, e.g. 64 hex digits",
                c.secret_file.display()
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would carry loopback-only plain HTTP elsewhere.
            .no_proxy()
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

    fn wants(&self, e: &webhook::WebhookEvent) -> bool {
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

    /// One attempt: `Ok` on a 2xx answer; otherwise what went wrong and whether a
    /// connection was made.
    async fn send(&self, d: &DeliveryRow, now_secs: u64) -> Result<(), (String, bool)> {
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
                // Connected or not: only a receiver never reached holds the whole webhook
                // (a timeout or a reset may be this delivery's own doing).
                (text, !e.is_connect())
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err((format!("answered HTTP {}", status.as_u16()), true))
        }
    }
}

impl Cloud {
    /// One run of the webhooks job: fans new lifecycle events out into deliveries (while
    /// every live replica lists the same webhooks), sends those due, forgets those ended a
    /// week ago. Returns the deliveries made.
    pub async fn notify(&self) -> Result<usize, StoreError> {
        let hooks = self.webhooks();
        let fanned = match self.webhook_lists_agree(hooks).await {
            Ok(Some(agreement)) if hooks.is_empty() => {
                self.store()
                    .skip_notifications(self.now_ms(), &agreement)
                    .await
            }
            Ok(Some(agreement)) => self.fan_out(hooks, &agreement).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if hooks.is_empty() {
            return fanned.map(|_| 0);
        }
        // Deliveries already stored go out even when fan-out failed.
        let turns = hooks.hooks.iter().map(|h| self.deliver(h));
        let delivered: Vec<usize> = futures::future::join_all(turns)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        fanned?;
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

    /// Whether every live replica wrote this replica's `[[webhooks]]` fingerprint: the
    /// condition each move of `notified` repeats, or `None`.
    async fn webhook_lists_agree(&self, hooks: &Webhooks) -> Result<Option<Agreement>, StoreError> {
        let now = self.replica_now_ms().await?;
        let live = self.store().live_webhook_lists(now).await?;
        let others: Vec<&str> = live
            .iter()
            .filter(|(_, fp)| fp.as_deref() != Some(hooks.fingerprint()))
            .map(|(id, _)| id.as_str())
            .collect();
        let paused = !others.is_empty();
        self.metrics().webhook_fan_out_paused(paused);
        if hooks.paused.swap(paused, Ordering::AcqRel) != paused {
            if paused {
                tracing::error!(replicas = ?others, "fan_out_paused: live cloud server replicas list other [[webhooks]]; request events wait (none is lost) until every replica lists the same");
            } else {
                tracing::info!("every live replica lists the same [[webhooks]]: fan-out resumed");
            }
        }
        Ok((!paused).then(|| Agreement {
            live_at: now,
            fingerprint: hooks.fingerprint.clone(),
        }))
    }

    async fn fan_out(&self, hooks: &Webhooks, agreement: &Agreement) -> Result<(), StoreError> {
        let since = self.store().skipped_before().await?;
        for _ in 0..MAX_BATCHES {
            let batch = self
                .store()
                .unnotified_requests(since, FAN_OUT_BATCH)
                .await?;
            for request in &batch {
                let (row, notified) = match request {
                    Unnotified::Readable(row, notified) => (row, *notified),
                    Unnotified::Unreadable {
                        id,
                        version,
                        notified,
                        error,
                    } => {
                        tracing::error!(request_id = %id, error = %error, "request unreadable: its events are not notified");
                        self.store()
                            .fan_out(id, (*notified, *version), vec![], self.now_ms(), agreement)
                            .await?;
                        continue;
                    }
                };
                let mut deliveries = Vec::new();
                let events = events_after(row, notified, self.console_config());
                for (seq, mut event) in events.into_iter().filter(|(_, e)| e.occurred_at >= since) {
                    let body = body_of(&mut event);
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
                let moved = self
                    .store()
                    .fan_out(
                        &row.id,
                        (notified, row.version),
                        deliveries,
                        self.now_ms(),
                        agreement,
                    )
                    .await?;
                if !moved {
                    // Another run moved it, or a replica with another list came up: the
                    // next run looks again.
                    return Ok(());
                }
            }
            if batch.len() < FAN_OUT_BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Sends `hook`'s due deliveries until one fails, its [`TURN`] is over, the server
    /// stops or the lease is lost.
    async fn deliver(&self, hook: &Hook) -> Result<usize, StoreError> {
        let began = Instant::now();
        let mut delivered = 0;
        for _ in 0..MAX_BATCHES {
            let due = self
                .store()
                .due_deliveries(&hook.name, self.now_ms(), DELIVERY_BATCH)
                .await?;
            for d in &due {
                let replica = self.replica();
                if began.elapsed() > TURN || replica.stopping() || !replica.may_run(Job::Webhooks) {
                    return Ok(delivered);
                }
                let now = self.now_ms();
                let attempt = match hook.send(d, now / 1000).await {
                    Ok(()) => Attempt::Delivered,
                    Err((error, connected)) => {
                        let failed = d.attempts + 1;
                        if now.saturating_sub(d.created_at) < hook.give_up_ms {
                            tracing::warn!(webhook = %hook.name, event_id = %d.event_id, attempt = failed, error = %error, "webhook delivery failed; retrying later");
                            Attempt::Retry {
                                error,
                                at: now.saturating_add(hook.backoff_ms(failed)),
                                whole_webhook: !connected,
                            }
                        } else {
                            tracing::error!(webhook = %hook.name, event_id = %d.event_id, attempts = failed, error = %error, "webhook delivery abandoned");
                            Attempt::Abandoned { error }
                        }
                    }
                };
                let outcome = match &attempt {
                    Attempt::Delivered => "delivered",
                    Attempt::Retry { .. } => "retry",
                    Attempt::Abandoned { .. } => "abandoned",
                };
                self.metrics().webhook_attempt(&hook.name, outcome);
                let ok = attempt == Attempt::Delivered;
                self.store()
                    .delivery_attempted(&hook.name, &d.event_id, now, attempt)
                    .await?;
                if !ok {
                    return Ok(delivered);
                }
                delivered += 1;
            }
            if due.len() < DELIVERY_BATCH {
                break;
            }
        }
        Ok(delivered)
    }
}
