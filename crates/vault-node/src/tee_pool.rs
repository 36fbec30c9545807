//! A small pool of connections to the node's TEE core process.
//!
//! Async callers (the relayed requests, sync, membership) speak the frame protocol over
//! Tokio's Unix socket, so a request costs no hand-off to a blocking thread and back. The
//! TLS handshake's signer is called synchronously by rustls and keeps a blocking client.
//! Several connections let concurrent requests reach the TEE together, where they share one
//! storage commit.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_wire::client::{
    answer_payload, check_request_len, read_error, verify_signed_response, ClientError, TeeClient,
    ANSWER_TIMEOUT,
};
use custos_wire::frame::{frame_writes, parse_header, Kind, HEADER_LEN, MAX_RESPONSE};
use custos_wire::protocol::{encode_request, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Blocking connections kept idle: only TLS handshakes use them, and the TEE serves a
/// bounded number of connections in all.
const BLOCKING_IDLE: usize = 2;

/// Bytes an async connection reads at once: a usual answer whole.
const READ_BUFFER: usize = 16 * 1024;

/// Connections to one TEE core, all pinned to its device key.
#[derive(Clone)]
pub struct TeePool {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    device_key: Vec<u8>,
    /// Blocking connections, for the synchronous TLS signer.
    idle: Mutex<Vec<TeeClient>>,
    /// Async connections, for everything else (read through a buffer: an answer's header
    /// and payload arrive together, and one read takes both).
    idle_async: Mutex<Vec<BufReader<UnixStream>>>,
    max_idle: usize,
    /// Bound on one async exchange, write and read ([`ANSWER_TIMEOUT`]; shorter in tests).
    answer_timeout: Duration,
}

impl TeePool {
    /// Connects and learns the device key from the TEE's status; every later response must
    /// be signed by that key.
    pub fn connect(socket: &Path, max_idle: usize) -> Result<(Self, Vec<u8>), ClientError> {
        Self::connect_with(socket, max_idle, ANSWER_TIMEOUT)
    }

    /// [`TeePool::connect`] waiting at most `answer_timeout` for each async exchange.
    fn connect_with(
        socket: &Path,
        max_idle: usize,
        answer_timeout: Duration,
    ) -> Result<(Self, Vec<u8>), ClientError> {
        let mut first = TeeClient::connect(socket)?;
        let Response::Status(status) = first.call(&Request::Status)? else {
            return Err(ClientError::Protocol("unexpected status response".into()));
        };
        let device_key = status
            .device
            .map(|d| d.public_key)
            .ok_or_else(|| ClientError::Protocol("TEE has no device key yet".into()))?;
        first.expect_device_key(device_key.clone());
        let pool = TeePool {
            inner: Arc::new(Inner {
                socket: socket.to_path_buf(),
                device_key: device_key.clone(),
                idle: Mutex::new(vec![first]),
                idle_async: Mutex::new(Vec::new()),
                max_idle,
                answer_timeout,
            }),
        };
        Ok((pool, device_key))
    }

    /// An idle blocking connection (`true`) or a new one.
    fn checkout(&self) -> Result<(TeeClient, bool), ClientError> {
        if let Some(c) = lock(&self.inner.idle).pop() {
            return Ok((c, true));
        }
        Ok((self.connect_blocking()?, false))
    }

    fn connect_blocking(&self) -> Result<TeeClient, ClientError> {
        let mut c = TeeClient::connect(&self.inner.socket)?;
        c.expect_device_key(self.inner.device_key.clone());
        Ok(c)
    }

    fn checkin(&self, c: TeeClient) {
        let mut idle = lock(&self.inner.idle);
        if idle.len() < self.inner.max_idle.min(BLOCKING_IDLE) {
            idle.push(c);
        }
    }

    /// Sends a request; returns the response or the TEE's typed refusal (blocking, for
    /// synchronous callers only).
    pub fn call_blocking(&self, request: &Request) -> Result<Response, ClientError> {
        let request = encode_request(request);
        let (mut c, pooled) = self.checkout()?;
        let raw = match c.call_raw(&request) {
            // An idle connection to a TEE process that has since restarted: the request
            // never left, so one fresh connection may carry it without risk of running twice.
            // (A fresh connection that fails so, e.g. refused as busy, reports its error.)
            Err(ClientError::NotSent(_)) if pooled => {
                lock(&self.inner.idle).clear();
                c = self.connect_blocking()?;
                c.call_raw(&request)?
            }
            other => other?,
        };
        self.checkin(c);
        Ok(custos_wire::client::decode_outcome(&raw)??)
    }

    /// Passes a relayed request to the TEE and its signed response back unchecked: the
    /// bridge and the cloud server each verify it against the certified device key, and
    /// the node uses nothing in it, so a check here would only be a third P-256
    /// verification on every request.
    pub async fn forward(&self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        check_request_len(request)?;
        let idle = lock(&self.inner.idle_async).pop();
        let (mut stream, pooled) = match idle {
            Some(s) => (s, true),
            None => (self.connect_async().await?, false),
        };
        let limit = self.inner.answer_timeout;
        let answer = match exchange(&mut stream, request, limit).await {
            // As in `call_blocking`: the request never left a stale idle connection.
            Err(ClientError::NotSent(_)) if pooled => {
                lock(&self.inner.idle_async).clear();
                stream = self.connect_async().await?;
                exchange(&mut stream, request, limit).await?
            }
            other => other?,
        };
        // Only a connection whose exchange completed goes back: one abandoned half-way
        // (an error, or this future dropped), or holding bytes past its answer, would hand
        // the next caller a stray answer.
        let mut idle = lock(&self.inner.idle_async);
        if idle.len() < self.inner.max_idle && stream.buffer().is_empty() {
            idle.push(stream);
        }
        Ok(answer)
    }

    /// Sends a request; returns the response, checked against the device key, or the TEE's
    /// typed refusal.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let request = encode_request(&request);
        let signed = self.forward(&request).await?;
        Ok(verify_signed_response(
            &self.inner.device_key,
            &request,
            &signed,
        )??)
    }

    async fn connect_async(&self) -> Result<BufReader<UnixStream>, ClientError> {
        let stream = UnixStream::connect(&self.inner.socket).await?;
        Ok(BufReader::with_capacity(READ_BUFFER, stream))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request frame out, one answer frame back: the encoded signed response, unchecked.
/// A write that failed is [`ClientError::NotSent`] (the TEE executes only a whole frame);
/// both together are bounded by `limit`, and a write cut short by it is not `NotSent`,
/// since part of the frame may have left.
async fn exchange(
    stream: &mut BufReader<UnixStream>,
    request: &[u8],
    limit: Duration,
) -> Result<Vec<u8>, ClientError> {
    let sent_and_answered = async {
        let out = stream.get_mut();
        let (first, rest) = frame_writes(Kind::Request, request);
        let written = match out.write_all(&first).await {
            Ok(()) => out.write_all(rest).await,
            e => e,
        };
        written.map_err(ClientError::NotSent)?;
        let mut header = [0u8; HEADER_LEN];
        stream
            .read_exact(&mut header)
            .await
            .map_err(eof_is_closed)?;
        let (kind, len) = parse_header(&header, MAX_RESPONSE).map_err(read_error)?;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        answer_payload(kind, payload)
    };
    tokio::time::timeout(limit, sent_and_answered)
        .await
        .map_err(|_| {
            ClientError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the TEE in {limit:?}"),
            ))
        })?
}

fn eof_is_closed(e: io::Error) -> ClientError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        read_error(custos_wire::frame::FrameError::Closed)
    } else {
        ClientError::Io(e)
    }
}

#[cfg(test)]
mod tests;
