//! Serving Prometheus metrics (issue 16): `GET /metrics` as OpenMetrics text on a listener
//! of its own, so that scraping never shares the service's authenticated port. Each
//! service keeps its own `prometheus-client` registry and renders it here.

use std::sync::Arc;

/// Every metric of `registry` in the OpenMetrics text format.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Latency buckets doubling from `first` seconds, sixteen of them.
pub fn latency_buckets(first: f64) -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(first, 2.0, 16),
    )
}

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener`, each answer `render()`ed afresh, until the task is
/// dropped.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = Arc::clone(&render);
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
        }),
    );
    axum::serve(listener, app).await
}

/// Binds `at` and serves metrics there in a task of its own (logged as `service`);
/// returns the bound address.
pub async fn spawn_metrics(
    at: std::net::SocketAddr,
    service: &'static str,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let local = listener.local_addr()?;
    tracing::info!(service, addr = %local, "metrics served at /metrics");
    tokio::spawn(async move {
        if let Err(e) = serve_metrics(listener, render).await {
            tracing::error!(service, error = %e, "metrics listener stopped");
        }
    });
    Ok(local)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// A service's one kind of call, counted by outcome and timed: `<prefix>_<name>_total{outcome}`
/// and `<prefix>_<name>_seconds`.
pub struct CallMetrics {
    registry: prometheus_client::registry::Registry,
    calls: prometheus_client::metrics::family::Family<
        Outcome,
        prometheus_client::metrics::counter::Counter,
    >,
    seconds: prometheus_client::metrics::histogram::Histogram,
}

impl CallMetrics {
    /// Registered under `prefix`, described by `help`, timed from `first_bucket` seconds.
    pub fn new(prefix: &str, name: &str, help: &str, first_bucket: f64) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix(prefix);
        let calls = prometheus_client::metrics::family::Family::default();
        let seconds = latency_buckets(first_bucket);
        registry.register(name, format!("{help}, by outcome"), calls.clone());
        registry.register(
            format!("{name}_seconds"),
            format!("Seconds of {}", help.to_lowercase()),
            seconds.clone(),
        );
        Self {
            registry,
            calls,
            seconds,
        }
    }

    /// A call ended with `outcome` after `seconds`.
    pub fn record(&self, outcome: &str, seconds: f64) {
        self.calls
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        self.seconds.observe(seconds);
    }

    /// The registry, for a service's further metrics under the same prefix.
    pub fn registry_mut(&mut self) -> &mut prometheus_client::registry::Registry {
        &mut self.registry
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        render(&self.registry)
    }
}
