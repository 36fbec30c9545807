//! Counting approvals: one implementation for the TEE, the bridge, the cloud server and the
//! governance log, so that every side agrees on who approved.

use custos_pki::{validity_window, AdminCache, PkiError, TrustRoot, VerifiedAdmin};

use super::{Approval, MAX_APPROVAL_LIFETIME_SECS};
use crate::protocol::{ApprovalFault, TeeError, MAX_APPROVALS};

/// Whose approvals count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approvers<'a> {
    /// `quorum` distinct admins of `group` (admin key fingerprints): a key's policy, a new
    /// key's policy, or a cluster's governors.
    Group {
        /// Admin key fingerprints allowed to approve.
        group: &'a [[u8; 32]],
        /// Distinct admins of the group needed.
        quorum: u8,
    },
    /// `quorum` distinct admins with any Admin-CA certificate: legacy only (an ungoverned TEE,
    /// keys sealed before policies existed).
    AnyAdmin {
        /// Distinct admins needed.
        quorum: u8,
    },
}

/// The time at which approval certificates must be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalTime {
    /// Now (Unix seconds): a request being executed.
    Now(u64),
    /// Some instant of the approval window that ends at `expires_at`: a record approved in the
    /// past (a governance entry replayed to a joining node). Each certificate must be valid at
    /// `t = min(expires_at, its notAfter)`, with `t` no earlier than `expires_at -`
    /// [`MAX_APPROVAL_LIFETIME_SECS`], the earliest moment the approval can have been made.
    Window {
        /// The approvals' expiry.
        expires_at: u64,
    },
}

fn fault_of(e: &PkiError) -> ApprovalFault {
    match e {
        PkiError::NotValidNow { .. } => ApprovalFault::CertificateNotValidNow,
        PkiError::BadSignature(_) => ApprovalFault::BadSignature,
        PkiError::Malformed { .. } => ApprovalFault::Malformed,
        _ => ApprovalFault::UntrustedCertificate,
    }
}

/// The instant `a`'s certificates are checked at.
fn check_time(a: &Approval, at: ApprovalTime) -> Result<u64, PkiError> {
    match at {
        ApprovalTime::Now(now) => Ok(now),
        ApprovalTime::Window { expires_at } => {
            // Parsed only for its dates here; the chain itself is verified at the result.
            let (_, not_after) = validity_window(&[&a.admin_cert, &a.admin_ca])?;
            let t = expires_at.min(not_after);
            let earliest = expires_at.saturating_sub(MAX_APPROVAL_LIFETIME_SECS);
            if t < earliest {
                return Err(PkiError::NotValidNow {
                    what: "admin",
                    reason: format!(
                        "expired at {not_after}, before the approval window {earliest}..={expires_at}"
                    ),
                });
            }
            Ok(t)
        }
    }
}

fn verified<'c>(
    cache: &'c mut AdminCache,
    root: &TrustRoot,
    message: &[u8],
    a: &Approval,
    at: ApprovalTime,
) -> Result<&'c VerifiedAdmin, PkiError> {
    let t = check_time(a, at)?;
    let v = cache.verify(root, &a.admin_cert, &a.admin_ca, t)?;
    v.verify_signature(message, &a.signature)?;
    Ok(v)
}

/// Verifies every approval of `message` and counts distinct admins against `who`; returns
/// the counted admins as (key fingerprint, certificate name), in approval order.
///
/// Distinct admins are distinct certified keys: a second certificate of a counted key adds
/// nothing. For [`Approvers::AnyAdmin`] a new key under a counted subject adds nothing either
/// (no group names keys there, so one person re-certified with a new key stays one approver).
///
/// Any approval that does not count refuses the whole request, by name, so a mistake is never
/// silently outvoted: [`TeeError::ApprovalRejected`] (certificate or signature),
/// [`TeeError::AdminRevoked`] (`revoked` says so of its key) or
/// [`TeeError::ApproverNotInGroup`].
pub fn verify_approvals(
    cache: &mut AdminCache,
    root: &TrustRoot,
    message: &[u8],
    approvals: &[Approval],
    at: ApprovalTime,
    who: &Approvers<'_>,
    revoked: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<Vec<([u8; 32], String)>, TeeError> {
    if approvals.is_empty() {
        return Err(TeeError::ApprovalMissing);
    }
    if approvals.len() > MAX_APPROVALS {
        return Err(TeeError::InvalidRequest(format!(
            "{} approvals, at most {MAX_APPROVALS}",
            approvals.len()
        )));
    }
    // (key fingerprint, subject, name) of each admin counted.
    let mut counted: Vec<([u8; 32], Vec<u8>, String)> = Vec::new();
    for (index, a) in approvals.iter().enumerate() {
        let index = index as u32;
        let id = verified(cache, root, message, a, at)
            .map(|v| v.identity.clone())
            .map_err(|e| TeeError::ApprovalRejected {
                index,
                fault: fault_of(&e),
                detail: e.to_string(),
            })?;
        if revoked(&id.key) {
            return Err(TeeError::AdminRevoked {
                index,
                admin: id.name,
                key_fingerprint: id.key,
            });
        }
        if let Approvers::Group { group, .. } = who {
            if !group.contains(&id.key) {
                return Err(TeeError::ApproverNotInGroup {
                    index,
                    admin: id.name,
                    key_fingerprint: id.key,
                });
            }
        }
        let any = matches!(who, Approvers::AnyAdmin { .. });
        let seen = counted
            .iter()
            .any(|(key, subject, _)| *key == id.key || (any && *subject == id.subject));
        if !seen {
            counted.push((id.key, id.subject, id.name));
        }
    }
    let required = match who {
        Approvers::Group { quorum, .. } | Approvers::AnyAdmin { quorum } => *quorum,
    };
    let approved = counted.len().min(u8::MAX as usize) as u8;
    if approved < required.max(1) {
        return Err(TeeError::QuorumNotMet { required, approved });
    }
    Ok(counted
        .into_iter()
        .map(|(key, _, name)| (key, name))
        .collect())
}

#[cfg(test)]
mod tests;
