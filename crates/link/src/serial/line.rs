//! A message line over a byte stream: stop-and-wait retransmission of CRC frames, each
//! frame paced at the configured line rate.
//!
//! One thread reads the stream, acknowledges data frames and hands whole messages over;
//! a sender writes a chunk, waits for its acknowledgement and writes it again after a
//! timeout. A message id the receiver delivered last is acknowledged again but never
//! delivered twice, so a lost acknowledgement costs a retransmission, not a repeat.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::frame::{Frame, MAX_CHUNK, MAX_ENCODED};
use crate::error::LinkError;

/// Largest message a line carries: an envelope of a sign request or an import is a few
/// KiB; 256 KiB is 23 s at 115 200 baud.
pub const MAX_SERIAL_MESSAGE: usize = 256 * 1024;
/// Transmissions of a chunk before the send gives up with [`LinkError::Timeout`].
pub const MAX_TRANSMISSIONS: u32 = 16;
/// Whole messages read but not yet taken by [`SerialLine::recv`]; beyond them a message is
/// left incomplete, and the peer's sender retransmits until it times out.
const INBOUND_QUEUE: usize = 8;
/// Bits on the line per byte: a start bit, 8 data bits, a stop bit (8N1).
const BITS_PER_BYTE: u32 = 10;
/// Wait on the stream between checks of the stop flag.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// What a line did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Message bytes delivered to the peer (acknowledged).
    pub message_bytes_sent: u64,
    /// Frames written, retransmissions and acknowledgements included.
    pub frames_written: u64,
    /// Data frames written again after no acknowledgement came.
    pub retransmissions: u64,
    /// Frames read that were damaged (bad CRC, not COBS, too long) and dropped.
    pub damaged_frames: u64,
    /// Whole messages handed to the receiver.
    pub messages_received: u64,
}

#[derive(Default)]
struct Counters {
    message_bytes_sent: AtomicU64,
    frames_written: AtomicU64,
    retransmissions: AtomicU64,
    damaged_frames: AtomicU64,
    messages_received: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// The writing end, paced: a frame reaches the stream when its last bit would have left a
/// line of `baud`, and the next frame starts no earlier.
struct Paced {
    out: Box<dyn Write + Send>,
    byte_time: Duration,
    free_at: Instant,
}

impl Paced {
    fn write_frame(&mut self, wire: &[u8]) -> std::io::Result<()> {
        let start = self.free_at.max(Instant::now());
        let end = start + self.byte_time * wire.len() as u32;
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        self.out.write_all(wire)?;
        self.free_at = end;
        Ok(())
    }
}

/// The chunk the sender waits to hear acknowledged, and whether it was.
#[derive(Default)]
struct AckWait {
    waiting: Option<(u32, u16)>,
    acknowledged: bool,
}

struct Shared {
    writer: Mutex<Paced>,
    ack: Mutex<AckWait>,
    ack_arrived: Condvar,
    stop: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn write(&self, frame: &Frame) -> Result<(), LinkError> {
        let wire = frame.encode();
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_frame(&wire)?;
        bump(&self.counters.frames_written, 1);
        Ok(())
    }
}

/// One end of a serial line carrying whole messages, in order, each delivered once.
pub struct SerialLine {
    shared: Arc<Shared>,
    /// The next message id; held through a send, so messages go one at a time.
    next_message: Mutex<u32>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    ack_timeout: Duration,
}

impl SerialLine {
    /// A line reading `input` and writing `output` at `baud` (8N1). `input` should return
    /// from a read within about [`READ_TIMEOUT`] (a timeout error is expected), so the
    /// reader thread notices when the line is dropped.
    pub fn new(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        baud: u32,
    ) -> Result<Self, LinkError> {
        if baud == 0 {
            return Err(LinkError::Internal("a line rate of 0 baud".into()));
        }
        let byte_time = Duration::from_secs(u64::from(BITS_PER_BYTE)) / baud;
        let shared = Arc::new(Shared {
            writer: Mutex::new(Paced {
                out: output,
                byte_time,
                free_at: Instant::now(),
            }),
            ack: Mutex::default(),
            ack_arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let (deliver, inbound) = mpsc::channel(INBOUND_QUEUE);
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("custos-serial-read".into())
            .spawn(move || read_loop(input, &reader, &deliver))?;
        // A data frame one way and its acknowledgement back, three times over, plus the
        // time a busy reader takes to get to it.
        let ack_timeout = byte_time * (3 * (MAX_ENCODED as u32 + 16)) + Duration::from_millis(250);
        Ok(Self {
            shared,
            // Random: after a restart a new message must not look like the one the peer
            // delivered last.
            next_message: Mutex::new(rand::random()),
            inbound: tokio::sync::Mutex::new(inbound),
            ack_timeout,
        })
    }

    /// Sends `message` and returns once the peer acknowledged all of it. Blocking: call it
    /// from a thread, or through `spawn_blocking`.
    pub fn send(&self, message: &[u8]) -> Result<(), LinkError> {
        if message.is_empty() || message.len() > MAX_SERIAL_MESSAGE {
            return Err(LinkError::Oversize {
                what: "message over a serial line",
                size: message.len() as u64,
                limit: MAX_SERIAL_MESSAGE as u64,
            });
        }
        let mut next = self.next_message.lock().unwrap_or_else(|p| p.into_inner());
        let id = *next;
        *next = next.wrapping_add(1);
        let chunks = message.len().div_ceil(MAX_CHUNK) as u16;
        for (i, bytes) in message.chunks(MAX_CHUNK).enumerate() {
            let frame = Frame::Data {
                message: id,
                chunk: i as u16,
                chunks,
                bytes: bytes.to_vec(),
            };
            self.send_chunk(&frame, (id, i as u16))?;
            bump(&self.shared.counters.message_bytes_sent, bytes.len() as u64);
        }
        Ok(())
    }

    fn send_chunk(&self, frame: &Frame, key: (u32, u16)) -> Result<(), LinkError> {
        for transmission in 0..MAX_TRANSMISSIONS {
            if transmission > 0 {
                bump(&self.shared.counters.retransmissions, 1);
            }
            *self.shared.ack.lock().unwrap_or_else(|p| p.into_inner()) = AckWait {
                waiting: Some(key),
                acknowledged: false,
            };
            self.shared.write(frame)?;
            let ack = self.shared.ack.lock().unwrap_or_else(|p| p.into_inner());
            let (ack, _) = self
                .shared
                .ack_arrived
                .wait_timeout_while(ack, self.ack_timeout, |a| !a.acknowledged)
                .unwrap_or_else(|p| p.into_inner());
            if ack.acknowledged {
                return Ok(());
            }
        }
        Err(LinkError::Timeout)
    }

    /// The next whole message from the peer; an error once the stream ended.
    pub async fn recv(&self) -> Result<Vec<u8>, LinkError> {
        self.inbound.lock().await.recv().await.ok_or_else(|| {
            LinkError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the serial line was closed",
            ))
        })
    }

    /// What the line did so far.
    pub fn stats(&self) -> LineStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LineStats {
            message_bytes_sent: get(&c.message_bytes_sent),
            frames_written: get(&c.frames_written),
            retransmissions: get(&c.retransmissions),
            damaged_frames: get(&c.damaged_frames),
            messages_received: get(&c.messages_received),
        }
    }
}

impl Drop for SerialLine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// A message being put together from its chunks.
struct Assembly {
    message: u32,
    chunks: Vec<Option<Vec<u8>>>,
    missing: usize,
}

fn read_loop(mut input: Box<dyn Read + Send>, shared: &Shared, deliver: &mpsc::Sender<Vec<u8>>) {
    let mut pending = Vec::with_capacity(MAX_ENCODED);
    let mut overlong = false;
    let mut assembly: Option<Assembly> = None;
    let mut delivered: Option<u32> = None;
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_wait(&e) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "serial line: reading ended");
                break;
            }
        };
        for &byte in &buf[..n] {
            if byte != 0 {
                // Past the longest frame the bytes are noise until the next zero.
                overlong |= pending.len() == MAX_ENCODED;
                if !overlong {
                    pending.push(byte);
                }
                continue;
            }
            let frame = (!overlong).then(|| Frame::decode(&pending)).flatten();
            if frame.is_none() && (overlong || !pending.is_empty()) {
                bump(&shared.counters.damaged_frames, 1);
            }
            pending.clear();
            overlong = false;
            match frame {
                Some(Frame::Ack { message, chunk }) => {
                    let mut ack = shared.ack.lock().unwrap_or_else(|p| p.into_inner());
                    if ack.waiting == Some((message, chunk)) {
                        ack.acknowledged = true;
                        shared.ack_arrived.notify_all();
                    }
                }
                Some(Frame::Data {
                    message,
                    chunk,
                    chunks,
                    bytes,
                }) => {
                    // The reader never waits for the consumer (it also takes the
                    // acknowledgements of this side's sends): a message that would not fit
                    // in the queue is not completed, and its last chunk, unacknowledged,
                    // comes again.
                    let room = deliver.capacity() > 0;
                    let whole = take_chunk(
                        &mut assembly,
                        delivered,
                        message,
                        chunk,
                        chunks,
                        bytes,
                        room,
                    );
                    let Some(whole) = whole else {
                        if acknowledge(shared, message, chunk, delivered, &assembly).is_err() {
                            return;
                        }
                        continue;
                    };
                    delivered = Some(message);
                    bump(&shared.counters.messages_received, 1);
                    // Handed over before acknowledged: the peer's send returns only once
                    // the message is here.
                    if deliver.try_send(whole).is_err()
                        || shared.write(&Frame::Ack { message, chunk }).is_err()
                    {
                        return;
                    }
                }
                None => {}
            }
        }
    }
}

fn is_wait(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(e.kind(), TimedOut | WouldBlock | Interrupted)
}

/// Acknowledges a chunk held (of the message assembling or the one delivered last).
fn acknowledge(
    shared: &Shared,
    message: u32,
    chunk: u16,
    delivered: Option<u32>,
    assembly: &Option<Assembly>,
) -> Result<(), LinkError> {
    let held = delivered == Some(message)
        || assembly.as_ref().is_some_and(|a| {
            a.message == message
                && a.chunks
                    .get(usize::from(chunk))
                    .is_some_and(Option::is_some)
        });
    if held {
        shared.write(&Frame::Ack { message, chunk })?;
    }
    Ok(())
}

/// Stores a chunk; the whole message once its last chunk arrived. A chunk of a new message
/// drops the one assembling (its sender gave up on it); a chunk of the message delivered
/// last changes nothing; without `room` for a whole message, the chunk that would complete
/// one is not taken.
fn take_chunk(
    assembly: &mut Option<Assembly>,
    delivered: Option<u32>,
    message: u32,
    chunk: u16,
    chunks: u16,
    bytes: Vec<u8>,
    room: bool,
) -> Option<Vec<u8>> {
    if delivered == Some(message) || usize::from(chunks) > MAX_SERIAL_MESSAGE.div_ceil(MAX_CHUNK) {
        return None;
    }
    let current = match assembly {
        Some(a) if a.message == message && a.chunks.len() == usize::from(chunks) => a,
        _ => assembly.insert(Assembly {
            message,
            chunks: vec![None; usize::from(chunks)],
            missing: usize::from(chunks),
        }),
    };
    let slot = &mut current.chunks[usize::from(chunk)];
    if slot.is_none() && current.missing == 1 && !room {
        return None;
    }
    if slot.is_none() {
        *slot = Some(bytes);
        current.missing -= 1;
    }
    if current.missing > 0 {
        return None;
    }
    assembly
        .take()
        .map(|a| a.chunks.into_iter().flatten().flatten().collect())
}
