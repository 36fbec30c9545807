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
    /// How this node's TEE process runs (`[tee]`), as the deployment tooling started it
    /// (`custos cluster up`, the demo): what an operator or a supervisor reads to start it
    /// the same way. The node server itself reaches the TEE through `tee_socket` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee: Option<TeeSection>,
    /// Where `GET /metrics` (Prometheus, OpenMetrics text) is served: an operator's
    /// network (unset: no metrics listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The `[tee]` section of a node's configuration: the TEE process's platform
/// (`custos tee serve --platform`, `--tpm`, `--tpm-pcrs`, `--tpm-nv-index`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TeeSection {
    /// `software` (the development stand-in) or `tpm` (a TPM 2.0).
    pub platform: String,
    /// The TPM's TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`); required
    /// with `platform = "tpm"`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<String>,
    /// PCRs a new store's key is sealed to (`sha256:7` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_pcrs: Option<String>,
    /// NV index of a new store's counter (the platform's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_nv_index: Option<u32>,
}

impl TeeSection {
    /// Whether the section is consistent: a known platform, and a TPM named exactly when
    /// the platform is `tpm`.
    pub fn check(&self) -> Result<(), String> {
        let tpm_fields = self.tpm_pcrs.is_some() || self.tpm_nv_index.is_some();
        match (self.platform.as_str(), &self.tpm) {
            ("tpm", Some(t)) if !t.trim().is_empty() => Ok(()),
            ("tpm", _) => Err("[tee] platform = \"tpm\" needs tpm = \"<TCTI>\"".into()),
            ("software", None) if !tpm_fields => Ok(()),
            ("software", _) => {
                Err("[tee] tpm, tpm_pcrs and tpm_nv_index are for platform = \"tpm\"".into())
            }
            (other, _) => Err(format!(
                "[tee] platform {other:?}: expected \"software\" or \"tpm\""
            )),
        }
    }
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
        if let Some(tee) = &self.tee {
            tee.check()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "node = \"dc1-node1\"\ncluster = \"dc1\"\nlisten = \"127.0.0.1:0\"\n\
                        bridge = \"127.0.0.1:1\"\ntee_socket = \"n.sock\"\nroot_ca = \"root.crt\"\n";

    fn load(text: &str) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        custos_config::load_with_env(&path, Vec::new())
    }

    /// A node's TEE on a TPM: `[tee]` with the platform and the TCTI, saved and loaded the
    /// same; without the section the TEE's platform is not stated (software).
    #[test]
    fn the_tee_section_names_the_platform_and_the_tpm() {
        assert_eq!(load(BASE).unwrap().tee, None);
        let c = load(&format!(
            "{BASE}[tee]\nplatform = \"tpm\"\ntpm = \"swtpm:host=127.0.0.1,port=2321\"\n\
             tpm_nv_index = 16826455\n"
        ))
        .unwrap();
        let tee = c.tee.clone().unwrap();
        assert_eq!(tee.platform, "tpm");
        assert_eq!(tee.tpm.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));
        assert_eq!(tee.tpm_nv_index, Some(0x0100_C057));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved.toml");
        c.save(&path).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().tee, c.tee);
    }

    /// Unknown fields are refused inside `[tee]` as at the top level, and an inconsistent
    /// section by what is wrong.
    #[test]
    fn a_tee_section_with_an_unknown_field_or_without_its_tpm_is_refused() {
        for (section, why) in [
            (
                "platform = \"tpm\"\ntpm = \"device:/dev/tpmrm0\"\ntcti = \"x\"\n",
                "tcti",
            ),
            ("platform = \"tpm\"\n", "needs tpm"),
            (
                "platform = \"software\"\ntpm = \"device:/dev/tpmrm0\"\n",
                "are for",
            ),
            ("platform = \"sgx\"\n", "expected"),
        ] {
            let e = load(&format!("{BASE}[tee]\n{section}")).unwrap_err();
            assert!(e.to_string().contains(why), "{section}: {e}");
        }
    }
}
