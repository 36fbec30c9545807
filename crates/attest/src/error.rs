//! The one error type of every verifier.

/// Why evidence was refused. Each refusal names its cause (see [`AttestError::code`]) so an
/// admission log tells a forged document from a stale one or a misconfigured policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// An input is larger than its limit; it was refused before any parsing.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// Which input (document, report, certificate, quote, collateral).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// Bytes that do not decode as the vendor format, or a field outside its documented range.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// A signature over the evidence or inside its certificate chain does not verify.
    #[error("signature invalid: {0}")]
    SignatureInvalid(String),
    /// The policy names a root this build has no certificate for.
    #[error("root not pinned: {0}")]
    RootNotPinned(String),
    /// The evidence does not chain to the root the policy pins.
    #[error("evidence does not chain to the pinned root: {0}")]
    WrongRoot(String),
    /// The certificate chain is broken in another way (missing issuer, bad extension, too long).
    #[error("certificate chain invalid: {0}")]
    ChainInvalid(String),
    /// A certificate of the chain expired before the verification time.
    #[error("certificate expired: {0}")]
    CertificateExpired(String),
    /// A certificate of the chain is not valid yet at the verification time.
    #[error("certificate not yet valid: {0}")]
    CertificateNotYetValid(String),
    /// Signed TCB collateral (TCB info, QE identity, a CRL) is outside its validity window.
    #[error("TCB collateral outside its validity window: {0}")]
    TcbExpired(String),
    /// The platform's TCB is revoked by the vendor.
    #[error("TCB revoked: {0}")]
    TcbRevoked(String),
    /// The vendor verifier refused the evidence for another reason (debug TD, unknown TCB
    /// level, QE identity mismatch, ...).
    #[error("evidence rejected: {0}")]
    Rejected(String),
    /// The evidence is genuine but binds another value than the one expected.
    #[error("evidence binds another value than the expected one")]
    BindingMismatch,
    /// TPM evidence that does not unmarshal as the TPM structure it claims to be (TPMS_ATTEST,
    /// TPMT_PUBLIC, TPMT_SIGNATURE), has bytes after it, or is another kind of attestation.
    #[error("malformed TPM evidence: {0}")]
    TpmMalformed(String),
    /// The quote's qualifying data is not SHA-256(domain ‖ user_data) of the expected user
    /// data: another nonce or key, or a quote replayed from another exchange.
    #[error("TPM quote qualifying data does not bind the expected user data")]
    TpmQualifyingMismatch,
    /// The quoted PCRs are not the policy's selection, or their values (or the digest the TPM
    /// signed over them) differ from what the policy expects.
    #[error("TPM PCRs differ from the policy: {0}")]
    TpmPcrMismatch(String),
    /// The quote's signature does not verify with the AK, or is not ECDSA P-256 with SHA-256.
    #[error("TPM quote signature invalid: {0}")]
    TpmSignatureInvalid(String),
    /// The AK is not a TPM-resident restricted signing key (fixedTPM, fixedParent,
    /// sensitiveDataOrigin, restricted, sign, not decrypt, name algorithm SHA-256, ECC P-256
    /// ECDSA-SHA256): the TPM would not vouch that it signs only its own attestations.
    #[error("TPM attestation key attributes refused: {0}")]
    TpmAkAttributes(String),
    /// The EK certificate does not chain to a root of the policy (or is expired, not yet
    /// valid, not an EK certificate, or not the RSA-2048 key credentials are made for).
    #[error("EK certificate chain invalid: {0}")]
    EkChainInvalid(String),
    /// The verifier's own TPM policy is unusable (no root, PCRs unsorted or out of range).
    #[error("TPM policy invalid: {0}")]
    TpmPolicyInvalid(String),
}

impl AttestError {
    /// A stable snake_case name of the refusal, for logs, metrics and wire error codes.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::Oversize { .. } => "oversize",
            AttestError::Malformed(_) => "malformed",
            AttestError::SignatureInvalid(_) => "signature_invalid",
            AttestError::RootNotPinned(_) => "root_not_pinned",
            AttestError::WrongRoot(_) => "wrong_root",
            AttestError::ChainInvalid(_) => "chain_invalid",
            AttestError::CertificateExpired(_) => "certificate_expired",
            AttestError::CertificateNotYetValid(_) => "certificate_not_yet_valid",
            AttestError::TcbExpired(_) => "tcb_expired",
            AttestError::TcbRevoked(_) => "tcb_revoked",
            AttestError::Rejected(_) => "evidence_rejected",
            AttestError::BindingMismatch => "binding_mismatch",
            AttestError::TpmMalformed(_) => "tpm_malformed",
            AttestError::TpmQualifyingMismatch => "tpm_qualifying_mismatch",
            AttestError::TpmPcrMismatch(_) => "tpm_pcr_mismatch",
            AttestError::TpmSignatureInvalid(_) => "tpm_signature_invalid",
            AttestError::TpmAkAttributes(_) => "tpm_ak_attributes",
            AttestError::EkChainInvalid(_) => "ek_chain_invalid",
            AttestError::TpmPolicyInvalid(_) => "tpm_policy_invalid",
        }
    }
}

/// Refuses `input` before parsing when it is larger than `limit`.
pub(crate) fn limit(what: &'static str, input: &[u8], limit: usize) -> Result<(), AttestError> {
    if input.len() > limit {
        return Err(AttestError::Oversize {
            what,
            size: input.len(),
            limit,
        });
    }
    Ok(())
}

/// Maps a rustls-webpki chain error to the named refusal.
pub(crate) fn from_webpki(e: webpki::Error) -> AttestError {
    match e {
        webpki::Error::CertExpired { .. } => AttestError::CertificateExpired(format!("{e:?}")),
        webpki::Error::CertNotValidYet { .. } => {
            AttestError::CertificateNotYetValid(format!("{e:?}"))
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            AttestError::SignatureInvalid(format!("certificate chain: {e:?}"))
        }
        webpki::Error::UnknownIssuer => AttestError::WrongRoot(format!("{e:?}")),
        _ => AttestError::ChainInvalid(format!("{e:?}")),
    }
}

/// Checks a DER certificate's notBefore/notAfter against `now` (Unix seconds). Used where the
/// vendor crate checks no dates (sev).
pub(crate) fn check_validity(der: &[u8], now: u64) -> Result<(), AttestError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AttestError::Malformed(format!("certificate: {e}")))?;
    let validity = cert.validity();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < validity.not_before.timestamp() {
        return Err(AttestError::CertificateNotYetValid(format!(
            "{} is valid from {} (Unix {})",
            cert.subject(),
            validity.not_before,
            validity.not_before.timestamp()
        )));
    }
    if now > validity.not_after.timestamp() {
        return Err(AttestError::CertificateExpired(format!(
            "{} expired at {} (Unix {})",
            cert.subject(),
            validity.not_after,
            validity.not_after.timestamp()
        )));
    }
    Ok(())
}

/// SHA-256 of `bytes` (root fingerprints).
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
