//! The bridge's Prometheus metrics (issue 16), served by `custos_net::metrics` on the
//! bridge's `metrics_listen`:
//!
//! * `custos_bridge_requests_total{kind, outcome}` and `custos_bridge_request_seconds{kind}`:
//!   every request the bridge routed to its nodes, as its history records it (outcome `ok`,
//!   a TEE refusal code, `outcome_unknown`, ...);
//! * `custos_bridge_link_requests_total{op, outcome}`: what came over the link from the
//!   external relay (op `submit`, `status`, `audit`, `last_audit`; outcome `answered` or
//!   `refused`);
//! * `custos_bridge_audits_total{node, outcome}`: key audits of each node (`ok`, `flagged`,
//!   `unreachable`);
//! * `custos_bridge_node_healthy{node}` and `custos_bridge_node_keys_missing{node}`: whether
//!   the last health check reached the node, and how many keys of the cluster's list it
//!   does not hold yet (its sync lag), read at each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Audited {
    node: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Node {
    node: String,
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
    audits: Family<Audited, Counter>,
    healthy: Family<Node, Gauge>,
    keys_missing: Family<Node, Gauge>,
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
        let audits = Family::<Audited, Counter>::default();
        let healthy = Family::<Node, Gauge>::default();
        let keys_missing = Family::<Node, Gauge>::default();
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
        registry.register(
            "audits",
            "Key audits of a node, by outcome (ok, flagged, unreachable)",
            audits.clone(),
        );
        registry.register(
            "node_healthy",
            "1 if the node answered its last health check",
            healthy.clone(),
        );
        registry.register(
            "node_keys_missing",
            "Keys of the cluster's list the node does not hold yet (its sync lag)",
            keys_missing.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            link,
            audits,
            healthy,
            keys_missing,
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

    /// A key audit of `node` ended with `outcome`.
    pub fn audited(&self, node: &str, outcome: &str) {
        let labels = Audited {
            node: node.into(),
            outcome: outcome.into(),
        };
        self.audits.get_or_create(&labels).inc();
    }

    /// `node`'s state as the bridge knows it now.
    pub fn node(&self, node: &str, healthy: bool, keys_missing: usize) {
        let labels = Node { node: node.into() };
        self.healthy.get_or_create(&labels).set(i64::from(healthy));
        self.keys_missing
            .get_or_create(&labels)
            .set(i64::try_from(keys_missing).unwrap_or(i64::MAX));
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        custos_net::metrics::render(&self.registry)
    }
}
