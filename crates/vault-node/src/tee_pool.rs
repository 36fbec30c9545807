//! A small pool of connections to the node's TEE core process.
//!
//! The TEE client is blocking (plain Unix socket); calls run on Tokio's blocking pool.
//! Several connections let concurrent requests reach the TEE together, where they share one
//! storage commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use custos_wire::client::{ClientError, TeeClient};
use custos_wire::protocol::{encode_request, Request, Response};

/// Connections to one TEE core, all pinned to its device key.
#[derive(Clone)]
pub struct TeePool {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    device_key: Vec<u8>,
    idle: Mutex<Vec<TeeClient>>,
    max_idle: usize,
}

impl TeePool {
    /// Connects and learns the device key from the TEE's status; every later response must
    /// be signed by that key.
    pub fn connect(socket: &Path, max_idle: usize) -> Result<(Self, Vec<u8>), ClientError> {
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
                max_idle,
            }),
        };
        Ok((pool, device_key))
    }

    fn checkout(&self) -> Result<TeeClient, ClientError> {
        if let Some(c) = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
        {
            return Ok(c);
        }
        let mut c = TeeClient::connect(&self.inner.socket)?;
        c.expect_device_key(self.inner.device_key.clone());
        Ok(c)
    }

    fn checkin(&self, c: TeeClient) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.inner.max_idle {
            idle.push(c);
        }
    }

    /// Sends encoded request bytes; returns the TEE's signed response bytes (checked against
    /// the device key). A connection that failed is dropped, not reused.
    pub fn call_raw_blocking(&self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.exchange_blocking(request, TeeClient::call_raw)
    }

    /// `send` over a pooled connection, once more over a fresh one if the idle connection
    /// proved stale before the request left.
    fn exchange_blocking(
        &self,
        request: &[u8],
        send: fn(&mut TeeClient, &[u8]) -> Result<Vec<u8>, ClientError>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut c = self.checkout()?;
        let out = match send(&mut c, request) {
            // An idle connection to a TEE process that has since restarted: the request
            // never left, so one fresh connection may carry it without risk of running twice.
            Err(ClientError::NotSent(_)) => {
                self.drain();
                c = self.checkout()?;
                send(&mut c, request)?
            }
            other => other?,
        };
        self.checkin(c);
        Ok(out)
    }

    /// Drops every idle connection (after one proved stale, the others are too).
    fn drain(&self) {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Sends a request; returns the response or the TEE's typed refusal (blocking).
    pub fn call_blocking(&self, request: &Request) -> Result<Response, ClientError> {
        let raw = self.call_raw_blocking(&encode_request(request))?;
        Ok(custos_wire::client::decode_outcome(&raw)??)
    }

    /// Passes a relayed request to the TEE and its signed response back unchecked: the
    /// bridge and the cloud server each verify it against the certified device key, and
    /// the node uses nothing in it, so a check here would only be a third P-256
    /// verification on every request.
    pub async fn forward(&self, request: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            pool.exchange_blocking(&request, TeeClient::forward_raw)
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("TEE call task: {e}")))?
    }

    /// Async wrapper over [`TeePool::call_blocking`].
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.call_blocking(&request))
            .await
            .map_err(|e| ClientError::Protocol(format!("TEE call task: {e}")))?
    }
}
