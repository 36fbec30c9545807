//! TPM 2.0 evidence: a quote by an attestation key (AK) that a verifier has tied to a TPM's
//! certified endorsement key (EK) by credential activation (TPM 2.0 Part 1 §24).
//!
//! The protocol, with the verifier in a TEE that may have no TPM of its own:
//! 1. The node sends its [`TpmIdentity`] (EK certificate, its chain, the AK's public area).
//! 2. The verifier picks a 32-byte secret and runs [`make_credential`]: it checks the EK chain
//!    and the AK's attributes, then encrypts the secret to the EK, bound to the AK's name.
//! 3. The node's TPM activates the credential: it releases the secret only if a key with that
//!    name is loaded in the same TPM as the EK (the EK is decrypt-only, so this, not a
//!    signature, ties the AK to the EK).
//! 4. The node quotes its PCRs with qualifying data [`tpm_qualifying`]`(secret ‖ challenge ‖
//!    …)`; [`verify_tpm_quote`] checks it, and the caller compares [`TpmVerified::ak_name`]
//!    with the AK name the credential was made for. Knowing the secret proves the AK lives in
//!    the EK's TPM, and the quote is fresh.
//!
//! The types here are always built (serde, no libtss2), so the TEE core and the wire can carry
//! them; the functions that unmarshal TPM structures need the `tpm` feature (tss-esapi).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{limit, AttestError};

#[cfg(feature = "tpm")]
mod credential;
#[cfg(feature = "tpm")]
mod ek;
#[cfg(feature = "tpm")]
mod quote;

#[cfg(feature = "tpm")]
pub use credential::make_credential;
#[cfg(feature = "tpm")]
pub use ek::ek_certificate_modulus;
#[cfg(feature = "tpm")]
pub use quote::verify_tpm_quote;

/// The certificates of EK chain entries, one per item: an entry may hold several DER
/// certificates back to back (the TCG EK chain NV indices do), so a root pinned by its
/// SHA-256 is found only among split certificates.
#[cfg(feature = "tpm")]
pub fn split_ek_chain(chain: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, AttestError> {
    ek::intermediates(chain).map(|certs| certs.into_iter().map(<[u8]>::to_vec).collect())
}

/// Domain of the qualifying data of a Custos quote: SHA-256(domain ‖ user_data).
pub const TPM_QUOTE_DOMAIN: &[u8] = b"CUSTOS-TPM-QUOTE-V1\0";

/// Largest postcard-encoded [`TpmQuote`] accepted (the governance evidence limit).
pub const MAX_TPM_QUOTE: usize = 16 * 1024;
/// Largest EK certificate (DER) accepted; TPM EK certificates are 1–2 KiB.
pub const MAX_EK_CERT: usize = 4 * 1024;
/// Largest number of EK chain entries (each one NV index's content: one or more DER
/// certificates back to back).
pub const MAX_EK_CHAIN_ENTRIES: usize = 8;
/// Largest total size of the EK chain entries.
pub const MAX_EK_CHAIN_BYTES: usize = 8 * 1024;
/// Largest marshalled TPMT_PUBLIC accepted for the AK (an ECC P-256 AK is 88 bytes).
pub const MAX_TPM_PUBLIC: usize = 512;
/// Largest marshalled TPMS_ATTEST accepted (a quote of one PCR bank is ~145 bytes).
pub const MAX_TPM_ATTEST: usize = 1024;
/// Largest marshalled TPMT_SIGNATURE accepted (ECDSA P-256 is 72 bytes).
pub const MAX_TPM_SIGNATURE: usize = 512;
/// Largest number of PCR values in a quote (one SHA-256 bank has 24 PCRs).
pub const MAX_PCR_VALUES: usize = 24;

/// A TPM's identity as its host presents it: unverified until [`make_credential`] or
/// [`verify_tpm_quote`] checks it against a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmIdentity {
    /// The RSA-2048 EK certificate (DER), as the TPM keeps it in NV (0x01C00002).
    pub ek_cert: Vec<u8>,
    /// Intermediate certificates toward the manufacturer's root, as the TPM or host supplies
    /// them: each entry is one or more DER certificates back to back (the content of one NV
    /// index of the TCG EK chain range 0x01C00100–0x01C001FF). Untrusted: only
    /// [`TpmPolicy::ek_roots`] are trusted.
    pub ek_chain: Vec<Vec<u8>>,
    /// The attestation key's public area, a marshalled TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
}

/// A credential for the TPM to activate: the contents (without the size prefix) of the
/// TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET of TPM2_MakeCredential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmCredential {
    /// The integrity HMAC and the encrypted secret, bound to the AK's name.
    pub id_object: Vec<u8>,
    /// The seed, RSA-OAEP encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// A quote as the TPM platform answers `attest`: the document of an `Attestation` with
/// platform `"tpm"` is its postcard encoding ([`TpmQuote::to_document`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuote {
    /// Who quoted.
    pub identity: TpmIdentity,
    /// The marshalled TPMS_ATTEST the AK signed.
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE over `attest`.
    pub signature: Vec<u8>,
    /// The quoted PCRs of the SHA-256 bank (index, value), in the order of the selection.
    pub pcr_values: Vec<(u8, Vec<u8>)>,
}

impl TpmQuote {
    /// The postcard encoding (the `Attestation` document).
    pub fn to_document(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a TpmQuote always encodes")
    }

    /// Decodes a document, refusing one over [`MAX_TPM_QUOTE`] before decoding.
    pub fn from_document(document: &[u8]) -> Result<Self, AttestError> {
        limit("TPM quote document", document, MAX_TPM_QUOTE)?;
        postcard::from_bytes(document)
            .map_err(|e| AttestError::TpmMalformed(format!("TPM quote document: {e}")))
    }
}

/// What a verifier accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmPolicy {
    /// Trust anchors of EK certificates (DER): the TPM manufacturers' roots.
    pub ek_roots: Vec<Vec<u8>>,
    /// The expected SHA-256 PCR values, by index, sorted, each index once. The quote must
    /// cover exactly these PCRs.
    pub pcrs: Vec<(u8, [u8; 32])>,
}

/// A verified quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmVerified {
    /// The AK's name (0x000B ‖ SHA-256(TPMT_PUBLIC)): compare it with the name the
    /// credential was made for ([`ak_name`]).
    pub ak_name: Vec<u8>,
    /// SHA-256 of the EK certificate's SubjectPublicKeyInfo: the TPM, whatever its
    /// certificate.
    pub ek_key_sha256: [u8; 32],
    /// The quoted PCR values (equal to the policy's).
    pub pcrs: Vec<(u8, [u8; 32])>,
}

/// The qualifying data of a quote over `user_data`: SHA-256([`TPM_QUOTE_DOMAIN`] ‖
/// user_data). Hashed because TPM2B_DATA holds at most 64 bytes.
pub fn tpm_qualifying(user_data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TPM_QUOTE_DOMAIN);
    h.update(user_data);
    h.finalize().into()
}

/// TPM_ALG_SHA256, the name algorithm of every key Custos accepts.
const TPM_ALG_SHA256: [u8; 2] = [0x00, 0x0B];

/// The TPM name of an object whose marshalled TPMT_PUBLIC is `public` and whose name
/// algorithm is SHA-256: 0x000B ‖ SHA-256(public). It is what ActivateCredential compares
/// with the loaded key's name; checking that the name algorithm really is SHA-256 is the
/// verifier's job (the AK attribute check).
pub fn ak_name(public: &[u8]) -> Vec<u8> {
    let mut name = TPM_ALG_SHA256.to_vec();
    name.extend_from_slice(&Sha256::digest(public));
    name
}

/// Size checks of an identity, before any parsing.
#[cfg_attr(not(feature = "tpm"), allow(dead_code))]
pub(crate) fn limit_identity(identity: &TpmIdentity) -> Result<(), AttestError> {
    limit("EK certificate", &identity.ek_cert, MAX_EK_CERT)?;
    limit("AK public area", &identity.ak_public, MAX_TPM_PUBLIC)?;
    if identity.ek_chain.len() > MAX_EK_CHAIN_ENTRIES {
        return Err(AttestError::Oversize {
            what: "EK chain (entries)",
            size: identity.ek_chain.len(),
            limit: MAX_EK_CHAIN_ENTRIES,
        });
    }
    let total: usize = identity.ek_chain.iter().map(Vec::len).sum();
    if total > MAX_EK_CHAIN_BYTES {
        return Err(AttestError::Oversize {
            what: "EK chain",
            size: total,
            limit: MAX_EK_CHAIN_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
