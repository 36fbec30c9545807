//! `custos approve`: an admin reviews a pending request and signs its approval.
//!
//! The approval message is recomputed here from the request's fields with the TEE core's
//! encoder; the server's copy is only compared against it (a server showing one thing and
//! asking to sign another is refused). What will be signed is printed in full, and the
//! admin confirms it unless `--yes`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use custos_pki::{AdminSigner, PkiDir};

use crate::api::{RequestKind, RequestQuery, RequestStatus, RequestView};
use crate::approval::{approval_message, sign_approval};
use crate::client::{ClientError, CloudClient};

/// Options of `custos approve`.
#[derive(Clone, Debug)]
pub struct ApproveArgs {
    /// Base URL of the cloud server.
    pub api: String,
    /// API token.
    pub token: String,
    /// Root certificate (PEM) to trust for HTTPS, if not a public one.
    pub api_root_ca: Option<PathBuf>,
    /// PKI directory holding `admins/<admin>.{crt,key}` and `admin-ca.crt`.
    pub pki: PathBuf,
    /// Admin name.
    pub admin: String,
    /// Request to approve; `None` lists pending requests.
    pub request: Option<String>,
    /// Skip the confirmation prompt.
    pub yes: bool,
}

/// Failures of `custos approve`.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The admin's key or certificate could not be loaded.
    #[error(transparent)]
    Pki(#[from] custos_pki::PkiError),
    /// Terminal I/O.
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    /// The request cannot be approved as shown.
    #[error("{0}")]
    Refused(String),
}

fn expiry_text(expires_at: u64) -> String {
    let now = custos_pki::clock::now_unix();
    if expires_at <= now {
        format!("{expires_at} (Unix time; already passed)")
    } else {
        let left = expires_at - now;
        format!(
            "{expires_at} (Unix time; in {}h{:02}m)",
            left / 3600,
            left % 3600 / 60
        )
    }
}

/// Checks that `view` is the request asked for and that the server's approval message is
/// the one recomputed from its fields; returns that message.
pub fn checked_message(view: &RequestView, requested_id: &str) -> Result<Vec<u8>, ApproveError> {
    if !view.id.eq_ignore_ascii_case(requested_id) {
        return Err(ApproveError::Refused(format!(
            "asked for request {requested_id}, the server answered with {}",
            view.id
        )));
    }
    let message = approval_message(view)
        .map_err(|e| ApproveError::Refused(format!("request fields are unusable: {e}")))?;
    if hex::encode(&message) != view.approval_message.to_ascii_lowercase() {
        return Err(ApproveError::Refused(
            "the server's approval message differs from the one computed from the request's \
             fields; refusing to sign"
                .into(),
        ));
    }
    Ok(message)
}

/// What the admin is about to approve, field by field.
pub fn describe(view: &RequestView) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: &str| s.push_str(&format!("  {k:<14}{v}\n"));
    line(&mut s, "request", &view.id);
    line(
        &mut s,
        "kind",
        match view.kind {
            RequestKind::CreateWallet => "create a new wallet",
            RequestKind::ImportWallet => "import a wallet",
            RequestKind::Sign => "sign a digest",
            RequestKind::ImportThresholdKey => "import a share of a threshold key",
            RequestKind::ThresholdSign => "sign a digest with a threshold key",
            RequestKind::CreateThresholdKey => {
                "create a threshold key by distributed key generation"
            }
        },
    );
    if view.kind == RequestKind::ThresholdSign {
        line(
            &mut s,
            "cluster",
            &format!("{} (any t of the key's clusters)", view.cluster),
        );
    } else if view.kind == RequestKind::CreateThresholdKey {
        line(
            &mut s,
            "cluster",
            &format!("{} (every cluster of the key)", view.cluster),
        );
    } else {
        line(&mut s, "cluster", &view.cluster);
    }
    if let Some(w) = &view.root_id {
        let label = if view.kind.is_threshold() {
            "threshold key"
        } else {
            "wallet"
        };
        line(&mut s, label, w);
    }
    if let Some(i) = view.share_index {
        line(&mut s, "share", &i.to_string());
    }
    if let (Some(t), Some(clusters)) = (view.threshold, &view.clusters) {
        line(
            &mut s,
            "threshold",
            &format!("{t} of {} (any {t} clusters sign)", clusters.len()),
        );
        let shares: Vec<String> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i}: {c}"))
            .collect();
        line(&mut s, "shares", &shares.join(", "));
    }
    if let Some(hd) = view.hd {
        line(
            &mut s,
            "hd",
            if hd {
                "yes (non-hardened child keys)"
            } else {
                "no (root key only)"
            },
        );
    }
    if let Some(p) = &view.path {
        line(&mut s, "path", p);
    }
    if let Some(d) = &view.digest {
        line(&mut s, "digest", d);
    }
    if let Some(n) = &view.target_node {
        // Threshold signing keeps the caller's preferred clusters there; they are not
        // part of what is approved.
        let label = if view.kind == RequestKind::ThresholdSign {
            "preferred"
        } else {
            "sealed to"
        };
        line(&mut s, label, n);
    }
    line(&mut s, "quorum", &view.quorum.to_string());
    let approvers: Vec<&str> = view.approvals.iter().map(|a| a.admin.as_str()).collect();
    line(
        &mut s,
        "approved by",
        &if approvers.is_empty() {
            "nobody yet".to_string()
        } else {
            approvers.join(", ")
        },
    );
    line(&mut s, "expires", &expiry_text(view.expires_at));
    line(&mut s, "requested", &view.created_by);
    s
}

/// Runs `custos approve`: lists pending requests, or reviews, confirms (reading `input`),
/// signs and posts one approval, writing to `out`.
pub async fn approve(
    args: &ApproveArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<Option<RequestView>, ApproveError> {
    let client = match &args.api_root_ca {
        Some(p) => {
            CloudClient::with_root_pem(&args.api, &args.token, &std::fs::read_to_string(p)?)?
        }
        None => CloudClient::new(&args.api, &args.token)?,
    };
    let Some(id) = &args.request else {
        let list = client
            .requests(&RequestQuery {
                status: Some(RequestStatus::PendingApproval),
                kind: None,
                limit: Some(100),
            })
            .await?;
        if list.requests.is_empty() {
            writeln!(out, "no request is waiting for approval")?;
        }
        for r in &list.requests {
            writeln!(
                out,
                "{}  {:<20} {:<11} {}/{} approvals  expires {}",
                r.id,
                r.kind.as_str(),
                r.cluster,
                r.approvals.len(),
                r.quorum,
                r.expires_at
            )?;
        }
        return Ok(None);
    };
    let view = client.request(id).await?;
    if view.status != RequestStatus::PendingApproval {
        return Err(ApproveError::Refused(format!(
            "request {} is {}, not waiting for approval",
            view.id,
            view.status.as_str()
        )));
    }
    let message = checked_message(&view, id)?;
    // Load the key before asking, so a typo in --admin fails before the prompt.
    let signer = AdminSigner::load(&PkiDir::new(&args.pki), &args.admin)?;
    writeln!(
        out,
        "You ({}) are asked to approve:\n{}",
        args.admin,
        describe(&view)
    )?;
    writeln!(
        out,
        "  signing       {} bytes, SHA-256 {}",
        message.len(),
        {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&message))
        }
    )?;
    if !args.yes {
        write!(out, "Approve? Type 'yes' to sign: ")?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if answer.trim() != "yes" {
            return Err(ApproveError::Refused("not approved".into()));
        }
    }
    let approval = sign_approval(&signer, &message);
    let updated = client.approve(&view.id, &approval).await?;
    writeln!(
        out,
        "request {}: {} ({}/{} approvals)",
        updated.id,
        updated.status.as_str(),
        updated.approvals.len(),
        updated.quorum
    )?;
    if let Some(e) = &updated.error {
        writeln!(out, "  {}: {}", e.code, e.message)?;
    }
    if let Some(r) = &updated.result {
        writeln!(
            out,
            "  result: {}",
            serde_json::to_string(r).unwrap_or_default()
        )?;
    }
    Ok(Some(updated))
}
