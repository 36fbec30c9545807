//! `custos wallet policy`: shows a wallet's approver group as a node's TEE holds it
//! (`--show`), or records a request that replaces it by a new group and quorum. A quorum of
//! the group **in force** approves that request with `custos approve`; an admin outside it
//! is refused by name.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use custos_cloud_api::{KeyPolicyBody, KeyPolicyView, RequestView};

use super::{client, named_group, show_request, WalletCliError};

/// Options of `custos wallet policy`.
#[derive(Clone, Debug, Args)]
pub struct PolicyArgs {
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token.
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long)]
    pub api_root_ca: Option<PathBuf>,
    /// The wallet (hex of its 33-byte root public key).
    #[arg(long = "root", value_name = "ROOT_ID")]
    pub root: String,
    /// Show the group in force instead of changing it.
    #[arg(long, conflicts_with_all = ["group", "group_certs", "quorum"])]
    pub show: bool,
    /// An admin of the new group by key fingerprint (64 hex characters); repeat for each.
    #[arg(long = "group", value_name = "FP")]
    pub group: Vec<String>,
    /// An admin of the new group by its certificate chain file (admin certificate first);
    /// repeat for each. Combined with --group.
    #[arg(long = "group-cert", value_name = "FILE")]
    pub group_certs: Vec<PathBuf>,
    /// Admins of the new group needed from then on.
    #[arg(long)]
    pub quorum: Option<u8>,
}

/// What `custos wallet policy` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// `--show`: the group in force.
    Shown(KeyPolicyView),
    /// The change request recorded.
    Proposed(Box<RequestView>),
}

/// Runs `custos wallet policy`.
pub async fn run(args: &PolicyArgs, out: &mut dyn Write) -> Result<PolicyOutcome, WalletCliError> {
    let client = client(&args.api, &args.token, args.api_root_ca.as_deref())?;
    if args.show {
        let policy = client.wallet_policy(&args.root).await?;
        show_policy(&policy, out)?;
        return Ok(PolicyOutcome::Shown(policy));
    }
    // Checked before any call, so a mistyped command costs nothing.
    let quorum = args.quorum.ok_or(WalletCliError::NoQuorum)?;
    let group = named_group(&args.group, &args.group_certs)?;
    let view = client
        .set_wallet_policy(
            &args.root,
            &KeyPolicyBody {
                group,
                quorum,
                request_id: None,
                expires_at: None,
            },
        )
        .await?;
    show_request(&view, out)?;
    Ok(PolicyOutcome::Proposed(Box::new(view)))
}

fn show_policy(p: &KeyPolicyView, out: &mut dyn Write) -> Result<(), WalletCliError> {
    let mut text = format!(
        "wallet {}: policy version {} (hash {}, reported by node {})\n",
        p.root_id, p.version, p.hash, p.node
    );
    if p.group.is_empty() {
        text.push_str(&format!(
            "{} approvals; no group named (sealed before approver groups)\n",
            p.quorum
        ));
    } else {
        text.push_str(&format!(
            "{} of these {} admins (key fingerprints) approve every use:\n",
            p.quorum,
            p.group.len()
        ));
        for fp in &p.group {
            text.push_str(&format!("  {fp}\n"));
        }
    }
    out.write_all(text.as_bytes())
        .map_err(|source| WalletCliError::Io {
            path: "stdout".into(),
            source,
        })
}
