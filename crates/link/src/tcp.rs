//! Stream transport: length-prefixed frames over TCP (standing in for a serial line).
//!
//! Frame = u32 big-endian length + that many bytes of encoded envelope. One exchange at a
//! time per connection: the link is a narrow, on-demand channel, and strict alternation
//! means a response can be matched to its request without multiplexing state.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::ClientTransport;
use crate::envelope::{RequestId, MAX_ENVELOPE};
use crate::error::LinkError;
use crate::server::LinkServer;

/// Largest frame body accepted: one maximal envelope.
pub const MAX_FRAME: usize = MAX_ENVELOPE;

/// Read buffer of a served connection: a typical request frame (a few KiB) in one read.
const READ_BUFFER: usize = 16 * 1024;

/// Bound on receiving the rest of a frame once its header arrived, so a stalled or
/// malicious peer cannot pin a connection task with a half-sent frame.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads one frame. `Ok(None)` on a clean end of stream before a header. The announced
/// length is checked against `limit` before any buffer is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, LinkError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(LinkError::Malformed(
                "stream ended inside a frame header".into(),
            ));
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(LinkError::Oversize {
            what: "frame",
            size: len as u64,
            limit: limit as u64,
        });
    }
    // Grown as the bytes arrive, never allocated at the announced size: a peer announcing
    // the largest frame on every connection and sending nothing costs nothing.
    let mut body = Vec::with_capacity(len.min(READ_BUFFER));
    let mut rest = reader.take(len as u64);
    tokio::time::timeout(FRAME_BODY_TIMEOUT, rest.read_to_end(&mut body))
        .await
        .map_err(|_| LinkError::Timeout)??;
    if body.len() != len {
        return Err(LinkError::Malformed(format!(
            "stream ended after {} of a frame's {len} bytes",
            body.len()
        )));
    }
    Ok(Some(body))
}

/// Writes one frame (refusing bodies over [`MAX_FRAME`], which the peer would refuse too).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), LinkError> {
    if body.len() > MAX_FRAME {
        return Err(LinkError::Oversize {
            what: "frame",
            size: body.len() as u64,
            limit: MAX_FRAME as u64,
        });
    }
    // One write: a separate 4-byte header would sit in Nagle's buffer until the peer's
    // delayed ACK (tens of milliseconds per exchange).
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Client side of the stream transport. Keeps one connection and reconnects after any
/// failure; exchanges are serialized on it.
#[derive(Debug)]
pub struct TcpTransport {
    addr: SocketAddr,
    /// Idle connections. Each exchange uses one connection alone (a frame and its answer),
    /// so concurrent exchanges open more; at most [`MAX_IDLE`] are kept for reuse.
    idle: std::sync::Mutex<Vec<TcpStream>>,
}

/// Idle connections kept per transport.
const MAX_IDLE: usize = 64;

impl TcpTransport {
    /// A transport to the internal relay's link listener at `addr`. Connects lazily.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl ClientTransport for TcpTransport {
    async fn exchange(
        &self,
        _request_id: RequestId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        // Taken out for the exchange: if this future is dropped midway (timeout), the
        // connection, possibly carrying a late answer, is dropped with it and the next
        // attempt starts clean instead of reading a stale response.
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut stream = match reused {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        let answer = match one_exchange(&mut stream, &request).await {
            Ok(a) => a,
            Err(e) => {
                // The peer may have restarted: every idle connection is as stale as this
                // one. The link client's retry (same request id) opens a fresh one.
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return Err(e);
            }
        };
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(stream);
        }
        Ok(answer)
    }
}

async fn one_exchange(stream: &mut TcpStream, request: &[u8]) -> Result<Vec<u8>, LinkError> {
    write_frame(stream, request).await?;
    read_frame(stream, MAX_FRAME).await?.ok_or_else(|| {
        LinkError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "link peer closed the connection without answering",
        ))
    })
}

/// Connections served at once by [`serve_tcp`]: the external relay keeps at most 64 idle
/// and opens one per concurrent exchange.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves the link on `listener` until the task is dropped or accepting fails, at most
/// [`MAX_CONNECTIONS`] connections at once.
pub async fn serve_tcp(listener: TcpListener, server: LinkServer) -> Result<(), LinkError> {
    serve_tcp_limited(listener, server, MAX_CONNECTIONS).await
}

/// As [`serve_tcp`], with at most `max_connections` served at once: one beyond them is
/// closed as soon as it is accepted (the client retries on a fresh connection), so no peer
/// can hold more tasks and buffers than that.
pub async fn serve_tcp_limited(
    listener: TcpListener,
    server: LinkServer,
    max_connections: usize,
) -> Result<(), LinkError> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = listener.accept().await?;
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "link: connection refused, all slots in use");
            drop(stream);
            continue;
        };
        // Request/answer frames are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &server).await {
                tracing::warn!(%peer, error = %e, "link: connection closed on error");
            }
        });
    }
}

/// Serves one connection: frames in, answers out, strictly alternating.
pub async fn serve_connection(mut stream: TcpStream, server: &LinkServer) -> Result<(), LinkError> {
    let (reader, mut writer) = stream.split();
    // Buffered: a frame's header and body arrive in one read instead of two.
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
    // A frame that breaks the limit ends the connection: after an unread body the stream
    // is out of sync and nothing further on it can be trusted.
    while let Some(frame) = read_frame(&mut reader, MAX_FRAME).await? {
        match server.handle_request(&frame).await {
            Ok(answer) => write_frame(&mut writer, &answer).await?,
            Err(e) => {
                tracing::warn!(error = %e, "link: request refused");
                match server.refusal_reply(&frame, &e) {
                    Some(answer) => write_frame(&mut writer, &answer).await?,
                    None => return Err(e),
                }
            }
        }
    }
    Ok(())
}
