//! `[[webhooks]]`: where the server notifies request events (see `crate::webhooks`).
//!
//! ```toml
//! [[webhooks]]
//! name = "ops"                                  # in logs, metrics and the deliveries table
//! url = "https://hooks.example/custos"          # plain http only to 127.0.0.1 or [::1]
//! secret_file = "webhook-ops.secret"            # HMAC key: 32+ printable characters, one per webhook
//! # ca_file = "hooks-ca.pem"                    # roots the receiver's certificate must lead to
//! events = ["request.pending", "request.completed"]  # default: every event
//! # tenants = ["acme"]                          # default: every tenant's requests
//! retry_base_ms = 1000                          # first retry after; doubling at each failure
//! retry_max_ms = 300000                         # up to this
//! give_up_after_secs = 259200                   # then the delivery is abandoned (logged)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use custos_cloud_api::webhook::EventType;

/// Default first retry delay (ms).
pub const DEFAULT_RETRY_BASE_MS: u64 = 1000;
/// Default longest retry delay (ms).
pub const DEFAULT_RETRY_MAX_MS: u64 = 300_000;
/// Default age after which a delivery is abandoned (seconds).
pub const DEFAULT_GIVE_UP_AFTER_SECS: u64 = 3 * 24 * 3600;
/// Most webhooks configured.
pub const MAX_WEBHOOKS: usize = 16;

/// One webhook receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name (lowercase letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// The file holding the HMAC secret shared with the receiver: 32 printable ASCII
    /// characters or more (surrounding whitespace ignored), e.g. `openssl rand -hex 32`;
    /// each webhook its own. To replace it, let the receiver accept either secret, then
    /// change the file and restart.
    pub secret_file: PathBuf,
    /// PEM roots for an `https` receiver (its certificate must lead to one). Required for
    /// `https`: the server trusts no public root by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Event types sent (empty: every type).
    #[serde(default)]
    pub events: Vec<String>,
    /// Tenants whose requests are notified (empty: every tenant's).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// First retry delay (ms, 100..=60000).
    #[serde(default = "default_retry_base")]
    pub retry_base_ms: u64,
    /// Longest retry delay (ms, retry_base_ms..=3600000).
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Age of an undelivered event after which it is abandoned (seconds, 60..=2592000).
    #[serde(default = "default_give_up")]
    pub give_up_after_secs: u64,
}

fn default_retry_base() -> u64 {
    DEFAULT_RETRY_BASE_MS
}
fn default_retry_max() -> u64 {
    DEFAULT_RETRY_MAX_MS
}
fn default_give_up() -> u64 {
    DEFAULT_GIVE_UP_AFTER_SECS
}

impl WebhookConfig {
    /// A webhook `name` at `url` with the secret in `secret_file`, every event, defaults.
    pub fn new(name: impl Into<String>, url: impl Into<String>, secret_file: PathBuf) -> Self {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            secret_file,
            ca_file: None,
            events: Vec::new(),
            tenants: Vec::new(),
            retry_base_ms: DEFAULT_RETRY_BASE_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            give_up_after_secs: DEFAULT_GIVE_UP_AFTER_SECS,
        }
    }

    /// The event types it is sent.
    pub fn event_types(&self) -> Vec<EventType> {
        if self.events.is_empty() {
            return EventType::ALL.to_vec();
        }
        EventType::ALL
            .into_iter()
            .filter(|t| self.events.iter().any(|e| e == t.as_str()))
            .collect()
    }

    /// Checks the name, URL, events and ranges.
    pub(super) fn validate(&self) -> Result<(), String> {
        let at = |m: String| format!("webhook {:?}: {m}", self.name);
        custos_pki::check_name(&self.name).map_err(|e| at(e.to_string()))?;
        let url = reqwest::Url::parse(&self.url).map_err(|e| at(format!("url: {e}")))?;
        let host = url.host_str().ok_or_else(|| at("url has no host".into()))?;
        // An address, not a name: a name resolves wherever the resolver says.
        let loopback = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" if self.ca_file.is_none() => {
                return Err(at(
                    "an https url needs ca_file (the receiver's roots)".into()
                ))
            }
            "https" => {}
            // Events name requests, tenants and refusals: not in clear across a network.
            "http" if loopback => {}
            "http" => {
                return Err(at(
                    "plain http only to a loopback address (127.0.0.1, [::1])".into(),
                ))
            }
            s => return Err(at(format!("url scheme {s:?}: use https"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(at(
                "url must not carry credentials (the HMAC authenticates)".into(),
            ));
        }
        for e in &self.events {
            if EventType::parse(e).is_none() {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(at(format!("event {e:?}: one of {}", known.join(", "))));
            }
        }
        if !(100..=60_000).contains(&self.retry_base_ms) {
            return Err(at("retry_base_ms must be 100..=60000".into()));
        }
        if !(self.retry_base_ms..=3_600_000).contains(&self.retry_max_ms) {
            return Err(at("retry_max_ms must be retry_base_ms..=3600000".into()));
        }
        if !(60..=30 * 24 * 3600).contains(&self.give_up_after_secs) {
            return Err(at("give_up_after_secs must be 60..=2592000".into()));
        }
        Ok(())
    }
}
