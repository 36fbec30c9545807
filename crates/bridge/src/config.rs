//! Bridge configuration: a TOML file, each field overridable by `CUSTOS_BRIDGE_<FIELD>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration of a cluster's bridge server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    /// The link to the external relay (absent: no link endpoint, gRPC only).
    #[serde(default)]
    pub link: Option<crate::link::LinkConfig>,
}

fn default_audit_interval() -> u64 {
    3600
}

fn default_health() -> u64 {
    500
}

fn default_call_timeout() -> u64 {
    5000
}

/// Fields whose environment override is a number.
const NUMERIC: &[&str] = &[
    "health_interval_ms",
    "call_timeout_ms",
    "audit_interval_secs",
];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// Path.
        path: String,
        /// Reason.
        reason: String,
    },
    /// Invalid TOML or field.
    #[error("invalid configuration {path}: {reason}")]
    Invalid {
        /// Path.
        path: String,
        /// Reason.
        reason: String,
    },
}

impl BridgeConfig {
    /// Loads a TOML file and applies `CUSTOS_BRIDGE_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        for field in [
            "cluster",
            "listen",
            "cert",
            "key",
            "cluster_ca",
            "device_ca",
            "root_ca",
            "db_url",
            "health_interval_ms",
            "call_timeout_ms",
            "audit_interval_secs",
        ] {
            if let Ok(v) = std::env::var(format!("CUSTOS_BRIDGE_{}", field.to_uppercase())) {
                let numeric = NUMERIC.contains(&field);
                let value = match v.parse::<i64>() {
                    Ok(n) if numeric => toml::Value::Integer(n),
                    _ => toml::Value::String(v),
                };
                table.insert(field.to_string(), value);
            }
        }
        let cfg: BridgeConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        custos_pki::check_name(&cfg.cluster).map_err(|e| invalid(e.to_string()))?;
        Ok(cfg)
    }

    /// Writes the configuration as TOML.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            toml::to_string_pretty(self).expect("config serializes"),
        )
    }
}
