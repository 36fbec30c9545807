//! Intel TDX quotes (DCAP, quote v4/v5) with their collateral (PCK CRLs, TCB info, QE
//! identity, as a `QuoteCollateralV3` JSON). The whole DCAP verification (PCK chain and CRLs,
//! QE report, quote signature, TCB level, debug/migratable TD refusal) is dcap-qvl's, against
//! the root the policy pins; this module only pins the root, limits sizes and names errors.

use crate::error::{limit, sha256, AttestError};

/// SHA-256 of the DER of the Intel SGX Root CA (`CN=Intel SGX Root CA`), the root of every
/// DCAP chain (SGX and TDX).
pub const INTEL_SGX_ROOT_CA_SHA256: [u8; 32] =
    crate::hex32("44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3");

/// The Intel SGX Root CA (DER), the copy dcap-qvl 0.7.1 ships (`src/TrustedRootCA.der`).
const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

/// Largest quote accepted (quotes with their PCK chain are ~5 KiB).
pub const MAX_TDX_QUOTE: usize = 64 * 1024;
/// Largest collateral JSON accepted (Intel's is ~16 KiB).
pub const MAX_TDX_COLLATERAL: usize = 1024 * 1024;

/// Which Intel root the quote and its collateral must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPolicy {
    /// The root certificate (DER).
    pub root_der: Vec<u8>,
}

impl TdxPolicy {
    /// Intel's production DCAP root, the Intel SGX Root CA.
    pub fn intel() -> Self {
        TdxPolicy {
            root_der: INTEL_SGX_ROOT_CA_DER.to_vec(),
        }
    }
}

/// The verified content of a TDX quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxEvidence {
    /// The TD's build-time measurement.
    pub mr_td: [u8; 48],
    /// The run-time measurement registers RTMR0..3.
    pub rtmrs: [[u8; 48]; 4],
    /// Software-defined configuration id.
    pub mr_config_id: [u8; 48],
    /// The TD owner's id.
    pub mr_owner: [u8; 48],
    /// The TD's attributes.
    pub td_attributes: [u8; 8],
    /// The 64 bytes the TD asked to be signed.
    pub report_data: [u8; 64],
    /// Intel's TCB status name for the platform and QE (`UpToDate`, `OutOfDate`, ...).
    pub tcb_status: String,
    /// Intel security advisories that apply at this TCB level.
    pub advisory_ids: Vec<String>,
}

/// Verifies a TDX quote with its collateral (dcap-qvl `QuoteCollateralV3` JSON) at
/// `now_unix` against `policy`.
pub fn verify(
    quote: &[u8],
    collateral_json: &[u8],
    now_unix: u64,
    policy: &TdxPolicy,
) -> Result<TdxEvidence, AttestError> {
    limit("TDX quote", quote, MAX_TDX_QUOTE)?;
    limit("TDX collateral", collateral_json, MAX_TDX_COLLATERAL)?;
    let collateral: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(collateral_json)
        .map_err(|e| AttestError::Malformed(format!("collateral: {e}")))?;
    check_root(&collateral, &policy.root_der)?;

    let verified = dcap_qvl::verify::QuoteVerifier::new(policy.root_der.clone())
        .verify(quote, &collateral, now_unix)
        .map_err(classify)?;
    let td = match &verified.report {
        dcap_qvl::quote::Report::TD10(td) => td,
        dcap_qvl::quote::Report::TD15(td) => &td.base,
        dcap_qvl::quote::Report::TD15Ex(td) => &td.base.base,
        dcap_qvl::quote::Report::SgxEnclave(_) => {
            return Err(AttestError::Malformed("an SGX quote, not a TDX one".into()))
        }
    };
    Ok(TdxEvidence {
        mr_td: td.mr_td,
        rtmrs: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3],
        mr_config_id: td.mr_config_id,
        mr_owner: td.mr_owner,
        td_attributes: td.td_attributes,
        report_data: td.report_data,
        tcb_status: verified.status.clone(),
        advisory_ids: verified.advisory_ids.clone(),
    })
}

/// The collateral's TCB-info signer chain must end in the pinned root. dcap-qvl would refuse
/// another root too (its CRL or chain check fails), but only as an unnamed error; this names it.
fn check_root(
    collateral: &dcap_qvl::QuoteCollateralV3,
    root_der: &[u8],
) -> Result<(), AttestError> {
    let pinned = sha256(root_der);
    let mut found = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(collateral.tcb_info_issuer_chain.as_bytes())
    {
        let pem = pem.map_err(|e| AttestError::Malformed(format!("TCB info chain: {e}")))?;
        let fingerprint = sha256(&pem.contents);
        if fingerprint == pinned {
            return Ok(());
        }
        found.push(hex::encode(fingerprint));
    }
    Err(AttestError::WrongRoot(format!(
        "the collateral's chain ({}) does not hold the pinned root {}",
        found.join(", "),
        hex::encode(pinned)
    )))
}

/// Names a dcap-qvl refusal. dcap-qvl reports `anyhow` errors whose messages are the only
/// classification it offers; anything not recognised stays a generic rejection with the text.
fn classify(e: impl std::fmt::Display) -> AttestError {
    // `{:#}` prints anyhow's whole context chain.
    let text = format!("{e:#}");
    let lower = text.to_lowercase();
    if lower.contains("failed to decode quote")
        || lower.contains("unsupported dcap quote version")
        || lower.contains("unsupported tee type")
        || lower.contains("must have version")
    {
        AttestError::Malformed(text)
    } else if lower.contains("signature is invalid")
        || lower.contains("invalidsignatureforpublickey")
        || lower.contains("invalidcrlsignatureforpublickey")
    {
        AttestError::SignatureInvalid(text)
    } else if lower.contains("certexpired") {
        AttestError::CertificateExpired(text)
    } else if lower.contains("certnotvalidyet") {
        AttestError::CertificateNotYetValid(text)
    } else if lower.contains("expired") || lower.contains("issue date is in the future") {
        // TCBInfo / QE Identity past nextUpdate or not yet issued, a CRL past nextUpdate.
        AttestError::TcbExpired(text)
    } else if lower.contains("revoked") {
        AttestError::TcbRevoked(text)
    } else if lower.contains("unknownissuer") {
        AttestError::WrongRoot(text)
    } else {
        AttestError::Rejected(text)
    }
}
