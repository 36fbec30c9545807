//! A real PKI in a temporary directory (root, Device CA, Admin CA, clusters dc1–dc3, admins
//! alice, bob, carol), TEE cores provisioned into it, and device identities for scripted
//! TEEs.

use custos_cloud_api::approval::sign_approval;
use custos_cloud_api::ApprovalBody;
use custos_pki::{der_to_pem, pem_to_der, AdminSigner, PkiDir};
use custos_tee_core::TeeCore;
use custos_wire::protocol::{encode_request, CertChain, Request, Response, SignedResponse};
use zeroize::Zeroizing;

use crate::gateway::ScriptedTee;
use crate::platform::MemPlatform;

/// A PKI with clusters dc1 and dc2 and admins alice, bob, carol.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub pki: PkiDir,
    pub admins: Vec<AdminSigner>,
}

pub const ADMINS: [&str; 3] = ["alice", "bob", "carol"];

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        pki.init().unwrap();
        pki.create_cluster_ca("dc1").unwrap();
        pki.create_cluster_ca("dc2").unwrap();
        pki.create_cluster_ca("dc3").unwrap();
        let admins = ADMINS
            .iter()
            .map(|a| {
                pki.create_admin(a).unwrap();
                AdminSigner::load(&pki, a).unwrap()
            })
            .collect();
        Pki { dir, pki, admins }
    }

    pub fn root_path(&self) -> std::path::PathBuf {
        self.pki.path().join("root-ca.crt")
    }

    /// A provisioned TEE core of `cluster`.
    pub fn node(&self, cluster: &str, node: &str) -> TeeCore<MemPlatform> {
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let call = |core: &mut TeeCore<MemPlatform>, r: &Request| -> Response {
            let signed: SignedResponse =
                postcard::from_bytes(&core.handle_bytes(&encode_request(r))).unwrap();
            let outcome: Result<Response, custos_wire::protocol::TeeError> =
                postcard::from_bytes(&signed.body).unwrap();
            outcome.unwrap()
        };
        let root_cert = pem_to_der(&self.pki.root_pem().unwrap(), "root").unwrap();
        call(&mut core, &Request::PinRoot { root_cert });
        let Response::DeviceCsr { csr, .. } = call(
            &mut core,
            &Request::GenerateDeviceKey {
                cluster: cluster.into(),
                node: node.into(),
            },
        ) else {
            panic!("expected a CSR")
        };
        let cert = self
            .pki
            .sign_device_csr(cluster, &der_to_pem(&csr, "CERTIFICATE REQUEST"))
            .unwrap();
        call(
            &mut core,
            &Request::InstallDeviceCert {
                device: pem_to_der(&cert, "device").unwrap(),
                cluster_ca: pem_to_der(&self.pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
                device_ca: pem_to_der(&self.pki.device_ca_pem().unwrap(), "d").unwrap(),
            },
        );
        core
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

    /// Approval of `message` by admin `i`.
    pub fn approve(&self, i: usize, message: &[u8]) -> ApprovalBody {
        sign_approval(&self.admins[i], message)
    }
}
