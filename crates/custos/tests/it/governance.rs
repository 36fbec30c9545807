//! Cluster membership (issue 12, item 1): attacks by a "rogue" device — a P-256 key made
//! outside any TEE, holding a **genuine** certificate of cluster dc1 (one CSR signed by the
//! Cluster CA is all it took). Each test is the attacker's: it must be refused by name, with
//! no ciphertext produced and nothing stored.
//!
//! Against the code before membership every one of these attacks succeeded: `ExportKeys`
//! sealed the requested seeds to the rogue key, and `ImportKeys` stored a seed the rogue chose.
//! Once the cluster's admin-approved member log is applied in the TEE, each is refused with
//! `NotAMember`.

mod bridge;
mod rest;

use crate::common::*;
use crate::tee_sync::export;
use custos_pki::{DeviceChain, TrustRoot};
use custos_tee_core::sync;
use custos_tee_core::wallet::Wallet;
use custos_test_kit::governance::{member, GovLog};
use custos_wire::governance::{device_key_fingerprint, GovEntry};
use custos_wire::protocol::{CertChain, GovView, KeyTransfer, Origin, Request, Response, TeeError};
use zeroize::Zeroizing;

/// The rogue: its PKCS#8 key and its genuine chain.
pub(crate) struct Rogue {
    pkcs8: Vec<u8>,
    pub(crate) chain: CertChain,
}

impl Rogue {
    fn new(pki: &Pki) -> Self {
        Rogue::of(&pki.pki, CLUSTER, "dc1-rogue")
    }

    /// A P-256 key made here, outside any TEE, with a device certificate for `node` that
    /// `cluster`'s Cluster CA genuinely issued (one CSR signed is all it takes).
    pub(crate) fn of(pki: &custos_pki::PkiDir, cluster: &str, node: &str) -> Self {
        let (key, chain) = custos::rogue::certified_key(pki, cluster, node).unwrap();
        Rogue {
            pkcs8: key.to_vec(),
            chain,
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.pkcs8, &rng)
            .unwrap()
            .sign(&rng, message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

fn identity(root: &TrustRoot, chain: &CertChain) -> custos_pki::DeviceIdentity {
    root.verify_device(&DeviceChain::from(chain.clone()), Some(CLUSTER), now())
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn node_chain(tee: &mut Tee) -> CertChain {
    match tee.call(&Request::DeviceChain).unwrap() {
        Response::DeviceChain(c) => c,
        r => panic!("unexpected {r:?}"),
    }
}

fn apply(tee: &mut Tee, entries: &[GovEntry]) -> Result<GovView, TeeError> {
    match tee.call(&Request::ApplyGovernance {
        cluster: CLUSTER.into(),
        entries: entries.to_vec(),
    }) {
        Ok(Response::Governance(v)) => Ok(v),
        other => Err(refusal(other)),
    }
}

/// node1 with its cluster governed: governors alice, bob and carol (any two), node1 the one
/// member.
fn governed<'a>(pki: &'a Pki, tee: &mut Tee) -> GovLog<'a> {
    let chain = node_chain(tee);
    let log = GovLog::genesis(
        pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        2,
        vec![member(pki, &chain)],
        &["alice", "bob"],
    );
    let view = apply(tee, log.entries()).unwrap();
    assert_eq!((view.version, view.members.len()), (0, 1));
    log
}

/// A rogue with a genuine certificate asks node1's TEE for a wallet seed.
#[test]
fn rogue_export_keys_gets_no_ciphertext() {
    let mut fx = Fixture::new();
    governed(&fx.pki, &mut fx.tee);
    let wallet = fx.create_group_wallet(1, &["alice"]);
    let rogue = Rogue::new(&fx.pki);
    let answer = fx.tee.call(&Request::ExportKeys {
        requester: rogue.chain.clone(),
        key_ids: vec![wallet.key_id.clone()],
    });
    match answer {
        Ok(Response::KeyTransfer(t)) => panic!(
            "the rogue received {} bytes of ciphertext sealed to its own key",
            t.ciphertext.len()
        ),
        other => {
            let e = refusal(other);
            assert!(
                matches!(&e, TeeError::NotAMember { node, .. } if node == "dc1-rogue"),
                "{e:?}"
            );
        }
    }
}

/// A rogue with a genuine certificate pushes a seed it chose into node1's TEE.
#[test]
fn rogue_import_keys_stores_nothing() {
    let mut fx = Fixture::new();
    governed(&fx.pki, &mut fx.tee);
    let rogue = Rogue::new(&fx.pki);
    let root = fx.pki.root.clone();
    let sender = identity(&root, &rogue.chain);
    let recipient = identity(&root, &node_chain(&mut fx.tee));
    let before = fx.tee.keys();

    // The planted key: a seed the rogue knows, in the format of a synced wallet record.
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let planted = Wallet::from_seed(
        &secp,
        Zeroizing::new(vec![0x42; 32]),
        1,
        Origin::Generated,
        now(),
    )
    .unwrap();
    let key_ids = vec![planted.info.key_id.clone()];
    let context = sync::transfer_context(
        CLUSTER,
        &sender.fingerprint,
        &recipient.fingerprint,
        &key_ids,
    );
    let (enc, ciphertext) = custos_wire::seal::seal_with(
        &mut rand_core::OsRng,
        &recipient.public_key,
        &context,
        &sync::pack(&[planted.to_record()]),
        TeeError::TransferRejected,
    )
    .unwrap();
    let signature = rogue.sign(&sync::transfer_transcript(&context, &enc, &ciphertext));
    let answer = fx.tee.call(&Request::ImportKeys {
        transfer: KeyTransfer {
            cluster: CLUSTER.into(),
            sender: rogue.chain.clone(),
            recipient_fingerprint: recipient.fingerprint,
            key_ids,
            enc,
            ciphertext,
            signature,
        },
    });
    if let Ok(Response::KeysImported { imported, .. }) = &answer {
        panic!("node1 stored {} key(s) the rogue chose", imported.len());
    }
    let e = refusal(answer);
    assert!(matches!(e, TeeError::NotAMember { .. }), "{e:?}");
    assert_eq!(fx.tee.keys(), before, "nothing may be stored");
}

/// A real TEE node joins only when a quorum of governors admits it; it then syncs, and after
/// its removal it gets nothing new. The log survives a crash of node1's TEE.
#[test]
fn admitted_node_syncs_removed_node_gets_nothing_new() {
    let mut fx = Fixture::new();
    let wallet = fx.create_wallet(1, &["alice"]);
    let mut log = governed(&fx.pki, &mut fx.tee);
    let mut node2 = Tee::start(fx.pki.path(), "node2");
    node2.provision(&fx.pki.pki, CLUSTER, "node2");
    let chain2 = node_chain(&mut node2);
    let ids = vec![wallet.key_id.clone()];

    // Not admitted: a genuine TEE with a genuine certificate gets nothing either.
    let e = export(&mut fx.tee, chain2.clone(), ids.clone()).unwrap_err();
    assert!(
        matches!(&e, TeeError::NotAMember { node, .. } if node == "node2"),
        "{e:?}"
    );
    // node2 cannot adopt a log that does not name it.
    let e = apply(&mut node2, log.entries()).unwrap_err();
    assert!(matches!(e, TeeError::NotAMember { .. }), "{e:?}");

    // One governor is not a quorum: refused, the log stays at the genesis.
    let admit_one = log.next_entry(
        custos_wire::governance::GovChange::Admit {
            member: member(&fx.pki, &chain2),
        },
        &["carol"],
    );
    let e = apply(&mut fx.tee, &[admit_one]).unwrap_err();
    assert!(matches!(e, TeeError::GovernanceRejected(_)), "{e:?}");

    log.admit(member(&fx.pki, &chain2), &["bob", "carol"]);
    assert_eq!(apply(&mut fx.tee, log.entries()).unwrap().version, 1);
    assert_eq!(apply(&mut node2, log.entries()).unwrap().version, 1);
    let transfer = export(&mut fx.tee, chain2.clone(), ids.clone()).unwrap();
    match node2.call(&Request::ImportKeys { transfer }) {
        Ok(Response::KeysImported { imported, .. }) => assert_eq!(imported, ids),
        other => panic!("node2 did not import: {:?}", refusal(other)),
    }

    // The log is sealed: after a crash node1 still knows node2 and still refuses strangers.
    fx.tee.crash_and_restart();
    match fx.tee.call(&Request::Governance {
        cluster: CLUSTER.into(),
        since: 0,
    }) {
        Ok(Response::Governance(v)) => {
            assert_eq!((v.version, v.members.len(), v.entries.len()), (1, 2, 2));
        }
        other => panic!("{:?}", refusal(other)),
    }

    // Removed: node2 gets nothing new from the moment node1's TEE holds the removal.
    let fp2 = device_key_fingerprint(&identity(&fx.pki.root.clone(), &chain2).public_key).unwrap();
    log.remove(fp2, &["alice", "carol"]);
    assert_eq!(apply(&mut fx.tee, log.entries()).unwrap().version, 2);
    let fresh = fx.create_group_wallet(1, &["alice"]);
    let e = export(&mut fx.tee, chain2, vec![fresh.key_id]).unwrap_err();
    assert!(
        matches!(&e, TeeError::NotAMember { node, .. } if node == "node2"),
        "{e:?}"
    );
}

/// A governor whose key the cluster revoked is refused by name on every approval, and no
/// longer counts for the log either; the other admins still sign.
#[test]
fn revoked_admin_is_refused_by_name() {
    let mut fx = Fixture::new();
    let wallet = fx.create_wallet(2, &["alice", "bob"]);
    let mut log = governed(&fx.pki, &mut fx.tee);
    log.revoke(&["carol"], vec![], &["alice", "bob"]);
    apply(&mut fx.tee, log.entries()).unwrap();

    let digest = [0x21; 32];
    let e = refusal(fx.sign(&wallet.key_id, &[0], digest, &["alice", "carol"]));
    assert!(
        matches!(&e, TeeError::AdminRevoked { index: 1, admin, .. } if admin == "carol"),
        "{e:?}"
    );
    assert!(matches!(
        fx.sign(&wallet.key_id, &[0], digest, &["alice", "bob"]),
        Ok(Response::Signature(_))
    ));
}

/// A node pinned to one genesis refuses another, even one approved by real governors.
#[test]
fn a_pinned_node_refuses_another_genesis() {
    let mut fx = Fixture::new();
    let chain = node_chain(&mut fx.tee);
    let pinned = GovLog::genesis(
        &fx.pki,
        CLUSTER,
        &["alice", "bob"],
        2,
        vec![member(&fx.pki, &chain)],
        &["alice", "bob"],
    );
    let id = custos_wire::governance::genesis_id(CLUSTER, &pinned.entries()[0].change);
    assert!(matches!(
        fx.tee.call(&Request::PinGenesis { genesis_id: id }),
        Ok(Response::GenesisPinned { .. })
    ));
    let other = GovLog::genesis(
        &fx.pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        1,
        vec![member(&fx.pki, &chain)],
        &["carol"],
    );
    let e = apply(&mut fx.tee, other.entries()).unwrap_err();
    assert!(matches!(e, TeeError::GovernanceRejected(_)), "{e:?}");
    assert_eq!(apply(&mut fx.tee, pinned.entries()).unwrap().version, 0);
}

/// node `i`'s chain and a TLS identity whose handshake its own TEE signs (what its node
/// server presents to peers).
fn tee_identity(socket: &std::path::Path) -> (CertChain, custos_net::TlsIdentity) {
    use std::sync::{Arc, Mutex};
    let mut tee = custos_wire::client::TeeClient::connect(socket).unwrap();
    let Ok(Response::DeviceChain(chain)) = tee.call(&Request::DeviceChain) else {
        panic!("no device chain");
    };
    let tee = Arc::new(Mutex::new(tee));
    let identity = custos_net::TlsIdentity::from_remote_signer(
        vec![
            chain.device.clone(),
            chain.cluster_ca.clone(),
            chain.device_ca.clone(),
        ],
        Arc::new(move |message: &[u8]| {
            match tee.lock().unwrap().call(&Request::SignTls {
                message: message.to_vec(),
            }) {
                Ok(Response::TlsSignature(s)) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        }),
    )
    .unwrap();
    (chain, identity)
}

/// Asks node `name`'s server, as the holder of `identity`, for one (unknown) key.
async fn export_via_server(
    (name, server): (&str, std::net::SocketAddr),
    identity: &custos_net::TlsIdentity,
    root_der: &[u8],
) -> Result<(), tonic::Status> {
    custos::rogue::try_export(server, CLUSTER, name, identity, root_der).await
}

/// Relays `entries` through the bridge to `node` only (so its node server sees the
/// ApplyGovernance go by); returns the view its TEE signed.
async fn apply_via_bridge(
    link: &mut custos_proto::cluster::bridge_client::BridgeClient<tonic::transport::Channel>,
    node: &str,
    entries: &[GovEntry],
) -> GovView {
    let call = custos_proto::cluster::TeeCall {
        request: custos_wire::protocol::encode_request(&Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: entries.to_vec(),
        }),
        node: node.into(),
        ..Default::default()
    };
    let reply = link.submit(call).await.unwrap().into_inner();
    match custos_wire::client::decode_outcome(&reply.response).unwrap() {
        Ok(Response::Governance(v)) => v,
        other => panic!("ApplyGovernance on {node}: {other:?}"),
    }
}

/// Real processes: a governed three-node cluster removes node3. node1's node server, told by
/// the removal relayed through the bridge, refuses node3's genuine TEE at the door (its own
/// `not_a_member`, the TEE never asked), while node2 still gets through.
#[test]
fn a_removed_node_is_refused_by_the_node_server() {
    use custos::cluster::{Cluster, ClusterOptions};

    let pki = Pki::new();
    let cluster = Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("gov"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 3,
            db_url: None,
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            link: None,
        },
    )
    .unwrap();
    let root_der = custos_pki::pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap();
    let ids: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| tee_identity(&n.tee.socket))
        .collect();
    let mut log = GovLog::genesis(
        &pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        2,
        ids.iter().map(|(c, _)| member(&pki, c)).collect(),
        &["alice", "bob"],
    );
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let server1 = (names[0], cluster.nodes[0].addr.unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut link = cluster.link_client().await.unwrap();
        for node in &names {
            assert_eq!(
                apply_via_bridge(&mut link, node, log.entries())
                    .await
                    .version,
                0
            );
        }
        // Governed, node3 is a member: node1's server lets it through to the TEE.
        let r = export_via_server(server1, &ids[2].1, &root_der).await;
        assert!(
            !matches!(&r, Err(e) if e.code() == tonic::Code::PermissionDenied),
            "{r:?}"
        );

        let fp3 = device_key_fingerprint(&identity(&pki.root, &ids[2].0).public_key).unwrap();
        log.remove(fp3, &["alice", "carol"]);
        assert_eq!(
            apply_via_bridge(&mut link, names[0], log.entries())
                .await
                .members
                .len(),
            2
        );

        // At once (the relayed ApplyGovernance refreshed the server's view): refused by name.
        let e = export_via_server(server1, &ids[2].1, &root_der)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("not_a_member: "), "{e:?}");
        assert!(e.message().contains(names[2]), "{e:?}");
        // node2 is still a member and still gets through.
        let r = export_via_server(server1, &ids[1].1, &root_der).await;
        assert!(
            !matches!(&r, Err(e) if e.code() == tonic::Code::PermissionDenied),
            "{r:?}"
        );
    });
}

/// `custos tee provision --genesis` pins the cluster's genesis when a node joins: the new
/// node adopts that log (once it admits the node) and refuses any other, however validly
/// approved; a malformed id provisions nothing.
#[test]
fn provision_with_genesis_pins_it() {
    let mut fx = Fixture::new();
    let mut log = governed(&fx.pki, &mut fx.tee);
    let mut node2 = Tee::start(fx.pki.path(), "node2");
    let provision = |genesis: &str| {
        std::process::Command::new(exe())
            .args(["tee", "provision", "--socket"])
            .arg(fx.pki.path().join("node2.sock"))
            .arg("--pki")
            .arg(fx.pki.pki.path())
            .args([
                "--cluster",
                CLUSTER,
                "--node",
                "node2",
                "--genesis",
                genesis,
            ])
            .output()
            .unwrap()
    };
    let out = provision("zz");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("64 hex digits"),
        "{out:?}"
    );
    assert!(matches!(
        refusal(node2.call(&Request::DeviceChain)),
        TeeError::NotProvisioned(_)
    ));
    let id = custos_wire::governance::genesis_id(CLUSTER, &log.entries()[0].change);
    let out = provision(&hex::encode(id));
    assert!(out.status.success(), "{out:?}");
    let chain2 = node_chain(&mut node2);

    // Another genesis that names node2, approved by real admins: refused by the pin.
    let other = GovLog::genesis(
        &fx.pki,
        CLUSTER,
        &["carol"],
        1,
        vec![member(&fx.pki, &chain2)],
        &["carol"],
    );
    let e = apply(&mut node2, other.entries()).unwrap_err();
    assert!(matches!(e, TeeError::GovernanceRejected(_)), "{e:?}");
    // The cluster's own log, once it admits node2, is adopted.
    log.admit(member(&fx.pki, &chain2), &["alice", "bob"]);
    assert_eq!(apply(&mut node2, log.entries()).unwrap().version, 1);
}
