//! Persistence of wallets, threshold keys (and where their shares were imported), requests
//! and their lifecycle events, on SQLite or PostgreSQL through `sqlx::Any` (one code path,
//! portable SQL: BIGINT/TEXT, `$n` placeholders).
//!
//! Every state change of a request is one statement: the row, with its lifecycle log, is
//! updated with a compare-and-swap on its `version`, the new event having `seq = version`
//! (a change that also records a wallet or a threshold key is one transaction with it).
//! Two cloud server processes on one database therefore never both act on a request: the
//! loser of a race sees [`StoreError::Conflict`].

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use crate::terms::Terms;
use custos_cloud_api::{RequestKind, RequestStatus};

mod console;
mod record;
mod replicas;
mod threshold;
mod webhooks;
mod writer;

pub use console::{ConsoleSession, MAX_CHALLENGES};
pub use record::Record;
pub use replicas::{LeaseRow, Orphan, ReplicaRow};
pub use threshold::{PresignatureRow, PresignatureSigner, ThresholdKeyRow, ThresholdShareRow};
pub use webhooks::{Agreement, Attempt, DeliveryRow, DeliveryState, NewDelivery, Unnotified};
use writer::{bind_insert, bind_update, RowJson, Writer, UPDATE_SET};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The database schema version this server writes (its number of migrations).
pub fn schema_version() -> usize {
    MIGRATOR.iter().count()
}

const POOL_SIZE: u32 = 8;
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// Longest event detail stored.
pub const MAX_DETAIL: usize = 2048;

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported engine.
    #[error("unsupported database URL {0}: use sqlite://<path>?mode=rwc or postgres://...")]
    UnsupportedUrl(String),
    /// Connecting or configuring failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// URL with secrets hidden.
        url: String,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A row with this key exists already.
    #[error("{0} already exists")]
    Duplicate(String),
    /// The row changed since it was read (another writer acted on it).
    #[error("request {0} was changed concurrently")]
    Conflict(String),
    /// A stored value is not what this crate writes.
    #[error("database content is corrupt: {0}")]
    Corrupt(String),
    /// A threshold share disagrees with the threshold key already recorded.
    #[error("{0}")]
    Inconsistent(String),
    /// A group of writes failed as a whole (the database refused the transaction, or its
    /// outcome could not be read back); each write of the group hears this.
    #[error("database write failed: {0}")]
    Write(String),
    /// The store was closed (or its writer stopped): writes are refused, none is lost.
    #[error("the database writer has stopped")]
    Closed,
}

/// An approval as stored (JSON in `requests.approvals`): enough to rebuild the TEE's
/// [`custos_wire::approval::Approval`] byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredApproval {
    /// Admin common name.
    pub admin: String,
    /// SHA-256 of the admin certificate, hex.
    pub fingerprint: String,
    /// DER of the admin's subject name, hex.
    pub subject: String,
    /// SHA-256 of the certified public key, hex: who the admin is (the TEE's notion of "same
    /// admin", with the subject). Empty in rows stored before admins were told apart by key.
    #[serde(default)]
    pub key: String,
    /// Admin certificate DER, hex.
    pub cert: String,
    /// Admin CA certificate DER, hex.
    pub ca: String,
    /// Signature DER, hex.
    pub signature: String,
    /// A passkey's assertion, as the API took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webauthn: Option<custos_cloud_api::WebAuthnBody>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

impl StoredApproval {
    /// Whether `other` is by the same admin as this one, the way the TEE counts: the same
    /// certified key (under any name); for a request approved by any admin (no group named,
    /// `by_key` false) also the same subject, since a new key under a counted subject adds
    /// nothing there. Within a group an admin is its key alone: two keys of the group under
    /// one subject are two approvers for the TEE, so they must be for this server too.
    pub fn same_admin(&self, other: &StoredApproval, by_key: bool) -> bool {
        let same_key = !self.key.is_empty() && self.key == other.key;
        same_key || (!by_key && self.subject == other.subject)
    }
}

/// A request row: its lifecycle fields and its [`Terms`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRow {
    /// 16 bytes, hex.
    pub id: String,
    /// Cluster, or [`custos_wire::approval::THRESHOLD_SCOPE`] for requests spanning
    /// clusters: the scope its approvals are made for.
    pub cluster: String,
    /// Approvals required.
    pub quorum: u8,
    /// What it asks for.
    pub terms: Terms,
    /// State.
    pub status: RequestStatus,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms.
    pub updated_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Approvals so far.
    pub approvals: Vec<StoredApproval>,
    /// Result JSON.
    pub result: Option<String>,
    /// Refusal/failure code.
    pub error_code: Option<String>,
    /// Refusal/failure message.
    pub error_message: Option<String>,
    /// Submissions so far.
    pub attempts: u32,
    /// API token name.
    pub created_by: String,
    /// Tenant of that token: only its tokens see the request.
    pub tenant: String,
    /// Compare-and-swap version (= seq of the latest event).
    pub version: i64,
    /// The replica that last moved it to `submitting` ([`crate::replica`]): while that
    /// replica lives, no other resubmits it.
    pub owner: Option<String>,
    /// Lifecycle log, oldest first (`seq` 1 = created); written with every change.
    pub events: Vec<EventRow>,
}

impl RequestRow {
    /// The kind its terms define.
    pub fn kind(&self) -> RequestKind {
        self.terms.kind()
    }

    /// A pending request of `terms` on `cluster` at version 1, quorum 2, nothing recorded
    /// (unit tests).
    #[cfg(test)]
    pub(crate) fn sample(cluster: &str, terms: Terms) -> RequestRow {
        RequestRow {
            id: "ab".repeat(16),
            cluster: cluster.into(),
            quorum: 2,
            terms,
            status: RequestStatus::PendingApproval,
            created_at: 1,
            updated_at: 1,
            expires_at: 1000,
            approvals: vec![],
            result: None,
            error_code: None,
            error_message: None,
            attempts: 0,
            created_by: "tester".into(),
            tenant: "default".into(),
            version: 1,
            owner: None,
            events: vec![],
        }
    }
}

/// A wallet row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletRow {
    /// Root public key, hex.
    pub root_id: String,
    /// Cluster.
    pub cluster: String,
    /// Root xpub.
    pub xpub: String,
    /// Quorum.
    pub quorum: u8,
    /// Unix ms.
    pub created_at: u64,
    /// Request id.
    pub created_by_request: String,
    /// Tenant of the request that made it: only its tokens see or use the wallet.
    pub tenant: String,
}

/// One entry of a request's lifecycle log (stored with the request, JSON in
/// `requests.events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// Position in the request's log (1 = created).
    pub seq: i64,
    /// Unix ms.
    pub at: u64,
    /// What happened.
    pub event: String,
    /// Details.
    pub detail: String,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads; and every write on PostgreSQL.
    pool: AnyPool,
    /// SQLite: every write, through one connection (see [`writer`]).
    writer: Option<Writer>,
}

/// The columns of a request row in lists: all but the lifecycle log.
const LIST_COLUMNS: &str = "id, kind, cluster, quorum, status, created_at, updated_at, \
     expires_at, approvals, result, error_code, error_message, attempts, created_by, version, terms, tenant, \
     owner";

const REQUEST_COLUMNS: &str = "id, kind, cluster, quorum, status, created_at, updated_at, \
     expires_at, approvals, result, error_code, error_message, attempts, created_by, version, terms, \
     tenant, events, owner";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn request_from_row(row: &AnyRow) -> Result<RequestRow, StoreError> {
    let id: String = row.try_get("id")?;
    custos_cloud_api::approval::parse_request_id(&id)
        .map_err(|e| corrupt(format!("request id: {e}")))?;
    let kind: String = row.try_get("kind")?;
    let cluster: String = row.try_get("cluster")?;
    let status: String = row.try_get("status")?;
    let approvals: String = row.try_get("approvals")?;
    let quorum: i64 = row.try_get("quorum")?;
    let attempts: i64 = row.try_get("attempts")?;
    let quorum = u8::try_from(quorum).map_err(|_| corrupt(format!("quorum {quorum}")))?;
    let terms: Option<String> = row.try_get("terms")?;
    // Lists read rows without their logs (`LIST_COLUMNS`).
    let events: Vec<EventRow> = match row.try_get::<Option<String>, _>("events") {
        Ok(Some(text)) => serde_json::from_str(&text)
            .map_err(|e| corrupt(format!("request {id}: events: {e}")))?,
        Ok(None) => {
            return Err(corrupt(format!(
                "request {id}: its lifecycle log was not moved into the row (written by a \
                 server older than schema 6 after this one opened the database?)"
            )))
        }
        Err(sqlx::Error::ColumnNotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let terms = Terms::from_json(terms.as_deref().unwrap_or_default(), &cluster, quorum)
        .map_err(|e| corrupt(format!("request {id}: terms: {e}")))?;
    if terms.kind().as_str() != kind {
        return Err(corrupt(format!(
            "request {id}: kind {kind:?} with terms of {}",
            terms.kind().as_str()
        )));
    }
    Ok(RequestRow {
        id,
        cluster,
        quorum,
        terms,
        status: RequestStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("status {status:?}")))?,
        created_at: u(row.try_get("created_at")?),
        updated_at: u(row.try_get("updated_at")?),
        expires_at: u(row.try_get("expires_at")?),
        approvals: serde_json::from_str(&approvals)
            .map_err(|e| corrupt(format!("approvals: {e}")))?,
        result: row.try_get("result")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_by: row.try_get("created_by")?,
        tenant: row.try_get("tenant")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
        events,
    })
}

fn wallet_from_row(row: &AnyRow) -> Result<WalletRow, StoreError> {
    let quorum: i64 = row.try_get("quorum")?;
    Ok(WalletRow {
        root_id: row.try_get("root_id")?,
        cluster: row.try_get("cluster")?,
        xpub: row.try_get("xpub")?,
        quorum: u8::try_from(quorum).map_err(|_| corrupt(format!("quorum {quorum}")))?,
        created_at: u(row.try_get("created_at")?),
        created_by_request: row.try_get("created_by_request")?,
        tenant: row.try_get("tenant")?,
    })
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Settings of every SQLite connection: commits durable at WAL checkpoints, a wait for the
/// write lock instead of an immediate `SQLITE_BUSY`, and statement journals in memory (past
/// SQLite's 64 KiB default a group commit's batch spills one to a temporary file, created
/// and removed at every such commit). Temporary sorts stay in memory too: a sort holds the
/// rows its query returns, which the server holds anyway.
async fn sqlite_settings(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute("PRAGMA temp_store = MEMORY").await?;
    conn.execute(&*format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
        .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn events_json(e: &[EventRow]) -> String {
    serde_json::to_string(e).expect("events always serialize")
}

fn approvals_json(a: &[StoredApproval]) -> String {
    serde_json::to_string(a).expect("approvals always serialize")
}

/// Moves the lifecycle logs of requests written before schema version 6 from
/// `request_events` into their rows, one transaction per request. Idempotent: servers
/// starting together, or a crash half-way, leave no log half-moved or moved twice.
async fn move_events(pool: &AnyPool) -> Result<usize, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM requests WHERE events IS NULL")
        .fetch_all(pool)
        .await?;
    let mut moved = 0;
    for id in &ids {
        let mut tx = pool.begin().await?;
        // Claim the row first with a write: SQLite then holds the write lock for the whole
        // transaction (a read first could not be upgraded past another writer), and on
        // PostgreSQL a second server waits on the row and then finds nothing to claim.
        let claimed =
            sqlx::query("UPDATE requests SET events = '[]' WHERE id = $1 AND events IS NULL")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        let rows = sqlx::query(
            "SELECT seq, at, event, detail FROM request_events WHERE request_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let log = rows
            .iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    at: u(r.try_get("at")?),
                    event: r.try_get("event")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        sqlx::query("UPDATE requests SET events = $1 WHERE id = $2")
            .bind(events_json(&log))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM request_events WHERE request_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        moved += 1;
    }
    Ok(moved)
}

impl Store {
    /// Opens the database and applies pending migrations. SQLite files are switched to WAL
    /// mode (readers never wait for the writer).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = custos_metadata::redact_url(url);
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        let sqlite = match scheme.as_str() {
            // An in-memory database is one per connection: the writer's would not be the
            // readers'.
            "sqlite" if url.contains(":memory:") || url.contains("mode=memory") => {
                return Err(StoreError::UnsupportedUrl(shown))
            }
            "sqlite" => true,
            "postgres" | "postgresql" => false,
            _ => return Err(StoreError::UnsupportedUrl(shown)),
        };
        let connect_err = |source| StoreError::Connect {
            url: shown.clone(),
            source,
        };
        if sqlite {
            // WAL needs an exclusive lock that the busy timeout does not wait for, so it is
            // set once on a lone connection before the pool opens several.
            let mut conn = AnyConnection::connect(url).await.map_err(connect_err)?;
            let _: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await
                .map_err(connect_err)?;
            conn.close().await.map_err(connect_err)?;
        }
        // On SQLite the pool reads (WAL: readers never wait for the writer) and migrates at
        // start; after that every write goes through the writer's own connection. The lone
        // pooled connection is a file handle, not a socket that can drop: testing it before
        // each acquire would cost a round trip to its worker thread per statement.
        let mut options = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { POOL_SIZE })
            .test_before_acquire(!sqlite)
            .acquire_timeout(Duration::from_secs(30));
        if sqlite {
            options = options.after_connect(|conn, _| Box::pin(sqlite_settings(conn)));
        }
        let pool = options.connect(url).await.map_err(connect_err)?;
        MIGRATOR.run(&pool).await?;
        let moved = move_events(&pool).await?;
        if moved > 0 {
            tracing::info!(requests = moved, "lifecycle logs moved into their requests");
        }
        let unmoved: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE terms IS NULL")
            .fetch_one(&pool)
            .await?;
        if unmoved > 0 {
            tracing::error!(
                rows = unmoved,
                "requests without terms (their schema 4 columns were incomplete): they are \
                 listed nowhere and refused when named"
            );
        }
        tracing::info!(url = %shown, "cloud DB open");
        let writer = sqlite.then(|| Writer::start(url));
        Ok(Store { pool, writer })
    }

    /// Whether this is the single-process engine (SQLite, every write through this
    /// process's writer) rather than a database replicas share (PostgreSQL).
    pub fn single_process(&self) -> bool {
        self.writer.is_some()
    }

    /// Closes the pool and the writer (after the writes queued before).
    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.pool.close().await;
    }

    /// Runs `f` as a write: on the writer's connection in queue order (SQLite), or on a
    /// pooled connection (PostgreSQL).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let Some(w) = &self.writer else {
            let mut conn = self.pool.acquire().await?;
            return f(&mut conn).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.run(Box::new(move |conn| {
            Box::pin(async move {
                let v = f(conn).await?;
                let _ = tx.send(v);
                Ok(())
            })
        }))
        .await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Inserts a new request with its `created` event (version 1); `r.events` becomes
    /// what was stored.
    pub async fn insert_request(
        &self,
        r: &mut RequestRow,
        detail: String,
    ) -> Result<(), StoreError> {
        self.insert_request_with_events(r, vec![("created", detail)])
            .await
    }

    /// Inserts a new request with its first events (numbered 1, 2, …) in one statement;
    /// `r.version` must be the number of events, and `r.events` becomes what was stored.
    /// A request that arrives with its quorum is stored as `submitting` at once, saving a
    /// second write on the hot path.
    pub async fn insert_request_with_events(
        &self,
        r: &mut RequestRow,
        events: Vec<(&str, String)>,
    ) -> Result<(), StoreError> {
        if events.is_empty() || r.version != events.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "request {} at version {} with {} events",
                r.id,
                r.version,
                events.len()
            )));
        }
        let log: Vec<EventRow> = (1i64..)
            .zip(events)
            .map(|(seq, (event, detail))| EventRow {
                seq,
                at: r.created_at,
                event: event.to_string(),
                detail: truncate(detail),
            })
            .collect();
        let mut stored = r.clone();
        stored.events = log;
        if let Some(w) = &self.writer {
            w.insert(stored.clone()).await?;
            *r = stored;
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        );
        let json = RowJson::of(&stored);
        let res = bind_insert(sqlx::query(&sql), &stored, &json)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => {
                *r = stored;
                Ok(())
            }
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Duplicate(format!("request {}", r.id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the mutable fields of `r` if the stored version is still `r.version`, with
    /// one event and, optionally, a wallet row: one statement, or one transaction with the
    /// wallet. Returns the row as stored (version bumped).
    pub async fn update_request(
        &self,
        r: &RequestRow,
        event: &str,
        detail: String,
        wallet: Option<&WalletRow>,
    ) -> Result<RequestRow, StoreError> {
        let record = match wallet {
            Some(w) => Record::Wallet(w.clone()),
            None => Record::Nothing,
        };
        self.update_request_recording(r, event, detail, record)
            .await
    }

    /// [`Store::update_request`] recording a wallet or a threshold share in the same
    /// transaction. A threshold share that disagrees with the recorded key fails with
    /// [`StoreError::Inconsistent`] and changes nothing.
    pub async fn update_request_recording(
        &self,
        r: &RequestRow,
        event: &str,
        detail: String,
        record: Record,
    ) -> Result<RequestRow, StoreError> {
        self.update_request_steps(r, vec![(event, detail)], record)
            .await
    }

    /// [`Store::update_request_recording`] with several events at once (numbered on from
    /// `r.version`), e.g. the approval that completes a quorum and the submission it starts:
    /// one compare-and-swap, so that no state between them is ever stored.
    pub async fn update_request_steps(
        &self,
        r: &RequestRow,
        events: Vec<(&str, String)>,
        record: Record,
    ) -> Result<RequestRow, StoreError> {
        let mut next = r.clone();
        for (event, detail) in events {
            next.version += 1;
            next.events.push(EventRow {
                seq: next.version,
                at: next.updated_at,
                event: event.to_string(),
                detail: truncate(detail),
            });
        }
        // A change alone is one statement (atomic by itself); one that records a wallet or
        // threshold key besides is one transaction with it.
        if matches!(record, Record::Nothing) {
            if let Some(w) = &self.writer {
                w.update(next.clone(), r.version).await?;
                return Ok(next);
            }
            let json = RowJson::of(&next);
            let update = bind_update(sqlx::query(UPDATE_SET), &next, &json, r.version);
            if update.execute(&self.pool).await?.rows_affected() != 1 {
                return Err(StoreError::Conflict(r.id.clone()));
            }
            return Ok(next);
        }
        let (row, expected) = (next.clone(), r.version);
        self.write(move |conn| {
            Box::pin(async move {
                let json = RowJson::of(&row);
                let mut tx = conn.begin().await?;
                let update = bind_update(sqlx::query(UPDATE_SET), &row, &json, expected);
                if update.execute(&mut *tx).await?.rows_affected() != 1 {
                    return Err(StoreError::Conflict(row.id.clone()));
                }
                record.insert(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await?;
        Ok(next)
    }

    /// One request.
    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// Requests of every tenant, newest first, optionally filtered; without their
    /// lifecycle logs (`events` empty).
    pub async fn requests(
        &self,
        status: Option<RequestStatus>,
        kind: Option<RequestKind>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        self.requests_of(None, status, kind, limit).await
    }

    /// [`Store::requests`] of one tenant (`None`: every tenant).
    pub async fn requests_of(
        &self,
        tenant: Option<&str>,
        status: Option<RequestStatus>,
        kind: Option<RequestKind>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        // Unused filters compare a column with itself, so one statement serves all cases
        // (tenant names are never empty).
        let sql = format!(
            "SELECT {LIST_COLUMNS} FROM requests \
             WHERE ($1 = '' OR status = $1) AND ($2 = '' OR kind = $2) \
             AND ($4 = '' OR tenant = $4) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(status.map(|s| s.as_str()).unwrap_or(""))
            .bind(kind.map(|k| k.as_str()).unwrap_or(""))
            .bind(i64::from(limit))
            .bind(tenant.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        // One unreadable row (e.g. one a migration could not move) is named in the log and
        // left alone; it does not hide every other request.
        Ok(rows
            .iter()
            .filter_map(|r| {
                request_from_row(r)
                    .map_err(|e| tracing::error!(error = %e, "request row skipped"))
                    .ok()
            })
            .collect())
    }

    /// How many requests are in each of `states`, in their order.
    pub async fn count_in_states(&self, states: &[&str]) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::with_capacity(states.len());
        // One indexed count per state: portable across SQLite and PostgreSQL through Any.
        for state in states {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE status = $1")
                .bind(*state)
                .fetch_one(&self.pool)
                .await?;
            out.push(n);
        }
        Ok(out)
    }

    /// Ids of requests in `status` whose `expires_at` is before `before_secs` (or all of
    /// them when `before_secs` is `None`).
    pub async fn request_ids_with_status(
        &self,
        status: RequestStatus,
        before_secs: Option<u64>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM requests WHERE status = $1 AND expires_at < $2 ORDER BY created_at",
        )
        .bind(status.as_str())
        .bind(before_secs.map(i).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    /// A request's events, oldest first (empty if there is no such request).
    pub async fn events(&self, id: &str) -> Result<Vec<EventRow>, StoreError> {
        Ok(self
            .request(id)
            .await?
            .map(|r| r.events)
            .unwrap_or_default())
    }

    /// One wallet.
    pub async fn wallet(&self, root_id: &str) -> Result<Option<WalletRow>, StoreError> {
        let row = sqlx::query(
            "SELECT root_id, cluster, xpub, quorum, created_at, created_by_request, tenant \
             FROM wallets WHERE root_id = $1",
        )
        .bind(root_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(wallet_from_row).transpose()
    }

    /// Every wallet of every tenant, oldest first.
    pub async fn wallets(&self) -> Result<Vec<WalletRow>, StoreError> {
        self.wallets_of(None).await
    }

    /// The wallets of one tenant (`None`: every tenant), oldest first.
    pub async fn wallets_of(&self, tenant: Option<&str>) -> Result<Vec<WalletRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT root_id, cluster, xpub, quorum, created_at, created_by_request, tenant \
             FROM wallets WHERE ($1 = '' OR tenant = $1) ORDER BY created_at, root_id",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(wallet_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::StoredApproval;

    fn approval(key: &str, subject: &str) -> StoredApproval {
        StoredApproval {
            admin: "alice".into(),
            fingerprint: String::new(),
            subject: subject.into(),
            key: key.into(),
            cert: String::new(),
            ca: String::new(),
            signature: String::new(),
            webauthn: None,
            at_ms: 0,
        }
    }

    /// As the TEE counts: one key is one admin under any name; a subject counts once only
    /// where any admin approves; within a group two keys are two admins, whatever subject
    /// their certificates name.
    #[test]
    fn an_admin_is_its_key_and_a_subject_counts_only_without_a_group() {
        let a = approval("k1", "s1");
        assert!(a.same_admin(&approval("k1", "s2"), true));
        assert!(a.same_admin(&approval("k1", "s2"), false));
        assert!(a.same_admin(&approval("k2", "s1"), false));
        assert!(!a.same_admin(&approval("k2", "s1"), true));
        assert!(!a.same_admin(&approval("k2", "s2"), false));
        // A row stored before keys were recorded is told apart by subject alone.
        assert!(approval("", "s1").same_admin(&approval("", "s1"), false));
    }
}
