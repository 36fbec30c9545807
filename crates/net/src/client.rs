//! Client side: tonic channels over TCP + rustls, without tonic's own TLS feature.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::{error_chain, NetError};

/// Connect timeout (TCP + TLS handshake) of [`connect`] and [`connect_lazy`]; a node that is
/// down or hung must fail fast enough for the caller to fail over to another node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A tower service that dials one fixed address and performs the TLS handshake, proving the
/// configured name. It ignores the URI tonic passes (the channel's placeholder endpoint).
///
/// Use it directly with `Endpoint::connect_with_connector` when you need your own endpoint
/// settings (timeouts, keep-alive); [`connect`] and [`connect_lazy`] use it with defaults.
#[derive(Clone)]
pub struct TlsConnector {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConnector {
    /// A connector to `addr` whose server must prove `server_name`
    /// (`<node>.<cluster>.custos`).
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<Self, NetError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| NetError::InvalidServerName(server_name.to_string()))?;
        Ok(TlsConnector {
            addr,
            server_name,
            connector: tokio_rustls::TlsConnector::from(config),
        })
    }

    /// Dials and handshakes once.
    pub async fn connect(&self) -> Result<TlsStream<TcpStream>, NetError> {
        let addr = self.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| NetError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| NetError::Handshake {
                addr,
                server_name: self.server_name.to_str().into_owned(),
                source,
            })
    }
}

impl tower::Service<Uri> for TlsConnector {
    // tonic 0.12 runs on hyper 1, whose connectors must return hyper's own I/O traits;
    // TokioIo adapts the tokio-rustls stream.
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = NetError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, NetError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), NetError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = this.connect().await;
            if let Err(e) = &stream {
                // The error also reaches the caller (as the message of tonic's Unavailable
                // status, or of NetError::Connect), so this is only a debugging aid.
                tracing::debug!(error = %e, "connection to Custos peer failed");
            }
            stream.map(TokioIo::new)
        })
    }
}

/// The endpoint every channel uses. The URI is a placeholder: the connector dials the real
/// address, and "http" keeps tonic from trying TLS of its own (the stream is already TLS).
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:0").connect_timeout(CONNECT_TIMEOUT)
}

/// Opens a gRPC channel to `addr` over mutual TLS, requiring the server to prove
/// `server_name` (`<node>.<cluster>.custos`). Fails now if the node is unreachable or not
/// trusted; see [`connect_lazy`] for a channel that connects on first use.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, NetError> {
    let connector = TlsConnector::new(addr, server_name, config)?;
    endpoint()
        .connect_with_connector(connector)
        .await
        .map_err(|e| NetError::Connect {
            addr,
            reason: error_chain(&e),
        })
}

/// Like [`connect`], but connects on first use and reconnects after failures, so a client
/// can be created for a node that is currently down; its calls fail with `Unavailable` until
/// the node is back, letting the caller fail over. Must be called inside a Tokio runtime.
pub fn connect_lazy(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, NetError> {
    let connector = TlsConnector::new(addr, server_name, config)?;
    Ok(endpoint().connect_with_connector_lazy(connector))
}
