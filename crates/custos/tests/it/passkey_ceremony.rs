//! The passkey registration ceremony (issue 17, step P1), attacker first: a registration
//! made on a phishing site or for another challenge, a proof of possession signed by another
//! key, and steps out of order are refused by name and certify nothing; an honest ceremony,
//! run through `custos pki passkey`, gives a certificate whose passkey approves a request.

use std::process::Command;

use custos::passkey::{begin, certify, prove, Ceremony, CeremonyError};
use custos_pki::{PkiDir, Validity};
use custos_test_kit::passkey::{verified_chain, Made, Passkey, ORIGIN};
use custos_wire::approval::{check_signature, Approval, PasskeyAssertion};

use crate::common::exe;

fn pki() -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path().join("pki"));
    pki.init().unwrap();
    (dir, pki)
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// A ceremony of `name` taken to its proof step with `passkey`; the options for `get`.
fn registered(name: &str, passkey: &Passkey) -> (Ceremony, serde_json::Value) {
    let (ceremony, create) = begin(name, ORIGIN).unwrap();
    let registration = passkey.register(&json(&create), ORIGIN);
    let (ceremony, get) = prove(ceremony, registration.to_string().as_bytes()).unwrap();
    (ceremony, json(&get))
}

#[test]
fn registrations_made_elsewhere_or_proofs_by_another_key_certify_nothing() {
    let (_dir, pki) = pki();
    let passkey = Passkey::new();

    // A phishing site relayed the options: the browser writes the site's origin.
    let (ceremony, create) = begin("alice", ORIGIN).unwrap();
    let phished = passkey.register(&json(&create), "https://console.custos.test.evil.example");
    assert!(matches!(
        prove(ceremony, phished.to_string().as_bytes()),
        Err(CeremonyError::Registration(_))
    ));
    // A registration answering another ceremony's challenge.
    let (ceremony, _) = begin("alice", ORIGIN).unwrap();
    let (_, other) = begin("alice", ORIGIN).unwrap();
    let stale = passkey.register(&json(&other), ORIGIN);
    assert!(matches!(
        prove(ceremony, stale.to_string().as_bytes()),
        Err(CeremonyError::Registration(_))
    ));
    // Not JSON of a credential, or over the limit.
    let (ceremony, _) = begin("alice", ORIGIN).unwrap();
    assert!(matches!(
        prove(ceremony, b"{\"id\": 1}"),
        Err(CeremonyError::Malformed { .. })
    ));

    // Someone else's public key registered: its proof of possession must come from the
    // registered key, and another authenticator's assertion is refused.
    let (ceremony, get) = registered("alice", &passkey);
    let mut stranger = Passkey::new();
    stranger.id = passkey.id.clone();
    let forged = stranger.assert(&get, ORIGIN);
    assert!(matches!(
        certify(
            &pki,
            &ceremony,
            forged.to_string().as_bytes(),
            Validity::days(30)
        ),
        Err(CeremonyError::Proof(_))
    ));
    // Without user verification (flag UV clear): refused.
    let o = &get["publicKey"];
    let unverified = Made {
        challenge: o["challenge"].as_str().unwrap().into(),
        flags: 0x01,
        ..Made::honest(ORIGIN, b"", passkey.next_counter())
    };
    let response = passkey.assertion_response(&unverified);
    assert!(matches!(
        certify(
            &pki,
            &ceremony,
            response.to_string().as_bytes(),
            Validity::days(30)
        ),
        Err(CeremonyError::Proof(_))
    ));
    // Steps out of order: a state still waiting for its registration certifies nothing.
    let (early, _) = begin("alice", ORIGIN).unwrap();
    assert!(matches!(
        certify(&pki, &early, b"{}", Validity::days(30)),
        Err(CeremonyError::WrongStep { .. })
    ));
    // Nothing was recorded in the PKI.
    assert!(!pki.admin_cert_file("alice").exists());
    // The origin rule is the certificate's.
    assert!(matches!(
        begin("alice", "http://console.custos.test"),
        Err(CeremonyError::Origin { .. })
    ));
}

#[test]
fn an_honest_ceremony_through_the_cli_certifies_a_passkey_that_approves() {
    let (dir, pki) = pki();
    let passkey = Passkey::new();
    let file = |name: &str| dir.path().join(name);
    let run = |args: &[&str]| {
        let out = Command::new(exe())
            .arg("pki")
            .arg("--dir")
            .arg(pki.path())
            .arg("passkey")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let path = |name: &str| file(name).to_str().unwrap().to_string();
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(file(name)).unwrap()).unwrap()
    };
    run(&[
        "begin",
        "--name",
        "alice",
        "--origin",
        ORIGIN,
        "--state",
        &path("alice.ceremony"),
        "--options",
        &path("create.json"),
    ]);
    let registration = passkey.register(&read("create.json"), ORIGIN);
    std::fs::write(file("registration.json"), registration.to_string()).unwrap();
    run(&[
        "prove",
        "--state",
        &path("alice.ceremony"),
        "--registration",
        &path("registration.json"),
        "--options",
        &path("get.json"),
    ]);
    let assertion = passkey.assert(&read("get.json"), ORIGIN);
    std::fs::write(file("assertion.json"), assertion.to_string()).unwrap();
    run(&[
        "certify",
        "--state",
        &path("alice.ceremony"),
        "--assertion",
        &path("assertion.json"),
        "--out",
        &path("alice.crt"),
    ]);

    // The chain certifies the passkey's own key for the console, and its assertion approves.
    let chain = std::fs::read_to_string(file("alice.crt")).unwrap();
    let (alice, ders) = verified_chain(&pki, &chain);
    assert_eq!(
        alice.passkey.as_ref().map(|b| b.origin.as_str()),
        Some(ORIGIN)
    );
    assert_eq!(alice.identity.key, passkey.fp());
    let message = b"an approval message";
    let (authenticator_data, client_data_json, signature) =
        Made::honest(ORIGIN, message, passkey.next_counter()).sign(&passkey);
    let approval = Approval {
        admin_cert: ders[0].clone(),
        admin_ca: ders[1].clone(),
        signature,
        webauthn: Some(PasskeyAssertion {
            authenticator_data,
            client_data_json,
        }),
    };
    assert!(matches!(
        check_signature(&alice, message, &approval),
        Ok(Some(_))
    ));
    assert!(pki.admin_cert_file("alice").exists());

    // The same passkey for a second seat (the browser's answers carried alice's passkey into
    // carol's ceremony), or alice's name again: refused, nothing recorded.
    let (ceremony, get) = registered("carol", &passkey);
    assert_eq!(
        custos::passkey::registered_key(&ceremony),
        Some(hex::encode(passkey.fp()))
    );
    match certify(
        &pki,
        &ceremony,
        passkey.assert(&get, ORIGIN).to_string().as_bytes(),
        Validity::days(30),
    ) {
        Err(CeremonyError::KeyTaken { holder, .. }) => assert_eq!(holder, "alice"),
        other => panic!("a key certified twice: {:?}", other.map(|c| c.name)),
    }
    assert!(!pki.admin_cert_file("carol").exists());
    let other = Passkey::new();
    let (ceremony, get) = registered("alice", &other);
    assert!(matches!(
        certify(
            &pki,
            &ceremony,
            other.assert(&get, ORIGIN).to_string().as_bytes(),
            Validity::days(30)
        ),
        Err(CeremonyError::NameTaken(_))
    ));
}
