//! Device certificate renewal with the same device key D (issue 12, item 4):
//! `custos node renew-cert` asks the node's TEE for a CSR of its D, the operator has it
//! signed (`custos pki sign-csr --days N`), and `custos node install-cert` installs the new
//! certificate. D never changes, so the node keeps its membership (keyed by D's
//! fingerprint) and no governance entry is needed. The node server presents the certificate
//! it read at start-up: it serves the renewed one once restarted.

use std::path::Path;

use custos_pki::{der_to_pem, validity_window};
use custos_wire::client::{ClientError, TeeClient};
use custos_wire::protocol::{CertChain, DeviceInfo, Request, Response, TeeError};

use crate::ops::OpsError;

/// Failures of a renewal step, naming what did not match.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// TEE or PKI failure (including the TEE's typed refusals).
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// The TEE at the configured socket is another node's, or of another cluster.
    #[error(
        "the TEE at this socket is node {tee_node:?} of cluster {tee_cluster:?}, \
         the configuration names node {node:?} of cluster {cluster:?}"
    )]
    WrongNode {
        /// Node name in the configuration.
        node: String,
        /// Cluster in the configuration.
        cluster: String,
        /// Node the TEE's D was generated for.
        tee_node: String,
        /// Cluster the TEE's D was generated for.
        tee_cluster: String,
    },
    /// The TEE answered a CSR for another key than its D (a core or transport fault).
    #[error("the TEE's CSR is for another key than its device key D")]
    CsrForAnotherKey,
    /// The certificate file is unreadable or holds neither one certificate nor a chain of 3.
    #[error("certificate file {path}: {reason}")]
    CertFile {
        /// File path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<ClientError> for RenewalError {
    fn from(e: ClientError) -> Self {
        RenewalError::Ops(OpsError::Tee(e))
    }
}

/// The TEE's device identity, checked against the node's configuration; from then on the
/// client requires every response to be signed by that D.
fn device_of(
    client: &mut TeeClient,
    cluster: &str,
    node: &str,
) -> Result<DeviceInfo, RenewalError> {
    let Response::Status(status) = client.call(&Request::Status)? else {
        return Err(OpsError::Unexpected("Status").into());
    };
    // Same refusal the TEE gives to `DeviceCsr` without D, without asking it twice.
    let d = status.device.ok_or_else(|| {
        ClientError::Tee(TeeError::NotProvisioned(
            "no device key D to renew a certificate for; provision the node first".into(),
        ))
    })?;
    if d.node != node || d.cluster != cluster {
        return Err(RenewalError::WrongNode {
            node: node.into(),
            cluster: cluster.into(),
            tee_node: d.node,
            tee_cluster: d.cluster,
        });
    }
    client.expect_device_key(d.public_key.clone());
    Ok(d)
}

/// A CSR (PEM) for the D of node `node` of `cluster`, from its TEE
/// ([`Request::DeviceCsr`]); the subject is the node name, the key D's.
pub fn renewal_csr(
    client: &mut TeeClient,
    cluster: &str,
    node: &str,
) -> Result<String, RenewalError> {
    let d = device_of(client, cluster, node)?;
    let Response::DeviceCsr { csr, public_key } = client.call(&Request::DeviceCsr)? else {
        return Err(OpsError::Unexpected("DeviceCsr").into());
    };
    if public_key != d.public_key {
        return Err(RenewalError::CsrForAnotherKey);
    }
    Ok(der_to_pem(&csr, "CERTIFICATE REQUEST"))
}

/// Reads a renewed certificate: either the device certificate alone (as `custos pki
/// sign-csr` writes it) or the chain device, Cluster CA, Device CA.
fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, RenewalError> {
    let bad = |reason: String| RenewalError::CertFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let blocks = pem::parse_many(text.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if let Some(other) = blocks.iter().find(|b| b.tag() != "CERTIFICATE") {
        return Err(bad(format!("holds a {:?} block", other.tag())));
    }
    match blocks.len() {
        1 | 3 => Ok(blocks.into_iter().map(|b| b.into_contents()).collect()),
        n => Err(bad(format!(
            "{n} certificates; expected the device certificate, or it with its Cluster CA \
             and Device CA"
        ))),
    }
}

/// What [`install_cert`] installed.
#[derive(Debug)]
pub struct Installed {
    /// The TEE's identity with the new certificate's fingerprint.
    pub info: DeviceInfo,
    /// The new certificate's notAfter, Unix seconds.
    pub not_after: u64,
}

/// Installs a renewed certificate for the D of node `node` of `cluster`
/// ([`Request::InstallDeviceCert`]; the TEE checks the chain and that it certifies its D).
/// A file with the device certificate alone is completed with the CA certificates of the
/// chain installed now, which a renewal does not change.
pub fn install_cert(
    client: &mut TeeClient,
    cluster: &str,
    node: &str,
    cert_file: &Path,
) -> Result<Installed, RenewalError> {
    let certs = read_certs(cert_file)?;
    device_of(client, cluster, node)?;
    let chain = match <[Vec<u8>; 3]>::try_from(certs) {
        Ok([device, cluster_ca, device_ca]) => CertChain {
            device,
            cluster_ca,
            device_ca,
        },
        Err(one) => {
            let device = one
                .into_iter()
                .next()
                .ok_or_else(|| RenewalError::CertFile {
                    path: cert_file.display().to_string(),
                    reason: "no certificate".into(),
                })?;
            let Response::DeviceChain(current) = client.call(&Request::DeviceChain)? else {
                return Err(OpsError::Unexpected("DeviceChain").into());
            };
            CertChain { device, ..current }
        }
    };
    let not_after = validity_window(&[&chain.device]).map_err(OpsError::Pki)?.1;
    let Response::DeviceCertInstalled(info) = client.call(&Request::InstallDeviceCert {
        device: chain.device,
        cluster_ca: chain.cluster_ca,
        device_ca: chain.device_ca,
    })?
    else {
        return Err(OpsError::Unexpected("InstallDeviceCert").into());
    };
    Ok(Installed { info, not_after })
}
