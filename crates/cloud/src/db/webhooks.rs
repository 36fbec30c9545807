//! Webhook deliveries (schema 10). See `migrations/0010_webhooks.sql`: the requests'
//! lifecycle logs are the outbox, `requests.notified` how far they were read.

use super::*;

/// A delivery to write when a request's events are fanned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// The webhook's name.
    pub webhook: String,
    /// `<request id>.<seq>`.
    pub event_id: String,
    /// Its request.
    pub request_id: String,
    /// The event's position in the request's log.
    pub seq: i64,
    /// Its type's name.
    pub event: String,
    /// The JSON to send.
    pub body: String,
    /// When it happened (Unix ms).
    pub occurred_at: u64,
}

/// A request whose log has events past `notified`.
#[derive(Clone, Debug)]
pub enum Unnotified {
    /// Its row, and how far its log was read.
    Readable(Box<RequestRow>, i64),
    /// A row this server cannot read (corrupt, or written by a newer version): moved on
    /// without deliveries, so that it holds no other request's events back.
    Unreadable {
        /// Request id.
        id: String,
        /// Its version.
        version: i64,
        /// How far its log was read.
        notified: i64,
        /// Why it could not be read.
        error: String,
    },
}

/// What every live replica must have written for `notified` to move: the fingerprint of
/// its `[[webhooks]]` list, judged alive at `live_at` (Unix ms, the replicas' clock).
#[derive(Clone, Debug)]
pub struct Agreement {
    /// When liveness is judged.
    pub live_at: u64,
    /// The fingerprint of the replica moving `notified`.
    pub fingerprint: String,
}

/// The SQL condition that every replica alive at `$n` wrote the fingerprint `$n+1`.
fn agreed(n: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM cloud_replicas WHERE seen_at + ttl_ms >= ${n} \
         AND (webhooks IS NULL OR webhooks <> ${}))",
        n + 1
    )
}

/// How an attempt at a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Failed; tried again from `at` (Unix ms). `whole_webhook`: the receiver could not be
    /// reached, so none of the webhook's deliveries is tried before then either.
    Retry {
        /// What went wrong.
        error: String,
        /// Next attempt.
        at: u64,
        /// Whether the webhook's other deliveries wait too.
        whole_webhook: bool,
    },
    /// Failed past the webhook's give-up age: never tried again.
    Abandoned {
        /// What went wrong last.
        error: String,
    },
}

/// A delivery waiting to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRow {
    /// `<request id>.<seq>`.
    pub event_id: String,
    /// Its type's name.
    pub event: String,
    /// The JSON to send.
    pub body: String,
    /// When it happened (Unix ms).
    pub occurred_at: u64,
    /// When its row was written (Unix ms).
    pub created_at: u64,
    /// Attempts so far.
    pub attempts: u32,
}

/// How a delivery stands, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    /// `<request id>.<seq>`.
    pub event_id: String,
    /// Its type's name.
    pub event: String,
    /// `pending`, `delivered` or `abandoned`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
}

impl Store {
    /// Requests changed at or after `since_ms` whose logs have events past `notified`,
    /// oldest change first, with how far they were read.
    pub async fn unnotified_requests(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Unnotified>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS}, notified FROM requests WHERE notified < version \
             AND updated_at >= $1 ORDER BY updated_at LIMIT {limit}"
        );
        let rows = sqlx::query(&sql)
            .bind(i(since_ms))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let notified: i64 = row.try_get("notified")?;
                Ok(match request_from_row(row) {
                    Ok(r) => Unnotified::Readable(Box::new(r), notified),
                    Err(e) => Unnotified::Unreadable {
                        id: row.try_get("id")?,
                        version: row.try_get("version")?,
                        notified,
                        error: e.to_string(),
                    },
                })
            })
            .collect()
    }

    /// Writes `deliveries` of request `id` (at `now_ms`) and marks its log read up to `to`,
    /// if it was read up to `from` and the replicas are in `agreement` (one transaction);
    /// false, writing nothing, otherwise.
    pub async fn fan_out(
        &self,
        id: &str,
        (from, to): (i64, i64),
        deliveries: Vec<NewDelivery>,
        now_ms: u64,
        agreement: &Agreement,
    ) -> Result<bool, StoreError> {
        let (id, agreement) = (id.to_string(), agreement.clone());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                let sql = format!(
                    "UPDATE requests SET notified = $1 WHERE id = $2 AND notified = $3 AND {}",
                    agreed(4)
                );
                let moved = sqlx::query(&sql)
                    .bind(to)
                    .bind(id.as_str())
                    .bind(from)
                    .bind(i(agreement.live_at))
                    .bind(agreement.fingerprint.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved != 1 {
                    return Ok(false);
                }
                for d in &deliveries {
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (webhook, event_id, request_id, seq, \
                         event, body, occurred_at, created_at, state, attempts, \
                         next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $7) \
                         ON CONFLICT (webhook, event_id) DO NOTHING",
                    )
                    .bind(d.webhook.as_str())
                    .bind(d.event_id.as_str())
                    .bind(d.request_id.as_str())
                    .bind(d.seq)
                    .bind(d.event.as_str())
                    .bind(d.body.as_str())
                    .bind(i(d.occurred_at))
                    .bind(i(now_ms))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
        })
        .await
    }

    /// Marks every event before `before_ms` as read (no webhook configured: nothing to
    /// notify) if the replicas are in `agreement`: one small row, however many requests
    /// changed (their rows are left as they are).
    pub async fn skip_notifications(
        &self,
        before_ms: u64,
        agreement: &Agreement,
    ) -> Result<(), StoreError> {
        let agreement = agreement.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let sql = format!(
                    "UPDATE webhook_skipped SET before_ms = $3 WHERE id = 'all' \
                     AND before_ms < $3 AND {}",
                    agreed(1)
                );
                sqlx::query(&sql)
                    .bind(i(agreement.live_at))
                    .bind(agreement.fingerprint.as_str())
                    .bind(i(before_ms))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Before when events count as read whatever `notified` says (Unix ms).
    pub async fn skipped_before(&self) -> Result<u64, StoreError> {
        let ms: Option<i64> =
            sqlx::query_scalar("SELECT before_ms FROM webhook_skipped WHERE id = 'all'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(ms.map_or(0, u))
    }

    /// `webhook`'s pending deliveries due at `now_ms`, in the order their events happened;
    /// none while an earlier event of its request is still pending, nor while the webhook
    /// is held (its receiver could not be reached).
    pub async fn due_deliveries(
        &self,
        webhook: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let sql = format!(
            "SELECT event_id, event, body, occurred_at, created_at, attempts \
             FROM webhook_deliveries d \
             WHERE webhook = $1 AND state = 'pending' AND next_attempt_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook = d.webhook \
                 AND e.request_id = d.request_id AND e.state = 'pending' AND e.seq < d.seq) \
             AND NOT EXISTS (SELECT 1 FROM webhook_holds h WHERE h.webhook = d.webhook \
                 AND h.until_ms > $2) \
             ORDER BY occurred_at, request_id, seq LIMIT {limit}"
        );
        let rows = sqlx::query(&sql)
            .bind(webhook)
            .bind(i(now_ms))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryRow {
                    event_id: r.try_get("event_id")?,
                    event: r.try_get("event")?,
                    body: r.try_get("body")?,
                    occurred_at: u(r.try_get("occurred_at")?),
                    created_at: u(r.try_get("created_at")?),
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Records an attempt at a pending delivery made at `now_ms` (one transaction).
    pub async fn delivery_attempted(
        &self,
        webhook: &str,
        event_id: &str,
        now_ms: u64,
        outcome: Attempt,
    ) -> Result<(), StoreError> {
        let (state, error, next, ended, hold) = match outcome {
            Attempt::Delivered => ("delivered", None, now_ms, Some(now_ms), None),
            Attempt::Retry {
                error,
                at,
                whole_webhook,
            } => (
                "pending",
                Some(truncate(error)),
                at,
                None,
                whole_webhook.then_some(at),
            ),
            Attempt::Abandoned { error } => (
                "abandoned",
                Some(truncate(error)),
                now_ms,
                Some(now_ms),
                None,
            ),
        };
        let (webhook, event_id) = (webhook.to_string(), event_id.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                if let Some(until) = hold {
                    sqlx::query(
                        "INSERT INTO webhook_holds (webhook, until_ms) VALUES ($1, $2) \
                         ON CONFLICT (webhook) DO UPDATE SET until_ms = $2",
                    )
                    .bind(webhook.as_str())
                    .bind(i(until))
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                     last_error = COALESCE($2, last_error), next_attempt_at = $3, \
                     ended_at = $4 WHERE webhook = $5 AND event_id = $6 AND state = 'pending'",
                )
                .bind(state)
                .bind(error)
                .bind(i(next))
                .bind(ended.map(i))
                .bind(webhook.as_str())
                .bind(event_id.as_str())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// The `[[webhooks]]` fingerprints of the replicas alive at `now_ms` (`None`: not
    /// written yet), by replica id.
    pub async fn live_webhook_lists(
        &self,
        now_ms: u64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows =
            sqlx::query("SELECT id, webhooks FROM cloud_replicas WHERE seen_at + ttl_ms >= $1")
                .bind(i(now_ms))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("webhooks")?)))
            .collect()
    }

    /// Forgets deliveries that ended before `before_ms`; returns how many.
    pub async fn prune_deliveries(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            Box::pin(async move {
                Ok(sqlx::query(
                    "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND ended_at < $1",
                )
                .bind(i(before_ms))
                .execute(&mut *conn)
                .await?
                .rows_affected())
            })
        })
        .await
    }

    /// Pending deliveries per webhook.
    pub async fn pending_deliveries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT webhook, COUNT(*) AS n FROM webhook_deliveries WHERE state = 'pending' \
             GROUP BY webhook",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("webhook")?, r.try_get("n")?)))
            .collect()
    }

    /// Every delivery to `webhook` kept, in the order their events happened.
    pub async fn deliveries(&self, webhook: &str) -> Result<Vec<DeliveryState>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, event, state, attempts, last_error FROM webhook_deliveries \
             WHERE webhook = $1 ORDER BY occurred_at, request_id, seq",
        )
        .bind(webhook)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryState {
                    event_id: r.try_get("event_id")?,
                    event: r.try_get("event")?,
                    state: r.try_get("state")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect()
    }
}
