//! Verification unit (patent FIG. 3): admin approvals and quorum.
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action ([`custos_wire::approval::Action::message`], the same encoder the admin tooling
//! signs with). This unit checks each approval's certificate chain and signature and counts
//! distinct admins against the key's quorum.

use custos_pki::{AdminCache, TrustRoot};

use custos_wire::approval::{
    verify_approvals, Action, Approval, ApprovalTime, Approvers, PasskeyUse,
    MAX_APPROVAL_LIFETIME_SECS,
};
use custos_wire::policy::{ApprovalNeed, KeyPolicy};
use custos_wire::protocol::{RequestMeta, TeeError};

/// Checks expiry, every approval, and that `who` approved. Any invalid approval refuses the
/// whole request, so a mistake is never silently outvoted. The counting itself is
/// [`verify_approvals`], shared with every other verifier. Returns the passkey assertions
/// among the approvals, whose counters the caller checks against its own records.
#[allow(clippy::too_many_arguments)]
pub fn check_quorum(
    cache: &mut AdminCache,
    root: &TrustRoot,
    cluster: &str,
    now: u64,
    meta: &RequestMeta,
    action: &Action<'_>,
    approvals: &[Approval],
    who: &Approvers<'_>,
    revoked: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<Vec<PasskeyUse>, TeeError> {
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
        who,
        revoked,
    )?;
    Ok(counted.passkeys)
}

/// Whose approvals count for one request, owned (it is read from a key the core holds
/// while the core's admin cache is borrowed to check it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// `quorum` distinct admins of `group` (admin key fingerprints).
    Group {
        /// The group.
        group: Vec<[u8; 32]>,
        /// Distinct admins of it needed.
        quorum: u8,
    },
    /// `quorum` distinct admins with any Admin-CA certificate (keys without a group, on an
    /// ungoverned node).
    AnyAdmin {
        /// Distinct admins needed.
        quorum: u8,
    },
    /// Each (group, quorum) met by its own admins, and nobody outside them
    /// ([`Approvers::Groups`]).
    Groups(Vec<(Vec<[u8; 32]>, u8)>),
}

impl Who {
    /// The borrowed form the counting takes.
    pub fn approvers(&self) -> Approvers<'_> {
        match self {
            Who::Group { group, quorum } => Approvers::Group {
                group,
                quorum: *quorum,
            },
            Who::AnyAdmin { quorum } => Approvers::AnyAdmin { quorum: *quorum },
            Who::Groups(groups) => Approvers::Groups(groups),
        }
    }

    /// Whose approvals count for a key sealed with `policy`: its group at its quorum; a key
    /// without one (sealed before groups existed) is approved by `quorum` admins, which
    /// `approve_in_by` narrows to the cluster's governors once the cluster is governed.
    pub fn of(policy: Option<&KeyPolicy>, quorum: u8) -> Who {
        match policy {
            Some(p) => Who::Group {
                group: p.group.clone(),
                quorum: p.quorum,
            },
            None => Who::AnyAdmin { quorum },
        }
    }

    /// `need` of a key whose group is `group`: the group alone when no tier of another
    /// group applies.
    pub fn of_need(group: &[[u8; 32]], need: &ApprovalNeed) -> Who {
        if need.groups.is_empty() {
            return Who::Group {
                group: group.to_vec(),
                quorum: need.quorum,
            };
        }
        let tiers = need.groups.iter().map(|t| (t.group.clone(), t.quorum));
        Who::Groups(
            std::iter::once((group.to_vec(), need.quorum))
                .chain(tiers)
                .collect(),
        )
    }
}
