//! Unit tests without a TPM: the qualifying data and name, the size limits, malformed
//! structures and the order of the checks. The swtpm tests (custos-tee-host) cover genuine
//! quotes and credentials.

use super::*;

#[test]
fn qualifying_data_is_domain_separated_sha256() {
    let q = tpm_qualifying(b"challenge");
    let mut h = Sha256::new();
    h.update(b"CUSTOS-TPM-QUOTE-V1\0challenge");
    assert_eq!(q, <[u8; 32]>::from(h.finalize()));
    assert_ne!(q, tpm_qualifying(b"challengE"));
    assert_ne!(q, <[u8; 32]>::from(Sha256::digest(b"challenge")));
}

#[test]
fn ak_name_is_the_sha256_name_algorithm_then_the_digest() {
    let name = ak_name(b"public");
    assert_eq!(name.len(), 34);
    assert_eq!(&name[..2], &[0x00, 0x0B]);
    assert_eq!(&name[2..], Sha256::digest(b"public").as_slice());
}

#[test]
fn a_quote_document_is_size_limited_before_decoding_and_round_trips() {
    let e = TpmQuote::from_document(&vec![0u8; MAX_TPM_QUOTE + 1]).unwrap_err();
    assert_eq!(e.code(), "oversize", "{e}");
    let e = TpmQuote::from_document(&[0xff; 16]).unwrap_err();
    assert_eq!(e.code(), "tpm_malformed", "{e}");
    let quote = TpmQuote {
        identity: TpmIdentity {
            ek_cert: vec![1; 10],
            ek_chain: vec![vec![2; 3]],
            ak_public: vec![3; 5],
        },
        attest: vec![4; 7],
        signature: vec![5; 2],
        pcr_values: vec![(23, vec![6; 32])],
    };
    assert_eq!(
        TpmQuote::from_document(&quote.to_document()).unwrap(),
        quote
    );
}

#[test]
fn identity_limits_are_checked_before_parsing() {
    let ok = TpmIdentity {
        ek_cert: vec![0; MAX_EK_CERT],
        ek_chain: vec![vec![0; MAX_EK_CHAIN_BYTES / 2]; 2],
        ak_public: vec![0; MAX_TPM_PUBLIC],
    };
    assert_eq!(limit_identity(&ok), Ok(()));
    for (identity, what) in [
        (
            TpmIdentity {
                ek_cert: vec![0; MAX_EK_CERT + 1],
                ..ok.clone()
            },
            "EK certificate",
        ),
        (
            TpmIdentity {
                ak_public: vec![0; MAX_TPM_PUBLIC + 1],
                ..ok.clone()
            },
            "AK public area",
        ),
        (
            TpmIdentity {
                ek_chain: vec![vec![]; MAX_EK_CHAIN_ENTRIES + 1],
                ..ok.clone()
            },
            "EK chain (entries)",
        ),
        (
            TpmIdentity {
                ek_chain: vec![vec![0; MAX_EK_CHAIN_BYTES / 2 + 1]; 2],
                ..ok.clone()
            },
            "EK chain",
        ),
    ] {
        match limit_identity(&identity) {
            Err(AttestError::Oversize { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: expected oversize, got {other:?}"),
        }
    }
}

#[cfg(feature = "tpm")]
mod with_tss {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature as EcdsaSignature, SigningKey};
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::structures::{
        EccParameter, EccPoint, EccScheme, EccSignature, HashScheme, KeyDerivationFunctionScheme,
        PublicBuilder, PublicEccParametersBuilder, Signature, SymmetricDefinitionObject,
    };
    use tss_esapi::traits::Marshall;

    use super::super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
    }

    /// An AK public area as `create_ak_2` makes it, for `key`.
    fn ak_public(key: &SigningKey) -> Vec<u8> {
        let point = key.verifying_key().to_encoded_point(false);
        let attrs = ObjectAttributesBuilder::new()
            .with_restricted(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .with_decrypt(false)
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .build()
            .unwrap();
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_signing_key(true)
                    .with_is_decryption_key(false)
                    .with_restricted(true)
                    .build()
                    .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
                EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
            ))
            .build()
            .unwrap()
            .marshall()
            .unwrap()
    }

    fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
        let sig: EcdsaSignature = key.sign(message);
        Signature::EcDsa(
            EccSignature::create(
                HashingAlgorithm::Sha256,
                EccParameter::try_from(sig.r().to_bytes().to_vec()).unwrap(),
                EccParameter::try_from(sig.s().to_bytes().to_vec()).unwrap(),
            )
            .unwrap(),
        )
        .marshall()
        .unwrap()
    }

    fn policy() -> TpmPolicy {
        TpmPolicy {
            ek_roots: vec![b"not a certificate".to_vec()],
            pcrs: vec![(23, [0; 32])],
        }
    }

    fn quote(attest: &[u8]) -> TpmQuote {
        TpmQuote {
            identity: TpmIdentity {
                ek_cert: b"not a certificate".to_vec(),
                ek_chain: vec![],
                ak_public: ak_public(&key()),
            },
            attest: attest.to_vec(),
            signature: sign(&key(), attest),
            pcr_values: vec![(23, vec![0; 32])],
        }
    }

    fn code(quote: &TpmQuote, policy: &TpmPolicy) -> &'static str {
        verify_tpm_quote(quote, policy, b"user data", 0)
            .unwrap_err()
            .code()
    }

    #[test]
    fn oversize_parts_are_refused_first() {
        let mut q = quote(b"attest");
        q.attest = vec![0; MAX_TPM_ATTEST + 1];
        assert_eq!(code(&q, &policy()), "oversize");
        let mut q = quote(b"attest");
        q.signature = vec![0; MAX_TPM_SIGNATURE + 1];
        assert_eq!(code(&q, &policy()), "oversize");
        let mut q = quote(b"attest");
        q.pcr_values = vec![(0, vec![0; 32]); MAX_PCR_VALUES + 1];
        assert_eq!(code(&q, &policy()), "oversize");
    }

    #[test]
    fn an_unusable_policy_is_named() {
        let q = quote(b"attest");
        for pcrs in [
            vec![],
            vec![(24, [0; 32])],
            vec![(7, [0; 32]), (7, [0; 32])],
        ] {
            let p = TpmPolicy { pcrs, ..policy() };
            assert_eq!(code(&q, &p), "tpm_policy_invalid");
        }
    }

    #[test]
    fn a_malformed_or_unfit_attestation_key_is_refused_by_name() {
        let mut q = quote(b"attest");
        q.identity.ak_public = vec![0xAA; 40];
        assert_eq!(code(&q, &policy()), "tpm_malformed");
        // A genuine structure with a byte after it.
        let mut q = quote(b"attest");
        q.identity.ak_public.push(0);
        assert_eq!(code(&q, &policy()), "tpm_malformed");
        // A key that can decrypt is no attestation key.
        let mut q = quote(b"attest");
        // TPMT_PUBLIC: type (2 bytes), nameAlg (2), objectAttributes (4, big-endian), ...:
        // decrypt is bit 17, in the attributes' second byte.
        q.identity.ak_public[5] |= 0x02;
        assert_eq!(code(&q, &policy()), "tpm_ak_attributes");
    }

    #[test]
    fn the_signature_is_checked_before_the_attested_bytes_are_parsed() {
        // Garbage signed by the AK passes the signature, then fails to unmarshal.
        assert_eq!(
            code(&quote(b"not a TPMS_ATTEST"), &policy()),
            "tpm_malformed"
        );
        // The same garbage under another key's signature: refused as a signature.
        let mut q = quote(b"not a TPMS_ATTEST");
        let other = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        q.signature = sign(&other, &q.attest);
        assert_eq!(code(&q, &policy()), "tpm_signature_invalid");
        let mut q = quote(b"not a TPMS_ATTEST");
        q.attest[0] ^= 1;
        assert_eq!(code(&q, &policy()), "tpm_signature_invalid");
        let mut q = quote(b"attest");
        q.signature = vec![0x00, 0x18, 0x00];
        assert_eq!(code(&q, &policy()), "tpm_malformed");
    }

    #[test]
    fn a_credential_needs_a_chained_ek_and_a_fit_attestation_key() {
        let q = quote(b"attest");
        let e = make_credential(&q.identity, &policy(), &[1; 32], [2; 32], 0).unwrap_err();
        assert_eq!(e.code(), "tpm_policy_invalid", "{e}");
        let mut identity = q.identity.clone();
        identity.ek_cert = vec![0; MAX_EK_CERT + 1];
        let e = make_credential(&identity, &policy(), &[1; 32], [2; 32], 0).unwrap_err();
        assert_eq!(e.code(), "oversize", "{e}");
        assert_eq!(
            ek_certificate_modulus(b"junk").unwrap_err().code(),
            "ek_chain_invalid"
        );
    }
}
