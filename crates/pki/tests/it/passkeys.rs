//! Passkey approvals (issue 17, step P2): an assertion counts as an admin's approval of a
//! message only when made on the console the Admin CA certified the passkey for, for that
//! message, with the user present and verified, and signed by the certified key. A software
//! authenticator (`custos_test_kit::passkey`) makes the assertions, as a browser's would be made.

use custos_pki::webauthn::{approval_challenge, Assertion, AssertionFault, PasskeyBinding};
use custos_pki::{issue_passkey_admin, pem_to_der, PkiDir, TrustRoot, Validity, VerifiedAdmin};
use custos_test_kit::passkey::{verified_chain, Made, Passkey as Authenticator, ORIGIN};

const MESSAGE: &[u8] = b"custos approval message of one request";

fn honest() -> Made {
    Made::honest(ORIGIN, MESSAGE, 7)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A PKI and the passkey admin `alice`, certified for [`ORIGIN`].
fn passkey_admin(pki: &PkiDir, passkey: &Authenticator) -> VerifiedAdmin {
    let cert =
        issue_passkey_admin(pki, "alice", &passkey.spki, ORIGIN, Validity::days(30)).unwrap();
    let root = TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap()).unwrap();
    root.verify_admin(
        &pem_to_der(&cert.cert_pem, "admin").unwrap(),
        &pem_to_der(&cert.admin_ca_pem, "admin CA").unwrap(),
        now(),
    )
    .unwrap()
}

fn check(
    admin: &VerifiedAdmin,
    parts: &(Vec<u8>, Vec<u8>, Vec<u8>),
) -> Result<u32, AssertionFault> {
    admin
        .verify_assertion(
            MESSAGE,
            &Assertion {
                authenticator_data: &parts.0,
                client_data_json: &parts.1,
                signature: &parts.2,
            },
        )
        .map_err(|e| e.fault)
}

#[test]
fn an_assertion_made_on_the_console_for_this_message_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    let passkey = Authenticator::new();
    let admin = passkey_admin(&pki, &passkey);
    assert_eq!(
        admin.passkey,
        Some(PasskeyBinding {
            origin: ORIGIN.into(),
            rp_id: "console.custos.test".into(),
        })
    );
    assert_eq!(check(&admin, &honest().sign(&passkey)), Ok(7));
}

#[test]
fn assertions_made_elsewhere_for_something_else_or_without_the_user_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    let passkey = Authenticator::new();
    let admin = passkey_admin(&pki, &passkey);
    let spoiled = |change: &dyn Fn(&mut Made)| {
        let mut made = honest();
        change(&mut made);
        check(&admin, &made.sign(&passkey))
    };
    // A phishing site relaying the console's challenge: the browser writes its own origin.
    assert_eq!(
        spoiled(&|m| m.origin = format!("{ORIGIN}.evil")),
        Err(AssertionFault::WrongOrigin)
    );
    assert_eq!(
        spoiled(&|m| m.origin = "http://console.custos.test".into()),
        Err(AssertionFault::WrongOrigin)
    );
    // Another relying party's credential scope.
    assert_eq!(
        spoiled(&|m| m.rp_id = "evil.example".into()),
        Err(AssertionFault::WrongRpId)
    );
    // The assertion of another request.
    assert_eq!(
        spoiled(&|m| m.challenge = approval_challenge(b"another request")),
        Err(AssertionFault::WrongChallenge)
    );
    // A registration's client data, a framed page, no PIN or biometric, nobody there.
    assert_eq!(
        spoiled(&|m| m.kind = "webauthn.create".into()),
        Err(AssertionFault::WrongType)
    );
    assert_eq!(
        spoiled(&|m| m.cross_origin = true),
        Err(AssertionFault::CrossOrigin)
    );
    assert_eq!(
        spoiled(&|m| m.flags = 0x01),
        Err(AssertionFault::UserNotVerified)
    );
    assert_eq!(
        spoiled(&|m| m.flags = 0x04),
        Err(AssertionFault::UserNotPresent)
    );
    // Signed by another authenticator, or altered after signing.
    assert_eq!(
        check(&admin, &honest().sign(&Authenticator::new())),
        Err(AssertionFault::BadSignature)
    );
    let mut altered = honest().sign(&passkey);
    altered.0[33] ^= 1;
    assert_eq!(check(&admin, &altered), Err(AssertionFault::BadSignature));
    // Malformed parts.
    let mut short = honest().sign(&passkey);
    short.0.truncate(36);
    assert_eq!(check(&admin, &short), Err(AssertionFault::Malformed));
    let mut junk = honest().sign(&passkey);
    junk.1 = b"not json".to_vec();
    assert_eq!(check(&admin, &junk), Err(AssertionFault::Malformed));
    junk.1 = vec![b' '; 513];
    assert_eq!(check(&admin, &junk), Err(AssertionFault::Malformed));
}

#[test]
fn a_key_file_admin_never_approves_with_an_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    let folder = custos_pki::AdminFolder::new(dir.path().join("bob"));
    folder.enroll("bob", &pki).unwrap();
    let chain = std::fs::read_to_string(folder.chain()).unwrap();
    let (bob, _) = verified_chain(&pki, &chain);
    assert_eq!(bob.passkey, None);
    let passkey = Authenticator::new();
    assert_eq!(
        check(&bob, &honest().sign(&passkey)),
        Err(AssertionFault::NotAPasskey)
    );
}

#[test]
fn a_passkey_is_certified_only_for_an_https_origin_and_a_p256_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    let passkey = Authenticator::new();
    for origin in [
        "http://console.example",
        "https://console.example/approve",
        "https://console.example/?next=1",
        "https://user@console.example",
        "console.example",
    ] {
        assert!(
            issue_passkey_admin(&pki, "alice", &passkey.spki, origin, Validity::days(30)).is_err(),
            "{origin}"
        );
    }
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(issue_passkey_admin(
        &pki,
        "alice",
        &ed.public_key_der(),
        ORIGIN,
        Validity::days(30)
    )
    .is_err());
}
