//! Databases for tests: SQLite (a file in a temporary directory) and PostgreSQL (a fresh
//! schema of its own on the test server, dropped afterwards).
//!
//! PostgreSQL: `CUSTOS_TEST_POSTGRES_URL` (default [`DEFAULT_PG_URL`]). When the server is
//! unreachable the PostgreSQL variants print SKIPPED and pass, so that the workspace tests
//! need nothing but a toolchain; `CUSTOS_TEST_REQUIRE_POSTGRES=1` makes an unreachable server
//! a failure instead (CI sets it).

use std::future::Future;
use std::time::Duration;

use sqlx::{AnyConnection, Connection, Executor};

/// The test PostgreSQL server of the project's machines.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Where a test's database is, as a test body sees it.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// sqlx URL (PostgreSQL: with the test's schema as `search_path`).
    pub url: String,
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    /// PostgreSQL only: the test's own schema.
    pub schema: Option<String>,
}

impl Ctx {
    /// A plain connection outside the component under test, for tampering like an attacker
    /// with database access.
    pub async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }

    /// Runs one statement on a raw connection and returns the rows affected.
    pub async fn tamper(&self, sql: &str) -> u64 {
        let mut c = self.raw().await;
        let n = c.execute(sql).await.expect(sql).rows_affected();
        c.close().await.expect("close raw connection");
        n
    }
}

/// A test's database; [`TestDb::cleanup`] (or [`TestDb::run`]) drops a PostgreSQL schema.
pub struct TestDb {
    /// sqlx URL.
    pub url: String,
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    /// PostgreSQL only: the test's own schema.
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
    pg_base: Option<String>,
}

impl TestDb {
    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = custos_metadata::sqlite_url(&dir.path().join("test.db")).expect("sqlite url");
        TestDb {
            url,
            engine: "sqlite",
            schema: None,
            _dir: Some(dir),
            pg_base: None,
        }
    }

    /// A fresh schema on the test PostgreSQL server, or `None` (skipped) if it is unreachable.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        sqlx::any::install_default_drivers();
        let base =
            std::env::var("CUSTOS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let admin = tokio::time::timeout(Duration::from_secs(10), AnyConnection::connect(&base))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut admin = match admin {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CUSTOS_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!("PostgreSQL required but unreachable at {base}: {e}");
                }
                eprintln!(
                    "SKIPPED {test} on PostgreSQL: unreachable at {}: {e}",
                    custos_metadata::redact_url(&base)
                );
                return None;
            }
        };
        // Random and process-unique, so parallel tests and parallel runs never share tables.
        let schema = format!(
            "custos_t_{:08x}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        admin
            .execute(&*format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        admin.close().await.expect("close admin connection");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(TestDb {
            url,
            engine: "postgres",
            schema: Some(schema),
            _dir: None,
            pg_base: Some(base),
        })
    }

    /// What a test body gets.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            url: self.url.clone(),
            engine: self.engine,
            schema: self.schema.clone(),
        }
    }

    /// Runs `body`, then cleans up (even if the body panicked), then re-raises its panic.
    pub async fn run<F, Fut>(self, body: F)
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let outcome = tokio::spawn(body(self.ctx())).await;
        self.cleanup().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Drops the PostgreSQL schema (SQLite: the directory goes with `self`).
    pub async fn cleanup(self) {
        if let (Some(base), Some(schema)) = (&self.pg_base, &self.schema) {
            let mut admin = AnyConnection::connect(base)
                .await
                .expect("admin connection");
            admin
                .execute(&*format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .expect("drop schema");
            admin.close().await.expect("close admin connection");
        }
    }
}

/// Both engines (PostgreSQL only when reachable).
pub async fn databases(test: &str) -> Vec<TestDb> {
    let mut v = vec![TestDb::sqlite()];
    if let Some(pg) = TestDb::postgres(test).await {
        v.push(pg);
    }
    v
}

/// Declares each listed `async fn name(ctx: Ctx)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::TestDb::sqlite().run(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::TestDb::postgres(stringify!($name)).await {
                        db.run(super::$name).await;
                    }
                }
            )*
        }
    };
}
