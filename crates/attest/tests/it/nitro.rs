//! AWS Nitro: the nitro_attest 0.2.0 sample document (eu-central-1, 2025-01-06).

use custos_attest::{expect_binding, verify_nitro, AttestError, NitroPolicy, MAX_NITRO_DOCUMENT};

use crate::{code, fixture};

/// 2025-01-06T16:07:05Z: the signing certificate is valid 16:07:02–19:07:05Z that day.
const AT: u64 = 1_736_179_625;

fn document() -> Vec<u8> {
    fixture("nitro/attestation.cose")
}

#[test]
fn genuine_document_verifies_at_its_time() {
    let ev = verify_nitro(&document(), AT, &NitroPolicy::aws()).unwrap();
    assert_eq!(ev.module_id, "i-0bee92034f3d60691-enc01943c5eaab3ad6a");
    assert_eq!(ev.public_key.as_ref().map(Vec::len), Some(294));
    assert_eq!(ev.user_data, None);
    assert_eq!(ev.nonce, None);
    assert!(ev.pcrs.contains_key(&0) && ev.pcrs.values().all(|v| v.len() == 48));
    // The pinned time is the document's own (the NSM's clock), to the second.
    assert_eq!(ev.timestamp_ms, 1_736_179_625_472);
}

#[test]
fn flipped_signature_byte_is_signature_invalid() {
    let mut doc = document();
    let n = doc.len();
    doc[n - 10] ^= 1;
    assert_eq!(
        code(verify_nitro(&doc, AT, &NitroPolicy::aws())),
        "signature_invalid"
    );
}

#[test]
fn edited_module_id_is_signature_invalid() {
    // The attacker's edit that still decodes: one character of the signed payload.
    let mut doc = document();
    let at = doc
        .windows(19)
        .position(|w| w == b"i-0bee92034f3d60691")
        .expect("module_id in the payload");
    doc[at + 2] = b'1';
    assert_eq!(
        code(verify_nitro(&doc, AT, &NitroPolicy::aws())),
        "signature_invalid"
    );
}

#[test]
fn another_root_is_wrong_root() {
    let policy = NitroPolicy {
        root_sha256: [0x41; 32],
    };
    assert_eq!(code(verify_nitro(&document(), AT, &policy)), "wrong_root");
}

#[test]
fn after_the_certificate_expired_is_certificate_expired() {
    let later = AT + 4 * 3600;
    assert_eq!(
        code(verify_nitro(&document(), later, &NitroPolicy::aws())),
        "certificate_expired"
    );
    let earlier = AT - 3600;
    assert_eq!(
        code(verify_nitro(&document(), earlier, &NitroPolicy::aws())),
        "certificate_not_yet_valid"
    );
}

#[test]
fn oversize_and_truncated_documents_are_refused_by_name() {
    let big = vec![0u8; MAX_NITRO_DOCUMENT + 1];
    assert!(matches!(
        verify_nitro(&big, AT, &NitroPolicy::aws()),
        Err(AttestError::Oversize { .. })
    ));
    let doc = document();
    assert_eq!(
        code(verify_nitro(&doc[..doc.len() / 2], AT, &NitroPolicy::aws())),
        "malformed"
    );
}

#[test]
fn binding_refuses_any_other_value() {
    // The sample binds a 294-byte public key and no user data: no 32-byte value matches it.
    let ev = verify_nitro(&document(), AT, &NitroPolicy::aws()).unwrap();
    assert_eq!(
        expect_binding(&ev, &[0; 32]),
        Err(AttestError::BindingMismatch)
    );
}
