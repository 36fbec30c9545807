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
    /// Admins of several groups, each (group, quorum) met by its own members: a transaction
    /// above an approval tier that names another group than the key's (the key's group at
    /// its quorum, and that group at the tier's). An admin outside every group refuses the
    /// request; one in two groups counts in both (policies keep a tier's group apart from
    /// the key's). A quorum of 0 lets a group's admins approve without asking any.
    Groups(&'a [(Vec<[u8; 32]>, u8)]),
}

impl Approvers<'_> {
    fn admits(&self, key: &[u8; 32]) -> bool {
        match self {
            Approvers::Group { group, .. } => group.contains(key),
            Approvers::AnyAdmin { .. } => true,
            Approvers::Groups(groups) => groups.iter().any(|(g, _)| g.contains(key)),
        }
    }

    /// The first (required, approved) not met among the distinct admins `counted`.
    fn unmet(&self, counted: &[[u8; 32]]) -> Option<(u8, u8)> {
        let n = |len: usize| len.min(u8::MAX as usize) as u8;
        match self {
            Approvers::Group { quorum, .. } | Approvers::AnyAdmin { quorum } => {
                let approved = n(counted.len());
                (approved < (*quorum).max(1)).then_some((*quorum, approved))
            }
            // Some group must be asked for something: admitting alone authorises nothing.
            Approvers::Groups(groups) if groups.iter().all(|(_, q)| *q == 0) => Some((1, 0)),
            Approvers::Groups(groups) => groups.iter().find_map(|(g, quorum)| {
                let approved = n(counted.iter().filter(|k| g.contains(k)).count());
                (approved < *quorum).then_some((*quorum, approved))
            }),
        }
    }
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
        if !who.admits(&id.key) {
            return Err(TeeError::ApproverNotInGroup {
                index,
                admin: id.name,
                key_fingerprint: id.key,
            });
        }
        let any = matches!(who, Approvers::AnyAdmin { .. });
        let seen = counted
            .iter()
            .any(|(key, subject, _)| *key == id.key || (any && *subject == id.subject));
        if !seen {
            counted.push((id.key, id.subject, id.name));
        }
    }
    let keys: Vec<[u8; 32]> = counted.iter().map(|(key, _, _)| *key).collect();
    if let Some((required, approved)) = who.unmet(&keys) {
        return Err(TeeError::QuorumNotMet { required, approved });
    }
    Ok(counted
        .into_iter()
        .map(|(key, _, name)| (key, name))
        .collect())
}

#[cfg(test)]
mod tests;
