//! Operator actions that span the PKI and a TEE core: provisioning and approvals.

use custos_pki::{der_to_pem, pem_to_der, AdminSigner, PkiDir, PkiError};
use custos_wire::approval::{Action, Approval};
use custos_wire::client::{ClientError, TeeClient};
use custos_wire::protocol::{DeviceInfo, Request, RequestMeta, Response};
use ring::rand::{SecureRandom, SystemRandom};

/// Failures of an operator action.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// TEE failure or refusal.
    #[error(transparent)]
    Tee(#[from] ClientError),
    /// The TEE answered with an unexpected response kind.
    #[error("unexpected TEE response to {0}")]
    Unexpected(&'static str),
}

use custos_pki::clock::now_unix;

/// A fresh request id with an expiry `ttl_secs` from now.
pub fn new_meta(ttl_secs: u64) -> RequestMeta {
    let mut request_id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut request_id)
        .expect("OS random source failed");
    RequestMeta {
        request_id,
        expires_at: now_unix() + ttl_secs,
    }
}

/// Each signer approves `action` on `cluster` under `meta`.
pub fn approvals(
    signers: &[&AdminSigner],
    cluster: &str,
    meta: &RequestMeta,
    action: &Action<'_>,
) -> Result<Vec<Approval>, PkiError> {
    let message = action.message(cluster, meta);
    signers
        .iter()
        .map(|s| Approval::by_key_file(s, &message))
        .collect()
}

/// Provisions a node's TEE (patent FIG. 6, flow 1): pins the Root CA, has the TEE generate D
/// and a CSR, signs the CSR with the cluster's CA, installs the certificate. Steps already
/// done are skipped, so this is safe to re-run. Afterwards the client requires every
/// response to be signed by D.
pub fn provision(
    client: &mut TeeClient,
    pki: &PkiDir,
    cluster: &str,
    node: &str,
) -> Result<DeviceInfo, OpsError> {
    let Response::Status(status) = client.call(&Request::Status)? else {
        return Err(OpsError::Unexpected("Status"));
    };
    if status.root_fingerprint.is_none() {
        let root_cert = pem_to_der(&pki.root_pem()?, "Root CA certificate")?;
        client.call(&Request::PinRoot { root_cert })?;
    }
    match status.device {
        Some(d) if d.cert_fingerprint.is_some() => {
            client.expect_device_key(d.public_key.clone());
            Ok(d)
        }
        // D exists but its certificate never got installed (provisioning interrupted):
        // D is never regenerated, so the operator provisions a fresh store instead.
        Some(d) => Err(OpsError::Tee(ClientError::Protocol(format!(
            "node {} has a device key without certificate; provision a fresh store",
            d.node
        )))),
        None => {
            let Response::DeviceCsr { csr, public_key } =
                client.call(&Request::GenerateDeviceKey {
                    cluster: cluster.into(),
                    node: node.into(),
                })?
            else {
                return Err(OpsError::Unexpected("GenerateDeviceKey"));
            };
            let cert_pem =
                pki.sign_device_csr(cluster, &der_to_pem(&csr, "CERTIFICATE REQUEST"))?;
            client.expect_device_key(public_key);
            let Response::DeviceCertInstalled(info) = client.call(&Request::InstallDeviceCert {
                device: pem_to_der(&cert_pem, "device certificate")?,
                cluster_ca: pem_to_der(&pki.cluster_ca_pem(cluster)?, "Cluster CA")?,
                device_ca: pem_to_der(&pki.device_ca_pem()?, "Device CA")?,
            })?
            else {
                return Err(OpsError::Unexpected("InstallDeviceCert"));
            };
            Ok(info)
        }
    }
}
