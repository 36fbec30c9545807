//! Counting approvals: one implementation for the TEE, the bridge, the cloud server and the
//! governance log, so that every side agrees on who approved.

use custos_pki::webauthn::{Assertion, AssertionFault};
use custos_pki::{validity_window, AdminCache, PkiError, TrustRoot, VerifiedAdmin};
use sha2::{Digest, Sha256};

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

fn assertion_fault(f: AssertionFault) -> ApprovalFault {
    match f {
        AssertionFault::NotAPasskey => ApprovalFault::NotAPasskey,
        AssertionFault::WrongType => ApprovalFault::WrongType,
        AssertionFault::WrongChallenge => ApprovalFault::WrongChallenge,
        AssertionFault::WrongOrigin => ApprovalFault::WrongOrigin,
        AssertionFault::CrossOrigin => ApprovalFault::CrossOrigin,
        AssertionFault::WrongRpId => ApprovalFault::WrongRpId,
        AssertionFault::UserNotPresent => ApprovalFault::UserNotPresent,
        AssertionFault::UserNotVerified => ApprovalFault::UserNotVerified,
        AssertionFault::BadSignature => ApprovalFault::BadSignature,
        // Malformed, and any fault a later custos-pki names.
        _ => ApprovalFault::Malformed,
    }
}

/// Checks that `a` signs `message` for its admin `v`, whose chain the caller verified: a
/// passkey certificate approves only through an assertion made on its console for this
/// message, a key-file certificate only with its signature over the message itself. Returns
/// the authenticator's signature counter for an assertion, for the caller to keep
/// ([`PasskeyUse`]).
pub fn check_signature(
    v: &VerifiedAdmin,
    message: &[u8],
    a: &Approval,
) -> Result<Option<u32>, (ApprovalFault, String)> {
    match (&v.passkey, &a.webauthn) {
        (_, Some(w)) => v
            .verify_assertion(
                message,
                &Assertion {
                    authenticator_data: &w.authenticator_data,
                    client_data_json: &w.client_data_json,
                    signature: &a.signature,
                },
            )
            .map(Some)
            .map_err(|e| (assertion_fault(e.fault), e.to_string())),
        (Some(binding), None) => Err((
            ApprovalFault::AssertionMissing,
            format!(
                "admin {:?} holds a passkey for {}: it approves only through an assertion",
                v.identity.name, binding.origin
            ),
        )),
        (None, None) => v
            .verify_signature(message, &a.signature)
            .map(|()| None)
            .map_err(|e| (fault_of(&e), e.to_string())),
    }
}

fn verified<'c>(
    cache: &'c mut AdminCache,
    root: &TrustRoot,
    message: &[u8],
    a: &Approval,
    at: ApprovalTime,
) -> Result<(&'c VerifiedAdmin, Option<u32>), (ApprovalFault, String)> {
    let pki = |e: PkiError| (fault_of(&e), e.to_string());
    let t = check_time(a, at).map_err(pki)?;
    let v = cache
        .verify(root, &a.admin_cert, &a.admin_ca, t)
        .map_err(pki)?;
    let counter = check_signature(v, message, a)?;
    Ok((v, counter))
}

/// A passkey assertion that counted: the TEE keeps each passkey's counter so that an
/// assertion whose counter did not grow (a replay, a cloned authenticator) is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyUse {
    /// Position of the approval in the request's list.
    pub index: u32,
    /// The passkey: the admin's certified key fingerprint.
    pub key: [u8; 32],
    /// The admin's certificate name.
    pub admin: String,
    /// SHA-256 of the approved message (the assertion's challenge).
    pub challenge: [u8; 32],
    /// The authenticator's signature counter (0: it keeps none).
    pub counter: u32,
}

/// What [`verify_approvals`] counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The counted admins as (key fingerprint, certificate name), in approval order.
    pub admins: Vec<([u8; 32], String)>,
    /// Every passkey assertion among the approvals, counted admin or not.
    pub passkeys: Vec<PasskeyUse>,
}

/// Verifies every approval of `message` and counts distinct admins against `who`; returns
/// the counted admins and the passkey assertions' counters ([`Counted`]).
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
) -> Result<Counted, TeeError> {
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
    let mut passkeys = Vec::new();
    let challenge: [u8; 32] = Sha256::digest(message).into();
    for (index, a) in approvals.iter().enumerate() {
        let index = index as u32;
        let (id, counter) = verified(cache, root, message, a, at)
            .map(|(v, counter)| (v.identity.clone(), counter))
            .map_err(|(fault, detail)| TeeError::ApprovalRejected {
                index,
                fault,
                detail,
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
        if let Some(counter) = counter {
            passkeys.push(PasskeyUse {
                index,
                key: id.key,
                admin: id.name.clone(),
                challenge,
                counter,
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
    Ok(Counted {
        admins: counted
            .into_iter()
            .map(|(key, _, name)| (key, name))
            .collect(),
        passkeys,
    })
}

#[cfg(test)]
mod tests;
