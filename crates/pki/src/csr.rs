//! Checks of a certificate signing request before any CA signs from it — admin CSRs and
//! device CSRs alike, through the one function here: it is not oversized, it parses, its
//! self-signature verifies (x509-parser with ring), its key is P-256 and it is signed with
//! ECDSA SHA-256, and its common name is a valid name.

use rcgen::{CertificateSigningRequestParams, DnType};
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

use crate::{check_name, PkiError};

/// Longest CSR text (PEM) the PKI reads. A P-256 request with a valid name is under 600
/// bytes; the margin leaves room for the attributes a CSR tool may add, and the limit keeps
/// an oversized input from being parsed at all.
pub const MAX_CSR_PEM: usize = 4096;

/// Parses and checks a P-256 CSR (PEM); returns its common name and rcgen's view of it.
pub(crate) fn checked_p256_csr(
    csr_pem: &str,
    what: &'static str,
) -> Result<(String, CertificateSigningRequestParams), PkiError> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(PkiError::CsrTooLarge {
            what,
            len: csr_pem.len(),
            max: MAX_CSR_PEM,
        });
    }
    let block = ::pem::parse(csr_pem).map_err(|e| PkiError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(PkiError::Malformed {
            what,
            reason: format!("PEM block is {:?}, not CERTIFICATE REQUEST", block.tag()),
        });
    }
    let der = block.contents();
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| PkiError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Malformed {
            what,
            reason: format!("{} bytes after the request", rest.len()),
        });
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(PkiError::CsrKeyType(format!(
            "key algorithm {} (curve {}), expected an EC key on P-256",
            spki.algorithm.algorithm,
            curve
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into())
        )));
    }
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(PkiError::CsrKeyType(format!(
            "signed with {}, expected ecdsa-with-SHA256",
            csr.signature_algorithm.algorithm
        )));
    }
    // Proof that whoever sent the CSR holds the private key of the public key in it.
    csr.verify_signature()
        .map_err(|e| PkiError::CsrSignature(e.to_string()))?;
    let params =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| PkiError::Malformed {
                what,
                reason: e.to_string(),
            })?;
    let name = match params.params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        Some(rcgen::DnValue::PrintableString(p)) => p.as_str().to_string(),
        _ => {
            return Err(PkiError::Malformed {
                what,
                reason: "subject has no common name".into(),
            })
        }
    };
    check_name(&name)?;
    Ok((name, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_csr_is_refused_by_its_size_naming_which() {
        let junk = "-".repeat(MAX_CSR_PEM + 1);
        for what in ["admin CSR", "device CSR"] {
            match checked_p256_csr(&junk, what) {
                Err(PkiError::CsrTooLarge { what: w, len, max }) => {
                    assert_eq!((w, len, max), (what, MAX_CSR_PEM + 1, MAX_CSR_PEM));
                }
                other => panic!("{what}: {:?}", other.map(|(n, _)| n)),
            }
        }
        // At the limit the size is not what is refused (the text is).
        let at_limit = "-".repeat(MAX_CSR_PEM);
        assert!(matches!(
            checked_p256_csr(&at_limit, "device CSR"),
            Err(PkiError::Malformed { .. })
        ));
    }
}
