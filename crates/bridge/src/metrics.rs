//! The bridge's Prometheus metrics (issue 16), served by `custos_net::metrics` on the
//! bridge's `metrics_listen`:
//!
//! * `custos_bridge_requests_total{kind, outcome}` and `custos_bridge_request_seconds{kind}`:
//!   every request the bridge routed to its nodes, as its history records it (outcome `ok`,
//!   a TEE refusal code, `outcome_unknown`, ...);
//! * `custos_bridge_link_requests_total{op, outcome}`: what came over the link from the
//!   external relay (op `submit`, `status`, `audit`, `last_audit`; outcome `answered` or
//!   `refused`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Routed {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Link {
    op: String,
    outcome: String,
}

type Seconds = Family<Kind, Histogram, fn() -> Histogram>;

/// Buckets from 100 µs to about 3 s: a node answers a signature in a millisecond or two,
/// a threshold round in a second.
fn latency() -> Histogram {
    custos_net::metrics::latency_buckets(0.0001)
}

/// The metrics of one bridge process.
pub struct Metrics {
    registry: Registry,
    requests: Family<Routed, Counter>,
    request_seconds: Seconds,
    link: Family<Link, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("custos_bridge");
        let requests = Family::<Routed, Counter>::default();
        let request_seconds = Seconds::new_with_constructor(latency);
        let link = Family::<Link, Counter>::default();
        registry.register(
            "requests",
            "Requests routed to the cluster's nodes, by kind and outcome",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Seconds from a routed request's arrival to its outcome",
            request_seconds.clone(),
        );
        registry.register(
            "link_requests",
            "Link requests from the external relay, by operation and outcome",
            link.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            link,
        }
    }

    /// A routed request of `kind` ended with `outcome` after `micros`.
    pub fn routed(&self, kind: &str, outcome: &str, micros: i64) {
        let labels = Routed {
            kind: kind.into(),
            outcome: outcome.into(),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&Kind { kind: kind.into() })
            .observe(micros.max(0) as f64 / 1e6);
    }

    /// A link request for `op` was `outcome`.
    pub fn link(&self, op: &str, outcome: &str) {
        let labels = Link {
            op: op.into(),
            outcome: outcome.into(),
        };
        self.link.get_or_create(&labels).inc();
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        custos_net::metrics::render(&self.registry)
    }
}
