//! The approvers' console's sign-in challenges and sessions (schema 9). See
//! `migrations/0009_console.sql`.

use super::*;

/// Most sign-in challenges open at once per admin.
pub const MAX_CHALLENGES: usize = 16;

impl Store {
    /// Stores sign-in challenge `nonce` (hex) handed to `admin`, void after `expires_at`
    /// (Unix ms); forgets challenges and sessions void before `now_ms`.
    pub async fn put_console_challenge(
        &self,
        nonce: &str,
        admin: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (nonce, admin) = (nonce.to_string(), admin.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                for table in ["console_challenges", "console_sessions"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                        .bind(i(now_ms))
                        .execute(&mut *tx)
                        .await?;
                }
                // An admin has at most MAX_CHALLENGES open sign-ins: asking for more
                // replaces the oldest rather than filling the table.
                sqlx::query(&format!(
                    "DELETE FROM console_challenges WHERE admin = $1 AND nonce NOT IN \
                     (SELECT nonce FROM console_challenges WHERE admin = $1 \
                      ORDER BY expires_at DESC LIMIT {})",
                    MAX_CHALLENGES - 1
                ))
                .bind(admin.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO console_challenges (nonce, admin, expires_at) \
                     VALUES ($1, $2, $3)",
                )
                .bind(nonce.as_str())
                .bind(admin.as_str())
                .bind(i(expires_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Takes sign-in challenge `nonce` handed to `admin`: true once, while it is valid at
    /// `now_ms`; it is gone afterwards whatever the answer.
    pub async fn take_console_challenge(
        &self,
        nonce: &str,
        admin: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (nonce, admin) = (nonce.to_string(), admin.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                let valid: Option<i64> = sqlx::query_scalar(
                    "SELECT expires_at FROM console_challenges WHERE nonce = $1 AND admin = $2",
                )
                .bind(nonce.as_str())
                .bind(admin.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let deleted = sqlx::query("DELETE FROM console_challenges WHERE nonce = $1")
                    .bind(nonce.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                // Two replicas answering one challenge at once: only the one that deleted
                // the row signs in.
                Ok(deleted == 1 && valid.is_some_and(|at| u(at) >= now_ms))
            })
        })
        .await
    }

    /// Records a session of `admin` under the SHA-256 (hex) of its token.
    pub async fn put_console_session(
        &self,
        token_hash: &str,
        admin: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (hash, admin) = (token_hash.to_string(), admin.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO console_sessions (token_hash, admin, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(hash.as_str())
                .bind(admin.as_str())
                .bind(i(now_ms))
                .bind(i(expires_at))
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The admin whose session has token hash `token_hash`, while it is valid at `now_ms`.
    pub async fn console_session(
        &self,
        token_hash: &str,
        now_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        let admin: Option<String> = sqlx::query_scalar(
            "SELECT admin FROM console_sessions WHERE token_hash = $1 AND expires_at >= $2",
        )
        .bind(token_hash)
        .bind(i(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        Ok(admin)
    }

    /// Ends the session with token hash `token_hash` (signing out).
    pub async fn end_console_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let hash = token_hash.to_string();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
                    .bind(hash.as_str())
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }
}
