//! Node server configuration: a TOML file loaded by [`custos_config`], each field
//! overridable by `CUSTOS_NODE_<FIELD>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use custos_config::ConfigError;

/// Configuration of one vault node server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name (must equal the device certificate's common name).
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// Address to serve the VaultNode gRPC service on (loopback in development).
    pub listen: SocketAddr,
    /// Address the bridge and the peers reach this node at, when it is not `listen` (a
    /// node behind address translation or a TCP proxy); registered with the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
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

impl custos_config::Component for NodeConfig {
    const COMPONENT: &'static str = "node";
    const INTEGER_FIELDS: &'static [&'static str] = &["sync_interval_secs", "tee_connections"];

    fn paths(&mut self) -> Vec<&mut PathBuf> {
        vec![&mut self.tee_socket, &mut self.root_ca]
    }

    fn check(&mut self, _dir: &Path) -> Result<(), String> {
        custos_pki::check_name(&self.node)
            .and_then(|_| custos_pki::check_name(&self.cluster))
            .map_err(|e| e.to_string())?;
        if self.tee_connections == 0 || self.tee_connections > 64 {
            return Err("tee_connections must be 1..=64".into());
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Loads a TOML file ([`custos_config::load`]: `CUSTOS_NODE_<FIELD>` overrides, paths
    /// relative to the file's folder).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        custos_config::load(path)
    }

    /// Writes the configuration as TOML (used by `custos cluster up`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        custos_config::save(self, path)
    }
}
