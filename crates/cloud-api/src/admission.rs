//! Admission tickets over the API (issue 13): a TPM identity and a member's challenge between
//! their wire forms and the JSON an operator carries from the node to the server and back.

use custos_wire::governance::{AdmissionChallenge, TpmIdentity, MAX_EVIDENCE};

use crate::{AdmissionTicketView, TpmIdentityView};

/// Largest encoded challenge the API carries (the ticket's fields, a TPM credential and the
/// endorsement key's chain of up to 8 KiB).
pub const MAX_CHALLENGE: usize = 16 * 1024;

/// The API view of a TPM identity.
pub fn identity_view(i: &TpmIdentity) -> TpmIdentityView {
    TpmIdentityView {
        ek_cert_pem: custos_pki::der_to_pem(&i.ek_cert, "CERTIFICATE"),
        ek_chain_pem: i
            .ek_chain
            .iter()
            .map(|c| custos_pki::der_to_pem(c, "CERTIFICATE"))
            .collect(),
        ak_public_hex: hex::encode(&i.ak_public),
    }
}

/// The TPM identity a view shows (certificates parsed as PEM blocks, not verified: the TEE
/// that makes the credential verifies the chain against the pinned roots).
pub fn parse_identity(v: &TpmIdentityView) -> Result<TpmIdentity, String> {
    let ek_cert = custos_pki::pem_to_der(&v.ek_cert_pem, "endorsement key certificate")
        .map_err(|e| e.to_string())?;
    let blocks = pem::parse_many(&v.ek_chain_pem).map_err(|e| format!("EK chain PEM: {e}"))?;
    if blocks.iter().any(|b| b.tag() != "CERTIFICATE") || blocks.len() > 8 {
        return Err("the EK chain is 0 to 8 CERTIFICATE blocks".into());
    }
    let ak_public = hex::decode(&v.ak_public_hex).map_err(|_| "ak_public_hex is not hex")?;
    if ak_public.len() > 1024 {
        return Err("the attestation key's public area is over 1024 bytes".into());
    }
    Ok(TpmIdentity {
        ek_cert,
        ek_chain: blocks.iter().map(|b| b.contents().to_vec()).collect(),
        ak_public,
    })
}

/// The encoded challenge of a ticket view, as hex.
pub fn challenge_hex(c: &AdmissionChallenge) -> String {
    hex::encode(postcard::to_allocvec(c).expect("a challenge encodes"))
}

/// The challenge a ticket view carries, decoded (size-limited).
pub fn parse_challenge(v: &AdmissionTicketView) -> Result<AdmissionChallenge, String> {
    let bytes = hex::decode(&v.challenge_hex).map_err(|_| "challenge_hex is not hex")?;
    if bytes.len() > MAX_CHALLENGE {
        return Err(format!("challenge over {MAX_CHALLENGE} bytes"));
    }
    postcard::from_bytes(&bytes).map_err(|e| format!("not an admission challenge: {e}"))
}

/// Evidence read from a file of hex, as `custos tee admission-evidence` writes it.
pub fn parse_evidence_hex(text: &str) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "evidence is not hex")?;
    if bytes.len() > MAX_EVIDENCE {
        return Err(format!("evidence over {MAX_EVIDENCE} bytes"));
    }
    Ok(bytes)
}
