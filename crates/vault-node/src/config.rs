//! Node server configuration: a TOML file, each field overridable by an environment
//! variable `CUSTOS_NODE_<FIELD>` (upper case), as deployments commonly inject settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration of one vault node server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name (must equal the device certificate's common name).
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// Address to serve the VaultNode gRPC service on (loopback in development).
    pub listen: SocketAddr,
    /// Address of the cluster's bridge server.
    pub bridge: SocketAddr,
    /// Unix socket of this node's TEE core process.
    pub tee_socket: PathBuf,
    /// The Root CA certificate (PEM) pinned in the TEE.
    pub root_ca: PathBuf,
    /// Seconds between periodic sync rounds.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_secs: u64,
    /// Connections kept open to the TEE core (concurrency feeds its group commit).
    #[serde(default = "default_tee_connections")]
    pub tee_connections: usize,
}

fn default_sync_interval() -> u64 {
    10
}

fn default_tee_connections() -> usize {
    8
}

/// Fields whose environment override is a number.
const NUMERIC: &[&str] = &["sync_interval_secs", "tee_connections"];

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
        /// Path or variable.
        path: String,
        /// Reason.
        reason: String,
    },
}

impl NodeConfig {
    /// Loads a TOML file and applies `CUSTOS_NODE_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
        for field in [
            "node",
            "cluster",
            "listen",
            "bridge",
            "tee_socket",
            "root_ca",
            "sync_interval_secs",
            "tee_connections",
        ] {
            if let Ok(v) = std::env::var(format!("CUSTOS_NODE_{}", field.to_uppercase())) {
                let numeric = NUMERIC.contains(&field);
                let value = match v.parse::<i64>() {
                    Ok(n) if numeric => toml::Value::Integer(n),
                    _ => toml::Value::String(v),
                };
                table.insert(field.to_string(), value);
            }
        }
        let cfg: NodeConfig =
            table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
        custos_pki::check_name(&cfg.node)
            .and_then(|_| custos_pki::check_name(&cfg.cluster))
            .map_err(|e| ConfigError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if cfg.tee_connections == 0 || cfg.tee_connections > 64 {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                reason: "tee_connections must be 1..=64".into(),
            });
        }
        Ok(cfg)
    }

    /// Writes the configuration as TOML (used by `custos cluster up`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            toml::to_string_pretty(self).expect("config serializes"),
        )
    }
}
