//! The serial line (issue 15): over a pseudo-terminal pair at a throttled 115 200 baud, a
//! sign request and its reply cross with bytes corrupted on the way in both directions,
//! are retransmitted, and run exactly once.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::Ordering;

use custos_link::{serve_serial, AnswerCheck, LinkClient, SerialLine, SerialTransport};
use serialport::TTYPort;

use crate::link::{config, counting_server, Pair, CLUSTER, TEST_BOUND};

const BAUD: u32 = 115_200;

/// A wire that flips a bit of the bytes at the given offsets of what is written through it
/// (counted from its first byte): the noise of a long cable.
struct Noisy {
    out: TTYPort,
    written: usize,
    flip: BTreeSet<usize>,
}

impl Write for Noisy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = buf.to_vec();
        for (i, b) in bytes.iter_mut().enumerate() {
            if self.flip.contains(&(self.written + i)) {
                *b ^= 0x10;
            }
        }
        let n = self.out.write(&bytes)?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn noisy_line(port: TTYPort, flip: impl IntoIterator<Item = usize>) -> SerialLine {
    let reader = port.try_clone_native().unwrap();
    let writer = Noisy {
        out: port,
        written: 0,
        flip: flip.into_iter().collect(),
    };
    SerialLine::new(Box::new(reader), Box::new(writer), BAUD).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_request_crosses_a_corrupting_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::new();
    let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
    let (relay_end, bridge_end) = TTYPort::pair().expect("a pseudo-terminal pair");
    // The relay's wire: byte 100 of the request's first chunk, then one in its second.
    // The bridge's wire: byte 3 of its first acknowledgement (the relay sends that chunk
    // again and the bridge must not take it twice), then one in the reply.
    let relay_line = noisy_line(relay_end, [100, 1_200]);
    let bridge_line = noisy_line(bridge_end, [3, 40, 500]);
    let serving = tokio::spawn(serve_serial(bridge_line, server));
    let check = AnswerCheck::new(pair.external().peer_public(), CLUSTER);
    let client = LinkClient::new(
        SerialTransport::new(relay_line, check),
        pair.external(),
        config(CLUSTER),
    );

    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 13 % 256) as u8).collect();
    let answer = tokio::time::timeout(TEST_BOUND, client.request(payload.clone()))
        .await
        .expect("bounded")
        .expect("the request crosses");
    assert_eq!(&answer[..3], b"ok:");
    assert_eq!(&answer[3..], &payload[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "ran exactly once");

    let relay = client.transport().line().stats();
    eprintln!("relay line: {relay:?}");
    assert!(
        relay.retransmissions >= 2,
        "corrupted chunks were sent again: {relay:?}"
    );
    assert!(
        relay.damaged_frames >= 1,
        "a corrupted reply frame was dropped: {relay:?}"
    );
    assert_eq!(relay.messages_received, 1, "one reply, delivered once");

    // A second request on the same line still works and runs once more.
    let again = tokio::time::timeout(TEST_BOUND, client.request(b"second".to_vec()))
        .await
        .expect("bounded")
        .expect("the line keeps working");
    assert_eq!(again, b"ok:second");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_nobody_answers_times_out() {
    let (relay_end, _silent) = TTYPort::pair().expect("a pseudo-terminal pair");
    let line = SerialLine::over_tty(relay_end, 1_000_000).unwrap();
    let sending = tokio::task::spawn_blocking(move || line.send(b"hello"));
    let result = tokio::time::timeout(TEST_BOUND, sending)
        .await
        .expect("bounded")
        .unwrap();
    assert!(
        matches!(result, Err(custos_link::LinkError::Timeout)),
        "{result:?}"
    );
}
