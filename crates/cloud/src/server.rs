//! Running the server: database, gateways, background tasks, HTTP or HTTPS until
//! ctrl-c/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::CloudConfig;
use crate::gateway::{Gateway, GatewayError, RelayGateway};
use crate::http::router;
use crate::service::{Cloud, OpenError};

/// How often pending requests past their window are marked expired.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often requests whose outcome is unknown are looked at (and sent again).
const RETRY_UNKNOWN_EVERY: Duration = Duration::from_secs(2);
/// How often the open-request gauges are read from the database.
const OPEN_COUNT_EVERY: Duration = Duration::from_secs(5);
/// Pause between presignature pool refills.
const REFILL_EVERY: Duration = Duration::from_secs(2);
/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Configuration, trust root or database.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The relay gateways could not be set up.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or serving failed.
    #[error("listener {addr}: {source}")]
    Io {
        /// Address.
        addr: SocketAddr,
        /// Error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the server with gateways to the configured clusters' relays until ctrl-c or
/// SIGTERM. `ready` is called with the bound address once the server accepts connections.
pub async fn run(config: CloudConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), RunError> {
    let trust_root = crate::service::load_trust_root(&config.trust_root)?;
    let gateway = RelayGateway::new(
        &config.clusters,
        &trust_root,
        Duration::from_secs(config.forward_timeout_secs),
    )?;
    run_with(config, Arc::new(gateway), ready, shutdown_signal()).await
}

/// [`run`] with a chosen gateway and shutdown signal (tests use an in-memory cluster).
pub async fn run_with(
    config: CloudConfig,
    gateway: Arc<dyn Gateway>,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let cloud = Cloud::open(&config, gateway).await?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Io {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Io {
        addr: config.listen,
        source,
    })?;
    if let Some(at) = config.metrics_listen {
        let metrics = Arc::clone(cloud.metrics());
        custos_net::metrics::spawn_metrics(at, "cloud", Arc::new(move || metrics.encode()))
            .await
            .map_err(|source| RunError::Io { addr: at, source })?;
    }
    let background = tokio::spawn(background(cloud.clone()));
    let refiller = tokio::spawn(refill(cloud.clone()));
    tracing::info!(%addr, tls = tls.is_some(), clusters = config.clusters.len(), "cloud server listening");
    ready(addr);
    let result = serve(listener, router(cloud.clone()), tls, shutdown).await;
    background.abort();
    refiller.abort();
    cloud.store().close().await;
    result.map_err(|source| RunError::Io { addr, source })
}

/// Keeps the presignature pools topped up (when configured), one refill at a time.
async fn refill(cloud: Arc<Cloud>) {
    let mut tick = tokio::time::interval(REFILL_EVERY);
    loop {
        tick.tick().await;
        match cloud.refill_presignatures().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(presignatures = n, "presignature pools refilled"),
            Err(e) => tracing::warn!(error = %e, "presignature refill failed"),
        }
    }
}

/// Crash recovery once, then the expiry sweep forever.
async fn background(cloud: Arc<Cloud>) {
    match cloud.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(requests = n, "resubmitted requests left in submitting"),
        Err(e) => tracing::error!(error = %e, "crash recovery failed"),
    }
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut unknown = tokio::time::interval(RETRY_UNKNOWN_EVERY);
    let mut open = tokio::time::interval(OPEN_COUNT_EVERY);
    loop {
        tokio::select! {
            _ = open.tick() => {
                match cloud.store().count_in_states(&crate::metrics::OPEN_STATES).await {
                    Ok(counts) => cloud.metrics().open(&counts),
                    Err(e) => tracing::warn!(error = %e, "open requests could not be counted"),
                }
                match cloud.store().ready_presignature_counts().await {
                    Ok(pools) => cloud.metrics().presignatures(&pools),
                    Err(e) => tracing::warn!(error = %e, "presignature pools could not be counted"),
                }
            }
            _ = sweep.tick() => match cloud.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(requests = n, "requests expired"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            },
            _ = unknown.tick() => match cloud.retry_unknown_outcomes().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(requests = n, "requests with unknown outcomes retried"),
                Err(e) => tracing::warn!(error = %e, "retry of unknown outcomes failed"),
            },
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// A TLS acceptor (ring provider, TLS 1.2/1.3, HTTP/2 and HTTP/1.1) for PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, RunError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| RunError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(RunError::Tls(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| RunError::Tls(format!("{}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RunError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| RunError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves,
/// then lets in-flight requests finish (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(acceptor) = tls else {
        // Small JSON answers: without TCP_NODELAY a response can wait for the client's
        // delayed ACK.
        return axum::serve(listener, app)
            .tcp_nodelay(true)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
    Ok(())
}
