//! The single history writer: owns the chain head and commits appends in groups.
//!
//! Appends must be serialised, because each entry's hash covers the previous one. Doing that
//! with one transaction per entry would cap throughput at the commit rate, so callers hand
//! their entries to this task over a channel; it takes everything queued (up to
//! [`MAX_BATCH`]), chains and writes the whole group plus the new head in ONE transaction, and
//! only then answers each caller. A caller therefore never hears "ok" for an entry that is not
//! committed, and a failed transaction fails every entry in it.
//!
//! On SQLite every statement is a round trip to the connection's own worker thread (sqlx runs
//! each SQLite connection on a thread), so the writer keeps a connection of its own and sends
//! a whole batch (BEGIN, head compare-and-swap, inserts, COMMIT) as ONE multi-statement query:
//! one thread hand-off per group commit instead of a pool acquire (with its ping), a BEGIN,
//! an UPDATE, an INSERT per chunk and a COMMIT, each a hand-off there and back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{self, Body};
use crate::url::Engine;
use crate::{Entry, MetadataError, NewEntry};

/// Most entries committed in one transaction. Large enough to amortise a commit (an fsync on
/// PostgreSQL) over many requests, small enough that one transaction stays short.
pub(crate) const MAX_BATCH: usize = 512;

/// Longest the writer waits for the entries of callers that announced them
/// ([`crate::MetadataDb::expect_appends`]) before it commits what is queued: a commit costs
/// the same whatever its size (on SQLite a page write per table and index, on PostgreSQL an
/// fsync).
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Rows per INSERT statement. 14 parameters each, so 64 rows stay far below the bind-parameter
/// limits of both engines (SQLite 32766, PostgreSQL 65535) and the few distinct statement
/// shapes stay in the prepared-statement cache.
const ROWS_PER_INSERT: usize = 64;

/// One queued append and where its result goes.
pub(crate) struct AppendRequest {
    pub entry: NewEntry,
    pub reply: oneshot::Sender<Result<Entry, MetadataError>>,
}

/// What the writer believes the last committed entry is.
#[derive(Clone, Copy)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: [u8; 32],
    /// Timestamps are kept non-decreasing along the chain even if the wall clock steps back,
    /// so that "log order" and "time order" never disagree for a reader.
    pub at_ms: i64,
}

/// Builds `INSERT INTO <table> (<cols>) VALUES (..), (..) <suffix>` with one placeholder per
/// value: `$N` for PostgreSQL, plain `?` for SQLite. (SQLite accepts `$N` too, but looks up
/// each named parameter by a linear scan, which made a 3,000-parameter insert about seven
/// times slower than with anonymous `?`.)
pub(crate) fn multi_insert(
    engine: Engine,
    table: &str,
    cols: &str,
    ncols: usize,
    rows: usize,
    suffix: &str,
) -> String {
    let mut sql = format!("INSERT INTO {table} ({cols}) VALUES ");
    let mut n = 1usize;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..ncols {
            if c > 0 {
                sql.push_str(", ");
            }
            match engine {
                Engine::Sqlite => sql.push('?'),
                Engine::Postgres => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
            n += 1;
        }
        sql.push(')');
    }
    sql.push_str(suffix);
    sql
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads the committed head. Used at start and after every failed batch, because after a
/// failure the writer cannot know whether the commit happened (e.g. connection lost after
/// COMMIT was sent), and the database is the only authority.
pub(crate) async fn load_head(pool: &AnyPool) -> Result<Head, MetadataError> {
    let row = sqlx::query("SELECT seq, hash FROM chain_head WHERE id = 1")
        .fetch_optional(pool)
        .await
        .map_err(MetadataError::Read)?
        .ok_or_else(|| MetadataError::Corrupt("chain_head row is missing".into()))?;
    let seq: i64 = row.try_get("seq").map_err(MetadataError::Read)?;
    let hash_hex: String = row.try_get("hash").map_err(MetadataError::Read)?;
    let hash = chain::parse_hash(&hash_hex).ok_or_else(|| {
        MetadataError::Corrupt(format!("chain_head hash {hash_hex:?} is not 64 hex digits"))
    })?;
    let at_ms: Option<i64> = if seq > 0 {
        sqlx::query_scalar("SELECT at_ms FROM history WHERE seq = $1")
            .bind(seq)
            .fetch_optional(pool)
            .await
            .map_err(MetadataError::Read)?
    } else {
        None
    };
    Ok(Head {
        seq,
        hash,
        at_ms: at_ms.unwrap_or(0),
    })
}

/// Assigns seq, time and links to a batch, starting after `head`.
fn chain_batch(head: Head, batch: &mut [AppendRequest]) -> (Vec<Entry>, Head) {
    let at_ms = now_ms().max(head.at_ms);
    let mut prev = head.hash;
    let mut seq = head.seq;
    let mut out = Vec::with_capacity(batch.len());
    for req in batch.iter_mut() {
        seq += 1;
        let e = std::mem::take(&mut req.entry);
        let approvers = e.approvers;
        let hash = chain::link(
            &prev,
            &Body {
                seq,
                at_ms,
                kind: &e.kind,
                request_id: e.request_id.as_deref(),
                actor: &e.actor,
                key_id: e.key_id.as_deref(),
                path: e.path.as_deref(),
                approvers: &approvers,
                node: e.node.as_deref(),
                outcome: &e.outcome,
                detail: &e.detail,
                duration_us: e.duration_us,
            },
        );
        out.push(Entry {
            seq,
            at_ms,
            kind: e.kind,
            request_id: e.request_id,
            actor: e.actor,
            key_id: e.key_id,
            path: e.path,
            approvers,
            node: e.node,
            outcome: e.outcome,
            detail: e.detail,
            duration_us: e.duration_us,
            prev_hash: hex::encode(prev),
            hash: hex::encode(hash),
        });
        prev = hash;
    }
    (
        out,
        Head {
            seq,
            hash: prev,
            at_ms,
        },
    )
}

/// Why a batch was not committed; cheap to hand to every caller of the batch.
#[derive(Clone)]
enum BatchError {
    Db(Arc<sqlx::Error>),
    HeadMoved { expected_seq: i64 },
    Corrupt(String),
}

impl From<BatchError> for MetadataError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Db(e) => MetadataError::Write(e),
            BatchError::HeadMoved { expected_seq } => MetadataError::HeadMoved { expected_seq },
            BatchError::Corrupt(m) => MetadataError::Corrupt(m),
        }
    }
}

fn db(e: sqlx::Error) -> BatchError {
    BatchError::Db(Arc::new(e))
}

async fn write_batch(
    pool: &AnyPool,
    engine: Engine,
    old: Head,
    new: Head,
    entries: &[Entry],
) -> Result<(), BatchError> {
    let mut tx = pool.begin().await.map_err(db)?;
    // The head moves first and only from the value this writer believes in. On PostgreSQL the
    // row lock makes a concurrent second writer wait here and then match zero rows; on SQLite
    // the write lock serialises whole transactions. Either way a second writer is refused
    // instead of interleaving its own chain.
    let moved = sqlx::query::<Any>(
        "UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 AND hash = $4",
    )
    .bind(new.seq)
    .bind(hex::encode(new.hash))
    .bind(old.seq)
    .bind(hex::encode(old.hash))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if moved.rows_affected() != 1 {
        // Dropping `tx` rolls back.
        return Err(BatchError::HeadMoved {
            expected_seq: old.seq,
        });
    }
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let sql = multi_insert(engine, "history", crate::ENTRY_COLUMNS, 14, chunk.len(), "");
        let mut q = sqlx::query::<Any>(&sql);
        for e in chunk {
            q = bind_entry(q, e);
        }
        q.execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

/// Where the writer commits.
pub(crate) struct Sink {
    pool: AnyPool,
    engine: Engine,
    /// SQLite: the URL the writer's own connection is (re)opened from.
    url: String,
    /// SQLite: the writer's own connection, opened on first use and after a failure.
    conn: Option<AnyConnection>,
    /// SQLite: the batch statement per batch size up to [`ROWS_PER_INSERT`], built once.
    sql: HashMap<usize, String>,
}

impl Sink {
    pub(crate) fn new(pool: AnyPool, engine: Engine, url: &str) -> Self {
        Sink {
            pool,
            engine,
            url: url.to_string(),
            conn: None,
            sql: HashMap::new(),
        }
    }

    async fn write(&mut self, old: Head, new: Head, entries: &[Entry]) -> Result<(), BatchError> {
        // A closed pool means the database was closed: appends fail (fail closed), also on
        // the writer's own connection.
        if self.pool.is_closed() {
            if let Some(conn) = self.conn.take() {
                let _ = conn.close().await;
            }
            return Err(db(sqlx::Error::PoolClosed));
        }
        match self.engine {
            Engine::Postgres => write_batch(&self.pool, self.engine, old, new, entries).await,
            Engine::Sqlite => self.write_sqlite(old, new, entries).await,
        }
    }

    /// The whole batch in one multi-statement query on the writer's connection. The inserts
    /// only take effect if the head compare-and-swap did (they are guarded by the new head),
    /// and every statement returns one row per changed row, so the rows received tell
    /// exactly what was committed: all of it, or nothing (head moved).
    async fn write_sqlite(
        &mut self,
        old: Head,
        new: Head,
        entries: &[Entry],
    ) -> Result<(), BatchError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => crate::connect_sqlite_writer(&self.url).await.map_err(db)?,
        };
        // Small batches (the common case) reuse their statement text; a rare large one is
        // built for the occasion, so the cache stays small.
        let built;
        let sql = if entries.len() <= ROWS_PER_INSERT {
            self.sql
                .entry(entries.len())
                .or_insert_with(|| sqlite_batch_sql(entries.len()))
                .as_str()
        } else {
            built = sqlite_batch_sql(entries.len());
            built.as_str()
        };
        let new_hash = hex::encode(new.hash);
        let mut q = sqlx::query::<Any>(sql)
            .bind(new.seq)
            .bind(new_hash.as_str())
            .bind(old.seq)
            .bind(hex::encode(old.hash));
        for chunk in entries.chunks(ROWS_PER_INSERT) {
            for e in chunk {
                q = bind_entry(q, e);
            }
            q = q.bind(new.seq).bind(new_hash.as_str());
        }
        match q.fetch_all(&mut conn).await {
            Ok(rows) if rows.len() == entries.len() + 1 => {
                self.conn = Some(conn);
                Ok(())
            }
            Ok(rows) if rows.is_empty() => {
                self.conn = Some(conn);
                Err(BatchError::HeadMoved {
                    expected_seq: old.seq,
                })
            }
            Ok(rows) => {
                // Cannot happen (the inserts are guarded by the head just written); the
                // writer re-reads the head from the database either way.
                self.conn = Some(conn);
                Err(BatchError::Corrupt(format!(
                    "history batch of {} entries changed {} rows",
                    entries.len(),
                    rows.len()
                )))
            }
            Err(e) => {
                // A statement failed inside the transaction: roll it back, or drop the
                // connection (closing it rolls back) if even that fails.
                match conn.execute("ROLLBACK").await {
                    Ok(_) => self.conn = Some(conn),
                    Err(_) => {
                        let _ = conn.close().await;
                    }
                }
                Err(db(e))
            }
        }
    }
}

fn bind_entry<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    e: &'q Entry,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    q.bind(e.seq)
        .bind(e.at_ms)
        .bind(e.kind.as_str())
        .bind(e.request_id.as_deref())
        .bind(e.actor.as_str())
        .bind(e.key_id.as_deref())
        .bind(e.path.as_deref())
        .bind(e.approvers.join(","))
        .bind(e.node.as_deref())
        .bind(e.outcome.as_str())
        .bind(e.detail.as_str())
        .bind(e.duration_us)
        .bind(e.prev_hash.as_str())
        .bind(e.hash.as_str())
}

/// `BEGIN IMMEDIATE; UPDATE chain_head .. RETURNING; INSERT .. RETURNING; ..; COMMIT` for a
/// batch of `n` entries (anonymous `?` parameters, bound in statement order).
pub(crate) fn sqlite_batch_sql(n: usize) -> String {
    let mut sql = String::from(
        "BEGIN IMMEDIATE; UPDATE chain_head SET seq = ?, hash = ? \
         WHERE id = 1 AND seq = ? AND hash = ? RETURNING seq; ",
    );
    let mut left = n;
    while left > 0 {
        let rows = left.min(ROWS_PER_INSERT);
        left -= rows;
        let values = multi_insert(Engine::Sqlite, "x", "y", 14, rows, "");
        let values = values
            .strip_prefix("INSERT INTO x (y) ")
            .expect("multi_insert shape");
        sql.push_str(&format!(
            "INSERT INTO history ({}) SELECT * FROM ({values}) \
             WHERE EXISTS (SELECT 1 FROM chain_head WHERE id = 1 AND seq = ? AND hash = ?) \
             RETURNING seq; ",
            crate::ENTRY_COLUMNS
        ));
    }
    sql.push_str("COMMIT;");
    sql
}

/// While more callers expect to append than entries are queued, adds to `batch` what
/// arrives within [`LINGER`] (up to [`MAX_BATCH`] entries).
async fn gather(
    rx: &mut mpsc::Receiver<AppendRequest>,
    batch: &mut Vec<AppendRequest>,
    expected: &AtomicUsize,
) {
    if batch.len() >= expected.load(Ordering::Acquire) {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < MAX_BATCH && batch.len() < expected.load(Ordering::Acquire) {
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, room)).await {
            Ok(n) if n > 0 => {}
            // Closed (the batch still commits) or the time is up.
            _ => return,
        }
    }
}

/// The writer task. Ends when every [`crate::MetadataDb`] handle is dropped (the channel
/// closes) after finishing what was queued.
pub(crate) async fn run(
    mut sink: Sink,
    mut rx: mpsc::Receiver<AppendRequest>,
    head: Head,
    expected: Arc<AtomicUsize>,
) {
    let mut head = Some(head);
    let mut batch: Vec<AppendRequest> = Vec::with_capacity(MAX_BATCH);
    // Bounded by the channel: each turn consumes at least one request, and the loop ends
    // when all senders are gone.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather(&mut rx, &mut batch, &expected).await;
        let current = match head {
            Some(h) => Ok(h),
            None => load_head(&sink.pool).await.map_err(|e| match e {
                MetadataError::Read(e) => BatchError::Db(Arc::new(e)),
                other => BatchError::Corrupt(other.to_string()),
            }),
        };
        let result = match current {
            Ok(old) => {
                let (entries, new) = chain_batch(old, &mut batch);
                match sink.write(old, new, &entries).await {
                    Ok(()) => {
                        head = Some(new);
                        Ok(entries)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(entries) => {
                for (req, entry) in batch.drain(..).zip(entries) {
                    // A caller that stopped waiting still has its entry logged; nothing to do.
                    let _ = req.reply.send(Ok(entry));
                }
            }
            Err(e) => {
                let err = MetadataError::from(e.clone());
                tracing::error!(
                    entries = batch.len(),
                    error = %err,
                    "metadata history write failed; refusing the batch"
                );
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(e.clone().into()));
                }
                head = match load_head(&sink.pool).await {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "cannot reload metadata chain head; retrying on the next append"
                        );
                        None
                    }
                };
            }
        }
    }
    if let Some(conn) = sink.conn.take() {
        let _ = conn.close().await;
    }
    tracing::debug!("metadata history writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_batch_shape() {
        let one = sqlite_batch_sql(1);
        assert!(one.starts_with("BEGIN IMMEDIATE; UPDATE chain_head SET seq = ?, hash = ? "));
        assert!(one.ends_with("RETURNING seq; COMMIT;"));
        assert_eq!(one.matches('?').count(), 4 + 14 + 2);
        // Past one chunk, one guarded INSERT per chunk.
        let big = sqlite_batch_sql(ROWS_PER_INSERT + 1);
        assert_eq!(big.matches("INSERT INTO history").count(), 2);
        assert_eq!(
            big.matches('?').count(),
            4 + 14 * (ROWS_PER_INSERT + 1) + 2 * 2
        );
    }

    #[test]
    fn insert_sql_shape() {
        assert_eq!(
            multi_insert(
                Engine::Postgres,
                "t",
                "a, b",
                2,
                2,
                " ON CONFLICT (a) DO NOTHING"
            ),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            multi_insert(Engine::Sqlite, "t", "a, b", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
