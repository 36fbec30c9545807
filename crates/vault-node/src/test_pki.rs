//! TEST ONLY: a real PKI in a temporary directory (Root, Device CA, Cluster CAs of dc1 and
//! dc2) issuing device certificates the way `custos pki sign-csr` does. Mirrors
//! `custos_wire::test_pki`, which is private to that crate.

use custos_pki::{pem_to_der, DeviceChain, DeviceIdentity, PkiDir, TrustRoot};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

/// A PKI with clusters dc1 and dc2.
pub struct Pki {
    dir: tempfile::TempDir,
    pki: PkiDir,
    /// The pinned Root as verifiers hold it.
    pub root: TrustRoot,
    /// The Root certificate, DER.
    pub root_der: Vec<u8>,
}

impl Pki {
    /// Root, Device CA and the CAs of dc1 and dc2.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = PkiDir::new(dir.path().join("pki"));
        pki.init().expect("pki init");
        for c in ["dc1", "dc2"] {
            pki.create_cluster_ca(c).expect("cluster CA");
        }
        let root_der = pem_to_der(&pki.root_pem().unwrap(), "root").unwrap();
        let root = TrustRoot::from_der(&root_der).expect("root");
        Pki {
            dir,
            pki,
            root,
            root_der,
        }
    }

    /// The Root certificate as a PEM file (what a node's `root_ca` names).
    pub fn root_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("root.crt");
        std::fs::write(&path, self.pki.root_pem().unwrap()).unwrap();
        path
    }

    /// `key` certified as `node` of `cluster`, with the CA certificates above it.
    pub fn chain(&self, key: &KeyPair, cluster: &str, node: &str) -> DeviceChain {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        let csr = params.serialize_request(key).unwrap().pem().unwrap();
        let cert = self.pki.sign_device_csr(cluster, &csr).unwrap();
        DeviceChain {
            device: pem_to_der(&cert, "device").unwrap(),
            cluster_ca: pem_to_der(&self.pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&self.pki.device_ca_pem().unwrap(), "d").unwrap(),
        }
    }

    /// The identity a chain of `key` as `node` of `cluster` proves.
    pub fn identity(&self, key: &KeyPair, cluster: &str, node: &str) -> DeviceIdentity {
        let chain = self.chain(key, cluster, node);
        self.root
            .verify_device(&chain, Some(cluster), custos_pki::clock::now_unix())
            .expect("a freshly issued chain verifies")
    }
}

/// A fresh P-256 key.
pub fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

/// The key's fingerprint as rcgen encodes its SubjectPublicKeyInfo: computed independently
/// of `device_key_fingerprint`, which the node uses on the certified SEC1 key.
pub fn fp(key: &KeyPair) -> [u8; 32] {
    custos_pki::key_fingerprint(&key.public_key_der())
}
