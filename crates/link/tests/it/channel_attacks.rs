//! Attacks on the channels others can write to (issue 15): whoever can put an image in
//! front of a camera or bytes on a shared line must not be able to speak for a request,
//! stop the channel, or grow what a receiver holds.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use custos_link::qr::{draw, png, FrameReceiver, FrameSender, QrDirs, QrServer, QrTransport};
use custos_link::{
    AnswerCheck, ClientTransport, Envelope, EnvelopeKind, FrameFault, LinkError, LinkKeys,
    SerialLine,
};

use crate::link::{counting_server, Pair, CLUSTER, TEST_BOUND};

fn dirs(root: &Path, side: &str) -> QrDirs {
    QrDirs {
        screen: root.join(side).join("screen"),
        captured: root.join(side).join("captured"),
    }
}

/// Every part of `envelope` (twice its fragments) as PNG images in `captured`.
fn capture(envelope: &[u8], captured: &Path, prefix: &str) {
    std::fs::create_dir_all(captured).unwrap();
    let mut sender = FrameSender::new(envelope).unwrap();
    for i in 0..2 * sender.fragment_count() {
        let frame = draw(&sender.next_part().unwrap()).unwrap();
        std::fs::write(
            captured.join(format!("{prefix}-{i:03}.png")),
            png(&frame).unwrap(),
        )
        .unwrap();
    }
}

fn seal(keys: &LinkKeys, id: [u8; 16], kind: EnvelopeKind, payload: &[u8]) -> Vec<u8> {
    Envelope::seal(keys, CLUSTER, id, kind, 1, payload.to_vec())
        .unwrap()
        .encode()
        .unwrap()
}

/// An attacker who read a request id off the relay's screen shows the bridge's camera a
/// request naming it, signed by a key of its own: the bridge shows no answer at all (a
/// signed refusal would stand for the real request on the relay's side).
#[tokio::test]
async fn a_forged_request_gets_no_answer_on_the_screen() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::new();
    let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
    let bridge = dirs(dir.path(), "bridge");
    let qr = QrServer::new(bridge.clone(), server, Duration::from_millis(5)).unwrap();
    let impostor = Pair::new().external();
    capture(
        &seal(&impostor, [0x77; 16], EnvelopeKind::Request, b"sign"),
        &bridge.captured,
        "forged",
    );
    assert_eq!(qr.pass().await.unwrap(), 0, "no reply shown");
    assert_eq!(
        std::fs::read_dir(&bridge.screen).unwrap().count(),
        0,
        "the screen stays empty"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        qr.capture_stats().envelopes,
        1,
        "the forged request was read, then refused"
    );
}

/// A forged answer for the request waited on (a Failure signed by another key) reaches the
/// relay's camera first: it is skipped, and the bridge's real answer completes the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_answer_never_ends_the_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::new();
    let relay = dirs(dir.path(), "relay");
    let check = AnswerCheck::new(pair.external().peer_public(), CLUSTER);
    let transport =
        Arc::new(QrTransport::new(relay.clone(), Duration::from_millis(5), check).unwrap());
    let id = [0x42; 16];
    let request = seal(&pair.external(), id, EnvelopeKind::Request, b"sign");
    let exchange = tokio::spawn({
        let transport = Arc::clone(&transport);
        async move { transport.exchange(id, request).await }
    });
    let impostor = Pair::new().internal();
    capture(
        &seal(&impostor, id, EnvelopeKind::Failure, b"refused"),
        &relay.captured,
        "a-forged",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!exchange.is_finished(), "the forged answer was not taken");
    let real = seal(&pair.internal(), id, EnvelopeKind::Response, b"ok:sign");
    capture(&real, &relay.captured, "b-real");
    let answer = tokio::time::timeout(TEST_BOUND, exchange)
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(answer.unwrap(), real);
}

/// What is not an image in the captured folder (a directory, a FIFO, a dangling link, a
/// file that is no PNG) neither stops nor stalls the reader; stray files on the screen do
/// not stop the bridge's passes either.
#[tokio::test]
async fn junk_in_the_folders_never_stops_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::new();
    let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
    let bridge = dirs(dir.path(), "bridge");
    let qr = QrServer::new(bridge.clone(), server, Duration::from_millis(5)).unwrap();
    for i in 0..300 {
        std::fs::create_dir_all(bridge.captured.join(format!("0-dir-{i:03}"))).unwrap();
    }
    nix::unistd::mkfifo(
        &bridge.captured.join("1-fifo"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    std::os::unix::fs::symlink("/nonexistent", bridge.captured.join("2-dangling")).unwrap();
    std::fs::write(bridge.captured.join("3-not-a-png.png"), b"hello").unwrap();
    let stray = bridge.screen.join("README.txt");
    std::fs::write(&stray, b"playlist").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(old)
        .unwrap();
    capture(
        &seal(&pair.external(), [0x43; 16], EnvelopeKind::Request, b"sign"),
        &bridge.captured,
        "4-real",
    );
    assert_eq!(
        qr.pass().await.unwrap(),
        1,
        "the real request answered past the junk"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(stray.exists(), "a stray file is left alone");
}

/// A stream of parts that never completes a message (here one frame over and over, as a
/// camera stuck on it) is cut off: a receiver takes no more than a bounded number of parts
/// per message, so what it holds cannot grow without end.
#[test]
fn parts_that_never_complete_are_cut_off() {
    let envelope = seal(
        &Pair::new().external(),
        [0x44; 16],
        EnvelopeKind::Request,
        &[7; 1500],
    );
    let mut sender = FrameSender::new(&envelope).unwrap();
    let count = sender.fragment_count();
    let part = sender.next_part().unwrap();
    let mut receiver = FrameReceiver::new();
    let refused = (0..10 * count + 100).find_map(|_| match receiver.receive(&part) {
        Err(LinkError::Frame {
            what: FrameFault::TooManyParts,
            ..
        }) => Some(receiver.parts_taken()),
        Ok(Some(_)) => panic!("one fragment cannot complete {count}"),
        _ => None,
    });
    let taken = refused.expect("the receiver gave up");
    assert_eq!(taken, 3 * count + 16, "parts taken before giving up");
}

/// The other side keeps sending while this side reads nothing: this side's own sends are
/// still acknowledged (its reader never waits on its consumer), and the peer's message past
/// the queue is left for retransmission, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_queue_never_blocks_this_sides_sends() {
    let (a_end, b_end) = serialport::TTYPort::pair().unwrap();
    let (a, b) = (
        Arc::new(SerialLine::over_tty(a_end, 1_000_000).unwrap()),
        Arc::new(SerialLine::over_tty(b_end, 1_000_000).unwrap()),
    );
    for i in 0..8u8 {
        b.send(&[i; 10]).unwrap();
    }
    let flooding = std::thread::spawn({
        let b = Arc::clone(&b);
        move || b.send(&[8; 10])
    });
    let sending = tokio::task::spawn_blocking({
        let a = Arc::clone(&a);
        move || a.send(b"still heard")
    });
    let sent = tokio::time::timeout(TEST_BOUND, sending)
        .await
        .expect("bounded")
        .unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(b.recv().await.unwrap(), b"still heard");
    for i in 0..8u8 {
        assert_eq!(a.recv().await.unwrap(), vec![i; 10]);
    }
    // The ninth, left unacknowledged while the queue was full, comes with a retransmission
    // (or its send timed out and nothing was delivered twice).
    match flooding.join().unwrap() {
        Ok(()) => assert_eq!(a.recv().await.unwrap(), vec![8; 10]),
        Err(e) => assert!(matches!(e, LinkError::Timeout), "{e:?}"),
    }
}
