//! The metadata DB against both engines: chain integrity, tamper detection, concurrency,
//! restart, limits, bulk keys. Timings are printed (run with `--nocapture`), never asserted.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{entry, key};
use custos_metadata::{
    KeyPolicyRecord, MetadataDb, MetadataError, NewEntry, RefusalSummary, SentRecord, VerifyReport,
    GENESIS_HASH, MAX_DETAIL_BYTES, MAX_FIELD_BYTES, REFUSAL_SUMMARY_KIND,
};
use custos_test_kit::{on_both_engines, Ctx, TestDb};
use sqlx::Row;

on_both_engines!(
    append_chain_and_verify,
    edited_row_is_detected,
    deleted_middle_row_is_detected,
    deleted_last_row_is_detected,
    concurrent_appends_keep_one_chain,
    append_throughput,
    upsert_100k_keys,
    restart_continues_chain,
    field_limits,
    second_writer_is_refused_not_forked,
    foreign_row_fails_closed,
    closed_db_refuses_appends,
    announced_appends_never_hold_an_append_for_long,
    refusal_summaries_are_chained_and_checked,
    governance_log_appends_in_order_and_refuses_forks,
    sent_to_survives_reopen_and_is_bounded,
    key_policy_keeps_the_highest_version,
);

async fn open(ctx: &Ctx) -> MetadataDb {
    MetadataDb::connect(&ctx.url).await.expect("connect")
}

async fn append_n(db: &MetadataDb, n: usize) -> Vec<custos_metadata::Entry> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(db.append(entry(i)).await.expect("append"));
    }
    out
}

fn assert_broken(report: VerifyReport, at: i64, reason_part: &str) {
    match report {
        VerifyReport::Broken { seq, reason } => {
            assert_eq!(seq, at, "broken at the wrong seq ({reason})");
            assert!(
                reason.contains(reason_part),
                "reason {reason:?} does not mention {reason_part:?}"
            );
        }
        ok => panic!("tampering not detected: {ok:?}"),
    }
}

async fn append_chain_and_verify(ctx: Ctx) {
    let db = open(&ctx).await;
    assert_eq!(db.engine(), ctx.engine);
    assert_eq!(
        db.verify().await.unwrap(),
        VerifyReport::Ok {
            entries: 0,
            head: GENESIS_HASH.into()
        }
    );

    let written = append_n(&db, 50).await;
    assert_eq!(written[0].seq, 1);
    assert_eq!(written[0].prev_hash, GENESIS_HASH);
    for (i, pair) in written.windows(2).enumerate() {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash, "link at {i}");
        assert!(pair[1].at_ms >= pair[0].at_ms);
    }
    for (i, e) in written.iter().enumerate() {
        let want = entry(i);
        assert_eq!(
            (
                &e.kind,
                &e.request_id,
                &e.actor,
                &e.key_id,
                &e.path,
                &e.approvers,
                &e.node,
                &e.outcome,
                &e.detail,
                e.duration_us
            ),
            (
                &want.kind,
                &want.request_id,
                &want.actor,
                &want.key_id,
                &want.path,
                &want.approvers,
                &want.node,
                &want.outcome,
                &want.detail,
                want.duration_us
            )
        );
    }

    // What is read back is exactly what was acknowledged.
    assert_eq!(db.history(0, 1000).await.unwrap(), written);
    let page = db.history(10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(db.history(0, 0).await.unwrap().is_empty());
    assert!(db.history(0, -3).await.unwrap().is_empty());
    assert!(db.history(50, 10).await.unwrap().is_empty());

    let last = written.last().unwrap();
    assert_eq!(
        db.verify().await.unwrap(),
        VerifyReport::Ok {
            entries: 50,
            head: last.hash.clone()
        }
    );
    let head = db.head().await.unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (50, last.hash.as_str()));

    let json = serde_json::to_value(db.verify().await.unwrap()).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["entries"], 50);
}

async fn edited_row_is_detected(ctx: Ctx) {
    let db = open(&ctx).await;
    let written = append_n(&db, 10).await;
    assert!(db.verify().await.unwrap().is_ok());

    assert_eq!(
        ctx.tamper("UPDATE history SET detail = 'nothing to see' WHERE seq = 5")
            .await,
        1
    );
    assert_broken(db.verify().await.unwrap(), 5, "hash mismatch (edited)");

    // Restore, then forge a different field: the approver list.
    let mut c = ctx.raw().await;
    sqlx::query("UPDATE history SET detail = $1 WHERE seq = 5")
        .bind(written[4].detail.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    assert!(db.verify().await.unwrap().is_ok());
    ctx.tamper("UPDATE history SET approvers = 'mallory' WHERE seq = 8")
        .await;
    assert_broken(db.verify().await.unwrap(), 8, "hash mismatch (edited)");
    sqlx::query("UPDATE history SET approvers = $1 WHERE seq = 8")
        .bind(written[7].approvers.join(","))
        .execute(&mut c)
        .await
        .unwrap();

    // A row re-pointed at another predecessor.
    ctx.tamper(&format!(
        "UPDATE history SET prev_hash = '{}' WHERE seq = 7",
        written[1].hash
    ))
    .await;
    assert_broken(db.verify().await.unwrap(), 7, "prev_hash does not link");
}

async fn deleted_middle_row_is_detected(ctx: Ctx) {
    let db = open(&ctx).await;
    append_n(&db, 10).await;
    assert_eq!(ctx.tamper("DELETE FROM history WHERE seq = 4").await, 1);
    assert_broken(
        db.verify().await.unwrap(),
        4,
        "gap: seq 4 missing (deleted)",
    );
    assert_eq!(ctx.tamper("DELETE FROM history WHERE seq = 1").await, 1);
    assert_broken(db.verify().await.unwrap(), 1, "gap: seq 1 missing");
}

async fn deleted_last_row_is_detected(ctx: Ctx) {
    let db = open(&ctx).await;
    append_n(&db, 10).await;
    assert_eq!(ctx.tamper("DELETE FROM history WHERE seq = 10").await, 1);
    assert_broken(
        db.verify().await.unwrap(),
        10,
        "head does not match last entry (tail deleted)",
    );
    ctx.tamper("DELETE FROM history").await;
    assert_broken(db.verify().await.unwrap(), 1, "tail deleted");
}

async fn concurrent_appends_keep_one_chain(ctx: Ctx) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 250;
    let db = open(&ctx).await;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(TASKS);
    for t in 0..TASKS {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let mut e = entry(t * PER_TASK + i);
                e.actor = format!("task-{t}");
                seqs.push(db.append(e).await.expect("append").seq);
            }
            seqs
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        let seqs = h.await.unwrap();
        // Each task's own appends are acknowledged in order.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = TASKS * PER_TASK;
    println!(
        "[{}] {total} appends from {TASKS} tasks: {:.3} s, {:.0} appends/s",
        ctx.engine,
        secs,
        total as f64 / secs
    );
    assert_eq!(all.len(), total);
    assert_eq!(all, (1..=total as i64).collect::<HashSet<_>>());
    assert_eq!(
        db.verify().await.unwrap(),
        VerifyReport::Ok {
            entries: total as u64,
            head: db.head().await.unwrap().hash
        }
    );
    let per_task = db.history(0, 10_000).await.unwrap();
    for t in 0..TASKS {
        let n = per_task
            .iter()
            .filter(|e| e.actor == format!("task-{t}"))
            .count();
        assert_eq!(n, PER_TASK);
    }
}

async fn append_throughput(ctx: Ctx) {
    let db = open(&ctx).await;

    // One caller at a time: every append is its own transaction.
    const SEQUENTIAL: usize = 500;
    let start = Instant::now();
    append_n(&db, SEQUENTIAL).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "[{}] {SEQUENTIAL} sequential appends: {:.3} s, {:.0} appends/s",
        ctx.engine,
        secs,
        SEQUENTIAL as f64 / secs
    );

    // Many concurrent callers, as a busy bridge: group commit batches them.
    const TASKS: usize = 128;
    const PER_TASK: usize = 80;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(TASKS);
    for t in 0..TASKS {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                db.append(entry(t * PER_TASK + i)).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = TASKS * PER_TASK;
    println!(
        "[{}] {total} appends from {TASKS} concurrent tasks: {:.3} s, {:.0} appends/s",
        ctx.engine,
        secs,
        total as f64 / secs
    );

    let start = Instant::now();
    let report = db.verify().await.unwrap();
    println!(
        "[{}] verify of {} entries: {:.3} s",
        ctx.engine,
        SEQUENTIAL + total,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        report,
        VerifyReport::Ok {
            entries: (SEQUENTIAL + total) as u64,
            head: db.head().await.unwrap().hash
        }
    );
}

async fn upsert_100k_keys(ctx: Ctx) {
    const N: usize = 100_000;
    let db = open(&ctx).await;
    let keys: Vec<_> = (0..N).map(key).collect();
    let start = Instant::now();
    db.upsert_keys(&keys).await.expect("upsert_keys");
    println!(
        "[{}] upsert_keys of {N} keys: {:.3} s",
        ctx.engine,
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let got = db.keys().await.unwrap();
    println!(
        "[{}] keys() of {N} keys: {:.3} s",
        ctx.engine,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(got.len(), N);
    assert_eq!(got, keys, "keys() returns every key, oldest first");

    // Present keys are left alone (first record wins); new ones are added; upper-case hex
    // is stored as the one lower-case spelling.
    let mut changed = key(7);
    changed.xpub = "xpub-other".into();
    changed.key_id = changed.key_id.to_uppercase();
    let fresh = key(N);
    db.upsert_keys(&[changed, fresh.clone()]).await.unwrap();
    db.upsert_key(&key(3)).await.unwrap();
    let got = db.keys().await.unwrap();
    assert_eq!(got.len(), N + 1);
    assert_eq!(got[7], keys[7]);
    assert_eq!(got[N], fresh);

    // One bad record rejects the whole call before anything is written.
    let mut bad = key(N + 1);
    bad.key_id = "zz".into();
    let err = db.upsert_keys(&[key(N + 2), bad]).await.unwrap_err();
    assert!(matches!(
        err,
        MetadataError::InvalidField {
            field: "key_id",
            ..
        }
    ));
    let mut bad_quorum = key(N + 3);
    bad_quorum.quorum = 0;
    assert!(db.upsert_key(&bad_quorum).await.is_err());
    assert_eq!(db.keys().await.unwrap().len(), N + 1);
}

async fn restart_continues_chain(ctx: Ctx) {
    let first = {
        let db = open(&ctx).await;
        let w = append_n(&db, 5).await;
        db.upsert_key(&key(1)).await.unwrap();
        db.close().await;
        w
    };
    // Reopen (migrations run again and must be a no-op) and continue.
    let db = open(&ctx).await;
    let second = append_n(&db, 5).await;
    assert_eq!(second[0].seq, 6);
    assert_eq!(second[0].prev_hash, first[4].hash);
    assert!(second[0].at_ms >= first[4].at_ms);
    assert_eq!(db.keys().await.unwrap(), vec![key(1)]);
    assert_eq!(
        db.verify().await.unwrap(),
        VerifyReport::Ok {
            entries: 10,
            head: second[4].hash.clone()
        }
    );
    drop(db);
    let db = open(&ctx).await;
    assert_eq!(db.append(entry(0)).await.unwrap().seq, 11);
    assert!(db.verify().await.unwrap().is_ok());
}

async fn field_limits(ctx: Ctx) {
    let db = open(&ctx).await;

    let mut long = entry(1);
    long.detail = "x".repeat(3 * MAX_DETAIL_BYTES) + "\0";
    let e = db.append(long).await.unwrap();
    assert!(e.detail.len() <= MAX_DETAIL_BYTES);
    assert!(
        e.detail.contains("[truncated"),
        "{}",
        &e.detail[e.detail.len() - 40..]
    );
    assert_eq!(db.history(0, 1).await.unwrap()[0].detail, e.detail);

    let cases: Vec<(NewEntry, &str)> = vec![
        (
            NewEntry {
                actor: "a".repeat(MAX_FIELD_BYTES + 1),
                ..entry(1)
            },
            "actor",
        ),
        (
            NewEntry {
                path: Some("m/".repeat(MAX_FIELD_BYTES)),
                ..entry(1)
            },
            "path",
        ),
        (
            NewEntry {
                approvers: vec!["alice,bob".into()],
                ..entry(1)
            },
            "approvers",
        ),
        (
            NewEntry {
                approvers: (0..1000).map(|i| format!("a{i}")).collect(),
                ..entry(1)
            },
            "approvers",
        ),
        (
            NewEntry {
                node: Some("node\0".into()),
                ..entry(1)
            },
            "node",
        ),
        (
            NewEntry {
                kind: String::new(),
                ..entry(1)
            },
            "kind",
        ),
        (
            NewEntry {
                duration_us: -1,
                ..entry(1)
            },
            "duration_us",
        ),
    ];
    for (bad, field) in cases {
        match db.append(bad).await {
            Err(MetadataError::FieldTooLong { field: f, .. })
            | Err(MetadataError::InvalidField { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
    }
    // Refused entries leave no trace in the chain.
    assert_eq!(db.head().await.unwrap().seq, 1);
    let ok = NewEntry {
        actor: "a".repeat(MAX_FIELD_BYTES),
        ..entry(2)
    };
    assert_eq!(db.append(ok).await.unwrap().seq, 2);
    assert!(db.verify().await.unwrap().is_ok());
}

/// Two handles on one database stand for two bridge processes. Each has its own writer with
/// its own idea of the head; the stale one must be refused, not fork the chain.
async fn second_writer_is_refused_not_forked(ctx: Ctx) {
    let a = open(&ctx).await;
    let b = open(&ctx).await;
    assert_eq!(a.append(entry(1)).await.unwrap().seq, 1);
    let err = b.append(entry(2)).await.unwrap_err();
    assert!(
        matches!(err, MetadataError::HeadMoved { expected_seq: 0 }),
        "{err}"
    );
    // The refused writer reloaded the head and continues after the other's entries.
    assert_eq!(b.append(entry(3)).await.unwrap().seq, 2);
    assert!(a.append(entry(4)).await.is_err());
    assert_eq!(a.append(entry(5)).await.unwrap().seq, 3);
    assert_eq!(
        a.verify().await.unwrap(),
        VerifyReport::Ok {
            entries: 3,
            head: a.head().await.unwrap().hash
        }
    );
}

/// A row slipped in at the next seq without moving the head: the writer's INSERT hits the
/// primary key, the append fails (the request would be refused), and keeps failing until an
/// operator removes the row; verify names the foreign row.
async fn foreign_row_fails_closed(ctx: Ctx) {
    let db = open(&ctx).await;
    let w = append_n(&db, 3).await;
    ctx.tamper(&format!(
        "INSERT INTO history \
         (seq, at_ms, kind, actor, approvers, outcome, detail, duration_us, prev_hash, hash) \
         VALUES (4, 0, 'sign', 'intruder', '', 'ok', '', 0, '{}', '{}')",
        w[2].hash, GENESIS_HASH
    ))
    .await;
    for _ in 0..3 {
        match db.append(entry(9)).await {
            Err(MetadataError::Write(_)) => {}
            other => panic!("expected a write error, got {other:?}"),
        }
    }
    assert_broken(db.verify().await.unwrap(), 4, "beyond the chain head");
    let mut c = ctx.raw().await;
    let n = sqlx::query("SELECT COUNT(*) AS n FROM history")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get::<i64, _>("n")
        .unwrap();
    assert_eq!(n, 4, "failed batches were rolled back");

    ctx.tamper("DELETE FROM history WHERE seq = 4").await;
    assert_eq!(db.append(entry(9)).await.unwrap().seq, 4);
    assert!(db.verify().await.unwrap().is_ok());
}

/// After `close`, appends fail (the request would be refused), also on SQLite where the
/// writer commits through a connection of its own; nothing more reaches the chain.
async fn closed_db_refuses_appends(ctx: Ctx) {
    let db = open(&ctx).await;
    append_n(&db, 2).await;
    db.close().await;
    assert!(db.append(entry(7)).await.is_err());
    let db = open(&ctx).await;
    assert_eq!(db.head().await.unwrap().seq, 2);
    assert!(db.verify().await.unwrap().is_ok());
}

/// Callers that announce appends make the writer wait for them only briefly: an append
/// whose announced companions never come is still committed (and acknowledged only then)
/// within milliseconds, and the chain stays whole.
async fn announced_appends_never_hold_an_append_for_long(ctx: Ctx) {
    let db = open(&ctx).await;
    let _a = db.expect_appends();
    let _b = db.expect_appends();
    let _c = db.expect_appends();
    let t0 = Instant::now();
    let e = db.append(entry(1)).await.unwrap();
    assert!(t0.elapsed().as_secs() < 2, "{:?}", t0.elapsed());
    assert_eq!(db.head().await.unwrap().seq, e.seq);
    let (x, y) = tokio::join!(db.append(entry(2)), db.append(entry(3)));
    assert_eq!(x.unwrap().seq + y.unwrap().seq, 2 + 3);
    assert!(db.verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let db = TestDb::sqlite();
    db.run(|ctx| async move {
        let _db = open(&ctx).await;
        let mut c = ctx.raw().await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
    })
    .await;
}

/// The PostgreSQL tests rely on `options=-c search_path=...` in the URL to isolate each test in
/// its own schema; check that sqlx passes it through and migrations land there.
#[tokio::test]
async fn postgres_schema_isolation_is_real() {
    let Some(db) = TestDb::postgres("postgres_schema_isolation_is_real").await else {
        return;
    };
    db.run(|ctx| async move {
        let schema = ctx.schema.clone().unwrap();
        let mdb = open(&ctx).await;
        mdb.append(entry(1)).await.unwrap();
        let mut c = ctx.raw().await;
        let current: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(current, schema);
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name IN ('history', 'chain_head', 'keys', '_sqlx_migrations')",
        )
        .bind(schema.as_str())
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(tables, 4);
    })
    .await;
}

#[tokio::test]
async fn unsupported_url_is_refused_with_password_hidden() {
    let err = MetadataDb::connect("mysql://u:hunter2@host/db")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MetadataError::UnsupportedUrl { .. }));
    assert!(!msg.contains("hunter2"), "{msg}");
}

/// A summary is one chained row that reads back as written; a malformed one is never
/// written, and editing its count breaks the chain.
async fn refusal_summaries_are_chained_and_checked(ctx: Ctx) {
    let db = open(&ctx).await;
    append_n(&db, 2).await;
    let summary = RefusalSummary {
        source: "bridge:tls".into(),
        reason: "unknown_issuer".into(),
        count: 10_000,
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        samples: vec![("ab".repeat(32), 9_000)],
        example: "self-signed".into(),
    };
    let written = db.append(summary.to_entry().unwrap()).await.unwrap();
    assert_eq!(written.kind, REFUSAL_SUMMARY_KIND);
    let back = db.history(2, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        RefusalSummary::from_entry(&back[0]).unwrap(),
        Some(summary.clone())
    );
    assert!(db.verify().await.unwrap().is_ok());

    // A summary row with a detail that is not a summary is refused before it is queued.
    let forged = NewEntry {
        kind: REFUSAL_SUMMARY_KIND.into(),
        actor: "bridge:tls".into(),
        outcome: "unknown_issuer".into(),
        detail: "count=lots".into(),
        ..Default::default()
    };
    assert!(matches!(
        db.append(forged).await,
        Err(MetadataError::InvalidField {
            field: "detail",
            ..
        })
    ));

    // Lowering the count afterwards is an edit like any other.
    let tampered = written.detail.replace("count=10000", "count=1");
    assert_ne!(tampered, written.detail);
    let mut c = ctx.raw().await;
    sqlx::query("UPDATE history SET detail = $1 WHERE seq = 3")
        .bind(tampered.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    assert_broken(db.verify().await.unwrap(), 3, "hash mismatch (edited)");
}

async fn governance_log_appends_in_order_and_refuses_forks(ctx: Ctx) {
    use custos_metadata::GovernanceRow;
    let db = open(&ctx).await;
    let row = |version: u64, tag: u8| GovernanceRow {
        version,
        hash: [tag; 32],
        entry: vec![tag; 100 + version as usize],
    };
    assert!(db.governance_entries(0).await.unwrap().is_empty());
    // The first append must start at the genesis.
    let e = db.append_governance(&[row(1, 1)]).await.unwrap_err();
    assert!(
        matches!(e, MetadataError::GovernanceGap { next: 0, got: 1 }),
        "{e:?}"
    );
    db.append_governance(&[row(0, 0), row(1, 1)]).await.unwrap();
    // Appending what is stored again changes nothing; extending it adds only the new row.
    db.append_governance(&[row(1, 1), row(2, 2)]).await.unwrap();
    // A different entry at a stored version is a fork: the whole append is refused.
    let e = db
        .append_governance(&[row(2, 9), row(3, 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(e, MetadataError::GovernanceConflict { version: 2 }),
        "{e:?}"
    );
    let e = db.append_governance(&[row(4, 4)]).await.unwrap_err();
    assert!(
        matches!(e, MetadataError::GovernanceGap { next: 3, got: 4 }),
        "{e:?}"
    );
    let e = db
        .append_governance(&[row(3, 3), row(5, 5)])
        .await
        .unwrap_err();
    assert!(matches!(e, MetadataError::InvalidField { .. }), "{e:?}");
    assert_eq!(
        db.governance_entries(0).await.unwrap(),
        vec![row(0, 0), row(1, 1), row(2, 2)]
    );
    assert_eq!(db.governance_entries(2).await.unwrap(), vec![row(2, 2)]);
    // Reopened, the log is still there.
    db.close().await;
    let db = open(&ctx).await;
    assert_eq!(db.governance_entries(1).await.unwrap().len(), 2);
}

/// Where one-effect requests were sent: the last node per request survives a reopen, old
/// rows and rows beyond the count bound are deleted, bad fields are refused.
async fn sent_to_survives_reopen_and_is_bounded(ctx: Ctx) {
    let sent = |id: &str, node: &str, at_ms| SentRecord {
        request_id: id.into(),
        node: node.into(),
        at_ms,
    };
    {
        let db = open(&ctx).await;
        assert!(db.sent_since(0, 10).await.unwrap().is_empty());
        db.record_sent("r1", "node1", 1_000).await.unwrap();
        // A failover after a refused connection moves it.
        db.record_sent("r1", "node2", 2_000).await.unwrap();
        for (i, at) in [(2, 3_000), (3, 4_000), (4, 5_000)] {
            db.record_sent(&format!("r{i}"), "node1", at).await.unwrap();
        }
        let e = db.record_sent("", "node1", 1).await.unwrap_err();
        assert!(matches!(
            e,
            MetadataError::InvalidField {
                field: "request_id",
                ..
            }
        ));
        let long = "n".repeat(MAX_FIELD_BYTES + 1);
        let e = db.record_sent("r9", &long, 1).await.unwrap_err();
        assert!(matches!(
            e,
            MetadataError::FieldTooLong { field: "node", .. }
        ));
        db.close().await;
    }
    let db = open(&ctx).await;
    assert_eq!(
        db.sent_since(2_000, 10).await.unwrap(),
        vec![
            sent("r4", "node1", 5_000),
            sent("r3", "node1", 4_000),
            sent("r2", "node1", 3_000),
            sent("r1", "node2", 2_000),
        ]
    );
    assert_eq!(db.sent_since(0, 1).await.unwrap().len(), 1);
    // Older than 3 000 ms goes (r1), then all but the newest two (r2).
    assert_eq!(db.forget_sent(3_000, 2).await.unwrap(), 2);
    assert_eq!(
        db.sent_since(0, 10).await.unwrap(),
        vec![sent("r4", "node1", 5_000), sent("r3", "node1", 4_000)]
    );
    // Fewer rows than the bound: nothing more goes.
    assert_eq!(db.forget_sent(0, 5).await.unwrap(), 0);
}

/// A key's recorded policy only moves up (a late, older report never lowers it) and survives
/// a reopen.
async fn key_policy_keeps_the_highest_version(ctx: Ctx) {
    let rec = |key: &str, version, h| KeyPolicyRecord {
        key_id: key.into(),
        version,
        hash: [h; 32],
    };
    {
        let db = open(&ctx).await;
        assert!(db.key_policies().await.unwrap().is_empty());
        db.record_key_policy(&rec("aa", 2, 2)).await.unwrap();
        db.record_key_policy(&rec("aa", 1, 1)).await.unwrap();
        db.record_key_policy(&rec("AA", 2, 9)).await.unwrap();
        db.record_key_policy(&rec("bb", 1, 1)).await.unwrap();
        db.record_key_policy(&rec("bb", 3, 3)).await.unwrap();
        let e = db.record_key_policy(&rec("", 1, 1)).await.unwrap_err();
        assert!(matches!(
            e,
            MetadataError::InvalidField {
                field: "key_id",
                ..
            }
        ));
        db.close().await;
    }
    let db = open(&ctx).await;
    let mut all = db.key_policies().await.unwrap();
    all.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(all, vec![rec("aa", 2, 2), rec("bb", 3, 3)]);
}
