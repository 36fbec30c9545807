//! Structural checks of a change (limits, canonical lists), before any certificate or
//! signature is looked at.

use super::{
    GovChange, GovError, MeasurementPolicy, MemberRecord, MAX_EVIDENCE, MAX_GOVERNORS, MAX_MEMBERS,
    MAX_REASON, MAX_REVOKED,
};
use crate::policy::{check_fingerprint_set, check_rules, PolicyError, RULE_MEASUREMENT_POLICY};
use crate::protocol::MAX_QUORUM;

fn set(what: &'static str, fps: &[[u8; 32]], max: usize) -> Result<(), GovError> {
    if fps.len() > max {
        return Err(GovError::TooMany {
            what,
            len: fps.len(),
            max,
        });
    }
    if fps.is_empty() {
        return Ok(());
    }
    // Sorted and distinct: one canonical encoding per set. Its own limit was checked above.
    match check_fingerprint_set(fps) {
        Err(PolicyError::GroupTooLarge { .. }) | Ok(()) => Ok(()),
        Err(error) => Err(GovError::BadSet { what, error }),
    }
}

fn governors(fps: &[[u8; 32]], quorum: u8) -> Result<(), GovError> {
    if fps.is_empty() {
        return Err(GovError::BadSet {
            what: "governors",
            error: PolicyError::EmptyGroup,
        });
    }
    set("governors", fps, MAX_GOVERNORS)?;
    let max = fps.len().min(usize::from(MAX_QUORUM));
    if quorum == 0 || usize::from(quorum) > max {
        return Err(GovError::QuorumOutOfRange {
            quorum,
            governors: fps.len(),
            max,
        });
    }
    Ok(())
}

fn reason(r: &str) -> Result<(), GovError> {
    if r.len() > MAX_REASON {
        return Err(GovError::TooLong {
            what: "reason",
            len: r.len(),
            max: MAX_REASON,
        });
    }
    match r.chars().find(|c| c.is_control()) {
        Some(c) => Err(GovError::ControlCharacter(c)),
        None => Ok(()),
    }
}

fn member(m: &MemberRecord) -> Result<(), GovError> {
    custos_pki::check_name(&m.node).map_err(|_| GovError::InvalidName(m.node.clone()))?;
    if m.evidence.document.len() > MAX_EVIDENCE {
        return Err(GovError::TooLong {
            what: "evidence",
            len: m.evidence.document.len(),
            max: MAX_EVIDENCE,
        });
    }
    Ok(())
}

impl GovChange {
    /// Checks every limit and canonical form that needs no certificate: list sizes
    /// ([`MAX_MEMBERS`], [`MAX_GOVERNORS`], [`MAX_REVOKED`]), text sizes ([`MAX_REASON`],
    /// [`MAX_EVIDENCE`]), sorted distinct fingerprint lists, quorum range, node names, and
    /// cluster rules (only a well-formed measurement policy; an unknown rule is refused,
    /// never ignored).
    pub fn check_limits(&self) -> Result<(), GovError> {
        match self {
            GovChange::Genesis {
                governors: g,
                quorum,
                members,
                rules,
            } => {
                governors(g, *quorum)?;
                if members.is_empty() || members.len() > MAX_MEMBERS {
                    return Err(GovError::TooMany {
                        what: "genesis members (at least 1)",
                        len: members.len(),
                        max: MAX_MEMBERS,
                    });
                }
                members.iter().try_for_each(member)?;
                check_rules(rules, &[RULE_MEASUREMENT_POLICY]).map_err(GovError::Rule)?;
                MeasurementPolicy::from_rules(rules).map(drop)
            }
            GovChange::Admit { member: m } => member(m),
            GovChange::Remove { reason: r, .. } => reason(r),
            GovChange::Revoke {
                admins,
                devices,
                reason: r,
            } => {
                if admins.is_empty() && devices.is_empty() {
                    return Err(GovError::EmptyRevocation);
                }
                set("revoked admins", admins, MAX_REVOKED)?;
                set("revoked devices", devices, MAX_REVOKED)?;
                reason(r)
            }
            GovChange::SetGovernors {
                governors: g,
                quorum,
            } => governors(g, *quorum),
            GovChange::SetMeasurementPolicy { policy } => policy.check(),
        }
    }
}
