//! A real PKI in a temporary directory (root, Device CA, Admin CA, cluster CAs, admins
//! alice, bob, carol, a dealer), TEE cores provisioned into it, and device identities for scripted
//! TEEs.

use custos_cloud_api::approval::sign_approval;
use custos_cloud_api::ApprovalBody;
use custos_pki::{
    der_to_pem, pem_to_der, AdminFolder, AdminSigner, DealerFolder, DealerSigner, PkiDir, TrustRoot,
};
use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_wire::approval::Approval;
use custos_wire::protocol::{CertChain, Request, Response};
use zeroize::Zeroizing;

use crate::gateway::{call_core, ScriptedTee};
use crate::platform::MemPlatform;

/// A PKI: root, Device CA, Admin CA, the clusters' CAs, admins alice, bob and carol, and a
/// dealer.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub pki: PkiDir,
    pub admins: Vec<AdminSigner>,
    /// Admins enrolled by a test beyond [`ADMINS`] ([`Pki::enroll_admin`]), by name.
    pub extra_admins: Vec<(String, AdminSigner)>,
    pub dealer: DealerSigner,
    /// The root as a verifier holds it.
    pub root: TrustRoot,
}

pub const ADMINS: [&str; 3] = ["alice", "bob", "carol"];

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// Clusters dc1, dc2 and dc3.
    pub fn new() -> Self {
        Self::with_clusters(&["dc1", "dc2", "dc3"])
    }

    /// A PKI with a CA for each of `clusters`.
    pub fn with_clusters(clusters: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki.init().unwrap();
        for c in clusters {
            pki.create_cluster_ca(c).unwrap();
        }
        // Each admin makes its key in a folder of its own beside the PKI; the PKI issues
        // from the CSR alone.
        let admins = ADMINS
            .iter()
            .map(|a| {
                AdminFolder::new(dir.path().join("admins").join(a))
                    .enroll(a, &pki)
                    .unwrap()
            })
            .collect();
        // The dealer too makes its key in a folder of its own.
        let dealer = DealerFolder::new(dir.path().join("dealer"))
            .enroll("dealer", &pki)
            .unwrap();
        let root =
            TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap()).unwrap();
        Pki {
            dir,
            pki,
            admins,
            extra_admins: Vec::new(),
            dealer,
            root,
        }
    }

    /// Enrolls admin `name` beyond [`ADMINS`] (a tier's own group, an outsider), with its
    /// key made in a folder of its own like theirs.
    pub fn enroll_admin(&mut self, name: &str) -> &AdminSigner {
        assert!(self.find_admin(name).is_none(), "admin {name} exists");
        let signer = AdminFolder::new(self.dir.path().join("admins").join(name))
            .enroll(name, &self.pki)
            .unwrap();
        self.extra_admins.push((name.to_string(), signer));
        &self.extra_admins.last().expect("just pushed").1
    }

    fn find_admin(&self, name: &str) -> Option<&AdminSigner> {
        match ADMINS.iter().position(|a| *a == name) {
            Some(i) => Some(&self.admins[i]),
            None => self
                .extra_admins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s),
        }
    }

    pub fn root_path(&self) -> std::path::PathBuf {
        self.pki.path().join("root-ca.crt")
    }

    /// The temporary directory the PKI lives in (the PKI itself is its `pki` subdirectory):
    /// room for a test's other files, removed with the PKI.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The folder of admin `name` (one of [`ADMINS`]): its key file and certificate chain,
    /// outside the PKI folder.
    pub fn admin_folder(&self, name: &str) -> AdminFolder {
        assert!(ADMINS.contains(&name), "no admin {name}");
        AdminFolder::new(self.dir.path().join("admins").join(name))
    }

    /// Admin `name` (one of [`ADMINS`], or enrolled by [`Pki::enroll_admin`]).
    pub fn admin(&self, name: &str) -> &AdminSigner {
        self.find_admin(name)
            .unwrap_or_else(|| panic!("no admin {name}"))
    }

    /// Admins by name, in the order given (a name may repeat).
    pub fn admins_named(&self, names: &[&str]) -> Vec<&AdminSigner> {
        names.iter().map(|n| self.admin(n)).collect()
    }

    /// A provisioned TEE core of `cluster` on an empty platform.
    pub fn node(&self, cluster: &str, node: &str) -> TeeCore<MemPlatform> {
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        self.provision(&mut core, cluster, node);
        core
    }

    /// Provisions `core` as node `node` of `cluster` the way an operator does: Root pinned,
    /// D generated in the core, its CSR signed by the cluster's CA, the certificate
    /// installed. Returns the device chain and D's public key.
    pub fn provision<P: Platform>(
        &self,
        core: &mut TeeCore<P>,
        cluster: &str,
        node: &str,
    ) -> (CertChain, Vec<u8>) {
        let root_cert = pem_to_der(&self.pki.root_pem().unwrap(), "root").unwrap();
        call_core(core, &Request::PinRoot { root_cert }).unwrap();
        let Response::DeviceCsr { csr, public_key } = call_core(
            core,
            &Request::GenerateDeviceKey {
                cluster: cluster.into(),
                node: node.into(),
            },
        )
        .unwrap() else {
            panic!("expected a CSR")
        };
        let cert = self
            .pki
            .sign_device_csr(cluster, &der_to_pem(&csr, "CERTIFICATE REQUEST"))
            .unwrap();
        let chain = CertChain {
            device: pem_to_der(&cert, "device").unwrap(),
            cluster_ca: pem_to_der(&self.pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&self.pki.device_ca_pem().unwrap(), "d").unwrap(),
        };
        call_core(
            core,
            &Request::InstallDeviceCert {
                device: chain.device.clone(),
                cluster_ca: chain.cluster_ca.clone(),
                device_ca: chain.device_ca.clone(),
            },
        )
        .unwrap();
        (chain, public_key)
    }

    /// Approvals of `message` by the first `n` admins, as a TEE request carries them.
    pub fn approvals(&self, n: usize, message: &[u8]) -> Vec<Approval> {
        self.admins[..n]
            .iter()
            .map(|s| Approval::by_key_file(s, message).expect("a test admin's file key signs"))
            .collect()
    }

    /// A device identity of `node` in `cluster` outside any TEE: a P-256 key made here with
    /// a device certificate from the cluster's CA (for scripted TEEs).
    pub fn scripted_tee(&self, cluster: &str, node: &str) -> ScriptedTee {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = self.pki.sign_device_csr(cluster, &csr).unwrap();
        let chain = CertChain {
            device: pem_to_der(&cert, "device").unwrap(),
            cluster_ca: pem_to_der(&self.pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
            device_ca: pem_to_der(&self.pki.device_ca_pem().unwrap(), "d").unwrap(),
        };
        let key_pem = Zeroizing::new(key.serialize_pem());
        ScriptedTee {
            signer: AdminSigner::from_pem(&cert, &key_pem, &cert).unwrap(),
            chain,
        }
    }

    /// `set_json` (one primes set) sealed to the node whose certificate chain is `chain`, in
    /// `cluster`, and signed by the dealer, as `custos dealer primes --for` writes the file.
    pub fn sealed_primes(&self, chain: &CertChain, cluster: &str, set_json: &[u8]) -> Vec<u8> {
        let id = self
            .root
            .verify_device(&chain.clone().into(), Some(cluster), crate::platform::now())
            .unwrap();
        let sealed = custos_wire::primes::seal_primes(&id, set_json, &self.dealer).unwrap();
        serde_json::to_vec(&sealed).unwrap()
    }

    /// Approval of `message` by admin `i`.
    pub fn approve(&self, i: usize, message: &[u8]) -> ApprovalBody {
        sign_approval(&self.admins[i], message).expect("a test admin's file key signs")
    }
}
