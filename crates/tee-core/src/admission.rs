//! Attestation-verified admission in the TEE core (issue 13, item 2; the flow is described in
//! [`custos_wire::governance`]'s admission module): a member issues tickets, a candidate
//! answers them with its platform's evidence, and every TEE verifies that evidence against the
//! cluster's measurement policy before it applies an `Admit` entry, so no key is ever sealed
//! to a node whose evidence this TEE did not check itself.

use custos_wire::governance::{
    admission_binding, device_key_fingerprint, nonce_hash, AdmissionChallenge, AdmissionEvidence,
    AdmissionTicket, Evidence, SignedTicket, TpmIdentity, EVIDENCE_ADMISSION_V1, MAX_EVIDENCE,
    MAX_TICKET_LIFETIME_SECS, PLATFORM_TPM,
};
use custos_wire::protocol::*;
use zeroize::Zeroizing;

use crate::platform::Platform;
use crate::{storage, TeeCore};

mod evidence;
#[cfg(feature = "tpm")]
mod tpm;

pub(crate) use evidence::check_evidence;

fn refused(reason: impl Into<String>) -> TeeError {
    TeeError::AdmissionRefused(reason.into())
}

impl<P: Platform> TeeCore<P> {
    /// `Request::AttestationIdentity`: what a member needs to make this node's ticket (a TPM's
    /// endorsement certificate and attestation key), or nothing on other platforms.
    pub(crate) fn attestation_identity(&mut self) -> Outcome {
        let identity = self.platform.attestation_identity().map_err(storage)?;
        Ok(Response::AttestationIdentity(identity.map(|i| {
            TpmIdentity {
                ek_cert: i.ek_cert,
                ek_chain: i.ek_chain,
                ak_public: i.ak_public,
            }
        })))
    }

    /// `Request::IssueAdmissionTicket`: as a current member of a governed cluster with a
    /// measurement policy, signs a ticket with a fresh nonce for the candidate key
    /// `node_key`. With a TPM identity the nonce is sealed in a credential to that TPM
    /// (refused unless the policy admits TPMs and the endorsement certificate chains to one
    /// of its roots); otherwise it is handed out in clear. Nothing is stored: the ticket
    /// commits to the nonce, and the log remembers every nonce used.
    pub(crate) fn issue_admission_ticket(
        &mut self,
        node_key: [u8; 32],
        tpm: Option<TpmIdentity>,
    ) -> Outcome {
        let (own, _) = self.identity()?.clone();
        let gov = self.gov.as_ref().ok_or(TeeError::NotGoverned)?;
        let issuer = device_key_fingerprint(&own.public_key).unwrap_or([0; 32]);
        if gov.state.member(&issuer).is_none() {
            return Err(TeeError::NotAMember {
                node: own.node.clone(),
                key_fingerprint: issuer,
            });
        }
        if gov.state.revoked_devices.contains_key(&node_key) {
            return Err(refused(format!(
                "device key {} is revoked",
                hex::encode(node_key)
            )));
        }
        if gov.state.members.contains_key(&node_key) {
            return Err(refused(format!(
                "device key {} is already a member",
                hex::encode(node_key)
            )));
        }
        let policy = gov.state.measurement.clone().ok_or_else(|| {
            refused("the cluster has no measurement policy; the governors set one first")
        })?;
        let (cluster, genesis_id) = (gov.state.cluster.clone(), gov.state.genesis_id);
        let mut nonce = Zeroizing::new([0u8; 32]);
        self.platform.random(nonce.as_mut()).map_err(storage)?;
        let now = self.platform.now_unix();
        let credential = match tpm {
            None => None,
            Some(identity) => {
                let Some(m) = &policy.tpm else {
                    return Err(refused(
                        "the cluster's measurement policy admits no TPM platform",
                    ));
                };
                // The credential's seed derives from it: whoever learns it learns the nonce.
                let mut entropy = Zeroizing::new([0u8; 32]);
                self.platform.random(entropy.as_mut()).map_err(storage)?;
                Some(make_credential(&identity, m, &nonce, *entropy, now)?)
            }
        };
        let sealed = credential.is_some();
        let ticket = AdmissionTicket {
            cluster,
            genesis_id,
            node_key,
            issuer,
            nonce_hash: nonce_hash(&nonce),
            issued_at: now,
            expires_at: now + MAX_TICKET_LIFETIME_SECS,
            tpm: credential,
        };
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device key D".into()))?;
        let signature = device.sign(&ticket.message());
        Ok(Response::AdmissionChallenge(AdmissionChallenge {
            ticket: SignedTicket { ticket, signature },
            nonce: (!sealed).then_some(*nonce),
        }))
    }

    /// `Request::AdmissionEvidence`: as the candidate, answers a ticket issued for this TEE's
    /// device key: recovers the nonce (from the TPM credential, or as given), and has the
    /// platform attest over the genesis, the nonce and the device key.
    pub(crate) fn admission_evidence(&mut self, challenge: AdmissionChallenge) -> Outcome {
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device key D".into()))?;
        let key = device.public_key();
        let t = &challenge.ticket.ticket;
        if device_key_fingerprint(&key) != Some(t.node_key) {
            return Err(refused(format!(
                "the ticket is for device key {}, not this TEE's",
                hex::encode(t.node_key)
            )));
        }
        let nonce: Zeroizing<[u8; 32]> = match (&t.tpm, challenge.nonce) {
            (Some(c), None) => self
                .platform
                .activate_credential(&custos_attest::TpmCredential {
                    id_object: c.id_object.clone(),
                    encrypted_secret: c.encrypted_secret.clone(),
                })
                .map_err(|e| refused(format!("the TPM did not release the nonce: {e}")))?,
            (None, Some(n)) => Zeroizing::new(n),
            (Some(_), Some(_)) => return Err(refused("a TPM ticket with a nonce in clear")),
            (None, None) => return Err(refused("a ticket without its nonce")),
        };
        if nonce_hash(&nonce) != t.nonce_hash {
            return Err(refused("the nonce is not the one the ticket commits to"));
        }
        let binding = admission_binding(&t.genesis_id, &nonce, &key);
        let att = self.platform.attest(&binding).map_err(storage)?;
        if t.tpm.is_some() != (att.platform == PLATFORM_TPM) {
            return Err(refused(format!(
                "a ticket made for {} answered on platform {:?}",
                if t.tpm.is_some() { "a TPM" } else { "no TPM" },
                att.platform
            )));
        }
        let document = AdmissionEvidence {
            ticket: challenge.ticket,
            nonce: *nonce,
            platform: att.platform,
            document: att.document,
        }
        .encode();
        if document.len() > MAX_EVIDENCE {
            return Err(refused(format!(
                "evidence of {} bytes, at most {MAX_EVIDENCE}",
                document.len()
            )));
        }
        Ok(Response::AdmissionEvidence(Evidence {
            format: EVIDENCE_ADMISSION_V1,
            document,
        }))
    }
}

#[cfg(feature = "tpm")]
use tpm::make_credential;

/// Without TPM support built in, no credential can be made (custos-attest's TPM code links
/// the TPM software stack).
#[cfg(not(feature = "tpm"))]
fn make_credential(
    _: &TpmIdentity,
    _: &custos_wire::governance::TpmMeasurement,
    _: &[u8; 32],
    _: [u8; 32],
    _: u64,
) -> Result<custos_wire::governance::TicketCredential, TeeError> {
    Err(refused(
        "this TEE core was built without TPM support (cargo feature `tpm`)",
    ))
}
