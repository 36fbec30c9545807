//! The cluster's governance log as the bridge keeps it (issue 12): one row per entry, in
//! version order without gaps. The rows are signed content the bridge verified before storing
//! and verifies again when it starts; the database is a cache the bridge can refill from any
//! member TEE, never the authority on who is a member.

use sqlx::Row;

use crate::writer::now_ms;
use crate::{write_err, MetadataDb, MetadataError};

/// Largest encoded entry kept (a genesis with 64 members and their certificates and
/// attestation evidence stays well under it).
pub const MAX_GOVERNANCE_ENTRY_BYTES: usize = 2 * 1024 * 1024;

/// Most entries [`MetadataDb::governance_entries`] returns at once.
pub const MAX_GOVERNANCE_PAGE: usize = 256;

/// One stored entry of the governance log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceRow {
    /// Position in the log (the genesis is 0).
    pub version: u64,
    /// The entry's hash, as the log defines it.
    pub hash: [u8; 32],
    /// The entry's canonical encoding.
    pub entry: Vec<u8>,
}

impl MetadataDb {
    /// Appends `rows` (consecutive versions, the first one just after the stored head) in one
    /// transaction: all or none. A row already stored with the same hash is skipped, so a
    /// repeated append is harmless; one stored with another hash is a fork and refuses the
    /// whole append ([`MetadataError::GovernanceConflict`]), as does a gap
    /// ([`MetadataError::GovernanceGap`]).
    pub async fn append_governance(&self, rows: &[GovernanceRow]) -> Result<(), MetadataError> {
        if rows.len() > MAX_GOVERNANCE_PAGE {
            return Err(MetadataError::FieldTooLong {
                field: "governance entries",
                len: rows.len(),
                max: MAX_GOVERNANCE_PAGE,
            });
        }
        for (i, r) in rows.iter().enumerate() {
            if r.entry.len() > MAX_GOVERNANCE_ENTRY_BYTES {
                return Err(MetadataError::FieldTooLong {
                    field: "governance entry",
                    len: r.entry.len(),
                    max: MAX_GOVERNANCE_ENTRY_BYTES,
                });
            }
            if i > 0 && r.version != rows[i - 1].version + 1 {
                return Err(MetadataError::InvalidField {
                    field: "governance entries",
                    reason: "versions are not consecutive",
                });
            }
            if i64::try_from(r.version).is_err() {
                return Err(MetadataError::InvalidField {
                    field: "governance version",
                    reason: "beyond the signed 64-bit range",
                });
            }
        }
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(write_err)?;
        let stored: Vec<(i64, String)> = sqlx::query(
            "SELECT version, hash FROM governance WHERE version >= $1 ORDER BY version",
        )
        .bind(first.version as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::Read)?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(MetadataError::Read)?;
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(version) + 1, 0) FROM governance")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(MetadataError::Read)?;
        if first.version as i64 > next {
            return Err(MetadataError::GovernanceGap {
                next: next as u64,
                got: first.version,
            });
        }
        let at = now_ms();
        for r in rows {
            let hash = hex::encode(r.hash);
            match stored.iter().find(|(v, _)| *v == r.version as i64) {
                Some((_, h)) if *h == hash => continue,
                Some(_) => {
                    return Err(MetadataError::GovernanceConflict { version: r.version });
                }
                None => {}
            }
            sqlx::query(
                "INSERT INTO governance (version, hash, entry, recorded_at_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(r.version as i64)
            .bind(hash)
            .bind(hex::encode(&r.entry))
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(write_err)?;
        }
        tx.commit().await.map_err(write_err)
    }

    /// Up to [`MAX_GOVERNANCE_PAGE`] stored entries from version `from` on, in order.
    pub async fn governance_entries(&self, from: u64) -> Result<Vec<GovernanceRow>, MetadataError> {
        let rows = sqlx::query(
            "SELECT version, hash, entry FROM governance WHERE version >= $1 \
             ORDER BY version LIMIT $2",
        )
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(MAX_GOVERNANCE_PAGE as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::Read)?;
        rows.iter()
            .map(|row| {
                let version: i64 = row.try_get(0).map_err(MetadataError::Read)?;
                let hash: String = row.try_get(1).map_err(MetadataError::Read)?;
                let entry: String = row.try_get(2).map_err(MetadataError::Read)?;
                let corrupt = |what: &str| {
                    MetadataError::Corrupt(format!("governance version {version}: {what}"))
                };
                Ok(GovernanceRow {
                    version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
                    hash: hex::decode(&hash)
                        .ok()
                        .and_then(|h| h.try_into().ok())
                        .ok_or_else(|| corrupt("hash is not 32 bytes of hex"))?,
                    entry: hex::decode(&entry).map_err(|_| corrupt("entry is not hex"))?,
                })
            })
            .collect()
    }
}
