//! `caller()` through real mutual TLS: a node server in front of a TEE stand-in whose
//! governed view lists node1 and node2 (node3 removed, node4 revoked). Peers with genuine
//! dc1 certificates ask it for keys; only members reach the TEE.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custos_net::{client_config, connect, TlsIdentity};
use custos_proto::cluster::vault_node_client::VaultNodeClient;
use custos_proto::cluster::ExportRequest;
use custos_wire::protocol::{CertChain, GovView, MemberInfo, Request, Response, TeeError};
use rcgen::KeyPair;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use crate::fake_tee::FakeTee;
use crate::test_pki::{fp, key, Pki};
use crate::NodeConfig;

fn member(node: &str, key: &KeyPair) -> MemberInfo {
    MemberInfo {
        node: node.into(),
        key_fingerprint: fp(key),
        admitted_version: 0,
        admitted_at: 0,
        evidence_format: 0,
    }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// What a peer gets when it asks node1's server for a key.
async fn export_as(
    pki: &Pki,
    server: SocketAddr,
    key: &KeyPair,
    node: &str,
) -> Result<(), tonic::Status> {
    let chain = pki.chain(key, "dc1", node);
    let identity = TlsIdentity::from_local_key(
        vec![chain.device, chain.cluster_ca, chain.device_ca],
        &key.serialize_der(),
    )
    .unwrap();
    let cfg = client_config(&identity, &pki.root_der).unwrap();
    let channel = connect(server, "node1.dc1.custos", cfg).await.unwrap();
    VaultNodeClient::new(channel)
        .export_keys(ExportRequest {
            key_ids: vec![vec![1; 32]],
        })
        .await
        .map(|_| ())
}

#[test]
fn only_current_members_reach_the_tee_with_export_keys() {
    let pki = Pki::new();
    let (d1, k2, k3, k4) = (key(), key(), key(), key());
    let chain1 = pki.chain(&d1, "dc1", "node1");
    let view = GovView {
        cluster: "dc1".into(),
        genesis_id: [7; 32],
        version: 5,
        head: [5; 32],
        governors: vec![[1; 32]],
        quorum: 1,
        members: vec![member("node1", &d1), member("node2", &k2)],
        revoked_admins: vec![],
        revoked_devices: vec![(fp(&k4), 4)],
        entries: vec![],
    };
    let exports = Arc::new(AtomicUsize::new(0));
    let tee = {
        let exports = exports.clone();
        let d1_pkcs8 = d1.serialize_der();
        FakeTee::start(
            &d1,
            &d1,
            Arc::new(move |r: &Request| match r {
                Request::DeviceChain => Ok(Response::DeviceChain(CertChain {
                    device: chain1.device.clone(),
                    cluster_ca: chain1.cluster_ca.clone(),
                    device_ca: chain1.device_ca.clone(),
                })),
                Request::Governance { .. } => Ok(Response::Governance(view.clone())),
                Request::SignTls { message } => {
                    let rng = ring::rand::SystemRandom::new();
                    let d =
                        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &d1_pkcs8, &rng)
                            .unwrap();
                    Ok(Response::TlsSignature(
                        d.sign(&rng, message).unwrap().as_ref().to_vec(),
                    ))
                }
                Request::ListKeys => Ok(Response::Keys(vec![])),
                Request::ListThresholdKeys => Ok(Response::ThresholdKeys(vec![])),
                Request::ExportKeys { .. } => {
                    exports.fetch_add(1, Ordering::SeqCst);
                    Err(TeeError::InvalidRequest("export reached the TEE".into()))
                }
                other => panic!("unexpected request {other:?}"),
            }),
        )
    };
    let listen = free_port();
    let config = NodeConfig {
        node: "node1".into(),
        cluster: "dc1".into(),
        listen,
        advertise: None,
        // No bridge: registration keeps retrying while the server already serves.
        bridge: "127.0.0.1:1".parse().unwrap(),
        tee_socket: tee.socket.clone(),
        root_ca: pki.root_file(),
        sync_interval_secs: 3600,
        tee_connections: 2,
        tee: None,
        metrics_listen: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = tokio::spawn(crate::run(config));
        let mut tries = 0;
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            assert!(!node.is_finished(), "node server stopped: {:?}", node.await);
            tries += 1;
            assert!(tries < 200, "node server never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A member reaches the TEE (which then decides; here it refuses by script).
        let e = export_as(&pki, listen, &k2, "node2").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("export reached the TEE"), "{e:?}");
        assert_eq!(exports.load(Ordering::SeqCst), 1);

        let refusals = [
            // Removed: genuine certificate, no longer in the list.
            (&k3, "node3", "not_a_member: "),
            // Revoked.
            (&k4, "node4", "device_revoked: "),
            // A member's key certified under another member's name.
            (&k2, "node1", "not_a_member: "),
            // A key made outside any TEE, genuinely certified by the Cluster CA.
            (&key(), "rogue", "not_a_member: "),
        ];
        for (k, name, prefix) in refusals {
            let e = export_as(&pki, listen, k, name).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{name}: {e:?}");
            assert!(e.message().starts_with(prefix), "{name}: {e:?}");
            assert!(e.message().contains(name), "{name}: {e:?}");
        }
        // None of them reached the TEE.
        assert_eq!(exports.load(Ordering::SeqCst), 1);
        node.abort();
    });
}
