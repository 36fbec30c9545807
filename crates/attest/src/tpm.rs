//! TPM 2.0 evidence types (placeholder until the TPM verifier lands from branch h1).

use serde::{Deserialize, Serialize};

/// A TPM's attestation identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmIdentity {
    /// EK certificate (DER).
    pub ek_cert: Vec<u8>,
    /// Intermediates/roots (DER).
    pub ek_chain: Vec<Vec<u8>>,
    /// AK public (TPMT_PUBLIC).
    pub ak_public: Vec<u8>,
}

/// A credential for an AK.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmCredential {
    /// ID object.
    pub id_object: Vec<u8>,
    /// Encrypted secret.
    pub encrypted_secret: Vec<u8>,
}
