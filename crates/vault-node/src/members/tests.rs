//! The membership decision over real device certificates issued by a real PKI (the way
//! `custos pki sign-csr` issues them), checked the way `caller()` checks a TLS peer.

use custos_pki::DeviceIdentity;
use custos_wire::governance::DeviceRefusal;
use custos_wire::protocol::{GovView, MemberInfo};

use super::{admissible, check_member, Members, ViewRejected};
use crate::test_pki::{fp, key, Pki};

fn view(
    cluster: &str,
    version: u64,
    members: &[(&str, [u8; 32])],
    revoked: &[[u8; 32]],
) -> GovView {
    GovView {
        cluster: cluster.into(),
        genesis_id: [7; 32],
        version,
        head: [version as u8; 32],
        governors: vec![[1; 32]],
        quorum: 1,
        members: members
            .iter()
            .map(|(node, key_fingerprint)| MemberInfo {
                node: (*node).into(),
                key_fingerprint: *key_fingerprint,
                admitted_version: 0,
                admitted_at: 0,
                evidence_format: 0,
            })
            .collect(),
        revoked_admins: vec![],
        revoked_devices: revoked.iter().map(|k| (*k, version)).collect(),
        entries: vec![],
    }
}

#[test]
fn a_member_under_its_own_name_is_let_in_also_after_renewal() {
    let pki = Pki::new();
    let (k1, k2) = (key(), key());
    let v = view("dc1", 1, &[("node1", fp(&k1)), ("node2", fp(&k2))], &[]);
    let id = pki.identity(&k2, "dc1", "node2");
    assert_eq!(check_member(&v, &id).unwrap().node, "node2");
    // A renewed certificate for the same key keeps the membership.
    let renewed = pki.identity(&k2, "dc1", "node2");
    assert_ne!(renewed.fingerprint, id.fingerprint, "a new certificate");
    assert!(check_member(&v, &renewed).is_ok());
}

#[test]
fn a_removed_node_is_not_a_member() {
    let pki = Pki::new();
    let (k1, k3) = (key(), key());
    // node3 was admitted, then removed: it is in no member list any more.
    let v = view("dc1", 2, &[("node1", fp(&k1))], &[]);
    let members = Members::new("dc1".into());
    members.install(v).unwrap();
    let e = members
        .admit(&pki.identity(&k3, "dc1", "node3"))
        .unwrap_err();
    assert_eq!(
        e.refusal,
        DeviceRefusal::NotAMember {
            node: "node3".into(),
            key_fingerprint: fp(&k3)
        }
    );
    let msg = e.to_string();
    assert!(msg.starts_with("not_a_member: "), "{msg}");
    assert!(
        msg.contains("node3") && msg.contains(&hex::encode(fp(&k3))),
        "{msg}"
    );
    assert!(msg.contains("version 2"), "{msg}");
}

#[test]
fn a_revoked_device_is_refused_as_revoked_even_if_still_listed() {
    let pki = Pki::new();
    let k2 = key();
    // Listed and revoked at once cannot come from a sound log; revocation still wins.
    let v = view("dc1", 3, &[("node2", fp(&k2))], &[fp(&k2)]);
    let members = Members::new("dc1".into());
    members.install(v).unwrap();
    let e = members
        .admit(&pki.identity(&k2, "dc1", "node2"))
        .unwrap_err();
    assert!(matches!(e.refusal, DeviceRefusal::Revoked { .. }), "{e:?}");
    assert!(e.to_string().starts_with("device_revoked: "), "{e}");
}

#[test]
fn a_member_key_certified_under_another_name_is_not_a_member() {
    let pki = Pki::new();
    let k1 = key();
    let v = view("dc1", 1, &[("node1", fp(&k1))], &[]);
    // The Cluster CA signed a CSR of node1's key under another name: no name takeover.
    let members = Members::new("dc1".into());
    members.install(v).unwrap();
    let e = members
        .admit(&pki.identity(&k1, "dc1", "node9"))
        .unwrap_err();
    assert_eq!(
        e.refusal,
        DeviceRefusal::WrongName {
            node: "node9".into(),
            member: "node1".into(),
            key_fingerprint: fp(&k1)
        }
    );
    assert!(e.to_string().starts_with("not_a_member: "), "{e}");
}

#[test]
fn a_genuine_certificate_of_a_key_made_outside_any_tee_is_not_a_member() {
    let pki = Pki::new();
    let k1 = key();
    let v = view("dc1", 0, &[("node1", fp(&k1))], &[]);
    // Issued by the cluster's own CA, so the certificate check alone would let it in.
    let rogue = pki.identity(&key(), "dc1", "rogue");
    assert!(matches!(
        check_member(&v, &rogue),
        Err(DeviceRefusal::NotAMember { .. })
    ));
}

#[test]
fn a_member_key_of_another_cluster_is_not_a_member() {
    let pki = Pki::new();
    let k1 = key();
    let v = view("dc1", 1, &[("node1", fp(&k1))], &[]);
    let id = pki.identity(&k1, "dc2", "node1");
    assert!(matches!(
        check_member(&v, &id),
        Err(DeviceRefusal::NotAMember { .. })
    ));
}

#[test]
fn a_key_that_is_no_p256_point_matches_nothing() {
    let k1 = key();
    let v = view("dc1", 1, &[("node1", fp(&k1))], &[]);
    let id = DeviceIdentity {
        cluster: "dc1".into(),
        node: "node1".into(),
        public_key: vec![4; 65],
        fingerprint: [0; 32],
    };
    assert_eq!(
        check_member(&v, &id),
        Err(DeviceRefusal::NotAMember {
            node: "node1".into(),
            key_fingerprint: [0; 32]
        })
    );
}

#[test]
fn ungoverned_lets_every_certified_peer_in() {
    let pki = Pki::new();
    let members = Members::new("dc1".into());
    assert!(members.view().is_none());
    assert!(members.admit(&pki.identity(&key(), "dc1", "node3")).is_ok());
}

#[test]
fn a_view_replaces_the_held_one_only_forward_on_the_same_log() {
    let members = Members::new("dc1".into());
    assert_eq!(members.install(view("dc1", 1, &[], &[])), Ok(true));
    assert_eq!(members.install(view("dc1", 1, &[], &[])), Ok(false));
    assert_eq!(members.install(view("dc1", 4, &[], &[])), Ok(true));
    assert_eq!(
        members.install(view("dc1", 3, &[], &[])),
        Err(ViewRejected::Older { held: 4, got: 3 })
    );
    let mut other = view("dc1", 5, &[], &[]);
    other.genesis_id = [8; 32];
    assert!(matches!(
        members.install(other),
        Err(ViewRejected::OtherGenesis { .. })
    ));
    assert_eq!(
        admissible(None, "dc1", &view("dc2", 0, &[], &[])),
        Err(ViewRejected::OtherCluster {
            asked: "dc1".into(),
            got: "dc2".into()
        })
    );
    // Every rejection kept the view held.
    assert_eq!(members.view().unwrap().version, 4);
}
