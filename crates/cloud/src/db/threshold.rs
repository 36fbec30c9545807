//! Threshold keys in the store: the recorded keys, the shares imported (or made) per
//! cluster, and the presignature pool (each presignature taken once, by compare-and-swap).

use super::*;

/// A threshold key row: the public facts every share holder agrees on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdKeyRow {
    /// Joint public key (compressed), hex.
    pub key_id: String,
    /// Signers needed (t).
    pub threshold: u16,
    /// Cluster of each share, by share index (n entries).
    pub clusters: Vec<String>,
    /// Distinct admins required to use it.
    pub quorum: u8,
    /// BIP-32 chain code, hex, when HD derivation is enabled.
    pub chain_code: Option<String>,
    /// `dealer` or `dkg`.
    pub origin: String,
    /// Unix ms.
    pub created_at: u64,
    /// The import request that recorded it first.
    pub created_by_request: String,
    /// Tenant of the requests that made it: only its tokens see or use the key.
    pub tenant: String,
}

impl ThresholdKeyRow {
    /// What differs between two records of the same key, if anything (creation time and
    /// request aside).
    pub fn disagreement(&self, other: &ThresholdKeyRow) -> Option<String> {
        let mut diffs = Vec::new();
        if self.threshold != other.threshold {
            diffs.push(format!(
                "threshold {} vs {}",
                self.threshold, other.threshold
            ));
        }
        if self.clusters != other.clusters {
            diffs.push(format!(
                "clusters {:?} vs {:?}",
                self.clusters, other.clusters
            ));
        }
        if self.quorum != other.quorum {
            diffs.push(format!("quorum {} vs {}", self.quorum, other.quorum));
        }
        if self.chain_code != other.chain_code {
            diffs.push("chain code".to_string());
        }
        if self.origin != other.origin {
            diffs.push(format!("origin {} vs {}", self.origin, other.origin));
        }
        // Never named: a tenant does not learn another's name (nor, from this alone, that
        // the key exists; importing a share needs the dealer's bundle of it).
        if self.tenant != other.tenant {
            diffs.push("tenant".to_string());
        }
        (!diffs.is_empty()).then(|| {
            format!(
                "threshold key {} is recorded with other facts: {}",
                self.key_id,
                diffs.join(", ")
            )
        })
    }
}

/// Where a share of a threshold key was imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdShareRow {
    /// Joint public key, hex.
    pub key_id: String,
    /// Share index.
    pub share_index: u16,
    /// Cluster holding the share.
    pub cluster: String,
    /// Node whose TEE imported it.
    pub node: String,
    /// Unix ms.
    pub imported_at: u64,
    /// The import request.
    pub request_id: String,
}

/// A presignature of a threshold key, held by its signers' TEEs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresignatureRow {
    /// Its id, hex.
    pub id: String,
    /// Joint public key, hex.
    pub key_id: String,
    /// Who holds it, in signing order.
    pub signers: Vec<PresignatureSigner>,
    /// Unix ms.
    pub created_at: u64,
    /// Whether it was taken (by `taken_by`).
    pub taken_by: Option<String>,
}

/// One holder of a presignature.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresignatureSigner {
    /// Cluster.
    pub cluster: String,
    /// The node whose TEE holds it (presignatures never move between nodes).
    pub node: String,
    /// Share index.
    pub share_index: u16,
}

fn presignature_from_row(row: &AnyRow) -> Result<PresignatureRow, StoreError> {
    let signers: String = row.try_get("signers")?;
    Ok(PresignatureRow {
        id: row.try_get("id")?,
        key_id: row.try_get("key_id")?,
        signers: serde_json::from_str(&signers)
            .map_err(|e| corrupt(format!("presignature signers: {e}")))?,
        created_at: u(row.try_get("created_at")?),
        taken_by: row.try_get("taken_by")?,
    })
}

const THRESHOLD_KEY_COLUMNS: &str =
    "key_id, threshold, clusters, quorum, chain_code, origin, created_at, created_by_request, tenant";

fn threshold_key_from_row(row: &AnyRow) -> Result<ThresholdKeyRow, StoreError> {
    let threshold: i64 = row.try_get("threshold")?;
    let quorum: i64 = row.try_get("quorum")?;
    let clusters: String = row.try_get("clusters")?;
    Ok(ThresholdKeyRow {
        key_id: row.try_get("key_id")?,
        threshold: u16::try_from(threshold)
            .map_err(|_| corrupt(format!("threshold {threshold}")))?,
        clusters: serde_json::from_str(&clusters)
            .map_err(|e| corrupt(format!("threshold clusters: {e}")))?,
        quorum: u8::try_from(quorum).map_err(|_| corrupt(format!("quorum {quorum}")))?,
        chain_code: row.try_get("chain_code")?,
        origin: row.try_get("origin")?,
        created_at: u(row.try_get("created_at")?),
        created_by_request: row.try_get("created_by_request")?,
        tenant: row.try_get("tenant")?,
    })
}

fn threshold_share_from_row(row: &AnyRow) -> Result<ThresholdShareRow, StoreError> {
    let index: i64 = row.try_get("share_index")?;
    Ok(ThresholdShareRow {
        key_id: row.try_get("key_id")?,
        share_index: u16::try_from(index).map_err(|_| corrupt(format!("share index {index}")))?,
        cluster: row.try_get("cluster")?,
        node: row.try_get("node")?,
        imported_at: u(row.try_get("imported_at")?),
        request_id: row.try_get("request_id")?,
    })
}

/// Records a threshold share: the key row if it is the first share (else the recorded key
/// must agree), and the share row (a re-import of the same share moves it to the new node).
pub(super) async fn insert_threshold_share(
    tx: &mut AnyConnection,
    key: &ThresholdKeyRow,
    share: &ThresholdShareRow,
) -> Result<(), StoreError> {
    let clusters = serde_json::to_string(&key.clusters).expect("names always serialize");
    sqlx::query(&format!(
        "INSERT INTO threshold_keys ({THRESHOLD_KEY_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key_id) DO NOTHING"
    ))
    .bind(key.key_id.as_str())
    .bind(i64::from(key.threshold))
    .bind(clusters)
    .bind(i64::from(key.quorum))
    .bind(key.chain_code.clone())
    .bind(key.origin.as_str())
    .bind(i(key.created_at))
    .bind(key.created_by_request.as_str())
    .bind(key.tenant.as_str())
    .execute(&mut *tx)
    .await?;
    let stored = sqlx::query(&format!(
        "SELECT {THRESHOLD_KEY_COLUMNS} FROM threshold_keys WHERE key_id = $1"
    ))
    .bind(key.key_id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let stored = threshold_key_from_row(&stored)?;
    if let Some(why) = stored.disagreement(key) {
        return Err(StoreError::Inconsistent(why));
    }
    sqlx::query(
        "INSERT INTO threshold_shares \
         (key_id, share_index, cluster, node, imported_at, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_id, share_index) DO UPDATE SET \
         cluster = excluded.cluster, node = excluded.node, \
         imported_at = excluded.imported_at, request_id = excluded.request_id",
    )
    .bind(share.key_id.as_str())
    .bind(i64::from(share.share_index))
    .bind(share.cluster.as_str())
    .bind(share.node.as_str())
    .bind(i(share.imported_at))
    .bind(share.request_id.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records a new threshold key with all its shares; a key already recorded is refused
/// ([`StoreError::Inconsistent`]: a key generation never makes a known key).
pub(super) async fn insert_threshold_key(
    tx: &mut AnyConnection,
    key: &ThresholdKeyRow,
    shares: &[ThresholdShareRow],
) -> Result<(), StoreError> {
    let known = sqlx::query("SELECT key_id FROM threshold_keys WHERE key_id = $1")
        .bind(key.key_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_some() {
        return Err(StoreError::Inconsistent(format!(
            "threshold key {} is already recorded",
            key.key_id
        )));
    }
    for share in shares {
        insert_threshold_share(tx, key, share).await?;
    }
    Ok(())
}

impl Store {
    /// One threshold key.
    pub async fn threshold_key(&self, key_id: &str) -> Result<Option<ThresholdKeyRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {THRESHOLD_KEY_COLUMNS} FROM threshold_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(threshold_key_from_row).transpose()
    }

    /// Every threshold key of every tenant, oldest first.
    pub async fn threshold_keys(&self) -> Result<Vec<ThresholdKeyRow>, StoreError> {
        self.threshold_keys_of(None).await
    }

    /// The threshold keys of one tenant (`None`: every tenant), oldest first.
    pub async fn threshold_keys_of(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<ThresholdKeyRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {THRESHOLD_KEY_COLUMNS} FROM threshold_keys \
             WHERE ($1 = '' OR tenant = $1) ORDER BY created_at, key_id"
        ))
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(threshold_key_from_row).collect()
    }

    /// The recorded shares of a threshold key (of every key when `key_id` is `None`), by
    /// key and share index.
    pub async fn threshold_shares(
        &self,
        key_id: Option<&str>,
    ) -> Result<Vec<ThresholdShareRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, share_index, cluster, node, imported_at, request_id \
             FROM threshold_shares WHERE ($1 = '' OR key_id = $1) ORDER BY key_id, share_index",
        )
        .bind(key_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(threshold_share_from_row).collect()
    }

    /// Records a presignature as ready.
    pub async fn insert_presignature(&self, p: &PresignatureRow) -> Result<(), StoreError> {
        let p = p.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let res = sqlx::query(
                    "INSERT INTO threshold_presignatures (id, key_id, signers, status, \
                     created_at) VALUES ($1, $2, $3, 'ready', $4)",
                )
                .bind(p.id.as_str())
                .bind(p.key_id.as_str())
                .bind(serde_json::to_string(&p.signers).expect("signers always serialize"))
                .bind(i(p.created_at))
                .execute(&mut *conn)
                .await;
                match res {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => {
                        Err(StoreError::Duplicate(format!("presignature {}", p.id)))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        })
        .await
    }

    /// How many presignatures each recorded threshold key has ready (0 for a key without a
    /// pool or whose pool ran dry), by key: one indexed count per key, whatever the number
    /// of presignatures taken long ago.
    pub async fn ready_presignature_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.key_id AS key_id, (SELECT COUNT(*) FROM threshold_presignatures p \
             WHERE p.key_id = k.key_id AND p.status = 'ready') AS ready \
             FROM threshold_keys k ORDER BY k.key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_id")?, r.try_get("ready")?)))
            .collect()
    }

    /// The ready presignatures of a key, oldest first.
    pub async fn ready_presignatures(
        &self,
        key_id: &str,
    ) -> Result<Vec<PresignatureRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, key_id, signers, created_at, taken_by FROM threshold_presignatures \
             WHERE key_id = $1 AND status = 'ready' ORDER BY created_at, id",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(presignature_from_row).collect()
    }

    /// Takes a ready presignature for `request` (compare-and-swap on its status): `false`
    /// if another request took it first. Once taken it is never handed out again.
    pub async fn take_presignature(
        &self,
        id: &str,
        request: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (id, request) = (id.to_string(), request.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE threshold_presignatures SET status = 'taken', taken_at = $1, \
                     taken_by = $2 WHERE id = $3 AND status = 'ready'",
                )
                .bind(i(now_ms))
                .bind(request.as_str())
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }
}
