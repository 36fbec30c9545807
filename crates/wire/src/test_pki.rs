//! TEST ONLY: a real PKI in a temporary directory (Root, Admin CA, Device CA, cluster CAs),
//! admins made the way an admin makes them (own key file, CSR), and device chains from CSRs,
//! for the approval and governance tests of this crate.

use std::sync::Arc;

use custos_pki::{
    admin_csr, issue_admin_from_csr_with_validity, pem_to_der, AdminKey, AdminSigner, FileKey,
    PkiDir, TrustRoot, Validity,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::approval::Approval;
use crate::protocol::CertChain;

/// Unix time now: only ever an input (certificates are issued relative to the real clock),
/// never asserted on.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An admin: its signer and its key (for the raw public key).
pub struct Admin {
    /// Key and certificate chain.
    pub signer: AdminSigner,
    /// The key alone.
    pub key: Arc<FileKey>,
}

impl Admin {
    /// Its key fingerprint (the identity approvals are counted by).
    pub fn fp(&self) -> [u8; 32] {
        self.signer.key_fingerprint()
    }

    /// Its approval of `message`.
    pub fn approve(&self, message: &[u8]) -> Approval {
        Approval::by_key_file(&self.signer, message).expect("a file key signs")
    }
}

/// A device key outside any TEE, and its chain.
pub struct Device {
    /// The key (to re-certify it, as a renewal does).
    pub key: KeyPair,
    /// Its chain.
    pub chain: CertChain,
}

/// A PKI with clusters dc1 and dc2.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The PKI folder.
    pub pki: PkiDir,
    /// The pinned Root as verifiers hold it.
    pub root: TrustRoot,
}

impl TestPki {
    /// Root, Admin CA, Device CA and the CAs of dc1 and dc2.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = PkiDir::new(dir.path().join("pki"));
        pki.init().expect("pki init");
        for c in ["dc1", "dc2"] {
            pki.create_cluster_ca(c).expect("cluster CA");
        }
        let root = TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap())
            .expect("root");
        TestPki { dir, pki, root }
    }

    /// Admin `name` with a certificate valid for a year from now.
    pub fn admin(&self, name: &str) -> Admin {
        self.admin_valid(name, Validity::days(365))
    }

    /// Admin `name` with a certificate valid in `validity`.
    pub fn admin_valid(&self, name: &str, validity: Validity) -> Admin {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let key_dir = self.dir.path().join(format!("admin-{n}"));
        std::fs::create_dir(&key_dir).unwrap();
        let key = Arc::new(FileKey::generate(&key_dir.join("admin.key")).unwrap());
        let csr = admin_csr(name, key.clone()).unwrap();
        let cert = issue_admin_from_csr_with_validity(&self.pki, &csr, validity).unwrap();
        let signer = AdminSigner::new(key.clone(), &cert.cert_pem, &cert.admin_ca_pem).unwrap();
        Admin { signer, key }
    }

    /// A new device key of `node` in `cluster`, certified by the cluster's CA.
    pub fn device(&self, cluster: &str, node: &str) -> Device {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let chain = self.certify(&key, cluster, node);
        Device { key, chain }
    }

    /// A device chain for `key` as `node` of `cluster` (a renewal when the key is certified
    /// already).
    pub fn certify(&self, key: &KeyPair, cluster: &str, node: &str) -> CertChain {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        let csr = params.serialize_request(key).unwrap().pem().unwrap();
        let cert = self.pki.sign_device_csr(cluster, &csr).unwrap();
        CertChain {
            device: pem_to_der(&cert, "device").unwrap(),
            cluster_ca: pem_to_der(&self.pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&self.pki.device_ca_pem().unwrap(), "d").unwrap(),
        }
    }
}

impl Device {
    /// The device key's fingerprint, from its SubjectPublicKeyInfo as rcgen encodes it.
    pub fn fp(&self) -> [u8; 32] {
        custos_pki::key_fingerprint(&self.key.public_key_der())
    }
}

/// The raw SEC1 public key of an admin (to cross-check the device fingerprint function).
pub fn sec1(admin: &Admin) -> Vec<u8> {
    admin.key.public_key().to_vec()
}
