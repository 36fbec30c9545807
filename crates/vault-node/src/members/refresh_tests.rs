//! [`Members::refresh`] against a TEE stand-in: what it asks, what it takes, and that only
//! answers signed by the pinned device key count.

use std::sync::{Arc, Mutex};

use custos_pki::DeviceIdentity;
use custos_wire::client::ClientError;
use custos_wire::governance::DeviceRefusal;
use custos_wire::protocol::{GovView, MemberInfo, Request, Response, TeeError};
use rcgen::KeyPair;

use super::Members;
use crate::fake_tee::FakeTee;
use crate::test_pki::{fp, key};
use crate::TeePool;

fn id(key: &KeyPair, node: &str) -> DeviceIdentity {
    DeviceIdentity {
        cluster: "dc1".into(),
        node: node.into(),
        public_key: key.public_key_raw().to_vec(),
        fingerprint: [0; 32],
    }
}

fn view(version: u64, members: &[(&str, &KeyPair)]) -> GovView {
    GovView {
        cluster: "dc1".into(),
        genesis_id: [7; 32],
        version,
        head: [version as u8; 32],
        governors: vec![[1; 32]],
        quorum: 1,
        members: members
            .iter()
            .map(|(node, k)| MemberInfo {
                node: (*node).into(),
                key_fingerprint: fp(k),
                admitted_version: 0,
                admitted_at: 0,
                evidence_format: 0,
            })
            .collect(),
        revoked_admins: vec![],
        revoked_devices: vec![],
        entries: vec![],
    }
}

/// A stand-in whose Governance answer is whatever `log` holds (`None`: `NotGoverned`),
/// recording the `since` of each ask.
fn tee(
    device: &KeyPair,
    signer: &KeyPair,
    log: Arc<Mutex<Option<GovView>>>,
    asked: Arc<Mutex<Vec<u64>>>,
) -> (FakeTee, TeePool) {
    let fake = FakeTee::start(
        device,
        signer,
        Arc::new(move |r: &Request| match r {
            Request::Governance { cluster, since } => {
                assert_eq!(cluster, "dc1");
                asked.lock().unwrap().push(*since);
                match &*log.lock().unwrap() {
                    Some(v) => Ok(Response::Governance(v.clone())),
                    None => Err(TeeError::NotGoverned),
                }
            }
            other => panic!("unexpected request {other:?}"),
        }),
    );
    let (pool, _) = TeePool::connect(&fake.socket, 2).unwrap();
    (fake, pool)
}

#[test]
fn a_removal_reaches_the_node_on_the_next_refresh() {
    let (d, k1, k3) = (key(), key(), key());
    let log = Arc::new(Mutex::new(Some(view(1, &[("node1", &k1), ("node3", &k3)]))));
    let asked = Arc::new(Mutex::new(vec![]));
    let (_fake, pool) = tee(&d, &d, log.clone(), asked.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = Members::new("dc1".into());

    rt.block_on(members.refresh(&pool)).unwrap();
    assert_eq!(members.view().unwrap().version, 1);
    assert!(members.admit(&id(&k3, "node3")).is_ok());

    *log.lock().unwrap() = Some(view(2, &[("node1", &k1)]));
    rt.block_on(members.refresh(&pool)).unwrap();
    let e = members.admit(&id(&k3, "node3")).unwrap_err();
    assert!(matches!(e.refusal, DeviceRefusal::NotAMember { .. }), "{e}");
    assert!(members.admit(&id(&k1, "node1")).is_ok());
    // Nothing held: no entries wanted; then only those after the version held.
    assert_eq!(*asked.lock().unwrap(), vec![u64::MAX, 2]);
}

#[test]
fn a_tee_that_is_not_governed_leaves_the_node_on_certificates() {
    let d = key();
    let asked = Arc::new(Mutex::new(vec![]));
    let (_fake, pool) = tee(&d, &d, Arc::new(Mutex::new(None)), asked);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = Members::new("dc1".into());
    rt.block_on(members.refresh(&pool)).unwrap();
    assert!(members.view().is_none());
    assert!(members.admit(&id(&key(), "node3")).is_ok());
}

#[test]
fn a_refusal_once_governed_keeps_the_view_held() {
    let (d, k1) = (key(), key());
    let asked = Arc::new(Mutex::new(vec![]));
    let (_fake, pool) = tee(&d, &d, Arc::new(Mutex::new(None)), asked);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = Members::new("dc1".into());
    members.install(view(3, &[("node1", &k1)])).unwrap();
    let e = rt.block_on(members.refresh(&pool)).unwrap_err();
    assert!(matches!(e, ClientError::Tee(_)), "{e:?}");
    assert_eq!(members.view().unwrap().version, 3);
    assert!(members.admit(&id(&key(), "node3")).is_err());
}

#[test]
fn a_view_not_signed_by_the_pinned_device_key_is_not_taken() {
    let (d, other, k1, k3) = (key(), key(), key(), key());
    // The socket answers with a view that would let node3 back in, signed by another key.
    let log = Arc::new(Mutex::new(Some(view(4, &[("node1", &k1), ("node3", &k3)]))));
    let asked = Arc::new(Mutex::new(vec![]));
    let (_fake, pool) = tee(&d, &other, log, asked);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members = Members::new("dc1".into());
    members.install(view(3, &[("node1", &k1)])).unwrap();
    let e = rt.block_on(members.refresh(&pool)).unwrap_err();
    assert!(matches!(e, ClientError::ResponseSignature(_)), "{e:?}");
    assert_eq!(members.view().unwrap().version, 3);
    assert!(members.admit(&id(&k3, "node3")).is_err());
}
