//! Attestation on a software TPM manufactured with an EK certificate from a CA of the test's
//! own: the credential made in software activates on the TPM, the quote verifies, and each
//! refusal is named. Plus the NV rate-limit retry decision and the upgrade of a store made
//! before attestation keys.

use std::str::FromStr;

use custos_attest::{ak_name, make_credential, verify_tpm_quote, TpmPolicy, TpmQuote};
use custos_test_kit::swtpm::Swtpm;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::*;

fn options(tpm: &Swtpm, nv_index: u32) -> TpmOptions {
    TpmOptions {
        tcti: tpm.tcti(),
        pcrs: PcrSelection::parse("sha256:23").unwrap(),
        nv_index,
    }
}

fn open(root: &Path, name: &str, tpm: &Swtpm, nv_index: u32, create: bool) -> TpmPlatform {
    let key = root.join("seal.key");
    if !key.exists() {
        crate::sealed::generate_key_file(&key).unwrap();
    }
    TpmPlatform::open(
        &root.join(name),
        &SealingKeySource::KeyFile(key),
        &options(tpm, nv_index),
        create,
    )
    .unwrap()
}

/// Writes `der` into the first NV index of the TCG EK chain range, as a manufacturer that
/// ships the intermediates with the TPM does (swtpm_setup writes only the EK certificate).
fn install_ek_chain(tpm: &Swtpm, der: &[u8]) {
    let mut ctx = tss_esapi::Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    let index = NvIndexTpmHandle::new(0x01C0_0100).unwrap();
    let attrs = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Ordinary)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .unwrap();
    let public = NvPublicBuilder::new()
        .with_nv_index(index)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attrs)
        .with_data_area_size(der.len())
        .build()
        .unwrap();
    let h = ctx
        .execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, public))
        .unwrap();
    for (i, chunk) in der.chunks(512).enumerate() {
        let data = MaxNvBuffer::try_from(chunk.to_vec()).unwrap();
        ctx.execute_with_nullauth_session(|c| c.nv_write(NvAuth::Owner, h, data, (i * 512) as u16))
            .unwrap();
    }
}

/// A self-signed CA certificate of nobody's: a root the EK does not chain to.
fn unrelated_root() -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// The whole exchange, then one refusal per way it can go wrong.
#[test]
fn a_software_credential_activates_on_the_tpm_and_its_quote_verifies() {
    let Some(tpm) = Swtpm::start_manufactured() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // Another store's attestation key on the same TPM, for the credential made for it.
    let other_ak = {
        let mut other = open(root.path(), "other", &tpm, DEFAULT_NV_INDEX + 1, true);
        other.attestation_identity().unwrap().unwrap().ak_public
    };
    install_ek_chain(&tpm, &tpm.ek_ca_issuer_der());
    drop(open(root.path(), "store", &tpm, DEFAULT_NV_INDEX, true));
    // The attestation key outlives a restart of the TEE (it is in tpm.bin).
    let mut p = open(root.path(), "store", &tpm, DEFAULT_NV_INDEX, false);
    let identity = p.attestation_identity().unwrap().unwrap();
    assert_eq!(identity.ek_chain, vec![tpm.ek_ca_issuer_der()]);
    assert_ne!(identity.ak_public, other_ak);

    let now = custos_pki::clock::now_unix();
    let policy = TpmPolicy {
        ek_roots: vec![tpm.ek_ca_root_der()],
        // PCR 23 after a TPM reset.
        pcrs: vec![(23, [0; 32])],
    };
    let secret = [0x5a; 32];
    let credential = make_credential(&identity, &policy, &secret, [7; 32], now).unwrap();
    assert_eq!(*p.activate_credential(&credential).unwrap(), secret);

    // The quote binds the secret (the AK is in the EK's TPM) and the challenge.
    let user_data = [&secret[..], b"challenge"].concat();
    let attestation = p.attest(&user_data).unwrap();
    assert_eq!(attestation.platform, "tpm");
    let quote = TpmQuote::from_document(&attestation.document).unwrap();
    let verified = verify_tpm_quote(&quote, &policy, &user_data, now).unwrap();
    assert_eq!(verified.ak_name, ak_name(&identity.ak_public));
    assert_eq!(verified.pcrs, policy.pcrs);
    assert_eq!(quote.identity, identity);

    let refused = |q: &TpmQuote, policy: &TpmPolicy, user_data: &[u8]| {
        verify_tpm_quote(q, policy, user_data, now)
            .expect_err("a quote that should be refused was accepted")
            .code()
    };
    // Another nonce or D key (an old quote replayed).
    let stale = [&secret[..], b"other challenge"].concat();
    assert_eq!(refused(&quote, &policy, &stale), "tpm_qualifying_mismatch");
    // The policy expects another value of PCR 23 (as after another boot).
    let other_pcr = TpmPolicy {
        pcrs: vec![(23, [1; 32])],
        ..policy.clone()
    };
    assert_eq!(refused(&quote, &other_pcr, &user_data), "tpm_pcr_mismatch");
    // A PCR value edited (it no longer digests to what the TPM signed).
    let mut edited = quote.clone();
    edited.pcr_values[0].1[0] ^= 1;
    assert_eq!(refused(&edited, &policy, &user_data), "tpm_pcr_mismatch");
    // One flipped byte of what the TPM signed.
    for i in [0, quote.attest.len() / 2, quote.attest.len() - 1] {
        let mut flipped = quote.clone();
        flipped.attest[i] ^= 0x01;
        assert_eq!(
            refused(&flipped, &policy, &user_data),
            "tpm_signature_invalid"
        );
    }
    // An EK certificate that chains to another root.
    let other_root = TpmPolicy {
        ek_roots: vec![unrelated_root()],
        ..policy.clone()
    };
    assert_eq!(refused(&quote, &other_root, &user_data), "ek_chain_invalid");
    assert_eq!(
        make_credential(&identity, &other_root, &secret, [7; 32], now)
            .unwrap_err()
            .code(),
        "ek_chain_invalid"
    );
    // Without its intermediate the chain is broken too, unless the verifier trusts the
    // issuing CA itself (for TPMs that carry no chain).
    let mut no_chain = quote.clone();
    no_chain.identity.ek_chain.clear();
    assert_eq!(refused(&no_chain, &policy, &user_data), "ek_chain_invalid");
    let issuer_trusted = TpmPolicy {
        ek_roots: vec![tpm.ek_ca_issuer_der()],
        ..policy.clone()
    };
    assert!(verify_tpm_quote(&no_chain, &issuer_trusted, &user_data, now).is_ok());
    // A verification time past the CA's validity (swtpm's local CA: until 9999).
    let e = verify_tpm_quote(&quote, &policy, &user_data, 253_402_300_800 + 86_400).unwrap_err();
    assert_eq!(e.code(), "ek_chain_invalid", "{e}");

    // A credential made for another attestation key: the TPM does not release its secret.
    let mut for_other = identity.clone();
    for_other.ak_public = other_ak;
    let credential = make_credential(&for_other, &policy, &secret, [8; 32], now).unwrap();
    match p.activate_credential(&credential) {
        Err(PlatformError::Attestation(why)) => {
            assert!(why.contains("refused to activate"), "{why}")
        }
        Err(e) => panic!("expected an attestation refusal, got {e}"),
        Ok(_) => panic!("the TPM released a secret made for another key"),
    }
    // The platform still works afterwards (every object was flushed).
    assert_eq!(
        *p.activate_credential(
            &make_credential(&identity, &policy, &secret, [9; 32], now).unwrap()
        )
        .unwrap(),
        secret
    );
    assert!(p.attest(b"again").is_ok());
}

/// A store made before attestation keys (tpm.bin version 1) gets its key at open, and the
/// file is rewritten as version 2.
#[test]
fn a_store_without_an_attestation_key_gets_one_at_open() {
    let Some(tpm) = Swtpm::start() else { return };
    let root = tempfile::tempdir().unwrap();
    drop(open(root.path(), "store", &tpm, DEFAULT_NV_INDEX, true));
    let path = root.path().join("store").join(BLOBS_FILE);
    let made = blobs::read(&path).unwrap();
    let first_ak = made.ak.expect("a new store has an attestation key").public;
    blobs::write_v1(&path, &made.key);
    assert!(blobs::read(&path).unwrap().ak.is_none());

    let p = open(root.path(), "store", &tpm, DEFAULT_NV_INDEX, false);
    let upgraded = blobs::read(&path).unwrap();
    let ak = upgraded.ak.expect("the store was upgraded");
    assert_eq!(std::fs::read(&path).unwrap()[0], 2);
    assert_ne!(
        ak.public, first_ak,
        "a new key is made, not the old one read"
    );
    assert_eq!(p.ak.as_ref().map(|a| a.public.clone()), Some(ak.public));
    drop(p);
    // And it opens again as a version 2 store.
    drop(open(root.path(), "store", &tpm, DEFAULT_NV_INDEX, false));
}

/// Only TPM_RC_NV_RATE is waited out, a bounded number of times with growing pauses.
#[test]
fn only_nv_rate_limiting_is_retried_and_not_forever() {
    let rc = |code: u32| tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(code));
    // TPM_RC_NV_RATE = RC_WARN (0x900) + 0x020.
    let nv_rate = rc(0x920);
    assert_eq!(
        device::nv_rate_backoff(&nv_rate, 0),
        Some(std::time::Duration::from_millis(25))
    );
    let pauses: Vec<_> = (0..10)
        .map_while(|attempt| device::nv_rate_backoff(&nv_rate, attempt))
        .collect();
    assert_eq!(pauses.len(), 7);
    assert!(pauses.windows(2).all(|w| w[0] < w[1]));
    assert!(pauses.iter().sum::<std::time::Duration>() < std::time::Duration::from_secs(4));
    // TPM_RC_AUTH_FAIL, TPM_RC_NV_LOCKED, TPM_RC_RETRY (libtss2 retries that itself).
    for code in [0x9a2, 0x148, 0x922] {
        assert_eq!(device::nv_rate_backoff(&rc(code), 0), None, "{code:#x}");
    }
}
