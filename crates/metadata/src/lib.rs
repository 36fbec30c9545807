//! Custos metadata DB (patent US 2020/0259646 A1, paragraph \[0029\]): the bridge server's
//! record of every request and result ("log form"), and the cluster key list.
//!
//! * **History**: append-only, hash-chained, with a one-row `chain_head` updated in the same
//!   transaction, so [`MetadataDb::verify`] detects an edited row, a deleted row, and a deleted
//!   tail. The chain proves integrity only against someone who does not recompute the hashes;
//!   anchor [`VerifyReport::Ok`]'s `head` somewhere the database's writer cannot change (e.g.
//!   have it signed, or export it) for more.
//! * **Refusal summaries**: repeated refused attempts of one kind are recorded as one row
//!   ([`RefusalSummary`]: count, first and last seen, sample certificates), an ordinary
//!   chained entry of kind [`REFUSAL_SUMMARY_KIND`] whose `detail` has a fixed, checked
//!   format (see [`RefusalSummary`]'s module: refused on append, a break on verify).
//! * **Keys**: the cluster's root keys, insert-or-ignore, bulk-loadable in one transaction.
//! * **Sent-to**: the node each one-effect request was last sent to ([`SentRecord`]), so a
//!   restarted bridge routes a resend of it to that node; kept for a bounded time and count.
//!
//! Each entry's `hash` (lower-case hex) is, with all integers big-endian:
//!
//! ```text
//! SHA-256( "CUSTOS-HISTORY-V1"
//!          || prev_hash (32 raw bytes; 32 zero bytes for seq 1)
//!          || i64 seq || i64 at_ms
//!          || str kind || opt request_id || str actor || opt key_id || opt path
//!          || u32 approver count || str approver ...
//!          || opt node || str outcome || str detail || i64 duration_us )
//! str(s) = u32 byte length || UTF-8 bytes      opt(s) = 0x00 | 0x01 || str(s)
//! ```
//!
//! One code path serves both engines through `sqlx::Any`: SQLite (embedded default, a file,
//! WAL mode) and PostgreSQL.
//!
//! **One writer per database.** Appends are serialised by a single writer task per
//! [`MetadataDb`] (group commit). The deployment runs one bridge per cluster, hence one writer.
//! If a second process does write to the same database, its appends do not fork the chain: the
//! head update is a compare-and-swap and `seq` is the primary key, so the writer with a stale
//! head gets [`MetadataError::HeadMoved`] (or a constraint error), refuses that batch, reloads
//! the head and continues after the other writer's entries.
//!
//! **Durability.** SQLite runs with `synchronous=NORMAL` in WAL mode for throughput:
//! an application crash loses nothing that was acknowledged, but a power loss or OS crash can
//! lose the last acknowledged transactions (never corrupt the chain). PostgreSQL follows the
//! server's `synchronous_commit`.

mod chain;
mod governance;
mod key_policy;
mod limits;
mod sent;
mod summary;
mod url;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

pub use crate::chain::GENESIS_HASH;
pub use crate::governance::{GovernanceRow, MAX_GOVERNANCE_ENTRY_BYTES, MAX_GOVERNANCE_PAGE};
pub use crate::key_policy::KeyPolicyRecord;
pub use crate::limits::{MAX_APPROVERS, MAX_DETAIL_BYTES, MAX_FIELD_BYTES};
pub use crate::sent::{SentRecord, MAX_SENT_ROWS};
pub use crate::summary::{
    RefusalSummary, MAX_SUMMARY_EXAMPLE_BYTES, MAX_SUMMARY_SAMPLES, REFUSAL_SUMMARY_KIND,
};
use crate::url::{engine_of, Engine};
pub use crate::url::{redact_url, sqlite_url};
use crate::writer::AppendRequest;

/// Largest page [`MetadataDb::history`] returns.
pub const MAX_HISTORY_PAGE: i64 = 10_000;

/// Requests that may wait for the writer. When full, `append` waits: back-pressure instead of
/// unbounded memory when the database is slower than the request rate.
const QUEUE_DEPTH: usize = 8 * writer::MAX_BATCH;

/// Rows per verification read: bounded memory however long the chain is.
const VERIFY_PAGE: i64 = 2_000;

/// Keys per INSERT in `upsert_keys`: 6 parameters each, 3,000 per statement, well inside both
/// engines' bind-parameter limits.
const KEYS_PER_INSERT: usize = 500;

/// SQLite waits this long for a competing write lock before failing.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

const POOL_SIZE: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors from the metadata DB. Callers are expected to fail closed: a request whose history
/// entry could not be written is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The URL names no supported engine.
    #[error("unsupported metadata DB URL {url}: use sqlite://<path>?mode=rwc or postgres://user@host:port/db")]
    UnsupportedUrl {
        /// The URL with secrets hidden.
        url: String,
    },
    /// Opening or configuring a connection failed.
    #[error("cannot connect to metadata DB {url}: {source}")]
    Connect {
        /// The URL with secrets hidden.
        url: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("metadata DB migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write transaction failed; nothing of it was committed (or, if the connection broke
    /// during COMMIT, the outcome is unknown, and the writer re-reads the head).
    #[error("metadata DB write failed: {0}")]
    Write(#[source] Arc<sqlx::Error>),
    /// The chain head in the database is not the one this writer extended: another writer is
    /// using the same database. The batch was not written.
    #[error("metadata DB chain head moved under this writer (it expected seq {expected_seq}); is a second writer using the same database?")]
    HeadMoved {
        /// The head seq this writer expected.
        expected_seq: i64,
    },
    /// A read failed.
    #[error("metadata DB read failed: {0}")]
    Read(#[source] sqlx::Error),
    /// The database content is not what this crate writes.
    #[error("metadata DB is corrupt: {0}")]
    Corrupt(String),
    /// An input field exceeds its size limit.
    #[error("field `{field}` is {len} long, the limit is {max}")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Its size (bytes, or items for lists).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An input field has a forbidden value.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A governance entry would leave a gap after the stored log.
    #[error("governance log gap: the next stored version is {next}, the append starts at {got}")]
    GovernanceGap {
        /// The version the log needs next.
        next: u64,
        /// The first version offered.
        got: u64,
    },
    /// A different governance entry is already stored at this version: a fork of the log.
    #[error("governance log conflict: another entry is stored at version {version}")]
    GovernanceConflict {
        /// The contested version.
        version: u64,
    },
    /// The writer task is gone: the runtime that called [`MetadataDb::connect`] shut down.
    #[error("metadata DB writer has stopped; the history cannot be written")]
    WriterStopped,
}

fn write_err(e: sqlx::Error) -> MetadataError {
    MetadataError::Write(Arc::new(e))
}

/// A request to record in the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    /// What happened: "create-wallet", "import-wallet", "sign", "audit", "sync", "register",
    /// "refusal-summary" ([`RefusalSummary`]), "node-health", ...
    pub kind: String,
    /// The request's id, if it had one.
    pub request_id: Option<String>,
    /// Who asked.
    pub actor: String,
    /// Root key concerned (hex of the 33-byte root public key).
    pub key_id: Option<String>,
    /// BIP-32 path, for signing.
    pub path: Option<String>,
    /// Admin names whose approvals came with the request. Names may not contain ','.
    pub approvers: Vec<String>,
    /// Which vault node served it.
    pub node: Option<String>,
    /// "ok" or an error code.
    pub outcome: String,
    /// Free text; truncated to [`MAX_DETAIL_BYTES`] with a marker.
    pub detail: String,
    /// How long serving took, in microseconds.
    pub duration_us: i64,
}

/// A recorded history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was recorded (Unix milliseconds, non-decreasing along the chain).
    pub at_ms: i64,
    /// See [`NewEntry::kind`].
    pub kind: String,
    /// See [`NewEntry::request_id`].
    pub request_id: Option<String>,
    /// See [`NewEntry::actor`].
    pub actor: String,
    /// See [`NewEntry::key_id`].
    pub key_id: Option<String>,
    /// See [`NewEntry::path`].
    pub path: Option<String>,
    /// See [`NewEntry::approvers`].
    pub approvers: Vec<String>,
    /// See [`NewEntry::node`].
    pub node: Option<String>,
    /// See [`NewEntry::outcome`].
    pub outcome: String,
    /// See [`NewEntry::detail`] (as stored, after truncation).
    pub detail: String,
    /// See [`NewEntry::duration_us`].
    pub duration_us: i64,
    /// Hash of the previous entry ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// This entry's link: lower-case hex SHA-256.
    pub hash: String,
}

/// One root key of the cluster key list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Hex of the 33-byte compressed root public key (stored lower-case).
    pub key_id: String,
    /// The root extended public key.
    pub xpub: String,
    /// Admin approvals required to use it (1..=255).
    pub quorum: i64,
    /// How it came to be, e.g. "generated" or "imported".
    pub origin: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Node that created or imported it.
    pub created_on: String,
}

/// Result of [`MetadataDb::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VerifyReport {
    /// Every entry links, and the last one is the recorded head.
    Ok {
        /// Entries checked.
        entries: u64,
        /// Hash of the last entry ([`GENESIS_HASH`] when empty); worth anchoring externally.
        head: String,
    },
    /// The first place where the chain does not hold.
    Broken {
        /// The first seq that is wrong or missing.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

impl VerifyReport {
    /// True for [`VerifyReport::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, VerifyReport::Ok { .. })
    }
}

/// The current end of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Seq of the last entry (0 when empty).
    pub seq: i64,
    /// Its hash ([`GENESIS_HASH`] when empty).
    pub hash: String,
}

/// Handle to the metadata DB. Cheap to clone; all clones share one connection pool and one
/// history writer. The writer stops once every clone is dropped.
#[derive(Debug, Clone)]
pub struct MetadataDb {
    pool: AnyPool,
    tx: mpsc::Sender<AppendRequest>,
    engine: Engine,
    /// Callers that announced an append soon ([`MetadataDb::expect_appends`]).
    expected: Arc<AtomicUsize>,
}

/// Held while its caller expects to append soon; see [`MetadataDb::expect_appends`].
#[derive(Debug)]
pub struct ExpectedAppends(Arc<AtomicUsize>);

impl Drop for ExpectedAppends {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// Column order is also the bind order of the writer's INSERT.
const ENTRY_COLUMNS: &str = "seq, at_ms, kind, request_id, actor, key_id, path, approvers, \
                             node, outcome, detail, duration_us, prev_hash, hash";
const KEY_COLUMNS: &str = "key_id, xpub, quorum, origin, created_at_ms, created_on";

fn entry_from_row(row: &AnyRow) -> Result<Entry, sqlx::Error> {
    let approvers: String = row.try_get("approvers")?;
    Ok(Entry {
        seq: row.try_get("seq")?,
        at_ms: row.try_get("at_ms")?,
        kind: row.try_get("kind")?,
        request_id: row.try_get("request_id")?,
        actor: row.try_get("actor")?,
        key_id: row.try_get("key_id")?,
        path: row.try_get("path")?,
        // Empty string is the empty list; names never contain ',' (checked on append).
        approvers: if approvers.is_empty() {
            Vec::new()
        } else {
            approvers.split(',').map(str::to_owned).collect()
        },
        node: row.try_get("node")?,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
        duration_us: row.try_get("duration_us")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn key_from_row(row: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        key_id: row.try_get("key_id")?,
        xpub: row.try_get("xpub")?,
        quorum: row.try_get("quorum")?,
        origin: row.try_get("origin")?,
        created_at_ms: row.try_get("created_at_ms")?,
        created_on: row.try_get("created_on")?,
    })
}

fn broken(seq: i64, reason: impl Into<String>) -> VerifyReport {
    VerifyReport::Broken {
        seq,
        reason: reason.into(),
    }
}

/// Per-connection SQLite settings: NORMAL is safe in WAL mode (no corruption, only the
/// newest commits at risk on power loss) and avoids an fsync per commit; statement journals
/// stay in memory (past SQLite's 64 KiB default a group commit's batch spills one to a
/// temporary file, created and removed at every such commit). Temporary sorts stay in memory
/// too: a sort holds the rows its query returns, which the server holds anyway.
async fn sqlite_settings(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute("PRAGMA temp_store = MEMORY").await?;
    conn.execute(&*format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
        .await?;
    Ok(())
}

/// The history writer's own SQLite connection (outside the pool, with the pool's settings).
pub(crate) async fn connect_sqlite_writer(url: &str) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    sqlite_settings(&mut conn).await?;
    Ok(conn)
}

impl MetadataDb {
    /// Opens the database, applies pending migrations and starts the history writer on the
    /// current tokio runtime.
    ///
    /// URLs: `sqlite://<path>?mode=rwc` (see [`sqlite_url`]; `mode=rwc` creates the file) or
    /// `postgres://user[:password]@host:port/db` (any libpq-style parameters sqlx accepts,
    /// e.g. `?options=-c%20search_path%3Dmyschema` or `sslmode=require`).
    pub async fn connect(url: &str) -> Result<Self, MetadataError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let engine =
            engine_of(url).ok_or_else(|| MetadataError::UnsupportedUrl { url: shown.clone() })?;
        let connect_err = |source| MetadataError::Connect {
            url: shown.clone(),
            source,
        };

        if engine == Engine::Sqlite {
            // Switching to WAL needs an exclusive lock that SQLite's busy timeout does not wait
            // for, so it must not race with the pool opening connections in parallel. It is
            // persistent in the file: one connection sets it, all later ones inherit it.
            let mut conn = AnyConnection::connect(url).await.map_err(connect_err)?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await
                .map_err(connect_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(url = %shown, mode, "SQLite metadata DB is not in WAL mode");
            }
            conn.close().await.map_err(connect_err)?;
        }

        let mut options = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30));
        if engine == Engine::Sqlite {
            options = options.after_connect(|conn, _meta| Box::pin(sqlite_settings(conn)));
        }
        let pool = options.connect(url).await.map_err(connect_err)?;
        MIGRATOR.run(&pool).await?;

        let head = writer::load_head(&pool).await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let sink = writer::Sink::new(pool.clone(), engine, url);
        let expected = Arc::new(AtomicUsize::new(0));
        tokio::spawn(writer::run(sink, rx, head, Arc::clone(&expected)));
        tracing::info!(url = %shown, head_seq = head.seq, "metadata DB open");
        Ok(Self {
            pool,
            tx,
            engine,
            expected,
        })
    }

    /// "sqlite" or "postgres".
    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// Appends one entry to the history and returns it as committed (seq, time, hashes).
    ///
    /// Returns only after the entry's transaction committed; on any error nothing was
    /// acknowledged and the caller must treat the request as refused. Over-long or malformed
    /// fields are rejected before queueing (`detail` is truncated instead). Dropping the future
    /// after the entry was queued does not withdraw it.
    pub async fn append(&self, entry: NewEntry) -> Result<Entry, MetadataError> {
        let entry = limits::check_entry(entry)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendRequest { entry, reply })
            .await
            .map_err(|_| MetadataError::WriterStopped)?;
        rx.await.map_err(|_| MetadataError::WriterStopped)?
    }

    /// Announces that the caller will append soon (a request whose lines come one after the
    /// other, e.g. received, then its outcome), until the returned guard is dropped. While
    /// more callers expect to append than entries are queued, the writer waits up to
    /// a millisecond for their entries so that they share one commit. It changes nothing
    /// else: every append is still acknowledged only once committed.
    pub fn expect_appends(&self) -> ExpectedAppends {
        self.expected.fetch_add(1, Ordering::AcqRel);
        ExpectedAppends(Arc::clone(&self.expected))
    }

    /// Adds a key to the key list; a key already present is left as it is (first record wins).
    pub async fn upsert_key(&self, key: &KeyRecord) -> Result<(), MetadataError> {
        self.upsert_keys(std::slice::from_ref(key)).await
    }

    /// Adds many keys in one transaction: all of them or none. Keys already present are left
    /// as they are. Every record is validated before anything is written.
    pub async fn upsert_keys(&self, keys: &[KeyRecord]) -> Result<(), MetadataError> {
        let checked = keys
            .iter()
            .map(limits::check_key)
            .collect::<Result<Vec<_>, _>>()?;
        if checked.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(write_err)?;
        for chunk in checked.chunks(KEYS_PER_INSERT) {
            let sql = writer::multi_insert(
                self.engine,
                "keys",
                KEY_COLUMNS,
                6,
                chunk.len(),
                " ON CONFLICT (key_id) DO NOTHING",
            );
            let mut q = sqlx::query::<Any>(&sql);
            for k in chunk {
                q = q
                    .bind(k.key_id.as_str())
                    .bind(k.xpub.as_str())
                    .bind(k.quorum)
                    .bind(k.origin.as_str())
                    .bind(k.created_at_ms)
                    .bind(k.created_on.as_str());
            }
            q.execute(&mut *tx).await.map_err(write_err)?;
        }
        tx.commit().await.map_err(write_err)
    }

    /// The whole key list, oldest first.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, MetadataError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at_ms, key_id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<_, _>>()
            .map_err(MetadataError::Read)
    }

    /// Up to `limit` entries with `seq > after_seq`, in chain order. `limit` is capped at
    /// [`MAX_HISTORY_PAGE`]; zero or negative returns nothing. Page by passing the last seq
    /// seen as the next `after_seq`.
    pub async fn history(&self, after_seq: i64, limit: i64) -> Result<Vec<Entry>, MetadataError> {
        let limit = limit.min(MAX_HISTORY_PAGE);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        self.page(after_seq, i64::MAX, limit).await
    }

    async fn page(&self, after: i64, upto: i64, limit: i64) -> Result<Vec<Entry>, MetadataError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM history WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        rows.iter()
            .map(entry_from_row)
            .collect::<Result<_, _>>()
            .map_err(MetadataError::Read)
    }

    /// The committed chain head.
    pub async fn head(&self) -> Result<ChainHead, MetadataError> {
        let row = sqlx::query("SELECT seq, hash FROM chain_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(MetadataError::Read)?
            .ok_or_else(|| MetadataError::Corrupt("chain_head row is missing".into()))?;
        Ok(ChainHead {
            seq: row.try_get("seq").map_err(MetadataError::Read)?,
            hash: row.try_get("hash").map_err(MetadataError::Read)?,
        })
    }

    /// Checks the whole history chain, reading it in pages (bounded memory), and reports the
    /// first break: a missing seq (deleted row), a row whose content no longer matches its hash
    /// (edited), a `prev_hash` that does not link, a refusal summary whose `detail` breaks its
    /// documented format, a head that is not the last entry (tail deleted), or rows outside
    /// the chain.
    ///
    /// Safe while appends continue: the head is read first and only entries up to it are
    /// checked, since the writer commits rows and head together.
    pub async fn verify(&self) -> Result<VerifyReport, MetadataError> {
        let head = self.head().await?;
        let Some(head_hash) = chain::parse_hash(&head.hash) else {
            return Ok(broken(head.seq, "chain head hash is malformed"));
        };
        let mut prev = [0u8; 32];
        let mut expected = 1i64;
        let mut checked = 0u64;
        // Each page starts strictly after the previous one's last seq and stops at the head,
        // so the loop ends after at most head.seq rows.
        loop {
            let page = self.page(expected - 1, head.seq, VERIFY_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                if e.seq != expected {
                    return Ok(broken(
                        expected,
                        format!("gap: seq {expected} missing (deleted)"),
                    ));
                }
                if e.prev_hash != hex::encode(prev) {
                    return Ok(broken(
                        e.seq,
                        "prev_hash does not link to the previous entry",
                    ));
                }
                let link = chain::link(
                    &prev,
                    &chain::Body {
                        seq: e.seq,
                        at_ms: e.at_ms,
                        kind: &e.kind,
                        request_id: e.request_id.as_deref(),
                        actor: &e.actor,
                        key_id: e.key_id.as_deref(),
                        path: e.path.as_deref(),
                        approvers: &e.approvers,
                        node: e.node.as_deref(),
                        outcome: &e.outcome,
                        detail: &e.detail,
                        duration_us: e.duration_us,
                    },
                );
                if e.hash != hex::encode(link) {
                    return Ok(broken(e.seq, "hash mismatch (edited)"));
                }
                if let Err(why) = RefusalSummary::from_entry(e) {
                    return Ok(broken(e.seq, format!("malformed refusal summary: {why}")));
                }
                prev = link;
                expected += 1;
                checked += 1;
            }
        }
        let last = expected - 1;
        if last != head.seq {
            return Ok(broken(
                last + 1,
                format!(
                    "head does not match last entry (tail deleted): head is seq {}, \
                     last entry is seq {last}",
                    head.seq
                ),
            ));
        }
        if prev != head_hash {
            return Ok(broken(head.seq, "head hash does not match the last entry"));
        }

        let below: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM history WHERE seq < 1")
            .fetch_one(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        if let Some(seq) = below {
            return Ok(broken(
                seq,
                "entry with a seq below 1 (not written by the chain writer)",
            ));
        }
        let beyond: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM history WHERE seq > $1")
            .bind(head.seq)
            .fetch_one(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        if let Some(seq) = beyond {
            // Rows and head commit together, so a row past the old head is either a concurrent
            // append (the head has moved past it by now) or was written around the writer.
            if self.head().await?.seq < seq {
                return Ok(broken(
                    seq,
                    "entry beyond the chain head (not written by the chain writer)",
                ));
            }
        }
        Ok(VerifyReport::Ok {
            entries: checked,
            head: head.hash,
        })
    }

    /// Closes the connection pool. Appends after this fail with a write error (fail closed).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
