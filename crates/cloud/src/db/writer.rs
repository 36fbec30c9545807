//! The SQLite write path: one connection of its own, request rows committed in groups.
//!
//! sqlx runs each SQLite connection on a thread of its own, so every statement is a hand-off
//! to that thread and back, and a pooled connection is pinged (one more hand-off) each time
//! it goes back to the pool. A sign request wrote its row twice (created, then completed),
//! which cost four hand-offs and two commits, each commit writing the table's and both
//! indexes' pages to the WAL again. Here a task owns the writer connection: it takes every
//! write queued (up to [`MAX_BATCH`]) and sends the request-row inserts and updates among
//! them as ONE multi-statement transaction, then answers each caller. A caller never hears
//! "ok" before its row is committed, and since each statement reports what it changed
//! (`RETURNING` the op's place in the batch), each caller hears its own outcome: stored,
//! a duplicate id, or a lost compare-and-swap.
//!
//! Writes of any other shape (a request with the wallet or threshold key it records,
//! presignatures) run on the same connection one at a time, in queue order, so SQLite never
//! sees two writers (a second one would wait in SQLite's busy handler, which sleeps in steps
//! of up to 100 ms). PostgreSQL needs none of this: its pool serves concurrent writers.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use super::{approvals_json, events_json, i, RequestRow, StoreError, REQUEST_COLUMNS};

/// Most writes taken from the queue at once: enough to share one commit among every
/// request in flight, few enough that a transaction stays short.
const MAX_BATCH: usize = 64;

/// Distinct batch shapes whose SQL is kept (each is also one of sqlx's cached statements).
const MAX_SHAPES: usize = 64;

type Query<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

/// A request row's JSON columns, serialized once for binding.
pub(super) struct RowJson {
    approvals: String,
    events: String,
    terms: String,
}

impl RowJson {
    pub(super) fn of(r: &RequestRow) -> Self {
        RowJson {
            approvals: approvals_json(&r.approvals),
            events: events_json(&r.events),
            terms: r.terms.to_json(),
        }
    }
}

/// Binds a whole row in [`REQUEST_COLUMNS`] order.
pub(super) fn bind_insert<'q>(q: Query<'q>, r: &'q RequestRow, j: &'q RowJson) -> Query<'q> {
    q.bind(r.id.as_str())
        .bind(r.kind().as_str())
        .bind(r.cluster.as_str())
        .bind(i64::from(r.quorum))
        .bind(r.status.as_str())
        .bind(i(r.created_at))
        .bind(i(r.updated_at))
        .bind(i(r.expires_at))
        .bind(j.approvals.as_str())
        .bind(r.result.as_deref())
        .bind(r.error_code.as_deref())
        .bind(r.error_message.as_deref())
        .bind(i64::from(r.attempts))
        .bind(r.created_by.as_str())
        .bind(r.version)
        .bind(j.terms.as_str())
        .bind(r.tenant.as_str())
        .bind(j.events.as_str())
        .bind(r.owner.as_deref())
}

/// The assignments of an update, then its compare-and-swap on `(id, version)`.
pub(super) const UPDATE_SET: &str = "UPDATE requests SET status = $1, updated_at = $2, \
     approvals = $3, result = $4, error_code = $5, error_message = $6, attempts = $7, \
     version = $8, events = $9, terms = $10, owner = $11 WHERE id = $12 AND version = $13";

/// Binds [`UPDATE_SET`]'s values: `next`'s mutable fields, its id and the version it
/// replaces.
pub(super) fn bind_update<'q>(
    q: Query<'q>,
    next: &'q RequestRow,
    j: &'q RowJson,
    expected: i64,
) -> Query<'q> {
    q.bind(next.status.as_str())
        .bind(i(next.updated_at))
        .bind(j.approvals.as_str())
        .bind(next.result.as_deref())
        .bind(next.error_code.as_deref())
        .bind(next.error_message.as_deref())
        .bind(i64::from(next.attempts))
        .bind(next.version)
        .bind(j.events.as_str())
        .bind(j.terms.as_str())
        .bind(next.owner.as_deref())
        .bind(next.id.as_str())
        .bind(expected)
}

/// A write that is not a lone request row, run alone on the writer connection.
pub(super) type Job =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<(), StoreError>> + Send>;

/// What the writer is asked to do.
enum Op {
    /// Insert a new request row; `Duplicate` if its id exists.
    Insert(Box<RequestRow>, oneshot::Sender<Result<(), StoreError>>),
    /// Replace the row at `expected` version by `next`; `Conflict` if it moved on.
    Update {
        next: Box<RequestRow>,
        expected: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Anything else (it answers its caller itself).
    Run(Job, oneshot::Sender<Result<(), StoreError>>),
    /// Close the connection and stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    /// Starts the writer task on the current runtime; it opens its connection from `url`
    /// on first use (and again after a failure).
    pub(super) fn start(url: &str) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let task = tokio::spawn(run(url.to_string(), rx));
        tokio::spawn(async move {
            // A panic ends the writer: every later write is refused (`Closed`), and the
            // on-call engineer must hear why.
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("cloud DB writer panicked: writes are refused until restart");
                }
            }
        });
        Writer { tx }
    }

    async fn ask(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Op,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn insert(&self, row: RequestRow) -> Result<(), StoreError> {
        self.ask(|reply| Op::Insert(Box::new(row), reply)).await
    }

    pub(super) async fn update(&self, next: RequestRow, expected: i64) -> Result<(), StoreError> {
        self.ask(|reply| Op::Update {
            next: Box::new(next),
            expected,
            reply,
        })
        .await
    }

    pub(super) async fn run(&self, job: Job) -> Result<(), StoreError> {
        self.ask(|reply| Op::Run(job, reply)).await
    }

    /// Stops the writer after what is queued, its connection closed.
    pub(super) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// A request-row write of a batch and where its answer goes.
struct RowWrite {
    row: Box<RequestRow>,
    /// `None`: an insert; `Some(v)`: an update from version `v`.
    expected: Option<i64>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl RowWrite {
    fn refusal(&self) -> StoreError {
        match self.expected {
            None => StoreError::Duplicate(format!("request {}", self.row.id)),
            Some(_) => StoreError::Conflict(self.row.id.clone()),
        }
    }
}

/// Why a batch did not commit as a whole.
enum BatchError {
    /// A statement was refused (a constraint, a value): retried write by write, so that
    /// only the bad one fails.
    Row(sqlx::Error),
    /// The transaction failed for every write in it (locked, I/O, connection lost).
    Whole(sqlx::Error),
    /// COMMIT ran but its answer could not be read: retrying could report a stored row as a
    /// duplicate, so every write of the batch hears that its outcome is unknown.
    Unreadable(sqlx::Error),
}

impl BatchError {
    fn of(e: sqlx::Error) -> Self {
        // SQLite's primary result codes (the low byte of the extended code) that concern
        // one statement's values: TOOBIG 18, CONSTRAINT 19, MISMATCH 20.
        let row_level = match &e {
            sqlx::Error::Database(d) => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 18..=20)),
            _ => false,
        };
        if row_level {
            BatchError::Row(e)
        } else {
            BatchError::Whole(e)
        }
    }
}

/// Batches up to this many writes reuse a prepared statement (a few shapes, cached by
/// sqlx); larger ones are prepared for the occasion, so that the shapes of busy periods
/// do not fill the connection's statement cache with statements of 60-odd parts each.
const MAX_CACHED_BATCH: usize = 4;

/// `BEGIN IMMEDIATE; <inserts>; <updates>; COMMIT;` with anonymous parameters; each
/// statement returns its op's place in the batch (a bound value) when it changed its row.
fn batch_sql(inserts: usize, updates: usize) -> String {
    let values = vec!["?"; 19].join(", ");
    let insert = format!(
        "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES ({values}) \
         ON CONFLICT (id) DO NOTHING RETURNING ?; "
    );
    let mut update = UPDATE_SET.to_string();
    for n in (1..=13).rev() {
        update = update.replace(&format!("${n}"), "?");
    }
    let update = format!("{update} RETURNING ?; ");
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    sql.push_str(&insert.repeat(inserts));
    sql.push_str(&update.repeat(updates));
    sql.push_str("COMMIT;");
    sql
}

struct Conn {
    url: String,
    conn: Option<AnyConnection>,
    shapes: HashMap<(usize, usize), String>,
}

impl Conn {
    async fn get(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        if self.conn.is_none() {
            let mut c = AnyConnection::connect(&self.url).await?;
            super::sqlite_settings(&mut c).await?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// After a failed batch statement: roll back the transaction it left open, or drop
    /// the connection (closing it rolls back) if SQLite did not roll back by itself.
    async fn recover(&mut self) {
        if let Some(mut c) = self.conn.take() {
            match c.execute("ROLLBACK").await {
                Ok(_) => self.conn = Some(c),
                // SQLite already rolled back (e.g. after an I/O error or SQLITE_FULL).
                Err(sqlx::Error::Database(d)) if d.message().contains("no transaction") => {
                    self.conn = Some(c)
                }
                Err(_) => {
                    let _ = c.close().await;
                }
            }
        }
    }

    /// Commits `writes` in one transaction: the places in the batch of those that changed
    /// their row. Inserts go first: none of them can be a row another write of the batch
    /// expects, since a caller only updates a row it has read back.
    async fn commit(&mut self, writes: &[RowWrite]) -> Result<HashSet<i64>, BatchError> {
        let inserts = writes.iter().filter(|w| w.expected.is_none()).count();
        let shape = (inserts, writes.len() - inserts);
        if self.shapes.len() >= MAX_SHAPES && !self.shapes.contains_key(&shape) {
            self.shapes.clear();
        }
        let sql = self
            .shapes
            .entry(shape)
            .or_insert_with(|| batch_sql(shape.0, shape.1))
            .clone();
        let json: Vec<RowJson> = writes.iter().map(|w| RowJson::of(&w.row)).collect();
        let mut q = sqlx::query::<Any>(&sql).persistent(writes.len() <= MAX_CACHED_BATCH);
        let ordered = writes
            .iter()
            .zip(&json)
            .enumerate()
            .filter(|(_, (w, _))| w.expected.is_none())
            .chain(
                writes
                    .iter()
                    .zip(&json)
                    .enumerate()
                    .filter(|(_, (w, _))| w.expected.is_some()),
            );
        for (place, (w, j)) in ordered {
            q = match w.expected {
                None => bind_insert(q, &w.row, j),
                Some(v) => bind_update(q, &w.row, j, v),
            };
            q = q.bind(place as i64);
        }
        let conn = self.get().await.map_err(BatchError::Whole)?;
        match q.fetch_all(&mut *conn).await {
            // `fetch_all` returns rows only once every statement ran, COMMIT included.
            Ok(rows) => rows
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()
                .map_err(BatchError::Unreadable),
            Err(e) => {
                // The statements after the failing one (COMMIT too) did not run.
                self.recover().await;
                Err(BatchError::of(e))
            }
        }
    }

    /// Commits `writes` together and answers each; if a statement is refused, each is
    /// tried alone, so that one bad row does not fail the others.
    async fn flush(&mut self, writes: Vec<RowWrite>) {
        let outcome = self.commit(&writes).await;
        if writes.len() == 1 {
            return settle(writes, outcome);
        }
        match outcome {
            Ok(done) => answer(writes, &done),
            Err(BatchError::Row(_)) => {
                for w in writes {
                    let alone = self.commit(std::slice::from_ref(&w)).await;
                    settle(vec![w], alone);
                }
            }
            Err(BatchError::Whole(e)) => fail(writes, || StoreError::Write(e.to_string())),
            Err(BatchError::Unreadable(e)) => fail(writes, || unknown(&e)),
        }
    }

    async fn run_job(&mut self, job: Job) -> Result<(), StoreError> {
        let conn = self.get().await?;
        // A job that fails inside its transaction drops it, and sqlx rolls it back before
        // the connection's next statement: nothing to do here.
        job(conn).await
    }
}

fn unknown(e: &sqlx::Error) -> StoreError {
    StoreError::Write(format!("committed, but its outcome could not be read: {e}"))
}

/// Answers each write of a committed batch: changed its row, or refused.
fn answer(writes: Vec<RowWrite>, done: &HashSet<i64>) {
    for (place, w) in writes.into_iter().enumerate() {
        let out = if done.contains(&(place as i64)) {
            Ok(())
        } else {
            Err(w.refusal())
        };
        // A caller that stopped waiting: its write stands, nothing to tell.
        let _ = w.reply.send(out);
    }
}

/// Answers every write with an error made by `err`.
fn fail(writes: Vec<RowWrite>, err: impl Fn() -> StoreError) {
    for w in writes {
        let _ = w.reply.send(Err(err()));
    }
}

/// Answers the writes of a batch committed (or not) as a whole, with the error itself.
fn settle(writes: Vec<RowWrite>, outcome: Result<HashSet<i64>, BatchError>) {
    match outcome {
        Ok(done) => answer(writes, &done),
        Err(BatchError::Unreadable(e)) => fail(writes, || unknown(&e)),
        Err(BatchError::Row(e) | BatchError::Whole(e)) => {
            let mut e = Some(StoreError::Db(e));
            for w in writes {
                let err = e
                    .take()
                    .unwrap_or_else(|| StoreError::Write("batch refused".into()));
                let _ = w.reply.send(Err(err));
            }
        }
    }
}

/// The writer task: ends on [`Op::Close`] or when every handle is dropped.
async fn run(url: String, mut rx: mpsc::Receiver<Op>) {
    let mut conn = Conn {
        url,
        conn: None,
        shapes: HashMap::new(),
    };
    let mut queue = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    // Each turn consumes at least one op; the loop ends when every sender is gone.
    'outer: while rx.recv_many(&mut queue, MAX_BATCH).await > 0 {
        let mut rows = Vec::new();
        for op in queue.drain(..) {
            match op {
                Op::Insert(row, reply) => rows.push(RowWrite {
                    row,
                    expected: None,
                    reply,
                }),
                Op::Update {
                    next,
                    expected,
                    reply,
                } => rows.push(RowWrite {
                    row: next,
                    expected: Some(expected),
                    reply,
                }),
                Op::Run(job, reply) => {
                    // Queue order holds: the rows before this job commit before it runs.
                    if !rows.is_empty() {
                        conn.flush(std::mem::take(&mut rows)).await;
                    }
                    let _ = reply.send(conn.run_job(job).await);
                }
                Op::Close(done) => {
                    if !rows.is_empty() {
                        conn.flush(std::mem::take(&mut rows)).await;
                    }
                    closing = Some(done);
                    break 'outer;
                }
            }
        }
        if !rows.is_empty() {
            conn.flush(rows).await;
        }
    }
    // Ops queued after the close are dropped: their callers hear that the store is closed.
    if let Some(c) = conn.conn.take() {
        let _ = c.close().await;
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
    tracing::debug!("cloud DB writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_transaction_with_one_returning_statement_per_write() {
        let sql = batch_sql(2, 3);
        assert!(sql.starts_with("BEGIN IMMEDIATE; INSERT INTO requests"));
        assert!(sql.ends_with("RETURNING ?; COMMIT;"));
        assert_eq!(
            sql.matches("ON CONFLICT (id) DO NOTHING RETURNING ?")
                .count(),
            2
        );
        assert_eq!(
            sql.matches("WHERE id = ? AND version = ? RETURNING ?")
                .count(),
            3
        );
        assert_eq!(sql.matches('?').count(), 2 * 20 + 3 * 14);
        assert!(!sql.contains('$'));
    }
}
