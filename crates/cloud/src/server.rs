//! Running the server: database, gateways, background tasks, HTTP or HTTPS until
//! ctrl-c/SIGTERM. Several servers may run on one database ([`crate::replica`]): each
//! heartbeats, and runs a background job only while it holds the job's lease.

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
use crate::replica::Job;
use crate::service::{Cloud, OpenError};

/// How often pending requests past their window are marked expired.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often requests whose replica died, or whose outcome is unknown, are looked at (and
/// sent again).
const RECOVER_EVERY: Duration = Duration::from_secs(2);
/// How often the open-request gauges are read from the database.
const OPEN_COUNT_EVERY: Duration = Duration::from_secs(5);
/// Pause between presignature pool refills.
const REFILL_EVERY: Duration = Duration::from_secs(2);
/// How often new request events are fanned out to webhooks and due deliveries sent: an
/// event reaches its receivers within about this time.
const NOTIFY_EVERY: Duration = Duration::from_secs(1);
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
    // Registered before the first request names this replica as its owner: no other
    // replica may take a request of a replica it has never seen for a dead one's.
    let listen = addr.to_string();
    cloud
        .heartbeat(&listen)
        .await
        .map_err(|e| RunError::Open(OpenError::Store(e)))?;
    let tasks = [
        tokio::spawn(heartbeats(cloud.clone(), listen)),
        tokio::spawn(recovery(cloud.clone())),
        tokio::spawn(own_recovery(cloud.clone())),
        tokio::spawn(expiry(cloud.clone())),
        tokio::spawn(refill(cloud.clone())),
        tokio::spawn(webhooks(cloud.clone())),
        tokio::spawn(open_counts(cloud.clone())),
    ];
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        clusters = config.clusters.len(),
        replica = %cloud.replica().id,
        "cloud server listening"
    );
    ready(addr);
    let result = serve(listener, router(cloud.clone()), tls, shutdown).await;
    // Jobs end after their current run (a resubmission mid-way is not cut short); the
    // heartbeat goes on meanwhile, so that no other replica takes over what still runs.
    cloud.replica().stop();
    let [heartbeat, jobs @ ..] = tasks;
    for job in jobs {
        if tokio::time::timeout(DRAIN_TIMEOUT, job).await.is_err() {
            tracing::warn!("a background job still ran after the drain timeout");
        }
    }
    retire(&cloud, heartbeat).await;
    cloud.store().close().await;
    result.map_err(|source| RunError::Io { addr, source })
}

/// Hands this replica's leases and requests over at once (after a crash, another replica
/// waits for the heartbeat to run out instead) once nothing it started is still executing
/// (calls go on after their client left); if something still is after the drain time, the
/// heartbeat is left to run out, so that no other replica takes over a running request.
async fn retire(cloud: &Cloud, heartbeat: tokio::task::JoinHandle<()>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while cloud.replica().executing_count() > 0 {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                requests = cloud.replica().executing_count(),
                "requests still executing at shutdown: this replica's work is taken over \
                 once its heartbeat runs out"
            );
            heartbeat.abort();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heartbeat.abort();
    // Awaited, so that no heartbeat lands after the retirement.
    let _ = heartbeat.await;
    if let Err(e) = cloud.retire().await {
        tracing::warn!(error = %e, "could not retire this replica");
    }
}

/// An interval that, after a late tick, waits a whole period again instead of catching up.
fn every(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Writes this replica's heartbeat and renews its leases, on a task of its own so that no
/// long job makes a live replica look dead; a heartbeat that takes over a third of the TTL
/// counts as failed.
async fn heartbeats(cloud: Arc<Cloud>, listen: String) {
    let period = cloud.replica().beat_every();
    let limit = Duration::from_millis(cloud.replica().ttl_ms / 3);
    let mut tick = every(period);
    loop {
        tick.tick().await;
        match tokio::time::timeout(limit, cloud.heartbeat(&listen)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
            Err(_) => tracing::warn!(ms = limit.as_millis() as u64, "heartbeat timed out"),
        }
    }
}

/// Resubmits this replica's own requests whose calls ended without an outcome.
async fn own_recovery(cloud: Arc<Cloud>) {
    let mut tick = every(RECOVER_EVERY);
    while cloud.replica().next_run(&mut tick).await {
        match cloud.recover_own().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(requests = n, "own requests resubmitted"),
            Err(e) => tracing::warn!(error = %e, "own recovery failed"),
        }
    }
}

/// Runs `job` every `every` while this replica holds its lease.
async fn leased<F, Fut>(cloud: Arc<Cloud>, job: Job, period: Duration, run: F)
where
    F: Fn(Arc<Cloud>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = every(period);
    while cloud.replica().next_run(&mut tick).await {
        if cloud.replica().holds(job) {
            cloud.metrics().job_ran(job.as_str());
            run(cloud.clone()).await;
        }
    }
}

/// Crash recovery (requests of dead replicas) and resubmission of unknown outcomes.
async fn recovery(cloud: Arc<Cloud>) {
    leased(cloud, Job::Recovery, RECOVER_EVERY, |cloud| async move {
        match cloud.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(requests = n, "resubmitted requests of replicas gone"),
            Err(e) => tracing::error!(error = %e, "crash recovery failed"),
        }
        match cloud.retry_unknown_outcomes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(requests = n, "requests with unknown outcomes retried"),
            Err(e) => tracing::warn!(error = %e, "retry of unknown outcomes failed"),
        }
    })
    .await
}

/// The expiry sweep.
async fn expiry(cloud: Arc<Cloud>) {
    leased(cloud, Job::Expiry, SWEEP_EVERY, |cloud| async move {
        match cloud.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(requests = n, "requests expired"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    })
    .await
}

/// Keeps the presignature pools topped up (when configured), one refill at a time.
async fn refill(cloud: Arc<Cloud>) {
    leased(cloud, Job::Refill, REFILL_EVERY, |cloud| async move {
        match cloud.refill_presignatures().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(presignatures = n, "presignature pools refilled"),
            Err(e) => tracing::warn!(error = %e, "presignature refill failed"),
        }
    })
    .await
}

/// Webhook notifications: new request events fanned out, due deliveries sent.
async fn webhooks(cloud: Arc<Cloud>) {
    leased(cloud, Job::Webhooks, NOTIFY_EVERY, |cloud| async move {
        match cloud.notify().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(events = n, "webhook events delivered"),
            Err(e) => tracing::warn!(error = %e, "webhook run failed"),
        }
    })
    .await
}

/// The open-request and presignature gauges, read from the database (every replica).
async fn open_counts(cloud: Arc<Cloud>) {
    let mut open = every(OPEN_COUNT_EVERY);
    while cloud.replica().next_run(&mut open).await {
        match cloud
            .store()
            .count_in_states(&crate::metrics::OPEN_STATES)
            .await
        {
            Ok(counts) => cloud.metrics().open(&counts),
            Err(e) => tracing::warn!(error = %e, "open requests could not be counted"),
        }
        match cloud.store().ready_presignature_counts().await {
            Ok(pools) => cloud.metrics().presignatures(&pools),
            Err(e) => tracing::warn!(error = %e, "presignature pools could not be counted"),
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
        return axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
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
        // The peer's address, for per-address limits (the console's sign-in).
        let service =
            TowerToHyperService::new(tower::ServiceExt::map_request(app.clone(), with_peer(peer)));
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

/// Adds the peer's address to each request of a connection (as `ConnectInfo`, which the
/// plain HTTP server adds by itself).
fn with_peer<B>(
    peer: SocketAddr,
) -> impl FnMut(axum::http::Request<B>) -> axum::http::Request<B> + Clone {
    move |mut request| {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        request
    }
}
