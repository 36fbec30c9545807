//! Device CSRs (`custos pki sign-csr`) go through the same checks as admin CSRs before a
//! Cluster CA signs from them: size, P-256 key signed with ECDSA SHA-256, a self-signature
//! that verifies, a valid node name. Each refusal names what was wrong and writes nothing.

use custos_pki::{der_to_pem, pem_to_der, PkiDir, PkiError, MAX_CSR_PEM};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

const CLUSTER: &str = "dc1";

fn new_pki() -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    pki.create_cluster_ca(CLUSTER).unwrap();
    (dir, pki)
}

/// A CSR of `node` for a new key of `alg`, with `ou` as organisational unit when given.
fn csr(node: &str, alg: &'static rcgen::SignatureAlgorithm, ou: Option<&str>) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn device_file(pki: &PkiDir, node: &str) -> std::path::PathBuf {
    pki.path()
        .join("devices")
        .join(CLUSTER)
        .join(format!("{node}.crt"))
}

#[test]
fn a_genuine_device_csr_is_signed() {
    let (_d, pki) = new_pki();
    let pem = csr("node1", &rcgen::PKCS_ECDSA_P256_SHA256, None);
    pki.sign_device_csr(CLUSTER, &pem).unwrap();
    assert!(device_file(&pki, "node1").exists());
}

#[test]
fn a_device_csr_with_a_broken_signature_is_refused() {
    let (_d, pki) = new_pki();
    let pem = csr("node1", &rcgen::PKCS_ECDSA_P256_SHA256, None);
    // The name changed after signing: whoever sent it does not prove holding the key of
    // the request it sends.
    let mut der = pem_to_der(&pem, "csr").unwrap();
    let at = der
        .windows(5)
        .position(|w| w == b"node1")
        .expect("the name is in the request");
    der[at + 4] = b'9';
    let forged = der_to_pem(&der, "CERTIFICATE REQUEST");
    let err = pki.sign_device_csr(CLUSTER, &forged).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature(_)), "{err}");
    assert!(!device_file(&pki, "node9").exists());
}

#[test]
fn a_device_csr_of_another_key_type_is_refused() {
    let (_d, pki) = new_pki();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let err = pki
            .sign_device_csr(CLUSTER, &csr("node1", alg, None))
            .unwrap_err();
        assert!(matches!(err, PkiError::CsrKeyType(_)), "{err}");
    }
    assert!(!device_file(&pki, "node1").exists());
}

#[test]
fn an_oversized_device_csr_is_refused_before_parsing() {
    let (_d, pki) = new_pki();
    // A genuine, well-signed P-256 request, made large by a long subject attribute.
    let big = csr(
        "node1",
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some(&"x".repeat(MAX_CSR_PEM)),
    );
    assert!(big.len() > MAX_CSR_PEM);
    let err = pki.sign_device_csr(CLUSTER, &big).unwrap_err();
    assert!(
        matches!(err, PkiError::CsrTooLarge { len, max: MAX_CSR_PEM, .. } if len == big.len()),
        "{err}"
    );
    // Garbage of any size is refused by its size, not read.
    let junk = "A".repeat(10 * 1024 * 1024);
    let err = pki.sign_device_csr(CLUSTER, &junk).unwrap_err();
    assert!(matches!(err, PkiError::CsrTooLarge { .. }), "{err}");
    assert!(!device_file(&pki, "node1").exists());
}

#[test]
fn device_names_keep_their_rules() {
    let (_d, pki) = new_pki();
    for bad in ["bridge", "relay", "Node 1"] {
        let err = pki
            .sign_device_csr(CLUSTER, &csr(bad, &rcgen::PKCS_ECDSA_P256_SHA256, None))
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidName(_)), "{bad}: {err}");
    }
    let err = pki.sign_device_csr(CLUSTER, "not a CSR").unwrap_err();
    assert!(matches!(err, PkiError::Malformed { .. }), "{err}");
}
