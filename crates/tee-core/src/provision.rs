//! Provisioning and identity: the pinned Root CA, the device key D and its certificate, and
//! the status that reports them.

use custos_pki::{cert_fingerprint, DeviceChain, DeviceIdentity, PkiError, TrustRoot};
use custos_wire::field::put;
use custos_wire::protocol::*;
use zeroize::Zeroizing;

use crate::device::DeviceKey;
use crate::platform::Platform;
use crate::{TeeCore, REC_DEVICE_CERT, REC_DEVICE_KEY, REC_ROOT};

impl<P: Platform> TeeCore<P> {
    pub(crate) fn status(&self) -> Status {
        Status {
            protocol_version: PROTOCOL_VERSION.into(),
            platform: self.platform_name.clone(),
            root_fingerprint: self.root.as_ref().map(|r| cert_fingerprint(r.der())),
            device: self.device.as_ref().map(|d| self.device_info(d)),
            wallets: self.wallets.len() as u32,
            corrupt_records: self
                .corrupt
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn device_info(&self, d: &DeviceKey) -> DeviceInfo {
        DeviceInfo {
            cluster: d.cluster.clone(),
            node: d.node.clone(),
            public_key: d.public_key(),
            cert_fingerprint: self.identity.as_ref().map(|(id, _)| id.fingerprint),
        }
    }

    pub(crate) fn pin_root(&mut self, der: &[u8]) -> Outcome {
        if self.root.is_some() {
            return Err(TeeError::RootAlreadyPinned);
        }
        let root = TrustRoot::from_der(der).map_err(|e| TeeError::RootRejected(e.to_string()))?;
        self.seal_now(REC_ROOT, der)?;
        let fingerprint = cert_fingerprint(der);
        self.root = Some(root);
        Ok(Response::RootPinned { fingerprint })
    }

    pub(crate) fn root(&self) -> Result<&TrustRoot, TeeError> {
        self.root
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no Root CA pinned".into()))
    }

    pub(crate) fn generate_device_key(&mut self, cluster: String, node: String) -> Outcome {
        self.root()?;
        if self.device.is_some() {
            return Err(TeeError::DeviceKeyExists);
        }
        for name in [&cluster, &node] {
            custos_pki::check_name(name).map_err(|e| TeeError::InvalidRequest(e.to_string()))?;
        }
        let key = DeviceKey::generate(&mut self.platform, &cluster, &node)?;
        let csr = key.csr()?;
        let mut body = Zeroizing::new(Vec::new());
        put(&mut body, cluster.as_bytes());
        put(&mut body, node.as_bytes());
        put(&mut body, key.pkcs8());
        self.seal_now(REC_DEVICE_KEY, &body)?;
        let public_key = key.public_key();
        self.device = Some(key);
        Ok(Response::DeviceCsr { csr, public_key })
    }

    /// A new CSR for the D this core already holds (certificate renewal). Nothing is
    /// sealed: D and the installed certificate stay as they are until the renewed
    /// certificate is installed.
    pub(crate) fn renewal_csr(&self) -> Outcome {
        let device = self.device.as_ref().ok_or_else(|| {
            TeeError::NotProvisioned("no device key D to renew a certificate for".into())
        })?;
        Ok(Response::DeviceCsr {
            csr: device.csr()?,
            public_key: device.public_key(),
        })
    }

    /// Chain check against the pinned root at platform time, for this node's D and cluster.
    pub(crate) fn check_device_chain(
        &self,
        chain: &DeviceChain,
    ) -> Result<DeviceIdentity, TeeError> {
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device key".into()))?;
        let now = self.platform.now_unix();
        let id = self
            .root()?
            .verify_device(chain, Some(&device.cluster), now)
            .map_err(|e| match e {
                PkiError::WrongCluster { expected, found } => {
                    TeeError::DeviceCertWrongCluster { expected, found }
                }
                other => TeeError::DeviceCertRejected(other.to_string()),
            })?;
        if id.public_key != device.public_key() {
            return Err(TeeError::DeviceCertWrongKey);
        }
        Ok(id)
    }

    pub(crate) fn install_device_cert(&mut self, chain: DeviceChain) -> Outcome {
        let id = self.check_device_chain(&chain)?;
        let mut body = Vec::new();
        put(&mut body, &chain.device);
        put(&mut body, &chain.cluster_ca);
        put(&mut body, &chain.device_ca);
        self.seal_now(REC_DEVICE_CERT, &body)?;
        self.identity = Some((id, chain));
        self.corrupt.remove(REC_DEVICE_CERT);
        let d = self.device.as_ref().expect("checked by check_device_chain");
        Ok(Response::DeviceCertInstalled(self.device_info(d)))
    }

    /// This node's verified identity and chain, once fully provisioned.
    pub(crate) fn identity(&self) -> Result<&(DeviceIdentity, DeviceChain), TeeError> {
        self.identity
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device certificate installed".into()))
    }

    /// Cluster of this node, once fully provisioned.
    pub(crate) fn cluster(&self) -> Result<String, TeeError> {
        self.identity().map(|(id, _)| id.cluster.clone())
    }
}
