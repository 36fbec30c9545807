//! TPM tickets and quotes: the credential a member makes for a candidate's TPM, and the
//! candidate's quote checked against the policy and against that credential.

use custos_attest::{verify_tpm_quote, AttestError, TpmPolicy, TpmQuote};
use custos_wire::governance::{
    AdmissionEvidence, MeasurementPolicy, TicketCredential, TpmIdentity, TpmMeasurement,
};
use custos_wire::protocol::TeeError;
use sha2::{Digest, Sha256};

use super::evidence::Check;
use super::refused;

/// The certificates of `chain` whose SHA-256 the policy pins: the roots the endorsement
/// certificate may chain to.
fn pinned_roots(chain: &[Vec<u8>], pinned: &[[u8; 32]]) -> Vec<Vec<u8>> {
    chain
        .iter()
        .filter(|c| pinned.contains(&Sha256::digest(c).into()))
        .cloned()
        .collect()
}

fn policy(m: &TpmMeasurement, chain: &[Vec<u8>]) -> TpmPolicy {
    TpmPolicy {
        ek_roots: pinned_roots(chain, &m.ek_roots_sha256),
        pcrs: m.pcrs.clone(),
    }
}

fn attest_identity(i: &TpmIdentity) -> custos_attest::TpmIdentity {
    custos_attest::TpmIdentity {
        ek_cert: i.ek_cert.clone(),
        ek_chain: i.ek_chain.clone(),
        ak_public: i.ak_public.clone(),
    }
}

/// A credential carrying `nonce` to the TPM of `identity`, once its endorsement certificate
/// chains to a root the policy pins and its attestation key is a restricted signing key of
/// that TPM's kind.
pub(super) fn make_credential(
    identity: &TpmIdentity,
    m: &TpmMeasurement,
    nonce: &[u8; 32],
    entropy: [u8; 32],
    now: u64,
) -> Result<TicketCredential, TeeError> {
    let why = |e: AttestError| refused(format!("{}: {e}", e.code()));
    // One certificate per item, so the pins find a root an entry holds with others; the
    // ticket carries the chain in this form.
    let chain = custos_attest::split_ek_chain(&identity.ek_chain).map_err(why)?;
    let mut id = attest_identity(identity);
    id.ek_chain = chain.clone();
    let c = custos_attest::make_credential(&id, &policy(m, &chain), nonce, entropy, now)
        .map_err(why)?;
    Ok(TicketCredential {
        ak_name: custos_attest::ak_name(&identity.ak_public),
        ek_cert_sha256: Sha256::digest(&identity.ek_cert).into(),
        ek_chain: chain,
        id_object: c.id_object,
        encrypted_secret: c.encrypted_secret,
    })
}

/// Verifies a TPM quote of an admission: genuine, over the policy's PCR values, binding
/// `binding`, and made by the attestation key the ticket's credential was made for, in the
/// TPM of the endorsement key it was made to.
pub(super) fn verify(
    policy_all: &MeasurementPolicy,
    ev: &AdmissionEvidence,
    binding: &[u8; 32],
    at: u64,
) -> Result<(), Check> {
    let Some(m) = &policy_all.tpm else {
        return Err(Check::Mismatch("the policy admits no TPM".into()));
    };
    let Some(c) = &ev.ticket.ticket.tpm else {
        return Err(Check::Mismatch(
            "a TPM quote answering a ticket without credential".into(),
        ));
    };
    let mut quote = TpmQuote::from_document(&ev.document).map_err(Check::Attest)?;
    // The chain the issuer verified and signed into the ticket, not one the candidate's host
    // brings now: the roots are picked from it by the policy's pins.
    let chain = custos_attest::split_ek_chain(&c.ek_chain).map_err(Check::Attest)?;
    quote.identity.ek_chain = c.ek_chain.clone();
    let verified =
        verify_tpm_quote(&quote, &policy(m, &chain), binding, at).map_err(Check::Attest)?;
    if verified.ak_name != c.ak_name {
        return Err(Check::Mismatch(
            "the quote's attestation key is not the one the ticket's credential was made for"
                .into(),
        ));
    }
    let ek: [u8; 32] = Sha256::digest(&quote.identity.ek_cert).into();
    if ek != c.ek_cert_sha256 {
        return Err(Check::Mismatch(
            "the quote's endorsement certificate is not the one the credential was made to".into(),
        ));
    }
    Ok(())
}
