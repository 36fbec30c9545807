//! The external relay's Prometheus metrics (issue 16), served by `custos_net::metrics` on
//! its `metrics_listen`: `custos_relay_forwards_total{outcome}` (each call the cloud server
//! made: `ok`, `unauthenticated`, or why the link failed) and `custos_relay_forward_seconds`
//! (a call's time across the link and back, retries included).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// The metrics of one relay process.
pub struct Metrics {
    registry: Registry,
    forwards: Family<Outcome, Counter>,
    seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("custos_relay");
        let forwards = Family::<Outcome, Counter>::default();
        // From 100 µs: a request over TCP crosses in a millisecond, over QR codes in seconds.
        let seconds = custos_net::metrics::latency_buckets(0.0001);
        registry.register(
            "forwards",
            "Calls of the cloud server carried over the link, by outcome",
            forwards.clone(),
        );
        registry.register(
            "forward_seconds",
            "Seconds of a call across the link and back, retries included",
            seconds.clone(),
        );
        Self {
            registry,
            forwards,
            seconds,
        }
    }

    /// A call ended with `outcome` after `seconds`.
    pub fn forwarded(&self, outcome: &str, seconds: f64) {
        self.forwards
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        self.seconds.observe(seconds);
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        custos_net::metrics::render(&self.registry)
    }
}
