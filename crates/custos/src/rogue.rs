//! An impostor node, for the demo and the attack tests: a P-256 key made outside any TEE
//! that holds a certificate genuinely issued by a cluster's Cluster CA. Before issue 12 such
//! a certificate was enough to register under a node's name and export every key; a governed
//! cluster refuses it because its key is not a member's. Nothing here is usable against a
//! deployment without access to its Cluster CA key.

use std::net::SocketAddr;

use custos_net::TlsIdentity;
use custos_pki::PkiDir;
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::vault_node_client::VaultNodeClient;
use custos_proto::cluster::{ExportRequest, RegisterRequest};

use custos_wire::protocol::CertChain;
use zeroize::Zeroizing;

use crate::cluster::ClusterError;

/// A fresh P-256 key (PKCS#8) with a genuine `cluster` device certificate naming `node`:
/// the CSR is signed by the PKI's Cluster CA like a real node's.
pub fn certified_key(
    pki: &PkiDir,
    cluster: &str,
    node: &str,
) -> Result<(Zeroizing<Vec<u8>>, CertChain), ClusterError> {
    let keygen = |e: rcgen::Error| ClusterError::Io(format!("rogue key or CSR: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(keygen)?;
    let mut params =
        rcgen::CertificateParams::new(vec![format!("{node}.{cluster}.custos")]).map_err(keygen)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(keygen)?;
    let chain = CertChain {
        device: custos_pki::pem_to_der(&pki.sign_device_csr(cluster, &csr)?, "device certificate")?,
        cluster_ca: custos_pki::pem_to_der(&pki.cluster_ca_pem(cluster)?, "cluster CA")?,
        device_ca: custos_pki::pem_to_der(&pki.device_ca_pem()?, "device CA")?,
    };
    Ok((Zeroizing::new(key.serialize_der()), chain))
}

/// [`certified_key`] presented as a TLS client identity.
pub fn identity(pki: &PkiDir, cluster: &str, node: &str) -> Result<TlsIdentity, ClusterError> {
    let (key, c) = certified_key(pki, cluster, node)?;
    Ok(TlsIdentity::from_local_key(
        vec![c.device, c.cluster_ca, c.device_ca],
        &key,
    )?)
}

async fn channel(
    addr: SocketAddr,
    server_name: &str,
    identity: &TlsIdentity,
    root_der: &[u8],
) -> Result<tonic::transport::Channel, tonic::Status> {
    let cfg = custos_net::client_config(identity, root_der)
        .map_err(|e| tonic::Status::internal(format!("TLS configuration: {e}")))?;
    custos_net::connect(addr, server_name, cfg)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {addr}: {e}")))
}

/// Tries to register with `cluster`'s bridge at `bridge` under `node`'s name, pointing the
/// name at a dead endpoint: what a name takeover looks like.
pub async fn try_register(
    bridge: SocketAddr,
    cluster: &str,
    node: &str,
    identity: &TlsIdentity,
    root_der: &[u8],
) -> Result<(), tonic::Status> {
    let ch = channel(
        bridge,
        &format!("bridge.{cluster}.custos"),
        identity,
        root_der,
    )
    .await?;
    BridgeClient::new(ch)
        .register(RegisterRequest {
            node: node.into(),
            endpoint: "127.0.0.1:9".into(),
            held: vec![],
            gov_version: None,
        })
        .await
        .map(|_| ())
}

/// Asks node `node`'s server at `server` for an export of one (unknown) key, as the holder
/// of `identity`: a member gets through to its TEE, an impostor is refused before it.
pub async fn try_export(
    server: SocketAddr,
    cluster: &str,
    node: &str,
    identity: &TlsIdentity,
    root_der: &[u8],
) -> Result<(), tonic::Status> {
    let ch = channel(
        server,
        &format!("{node}.{cluster}.custos"),
        identity,
        root_der,
    )
    .await?;
    VaultNodeClient::new(ch)
        .export_keys(ExportRequest {
            key_ids: vec![vec![7; 32]],
        })
        .await
        .map(|_| ())
}
