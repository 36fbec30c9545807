//! The threshold-key dealer role: its key made on the dealer's side, its certificate issued
//! by the Admin CA from its CSR alone, verified by its own EKU and role, and never
//! interchangeable with an admin.

use std::os::unix::fs::PermissionsExt;

use std::path::Path;
use std::sync::Arc;

use custos_pki::{
    dealer_csr, issue_dealer_from_csr_with_validity, pem_to_der, role, DealerFolder, DealerSigner,
    FileKey, PkiDir, PkiError, TrustRoot, Validity, EKU_ADMIN_APPROVAL, EKU_DEALER,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn new_pki() -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    (dir, pki)
}

fn root(pki: &PkiDir) -> TrustRoot {
    TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap()).unwrap()
}

/// Loads a CA of the directory as an rcgen issuer (as the PKI itself does).
fn issuer(pki: &PkiDir, base: &str) -> (rcgen::Certificate, KeyPair) {
    let read =
        |ext: &str| std::fs::read_to_string(pki.path().join(format!("{base}.{ext}"))).unwrap();
    let key = KeyPair::from_pem(&read("key")).unwrap();
    let cert = CertificateParams::from_ca_cert_pem(&read("crt"))
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert, key)
}

fn leaf(cn: &str, ou: &str, ekus: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Custos");
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = ekus;
    p.use_authority_key_identifier_extension = true;
    p
}

/// The dealer `name`, made the way a dealer does: its key in a 0600 file in a folder of its
/// own (a temporary directory, outside the PKI), its CSR issued by the PKI.
fn own_dealer(pki: &PkiDir, name: &str) -> (tempfile::TempDir, DealerSigner) {
    let dir = tempfile::tempdir().unwrap();
    let signer = DealerFolder::new(dir.path().join("dealer"))
        .enroll(name, pki)
        .unwrap();
    (dir, signer)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn dealer_is_issued_stored_and_verified() {
    let (dir, pki) = new_pki();
    let dealer_dir = tempfile::tempdir().unwrap();
    let folder = DealerFolder::new(dealer_dir.path().join("dealer"));
    let signer = folder.enroll("dealer", &pki).unwrap();
    // The key is the dealer's, owner-only, in the dealer's folder ...
    assert_eq!(
        std::fs::metadata(folder.key())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // ... and the PKI holds the dealer's certificate only: no private key under it but the
    // CAs' own.
    assert!(pki.dealer_cert_file("dealer").exists());
    let ca_keys = ["root-ca.key", "admin-ca.key", "device-ca.key"];
    for f in files(dir.path()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            !text.contains("PRIVATE KEY") || ca_keys.contains(&name),
            "{} holds a private key",
            f.display()
        );
    }
    // A second dealer under a recorded name is refused.
    let other = tempfile::tempdir().unwrap();
    let key = Arc::new(FileKey::generate(&other.path().join("k")).unwrap());
    assert!(matches!(
        pki.sign_dealer_csr(&dealer_csr("dealer", key).unwrap()),
        Err(PkiError::AlreadyExists(_))
    ));
    let same = folder.signer().unwrap();
    assert_eq!(signer.cert_der, same.cert_der);
    // A chain of another key is never joined with this key.
    let key = Arc::new(FileKey::generate(&other.path().join("k2")).unwrap());
    let chain = std::fs::read_to_string(folder.chain()).unwrap();
    assert!(matches!(
        DealerSigner::from_chain_pem(key, &chain),
        Err(PkiError::KeyMismatch)
    ));

    let tr = root(&pki);
    let dealer = tr
        .verify_dealer(&signer.cert_der, &signer.admin_ca_der, now())
        .unwrap();
    assert_eq!(dealer.identity.name, "dealer");
    assert!(dealer.valid_at(now()));
    let sig = signer.sign(b"bundle transcript");
    dealer.verify_signature(b"bundle transcript", &sig).unwrap();
    assert!(matches!(
        dealer.verify_signature(b"bundle transcripT", &sig),
        Err(PkiError::BadSignature(_))
    ));
}

#[test]
fn admin_and_dealer_cannot_act_as_each_other() {
    let (_d, pki) = new_pki();
    let (_dealer_dir, dealer) = own_dealer(&pki, "dealer");
    let admin = crate::own_admin(&pki, "alice");
    let tr = root(&pki);

    // A dealer approves nothing ...
    let sig = dealer.sign(b"approval");
    let err = tr
        .verify_admin_signature(
            &dealer.cert_der,
            &dealer.admin_ca_der,
            now(),
            b"approval",
            &sig,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");
    // ... and an admin deals nothing.
    let err = tr
        .verify_dealer(&admin.cert_der, &admin.admin_ca_der, now())
        .unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");

    // The role marker is checked besides the EKU: a certificate of the Admin CA with the
    // dealer OU but the admin EKU is neither, and so is one with the admin OU but the
    // dealer EKU.
    let (ca, ca_key) = issuer(&pki, "admin-ca");
    for (ou, eku) in [
        (role::DEALER, EKU_ADMIN_APPROVAL),
        (role::ADMIN, EKU_DEALER),
    ] {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf(
            "mixed",
            ou,
            vec![ExtendedKeyUsagePurpose::Other(eku.to_vec())],
        )
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
        let admin_ca = &admin.admin_ca_der;
        assert!(
            tr.verify_admin(cert.der(), admin_ca, now()).is_err(),
            "{ou}"
        );
        assert!(
            tr.verify_dealer(cert.der(), admin_ca, now()).is_err(),
            "{ou}"
        );
    }
}

#[test]
fn dealer_from_a_foreign_pki_or_expired_is_rejected() {
    let (_d1, pki) = new_pki();
    let (_d2, other) = new_pki();
    let (_dealer_dir, foreign) = own_dealer(&other, "dealer");
    let err = root(&pki)
        .verify_dealer(&foreign.cert_der, &foreign.admin_ca_der, now())
        .unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");

    let past = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(10),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };
    let old_dir = tempfile::tempdir().unwrap();
    let (key, csr) = DealerFolder::new(old_dir.path().join("old"))
        .keygen("old")
        .unwrap();
    let issued = issue_dealer_from_csr_with_validity(&pki, &csr, past).unwrap();
    let old = DealerSigner::new(key, &issued.cert_pem, &issued.admin_ca_pem).unwrap();
    let err = root(&pki)
        .verify_dealer(&old.cert_der, &old.admin_ca_der, now())
        .unwrap_err();
    assert!(matches!(err, PkiError::NotValidNow { .. }), "{err}");
}

#[test]
fn an_admin_ca_without_the_dealer_eku_cannot_issue_dealers() {
    // A PKI made before the dealer role: its Admin CA lists the admin EKU only.
    let (_d, pki) = new_pki();
    let (root_cert, root_key) = issuer(&pki, "root-ca");
    let ca_key_pem = std::fs::read_to_string(pki.path().join("admin-ca.key")).unwrap();
    let ca_key = KeyPair::from_pem(&ca_key_pem).unwrap();
    let mut params = CertificateParams::from_ca_cert_pem(&pki.admin_ca_pem().unwrap()).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(EKU_ADMIN_APPROVAL.to_vec())];
    params.use_authority_key_identifier_extension = true;
    let old_ca = params.signed_by(&ca_key, &root_cert, &root_key).unwrap();
    std::fs::write(pki.path().join("admin-ca.crt"), old_ca.pem()).unwrap();

    // Admins still work ...
    let admin = crate::own_admin(&pki, "alice");
    root(&pki)
        .verify_admin(&admin.cert_der, &admin.admin_ca_der, now())
        .unwrap();
    // ... but a dealer is refused at issuance, and nothing is written.
    let dealer_dir = tempfile::tempdir().unwrap();
    let Err(err) = DealerFolder::new(dealer_dir.path()).enroll("dealer", &pki) else {
        panic!("a dealer was issued by an Admin CA without the dealer EKU");
    };
    assert!(
        matches!(err, PkiError::ChainRejected { ref reason, .. } if reason.contains("predates")),
        "{err}"
    );
    assert!(!pki.dealer_cert_file("dealer").exists());
}

#[test]
fn a_dealer_csr_goes_through_the_csr_checks() {
    let (_d, pki) = new_pki();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "dealer");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let err = pki.sign_dealer_csr(&csr).unwrap_err();
        assert!(matches!(err, PkiError::CsrKeyType(_)), "{err}");
    }
    let err = pki.sign_dealer_csr(&"A".repeat(1 << 20)).unwrap_err();
    assert!(matches!(err, PkiError::CsrTooLarge { .. }), "{err}");
    assert!(!pki.dealer_cert_file("dealer").exists());
}
