//! Bridge configuration: a TOML file loaded by [`custos_config`], each field overridable by
//! `CUSTOS_BRIDGE_<FIELD>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use custos_config::ConfigError;

/// Configuration of a cluster's bridge server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Cluster name.
    pub cluster: String,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Bridge certificate (PEM, from `PkiDir::issue_bridge`).
    pub cert: PathBuf,
    /// Bridge private key (PEM, 0600).
    pub key: PathBuf,
    /// The cluster's Cluster CA certificate (PEM).
    pub cluster_ca: PathBuf,
    /// The Device CA certificate (PEM).
    pub device_ca: PathBuf,
    /// The Root CA certificate (PEM).
    pub root_ca: PathBuf,
    /// Metadata DB URL: `sqlite://<file>?mode=rwc` (default) or `postgres://...`.
    pub db_url: String,
    /// Milliseconds between health checks of each node.
    #[serde(default = "default_health")]
    pub health_interval_ms: u64,
    /// Timeout of one call to a node, in milliseconds.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Seconds between scheduled key audits (0 disables the schedule; on-demand audits
    /// still run).
    #[serde(default = "default_audit_interval")]
    pub audit_interval_secs: u64,
    /// Least seconds between two history rows summarising refused callers of one kind: the
    /// first refusals of a kind are written within a second, later ones at most once per
    /// this interval, and what is still counted when the bridge stops.
    #[serde(default = "default_refusal_summary")]
    pub refusal_summary_secs: u64,
    /// The link to the external relay (absent: no link endpoint, gRPC only).
    #[serde(default)]
    pub link: Option<crate::link::LinkConfig>,
    /// Where `GET /metrics` (Prometheus, OpenMetrics text) is served: an operator's
    /// network (unset: no metrics listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster's genesis id (64 hex digits), pinned: a governance log with another
    /// genesis is refused. Absent: the first genesis the bridge sees is trusted (logged as a
    /// warning), and its stored rows keep it from then on.
    #[serde(default)]
    pub genesis_id: Option<String>,
}

fn default_audit_interval() -> u64 {
    3600
}

fn default_refusal_summary() -> u64 {
    60
}

fn default_health() -> u64 {
    500
}

fn default_call_timeout() -> u64 {
    5000
}

impl custos_config::Component for BridgeConfig {
    const COMPONENT: &'static str = "bridge";
    const INTEGER_FIELDS: &'static [&'static str] = &[
        "health_interval_ms",
        "call_timeout_ms",
        "audit_interval_secs",
        "refusal_summary_secs",
    ];

    fn paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![
            &mut self.cert,
            &mut self.key,
            &mut self.cluster_ca,
            &mut self.device_ca,
            &mut self.root_ca,
        ];
        if let Some(link) = &mut self.link {
            paths.extend([&mut link.relay_cert, &mut link.dedup_db]);
            paths.extend(link.spool_inbound.as_mut());
            paths.extend(link.spool_outbound.as_mut());
            paths.extend(link.qr_screen.as_mut());
            paths.extend(link.qr_captured.as_mut());
            paths.extend(link.serial_device.as_mut());
        }
        paths
    }

    fn check(&mut self, _dir: &Path) -> Result<(), String> {
        custos_pki::check_name(&self.cluster).map_err(|e| e.to_string())?;
        self.genesis_pin().map(drop)
    }
}

impl BridgeConfig {
    /// Loads a TOML file ([`custos_config::load`]: `CUSTOS_BRIDGE_<FIELD>` overrides, paths
    /// relative to the file's folder).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        custos_config::load(path)
    }

    /// The pinned genesis id, if one is configured; an error names what is wrong with it.
    pub fn genesis_pin(&self) -> Result<Option<[u8; 32]>, String> {
        self.genesis_id
            .as_deref()
            .map(custos_wire::governance::parse_genesis_id)
            .transpose()
    }

    /// Writes the configuration as TOML.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        custos_config::save(self, path)
    }
}
