//! `custos wallet create`: records a wallet creation on the cloud server, naming the wallet's
//! approver group (issue 12, item 3). Admins then approve it with `custos approve`.
//! `custos wallet policy` shows or changes that group ([`policy`]).
//!
//! The group is given by key fingerprint (`--group`, hex) or by the admins' certificate chain
//! files (`--group-cert`, what `custos pki sign-admin-csr` wrote for each admin): the
//! fingerprint is read from the certificate, so a second certificate for another subject
//! never stands in for an admin.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::{CreateWalletBody, PolicyRules, RequestView};
use custos_wire::policy::MAX_GROUP;

pub mod policy;
pub mod psbt;
pub use policy::PolicyArgs;

/// `custos wallet …`.
#[derive(Clone, Debug, Subcommand)]
pub enum WalletCommand {
    /// Record a wallet creation on the cloud server, naming the admins who alone approve it
    /// (its group) and how many of them must; the server names the node that makes it.
    /// Admins approve it with `custos approve`.
    Create(CreateArgs),
    /// Show a wallet's or threshold key's approver group (`--show`), or propose a new group
    /// and quorum, which a quorum of the group in force approves with `custos approve`.
    Policy(PolicyArgs),
    /// Submit a Bitcoin PSBT for signing with a wallet: a TEE computes what it does (its
    /// intent), which the approvers read and sign with `custos approve`; with `--wait`,
    /// write the signed PSBT once they have.
    SignPsbt(psbt::SignPsbtArgs),
}

/// Options of `custos wallet create`.
#[derive(Clone, Debug, Args)]
pub struct CreateArgs {
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token.
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long)]
    pub api_root_ca: Option<PathBuf>,
    /// Cluster that makes and holds the wallet.
    #[arg(long)]
    pub cluster: String,
    /// Admins of the group needed to create and to use the wallet.
    #[arg(long)]
    pub quorum: u8,
    /// An admin of the group by key fingerprint (64 hex characters); repeat for each.
    #[arg(long = "group", value_name = "FP")]
    pub group: Vec<String>,
    /// An admin of the group by its certificate chain file (admin certificate first);
    /// repeat for each. Combined with --group.
    #[arg(long = "group-cert", value_name = "FILE")]
    pub group_certs: Vec<PathBuf>,
    /// The node to make the wallet on, by device key fingerprint (default: the server
    /// chooses the next serving node).
    #[arg(long)]
    pub executor: Option<String>,
    /// The wallet's transaction rules, a JSON file (`PolicyRules` of the API: transactions
    /// only, spend limits, allowlist, approval tiers); sealed with it and approved with it.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// Failures of `custos wallet create` and `custos wallet policy`.
#[derive(Debug, thiserror::Error)]
pub enum WalletCliError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An admin certificate chain could not be read.
    #[error("{path}: {source}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: custos_pki::PkiError,
    },
    /// No admin named, or more than a group holds.
    #[error("name 1 to {MAX_GROUP} admins with --group or --group-cert ({0} given)")]
    GroupSize(usize),
    /// `custos wallet policy` without `--show` needs the new quorum.
    #[error("give the new group's --quorum (or --show to see the group in force)")]
    NoQuorum,
    /// `custos wallet policy` names exactly one key.
    #[error("name exactly one key: --root (a wallet) or --threshold-key")]
    PolicyKey,
    /// The rules file is not `PolicyRules` JSON.
    #[error("{path}: not transaction rules: {reason}")]
    Rules {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A request ended (or the wait did) without a signature.
    #[error("request {id} is {status}, not signed {error}")]
    NotSigned {
        /// The request.
        id: String,
        /// Its state.
        status: String,
        /// Its error, if any.
        error: String,
    },
}

/// The transaction rules in the JSON file `path`, if one is named.
fn read_rules(path: Option<&Path>) -> Result<Option<PolicyRules>, WalletCliError> {
    let Some(p) = path else {
        return Ok(None);
    };
    serde_json::from_str(&read(p)?)
        .map(Some)
        .map_err(|e| WalletCliError::Rules {
            path: p.to_path_buf(),
            reason: e.to_string(),
        })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, WalletCliError> {
    std::fs::read(path).map_err(|source| WalletCliError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, WalletCliError> {
    std::fs::read_to_string(path).map_err(|source| WalletCliError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The group named by `args`: the fingerprints given, then those of the chain files. The
/// server checks their form and refuses duplicates (`invalid_group`).
pub fn group_of(args: &CreateArgs) -> Result<Vec<String>, WalletCliError> {
    named_group(&args.group, &args.group_certs)
}

/// The fingerprints `group`, then those read from the chain files `certs`: 1 to
/// [`MAX_GROUP`] of them.
fn named_group(group: &[String], certs: &[PathBuf]) -> Result<Vec<String>, WalletCliError> {
    let mut group = group.to_vec();
    for path in certs {
        let fp = custos_pki::chain_key_fingerprint(&read(path)?).map_err(|source| {
            WalletCliError::Cert {
                path: path.clone(),
                source,
            }
        })?;
        group.push(hex::encode(fp));
    }
    if group.is_empty() || group.len() > MAX_GROUP {
        return Err(WalletCliError::GroupSize(group.len()));
    }
    Ok(group)
}

/// Runs `custos wallet create`: records the request and prints what the admins will be asked
/// to approve.
pub async fn create(args: &CreateArgs, out: &mut dyn Write) -> Result<RequestView, WalletCliError> {
    let group = group_of(args)?;
    let rules = read_rules(args.rules.as_deref())?;
    let client = client(&args.api, &args.token, args.api_root_ca.as_deref())?;
    let view = client
        .create_wallet(&CreateWalletBody {
            rules,
            cluster: args.cluster.clone(),
            quorum: args.quorum,
            group,
            executor: args.executor.clone(),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await?;
    show_request(&view, out)?;
    Ok(view)
}

/// A client of the server at `api`, trusting `root_ca` (PEM file) if given.
fn client(api: &str, token: &str, root_ca: Option<&Path>) -> Result<CloudClient, WalletCliError> {
    Ok(match root_ca {
        Some(p) => CloudClient::with_root_pem(api, token, &read(p)?)?,
        None => CloudClient::new(api, token)?,
    })
}

/// Prints a recorded request as its approvers will see it.
fn show_request(view: &RequestView, out: &mut dyn Write) -> Result<(), WalletCliError> {
    let shown = writeln!(
        out,
        "request {} recorded, waiting for {} approvals:\n{}\napprove with: custos approve \
         --request {}",
        view.id,
        view.quorum,
        custos_cloud_api::review::describe(view),
        view.id
    );
    shown.map_err(|source| WalletCliError::Io {
        path: "stdout".into(),
        source,
    })
}
