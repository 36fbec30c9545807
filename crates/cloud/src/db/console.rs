//! The approvers' console's sign-in challenges and sessions (schema 9). See
//! `migrations/0009_console.sql`.

use super::*;

/// Most sign-in challenges open at once per browser (sign-in cookie).
pub const MAX_CHALLENGES: usize = 4;

/// A console session, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The admin's certificate name.
    pub admin: String,
    /// SHA-256 of the key they signed in with, hex.
    pub admin_key: String,
}

impl Store {
    /// Stores sign-in challenge `nonce` (hex) handed to `admin` in the browser whose
    /// sign-in cookie hashes to `binding`, void after `expires_at` (Unix ms); forgets
    /// challenges and sessions void before `now_ms`, and that browser's oldest challenges
    /// beyond [`MAX_CHALLENGES`].
    pub async fn put_console_challenge(
        &self,
        nonce: &str,
        admin: &str,
        binding: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (nonce, admin, binding) = (nonce.to_string(), admin.to_string(), binding.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                for table in ["console_challenges", "console_sessions"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                        .bind(i(now_ms))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&format!(
                    "DELETE FROM console_challenges WHERE binding = $1 AND nonce NOT IN \
                     (SELECT nonce FROM console_challenges WHERE binding = $1 \
                      ORDER BY expires_at DESC LIMIT {})",
                    MAX_CHALLENGES - 1
                ))
                .bind(binding.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO console_challenges (nonce, admin, binding, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(nonce.as_str())
                .bind(admin.as_str())
                .bind(binding.as_str())
                .bind(i(expires_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Takes sign-in challenge `nonce` handed to `admin` in the browser of `binding`: true
    /// once, while it is valid at `now_ms`; it is gone afterwards whatever the answer.
    pub async fn take_console_challenge(
        &self,
        nonce: &str,
        admin: &str,
        binding: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (nonce, admin, binding) = (nonce.to_string(), admin.to_string(), binding.to_string());
        self.write(move |conn| {
            Box::pin(async move {
                let mut tx = conn.begin().await?;
                let valid: Option<i64> = sqlx::query_scalar(
                    "SELECT expires_at FROM console_challenges \
                     WHERE nonce = $1 AND admin = $2 AND binding = $3",
                )
                .bind(nonce.as_str())
                .bind(admin.as_str())
                .bind(binding.as_str())
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

    /// Records a session under the SHA-256 (hex) of its token.
    pub async fn put_console_session(
        &self,
        token_hash: &str,
        session: &ConsoleSession,
        now_ms: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (hash, s) = (token_hash.to_string(), session.clone());
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO console_sessions \
                     (token_hash, admin, admin_key, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(hash.as_str())
                .bind(s.admin.as_str())
                .bind(s.admin_key.as_str())
                .bind(i(now_ms))
                .bind(i(expires_at))
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The session with token hash `token_hash`, while it is valid at `now_ms`.
    pub async fn console_session(
        &self,
        token_hash: &str,
        now_ms: u64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row = sqlx::query(
            "SELECT admin, admin_key FROM console_sessions \
             WHERE token_hash = $1 AND expires_at >= $2",
        )
        .bind(token_hash)
        .bind(i(now_ms))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                admin: r.try_get("admin")?,
                admin_key: r.try_get("admin_key")?,
            })
        })
        .transpose()
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
