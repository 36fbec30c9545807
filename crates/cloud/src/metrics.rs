//! The cloud server's Prometheus metrics (issue 16), through `prometheus-client`, served as
//! OpenMetrics text on a listener of their own (`metrics_listen`: an operator's network,
//! never the Internet-facing API).
//!
//! * `custos_cloud_requests_created_total{kind}`: requests accepted by the REST API;
//! * `custos_cloud_requests_ended_total{kind, status}`: requests that reached a state
//!   (completed, failed, refused, expired; submitting again after an unknown outcome);
//! * `custos_cloud_request_seconds{kind}`: from creation to that state;
//! * `custos_cloud_tee_calls_total{cluster, outcome}` and `custos_cloud_tee_call_seconds{cluster}`:
//!   calls through a cluster's relay to a TEE (answered, refused by the TEE, or failed);
//! * `custos_cloud_requests_open{status}`: requests waiting for approvals (`pending_approval`)
//!   or being executed (`submitting`), as the database holds them (read every few seconds);
//! * `custos_cloud_presignatures_ready{key_id}`: each threshold key's pool of presignatures
//!   ready to sign with (read every few seconds);
//! * `custos_cloud_threshold_audit_sessions_total{outcome}`: audit signing sessions of
//!   threshold keys, `verified` or `failed`;
//! * `custos_cloud_lease_held{job}`: 1 while this server holds the lease on a background job
//!   (recovery, expiry, refill, webhooks), else 0; `custos_cloud_job_runs_total{job}`: runs of a job by
//!   this server (only its lease holder runs one);
//! * `custos_cloud_replicas_live`: cloud servers on this database whose heartbeat is fresh,
//!   this one included;
//! * `custos_cloud_webhook_attempts_total{webhook, outcome}`: attempts at delivering an
//!   event, `delivered`, `retry` (failed, tried again later) or `abandoned` (failed past
//!   the webhook's give-up age); `custos_cloud_webhook_pending{webhook}`: events not yet
//!   delivered (read at each run of the webhooks job, on its lease holder);
//!   `custos_cloud_webhook_fan_out_paused`: 1 while live replicas list other webhooks than
//!   this one (events wait, none is lost: alert on it), else 0.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels naming a request kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// Labels naming a request kind and the state it reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    kind: String,
    status: String,
}

/// Labels naming a request state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// The states [`Metrics::open`] counts.
pub const OPEN_STATES: [&str; 2] = ["pending_approval", "submitting"];

/// Labels naming a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cluster {
    cluster: String,
}

/// Labels naming a cluster and how a call there ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    cluster: String,
    outcome: String,
}

/// Labels naming a threshold key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Key {
    key_id: String,
}

/// Labels naming a background job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

/// Labels naming how something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// Labels naming a webhook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Webhook {
    webhook: String,
}

/// Labels naming a webhook and how an attempt there ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookAttempt {
    webhook: String,
    outcome: String,
}

type Seconds = Family<Kind, Histogram, fn() -> Histogram>;
type CallSeconds = Family<Cluster, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 33 s: a BIP-32 signature takes milliseconds, a
/// threshold signing a second or more, a key generation tens of seconds.
fn latency() -> Histogram {
    custos_net::metrics::latency_buckets(0.001)
}

/// The metrics of one cloud server process.
pub struct Metrics {
    registry: Registry,
    created: Family<Kind, Counter>,
    ended: Family<Ended, Counter>,
    request_seconds: Seconds,
    tee_calls: Family<Call, Counter>,
    tee_call_seconds: CallSeconds,
    open: Family<Status, Gauge>,
    presignatures: Family<Key, Gauge>,
    audit_sessions: Family<Outcome, Counter>,
    lease_held: Family<JobLabel, Gauge>,
    job_runs: Family<JobLabel, Counter>,
    replicas_live: Gauge,
    webhook_attempts: Family<WebhookAttempt, Counter>,
    webhook_pending: Family<Webhook, Gauge>,
    webhook_fan_out_paused: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("custos_cloud");
        let created = Family::<Kind, Counter>::default();
        let ended = Family::<Ended, Counter>::default();
        let request_seconds = Seconds::new_with_constructor(latency);
        let tee_calls = Family::<Call, Counter>::default();
        let tee_call_seconds = CallSeconds::new_with_constructor(latency);
        let open = Family::<Status, Gauge>::default();
        let presignatures = Family::<Key, Gauge>::default();
        let audit_sessions = Family::<Outcome, Counter>::default();
        let lease_held = Family::<JobLabel, Gauge>::default();
        let job_runs = Family::<JobLabel, Counter>::default();
        let replicas_live = Gauge::default();
        let webhook_attempts = Family::<WebhookAttempt, Counter>::default();
        let webhook_pending = Family::<Webhook, Gauge>::default();
        let webhook_fan_out_paused = Gauge::default();
        registry.register(
            "webhook_fan_out_paused",
            "1 while live replicas list other webhooks than this one",
            webhook_fan_out_paused.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Attempts at delivering a webhook event, by outcome",
            webhook_attempts.clone(),
        );
        registry.register(
            "webhook_pending",
            "Webhook events not yet delivered",
            webhook_pending.clone(),
        );
        registry.register(
            "lease_held",
            "1 while this server holds the lease on a background job",
            lease_held.clone(),
        );
        registry.register(
            "job_runs",
            "Runs of a background job by this server",
            job_runs.clone(),
        );
        registry.register(
            "replicas_live",
            "Cloud servers on this database with a fresh heartbeat",
            replicas_live.clone(),
        );
        registry.register(
            "presignatures_ready",
            "Presignatures ready to sign with, by threshold key",
            presignatures.clone(),
        );
        registry.register(
            "threshold_audit_sessions",
            "Audit signing sessions of threshold keys, verified or failed",
            audit_sessions.clone(),
        );
        registry.register(
            "requests_open",
            "Requests waiting for approvals or being executed, by state",
            open.clone(),
        );
        registry.register(
            "requests_created",
            "Requests accepted by the REST API",
            created.clone(),
        );
        registry.register(
            "requests_ended",
            "Requests that reached a state, by kind and state",
            ended.clone(),
        );
        registry.register(
            "request_seconds",
            "Seconds from a request's creation to the state it reached",
            request_seconds.clone(),
        );
        registry.register(
            "tee_calls",
            "Calls to a cluster's TEEs, by outcome",
            tee_calls.clone(),
        );
        registry.register(
            "tee_call_seconds",
            "Seconds of a call to a cluster's TEEs, through its relay and link",
            tee_call_seconds.clone(),
        );
        Self {
            registry,
            created,
            ended,
            request_seconds,
            tee_calls,
            tee_call_seconds,
            open,
            presignatures,
            audit_sessions,
            lease_held,
            job_runs,
            replicas_live,
            webhook_attempts,
            webhook_pending,
            webhook_fan_out_paused,
        }
    }

    /// Whether this server holds the lease on `job` now.
    pub fn lease_held(&self, job: &str, held: bool) {
        let labels = JobLabel { job: job.into() };
        self.lease_held.get_or_create(&labels).set(i64::from(held));
    }

    /// This server ran `job` once more.
    pub fn job_ran(&self, job: &str) {
        self.job_runs
            .get_or_create(&JobLabel { job: job.into() })
            .inc();
    }

    /// An attempt at delivering an event to `webhook` ended with `outcome`.
    pub fn webhook_attempt(&self, webhook: &str, outcome: &str) {
        let labels = WebhookAttempt {
            webhook: webhook.into(),
            outcome: outcome.into(),
        };
        self.webhook_attempts.get_or_create(&labels).inc();
    }

    /// `n` events wait for delivery to `webhook`.
    pub fn webhook_pending(&self, webhook: &str, n: i64) {
        let labels = Webhook {
            webhook: webhook.into(),
        };
        self.webhook_pending.get_or_create(&labels).set(n);
    }

    /// Whether live replicas list other webhooks than this one now.
    pub fn webhook_fan_out_paused(&self, paused: bool) {
        self.webhook_fan_out_paused.set(i64::from(paused));
    }

    /// Cloud servers with a fresh heartbeat now.
    pub fn replicas_live(&self, n: usize) {
        self.replicas_live.set(n as i64);
    }

    /// Each threshold key's ready presignatures now.
    pub fn presignatures(&self, pools: &[(String, i64)]) {
        for (key_id, n) in pools {
            let labels = Key {
                key_id: key_id.clone(),
            };
            self.presignatures.get_or_create(&labels).set(*n);
        }
    }

    /// A threshold audit ran `verified` sessions that verified and `failed` that did not.
    pub fn threshold_audited(&self, verified: usize, failed: usize) {
        for (outcome, n) in [("verified", verified), ("failed", failed)] {
            let labels = Outcome {
                outcome: outcome.into(),
            };
            self.audit_sessions.get_or_create(&labels).inc_by(n as u64);
        }
    }

    /// The requests now in each of [`OPEN_STATES`], in their order.
    pub fn open(&self, counts: &[i64]) {
        for (state, n) in OPEN_STATES.iter().zip(counts) {
            self.open
                .get_or_create(&Status {
                    status: (*state).into(),
                })
                .set(*n);
        }
    }

    /// A request of `kind` was created.
    pub fn created(&self, kind: &str) {
        self.created
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }

    /// A request of `kind` reached `status`, `seconds` after its creation.
    pub fn ended(&self, kind: &str, status: &str, seconds: f64) {
        let labels = Ended {
            kind: kind.into(),
            status: status.into(),
        };
        self.ended.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&Kind { kind: kind.into() })
            .observe(seconds);
    }

    /// A call to `cluster`'s TEEs ended with `outcome` after `seconds`.
    pub fn tee_call(&self, cluster: &str, outcome: &str, seconds: f64) {
        let labels = Call {
            cluster: cluster.into(),
            outcome: outcome.into(),
        };
        self.tee_calls.get_or_create(&labels).inc();
        self.tee_call_seconds
            .get_or_create(&Cluster {
                cluster: cluster.into(),
            })
            .observe(seconds);
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        custos_net::metrics::render(&self.registry)
    }
}
