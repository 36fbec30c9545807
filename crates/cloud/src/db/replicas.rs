//! Replicas, job leases and persisted threshold audit reports (schema 8): what several
//! cloud servers on one database coordinate through. See `migrations/0008_replicas.sql`.

use super::*;

/// A running (or recently running) cloud server, as its heartbeat row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Random per process start.
    pub id: String,
    /// Unix ms.
    pub started_at: u64,
    /// Unix ms of its latest heartbeat.
    pub seen_at: u64,
    /// Heartbeat age after which it is dead (ms).
    pub ttl_ms: u64,
    /// Where it serves the REST API.
    pub listen: String,
}

/// A request in `submitting` whose owner is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    /// Request id.
    pub id: String,
    /// Its owner when listed (`None`: written before replicas).
    pub owner: Option<String>,
    /// The owner's last heartbeat (database clock) and TTL, if its row is still there.
    pub owner_seen: Option<(u64, u64)>,
}

/// Who holds a job's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// Job name.
    pub job: String,
    /// Replica id.
    pub holder: String,
    /// Unix ms until which it is held.
    pub until_ms: u64,
    /// How many holders the job has had (one more each time it changes hands).
    pub term: i64,
}

impl Store {
    /// The database server's clock (Unix ms): the one clock every replica's heartbeats and
    /// leases are written and judged with.
    pub async fn db_now_ms(&self) -> Result<u64, StoreError> {
        let sql = if self.writer.is_some() {
            "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        };
        let ms: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
        Ok(u(ms))
    }

    /// Records that replica `id` (dead once not seen for `ttl_ms`) is alive at `now_ms`
    /// (inserting its row the first time), with the fingerprint of its `[[webhooks]]` list
    /// (`crate::webhooks`).
    pub async fn heartbeat(
        &self,
        id: &str,
        listen: &str,
        started_at: u64,
        now_ms: u64,
        ttl_ms: u64,
        webhooks: &str,
    ) -> Result<(), StoreError> {
        let (id, listen, webhooks) = (id.to_string(), listen.to_string(), webhooks.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO cloud_replicas (id, started_at, seen_at, listen, ttl_ms, \
                     webhooks) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET seen_at = $3, listen = $4, ttl_ms = $5, \
                     webhooks = $6",
                )
                .bind(id.as_str())
                .bind(i(started_at))
                .bind(i(now_ms))
                .bind(listen.as_str())
                .bind(i(ttl_ms))
                .bind(webhooks.as_str())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Removes replica `id` and ends the leases it holds (clean shutdown): what it owned is
    /// taken over at once instead of after its heartbeat runs out (a lease row stays, so its
    /// term keeps counting holders). Also forgets replicas not seen since `forget_before_ms`.
    pub async fn retire(&self, id: &str, forget_before_ms: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                sqlx::query("UPDATE cloud_leases SET until_ms = 0 WHERE holder = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM cloud_replicas WHERE id = $1 OR seen_at < $2")
                    .bind(id.as_str())
                    .bind(i(forget_before_ms))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Every replica on record (dead ones for a day), oldest start first.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        self.replicas_where("", 0).await
    }

    /// The replicas alive at `now_ms` (seen within their own TTL), oldest start first.
    pub async fn replicas_live_at(&self, now_ms: u64) -> Result<Vec<ReplicaRow>, StoreError> {
        self.replicas_where("WHERE seen_at + ttl_ms >= $1", now_ms)
            .await
    }

    async fn replicas_where(&self, filter: &str, at: u64) -> Result<Vec<ReplicaRow>, StoreError> {
        let sql = format!(
            "SELECT id, started_at, seen_at, ttl_ms, listen FROM cloud_replicas {filter} \
             ORDER BY started_at, id"
        );
        let mut q = sqlx::query(&sql);
        if !filter.is_empty() {
            q = q.bind(i(at));
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaRow {
                    id: r.try_get("id")?,
                    started_at: u(r.try_get("started_at")?),
                    seen_at: u(r.try_get("seen_at")?),
                    ttl_ms: u(r.try_get("ttl_ms")?),
                    listen: r.try_get("listen")?,
                })
            })
            .collect()
    }

    /// Takes or renews the lease on `job` for `holder` for `ttl_ms` from `now_ms`, if it is
    /// free, expired, already `holder`'s, or runs more than two TTLs ahead (written by a
    /// clock gone wrong); returns the lease's term, or `None` when another replica holds it.
    /// Atomic on both engines: the insert of a new job and the conditional update are single
    /// statements, and on PostgreSQL a second replica's update waits for the first's and
    /// then re-checks the holder it wrote.
    pub async fn try_lease(
        &self,
        job: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        let (job, holder) = (job.to_string(), holder.to_string());
        let until_ms = now_ms.saturating_add(ttl_ms);
        let absurd_ms = now_ms.saturating_add(ttl_ms.saturating_mul(2));
        self.write(move |conn| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO cloud_leases (job, holder, until_ms, term) \
                     VALUES ($1, $2, $3, 1) ON CONFLICT (job) DO NOTHING",
                )
                .bind(job.as_str())
                .bind(holder.as_str())
                .bind(i(until_ms))
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 1 {
                    return Ok(Some(1));
                }
                let term: Option<i64> = sqlx::query_scalar(
                    "UPDATE cloud_leases SET \
                     term = CASE WHEN holder = $2 THEN term ELSE term + 1 END, \
                     holder = $2, until_ms = $3 \
                     WHERE job = $1 AND (holder = $2 OR until_ms < $4 OR until_ms > $5) \
                     RETURNING term",
                )
                .bind(job.as_str())
                .bind(holder.as_str())
                .bind(i(until_ms))
                .bind(i(now_ms))
                .bind(i(absurd_ms))
                .fetch_optional(&mut *conn)
                .await?;
                Ok(term)
            })
        })
        .await
    }

    /// Every job's lease.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query("SELECT job, holder, until_ms, term FROM cloud_leases ORDER BY job")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRow {
                    job: r.try_get("job")?,
                    holder: r.try_get("holder")?,
                    until_ms: u(r.try_get("until_ms")?),
                    term: r.try_get("term")?,
                })
            })
            .collect()
    }

    /// Requests in `submitting` that no live replica is executing at `now_ms`: owned by
    /// none (a server older than schema 8), or by a replica other than `me` not seen within
    /// its TTL. Requests whose last outcome is unknown are left to their own retry.
    pub async fn orphaned_submissions(
        &self,
        me: &str,
        now_ms: u64,
    ) -> Result<Vec<Orphan>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.id, r.owner, p.seen_at, p.ttl_ms FROM requests r \
             LEFT JOIN cloud_replicas p ON p.id = r.owner \
             WHERE r.status = 'submitting' \
             AND (r.error_code IS NULL OR r.error_code <> $3) \
             AND (r.owner IS NULL OR (r.owner <> $1 AND r.owner NOT IN \
                 (SELECT id FROM cloud_replicas WHERE seen_at + ttl_ms >= $2))) \
             ORDER BY r.created_at",
        )
        .bind(me)
        .bind(i(now_ms))
        .bind(crate::cluster::OUTCOME_UNKNOWN)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Orphan {
                    id: r.try_get("id")?,
                    owner: r.try_get("owner")?,
                    owner_seen: match (
                        r.try_get::<Option<i64>, _>("seen_at")?,
                        r.try_get::<Option<i64>, _>("ttl_ms")?,
                    ) {
                        (Some(seen), Some(ttl)) => Some((u(seen), u(ttl))),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// Ids of requests in `submitting` owned by `me` whose last outcome is not unknown.
    pub async fn owned_submissions(&self, me: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM requests WHERE status = 'submitting' AND owner = $1 \
             AND (error_code IS NULL OR error_code <> $2) ORDER BY created_at",
        )
        .bind(me)
        .bind(crate::cluster::OUTCOME_UNKNOWN)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    /// Stores a threshold key's latest audit report (JSON), replacing an older one (of two
    /// replicas auditing at once, the later report stays).
    pub async fn save_threshold_audit(
        &self,
        key_id: &str,
        finished_at: u64,
        report: String,
    ) -> Result<(), StoreError> {
        let key_id = key_id.to_string();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO threshold_audits (key_id, finished_at, report) \
                     VALUES ($1, $2, $3) \
                     ON CONFLICT (key_id) DO UPDATE SET finished_at = $2, report = $3 \
                     WHERE threshold_audits.finished_at <= $2",
                )
                .bind(key_id.as_str())
                .bind(i(finished_at))
                .bind(report.as_str())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// A threshold key's latest audit report (JSON), if it was ever audited.
    pub async fn threshold_audit(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT report FROM threshold_audits WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
