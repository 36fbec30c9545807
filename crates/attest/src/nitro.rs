//! AWS Nitro Enclaves attestation documents: a COSE_Sign1 (ES384) over a CBOR
//! `AttestationDoc`, signed by a per-enclave leaf certificate that chains to the AWS Nitro
//! root G1. Decoding is coset's and aws-nitro-enclaves-nsm-api's, the chain is rustls-webpki's,
//! the COSE signature ring's; the checks follow AWS's "Verifying the root of trust".

use std::collections::BTreeMap;
use std::time::Duration;

use coset::CborSerializable;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::{from_webpki, limit, sha256, AttestError};

/// SHA-256 of the DER of the AWS Nitro Enclaves root G1 (`CN=aws.nitro-enclaves`), as published
/// by AWS (docs.aws.amazon.com/enclaves/latest/user/verify-root.html).
pub const NITRO_ROOT_G1_SHA256: [u8; 32] =
    crate::hex32("641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b");

/// Largest attestation document accepted (AWS documents are ~5 KiB).
pub const MAX_NITRO_DOCUMENT: usize = 64 * 1024;

/// AWS limits on the document's fields (the NSM API's own bounds).
const MAX_CABUNDLE: usize = 8;
const MAX_OPTIONAL_FIELD: usize = 1024;
const MAX_PCRS: usize = 32;

/// Which Nitro root the document must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NitroPolicy {
    /// SHA-256 of the root certificate's DER (the document's `cabundle[0]`).
    pub root_sha256: [u8; 32],
}

impl NitroPolicy {
    /// The AWS Nitro Enclaves root G1.
    pub fn aws() -> Self {
        NitroPolicy {
            root_sha256: NITRO_ROOT_G1_SHA256,
        }
    }
}

/// The verified content of a Nitro attestation document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NitroEvidence {
    /// The issuing NSM (`i-…-enc…`).
    pub module_id: String,
    /// When the NSM made the document, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The locked PCRs (SHA-384 values) by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The enclave's optional public key (DER).
    pub public_key: Option<Vec<u8>>,
    /// The enclave's optional user data.
    pub user_data: Option<Vec<u8>>,
    /// The verifier's optional nonce.
    pub nonce: Option<Vec<u8>>,
}

/// Verifies a Nitro attestation document at `now_unix` (seconds) against `policy`.
pub fn verify(
    document: &[u8],
    now_unix: u64,
    policy: &NitroPolicy,
) -> Result<NitroEvidence, AttestError> {
    limit("Nitro attestation document", document, MAX_NITRO_DOCUMENT)?;
    let sign1 = coset::CoseSign1::from_slice(document)
        .map_err(|e| AttestError::Malformed(format!("COSE_Sign1: {e:?}")))?;
    // AWS signs with ES384 only; refusing anything else keeps an attacker from choosing the
    // algorithm the signature is checked with.
    if sign1.protected.header.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            coset::iana::Algorithm::ES384,
        ))
    {
        return Err(AttestError::Malformed(format!(
            "COSE algorithm {:?}, expected ES384",
            sign1.protected.header.alg
        )));
    }
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| AttestError::Malformed("COSE_Sign1 without payload".into()))?;
    let doc = aws_nitro_enclaves_nsm_api::api::AttestationDoc::from_binary(payload)
        .map_err(|e| AttestError::Malformed(format!("attestation document: {e:?}")))?;
    check_fields(&doc)?;

    // The root: cabundle[0], pinned by fingerprint; the rest of the bundle are intermediates.
    let root = &doc.cabundle[0];
    if sha256(root) != policy.root_sha256 {
        return Err(AttestError::WrongRoot(format!(
            "cabundle[0] has SHA-256 {}, the policy pins {}",
            hex::encode(sha256(root)),
            hex::encode(policy.root_sha256)
        )));
    }
    let root_der = CertificateDer::from(root.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&root_der)
        .map_err(|e| AttestError::ChainInvalid(format!("root certificate: {e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> = doc.cabundle[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(doc.certificate.as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| AttestError::Malformed(format!("signing certificate: {e:?}")))?;
    leaf.verify_for_usage(
        &[webpki::ring::ECDSA_P384_SHA384],
        &[anchor],
        &intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(now_unix)),
        // The Nitro leaf carries no EKU; if one is ever added it must allow client auth.
        webpki::KeyUsage::required_if_present(&[1, 3, 6, 1, 5, 5, 7, 3, 2]),
        None,
        None,
    )
    .map_err(from_webpki)?;

    // The COSE signature (raw r||s, RFC 8152) by the leaf's P-384 key.
    let (_, cert) = x509_parser::parse_x509_certificate(&doc.certificate)
        .map_err(|e| AttestError::Malformed(format!("signing certificate: {e}")))?;
    let spki = cert.public_key().subject_public_key.data.to_vec();
    sign1
        .verify_signature(b"", |sig, data| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P384_SHA384_FIXED,
                &spki,
            )
            .verify(data, sig)
        })
        .map_err(|_| AttestError::SignatureInvalid("COSE_Sign1 signature".into()))?;

    let pcrs = doc
        .pcrs
        .iter()
        .map(|(i, v)| (*i as u8, v.to_vec()))
        .collect();
    Ok(NitroEvidence {
        module_id: doc.module_id,
        timestamp_ms: doc.timestamp,
        pcrs,
        public_key: doc.public_key.map(|b| b.into_vec()),
        user_data: doc.user_data.map(|b| b.into_vec()),
        nonce: doc.nonce.map(|b| b.into_vec()),
    })
}

/// The syntactic checks AWS lists for a document, before any certificate is used.
fn check_fields(doc: &aws_nitro_enclaves_nsm_api::api::AttestationDoc) -> Result<(), AttestError> {
    let bad = |m: &str| Err(AttestError::Malformed(m.to_string()));
    if doc.module_id.is_empty() {
        return bad("empty module_id");
    }
    if doc.digest != aws_nitro_enclaves_nsm_api::api::Digest::SHA384 {
        return bad("digest is not SHA384");
    }
    if doc.timestamp == 0 {
        return bad("zero timestamp");
    }
    if doc.pcrs.is_empty() || doc.pcrs.len() > MAX_PCRS {
        return bad("PCR count outside 1..=32");
    }
    for (index, value) in &doc.pcrs {
        if *index >= MAX_PCRS || ![32, 48, 64].contains(&value.len()) {
            return bad("PCR index or length out of range");
        }
    }
    if doc.cabundle.is_empty() || doc.cabundle.len() > MAX_CABUNDLE {
        return bad("cabundle size outside 1..=8");
    }
    if doc.cabundle.iter().any(|c| c.is_empty() || c.len() > 1024) {
        return bad("cabundle certificate length outside 1..=1024");
    }
    if doc.certificate.is_empty() || doc.certificate.len() > 1024 {
        return bad("certificate length outside 1..=1024");
    }
    for field in [&doc.public_key, &doc.user_data, &doc.nonce]
        .into_iter()
        .flatten()
    {
        if field.len() > MAX_OPTIONAL_FIELD {
            return bad("public_key, user_data or nonce longer than 1024 bytes");
        }
    }
    Ok(())
}
