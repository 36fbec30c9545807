//! The cloud server's configuration file (TOML).
//!
//! ```toml
//! listen = "127.0.0.1:8443"
//! trust_root = "custos-pki/root-ca.crt"      # relative paths are relative to this file
//! # db_url = "postgres://custos@db:5432/cloud" # default: SQLite file cloud.db beside this file
//! request_ttl_secs = 3600
//! network = "bitcoin"                          # addresses of the derive endpoint
//! # tls_cert = "cloud.crt"                     # HTTPS when both are set (plain HTTP: loopback only)
//! # tls_key = "cloud.key"
//!
//! [[api_tokens]]
//! name = "ops"
//! sha256 = "<hex SHA-256 of the token>"        # the token itself is never stored
//! scopes = ["read", "request"]                 # required: what the token may do
//! tenant = "acme"                              # default "default"
//! rate_per_sec = 20                            # default 20 calls per second
//! burst = 40                                   # default 40 calls at once
//!
//! [[clusters]]
//! name = "dc1"
//! relay = "127.0.0.1:7443"
//! relay_token = "<bearer token of dc1's external relay>"
//! ```
//!
//! `[console]` serves the approvers' console ([`ConsoleConfig`]); `[[webhooks]]` notify
//! receivers of request events ([`WebhookConfig`]).
//!
//! # API tokens
//!
//! * `scopes` has no default: a token does only what its entry lists, one or more of
//!   `read` (every GET), `request` (create requests, resubmit failed ones), `approve` (add
//!   admin approvals), `operate` (cluster and threshold-key audits, presignatures) and
//!   `administer` (token, tenant and governance administration). Scopes do not imply one
//!   another. An entry without `scopes` is refused, naming the field.
//! * `tenant` (default `default`): the token sees and uses only the requests, wallets and
//!   threshold keys made by requests of tokens of the same tenant; another tenant's are
//!   unknown to it (404), never "forbidden". Rows written before tenants existed belong to
//!   the tenant `default` (migration 0007), so a configuration without tenants sees
//!   everything it saw before. Tenant names are 1 to 64 characters of `a-z`, `0-9`, `.`,
//!   `_` and `-`.
//! * `rate_per_sec` (default [`DEFAULT_RATE_PER_SEC`]) and `burst` (default
//!   [`DEFAULT_BURST`]), each 1 to 1,000,000: a token bucket per token, refilled at
//!   `rate_per_sec` calls per second and holding up to `burst`; a call beyond it is
//!   answered 429 `rate_limited` with `Retry-After` (whole seconds) and does nothing.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use custos_cloud_api::Scope;

mod webhook;

use custos_config::ConfigError;
use custos_wire::approval::MAX_APPROVAL_LIFETIME_SECS;
pub use webhook::{
    WebhookConfig, DEFAULT_GIVE_UP_AFTER_SECS, DEFAULT_RETRY_BASE_MS, DEFAULT_RETRY_MAX_MS,
    MAX_WEBHOOKS,
};

/// Default approval window of a new request.
pub const DEFAULT_REQUEST_TTL_SECS: u64 = 3600;
/// Default time allowed for one relay call (a TEE request crossing the link and back).
pub const DEFAULT_FORWARD_TIMEOUT_SECS: u64 = 60;
/// Default number of tries of one relay call on transport failures.
pub const DEFAULT_SUBMIT_ATTEMPTS: u32 = 3;
/// Default [`CloudConfig::replica_ttl_secs`].
pub const DEFAULT_REPLICA_TTL_SECS: u64 = 15;
/// Default calls per second of an API token.
pub const DEFAULT_RATE_PER_SEC: u32 = 20;
/// Default burst (calls at once) of an API token.
pub const DEFAULT_BURST: u32 = 40;
/// Highest `rate_per_sec` and `burst` of an API token.
pub const MAX_RATE: u32 = 1_000_000;
/// The tenant of a token that names none, and of every row written before tenants.
pub const DEFAULT_TENANT: &str = "default";

/// A bearer token of a cluster's external relay: never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RelayToken(Zeroizing<String>);

impl RelayToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        RelayToken(Zeroizing::new(token.into()))
    }

    /// The token, for the `authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayToken([redacted])")
    }
}

/// An API client allowed to call the server (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    /// Who holds the token (recorded on the requests it creates).
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// The tenant whose requests, wallets and threshold keys the token sees.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// What the token may do (no default).
    pub scopes: Vec<Scope>,
    /// Calls per second, sustained.
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Calls at once.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl ApiTokenConfig {
    /// A token of tenant [`DEFAULT_TENANT`] with `scopes` and the default rate limit.
    pub fn new(name: impl Into<String>, sha256: impl Into<String>, scopes: &[Scope]) -> Self {
        ApiTokenConfig {
            name: name.into(),
            sha256: sha256.into(),
            tenant: DEFAULT_TENANT.into(),
            scopes: scopes.to_vec(),
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            burst: DEFAULT_BURST,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "api token {name:?}: sha256 must be 64 hex characters"
            ));
        }
        let t = &self.tenant;
        if t.is_empty()
            || t.len() > 64
            || !t.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
        {
            return Err(format!(
                "api token {name:?}: tenant {t:?} must be 1 to 64 characters of a-z, 0-9, '.', '_', '-'"
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!(
                "api token {name:?}: scopes is empty; list what the token may do ({})",
                Scope::ALL.map(Scope::as_str).join(", ")
            ));
        }
        let mut seen = HashSet::new();
        if let Some(twice) = self.scopes.iter().find(|s| !seen.insert(**s)) {
            return Err(format!("api token {name:?}: scopes lists {twice} twice"));
        }
        for (field, v) in [("rate_per_sec", self.rate_per_sec), ("burst", self.burst)] {
            if v == 0 || v > MAX_RATE {
                return Err(format!(
                    "api token {name:?}: {field} must be 1..={MAX_RATE}, not {v}"
                ));
            }
        }
        Ok(())
    }
}

/// A cluster and its external relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name (as in its Cluster CA).
    pub name: String,
    /// The external relay's gRPC address.
    pub relay: SocketAddr,
    /// Bearer token the relay expects.
    pub relay_token: RelayToken,
    /// The cluster's genesis id (64 hex digits, as `GET /v1/clusters/{c}/members` shows it),
    /// pinned once the cluster is governed: a log with another genesis, or a node answering
    /// that the cluster has no log, is refused as unverified. Absent: the server believes
    /// the first log it verifies (and a node saying "no log" until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis_id: Option<String>,
}

impl ClusterConfig {
    /// The pinned genesis id, if one is configured; an error names what is wrong with it.
    pub fn genesis_pin(&self) -> Result<Option<[u8; 32]>, String> {
        self.genesis_id
            .as_deref()
            .map(custos_wire::governance::parse_genesis_id)
            .transpose()
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// `sqlite://<path>?mode=rwc` or `postgres://...`; default: SQLite `cloud.db` beside the
    /// configuration file (set by [`CloudConfig::load`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_url: Option<String>,
    /// The Root CA certificate (PEM) every admin and device chain must lead to.
    pub trust_root: PathBuf,
    /// Default approval window of new requests (at most 7 days).
    #[serde(default = "default_ttl")]
    pub request_ttl_secs: u64,
    /// Bitcoin network of derived addresses.
    #[serde(default = "default_network")]
    pub network: String,
    /// Time allowed for one relay call.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout_secs: u64,
    /// Tries of one relay call on transport failures (same request id each time).
    #[serde(default = "default_attempts")]
    pub submit_attempts: u32,
    /// Server certificate chain (PEM) for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Clients allowed to call the API.
    #[serde(default)]
    pub api_tokens: Vec<ApiTokenConfig>,
    /// Clusters reachable through their external relays.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Presignatures kept ready for each threshold key without chain code: the server
    /// refills the pool in the background, a few sessions at a time, with the healthiest
    /// share holders (0: presignatures are made on request only,
    /// `POST /v1/threshold/keys/{key_id}/presignatures`). At most 256.
    #[serde(default)]
    pub presignature_pool: u32,
    /// Where `GET /metrics` (Prometheus, OpenMetrics text) is served: an operator's
    /// network, not the API's (unset: no metrics listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds without a heartbeat after which another cloud server on the same database
    /// counts this one as dead: it then resubmits the requests this one was executing and
    /// takes over its background jobs (see `crate::replica`). Longer than the replicas'
    /// clock skew; a few seconds of heartbeats fit in it. 3..=600.
    #[serde(default = "default_replica_ttl")]
    pub replica_ttl_secs: u64,
    /// The approvers' console (`/console`, over this server's TLS listener); unset: no
    /// console is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    /// Receivers notified of request events (`crate::webhooks`); at most
    /// [`MAX_WEBHOOKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

/// Longest console session allowed (seconds).
pub const MAX_CONSOLE_SESSION_SECS: u64 = 12 * 3600;
/// Default console session length (seconds).
pub const DEFAULT_CONSOLE_SESSION_SECS: u64 = 1800;

/// `[console]`: the approvers' console, where admins sign in and approve with passkeys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The console's origin exactly as browsers write it (`https://host[:port]`): the one
    /// the admins' passkey certificates are issued for (`custos pki passkey begin
    /// --origin`). Its host must resolve to this server.
    pub origin: String,
    /// The folder of the admins who may sign in: for each, `<name>.pem` (the chain
    /// `custos pki passkey certify` wrote: admin certificate, then Admin CA) and
    /// `<name>.credential` (the passkey's credential id, base64url). Read at every sign-in
    /// and approval: an admin whose files are removed is signed out.
    pub admins: PathBuf,
    /// The tenant whose requests the console shows and approves.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// How long a sign-in lasts (seconds, 60..=43200).
    #[serde(default = "default_console_session")]
    pub session_secs: u64,
}

fn default_console_session() -> u64 {
    DEFAULT_CONSOLE_SESSION_SECS
}

impl ConsoleConfig {
    /// A console at `origin` for the admins in `admins`, tenant `default`.
    pub fn new(origin: impl Into<String>, admins: PathBuf) -> Self {
        ConsoleConfig {
            origin: origin.into(),
            admins,
            tenant: DEFAULT_TENANT.into(),
            session_secs: DEFAULT_CONSOLE_SESSION_SECS,
        }
    }

    fn validate(&self, tls: bool) -> Result<(), String> {
        let binding = custos_pki::webauthn::PasskeyBinding::from_uri(&self.origin)
            .map_err(|e| format!("console.origin: {e}"))?;
        if binding.origin != self.origin {
            return Err(format!(
                "console.origin {:?}: write it as browsers do, {:?}",
                self.origin, binding.origin
            ));
        }
        if !tls {
            // Passkeys and the session cookie (`Secure`) need HTTPS.
            return Err(
                "console: set tls_cert and tls_key, the console is served over HTTPS \
                        only"
                    .into(),
            );
        }
        if !(60..=MAX_CONSOLE_SESSION_SECS).contains(&self.session_secs) {
            return Err(format!(
                "console.session_secs must be 60..={MAX_CONSOLE_SESSION_SECS}"
            ));
        }
        if self.tenant.is_empty() || self.tenant.len() > 64 {
            return Err(format!("console.tenant {:?}", self.tenant));
        }
        Ok(())
    }
}

fn default_replica_ttl() -> u64 {
    DEFAULT_REPLICA_TTL_SECS
}

fn default_tenant() -> String {
    DEFAULT_TENANT.into()
}
fn default_rate() -> u32 {
    DEFAULT_RATE_PER_SEC
}
fn default_burst() -> u32 {
    DEFAULT_BURST
}
fn default_ttl() -> u64 {
    DEFAULT_REQUEST_TTL_SECS
}
fn default_network() -> String {
    "bitcoin".into()
}
fn default_forward_timeout() -> u64 {
    DEFAULT_FORWARD_TIMEOUT_SECS
}
fn default_attempts() -> u32 {
    DEFAULT_SUBMIT_ATTEMPTS
}

impl CloudConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, trust_root: PathBuf) -> Self {
        CloudConfig {
            listen,
            db_url: None,
            trust_root,
            request_ttl_secs: DEFAULT_REQUEST_TTL_SECS,
            network: default_network(),
            forward_timeout_secs: DEFAULT_FORWARD_TIMEOUT_SECS,
            submit_attempts: DEFAULT_SUBMIT_ATTEMPTS,
            tls_cert: None,
            tls_key: None,
            api_tokens: Vec::new(),
            clusters: Vec::new(),
            presignature_pool: 0,
            metrics_listen: None,
            replica_ttl_secs: DEFAULT_REPLICA_TTL_SECS,
            console: None,
            webhooks: Vec::new(),
        }
    }

    /// Reads the file ([`custos_config::load`]: `CUSTOS_CLOUD_<FIELD>` overrides, paths
    /// relative to the file's folder), fills the default database URL, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        custos_config::load(path)
    }

    /// Makes relative paths relative to `dir` and fills the default database URL (for a
    /// configuration built in code rather than loaded).
    pub fn resolve(&mut self, dir: &Path) -> Result<(), String> {
        use custos_config::Component;
        for p in self.paths() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        self.fill_db_url(dir)
    }

    fn fill_db_url(&mut self, dir: &Path) -> Result<(), String> {
        if self.db_url.is_none() {
            let url = custos_metadata::sqlite_url(&dir.join("cloud.db"))
                .map_err(|e| format!("database path: {e}"))?;
            self.db_url = Some(url);
        }
        Ok(())
    }

    /// Checks ranges, names, hashes and duplicates.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.request_ttl_secs == 0 || self.request_ttl_secs > MAX_APPROVAL_LIFETIME_SECS {
            return bad(format!(
                "request_ttl_secs must be 1..={MAX_APPROVAL_LIFETIME_SECS}"
            ));
        }
        if self.forward_timeout_secs == 0 || self.forward_timeout_secs > 3600 {
            return bad("forward_timeout_secs must be 1..=3600".into());
        }
        if self.submit_attempts == 0 || self.submit_attempts > 20 {
            return bad("submit_attempts must be 1..=20".into());
        }
        if !(3..=600).contains(&self.replica_ttl_secs) {
            return bad("replica_ttl_secs must be 3..=600".into());
        }
        let most = custos_wire::protocol::MAX_PRESIGNATURES_PER_KEY;
        if self.presignature_pool as usize > most {
            return bad(format!("presignature_pool must be 0..={most}"));
        }
        custos_cloud_api::path::parse_network(&self.network)
            .map_err(|e| format!("network: {e}"))?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together".into());
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() {
            // API tokens, approvals and imported mnemonics would cross the network in clear.
            return bad(format!(
                "listen = {}: plain HTTP is served on a loopback address only; set tls_cert \
                 and tls_key to listen on another address",
                self.listen
            ));
        }
        if let Some(console) = &self.console {
            console.validate(self.tls_cert.is_some())?;
        }
        if self.webhooks.len() > MAX_WEBHOOKS {
            return bad(format!("at most {MAX_WEBHOOKS} webhooks"));
        }
        let mut hooks = HashSet::new();
        for w in &self.webhooks {
            w.validate()?;
            if !hooks.insert(w.name.as_str()) {
                return bad(format!("webhook {:?} listed twice", w.name));
            }
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for t in &self.api_tokens {
            if t.name.is_empty() || t.name.len() > 64 || t.name.chars().any(char::is_control) {
                return bad(format!("api token name {:?}", t.name));
            }
            t.validate()?;
            if !names.insert(t.name.as_str()) || !hashes.insert(t.sha256.to_ascii_lowercase()) {
                return bad(format!("api token {:?} listed twice", t.name));
            }
        }
        let mut clusters = HashSet::new();
        for c in &self.clusters {
            custos_pki::check_name(&c.name).map_err(|e| e.to_string())?;
            c.genesis_pin()
                .map_err(|e| format!("cluster {:?}: {e}", c.name))?;
            if !clusters.insert(c.name.as_str()) {
                return bad(format!("cluster {:?} listed twice", c.name));
            }
            if c.relay_token.expose().is_empty()
                || c.relay_token
                    .expose()
                    .bytes()
                    .any(|b| !b.is_ascii_graphic())
            {
                return bad(format!(
                    "cluster {:?}: relay_token must be printable ASCII without spaces",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// The configuration as TOML (contains the relay tokens: write it 0600).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configuration always serializes")
    }
}

impl custos_config::Component for CloudConfig {
    const COMPONENT: &'static str = "cloud";
    const INTEGER_FIELDS: &'static [&'static str] = &[
        "request_ttl_secs",
        "forward_timeout_secs",
        "submit_attempts",
        "presignature_pool",
        "replica_ttl_secs",
    ];

    fn paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![&mut self.trust_root];
        paths.extend(self.tls_cert.as_mut());
        paths.extend(self.tls_key.as_mut());
        paths.extend(self.console.as_mut().map(|c| &mut c.admins));
        for w in &mut self.webhooks {
            paths.push(&mut w.secret_file);
            paths.extend(w.ca_file.as_mut());
        }
        paths
    }

    fn check(&mut self, dir: &Path) -> Result<(), String> {
        self.fill_db_url(dir)?;
        self.validate()
    }
}

/// Lower-case hex SHA-256 of an API token, as the configuration lists it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random API token (64 hex characters, 32 random bytes) and its configuration
/// hash. The token is shown once to its holder; only the hash is configured.
pub fn generate_api_token() -> (Zeroizing<String>, String) {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut raw[..]);
    let token = Zeroizing::new(hex::encode(&raw[..]));
    let hash = token_hash(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_needs_https_an_exact_origin_and_a_bounded_session() {
        let dir = tempfile::tempdir().unwrap();
        let text = "listen = \"127.0.0.1:0\"\ntrust_root = \"root.crt\"\n\
                    tls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n\
                    [console]\norigin = \"https://console.example:8443\"\nadmins = \"admins\"\n";
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, text).unwrap();
        let c = CloudConfig::load(&path).unwrap();
        let console = c.console.clone().unwrap();
        assert_eq!(console.admins, dir.path().join("admins"));
        assert_eq!(console.tenant, DEFAULT_TENANT);
        assert_eq!(console.session_secs, DEFAULT_CONSOLE_SESSION_SECS);
        type Edit = fn(&mut CloudConfig);
        let edits: [(Edit, &str); 5] = [
            (|c| c.tls_cert = None, "tls_cert"),
            (|c| (c.tls_cert, c.tls_key) = (None, None), "HTTPS"),
            (
                |c| c.console.as_mut().unwrap().origin = "http://console.example".into(),
                "https",
            ),
            (
                |c| c.console.as_mut().unwrap().origin = "https://Console.example".into(),
                "as browsers do",
            ),
            (
                |c| c.console.as_mut().unwrap().session_secs = MAX_CONSOLE_SESSION_SECS + 1,
                "session_secs",
            ),
        ];
        for (edit, named) in edits {
            let mut bad = c.clone();
            edit(&mut bad);
            let e = bad.validate().unwrap_err();
            assert!(e.contains(named), "{named}: {e}");
        }
    }

    /// A webhook is named once, reached over HTTPS with named roots (plain HTTP on
    /// loopback only, no credentials in the URL), sent known events, retried within bounds.
    #[test]
    fn a_webhook_needs_https_roots_known_events_and_bounded_retries() {
        let dir = tempfile::tempdir().unwrap();
        let text = "listen = \"127.0.0.1:0\"\ntrust_root = \"root.crt\"\n\
                    [[webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example/custos\"\n\
                    secret_file = \"ops.secret\"\nca_file = \"hooks-ca.pem\"\n\
                    events = [\"request.pending\"]\n";
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, text).unwrap();
        let c = CloudConfig::load(&path).unwrap();
        let hook = &c.webhooks[0];
        assert_eq!(hook.secret_file, dir.path().join("ops.secret"));
        assert_eq!(hook.ca_file, Some(dir.path().join("hooks-ca.pem")));
        assert_eq!(hook.retry_base_ms, DEFAULT_RETRY_BASE_MS);
        assert_eq!(hook.give_up_after_secs, DEFAULT_GIVE_UP_AFTER_SECS);
        assert_eq!(
            hook.event_types(),
            [custos_cloud_api::webhook::EventType::Pending]
        );
        type Edit = fn(&mut WebhookConfig);
        let edits: [(Edit, &str); 9] = [
            (|h| h.ca_file = None, "ca_file"),
            (|h| h.url = "http://hooks.example/custos".into(), "loopback"),
            (|h| h.url = "ftp://hooks.example/custos".into(), "scheme"),
            (
                |h| h.url = "https://u:p@hooks.example/".into(),
                "credentials",
            ),
            (|h| h.url = "not a url".into(), "url"),
            (
                |h| h.events = vec!["request.created".into()],
                "request.created",
            ),
            (|h| h.retry_base_ms = 10, "retry_base_ms"),
            (|h| h.retry_max_ms = 500, "retry_max_ms"),
            (|h| h.name = "Ops!".into(), "name"),
        ];
        for (edit, named) in edits {
            let mut bad = c.clone();
            edit(&mut bad.webhooks[0]);
            let e = bad.validate().unwrap_err();
            assert!(e.contains(named), "{named}: {e}");
        }
        let mut loopback = c.clone();
        loopback.webhooks[0].url = "http://127.0.0.1:9/hook".into();
        loopback.webhooks[0].ca_file = None;
        loopback.validate().unwrap();
        let mut twice = c.clone();
        twice.webhooks.push(twice.webhooks[0].clone());
        assert!(twice.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn parse_defaults_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let (token, hash) = generate_api_token();
        assert_eq!(token.len(), 64);
        assert_eq!(token_hash(&token), hash);
        let text = format!(
            "listen = \"127.0.0.1:0\"\ntrust_root = \"root.crt\"\n\
             [[api_tokens]]\nname = \"ops\"\nsha256 = \"{hash}\"\nscopes = [\"read\"]\n\
             [[clusters]]\nname = \"dc1\"\nrelay = \"127.0.0.1:1\"\nrelay_token = \"secret-token\"\n"
        );
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, &text).unwrap();
        let c = CloudConfig::load(&path).unwrap();
        assert_eq!(c.request_ttl_secs, DEFAULT_REQUEST_TTL_SECS);
        assert_eq!(c.trust_root, dir.path().join("root.crt"));
        assert!(c.db_url.as_deref().unwrap().starts_with("sqlite://"));
        assert!(!format!("{c:?}").contains("secret-token"));
        // Round trip through TOML keeps the token (the file is the only place it lives).
        let again: CloudConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);

        std::fs::write(&path, format!("{text}bogus = 1\n")).unwrap();
        assert!(matches!(
            CloudConfig::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        let mut bad = c.clone();
        bad.request_ttl_secs = MAX_APPROVAL_LIFETIME_SECS + 1;
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.api_tokens[0].sha256 = "abc".into();
        assert!(bad.validate().is_err());
        // Token defaults: tenant `default`, the default rate limit; scopes as listed.
        let t = &c.api_tokens[0];
        assert_eq!(t.tenant, DEFAULT_TENANT);
        assert_eq!(t.scopes, vec![Scope::Read]);
        assert_eq!(
            (t.rate_per_sec, t.burst),
            (DEFAULT_RATE_PER_SEC, DEFAULT_BURST)
        );
        // Each token field is checked, and the refusal names it.
        type Edit = fn(&mut ApiTokenConfig);
        let edits: [(Edit, &str); 7] = [
            (|t| t.scopes.clear(), "scopes"),
            (|t| t.scopes = vec![Scope::Read, Scope::Read], "scopes"),
            (|t| t.tenant = String::new(), "tenant"),
            (|t| t.tenant = "Acme Corp".into(), "tenant"),
            (|t| t.rate_per_sec = 0, "rate_per_sec"),
            (|t| t.burst = 0, "burst"),
            (|t| t.burst = MAX_RATE + 1, "burst"),
        ];
        for (edit, field) in edits {
            let mut bad = c.clone();
            edit(&mut bad.api_tokens[0]);
            let e = bad.validate().unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
        // In the file: scopes are required, unknown scopes and fields refused, by name.
        let token = |extra: &str| {
            format!(
                "listen = \"127.0.0.1:0\"\ntrust_root = \"root.crt\"\n\
                 [[api_tokens]]\nname = \"ops\"\nsha256 = \"{hash}\"\n{extra}"
            )
        };
        for (extra, named) in [
            ("", "scopes"),
            ("scopes = [\"everything\"]\n", "everything"),
            ("scopes = [\"read\"]\nrate = 5\n", "rate"),
        ] {
            std::fs::write(&path, token(extra)).unwrap();
            let e = CloudConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains(named), "{extra:?}: {e}");
        }
        std::fs::write(
            &path,
            token("scopes = [\"read\", \"approve\"]\ntenant = \"acme\"\nrate_per_sec = 5\nburst = 7\n"),
        )
        .unwrap();
        let t = CloudConfig::load(&path).unwrap().api_tokens.remove(0);
        assert_eq!(
            (t.tenant.as_str(), t.scopes, t.rate_per_sec, t.burst),
            ("acme", vec![Scope::Read, Scope::Approve], 5, 7)
        );
        std::fs::write(&path, &text).unwrap();
        assert_eq!(c.presignature_pool, 0);
        let mut pool = c.clone();
        pool.presignature_pool = 256;
        assert!(pool.validate().is_ok());
        pool.presignature_pool = 257;
        assert!(pool.validate().is_err());
        let mut bad = c.clone();
        bad.network = "dogecoin".into();
        assert!(bad.validate().is_err());

        // Plain HTTP on loopback only (IPv4 or IPv6); any other address needs TLS.
        for (addr, plain_ok) in [
            ("127.0.0.1:8443", true),
            ("127.9.9.9:8443", true),
            ("[::1]:8443", true),
            ("0.0.0.0:8443", false),
            ("[::]:8443", false),
            ("10.1.2.3:8443", false),
            ("[::ffff:127.0.0.1]:8443", false),
        ] {
            let mut open = c.clone();
            open.listen = addr.parse().unwrap();
            let plain = open.validate();
            assert_eq!(plain.is_ok(), plain_ok, "{addr}: {plain:?}");
            if let Err(e) = plain {
                assert!(e.contains("loopback") && e.contains("tls_cert"), "{e}");
            }
            open.tls_cert = Some(dir.path().join("cloud.crt"));
            open.tls_key = Some(dir.path().join("cloud.key"));
            assert!(open.validate().is_ok(), "{addr} with TLS");
        }
    }
}
