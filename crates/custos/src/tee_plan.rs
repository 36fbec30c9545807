//! Where the TEE processes of a cluster or a deployment run: the software platform (the
//! development stand-in), a TPM 2.0 named by its TCTI, or a software TPM (`swtpm`) of each
//! TEE's own, started and stopped with it (development, the demo's `--platform tpm`).
//!
//! [`Cluster`](crate::cluster::Cluster) starts each node's TEE as its [`TeePlan`] says, and
//! records the platform in the node's configuration (`[tee]`, see
//! [`custos_vault_node::TeeSection`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custos_tee_host::swtpm::Swtpm;
use custos_vault_node::TeeSection;

use crate::tee_process::{TeePlatform, TpmArgs};

/// How one node's TEE process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TeeChoice {
    /// The development stand-in (`--platform software`).
    #[default]
    Software,
    /// A TPM 2.0 reached through a TCTI (`device:/dev/tpmrm0`, a running swtpm).
    Tpm(TpmArgs),
    /// A software TPM of the TEE's own, started in the cluster's folder
    /// (`<node>-swtpm/`, its state kept there; manufactured on first start with an
    /// endorsement certificate from the cluster's [`swtpm_ca`]) before the TEE and stopped
    /// after it. Needs
    /// `swtpm` installed and `custos` built with the feature `tpm`.
    Swtpm,
}

/// The platform of each node's TEE, by node name, with a default for the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeePlan {
    /// For nodes not named in `nodes`.
    pub default: TeeChoice,
    /// By node name (`dc1-node1`).
    pub nodes: BTreeMap<String, TeeChoice>,
}

impl TeePlan {
    /// Every TEE on `choice`.
    pub fn all(choice: TeeChoice) -> Self {
        TeePlan {
            default: choice,
            nodes: BTreeMap::new(),
        }
    }

    /// This plan with node `node`'s TEE on `choice`.
    pub fn with(mut self, node: &str, choice: TeeChoice) -> Self {
        self.nodes.insert(node.to_string(), choice);
        self
    }

    /// What node `node`'s TEE runs on.
    pub fn for_node(&self, node: &str) -> &TeeChoice {
        self.nodes.get(node).unwrap_or(&self.default)
    }

    /// Whether some TEE of the plan needs a software TPM of its own.
    pub fn needs_swtpm(&self) -> bool {
        self.default == TeeChoice::Swtpm || self.nodes.values().any(|c| *c == TeeChoice::Swtpm)
    }
}

/// Resolves `choice` for node `node` of the cluster in `dir`: the platform of its TEE
/// process, and the software TPM started for it (kept running as long as the TEE is).
pub fn launch(
    choice: &TeeChoice,
    dir: &Path,
    node: &str,
) -> Result<(TeePlatform, Option<Swtpm>), String> {
    match choice {
        TeeChoice::Software => Ok((TeePlatform::Software, None)),
        TeeChoice::Tpm(args) => Ok((TeePlatform::Tpm(args.clone()), None)),
        TeeChoice::Swtpm => {
            let tpm = Swtpm::start_manufactured(&dir.join(format!("{node}-swtpm")), &swtpm_ca(dir))
                .map_err(|e| format!("the TPM of {node}'s TEE: {e}"))?;
            Ok((TeePlatform::tpm(tpm.tcti()), Some(tpm)))
        }
    }
}

/// The local CA standing in for the TPM maker of the cluster in `dir`: every software TPM
/// [`launch`] starts there is manufactured with an endorsement certificate it signs
/// (`custos_tee_host::swtpm::manufacture`), so that its root can be pinned by the cluster's
/// measurement policy and its nodes admitted by TPM quote.
pub fn swtpm_ca(dir: &Path) -> PathBuf {
    dir.join("swtpm-ca")
}

/// The `[tee]` section of a node's configuration for `platform`.
pub fn tee_section(platform: &TeePlatform) -> TeeSection {
    match platform {
        TeePlatform::Software => TeeSection {
            platform: "software".into(),
            tpm: None,
            tpm_pcrs: None,
            tpm_nv_index: None,
        },
        TeePlatform::Tpm(t) => TeeSection {
            platform: "tpm".into(),
            tpm: Some(t.tcti.clone()),
            tpm_pcrs: t.pcrs.clone(),
            tpm_nv_index: t.nv_index,
        },
    }
}

/// `custos cluster up --platform …`: the TEEs' platform.
#[derive(Clone, Debug, clap::Args)]
pub struct PlatformArgs {
    /// Platform of every TEE: software (the development stand-in) or tpm (custos built
    /// with the cargo feature `tpm`).
    #[arg(long, value_enum, default_value_t = PlatformName::Software)]
    pub platform: PlatformName,
    /// With `--platform tpm`: the TCTI of the TPM, once for every node (each TEE then gets
    /// its own NV index, 0x0100c057 + its position; a TPM behind a resource manager such as
    /// `device:/dev/tpmrm0`) or once per node in node order.
    #[arg(long, value_name = "TCTI")]
    pub tpm: Vec<String>,
    /// With `--platform tpm`: start a software TPM (`swtpm`) for each TEE, its state in
    /// `<dir>/<node>-swtpm/` (development only: a copy of that folder rolls the TPM back).
    #[arg(long, conflicts_with = "tpm")]
    pub swtpm: bool,
}

/// A TEE platform's name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformName {
    /// The development stand-in.
    Software,
    /// A TPM 2.0.
    Tpm,
}

/// The TPM platform's default NV index (`custos tee serve --tpm-nv-index`).
const DEFAULT_NV_INDEX: u32 = 0x0100_C057;

impl PlatformArgs {
    /// The plan for the `nodes` nodes named `<cluster>-node<i>`, i from 1.
    pub fn plan(&self, cluster: &str, nodes: usize) -> Result<TeePlan, String> {
        match self.platform {
            PlatformName::Software if self.tpm.is_empty() && !self.swtpm => Ok(TeePlan::default()),
            PlatformName::Software => Err("--tpm and --swtpm need --platform tpm".into()),
            PlatformName::Tpm if self.swtpm => Ok(TeePlan::all(TeeChoice::Swtpm)),
            PlatformName::Tpm => {
                let shared = match self.tpm.len() {
                    1 => true,
                    n if n == nodes => false,
                    n => {
                        return Err(format!(
                            "--platform tpm: {n} --tpm for {nodes} nodes (give one for all, one \
                             per node, or --swtpm)"
                        ))
                    }
                };
                let mut plan = TeePlan::default();
                for i in 0..nodes {
                    let args = TpmArgs {
                        tcti: self.tpm[if shared { 0 } else { i }].clone(),
                        pcrs: None,
                        nv_index: shared.then(|| DEFAULT_NV_INDEX + i as u32),
                    };
                    plan = plan.with(&format!("{cluster}-node{}", i + 1), TeeChoice::Tpm(args));
                }
                Ok(plan)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(platform: PlatformName, tpm: &[&str], swtpm: bool) -> PlatformArgs {
        PlatformArgs {
            platform,
            tpm: tpm.iter().map(|t| t.to_string()).collect(),
            swtpm,
        }
    }

    #[test]
    fn cluster_up_platform_arguments_make_one_tpm_per_tee_or_one_nv_index_per_tee() {
        let plan = args(PlatformName::Tpm, &["device:/dev/tpmrm0"], false)
            .plan("dc1", 2)
            .unwrap();
        let nv = |n: &str| match plan.for_node(n) {
            TeeChoice::Tpm(t) => (t.tcti.clone(), t.nv_index),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            nv("dc1-node1"),
            ("device:/dev/tpmrm0".into(), Some(0x0100_C057))
        );
        assert_eq!(
            nv("dc1-node2"),
            ("device:/dev/tpmrm0".into(), Some(0x0100_C058))
        );
        let plan = args(PlatformName::Tpm, &["a", "b"], false)
            .plan("dc1", 2)
            .unwrap();
        assert!(
            matches!(plan.for_node("dc1-node2"), TeeChoice::Tpm(t) if t.tcti == "b" && t.nv_index.is_none())
        );
        assert!(args(PlatformName::Tpm, &["a", "b"], false)
            .plan("dc1", 3)
            .is_err());
        assert!(args(PlatformName::Tpm, &[], false).plan("dc1", 3).is_err());
        assert!(args(PlatformName::Software, &["a"], false)
            .plan("dc1", 1)
            .is_err());
        let plan = args(PlatformName::Tpm, &[], true).plan("dc1", 3).unwrap();
        assert!(plan.needs_swtpm());
        assert_eq!(
            args(PlatformName::Software, &[], false).plan("dc1", 3),
            Ok(TeePlan::default())
        );
    }
}
