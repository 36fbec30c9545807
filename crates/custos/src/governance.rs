//! The operator's side of cluster governance (issue 12, plan step G4): `custos cluster
//! genesis|members|governors` and `custos admin revoke|fingerprint`. Each change is proposed
//! through the cloud server's REST API as a `governance` request; the governors then approve
//! it with `custos approve`, which recomputes the entry's approval message from the request's
//! fields. Nothing here signs anything.
//!
//! An approved entry applies only at the exact log version it names. To cancel an approved
//! entry that was never applied, approve any other entry at that version: the first one
//! applied wins, the other is refused (`governance_head_moved`).

use std::io::Write;
use std::path::{Path, PathBuf};

use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::{
    AdmitBody, GenesisBody, GovernorsBody, MeasurementPolicyView, MembersView, RemoveMemberBody,
    RequestView, RevokeBody, TicketBody,
};
use custos_wire::governance::EVIDENCE_ADMISSION_V1;

/// How the commands reach the cloud server (as `custos approve` does).
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token (with the `administer` scope to propose changes, `read` to list).
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long)]
    pub api_root_ca: Option<PathBuf>,
}

impl ApiArgs {
    /// A client of the server these arguments name.
    pub fn client(&self) -> Result<CloudClient, GovCliError> {
        Ok(match &self.api_root_ca {
            Some(p) => CloudClient::with_root_pem(&self.api, &self.token, &read(p)?)?,
            None => CloudClient::new(&self.api, &self.token)?,
        })
    }
}

/// Failures of the governance commands.
#[derive(Debug, thiserror::Error)]
pub enum GovCliError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// File path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A certificate could not be read.
    #[error("{0}")]
    Certificate(String),
    /// Output could not be written.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

fn read(path: &Path) -> Result<String, GovCliError> {
    std::fs::read_to_string(path).map_err(|e| GovCliError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// `custos cluster …` governance subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum ClusterGovCommand {
    /// Propose the first entry of a cluster's governance log: its governors (admin key
    /// fingerprints, from `custos admin fingerprint`), their quorum and its first members
    /// (nodes registered with the cluster's bridge). The governors approve it with
    /// `custos approve`.
    Genesis {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// A governor's admin key fingerprint (64 hex digits); repeat for each.
        #[arg(long = "governor", required = true)]
        governors: Vec<String>,
        /// Distinct governors needed for the genesis and every later entry.
        #[arg(long)]
        quorum: u8,
        /// A first member's node name; repeat for each.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// The platforms later members are admitted on: a JSON file holding the measurement
        /// policy (`allow_software`, `tpm`, `nitro`, `snp`, `tdx`; see the API's
        /// MeasurementPolicyView). Without it (and without --allow-software-platform) no node
        /// is admitted after the genesis until the governors set a policy.
        #[arg(long, conflicts_with = "allow_software_platform")]
        measurement_policy: Option<PathBuf>,
        /// Admit later members on the software development stand-in (no evidence): for
        /// demonstration and test clusters only.
        #[arg(long)]
        allow_software_platform: bool,
    },
    /// The members of a cluster, and proposals to admit or remove one.
    Members {
        /// What to do with them.
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Propose new governors and their quorum (approved by the current governors).
    Governors {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// A new governor's admin key fingerprint; repeat for each.
        #[arg(long = "governor", required = true)]
        governors: Vec<String>,
        /// Distinct governors needed from then on.
        #[arg(long)]
        quorum: u8,
    },
}

/// `custos cluster members …`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum MembersCommand {
    /// List the governors, members and revoked keys, from the log a member's TEE signed.
    List {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
    },
    /// Propose admitting a node.
    Admit {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// The node's name.
        #[arg(long)]
        node: String,
        /// The node's device chain (PEM: device certificate, Cluster CA, Device CA), as
        /// `custos tee chain` writes it at the node. Needed unless the bridge knows the node
        /// (a governed cluster's bridge registers members only).
        #[arg(long)]
        chain: Option<PathBuf>,
        /// The node's answer to its admission ticket (hex, as `custos tee admission-evidence`
        /// writes it). Without it the node is admitted only where the cluster's policy allows
        /// the software platform.
        #[arg(long)]
        evidence: Option<PathBuf>,
    },
    /// Have a member's TEE sign an admission ticket for a node that asks to join; its own TEE
    /// answers it (`custos tee admission-evidence`), within the hour.
    Ticket {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// The node's name.
        #[arg(long)]
        node: String,
        /// The node's device chain (PEM), as `custos tee chain` writes it.
        #[arg(long)]
        chain: PathBuf,
        /// The node's TPM identity (JSON), as `custos tee attestation-identity` writes it: for
        /// a node on a TPM, whose ticket's nonce is sealed to that TPM.
        #[arg(long)]
        tpm_identity: Option<PathBuf>,
        /// Output file (JSON); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Propose removing a member.
    Remove {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// The member's node name.
        #[arg(long)]
        node: String,
        /// Why (recorded in the log).
        #[arg(long)]
        reason: String,
    },
}

/// `custos admin …` governance subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum AdminGovCommand {
    /// Propose revoking admin keys and/or device keys in a cluster (approved by its
    /// governors). A revoked admin's approvals are refused from then on.
    Revoke {
        /// How to reach the cloud server.
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster name.
        #[arg(long)]
        cluster: String,
        /// An admin key fingerprint to revoke; repeatable.
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// A device key fingerprint to revoke; repeatable.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Why (recorded in the log).
        #[arg(long)]
        reason: String,
    },
    /// Print the key fingerprint of an admin certificate (what names an admin as a governor
    /// or in a revocation): SHA-256 of its certified public key.
    Fingerprint {
        /// The admin's certificate or chain file (PEM; the first certificate is read), as
        /// `custos pki sign-admin-csr` wrote it.
        #[arg(long)]
        cert: PathBuf,
    },
}

/// What to tell the operator about a proposed change.
fn proposed(view: &RequestView, out: &mut dyn Write) -> Result<(), GovCliError> {
    writeln!(out, "request {}  {}", view.id, view.status.as_str())?;
    writeln!(out, "  {}", view.summary)?;
    writeln!(
        out,
        "  needs {} governor approvals before {} (Unix time): each governor runs\n    custos approve --request {}",
        view.quorum, view.expires_at, view.id
    )?;
    Ok(())
}

/// Writes the members view for people.
pub fn print_members(m: &MembersView, out: &mut dyn Write) -> Result<(), GovCliError> {
    writeln!(
        out,
        "cluster {}  log version {}  head {}",
        m.cluster, m.version, m.head
    )?;
    writeln!(out, "genesis {}", m.genesis_id)?;
    writeln!(out, "governors (quorum {}):", m.quorum)?;
    for g in &m.governors {
        writeln!(out, "  {g}")?;
    }
    writeln!(out, "members:")?;
    for n in &m.members {
        let serving = match n.serving {
            Some(true) => "serving",
            Some(false) => "not serving",
            None => "bridge unknown",
        };
        let cert = n
            .cert_not_after
            .map(|t| format!(", certificate until {t}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<20} key {}  admitted at version {} ({serving}{cert})",
            n.node, n.key_fingerprint, n.admitted_version
        )?;
    }
    for (what, list) in [
        ("revoked admins", &m.revoked_admins),
        ("revoked devices", &m.revoked_devices),
    ] {
        if !list.is_empty() {
            writeln!(out, "{what}:")?;
            for r in list {
                writeln!(out, "  {} (version {})", r.fingerprint, r.version)?;
            }
        }
    }
    Ok(())
}

/// Runs `custos cluster genesis|members|governors`.
pub async fn run_cluster(cmd: ClusterGovCommand, out: &mut dyn Write) -> Result<(), GovCliError> {
    match cmd {
        ClusterGovCommand::Genesis {
            api,
            cluster,
            governors,
            quorum,
            members,
            measurement_policy,
            allow_software_platform,
        } => {
            let measurement_policy = match measurement_policy {
                Some(path) => {
                    Some(
                        serde_json::from_str(&read(&path)?).map_err(|e| GovCliError::Io {
                            path: path.display().to_string(),
                            reason: format!("not a measurement policy: {e}"),
                        })?,
                    )
                }
                None => allow_software_platform.then(|| MeasurementPolicyView {
                    allow_software: true,
                    ..Default::default()
                }),
            };
            let body = GenesisBody {
                governors,
                quorum,
                members,
                measurement_policy,
                request_id: None,
                expires_at: None,
            };
            let view = api.client()?.propose_genesis(&cluster, &body).await?;
            proposed(&view, out)
        }
        ClusterGovCommand::Governors {
            api,
            cluster,
            governors,
            quorum,
        } => {
            let body = GovernorsBody {
                governors,
                quorum,
                request_id: None,
                expires_at: None,
            };
            let view = api.client()?.set_governors(&cluster, &body).await?;
            proposed(&view, out)
        }
        ClusterGovCommand::Members { command } => match command {
            MembersCommand::List { api, cluster } => {
                print_members(&api.client()?.members(&cluster).await?, out)
            }
            MembersCommand::Admit {
                api,
                cluster,
                node,
                chain,
                evidence,
            } => {
                let evidence_hex = evidence.as_deref().map(read).transpose()?;
                let body = AdmitBody {
                    node,
                    chain_pem: chain.as_deref().map(read).transpose()?,
                    evidence_format: evidence_hex.as_ref().map(|_| EVIDENCE_ADMISSION_V1),
                    evidence_hex: evidence_hex.map(|h| h.trim().to_string()),
                    request_id: None,
                    expires_at: None,
                };
                let view = api.client()?.admit_member(&cluster, &body).await?;
                proposed(&view, out)
            }
            MembersCommand::Ticket {
                api,
                cluster,
                node,
                chain,
                tpm_identity,
                out: file,
            } => {
                let tpm_identity =
                    match tpm_identity {
                        Some(path) => Some(serde_json::from_str(&read(&path)?).map_err(|e| {
                            GovCliError::Io {
                                path: path.display().to_string(),
                                reason: format!("not a TPM identity: {e}"),
                            }
                        })?),
                        None => None,
                    };
                let body = TicketBody {
                    node,
                    chain_pem: read(&chain)?,
                    tpm_identity,
                };
                let view = api.client()?.admission_ticket(&cluster, &body).await?;
                let json = serde_json::to_string_pretty(&view).expect("a view serializes");
                match file {
                    Some(path) => {
                        std::fs::write(&path, json + "\n").map_err(|e| GovCliError::Io {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?
                    }
                    None => writeln!(out, "{json}")?,
                }
                Ok(())
            }
            MembersCommand::Remove {
                api,
                cluster,
                node,
                reason,
            } => {
                let body = RemoveMemberBody {
                    reason,
                    request_id: None,
                    expires_at: None,
                };
                let view = api.client()?.remove_member(&cluster, &node, &body).await?;
                proposed(&view, out)
            }
        },
    }
}

/// The key fingerprint and common name of the first certificate in `pem_text`.
pub fn admin_fingerprint(pem_text: &str) -> Result<([u8; 32], String), GovCliError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = custos_pki::pem_to_der(pem_text, "admin certificate")
        .map_err(|e| GovCliError::Certificate(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| GovCliError::Certificate(format!("admin certificate: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((custos_pki::key_fingerprint(cert.public_key().raw), name))
}

/// Runs `custos admin revoke|fingerprint`.
pub async fn run_admin(cmd: AdminGovCommand, out: &mut dyn Write) -> Result<(), GovCliError> {
    match cmd {
        AdminGovCommand::Revoke {
            api,
            cluster,
            admins,
            devices,
            reason,
        } => {
            let body = RevokeBody {
                admins,
                devices,
                reason,
                request_id: None,
                expires_at: None,
            };
            let view = api.client()?.revoke(&cluster, &body).await?;
            proposed(&view, out)
        }
        AdminGovCommand::Fingerprint { cert } => {
            let (fp, name) = admin_fingerprint(&read(&cert)?)?;
            writeln!(out, "{}  {name}", hex::encode(fp))?;
            Ok(())
        }
    }
}
