//! Verification unit (patent FIG. 3): admin approvals and quorum.
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action ([`custos_wire::approval::Action::message`], the same encoder the admin tooling
//! signs with). This unit checks each approval's certificate chain and signature and counts
//! distinct admins against the key's quorum.

use custos_pki::{AdminCache, TrustRoot};

use custos_wire::approval::{
    verify_approvals, Action, Approval, ApprovalTime, Approvers, MAX_APPROVAL_LIFETIME_SECS,
};
use custos_wire::protocol::{RequestMeta, TeeError};

/// Checks expiry, every approval, and that at least `required` distinct admins approved
/// (any Admin-CA admin: the legacy rule until keys carry approver groups). Any invalid
/// approval refuses the whole request, so a mistake is never silently outvoted. The counting
/// itself is [`verify_approvals`], shared with every other verifier.
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
    revoked: &dyn Fn(&[u8; 32]) -> bool,
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
    let message = action.message(cluster, meta);
    let counted = verify_approvals(
        cache,
        root,
        &message,
        approvals,
        ApprovalTime::Now(now),
        &Approvers::AnyAdmin { quorum: required },
        revoked,
    )?;
    Ok(counted.into_iter().map(|(_, name)| name).collect())
}
