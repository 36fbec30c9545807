//! PKI issuance and the Custos chain rules, end to end on real certificates.

use std::sync::Arc;

use custos_pki::{
    admin_csr, issue_admin_from_csr_with_validity, pem_to_der, AdminSigner, DeviceChain, FileKey,
    PkiDir, PkiError, Service, TrustRoot, Validity,
};

use crate::own_admin;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use std::os::unix::fs::PermissionsExt;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn new_pki(clusters: &[&str]) -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    for c in clusters {
        pki.create_cluster_ca(c).unwrap();
    }
    (dir, pki)
}

fn csr(node: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.pem().unwrap())
}

fn device_chain(pki: &PkiDir, cluster: &str, node: &str) -> (KeyPair, DeviceChain) {
    let (key, csr) = csr(node);
    let cert = pki.sign_device_csr(cluster, &csr).unwrap();
    (
        key,
        DeviceChain {
            device: pem_to_der(&cert, "c").unwrap(),
            cluster_ca: pem_to_der(&pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&pki.device_ca_pem().unwrap(), "c").unwrap(),
        },
    )
}

fn root(pki: &PkiDir) -> TrustRoot {
    TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap()).unwrap()
}

#[test]
fn private_keys_are_0600_and_init_refuses_overwrite() {
    let (dir, pki) = new_pki(&["dc1"]);
    for f in [
        "root-ca.key",
        "admin-ca.key",
        "device-ca.key",
        "clusters/dc1/cluster-ca.key",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(matches!(pki.init(), Err(PkiError::AlreadyExists(_))));
    assert!(matches!(
        pki.create_cluster_ca("dc1"),
        Err(PkiError::AlreadyExists(_))
    ));
}

#[test]
fn admin_signature_verifies_and_binds_message() {
    let (_d, pki) = new_pki(&[]);
    let signer = own_admin(&pki, "alice");
    let sig = signer.sign(b"hello").unwrap();
    let id = root(&pki)
        .verify_admin_signature(
            &signer.cert_der,
            &signer.admin_ca_der,
            now(),
            b"hello",
            &sig,
        )
        .unwrap();
    assert_eq!(id.name, "alice");
    let err = root(&pki)
        .verify_admin_signature(
            &signer.cert_der,
            &signer.admin_ca_der,
            now(),
            b"hellO",
            &sig,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::BadSignature(_)), "{err}");
}

#[test]
fn admin_from_foreign_pki_is_rejected() {
    let (_d1, pki) = new_pki(&[]);
    let (_d2, other) = new_pki(&[]);
    let signer = own_admin(&other, "mallory");
    let sig = signer.sign(b"m").unwrap();
    let err = root(&pki)
        .verify_admin_signature(&signer.cert_der, &signer.admin_ca_der, now(), b"m", &sig)
        .unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");
}

#[test]
fn expired_admin_is_rejected() {
    let (_d, pki) = new_pki(&[]);
    let admin_dir = tempfile::tempdir().unwrap();
    let past = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(10),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };
    let key = Arc::new(FileKey::generate(&admin_dir.path().join("admin.key")).unwrap());
    let csr = admin_csr("old", key.clone()).unwrap();
    let issued = issue_admin_from_csr_with_validity(&pki, &csr, past).unwrap();
    let signer = AdminSigner::new(key, &issued.cert_pem, &issued.admin_ca_pem).unwrap();
    let sig = signer.sign(b"m").unwrap();
    let err = root(&pki)
        .verify_admin_signature(&signer.cert_der, &signer.admin_ca_der, now(), b"m", &sig)
        .unwrap_err();
    assert!(matches!(err, PkiError::NotValidNow { .. }), "{err}");
}

#[test]
fn device_chain_checks_cluster_and_roles() {
    let (_d, pki) = new_pki(&["dc1", "dc2"]);
    let (_k, chain) = device_chain(&pki, "dc1", "node-1");
    let tr = root(&pki);
    let id = tr.verify_device(&chain, Some("dc1"), now()).unwrap();
    assert_eq!((id.cluster.as_str(), id.node.as_str()), ("dc1", "node-1"));
    let err = tr.verify_device(&chain, Some("dc2"), now()).unwrap_err();
    assert!(matches!(err, PkiError::WrongCluster { .. }), "{err}");

    // Presenting another cluster's CA as intermediate breaks the path.
    let mut swapped = chain.clone();
    swapped.cluster_ca = pem_to_der(&pki.cluster_ca_pem("dc2").unwrap(), "c").unwrap();
    assert!(tr.verify_device(&swapped, None, now()).is_err());

    // An admin certificate cannot pass as a device, nor a device as an admin.
    let admin = own_admin(&pki, "alice");
    let mut as_device = chain.clone();
    as_device.device = admin.cert_der.clone();
    assert!(tr.verify_device(&as_device, None, now()).is_err());
    let err = tr
        .verify_admin_signature(&chain.device, &admin.admin_ca_der, now(), b"m", b"sig")
        .unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");

    // The Admin CA cannot stand in for a Cluster CA.
    let mut wrong_role = chain.clone();
    wrong_role.cluster_ca = admin.admin_ca_der.clone();
    let err = tr.verify_device(&wrong_role, None, now()).unwrap_err();
    assert!(matches!(err, PkiError::ChainRejected { .. }), "{err}");
}

#[test]
fn device_from_foreign_pki_is_rejected() {
    let (_d1, pki) = new_pki(&["dc1"]);
    let (_d2, other) = new_pki(&["dc1"]);
    let (_k, chain) = device_chain(&other, "dc1", "node-x");
    assert!(root(&pki)
        .verify_device(&chain, Some("dc1"), now())
        .is_err());
}

#[test]
fn oversize_and_garbage_certificates_are_malformed() {
    let (_d, pki) = new_pki(&["dc1"]);
    let (_k, mut chain) = device_chain(&pki, "dc1", "n");
    chain.device = vec![0x30; 20_000];
    assert!(matches!(
        root(&pki).verify_device(&chain, None, now()),
        Err(PkiError::Malformed { .. })
    ));
    assert!(TrustRoot::from_der(b"not a certificate").is_err());
    // A CA that is not the root cannot be pinned as root.
    let admin_ca = pem_to_der(&pki.admin_ca_pem().unwrap(), "c").unwrap();
    assert!(TrustRoot::from_der(&admin_ca).is_err());
}

#[test]
fn bridge_certificate_is_not_a_device_and_vice_versa() {
    let (_d, pki) = new_pki(&["dc1"]);
    let issued = pki.issue_bridge("dc1").unwrap();
    let chain = DeviceChain {
        device: pem_to_der(&issued.cert_pem, "c").unwrap(),
        cluster_ca: pem_to_der(&pki.cluster_ca_pem("dc1").unwrap(), "c").unwrap(),
        device_ca: pem_to_der(&pki.device_ca_pem().unwrap(), "c").unwrap(),
    };
    let tr = root(&pki);
    let id = tr.verify_bridge(&chain, Some("dc1"), now()).unwrap();
    assert_eq!(id.cluster, "dc1");
    assert!(tr.verify_device(&chain, Some("dc1"), now()).is_err());
    let (_k, device) = device_chain(&pki, "dc1", "node-1");
    assert!(tr.verify_bridge(&device, Some("dc1"), now()).is_err());
}

#[test]
fn relay_certificate_has_its_own_role() {
    let (_d, pki) = new_pki(&["dc1", "dc2"]);
    let chain_of = |service| {
        let issued = pki.issue_service("dc1", service).unwrap();
        DeviceChain {
            device: pem_to_der(&issued.cert_pem, "c").unwrap(),
            cluster_ca: pem_to_der(&pki.cluster_ca_pem("dc1").unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&pki.device_ca_pem().unwrap(), "c").unwrap(),
        }
    };
    let relay = chain_of(Service::Relay);
    let bridge = chain_of(Service::Bridge);
    let tr = root(&pki);
    let id = tr.verify_relay(&relay, Some("dc1"), now()).unwrap();
    assert_eq!((id.cluster.as_str(), id.node.as_str()), ("dc1", "relay"));
    assert!(matches!(
        tr.verify_relay(&relay, Some("dc2"), now()),
        Err(PkiError::WrongCluster { .. })
    ));
    // A relay can never pose as a bridge or a vault node, nor a bridge as a relay.
    assert!(tr.verify_bridge(&relay, Some("dc1"), now()).is_err());
    assert!(tr.verify_device(&relay, Some("dc1"), now()).is_err());
    assert!(tr.verify_relay(&bridge, Some("dc1"), now()).is_err());
    let (_k, device) = device_chain(&pki, "dc1", "node-1");
    assert!(tr.verify_relay(&device, Some("dc1"), now()).is_err());
    // Nor can a node take the relay's name.
    let (_k, csr) = csr("relay");
    assert!(matches!(
        pki.sign_device_csr("dc1", &csr),
        Err(PkiError::InvalidName(_))
    ));
    let (cert, key) = pki.service_files("dc1", Service::Relay);
    assert!(cert.exists() && key.exists());
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
