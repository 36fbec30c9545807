//! `custos wallet policy`: shows a wallet's (`--root`) or threshold key's (`--threshold-key`)
//! approver group as a node's TEE holds it (`--show`), or records a request that replaces it
//! by a new group and quorum. A quorum of the group **in force** approves that request with
//! `custos approve` (a threshold key's once for all its clusters); an admin outside it is
//! refused by name. A threshold key's quorum is part of the key: `--quorum` must repeat it.

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
    #[arg(
        long = "root",
        value_name = "ROOT_ID",
        required_unless_present = "threshold_key",
        conflicts_with = "threshold_key"
    )]
    pub root: Option<String>,
    /// Instead of a wallet, the threshold key (hex of its 33-byte joint public key): its
    /// group changes on every cluster holding a share.
    #[arg(long = "threshold-key", value_name = "KEY_ID")]
    pub threshold_key: Option<String>,
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
    /// The wallet's new transaction rules, a JSON file (`PolicyRules`; `{}`: none, raw
    /// digests signed); without it the rules in force are kept.
    #[arg(long, conflicts_with = "show")]
    pub rules: Option<PathBuf>,
}

/// What `custos wallet policy` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// `--show`: the group in force.
    Shown(Box<KeyPolicyView>),
    /// The change request recorded.
    Proposed(Box<RequestView>),
}

/// Runs `custos wallet policy`.
pub async fn run(args: &PolicyArgs, out: &mut dyn Write) -> Result<PolicyOutcome, WalletCliError> {
    let client = client(&args.api, &args.token, args.api_root_ca.as_deref())?;
    // clap requires exactly one of them; a caller building the arguments may name neither.
    let (key, threshold) = match (&args.root, &args.threshold_key) {
        (Some(root), None) => (root, false),
        (None, Some(key)) => (key, true),
        _ => return Err(WalletCliError::PolicyKey),
    };
    if args.show {
        let policy = if threshold {
            client.threshold_key_policy(key).await?
        } else {
            client.wallet_policy(key).await?
        };
        show_policy(&policy, threshold, out)?;
        return Ok(PolicyOutcome::Shown(Box::new(policy)));
    }
    // Checked before any call, so a mistyped command costs nothing.
    let quorum = args.quorum.ok_or(WalletCliError::NoQuorum)?;
    let group = named_group(&args.group, &args.group_certs)?;
    let body = KeyPolicyBody {
        rules: super::read_rules(args.rules.as_deref())?,
        group,
        quorum,
        request_id: None,
        expires_at: None,
    };
    let view = if threshold {
        client.set_threshold_key_policy(key, &body).await?
    } else {
        client.set_wallet_policy(key, &body).await?
    };
    show_request(&view, out)?;
    Ok(PolicyOutcome::Proposed(Box::new(view)))
}

fn show_policy(
    p: &KeyPolicyView,
    threshold: bool,
    out: &mut dyn Write,
) -> Result<(), WalletCliError> {
    let what = if threshold { "threshold key" } else { "wallet" };
    let mut text = format!(
        "{what} {}: policy version {} (hash {}, reported by node {})\n",
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
    if let Some(anchors) = &p.anchors {
        text.push_str(
            "co-signers of each share's cluster count only as members of its governance log \
             (genesis id, by share):\n",
        );
        for (i, a) in anchors.iter().enumerate() {
            text.push_str(&format!("  {i}: {a}\n"));
        }
    }
    out.write_all(text.as_bytes())
        .map_err(|source| WalletCliError::Io {
            path: "stdout".into(),
            source,
        })
}
