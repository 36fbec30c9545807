//! The latest policy version the bridge saw applied to each key (table `key_policy`): what a
//! holder's TEE must enforce at least before the bridge routes it the key. Plain upserts
//! through the pool, like the key list; a lower version never replaces a higher one.

use sqlx::{Any, Row};

use crate::limits::check_required;
use crate::url::Engine;
use crate::writer::now_ms;
use crate::{write_err, MetadataDb, MetadataError};

/// A key's latest known policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicyRecord {
    /// Hex of the key id.
    pub key_id: String,
    /// The policy's version (a wallet's first group is version 1).
    pub version: u32,
    /// The policy's hash, as the TEE reports it.
    pub hash: [u8; 32],
}

impl MetadataDb {
    /// Records that `key_id` is under policy `version` (with `hash`), unless a higher version
    /// is stored already. Returns once committed.
    pub async fn record_key_policy(&self, record: &KeyPolicyRecord) -> Result<(), MetadataError> {
        check_required("key_id", &record.key_id)?;
        // The same statement on both engines but for the placeholders; the WHERE keeps the
        // stored row when it is at least as recent (two writers can only race upward).
        let sql = match self.engine {
            Engine::Sqlite => {
                "INSERT INTO key_policy (key_id, version, hash, recorded_at_ms) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET \
                 version = excluded.version, hash = excluded.hash, \
                 recorded_at_ms = excluded.recorded_at_ms \
                 WHERE key_policy.version < excluded.version"
            }
            Engine::Postgres => {
                "INSERT INTO key_policy (key_id, version, hash, recorded_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO UPDATE SET \
                 version = excluded.version, hash = excluded.hash, \
                 recorded_at_ms = excluded.recorded_at_ms \
                 WHERE key_policy.version < excluded.version"
            }
        };
        sqlx::query::<Any>(sql)
            .bind(record.key_id.to_ascii_lowercase())
            .bind(i64::from(record.version))
            .bind(hex::encode(record.hash))
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(write_err)?;
        Ok(())
    }

    /// Every recorded key policy.
    pub async fn key_policies(&self) -> Result<Vec<KeyPolicyRecord>, MetadataError> {
        let rows = sqlx::query::<Any>("SELECT key_id, version, hash FROM key_policy")
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::Read)?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("version").map_err(MetadataError::Read)?;
                let hash: String = r.try_get("hash").map_err(MetadataError::Read)?;
                let corrupt = |reason| MetadataError::InvalidField {
                    field: "key_policy",
                    reason,
                };
                let hash: [u8; 32] = hex::decode(hash)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or(corrupt("hash is not 32 bytes of hex"))?;
                Ok(KeyPolicyRecord {
                    key_id: r.try_get("key_id").map_err(MetadataError::Read)?,
                    version: u32::try_from(version)
                        .map_err(|_| corrupt("version beyond 32 bits"))?,
                    hash,
                })
            })
            .collect()
    }
}
