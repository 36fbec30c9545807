//! Key sync between the nodes of a cluster: certificate chains and sealed wallet transfers.

use serde::{Deserialize, Serialize};

use super::KeyId;

/// A cluster member's certificate chain (DER): device, Cluster CA, Device CA.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CertChain {
    /// Device certificate.
    pub device: Vec<u8>,
    /// Cluster CA certificate.
    pub cluster_ca: Vec<u8>,
    /// Device CA certificate.
    pub device_ca: Vec<u8>,
}

impl From<CertChain> for custos_pki::DeviceChain {
    fn from(c: CertChain) -> Self {
        custos_pki::DeviceChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        }
    }
}

impl From<custos_pki::DeviceChain> for CertChain {
    fn from(c: custos_pki::DeviceChain) -> Self {
        CertChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        }
    }
}

/// A batch of wallets sealed by one node's TEE to another node's device key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyTransfer {
    /// Cluster of both nodes.
    pub cluster: String,
    /// Sender's certificate chain.
    pub sender: CertChain,
    /// SHA-256 of the recipient's device certificate.
    pub recipient_fingerprint: [u8; 32],
    /// Wallets carried, in order.
    pub key_ids: Vec<KeyId>,
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the wallet records.
    pub ciphertext: Vec<u8>,
    /// Sender's D signature (DER) over the transfer transcript.
    pub signature: Vec<u8>,
}
