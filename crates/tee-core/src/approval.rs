//! Verification unit (patent FIG. 3): admin approvals and quorum.
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action ([`custos_wire::approval::Action::message`], the same encoder the admin tooling
//! signs with). This unit checks each approval's certificate chain and signature and counts
//! distinct admins against the key's quorum.

use std::collections::HashMap;

use custos_pki::{PkiError, TrustRoot, VerifiedAdmin};
use sha2::{Digest, Sha256};

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

/// Admin certificate chains already verified, so that each approval costs one signature
/// check rather than a chain walk. Entries are re-checked against their validity window on
/// every use; the pinned Root never changes, so nothing else can invalidate them.
#[derive(Default)]
pub struct AdminCache {
    verified: HashMap<[u8; 32], VerifiedAdmin>,
}

impl AdminCache {
    /// Most cached chains; the cache is emptied when full (admins are few).
    pub const CAPACITY: usize = 4096;

    fn verify(
        &mut self,
        root: &TrustRoot,
        a: &Approval,
        now: u64,
    ) -> Result<&VerifiedAdmin, PkiError> {
        let mut h = Sha256::new();
        h.update((a.admin_cert.len() as u32).to_be_bytes());
        h.update(&a.admin_cert);
        h.update(&a.admin_ca);
        let key: [u8; 32] = h.finalize().into();
        if !self.verified.contains_key(&key) {
            let v = root.verify_admin(&a.admin_cert, &a.admin_ca, now)?;
            if self.verified.len() >= Self::CAPACITY {
                self.verified.clear();
            }
            self.verified.insert(key, v);
        }
        let v = &self.verified[&key];
        if !v.valid_at(now) {
            return Err(PkiError::NotValidNow {
                what: "admin",
                reason: format!("not valid at {now}"),
            });
        }
        Ok(v)
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
    let mut admins: Vec<(Vec<u8>, String)> = Vec::new();
    for (index, a) in approvals.iter().enumerate() {
        let id = cache
            .verify(root, a, now)
            .and_then(|v| {
                v.verify_signature(&message, &a.signature)
                    .map(|_| v.identity.clone())
            })
            .map_err(|e| TeeError::ApprovalRejected {
                index: index as u32,
                fault: fault_of(&e),
                detail: e.to_string(),
            })?;
        if !admins.iter().any(|(s, _)| *s == id.subject) {
            admins.push((id.subject, id.name));
        }
    }
    let approved = admins.len().min(u8::MAX as usize) as u8;
    if approved < required.max(1) {
        return Err(TeeError::QuorumNotMet { required, approved });
    }
    Ok(admins.into_iter().map(|(_, n)| n).collect())
}
