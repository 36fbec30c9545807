//! The admission checks every verifier of a log runs ([`super::admission`] in the governance
//! module explains the flow): the ticket, its nonce and the platform. The platform's evidence
//! itself is verified by the TEE core.

use super::GovState;
use crate::governance::{
    device_key_fingerprint, nonce_hash, AdmissionEvidence, GovError, MemberRecord,
    EVIDENCE_ADMISSION_V1, EVIDENCE_NONE, MAX_APPROVAL_AFTER_TICKET_SECS, MAX_TICKET_LIFETIME_SECS,
    PLATFORM_SOFTWARE, PLATFORM_TPM,
};

impl GovState {
    /// Checks that `m` may be admitted under the cluster's measurement policy: evidence of a
    /// platform the policy admits, answering a ticket of a current member for this key, valid
    /// at `m.admitted_at`, with a nonce never used before. Returns the nonce hash (marked used
    /// once the admission is applied). The platform's evidence itself is verified by the TEE
    /// core.
    ///
    /// `approvals_until` is the entry's approval expiry, when known: it may run at most
    /// [`MAX_APPROVAL_AFTER_TICKET_SECS`] past the ticket's expiry.
    pub fn check_admission(
        &self,
        m: &MemberRecord,
        approvals_until: Option<u64>,
    ) -> Result<Option<[u8; 32]>, GovError> {
        let node = || m.node.clone();
        let policy = self
            .measurement
            .as_ref()
            .ok_or_else(|| GovError::NoMeasurementPolicy { node: node() })?;
        match m.evidence.format {
            EVIDENCE_NONE if policy.allow_software => return Ok(None),
            EVIDENCE_NONE => {
                return Err(GovError::PlatformNotAdmitted {
                    node: node(),
                    platform: PLATFORM_SOFTWARE.into(),
                })
            }
            EVIDENCE_ADMISSION_V1 => {}
            other => {
                return Err(GovError::Ticket {
                    node: node(),
                    reason: format!("unknown evidence format {other}"),
                })
            }
        }
        let ev = AdmissionEvidence::decode(&m.node, &m.evidence.document)?;
        let t = &ev.ticket.ticket;
        let ticket_err = |reason: String| GovError::Ticket {
            node: node(),
            reason,
        };
        if t.cluster != self.cluster || t.genesis_id != self.genesis_id {
            return Err(ticket_err(format!(
                "issued for cluster {:?} (genesis {}), not this log",
                t.cluster,
                hex::encode(t.genesis_id)
            )));
        }
        if t.node_key != m.key_fingerprint {
            return Err(ticket_err(format!(
                "issued for key {}, the node's key is {}",
                hex::encode(t.node_key),
                hex::encode(m.key_fingerprint)
            )));
        }
        self.check_issuer(m, &ev)?;
        let lifetime = t.expires_at.saturating_sub(t.issued_at);
        if t.expires_at < t.issued_at || lifetime > MAX_TICKET_LIFETIME_SECS {
            return Err(ticket_err(format!(
                "valid {}..={}, a ticket is valid at most {MAX_TICKET_LIFETIME_SECS} s",
                t.issued_at, t.expires_at
            )));
        }
        if m.admitted_at < t.issued_at || m.admitted_at > t.expires_at {
            return Err(GovError::TicketExpired {
                node: node(),
                admitted_at: m.admitted_at,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
            });
        }
        if let Some(until) = approvals_until {
            if until > t.expires_at.saturating_add(MAX_APPROVAL_AFTER_TICKET_SECS) {
                return Err(ticket_err(format!(
                    "the entry's approvals run until {until}, more than \
                     {MAX_APPROVAL_AFTER_TICKET_SECS} s after its ticket expired at {}",
                    t.expires_at
                )));
            }
        }
        if nonce_hash(&ev.nonce) != t.nonce_hash {
            return Err(GovError::NonceMismatch { node: node() });
        }
        if self.used_nonces.contains(&t.nonce_hash) {
            return Err(GovError::NonceReused { node: node() });
        }
        if !policy.admits(&ev.platform) {
            return Err(GovError::PlatformNotAdmitted {
                node: node(),
                platform: ev.platform.clone(),
            });
        }
        // A quote's attestation key is bound to the certified TPM only by the credential.
        if (ev.platform == PLATFORM_TPM) != t.tpm.is_some() {
            return Err(ticket_err(format!(
                "a {} ticket for platform {:?}",
                if t.tpm.is_some() { "TPM" } else { "non-TPM" },
                ev.platform
            )));
        }
        Ok(Some(t.nonce_hash))
    }

    /// The ticket is signed by the current member it names, with the key that member was
    /// admitted with.
    fn check_issuer(&self, m: &MemberRecord, ev: &AdmissionEvidence) -> Result<(), GovError> {
        let issuer = ev.ticket.ticket.issuer;
        let refused = || GovError::TicketSignature {
            node: m.node.clone(),
            issuer,
        };
        let member = self.member(&issuer).ok_or_else(refused)?;
        let key =
            custos_pki::cert_public_key(&member.record.chain.device).map_err(|_| refused())?;
        if device_key_fingerprint(&key) != Some(issuer) {
            return Err(refused());
        }
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &key)
            .verify(&ev.ticket.ticket.message(), &ev.ticket.signature)
            .map_err(|_| refused())
    }
}
