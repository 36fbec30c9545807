//! Server side: a stream of mutually authenticated TLS connections for
//! `tonic::transport::Server::serve_with_incoming`, and the peer's chain as connection info.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use custos_pki::{DeviceChain, DeviceIdentity, TrustRoot};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::NetError;

/// What the server knows about the peer of a connection. tonic inserts it into the
/// extensions of every request on that connection; read it with [`peer_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// TCP address of the peer.
    pub remote_addr: SocketAddr,
    /// Certificate chain the peer presented (DER, leaf first). Its key possession is proven
    /// by the handshake; the chain itself is NOT validated yet: see [`PeerInfo::verify_device`].
    pub certs: Vec<Vec<u8>>,
}

impl PeerInfo {
    /// The presented chain as a Custos device chain, if the peer presented exactly the three
    /// certificates a Custos party sends (device, Cluster CA, Device CA).
    pub fn device_chain(&self) -> Option<DeviceChain> {
        match self.certs.as_slice() {
            [device, cluster_ca, device_ca] => Some(DeviceChain {
                device: device.clone(),
                cluster_ca: cluster_ca.clone(),
                device_ca: device_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Runs the Custos device checks on the presented chain ([`TrustRoot::verify_device`]):
    /// the application's authorization step. The error says why a peer was refused
    /// (not a device chain, foreign CA, wrong cluster, expired, ...), ready to be logged.
    pub fn verify_device(
        &self,
        root: &TrustRoot,
        expected_cluster: Option<&str>,
        now_unix: u64,
    ) -> Result<DeviceIdentity, NetError> {
        let chain = self
            .device_chain()
            .ok_or(NetError::NotADeviceChain(self.certs.len()))?;
        Ok(root.verify_device(&chain, expected_cluster, now_unix)?)
    }
}

/// The peer of the connection a tonic request arrived on, when the server was started with
/// [`serve_tls`].
///
/// tonic 0.12 inserts the `Connected::ConnectInfo` of a custom connection type directly into
/// the request extensions (not wrapped in `TlsConnectInfo`, which is only for tonic's own
/// TLS feature), so this is `req.extensions().get::<PeerInfo>()`.
pub fn peer_info<T>(req: &tonic::Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// A server-side TLS connection whose handshake completed (client certificate presented and
/// its key possession proven).
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("remote_addr", &self.info.remote_addr)
            .field("peer_certs", &self.info.certs.len())
            .finish()
    }
}

impl TlsConn {
    fn new(stream: TlsStream<TcpStream>, remote_addr: SocketAddr) -> Self {
        let certs = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        TlsConn {
            stream,
            info: PeerInfo { remote_addr, certs },
        }
    }

    /// The peer of this connection.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }

    /// The underlying tokio-rustls stream (e.g. to read the negotiated ALPN protocol).
    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// A peer that has not finished its handshake within this time is dropped, so a slow or
    /// silent client cannot hold a handshake slot forever.
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once (each may involve a TEE signature); further
    /// connections wait in the kernel's accept queue until a slot frees.
    pub max_concurrent_handshakes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: 256,
        }
    }
}

/// Stream of authenticated connections returned by [`serve_tls`]; pass it to
/// `tonic::transport::Server::builder()...serve_with_incoming(incoming)`.
///
/// It only ever yields `Ok`: tonic 0.12 stops serving on some incoming errors, and a failed
/// handshake is a peer's problem, not the server's, so failures are logged (target
/// `custos_net`, level WARN) and skipped. Dropping the stream stops accepting.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIncoming").finish_non_exhaustive()
    }
}

impl futures::Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        // The listener lives in the accept task; stopping it closes the listening socket.
        self.accept_task.abort();
    }
}

/// Accepts TCP connections on `listener` and performs the TLS handshake of each in its own
/// task (a slow peer or a TEE signature never holds up the accept loop), yielding the
/// connections whose handshake succeeded. Uses [`ServeOptions::default`].
///
/// Must be awaited inside a Tokio runtime (it spawns the accept task).
pub async fn serve_tls(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
    serve_tls_with(listener, config, ServeOptions::default()).await
}

/// [`serve_tls`] with explicit limits.
pub async fn serve_tls_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    options: ServeOptions,
) -> TlsIncoming {
    // Small buffer: connections are handed to tonic as soon as they are ready, and the
    // semaphore (held until hand-off) already bounds how many can wait.
    let (tx, rx) = mpsc::channel(16);
    let accept_task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        tx,
        options,
    ));
    TlsIncoming { rx, accept_task }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsConn>,
    options: ServeOptions,
) {
    let slots = Arc::new(Semaphore::new(options.max_concurrent_handshakes.max(1)));
    let local = listener.local_addr().ok();
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                // The semaphore is never closed; treat it as shutdown all the same.
                Err(_) => break,
            },
        };
        let (tcp, remote_addr) = tokio::select! {
            _ = tx.closed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Typically EMFILE/ENFILE or a connection reset before accept: keep
                    // serving, but pause so that a persistent error does not spin the CPU.
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // gRPC frames are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let timeout = options.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let conn = TlsConn::new(stream, remote_addr);
                    tracing::debug!(peer = %remote_addr, certs = conn.info.certs.len(), "TLS connection accepted");
                    if tx.send(conn).await.is_err() {
                        tracing::debug!(peer = %remote_addr, "server stopped; dropping connection");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %remote_addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::warn!(peer = %remote_addr, timeout = ?timeout, "TLS handshake timed out");
                }
            }
        });
    }
    tracing::debug!(listener = ?local, "TLS accept loop stopped");
}

/// Remembers, for a short while, which presented chains the application already accepted,
/// so that a long-lived gRPC connection costs one chain verification per `ttl` rather than
/// one per request (chain checks are several P-256 verifications). Only acceptances are
/// cached: every refusal is decided, and logged, afresh.
pub struct PeerCache<T> {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (T, std::time::Instant)>>,
}

impl<T: Clone> PeerCache<T> {
    /// Most remembered chains; the cache is emptied when full.
    pub const CAPACITY: usize = 1024;

    /// A cache whose entries are trusted for `ttl`.
    pub fn new(ttl: std::time::Duration) -> Self {
        PeerCache {
            ttl,
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The cached verdict for `peer`'s chain, or `verify`'s, cached if it accepted.
    pub fn get_or_verify<E>(
        &self,
        peer: &PeerInfo,
        verify: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        use ring::digest::{Context, SHA256};
        let mut ctx = Context::new(&SHA256);
        for c in &peer.certs {
            ctx.update(&(c.len() as u32).to_be_bytes());
            ctx.update(c);
        }
        let key: [u8; 32] = ctx.finish().as_ref().try_into().expect("32 bytes");
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((v, at)) = entries.get(&key) {
                if at.elapsed() < self.ttl {
                    return Ok(v.clone());
                }
            }
        }
        let v = verify()?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(key, (v.clone(), std::time::Instant::now()));
        Ok(v)
    }
}
