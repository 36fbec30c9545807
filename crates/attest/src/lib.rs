//! Attestation evidence, verified against pinned roots (issue 13): vendor evidence (item 3) and
//! TPM 2.0 quotes (item 1).
//!
//! Each platform's evidence is checked by the vendor's (or a maintained) crate, never by a
//! hand-written parser of the vendor format; this crate pins the roots, limits input sizes
//! before parsing, checks what the crates leave out (certificate dates for SEV-SNP) and names
//! every refusal ([`AttestError::code`]). It has no networking or async dependency: it is
//! meant for the TEE core, which gets collateral from the untrusted host as plain bytes.
//!
//! * AWS Nitro: [`verify_nitro`] (COSE_Sign1 document → [`NitroEvidence`]), root
//!   [`NITRO_ROOT_G1_SHA256`].
//! * AMD SEV-SNP: [`verify_snp`] (report + VCEK → [`SnpEvidence`]), roots
//!   [`AMD_ARK_MILAN_SHA256`], [`AMD_ARK_GENOA_SHA256`], [`AMD_ARK_TURIN_SHA256`].
//! * Intel TDX: [`verify_tdx`] (quote + collateral JSON → [`TdxEvidence`]), root
//!   [`INTEL_SGX_ROOT_CA_SHA256`].
//! * [`expect_binding`]: the evidence must bind the 32-byte value the verifier expects.
//! * TPM 2.0 ([`tpm`]): the evidence types ([`TpmQuote`], [`TpmIdentity`], ...) always; with
//!   the `tpm` feature, `verify_tpm_quote` and `make_credential` (credential activation ties
//!   the quoting key to the TPM's certified endorsement key).
//!
//! `now_unix` is always the caller's clock in Unix seconds: evidence is checked at that time,
//! so a test (or an auditor) can re-check old evidence at the time it was admitted.

mod binding;
mod error;
mod nitro;
mod snp;
mod tdx;
pub mod tpm;

pub use binding::{expect_binding, Bound};
pub use error::AttestError;
pub use nitro::{
    verify as verify_nitro, NitroEvidence, NitroPolicy, MAX_NITRO_DOCUMENT, NITRO_ROOT_G1_SHA256,
};
pub use snp::{
    verify as verify_snp, SnpEvidence, SnpPolicy, SnpTcb, AMD_ARK_GENOA_SHA256,
    AMD_ARK_MILAN_SHA256, AMD_ARK_TURIN_SHA256, MAX_VCEK_CERT, SNP_REPORT_LEN,
};
pub use tdx::{
    verify as verify_tdx, TdxEvidence, TdxPolicy, INTEL_SGX_ROOT_CA_SHA256, MAX_TDX_COLLATERAL,
    MAX_TDX_QUOTE,
};
pub use tpm::{
    ak_name, tpm_qualifying, TpmCredential, TpmIdentity, TpmPolicy, TpmQuote, TpmVerified,
    TPM_QUOTE_DOMAIN,
};
#[cfg(feature = "tpm")]
pub use tpm::{make_credential, split_ek_chain, verify_tpm_quote};

/// 64 hex digits → 32 bytes, at compile time (the pinned fingerprints are written as AWS, AMD
/// and Intel publish them). A bad digit fails the build.
const fn hex32(s: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lower-case hex digit"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 64, "a SHA-256 is 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(b[2 * i]) << 4 | digit(b[2 * i + 1]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_intel_root_has_the_pinned_fingerprint() {
        assert_eq!(
            error::sha256(&TdxPolicy::intel().root_der),
            INTEL_SGX_ROOT_CA_SHA256
        );
    }

    #[test]
    fn every_builtin_amd_ark_is_pinned() {
        for policy in [
            SnpPolicy::milan(),
            SnpPolicy::genoa(),
            SnpPolicy {
                ark_sha256: AMD_ARK_TURIN_SHA256,
            },
        ] {
            let err =
                verify_snp(&[0u8; SNP_REPORT_LEN], b"not a certificate", 0, &policy).unwrap_err();
            // The root is found (no root_not_pinned): the refusal is the VCEK's.
            assert_eq!(err.code(), "malformed", "{err}");
        }
    }

    #[test]
    fn nitro_binds_user_data_before_public_key() {
        let mut evidence = NitroEvidence {
            module_id: "i-0-enc0".into(),
            timestamp_ms: 1,
            pcrs: Default::default(),
            public_key: Some(vec![7; 32]),
            user_data: None,
            nonce: None,
        };
        assert_eq!(expect_binding(&evidence, &[7; 32]), Ok(()));
        evidence.user_data = Some(vec![9; 32]);
        assert_eq!(expect_binding(&evidence, &[9; 32]), Ok(()));
        assert_eq!(
            expect_binding(&evidence, &[7; 32]),
            Err(AttestError::BindingMismatch)
        );
        evidence.user_data = Some(vec![9; 33]);
        assert_eq!(
            expect_binding(&evidence, &[9; 32]),
            Err(AttestError::BindingMismatch)
        );
    }
}
