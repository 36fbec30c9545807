//! Where the bridge sent each one-effect request (table `sent_to`): written before the request
//! leaves, read back when the bridge starts, deleted after the bridge's retention. Not part of
//! the hash chain (the history records the requests); plain upserts through the pool, as the
//! key list.

use sqlx::{Any, Row};

use crate::limits::check_required;
use crate::url::Engine;
use crate::{write_err, MetadataDb, MetadataError};

/// Most rows [`MetadataDb::sent_since`] returns.
pub const MAX_SENT_ROWS: i64 = 1_000_000;

/// A one-effect request and the node it was last sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The request id (hex).
    pub request_id: String,
    /// The node it was last sent to.
    pub node: String,
    /// When it was sent (Unix milliseconds).
    pub at_ms: i64,
}

impl MetadataDb {
    /// Records that `request_id` was sent to `node` at `at_ms` (replacing an earlier node: a
    /// failover after a refused connection moves it). Returns once committed.
    pub async fn record_sent(
        &self,
        request_id: &str,
        node: &str,
        at_ms: i64,
    ) -> Result<(), MetadataError> {
        check_required("request_id", request_id)?;
        check_required("node", node)?;
        let sql = match self.engine {
            Engine::Sqlite => {
                "INSERT INTO sent_to (request_id, node, at_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (request_id) DO UPDATE SET node = excluded.node, \
                 at_ms = excluded.at_ms"
            }
            Engine::Postgres => {
                "INSERT INTO sent_to (request_id, node, at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (request_id) DO UPDATE SET node = excluded.node, \
                 at_ms = excluded.at_ms"
            }
        };
        sqlx::query::<Any>(sql)
            .bind(request_id)
            .bind(node)
            .bind(at_ms)
            .execute(&self.pool)
            .await
            .map_err(write_err)?;
        Ok(())
    }

    /// The requests sent at or after `since_ms`, newest first, at most `limit` (capped at
    /// [`MAX_SENT_ROWS`]).
    pub async fn sent_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<SentRecord>, MetadataError> {
        let limit = limit.clamp(0, MAX_SENT_ROWS);
        let sql = match self.engine {
            Engine::Sqlite => {
                "SELECT request_id, node, at_ms FROM sent_to WHERE at_ms >= ? \
                 ORDER BY at_ms DESC LIMIT ?"
            }
            Engine::Postgres => {
                "SELECT request_id, node, at_ms FROM sent_to WHERE at_ms >= $1 \
                 ORDER BY at_ms DESC LIMIT $2"
            }
        };
        let rows = sqlx::query::<Any>(sql)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        rows.iter()
            .map(|r| {
                Ok(SentRecord {
                    request_id: r.try_get("request_id")?,
                    node: r.try_get("node")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetadataError::Read)
    }

    /// Deletes the records of requests sent before `before_ms`, then all but about the
    /// newest `keep` (at least one; rows sent at the same millisecond as the last one kept
    /// stay too); returns how many were deleted.
    pub async fn forget_sent(&self, before_ms: i64, keep: i64) -> Result<u64, MetadataError> {
        let (by_age, by_count) = match self.engine {
            Engine::Sqlite => (
                "DELETE FROM sent_to WHERE at_ms < ?",
                "DELETE FROM sent_to WHERE at_ms < \
                 (SELECT at_ms FROM sent_to ORDER BY at_ms DESC LIMIT 1 OFFSET ?)",
            ),
            Engine::Postgres => (
                "DELETE FROM sent_to WHERE at_ms < $1",
                "DELETE FROM sent_to WHERE at_ms < \
                 (SELECT at_ms FROM sent_to ORDER BY at_ms DESC LIMIT 1 OFFSET $1)",
            ),
        };
        let mut tx = self.pool.begin().await.map_err(write_err)?;
        let old = sqlx::query::<Any>(by_age)
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(write_err)?;
        // The newest `keep`-th row's time: what is older goes.
        let over = sqlx::query::<Any>(by_count)
            .bind(keep.max(1) - 1)
            .execute(&mut *tx)
            .await
            .map_err(write_err)?;
        tx.commit().await.map_err(write_err)?;
        Ok(old.rows_affected() + over.rows_affected())
    }
}
