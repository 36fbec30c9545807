//! Approvers own their keys (issue 12, item 2): the admin's key file is owner-only and made on
//! the admin's side; the PKI issues admin certificates only from checked CSRs and keeps no
//! admin key; an admin is identified by the certified key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use custos_pki::{
    admin_csr, key_fingerprint, pem_to_der, AdminSigner, FileKey, PkiDir, PkiError, TrustRoot,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::prelude::{FromDer, X509Certificate};

fn new_pki() -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    (dir, pki)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn key_file_is_owner_only_never_replaced_and_an_exposed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.key");
    let made = FileKey::generate(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = FileKey::load(&path).unwrap();
    use custos_pki::AdminKey;
    assert_eq!(made.public_key(), loaded.public_key());
    assert!(matches!(
        FileKey::generate(&path),
        Err(PkiError::AlreadyExists(_))
    ));
    for exposed in [0o640, 0o604, 0o660, 0o602] {
        chmod(&path, exposed);
        let err = FileKey::load(&path).unwrap_err();
        assert!(
            matches!(err, PkiError::KeyFileExposed { mode, .. } if mode == exposed),
            "{exposed:o}: {err}"
        );
    }
    chmod(&path, 0o400);
    FileKey::load(&path).unwrap();
}

#[test]
fn admin_certificate_is_issued_from_the_csr_alone() {
    let (pki_dir, pki) = new_pki();
    let admin_dir = tempfile::tempdir().unwrap();
    let key_path = admin_dir.path().join("admin.key");
    let key = Arc::new(FileKey::generate(&key_path).unwrap());
    let csr = admin_csr("alice", key.clone()).unwrap();
    // The key is gone from the machine before the PKI issues: it cannot have read it.
    std::fs::remove_file(&key_path).unwrap();
    let issued = pki.sign_admin_csr(&csr).unwrap();
    assert_eq!(issued.name, "alice");

    let signer = AdminSigner::from_chain_pem(key, &issued.chain_pem()).unwrap();
    assert_eq!(signer.name(), "alice");
    let sig = signer.sign(b"approve").unwrap();
    let root = TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap()).unwrap();
    let id = root
        .verify_admin_signature(
            &signer.cert_der,
            &signer.admin_ca_der,
            now(),
            b"approve",
            &sig,
        )
        .unwrap();
    assert_eq!(id.name, "alice");
    // The identity is the certified key: SHA-256 of its SubjectPublicKeyInfo.
    let (_, cert) = X509Certificate::from_der(&signer.cert_der).unwrap();
    assert_eq!(
        signer.key_fingerprint(),
        key_fingerprint(cert.public_key().raw)
    );

    // The PKI recorded the certificate and no key of the admin.
    let recorded: Vec<_> = std::fs::read_dir(pki_dir.path().join("admins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(recorded, vec!["alice.crt".to_string()]);
    let text = std::fs::read_to_string(pki.admin_cert_file("alice")).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    // A second admin under a recorded name is refused.
    let other = Arc::new(FileKey::generate(&admin_dir.path().join("b.key")).unwrap());
    assert!(matches!(
        pki.sign_admin_csr(&admin_csr("alice", other).unwrap()),
        Err(PkiError::AlreadyExists(_))
    ));
}

#[test]
fn csr_with_a_broken_signature_is_refused() {
    let (_d, pki) = new_pki();
    let admin_dir = tempfile::tempdir().unwrap();
    let key = Arc::new(FileKey::generate(&admin_dir.path().join("admin.key")).unwrap());
    let csr = admin_csr("alice", key).unwrap();
    // Change the requested name after signing: the signature no longer covers the request.
    let mut der = pem_to_der(&csr, "csr").unwrap();
    let at = der
        .windows(5)
        .position(|w| w == b"alice")
        .expect("the name is in the request");
    der[at + 4] = b'x';
    let forged = custos_pki::der_to_pem(&der, "CERTIFICATE REQUEST");
    let err = pki.sign_admin_csr(&forged).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature(_)), "{err}");
    assert!(!pki.admin_cert_file("alicx").exists());
}

#[test]
fn csr_of_another_key_type_is_refused() {
    let (_d, pki) = new_pki();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let err = pki.sign_admin_csr(&csr).unwrap_err();
        assert!(matches!(err, PkiError::CsrKeyType(_)), "{err}");
    }
    let err = pki.sign_admin_csr("not a CSR").unwrap_err();
    assert!(matches!(err, PkiError::Malformed { .. }), "{err}");
}

#[test]
fn a_certificate_is_never_joined_with_another_key() {
    let (_d, pki) = new_pki();
    let admin_dir = tempfile::tempdir().unwrap();
    let alice = Arc::new(FileKey::generate(&admin_dir.path().join("a.key")).unwrap());
    let other = Arc::new(FileKey::generate(&admin_dir.path().join("o.key")).unwrap());
    let issued = pki
        .sign_admin_csr(&admin_csr("alice", alice).unwrap())
        .unwrap();
    let err = AdminSigner::new(other, &issued.cert_pem, &issued.admin_ca_pem).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");
}
