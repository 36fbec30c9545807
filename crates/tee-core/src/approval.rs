//! Verification unit (patent FIG. 3): admin approvals and quorum.
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action ([`custos_wire::approval::Action::message`], the same encoder the admin tooling
//! signs with). This unit checks each approval's certificate chain and signature and counts
//! distinct admins against the key's quorum.

use custos_pki::{AdminCache, PkiError, TrustRoot};

use custos_wire::approval::{Action, Approval, MAX_APPROVAL_LIFETIME_SECS};
use custos_wire::protocol::{ApprovalFault, RequestMeta, TeeError, MAX_APPROVALS};

fn fault_of(e: &PkiError) -> ApprovalFault {
    match e {
        PkiError::NotValidNow { .. } => ApprovalFault::CertificateNotValidNow,
        PkiError::BadSignature(_) => ApprovalFault::BadSignature,
        PkiError::Malformed { .. } => ApprovalFault::Malformed,
        _ => ApprovalFault::UntrustedCertificate,
    }
}

/// Checks expiry, every approval, and that at least `required` distinct admins approved.
/// Any invalid approval refuses the whole request, so a mistake is never silently outvoted.
#[allow(clippy::too_many_arguments)]
pub fn check_quorum(
    cache: &mut AdminCache,
    root: &TrustRoot,
    cluster: &str,
    now: u64,
    meta: &RequestMeta,
    action: &Action<'_>,
    approvals: &[Approval],
    required: u8,
) -> Result<Vec<String>, TeeError> {
    if now > meta.expires_at {
        return Err(TeeError::RequestExpired {
            expires_at: meta.expires_at,
            now,
        });
    }
    if meta.expires_at > now.saturating_add(MAX_APPROVAL_LIFETIME_SECS) {
        return Err(TeeError::InvalidRequest(format!(
            "expiry {} is more than {MAX_APPROVAL_LIFETIME_SECS} s ahead",
            meta.expires_at
        )));
    }
    if approvals.is_empty() {
        return Err(TeeError::ApprovalMissing);
    }
    if approvals.len() > MAX_APPROVALS {
        return Err(TeeError::InvalidRequest(format!(
            "{} approvals, at most {MAX_APPROVALS}",
            approvals.len()
        )));
    }
    let message = action.message(cluster, meta);
    let mut admins: Vec<custos_pki::AdminIdentity> = Vec::new();
    for (index, a) in approvals.iter().enumerate() {
        let id = cache
            .verify(root, &a.admin_cert, &a.admin_ca, now)
            .and_then(|v| {
                v.verify_signature(&message, &a.signature)
                    .map(|_| v.identity.clone())
            })
            .map_err(|e| TeeError::ApprovalRejected {
                index: index as u32,
                fault: fault_of(&e),
                detail: e.to_string(),
            })?;
        // An admin is its certified key: a second certificate of a counted key, under any
        // name, adds nothing. Until per-key approver groups name keys (issue 12, item 3), a
        // new key under a counted subject adds nothing either, so one person re-certified
        // with a new key is still one approver.
        if !admins
            .iter()
            .any(|a| a.key == id.key || a.subject == id.subject)
        {
            admins.push(id);
        }
    }
    let approved = admins.len().min(u8::MAX as usize) as u8;
    if approved < required.max(1) {
        return Err(TeeError::QuorumNotMet { required, approved });
    }
    Ok(admins.into_iter().map(|a| a.name).collect())
}
