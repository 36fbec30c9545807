//! Test harness: every test body runs once on SQLite (a file in a temp dir) and once on
//! PostgreSQL (a fresh schema of its own, dropped afterwards).
//!
//! PostgreSQL: `CUSTOS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! When the server is unreachable the PostgreSQL variants print SKIPPED and pass, so that the
//! workspace tests need nothing but a toolchain; set `CUSTOS_TEST_REQUIRE_POSTGRES=1` to make
//! an unreachable server a failure instead.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use custos_metadata::{sqlite_url, KeyRecord, NewEntry};
use sqlx::{AnyConnection, Connection, Executor};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What a test body gets: where its database is.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub url: String,
    pub engine: &'static str,
    /// PostgreSQL only: the test's own schema.
    pub schema: Option<String>,
}

impl Ctx {
    /// A plain connection outside `MetadataDb`, for tampering like an attacker with DB access.
    pub async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }

    /// Runs one statement on a raw connection and returns rows affected.
    pub async fn tamper(&self, sql: &str) -> u64 {
        let mut c = self.raw().await;
        let n = c.execute(sql).await.expect(sql).rows_affected();
        c.close().await.expect("close raw connection");
        n
    }
}

pub struct TestDb {
    ctx: Ctx,
    _dir: Option<tempfile::TempDir>,
    pg_base: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = sqlite_url(&dir.path().join("metadata.db")).expect("sqlite url");
        TestDb {
            ctx: Ctx {
                url,
                engine: "sqlite",
                schema: None,
            },
            _dir: Some(dir),
            pg_base: None,
        }
    }

    /// A fresh schema on the test PostgreSQL server, or `None` (skip) if it is unreachable.
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
            ctx: Ctx {
                url,
                engine: "postgres",
                schema: Some(schema),
            },
            _dir: None,
            pg_base: Some(base),
        })
    }

    /// Runs `body`, then cleans up (even if the body panicked), then re-raises its panic.
    pub async fn run<F, Fut>(self, body: F)
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let outcome = tokio::spawn(body(self.ctx.clone())).await;
        if let (Some(base), Some(schema)) = (&self.pg_base, &self.ctx.schema) {
            let mut admin = AnyConnection::connect(base)
                .await
                .expect("admin connection");
            admin
                .execute(&*format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .expect("drop schema");
            admin.close().await.expect("close admin connection");
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A realistic entry; `i` varies every field so that field-specific bugs show.
pub fn entry(i: usize) -> NewEntry {
    NewEntry {
        kind: ["sign", "create-wallet", "audit", "refusal"][i % 4].into(),
        request_id: (i % 3 != 0).then(|| format!("req-{i}")),
        actor: format!("client-{}", i % 7),
        key_id: (i % 2 == 0).then(|| format!("02{:064x}", i)),
        path: (i % 4 == 0).then(|| format!("m/44'/0'/0'/0/{i}")),
        approvers: (0..i % 3).map(|a| format!("admin{a}")).collect(),
        node: (i % 5 != 0).then(|| format!("node{}", i % 3)),
        outcome: if i % 4 == 3 {
            "E_QUORUM".into()
        } else {
            "ok".into()
        },
        detail: format!("entry {i} with text: äöü, \"quotes\", commas, and 'apostrophes'"),
        duration_us: (i as i64) * 13,
    }
}

pub fn key(i: usize) -> KeyRecord {
    KeyRecord {
        key_id: format!("03{:064x}", i),
        xpub: format!("xpub661MyMwAqRbcF{i:0>94}"),
        quorum: (i % 3 + 1) as i64,
        origin: if i % 2 == 0 { "generated" } else { "imported" }.into(),
        created_at_ms: 1_700_000_000_000 + i as i64,
        created_on: format!("node{}", i % 4),
    }
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
                    $crate::common::TestDb::sqlite().await.run(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::TestDb::postgres(stringify!($name)).await {
                        db.run(super::$name).await;
                    }
                }
            )*
        }
    };
}
