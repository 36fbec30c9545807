//! Ids, hashes and member fingerprints of the governance log.

use super::*;
use crate::test_pki::{now, sec1, TestPki};

#[test]
fn device_fingerprints_are_spki_fingerprints() {
    let pki = TestPki::new();
    for node in ["node1", "node2"] {
        let d = pki.device("dc1", node);
        let id = pki
            .root
            .verify_device(&d.chain.clone().into(), Some("dc1"), now())
            .unwrap();
        assert_eq!(device_key_fingerprint(&id.public_key), Some(d.fp()));
    }
    // The same function on an admin's raw key gives the admin's fingerprint.
    let alice = pki.admin("alice");
    assert_eq!(device_key_fingerprint(&sec1(&alice)), Some(alice.fp()));
    assert_eq!(device_key_fingerprint(&[4; 65]), None);
    assert_eq!(device_key_fingerprint(&[]), None);
}

fn entry() -> GovEntry {
    GovEntry {
        version: 0,
        prev: [0; 32],
        meta: RequestMeta {
            request_id: [1; 16],
            expires_at: 1000,
        },
        change: GovChange::SetGovernors {
            governors: vec![[1; 32]],
            quorum: 1,
        },
        approvals: vec![Approval {
            admin_cert: vec![1],
            admin_ca: vec![2],
            signature: vec![3],
            webauthn: None,
        }],
    }
}

#[test]
fn the_entry_hash_covers_the_content_and_the_genesis_id_only_the_change() {
    let base = entry();
    let with = |f: &dyn Fn(&mut GovEntry)| {
        let mut e = entry();
        f(&mut e);
        e
    };
    let variations = [
        with(&|e| e.version = 1),
        with(&|e| e.prev[0] = 1),
        with(&|e| e.meta.request_id[0] = 2),
        with(&|e| e.meta.expires_at = 1001),
        with(&|e| {
            e.change = GovChange::SetGovernors {
                governors: vec![[1; 32]],
                quorum: 2,
            }
        }),
    ];
    for v in &variations {
        assert_ne!(entry_hash("dc1", v), entry_hash("dc1", &base), "{v:?}");
    }
    // Re-packaged approvals (other certificate, other signature encoding, more, fewer, none)
    // leave the hash alone: a relay cannot fork the log by re-packaging an approved entry.
    for v in [
        with(&|e| e.approvals[0].admin_cert = vec![9]),
        with(&|e| e.approvals[0].admin_ca = vec![9]),
        with(&|e| e.approvals[0].signature = vec![9]),
        with(&|e| e.approvals.push(e.approvals[0].clone())),
        with(&|e| e.approvals.clear()),
    ] {
        assert_eq!(entry_hash("dc1", &v), entry_hash("dc1", &base), "{v:?}");
    }
    assert_ne!(entry_hash("dc2", &base), entry_hash("dc1", &base));
    // The genesis id leaves approvals and request out: only cluster and change count.
    let id = genesis_id("dc1", &base.change);
    for v in &variations[..4] {
        assert_eq!(genesis_id("dc1", &v.change), id);
    }
    assert_ne!(genesis_id("dc1", &variations[4].change), id);
    assert_ne!(genesis_id("dc2", &base.change), id);
}

#[test]
fn every_kind_of_change_has_its_own_tag() {
    let member = MemberRecord {
        node: "n".into(),
        key_fingerprint: [0; 32],
        chain: CertChain::default(),
        evidence: Evidence::default(),
        admitted_at: 0,
    };
    let changes = [
        GovChange::Genesis {
            governors: vec![],
            quorum: 1,
            members: vec![],
            rules: vec![],
        },
        GovChange::Admit { member },
        GovChange::Remove {
            key_fingerprint: [0; 32],
            reason: String::new(),
        },
        GovChange::Revoke {
            admins: vec![],
            devices: vec![],
            reason: String::new(),
        },
        GovChange::SetGovernors {
            governors: vec![],
            quorum: 1,
        },
    ];
    let mut tags: Vec<&[u8]> = changes.iter().map(GovChange::tag).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), changes.len());
}
