//! The EK certificate: its chain to a root of the policy (rustls-webpki), its EK purpose
//! (x509-parser), and the RSA-2048 key credentials are encrypted to.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::public_key::PublicKey;

use super::{TpmIdentity, TpmPolicy};
use crate::error::{sha256, AttestError};

/// tcg-kp-EKCertificate (2.23.133.8.1), the content octets of its DER encoding.
const EK_CERTIFICATE_EKU: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];
const EK_CERTIFICATE_EKU_TEXT: &str = "2.23.133.8.1";
/// Most certificates the chain entries may hold together.
const MAX_INTERMEDIATES: usize = 16;

/// The EK's RSA public key, from a certificate that chained to a policy root.
pub(crate) struct EkKey {
    /// Modulus, big-endian, without a leading zero.
    pub(crate) modulus: Vec<u8>,
    /// Public exponent, big-endian.
    pub(crate) exponent: Vec<u8>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub(crate) spki_sha256: [u8; 32],
}

fn invalid(reason: impl Into<String>) -> AttestError {
    AttestError::EkChainInvalid(reason.into())
}

/// Splits the chain entries (each one or more DER certificates back to back, as the TCG EK
/// chain NV indices hold them) into certificates.
pub(crate) fn intermediates(chain: &[Vec<u8>]) -> Result<Vec<&[u8]>, AttestError> {
    let mut out = Vec::new();
    for entry in chain {
        let mut rest = entry.as_slice();
        while !rest.is_empty() {
            let (after, _) = x509_parser::parse_x509_certificate(rest)
                .map_err(|e| invalid(format!("EK chain entry: not DER certificates ({e})")))?;
            let len = rest.len() - after.len();
            out.push(&rest[..len]);
            rest = after;
            if out.len() > MAX_INTERMEDIATES {
                return Err(AttestError::Oversize {
                    what: "EK chain (certificates)",
                    size: out.len(),
                    limit: MAX_INTERMEDIATES,
                });
            }
        }
    }
    Ok(out)
}

/// Verifies the EK certificate of `identity` to one of the policy's roots at `now_unix` and
/// returns its key. Sizes were checked by the caller.
pub(crate) fn verify_ek(
    identity: &TpmIdentity,
    policy: &TpmPolicy,
    now_unix: u64,
) -> Result<EkKey, AttestError> {
    if policy.ek_roots.is_empty() {
        return Err(AttestError::TpmPolicyInvalid(
            "no EK root: no TPM can be trusted".into(),
        ));
    }
    let root_ders: Vec<CertificateDer<'_>> = policy
        .ek_roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(|d| {
            webpki::anchor_from_trusted_cert(d)
                .map_err(|e| AttestError::TpmPolicyInvalid(format!("EK root: {e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chain: Vec<CertificateDer<'_>> = intermediates(&identity.ek_chain)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let leaf_der = CertificateDer::from(identity.ek_cert.as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| invalid(format!("EK certificate: {e:?}")))?;
    // `required_if_present`, not `required`: webpki applies the EKU to the whole path, and
    // TPM manufacturers' CAs carry no EKU. The EK's own EKU is checked below.
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain,
        UnixTime::since_unix_epoch(Duration::from_secs(now_unix)),
        webpki::KeyUsage::required_if_present(EK_CERTIFICATE_EKU),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::UnknownIssuer => {
            invalid("the EK certificate does not chain to a root of the policy (UnknownIssuer)")
        }
        e => invalid(format!("{e:?}")),
    })?;

    let (_, cert) = x509_parser::parse_x509_certificate(&identity.ek_cert)
        .map_err(|e| invalid(format!("EK certificate: {e}")))?;
    let is_ek = cert.extended_key_usage().ok().flatten().is_some_and(|eku| {
        eku.value
            .other
            .iter()
            .any(|oid| oid.to_id_string() == EK_CERTIFICATE_EKU_TEXT)
    });
    if !is_ek {
        return Err(invalid(format!(
            "the certificate of {} is not an EK certificate (no EKU {EK_CERTIFICATE_EKU_TEXT})",
            cert.subject()
        )));
    }
    let spki = cert.public_key();
    let rsa = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => rsa,
        _ => {
            return Err(invalid(
                "the EK is not an RSA key (only RSA-2048 EKs are supported)",
            ))
        }
    };
    if rsa.key_size() != 2048 {
        return Err(invalid(format!(
            "the EK is RSA-{}, only RSA-2048 (the TCG default template) is supported",
            rsa.key_size()
        )));
    }
    let strip = |b: &[u8]| {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        b[start..].to_vec()
    };
    Ok(EkKey {
        modulus: strip(rsa.modulus),
        exponent: strip(rsa.exponent),
        spki_sha256: sha256(spki.raw),
    })
}

/// The RSA modulus (big-endian, no leading zero) of an EK certificate, unverified: what a
/// host compares with a persistent EK's public area before using it.
pub fn ek_certificate_modulus(ek_cert: &[u8]) -> Result<Vec<u8>, AttestError> {
    crate::error::limit("EK certificate", ek_cert, super::MAX_EK_CERT)?;
    let (_, cert) = x509_parser::parse_x509_certificate(ek_cert)
        .map_err(|e| invalid(format!("EK certificate: {e}")))?;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let start = rsa.modulus.iter().position(|&x| x != 0).unwrap_or(0);
            Ok(rsa.modulus[start..].to_vec())
        }
        _ => Err(invalid("the EK is not an RSA key")),
    }
}
