//! External relay configuration: a TOML file loaded by [`custos_config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RelayError;

/// The link transport to the bridge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransportConfig {
    /// Stream transport: the bridge's link listener (a serial line in a physical site).
    Tcp {
        /// Bridge link address.
        address: SocketAddr,
    },
    /// Spool transport: request and answer files in two directories (removable medium).
    Spool {
        /// Directory this relay writes requests to (the bridge's inbound).
        outbound: PathBuf,
        /// Directory this relay reads answers from (the bridge's outbound).
        inbound: PathBuf,
        /// Milliseconds between scans for an answer.
        #[serde(default = "default_poll")]
        poll_ms: u64,
    },
    /// QR transport: requests drawn as frames for a screen, replies read from images a
    /// camera captured of the bridge's screen.
    Qr {
        /// Directory this relay draws request frames into (one folder per request).
        screen: PathBuf,
        /// Directory the camera writes its images of the bridge's frames to.
        captured: PathBuf,
        /// Milliseconds between scans for captured images.
        #[serde(default = "default_poll")]
        poll_ms: u64,
    },
    /// Serial transport: an RS-232 / USB serial device wired to the bridge's.
    Serial {
        /// The serial device (e.g. `/dev/ttyUSB0`).
        device: PathBuf,
        /// Line rate, baud (8N1).
        #[serde(default = "default_baud")]
        baud: u32,
    },
}

/// The line rate of a serial link unless configured: 115 200 baud.
pub fn default_baud() -> u32 {
    115_200
}

fn default_poll() -> u64 {
    20
}

/// Configuration of one cluster's external relay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Cluster name.
    pub cluster: String,
    /// Address the cloud server reaches this relay on.
    pub listen: SocketAddr,
    /// Relay certificate (PEM, `PkiDir::issue_service(cluster, Relay)`).
    pub cert: PathBuf,
    /// Relay private key (PEM, 0600): TLS and link signing.
    pub key: PathBuf,
    /// The cluster's Cluster CA certificate (PEM).
    pub cluster_ca: PathBuf,
    /// The Device CA certificate (PEM).
    pub device_ca: PathBuf,
    /// The Root CA certificate (PEM).
    pub root_ca: PathBuf,
    /// The bridge's certificate (PEM): its key is the pinned other end of the link.
    pub bridge_cert: PathBuf,
    /// Hex SHA-256 of the bearer token the cloud server presents.
    pub token_sha256: String,
    /// Link transport.
    pub transport: TransportConfig,
    /// Bound on one link attempt, in milliseconds.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_ms: u64,
    /// Attempts per request (each with the same request id).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Where `GET /metrics` (Prometheus, OpenMetrics text) is served: an operator's
    /// network (unset: no metrics listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_attempt_timeout() -> u64 {
    30_000
}

fn default_attempts() -> u32 {
    3
}

impl custos_config::Component for RelayConfig {
    const COMPONENT: &'static str = "relay";
    const INTEGER_FIELDS: &'static [&'static str] = &["attempt_timeout_ms", "max_attempts"];

    fn paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![
            &mut self.cert,
            &mut self.key,
            &mut self.cluster_ca,
            &mut self.device_ca,
            &mut self.root_ca,
            &mut self.bridge_cert,
        ];
        match &mut self.transport {
            TransportConfig::Spool {
                outbound, inbound, ..
            } => paths.extend([outbound, inbound]),
            TransportConfig::Qr {
                screen, captured, ..
            } => paths.extend([screen, captured]),
            TransportConfig::Serial { device, .. } => paths.push(device),
            TransportConfig::Tcp { .. } => {}
        }
        paths
    }

    fn check(&mut self, _dir: &Path) -> Result<(), String> {
        custos_pki::check_name(&self.cluster).map_err(|e| e.to_string())?;
        let hash = hex::decode(&self.token_sha256).map_err(|e| format!("token_sha256: {e}"))?;
        if hash.len() != 32 {
            return Err("token_sha256 must be 32 bytes of hex".into());
        }
        Ok(())
    }
}

impl RelayConfig {
    /// Loads and checks a TOML file ([`custos_config::load`]: `CUSTOS_RELAY_<FIELD>`
    /// overrides, paths relative to the file's folder).
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        custos_config::load(path).map_err(|e| RelayError::Config(e.to_string()))
    }

    /// Writes the configuration as TOML.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        custos_config::save(self, path)
    }
}
