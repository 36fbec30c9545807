//! The link's guarantees against an attacker on the medium (issue 15): a captured envelope
//! replayed once its reply was pruned, a forged spool file naming someone's request id, a
//! flood of refused files, a slow request holding the others, more connections than served.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use custos_link::spool::MAX_REJECTED_FILES;
use custos_link::{
    serve_tcp_limited, Envelope, EnvelopeKind, FailureCode, LinkClient, LinkError, LinkServer,
    SpoolServer, SpoolTransport,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::link::{
    config, counting_server, open_answer, request_bytes, spool_dirs, Pair, CLUSTER, TEST_BOUND,
};

/// A request dated `age_ms` before now (negative: ahead), sealed by the external relay.
fn dated_request(pair: &Pair, id: [u8; 16], age_ms: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let head = (CLUSTER, id, EnvelopeKind::Request, 0);
    Envelope::seal_at(
        &pair.external(),
        head,
        (now - age_ms) as u64,
        b"pay".to_vec(),
    )
    .unwrap()
    .encode()
    .unwrap()
}

/// The attacker captured a request envelope and replays it after its stored reply was
/// pruned: the envelope is older than any approval lives, so it is refused by name and the
/// handler never runs again; one dated far ahead (to outlive the check) is refused too.
#[tokio::test]
async fn a_captured_envelope_older_than_an_approval_is_refused_after_its_reply_was_pruned() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let day = 24 * 3600 * 1000;
        // Sealed six days ago, still within an approval's life: it runs, once.
        let recent = dated_request(&pair, [4; 16], 6 * day);
        let first = server.handle_request(&recent).await.unwrap();
        assert_eq!(open_answer(&pair, &first).payload, b"ok:pay");
        // Its reply pruned (as the retention would, eight days on), the captured envelope
        // is presented again: it would run a second time if its age were not checked.
        let future = 2 * 365 * day as u64;
        server.prune_replies_before(future).unwrap();
        let stale = dated_request(&pair, [4; 16], 7 * day + 60_000);
        let r = server.handle_request(&stale).await;
        assert!(
            matches!(r, Err(LinkError::Expired { max_age_secs, .. }) if max_age_secs == 7 * 24 * 3600),
            "{r:?}"
        );
        let ahead = dated_request(&pair, [5; 16], -(2 * 3600 * 1000));
        let r = server.handle_request(&ahead).await;
        assert!(matches!(r, Err(LinkError::FromTheFuture { .. })), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "neither ran");
        // The sender learns why, signed, with a typed code.
        let e = server.handle_request(&stale).await.unwrap_err();
        let reply = server.refusal_reply(&stale, &e).unwrap();
        let failure: custos_link::Failure =
            postcard::from_bytes(&open_answer(&pair, &reply).payload).unwrap();
        assert_eq!(failure.code, FailureCode::Expired);
    })
    .await
    .unwrap();
}

/// The response file of request `id` in `dir`.
fn answer_file(dir: &Path, id: [u8; 16]) -> std::path::PathBuf {
    dir.join(format!("{}.response.env", hex::encode(id)))
}

/// An answer waiting for its client on the medium is never overwritten by a forged request
/// file naming the same id; an authentic but expired request is told why, signed, where
/// no answer waits; what the server writes is readable by its owner only.
#[tokio::test]
async fn a_forged_spool_file_never_writes_over_a_waiting_answer() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let spool =
            SpoolServer::new(internal_dirs.clone(), server, Duration::from_millis(20)).unwrap();
        let id = [0x21; 16];
        let name = format!("{}.request.env", hex::encode(id));
        std::fs::write(
            internal_dirs.inbound.join(&name),
            request_bytes(&pair.external(), CLUSTER, id, b"pay"),
        )
        .unwrap();
        assert_eq!(spool.poll_once().await.unwrap().answered, 1);
        let waiting = std::fs::read(answer_file(&external_dirs.inbound, id)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(answer_file(&external_dirs.inbound, id))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "answers are owner-only");
        }
        // Before the client picks its answer up, a forged file names the same id.
        let mut forged =
            Envelope::decode(&request_bytes(&pair.external(), CLUSTER, id, b"pay")).unwrap();
        forged.payload = b"steal".to_vec();
        std::fs::write(internal_dirs.inbound.join(&name), forged.encode().unwrap()).unwrap();
        assert_eq!(spool.poll_once().await.unwrap().rejected, 1);
        assert_eq!(
            std::fs::read(answer_file(&external_dirs.inbound, id)).unwrap(),
            waiting,
            "the waiting answer is untouched"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // An authentic request sealed eight days ago: refused, its sender told why.
        let old = [0x22; 16];
        let stale = dated_request(&pair, old, 8 * 24 * 3600 * 1000);
        let stale_name = format!("{}.request.env", hex::encode(old));
        std::fs::write(internal_dirs.inbound.join(&stale_name), &stale).unwrap();
        assert_eq!(spool.poll_once().await.unwrap().rejected, 1);
        let refusal = std::fs::read(answer_file(&external_dirs.inbound, old)).unwrap();
        let failure: custos_link::Failure =
            postcard::from_bytes(&open_answer(&pair, &refusal).payload).unwrap();
        assert_eq!(failure.code, FailureCode::Expired);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

/// A peer flooding the medium with refused files fills `rejected/` up to its bound; beyond
/// it refused files are removed, and the link still serves.
#[tokio::test]
async fn rejected_files_are_bounded() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, _) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let poll = Duration::from_millis(20);
        let spool = SpoolServer::new(internal_dirs.clone(), server, poll).unwrap();
        let rejected = spool.rejected_dir();
        for i in 0..MAX_REJECTED_FILES {
            std::fs::write(rejected.join(format!("old-{i}")), b"x").unwrap();
        }
        for i in 0..5u8 {
            let name = format!("{}.request.env", hex::encode([i; 16]));
            std::fs::write(internal_dirs.inbound.join(name), b"garbage").unwrap();
        }
        assert_eq!(spool.poll_once().await.unwrap().rejected, 5);
        assert_eq!(
            std::fs::read_dir(&rejected).unwrap().count(),
            MAX_REJECTED_FILES
        );
        let left = std::fs::read_dir(&internal_dirs.inbound)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count();
        assert_eq!(left, 0, "refused files removed once rejected/ is full");
        let client = LinkClient::new(
            SpoolTransport::new(external_dirs, poll).unwrap(),
            pair.external(),
            config(CLUSTER),
        );
        let runner = spool.clone();
        let task = tokio::spawn(async move {
            let _ = runner.run().await;
        });
        assert_eq!(client.request(b"on".to_vec()).await.unwrap(), b"ok:on");
        task.abort();
    })
    .await
    .unwrap();
}

/// A request whose handler is slow holds nobody else: requests sent after it are answered
/// while it still runs.
#[tokio::test]
async fn a_slow_spool_request_does_not_stall_the_others() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::clone(&release);
        let server = LinkServer::open(
            dir.path().join("dedup.redb"),
            CLUSTER,
            pair.internal(),
            move |payload: Vec<u8>| {
                let gate = Arc::clone(&gate);
                async move {
                    if payload == b"slow" {
                        gate.notified().await;
                    }
                    Ok::<_, String>(payload)
                }
            },
        )
        .unwrap();
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let poll = Duration::from_millis(20);
        let spool = SpoolServer::new(internal_dirs, server, poll).unwrap();
        let runner = spool.clone();
        let task = tokio::spawn(async move {
            let _ = runner.run().await;
        });
        let client = Arc::new(LinkClient::new(
            SpoolTransport::new(external_dirs, poll).unwrap(),
            pair.external(),
            config(CLUSTER),
        ));
        let slow_client = Arc::clone(&client);
        let slow = tokio::spawn(async move { slow_client.request(b"slow".to_vec()).await });
        // Give the slow request time to be taken up first.
        tokio::time::sleep(poll * 5).await;
        for i in 0..3u8 {
            let payload = vec![b'f', i];
            assert_eq!(client.request(payload.clone()).await.unwrap(), payload);
        }
        assert!(!slow.is_finished(), "the slow request is still running");
        release.notify_one();
        assert_eq!(slow.await.unwrap().unwrap(), b"slow");
        task.abort();
    })
    .await
    .unwrap();
}

/// More connections than the server serves at once: the one beyond is closed at once, and
/// a slot freed serves again.
#[tokio::test]
async fn tcp_connections_beyond_the_cap_are_closed() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, _) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(serve_tcp_limited(listener, server, 2));
        let held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut beyond = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            beyond.read(&mut byte).await.unwrap(),
            0,
            "closed by the server"
        );
        drop(held);
        // A freed slot serves a client again (it retries on a fresh connection).
        let client = LinkClient::new(
            custos_link::TcpTransport::new(addr),
            pair.external(),
            config(CLUSTER),
        );
        let mut answered = None;
        for _ in 0..50 {
            if let Ok(a) = client.request(b"again".to_vec()).await {
                answered = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answered.as_deref(), Some(&b"ok:again"[..]));
        serving.abort();
    })
    .await
    .unwrap();
}
