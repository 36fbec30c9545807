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
    /// Requests whose logs have events past `notified`, oldest change first, with how far
    /// they were read.
    pub async fn unnotified_requests(
        &self,
        limit: usize,
    ) -> Result<Vec<(RequestRow, i64)>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS}, notified FROM requests WHERE notified < version \
             ORDER BY updated_at LIMIT {limit}"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((request_from_row(row)?, row.try_get::<i64, _>("notified")?)))
            .collect()
    }

    /// Writes `deliveries` of request `id` and marks its log read up to `to`, if it was
    /// read up to `from` (one transaction); false, writing nothing, when another run moved
    /// it first.
    pub async fn fan_out(
        &self,
        id: &str,
        from: i64,
        to: i64,
        deliveries: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                let moved = sqlx::query(
                    "UPDATE requests SET notified = $1 WHERE id = $2 AND notified = $3",
                )
                .bind(to)
                .bind(id.as_str())
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved != 1 {
                    return Ok(false);
                }
                for d in &deliveries {
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (webhook, event_id, request_id, seq, \
                         event, body, occurred_at, state, attempts, next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $7) \
                         ON CONFLICT (webhook, event_id) DO NOTHING",
                    )
                    .bind(d.webhook.as_str())
                    .bind(d.event_id.as_str())
                    .bind(d.request_id.as_str())
                    .bind(d.seq)
                    .bind(d.event.as_str())
                    .bind(d.body.as_str())
                    .bind(i(d.occurred_at))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
        })
        .await
    }

    /// Marks every request's log read (no webhook configured: nothing to notify); returns
    /// how many requests moved.
    pub async fn skip_notifications(&self) -> Result<u64, StoreError> {
        self.write(|conn| {
            Box::pin(async move {
                Ok(
                    sqlx::query("UPDATE requests SET notified = version WHERE notified < version")
                        .execute(&mut *conn)
                        .await?
                        .rows_affected(),
                )
            })
        })
        .await
    }

    /// `webhook`'s pending deliveries due at `now_ms`, in the order their events happened.
    pub async fn due_deliveries(
        &self,
        webhook: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let sql = format!(
            "SELECT event_id, event, body, occurred_at, attempts FROM webhook_deliveries \
             WHERE webhook = $1 AND state = 'pending' AND next_attempt_at <= $2 \
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
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Records an attempt at a pending delivery: `Ok(())` delivered it at `now_ms`; an
    /// error leaves it pending until `retry_at`, or abandons it when `retry_at` is `None`.
    pub async fn delivery_attempted(
        &self,
        webhook: &str,
        event_id: &str,
        now_ms: u64,
        outcome: Result<(), (String, Option<u64>)>,
    ) -> Result<(), StoreError> {
        let (state, error, next, ended) = match outcome {
            Ok(()) => ("delivered", None, now_ms, Some(now_ms)),
            Err((e, Some(at))) => ("pending", Some(truncate(e)), at, None),
            Err((e, None)) => ("abandoned", Some(truncate(e)), now_ms, Some(now_ms)),
        };
        let (webhook, event_id) = (webhook.to_string(), event_id.to_string());
        self.write(move |conn| {
            Box::pin(async move {
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
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
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
