//! End-to-end tests of the link: envelopes, both transports, exactly-once execution.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custos_link::tcp::read_frame;
use custos_link::{
    serve_tcp, ClientConfig, Envelope, EnvelopeKind, FailureCode, LinkClient, LinkError, LinkKeys,
    LinkServer, SpoolDirs, SpoolServer, SpoolTransport, TcpTransport, MAX_FRAME, MAX_PAYLOAD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const CLUSTER: &str = "dc1";
/// Upper bound for any single test; generous so a loaded CI machine never trips it.
pub(crate) const TEST_BOUND: Duration = Duration::from_secs(60);

pub(crate) struct Pair {
    external_pkcs8: Vec<u8>,
    internal_pkcs8: Vec<u8>,
}

impl Pair {
    pub(crate) fn new() -> Self {
        Self {
            external_pkcs8: LinkKeys::generate_pkcs8().unwrap(),
            internal_pkcs8: LinkKeys::generate_pkcs8().unwrap(),
        }
    }
    pub(crate) fn external(&self) -> LinkKeys {
        let peer = LinkKeys::public_key_of_pkcs8(&self.internal_pkcs8).unwrap();
        LinkKeys::from_pkcs8(&self.external_pkcs8, peer).unwrap()
    }
    pub(crate) fn internal(&self) -> LinkKeys {
        let peer = LinkKeys::public_key_of_pkcs8(&self.external_pkcs8).unwrap();
        LinkKeys::from_pkcs8(&self.internal_pkcs8, peer).unwrap()
    }
}

/// A server whose handler answers `ok:<payload>` (or fails for payload `fail`) and counts
/// its calls.
pub(crate) fn counting_server(path: &Path, keys: LinkKeys) -> (LinkServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let server = LinkServer::open(path, CLUSTER, keys, move |payload: Vec<u8>| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if payload == b"fail" {
                return Err("handler says no".to_string());
            }
            let mut out = b"ok:".to_vec();
            out.extend_from_slice(&payload);
            Ok(out)
        }
    })
    .unwrap();
    (server, calls)
}

pub(crate) fn config(cluster: &str) -> ClientConfig {
    ClientConfig {
        cluster: cluster.to_string(),
        attempt_timeout: Duration::from_secs(10),
        max_attempts: 3,
        retry_delay: Duration::from_millis(20),
    }
}

async fn start_tcp(server: LinkServer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = serve_tcp(listener, server).await;
    });
    (addr, task)
}

pub(crate) fn request_bytes(
    keys: &LinkKeys,
    cluster: &str,
    id: [u8; 16],
    payload: &[u8],
) -> Vec<u8> {
    Envelope::seal(
        keys,
        cluster,
        id,
        EnvelopeKind::Request,
        0,
        payload.to_vec(),
    )
    .unwrap()
    .encode()
    .unwrap()
}

pub(crate) fn open_answer(pair: &Pair, bytes: &[u8]) -> Envelope {
    let keys = pair.external();
    Envelope::open(bytes, keys.peer_public(), CLUSTER).unwrap()
}

#[tokio::test]
async fn envelope_round_trip_and_structural_refusals() {
    let pair = Pair::new();
    let keys = pair.external();
    let env = Envelope::seal(
        &keys,
        CLUSTER,
        [7; 16],
        EnvelopeKind::Request,
        3,
        b"x".to_vec(),
    )
    .unwrap();
    let bytes = env.encode().unwrap();
    let internal = pair.internal();
    assert_eq!(
        Envelope::open(&bytes, internal.peer_public(), CLUSTER).unwrap(),
        env
    );

    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        Envelope::decode(&trailing),
        Err(LinkError::Malformed(_))
    ));
    assert!(matches!(
        Envelope::decode(&[0xff; 3]),
        Err(LinkError::Malformed(_))
    ));

    let too_big = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        Envelope::seal(&keys, CLUSTER, [7; 16], EnvelopeKind::Request, 0, too_big),
        Err(LinkError::Oversize {
            what: "payload",
            ..
        })
    ));

    let mut future_version = env.clone();
    future_version.version = 2;
    let encoded = postcard::to_allocvec(&future_version).unwrap();
    assert!(matches!(
        Envelope::decode(&encoded),
        Err(LinkError::UnsupportedVersion(2))
    ));
}

#[tokio::test]
async fn tcp_round_trip_and_handler_failure() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (addr, task) = start_tcp(server).await;
        let client = LinkClient::new(TcpTransport::new(addr), pair.external(), config(CLUSTER));

        assert_eq!(
            client.request(b"hello".to_vec()).await.unwrap(),
            b"ok:hello"
        );
        assert_eq!(
            client.request(b"again".to_vec()).await.unwrap(),
            b"ok:again"
        );
        match client.request(b"fail".to_vec()).await {
            Err(LinkError::Handler(m)) => assert_eq!(m, "handler says no"),
            other => panic!("expected handler failure, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn retried_request_id_returns_first_result_and_runs_once() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (addr, task) = start_tcp(server).await;
        let client = LinkClient::new(TcpTransport::new(addr), pair.external(), config(CLUSTER));

        let id = client.new_request_id().unwrap();
        let first = client.request_with_id(id, b"sign".to_vec()).await.unwrap();
        let second = client.request_with_id(id, b"sign".to_vec()).await.unwrap();
        assert_eq!(first, b"ok:sign");
        assert_eq!(first, second);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Same id, different payload: refused, and the handler still ran only once.
        assert!(matches!(
            client.request_with_id(id, b"other".to_vec()).await,
            Err(LinkError::RequestIdReused)
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A failure is a final answer too: replayed, not re-run.
        let fid = client.new_request_id().unwrap();
        for _ in 0..2 {
            assert!(matches!(
                client.request_with_id(fid, b"fail".to_vec()).await,
                Err(LinkError::Handler(_))
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tampered_envelopes_are_refused_with_typed_errors() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let external = pair.external();

        // Flipped payload byte.
        let mut env =
            Envelope::decode(&request_bytes(&external, CLUSTER, [1; 16], b"pay")).unwrap();
        env.payload[0] ^= 1;
        assert!(matches!(
            server.handle_request(&env.encode().unwrap()).await,
            Err(LinkError::BadSignature)
        ));

        // Wrong signer: a key the server has not pinned.
        let intruder = LinkKeys::from_pkcs8(
            &LinkKeys::generate_pkcs8().unwrap(),
            LinkKeys::public_key_of_pkcs8(&pair.internal_pkcs8).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            server
                .handle_request(&request_bytes(&intruder, CLUSTER, [2; 16], b"pay"))
                .await,
            Err(LinkError::BadSignature)
        ));

        // Authentic, but for another cluster.
        match server
            .handle_request(&request_bytes(&external, "dc2", [3; 16], b"pay"))
            .await
        {
            Err(LinkError::WrongCluster { expected, found }) => {
                assert_eq!((expected.as_str(), found.as_str()), (CLUSTER, "dc2"));
            }
            other => panic!("expected WrongCluster, got {other:?}"),
        }

        // A response envelope is not a request.
        let response = Envelope::seal(
            &external,
            CLUSTER,
            [4; 16],
            EnvelopeKind::Response,
            0,
            vec![],
        )
        .unwrap()
        .encode()
        .unwrap();
        assert!(matches!(
            server.handle_request(&response).await,
            Err(LinkError::Malformed(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        // Over TCP the refusal reaches the client as a signed, typed answer.
        let (addr, task) = start_tcp(server).await;
        let wrong_cluster =
            LinkClient::new(TcpTransport::new(addr), pair.external(), config("dc2"));
        // The client checks the answer's cluster too, so it sees the mismatch from its side.
        assert!(matches!(
            wrong_cluster.request(b"pay".to_vec()).await,
            Err(LinkError::WrongCluster { .. })
        ));
        let peer = LinkKeys::public_key_of_pkcs8(&pair.internal_pkcs8).unwrap();
        let intruder = LinkKeys::from_pkcs8(&LinkKeys::generate_pkcs8().unwrap(), peer).unwrap();
        let intruder = LinkClient::new(TcpTransport::new(addr), intruder, config(CLUSTER));
        assert!(matches!(
            intruder.request(b"pay".to_vec()).await,
            Err(LinkError::Refused {
                code: FailureCode::BadSignature,
                ..
            })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        // The client refuses an answer not signed by the pinned internal key.
        let wrong_pin = LinkKeys::from_pkcs8(
            &pair.external_pkcs8,
            LinkKeys::public_key_of_pkcs8(&LinkKeys::generate_pkcs8().unwrap()).unwrap(),
        )
        .unwrap();
        let misled = LinkClient::new(TcpTransport::new(addr), wrong_pin, config(CLUSTER));
        assert!(matches!(
            misled.request(b"pay".to_vec()).await,
            Err(LinkError::BadSignature)
        ));
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oversize_frame_is_refused_from_its_header() {
    tokio::time::timeout(TEST_BOUND, async {
        // Only the 4-byte header exists: the limit must trip before any body is awaited.
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut reader: &[u8] = &header;
        assert!(matches!(
            read_frame(&mut reader, MAX_FRAME).await,
            Err(LinkError::Oversize { what: "frame", .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (addr, task) = start_tcp(server).await;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 16];
        // The server drops the connection without answering.
        let n = raw.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        // And keeps serving others.
        let client = LinkClient::new(TcpTransport::new(addr), pair.external(), config(CLUSTER));
        assert_eq!(
            client.request(b"still".to_vec()).await.unwrap(),
            b"ok:still"
        );
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_run_the_handler_once() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (counter, handler_gate) = (Arc::clone(&calls), Arc::clone(&gate));
        let server = LinkServer::open(
            dir.path().join("dedup.redb"),
            CLUSTER,
            pair.internal(),
            move |payload: Vec<u8>| {
                let (counter, gate) = (Arc::clone(&counter), Arc::clone(&handler_gate));
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Hold the first execution open until every duplicate is in flight.
                    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                    Ok(payload)
                }
            },
        )
        .unwrap();
        let bytes = request_bytes(&pair.external(), CLUSTER, [9; 16], b"once");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (server, bytes) = (server.clone(), bytes.clone());
            tasks.push(tokio::spawn(
                async move { server.handle_request(&bytes).await },
            ));
        }
        // Bounded wait for the first execution to start, then give the others time to queue.
        for _ in 0..1000 {
            if calls.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap().unwrap());
        }
        assert!(answers.iter().all(|a| a == &answers[0]));
        assert_eq!(open_answer(&pair, &answers[0]).payload, b"once");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dedup_survives_a_server_restart() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.redb");
        let pair = Pair::new();
        let bytes = request_bytes(&pair.external(), CLUSTER, [5; 16], b"durable");
        let first = {
            let (server, calls) = counting_server(&path, pair.internal());
            let answer = server.handle_request(&bytes).await.unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            answer
        };
        let (server, calls) = counting_server(&path, pair.internal());
        let again = server.handle_request(&bytes).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(open_answer(&pair, &again).payload, b"ok:durable");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    })
    .await
    .unwrap();
}

pub(crate) fn spool_dirs(root: &Path) -> (SpoolDirs, SpoolDirs) {
    let (to_internal, to_external) = (root.join("to-internal"), root.join("to-external"));
    (
        SpoolDirs {
            outbound: to_internal.clone(),
            inbound: to_external.clone(),
        },
        SpoolDirs {
            outbound: to_external,
            inbound: to_internal,
        },
    )
}

#[tokio::test]
async fn spool_round_trip_and_retry() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let poll = Duration::from_millis(20);
        let spool_server = Arc::new(SpoolServer::new(internal_dirs.clone(), server, poll).unwrap());
        let runner = Arc::clone(&spool_server);
        let task = tokio::spawn(async move {
            let _ = runner.run().await;
        });
        let client = LinkClient::new(
            SpoolTransport::new(external_dirs.clone(), poll).unwrap(),
            pair.external(),
            config(CLUSTER),
        );
        assert_eq!(
            client.request(b"paper".to_vec()).await.unwrap(),
            b"ok:paper"
        );
        let id = client.new_request_id().unwrap();
        let a = client.request_with_id(id, b"twice".to_vec()).await.unwrap();
        let b = client.request_with_id(id, b"twice".to_vec()).await.unwrap();
        assert_eq!(
            (a.as_slice(), b.as_slice()),
            (&b"ok:twice"[..], &b"ok:twice"[..])
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        task.abort();
        let _ = task.await;

        // Nothing left behind: requests deleted once answered, answers consumed.
        let leftovers = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().unwrap().is_file())
                .count()
        };
        assert_eq!(leftovers(&internal_dirs.inbound), 0);
        assert_eq!(leftovers(&external_dirs.inbound), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn malformed_spool_files_are_rejected_with_reason_and_serving_continues() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let poll = Duration::from_millis(20);
        let spool_server = SpoolServer::new(internal_dirs.clone(), server, poll).unwrap();
        let inbound = &internal_dirs.inbound;

        let garbage = format!("{}.request.env", hex::encode([0xab; 16]));
        std::fs::write(inbound.join(&garbage), b"not an envelope").unwrap();
        std::fs::write(inbound.join("notes.txt"), b"stray file").unwrap();
        // Authentic envelope under a file name that does not match its id.
        let misnamed = format!("{}.request.env", hex::encode([0xcd; 16]));
        std::fs::write(
            inbound.join(&misnamed),
            request_bytes(&pair.external(), CLUSTER, [0xee; 16], b"x"),
        )
        .unwrap();
        // A tampered envelope: rejected; it may not speak for the request id it names.
        let mut env =
            Envelope::decode(&request_bytes(&pair.external(), CLUSTER, [0x11; 16], b"y")).unwrap();
        env.payload[0] ^= 1;
        let tampered = format!("{}.request.env", hex::encode([0x11; 16]));
        std::fs::write(inbound.join(&tampered), env.encode().unwrap()).unwrap();
        // A temp file in progress is left alone.
        std::fs::write(inbound.join(".partial.request.env.tmp"), b"half").unwrap();

        let pass = spool_server.poll_once().await.unwrap();
        assert_eq!(pass.rejected, 4);
        assert_eq!(pass.answered, 0);
        let rejected = spool_server.rejected_dir();
        for (name, needle) in [
            (&garbage, "malformed"),
            (&"notes.txt".to_string(), "not a request file name"),
            (&misnamed, "does not match"),
            (&tampered, "signature"),
        ] {
            assert!(
                rejected.join(name).is_file(),
                "{name} not kept in rejected/"
            );
            let reason = std::fs::read_to_string(rejected.join(format!("{name}.reason"))).unwrap();
            assert!(
                reason.contains(needle),
                "{name}: reason {reason:?} lacks {needle:?}"
            );
            assert!(!inbound.join(name).exists());
        }
        assert!(inbound.join(".partial.request.env.tmp").exists());
        assert!(
            !external_dirs
                .inbound
                .join(format!("{}.response.env", hex::encode([0x11; 16])))
                .exists(),
            "an unauthenticated file is never answered"
        );

        // The same garbage name again does not overwrite the first piece of evidence.
        std::fs::write(inbound.join(&garbage), b"more garbage").unwrap();
        assert_eq!(spool_server.poll_once().await.unwrap().rejected, 1);
        assert!(rejected.join(format!("{garbage}.1")).is_file());
        assert!(rejected.join(format!("{garbage}.1.reason")).is_file());

        // And the link still serves.
        let spool_server = Arc::new(spool_server);
        let runner = Arc::clone(&spool_server);
        let task = tokio::spawn(async move {
            let _ = runner.run().await;
        });
        let client = LinkClient::new(
            SpoolTransport::new(external_dirs, poll).unwrap(),
            pair.external(),
            config(CLUSTER),
        );
        assert_eq!(
            client.request(b"still".to_vec()).await.unwrap(),
            b"ok:still"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn client_retries_transport_failures_with_the_same_id() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        // Nothing listens: every attempt fails at connect, and the error says so.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = LinkClient::new(TcpTransport::new(addr), pair.external(), config(CLUSTER));
        assert!(matches!(
            client.request(b"x".to_vec()).await,
            Err(LinkError::Io(_))
        ));

        // A spool whose server is not running yet: the first attempt times out, the
        // server starts, a later attempt with the same id succeeds, the handler runs once.
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let (external_dirs, internal_dirs) = spool_dirs(dir.path());
        let poll = Duration::from_millis(20);
        let spool_server = Arc::new(SpoolServer::new(internal_dirs, server, poll).unwrap());
        let client = Arc::new(LinkClient::new(
            SpoolTransport::new(external_dirs, poll).unwrap(),
            pair.external(),
            ClientConfig {
                cluster: CLUSTER.into(),
                attempt_timeout: Duration::from_millis(100),
                max_attempts: 200,
                retry_delay: Duration::from_millis(10),
            },
        ));
        let c = Arc::clone(&client);
        let pending = tokio::spawn(async move { c.request(b"late".to_vec()).await });
        // Start serving only after the request file is on the "medium".
        for _ in 0..1000 {
            let waiting = std::fs::read_dir(dir.path().join("to-internal"))
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".request.env"));
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let runner = Arc::clone(&spool_server);
        let task = tokio::spawn(async move {
            let _ = runner.run().await;
        });
        assert_eq!(pending.await.unwrap().unwrap(), b"ok:late");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn transient_answers_are_not_stored_and_a_retry_runs_again() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        // The first call finds nobody to serve (transient); later ones are final.
        let server = LinkServer::open_with_replies(
            dir.path().join("dedup.redb"),
            CLUSTER,
            pair.internal(),
            move |payload: Vec<u8>| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, String>(if n == 0 {
                        custos_link::Reply::Transient(b"busy".to_vec())
                    } else {
                        custos_link::Reply::Final([b"done:".as_slice(), &payload].concat())
                    })
                }
            },
        )
        .unwrap();
        let (addr, task) = start_tcp(server).await;
        let client = LinkClient::new(TcpTransport::new(addr), pair.external(), config(CLUSTER));
        let id = client.new_request_id().unwrap();
        assert_eq!(
            client.request_with_id(id, b"x".to_vec()).await.unwrap(),
            b"busy"
        );
        assert_eq!(
            client.request_with_id(id, b"x".to_vec()).await.unwrap(),
            b"done:x"
        );
        assert_eq!(
            client.request_with_id(id, b"x".to_vec()).await.unwrap(),
            b"done:x"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the final answer is replayed"
        );
        task.abort();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stored_replies_are_pruned_after_their_retention() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair::new();
        let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
        let request = request_bytes(&pair.external(), CLUSTER, [9; 16], b"pay");
        let first = server.handle_request(&request).await.unwrap();
        assert_eq!(server.handle_request(&request).await.unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Nothing stored before the epoch; the retention keeps it for days.
        assert_eq!(server.prune_replies_before(0).unwrap(), 0);
        assert!(custos_link::REPLY_RETENTION >= Duration::from_secs(7 * 24 * 3600));
        assert_eq!(server.handle_request(&request).await.unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Pruned: a retry runs the handler again.
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        assert_eq!(server.prune_replies_before(later).unwrap(), 1);
        assert_eq!(server.prune_replies_before(later).unwrap(), 0);
        let again = open_answer(&pair, &server.handle_request(&request).await.unwrap());
        assert_eq!(again.payload, b"ok:pay");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    })
    .await
    .unwrap();
}

/// A transport whose first exchange waits for `gate` and then fails (as a dropped
/// connection does); later ones answer as the internal side would.
struct FlakyTransport {
    internal: LinkKeys,
    calls: AtomicUsize,
    gate: tokio::sync::Notify,
}

impl custos_link::ClientTransport for FlakyTransport {
    async fn exchange(
        &self,
        request_id: [u8; 16],
        _request: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.gate.notified().await;
            return Err(LinkError::Io(std::io::Error::other("connection reset")));
        }
        Envelope::seal(
            &self.internal,
            CLUSTER,
            request_id,
            EnvelopeKind::Response,
            0,
            b"done".to_vec(),
        )?
        .encode()
    }
}

/// The link's queue depth and retries, as the relay exports them: a request waiting for
/// its answer is in flight, a failed attempt repeated is a retry, and nothing stays in
/// flight once the request has its answer.
#[tokio::test]
async fn the_client_counts_requests_in_flight_and_retries() {
    let pair = Pair::new();
    let client = Arc::new(LinkClient::new(
        FlakyTransport {
            internal: pair.internal(),
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Notify::new(),
        },
        pair.external(),
        config(CLUSTER),
    ));
    assert_eq!(client.stats(), custos_link::LinkStats::default());
    let caller = Arc::clone(&client);
    let request = tokio::spawn(async move { caller.request(b"x".to_vec()).await });
    tokio::time::timeout(TEST_BOUND, async {
        while client.stats().in_flight != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the request is in flight");
    assert_eq!(client.stats().retries, 0);
    client.transport().gate.notify_one();
    let answer = tokio::time::timeout(TEST_BOUND, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"done");
    assert_eq!(
        client.stats(),
        custos_link::LinkStats {
            in_flight: 0,
            retries: 1
        }
    );
}
