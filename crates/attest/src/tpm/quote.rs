//! The quote verifier. TPM structures are unmarshalled by tss-esapi (the TCG's marshalling
//! code in libtss2-mu), never by hand, and must re-marshal to the very bytes given, so no
//! trailing or non-canonical bytes ride along. The signature is P-256 ECDSA (`p256`) over the
//! raw TPMS_ATTEST bytes, checked before their content is trusted.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature as EcdsaSignature, VerifyingKey};
use p256::EncodedPoint;
use sha2::{Digest, Sha256};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::structure_tags::AttestationType;
use tss_esapi::structures::{Attest, AttestInfo, EccScheme, HashScheme, Public, Signature};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::{
    ak_name, ek, limit_identity, tpm_qualifying, TpmPolicy, TpmQuote, TpmVerified, MAX_PCR_VALUES,
    MAX_TPM_ATTEST, MAX_TPM_SIGNATURE,
};
use crate::error::{limit, AttestError};

/// Unmarshals `bytes` as `T` and refuses any byte the structure does not account for.
fn canonical<T: Marshall + UnMarshall>(what: &str, bytes: &[u8]) -> Result<T, AttestError> {
    let value =
        T::unmarshall(bytes).map_err(|e| AttestError::TpmMalformed(format!("{what}: {e}")))?;
    let again = value
        .marshall()
        .map_err(|e| AttestError::TpmMalformed(format!("{what}: {e}")))?;
    if again != bytes {
        return Err(AttestError::TpmMalformed(format!(
            "{what}: {} bytes given, the structure is {} bytes",
            bytes.len(),
            again.len()
        )));
    }
    Ok(value)
}

/// Left-pads a big-endian ECC coordinate or scalar to 32 bytes.
fn pad32(what: &str, value: &[u8]) -> Result<[u8; 32], String> {
    if value.len() > 32 {
        return Err(format!("{what} of {} bytes for P-256", value.len()));
    }
    let mut out = [0u8; 32];
    out[32 - value.len()..].copy_from_slice(value);
    Ok(out)
}

/// Unmarshals the AK's public area and checks that it is a key the TPM vouches for: created
/// in the TPM and unable to leave it (fixedTPM, fixedParent, sensitiveDataOrigin), signing
/// only TPM-generated structures (restricted, sign, not decrypt), name algorithm SHA-256 (the
/// one [`ak_name`] uses), ECC P-256 with ECDSA-SHA256. Returns its verifying key.
pub(crate) fn parse_ak(bytes: &[u8]) -> Result<VerifyingKey, AttestError> {
    let public: Public = canonical("AK public area (TPMT_PUBLIC)", bytes)?;
    let refuse = |m: String| Err(AttestError::TpmAkAttributes(m));
    let Public::Ecc {
        object_attributes: a,
        name_hashing_algorithm,
        parameters,
        unique,
        ..
    } = &public
    else {
        return refuse("the AK is not an ECC key".into());
    };
    let mut wrong = Vec::new();
    for (ok, name) in [
        (a.fixed_tpm(), "fixedTPM clear"),
        (a.fixed_parent(), "fixedParent clear"),
        (a.sensitive_data_origin(), "sensitiveDataOrigin clear"),
        (a.restricted(), "restricted clear"),
        (a.sign_encrypt(), "sign clear"),
        (!a.decrypt(), "decrypt set"),
    ] {
        if !ok {
            wrong.push(name);
        }
    }
    if !wrong.is_empty() {
        return refuse(format!("attributes: {}", wrong.join(", ")));
    }
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return refuse(format!(
            "name algorithm {name_hashing_algorithm:?}, not SHA-256"
        ));
    }
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return refuse(format!("curve {:?}, not P-256", parameters.ecc_curve()));
    }
    if parameters.ecc_scheme() != EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)) {
        return refuse(format!(
            "scheme {:?}, not ECDSA with SHA-256",
            parameters.ecc_scheme()
        ));
    }
    let x = pad32("x", unique.x().value()).map_err(AttestError::TpmAkAttributes)?;
    let y = pad32("y", unique.y().value()).map_err(AttestError::TpmAkAttributes)?;
    let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point)
        .map_err(|_| AttestError::TpmAkAttributes("the AK's point is not on P-256".into()))
}

/// Unmarshals the quote's signature: ECDSA with SHA-256 only.
fn parse_signature(bytes: &[u8]) -> Result<EcdsaSignature, AttestError> {
    let signature: Signature = canonical("quote signature (TPMT_SIGNATURE)", bytes)?;
    let Signature::EcDsa(ecc) = &signature else {
        return Err(AttestError::TpmSignatureInvalid(format!(
            "{:?} signature, not ECDSA",
            signature.algorithm()
        )));
    };
    if ecc.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(AttestError::TpmSignatureInvalid(format!(
            "ECDSA with {:?}, not SHA-256",
            ecc.hashing_algorithm()
        )));
    }
    let r = pad32("r", ecc.signature_r().value()).map_err(AttestError::TpmSignatureInvalid)?;
    let s = pad32("s", ecc.signature_s().value()).map_err(AttestError::TpmSignatureInvalid)?;
    EcdsaSignature::from_scalars(r, s)
        .map_err(|_| AttestError::TpmSignatureInvalid("r or s out of range".into()))
}

/// The policy's PCRs must be sorted, each once, and exist (0–23).
fn check_policy(policy: &TpmPolicy) -> Result<(), AttestError> {
    let bad = |m: &str| Err(AttestError::TpmPolicyInvalid(m.into()));
    if policy.pcrs.is_empty() {
        return bad("no PCR: a quote of nothing measures nothing");
    }
    if policy.pcrs.iter().any(|(i, _)| *i > 23) {
        return bad("a PCR index above 23");
    }
    if policy.pcrs.windows(2).any(|w| w[0].0 >= w[1].0) {
        return bad("PCR indexes not sorted, or one repeated");
    }
    Ok(())
}

/// Checks the quote's PCR selection, its digest and the values against the policy.
fn check_pcrs(
    quote: &TpmQuote,
    info: &tss_esapi::structures::QuoteInfo,
    policy: &TpmPolicy,
) -> Result<Vec<(u8, [u8; 32])>, AttestError> {
    let mismatch = |m: String| AttestError::TpmPcrMismatch(m);
    let mut quoted = Vec::new();
    for bank in info.pcr_selection().get_selections() {
        let mut slots: Vec<u8> = bank
            .selected()
            .into_iter()
            .map(|slot| u32::from(slot).trailing_zeros() as u8)
            .collect();
        if slots.is_empty() {
            continue;
        }
        if bank.hashing_algorithm() != HashingAlgorithm::Sha256 {
            return Err(mismatch(format!(
                "the quote selects PCRs of the {:?} bank, the policy the SHA-256 bank only",
                bank.hashing_algorithm()
            )));
        }
        // The TPM digests each bank's PCRs in ascending order.
        slots.sort_unstable();
        quoted.extend(slots);
    }
    let expected: Vec<u8> = policy.pcrs.iter().map(|(i, _)| *i).collect();
    if quoted != expected {
        return Err(mismatch(format!(
            "the quote covers PCRs {quoted:?}, the policy expects {expected:?}"
        )));
    }
    let given: Vec<u8> = quote.pcr_values.iter().map(|(i, _)| *i).collect();
    if given != quoted {
        return Err(AttestError::TpmMalformed(format!(
            "PCR values given for {given:?}, the quote covers {quoted:?}"
        )));
    }
    let mut digest = Sha256::new();
    let mut values = Vec::with_capacity(quoted.len());
    for (index, value) in &quote.pcr_values {
        let value: [u8; 32] = value.as_slice().try_into().map_err(|_| {
            AttestError::TpmMalformed(format!(
                "PCR {index}: {} bytes, not a SHA-256 value",
                value.len()
            ))
        })?;
        digest.update(value);
        values.push((*index, value));
    }
    if digest.finalize().as_slice() != info.pcr_digest().value() {
        return Err(mismatch(
            "the PCR values given are not those the TPM signed (their digest differs)".into(),
        ));
    }
    for ((index, value), (_, want)) in values.iter().zip(&policy.pcrs) {
        if value != want {
            return Err(mismatch(format!(
                "PCR {index} is {}, the policy expects {}",
                hex::encode(value),
                hex::encode(want)
            )));
        }
    }
    Ok(values)
}

/// Verifies a TPM quote at `now_unix` against `policy`, bound to `user_data`:
/// 1. every input within its limit, the policy well formed;
/// 2. the AK a TPM-resident restricted P-256 signing key, and its ECDSA-SHA256 signature over
///    the raw TPMS_ATTEST bytes valid;
/// 3. a Quote whose qualifying data is [`tpm_qualifying`]`(user_data)`;
/// 4. exactly the policy's PCRs (SHA-256 bank), the values given digesting to what the TPM
///    signed, each equal to the policy's;
/// 5. the EK certificate chaining to a root of the policy (with the EK purpose).
///
/// The AK is tied to the EK only by credential activation: the caller compares
/// [`TpmVerified::ak_name`] with the name its credential was made for, and `user_data` must
/// contain the credential's secret.
pub fn verify_tpm_quote(
    quote: &TpmQuote,
    policy: &TpmPolicy,
    user_data: &[u8],
    now_unix: u64,
) -> Result<TpmVerified, AttestError> {
    limit_identity(&quote.identity)?;
    limit("TPMS_ATTEST", &quote.attest, MAX_TPM_ATTEST)?;
    limit("TPMT_SIGNATURE", &quote.signature, MAX_TPM_SIGNATURE)?;
    if quote.pcr_values.len() > MAX_PCR_VALUES {
        return Err(AttestError::Oversize {
            what: "PCR values (count)",
            size: quote.pcr_values.len(),
            limit: MAX_PCR_VALUES,
        });
    }
    check_policy(policy)?;

    let ak = parse_ak(&quote.identity.ak_public)?;
    let signature = parse_signature(&quote.signature)?;
    ak.verify(&quote.attest, &signature).map_err(|_| {
        AttestError::TpmSignatureInvalid(
            "the AK's signature over TPMS_ATTEST does not verify".into(),
        )
    })?;

    let attest: Attest = canonical("quote (TPMS_ATTEST)", &quote.attest)?;
    // A genuine AK signs certifications, audits and time too: only a quote is evidence here.
    if attest.attestation_type() != AttestationType::Quote {
        return Err(AttestError::TpmMalformed(format!(
            "a {:?} attestation, not a quote",
            attest.attestation_type()
        )));
    }
    let AttestInfo::Quote { info } = attest.attested() else {
        return Err(AttestError::TpmMalformed(
            "a quote without quote info".into(),
        ));
    };
    if attest.extra_data().value() != tpm_qualifying(user_data).as_slice() {
        return Err(AttestError::TpmQualifyingMismatch);
    }
    let pcrs = check_pcrs(quote, info, policy)?;
    let ek = ek::verify_ek(&quote.identity, policy, now_unix)?;
    Ok(TpmVerified {
        ak_name: ak_name(&quote.identity.ak_public),
        ek_key_sha256: ek.spki_sha256,
        pcrs,
    })
}
