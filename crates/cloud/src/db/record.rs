//! What a completing request records besides its own row (a wallet, a threshold key and
//! its shares, a wallet's new quorum), written inside the transaction of the row's change.

use super::threshold::{insert_threshold_key, insert_threshold_share};
use super::*;

/// What a completing request records besides its own row, in the same transaction.
#[derive(Clone, Debug)]
pub enum Record {
    /// Nothing.
    Nothing,
    /// A new wallet.
    Wallet(WalletRow),
    /// An imported threshold share (and its key, if first).
    ThresholdShare(ThresholdKeyRow, ThresholdShareRow),
    /// A threshold key made by distributed key generation, with every share.
    ThresholdKey(ThresholdKeyRow, Vec<ThresholdShareRow>),
    /// A wallet's new quorum (root id, quorum) after its approver group changed: later sign
    /// requests wait for that many approvals.
    WalletQuorum(String, u8),
}

impl Record {
    /// Writes it inside the transaction of its request's change.
    pub(super) async fn insert(&self, tx: &mut AnyConnection) -> Result<(), StoreError> {
        match self {
            Record::Nothing => {}
            Record::Wallet(w) => insert_wallet(tx, w).await?,
            Record::WalletQuorum(root_id, quorum) => {
                sqlx::query("UPDATE wallets SET quorum = $1 WHERE root_id = $2")
                    .bind(i64::from(*quorum))
                    .bind(root_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            Record::ThresholdShare(key, share) => insert_threshold_share(tx, key, share).await?,
            Record::ThresholdKey(key, shares) => insert_threshold_key(tx, key, shares).await?,
        }
        Ok(())
    }
}

async fn insert_wallet(tx: &mut AnyConnection, w: &WalletRow) -> Result<(), StoreError> {
    let r = sqlx::query(
        "INSERT INTO wallets \
         (root_id, cluster, xpub, quorum, created_at, created_by_request, tenant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(w.root_id.as_str())
    .bind(w.cluster.as_str())
    .bind(w.xpub.as_str())
    .bind(i64::from(w.quorum))
    .bind(i(w.created_at))
    .bind(w.created_by_request.as_str())
    .bind(w.tenant.as_str())
    .execute(&mut *tx)
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            Err(StoreError::Duplicate(format!("wallet {}", w.root_id)))
        }
        Err(e) => Err(e.into()),
    }
}
