//! Properties of the governance log verifier, on real certificates (`gov_log_properties`).

use custos_pki::AdminCache;

use super::*;
use crate::governance::Evidence;
use crate::protocol::{CertChain, RequestMeta, TeeError};
use crate::test_pki::{now, Admin, Device, TestPki};

mod admission;

const CLUSTER: &str = "dc1";

/// A PKI, governors alice, bob and carol (quorum 2), outsider dave, and nodes 1..=4 of dc1.
struct Fx {
    pki: TestPki,
    alice: Admin,
    bob: Admin,
    carol: Admin,
    dave: Admin,
    nodes: Vec<Device>,
    now: u64,
}

impl Fx {
    fn new() -> Self {
        let pki = TestPki::new();
        let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| pki.admin(n));
        let nodes = (1..=4)
            .map(|i| pki.device(CLUSTER, &format!("node{i}")))
            .collect();
        Fx {
            pki,
            alice,
            bob,
            carol,
            dave,
            nodes,
            now: now(),
        }
    }

    fn record(&self, node: usize) -> MemberRecord {
        self.record_of(&self.nodes[node - 1].chain, &format!("node{node}"), node)
    }

    fn record_of(&self, chain: &CertChain, name: &str, node: usize) -> MemberRecord {
        MemberRecord {
            node: name.to_string(),
            key_fingerprint: self.nodes[node - 1].fp(),
            chain: chain.clone(),
            evidence: Evidence::default(),
            admitted_at: self.now,
        }
    }

    fn governors(&self, admins: &[&Admin]) -> Vec<[u8; 32]> {
        let mut g: Vec<[u8; 32]> = admins.iter().map(|a| a.fp()).collect();
        g.sort();
        g
    }

    fn genesis_change(&self) -> GovChange {
        GovChange::Genesis {
            governors: self.governors(&[&self.alice, &self.bob, &self.carol]),
            quorum: 2,
            members: vec![self.record(1), self.record(2)],
            rules: vec![MeasurementPolicy::development().rule()],
        }
    }

    /// Entry `version` after `prev`, signed by `signers`.
    fn entry(
        &self,
        version: u64,
        prev: [u8; 32],
        change: GovChange,
        signers: &[&Admin],
    ) -> GovEntry {
        let mut e = GovEntry {
            version,
            prev,
            meta: RequestMeta {
                request_id: [version as u8 + 1; 16],
                expires_at: self.now + 3600,
            },
            change,
            approvals: Vec::new(),
        };
        let message = e.message(CLUSTER);
        e.approvals = signers.iter().map(|a| a.approve(&message)).collect();
        e
    }

    /// The next entry after `log`.
    fn next(&self, log: &[GovEntry], change: GovChange, signers: &[&Admin]) -> GovEntry {
        let last = log.last().expect("a genesis first");
        self.entry(last.version + 1, entry_hash(CLUSTER, last), change, signers)
    }

    /// genesis (node1, node2); admit node3; remove node2; revoke carol and node3 (signed by
    /// carol, who still counts there); governors alice, bob, dave; admit node4 with dave.
    fn log(&self) -> Vec<GovEntry> {
        let mut log =
            vec![self.entry(0, [0; 32], self.genesis_change(), &[&self.alice, &self.bob])];
        let steps = [
            (
                GovChange::Admit {
                    member: self.record(3),
                },
                [&self.bob, &self.carol],
            ),
            (
                GovChange::Remove {
                    key_fingerprint: self.nodes[1].fp(),
                    reason: "decommissioned".into(),
                },
                [&self.alice, &self.carol],
            ),
            (
                GovChange::Revoke {
                    admins: vec![self.carol.fp()],
                    devices: vec![self.nodes[2].fp()],
                    reason: "lost laptop, stolen disk".into(),
                },
                [&self.bob, &self.carol],
            ),
            (
                GovChange::SetGovernors {
                    governors: self.governors(&[&self.alice, &self.bob, &self.dave]),
                    quorum: 2,
                },
                [&self.alice, &self.bob],
            ),
            (
                GovChange::Admit {
                    member: self.record(4),
                },
                [&self.alice, &self.dave],
            ),
        ];
        for (change, signers) in steps {
            let e = self.next(&log, change, &signers);
            log.push(e);
        }
        log
    }

    fn verify(&self, entries: &[GovEntry]) -> Result<GovState, GovError> {
        verify_log(&self.pki.root, CLUSTER, None, entries)
    }

    fn state(&self, entries: &[GovEntry]) -> GovState {
        self.verify(entries).expect("a valid log")
    }

    fn apply(&self, state: &GovState, e: &GovEntry) -> Result<GovState, GovError> {
        let mut s = state.clone();
        s.apply(&self.pki.root, &mut AdminCache::default(), e)?;
        Ok(s)
    }

    fn identity(&self, chain: &CertChain) -> DeviceIdentity {
        self.pki
            .root
            .verify_device(&chain.clone().into(), Some(CLUSTER), self.now)
            .expect("a dc1 device")
    }
}

fn approval_error(r: Result<impl std::fmt::Debug, GovError>) -> TeeError {
    match r {
        Err(GovError::Approvals { error, .. }) => error,
        other => panic!("expected an approval refusal, got {other:?}"),
    }
}

#[test]
fn gov_log_properties() {
    let fx = Fx::new();
    let log = fx.log();
    let s = fx.state(&log);
    assert_eq!(s.version, 5);
    assert_eq!(s.head, entry_hash(CLUSTER, &log[5]));
    assert_eq!(s.genesis_id, genesis_id(CLUSTER, &log[0].change));
    let members: Vec<&str> = s.members.values().map(|m| m.record.node.as_str()).collect();
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(sorted, ["node1", "node4"]);
    assert_eq!(
        s.member(&fx.nodes[3].fp()).map(|m| m.admitted_version),
        Some(5)
    );
    assert_eq!(s.removed.get(&fx.nodes[1].fp()), Some(&2));
    assert_eq!(s.revoked_admins.get(&fx.carol.fp()), Some(&3));
    assert_eq!(s.revoked_devices.get(&fx.nodes[2].fp()), Some(&3));
    assert!(s.member(&fx.nodes[2].fp()).is_none());
    assert_eq!(s.governors, fx.governors(&[&fx.alice, &fx.bob, &fx.dave]));

    // Every prefix verifies, and applying entry by entry gives the same state.
    let mut cache = AdminCache::default();
    let mut stepwise = GovState::genesis(&fx.pki.root, &mut cache, CLUSTER, None, &log[0]).unwrap();
    for e in &log[1..] {
        stepwise.apply(&fx.pki.root, &mut cache, e).unwrap();
    }
    assert_eq!(stepwise, s);

    // The pin: the right one verifies, any other is refused by name.
    let id = s.genesis_id;
    assert!(verify_log(&fx.pki.root, CLUSTER, Some(id), &log).is_ok());
    let mut wrong = id;
    wrong[0] ^= 1;
    assert_eq!(
        verify_log(&fx.pki.root, CLUSTER, Some(wrong), &log),
        Err(GovError::WrongPin {
            expected: wrong,
            found: id
        })
    );
    // The log of dc1 is not dc2's: the approvals name the cluster.
    assert!(verify_log(&fx.pki.root, "dc2", None, &log).is_err());
    assert_eq!(fx.verify(&[]), Err(GovError::EmptyLog));
}

#[test]
fn any_flipped_byte_is_refused() {
    let fx = Fx::new();
    let log = fx.log();
    for i in 0..log.len() {
        // The state before entry i, verified once; each flipped entry i is applied to it.
        let before = (i > 0).then(|| fx.state(&log[..i]));
        let bytes = postcard::to_allocvec(&log[i]).unwrap();
        // An odd stride visits every part of the entry (header, change, certificates,
        // signatures) in a few dozen flips.
        let stride = (bytes.len() / 48).max(1) | 1;
        let mut tried = 0;
        for pos in (0..bytes.len()).step_by(stride) {
            let mut b = bytes.clone();
            b[pos] ^= 0x01;
            let Ok(flipped) = postcard::from_bytes::<GovEntry>(&b) else {
                continue; // not even an entry: refused at decoding
            };
            let refused = match &before {
                Some(state) => fx.apply(state, &flipped).is_err(),
                None => fx.verify(&[flipped]).is_err(),
            };
            assert!(
                refused,
                "entry {i}: flipped byte {pos} of {} accepted",
                bytes.len()
            );
            tried += 1;
        }
        assert!(tried > 10, "entry {i}: only {tried} flips decoded");
    }
}

#[test]
fn reordered_dropped_and_forked_entries_are_refused() {
    let fx = Fx::new();
    let log = fx.log();
    for i in 1..log.len() - 1 {
        let mut swapped = log.clone();
        swapped.swap(i, i + 1);
        assert!(matches!(
            fx.verify(&swapped),
            Err(GovError::WrongVersion { .. })
        ));
        let mut dropped = log.clone();
        dropped.remove(i);
        assert!(matches!(
            fx.verify(&dropped),
            Err(GovError::WrongVersion { .. })
        ));
    }
    let mut genesis_later = log.clone();
    genesis_later.swap(0, 1);
    assert_eq!(
        fx.verify(&genesis_later),
        Err(GovError::NotGenesis { version: 1 })
    );
    // A fork: another approved entry at version 1. Alone it is a valid log; next to the first
    // version 1 it is refused, and what was chained after one branch never joins the other.
    let fork = fx.next(
        &log[..1],
        GovChange::Remove {
            key_fingerprint: fx.nodes[0].fp(),
            reason: "fork".into(),
        },
        &[&fx.alice, &fx.bob],
    );
    assert!(fx.verify(&[log[0].clone(), fork.clone()]).is_ok());
    assert_eq!(
        fx.verify(&[log[0].clone(), log[1].clone(), fork.clone()]),
        Err(GovError::WrongVersion {
            expected: 2,
            found: 1
        })
    );
    assert!(matches!(
        fx.verify(&[log[0].clone(), fork, log[2].clone()]),
        Err(GovError::WrongPrev { version: 2, .. })
    ));
    // A second genesis later in the log.
    let again = fx.entry(
        1,
        entry_hash(CLUSTER, &log[0]),
        fx.genesis_change(),
        &[&fx.alice, &fx.bob],
    );
    assert_eq!(
        fx.verify(&[log[0].clone(), again]),
        Err(GovError::UnexpectedGenesis { version: 1 })
    );
    let late = fx.entry(1, [0; 32], fx.genesis_change(), &[&fx.alice, &fx.bob]);
    assert_eq!(
        fx.verify(&[late]),
        Err(GovError::GenesisPosition { version: 1 })
    );
}

#[test]
fn only_unrevoked_governors_as_of_the_previous_version_count() {
    let fx = Fx::new();
    let log = fx.log();
    let admit3 = |signers: &[&Admin]| {
        fx.next(
            &log[..1],
            GovChange::Admit {
                member: fx.record(3),
            },
            signers,
        )
    };
    // An outsider is named, even beside a quorum of governors.
    let e = admit3(&[&fx.alice, &fx.dave, &fx.bob]);
    assert_eq!(
        approval_error(fx.verify(&[log[0].clone(), e])),
        TeeError::ApproverNotInGroup {
            index: 1,
            admin: "dave".into(),
            key_fingerprint: fx.dave.fp()
        }
    );
    let e = admit3(&[&fx.alice]);
    assert_eq!(
        approval_error(fx.verify(&[log[0].clone(), e])),
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        }
    );
    let e = admit3(&[&fx.alice, &fx.alice]);
    assert!(matches!(
        approval_error(fx.verify(&[log[0].clone(), e])),
        TeeError::QuorumNotMet { approved: 1, .. }
    ));
    // The genesis itself needs a quorum of the governors it names.
    let g = fx.entry(0, [0; 32], fx.genesis_change(), &[&fx.alice, &fx.dave]);
    assert!(matches!(
        approval_error(fx.verify(&[g])),
        TeeError::ApproverNotInGroup { index: 1, .. }
    ));
    // Carol signed her own revocation (version 3, counted as of version 2); from version 4 on
    // she is refused by name.
    let after_revoke = fx.next(
        &log[..4],
        GovChange::Admit {
            member: fx.record(4),
        },
        &[&fx.alice, &fx.carol],
    );
    let mut entries = log[..4].to_vec();
    entries.push(after_revoke);
    assert_eq!(
        approval_error(fx.verify(&entries)),
        TeeError::AdminRevoked {
            index: 1,
            admin: "carol".into(),
            key_fingerprint: fx.carol.fp()
        }
    );
    // Dave counts only once the governors are changed (version 4), not before.
    let early = fx.next(
        &log[..4],
        GovChange::Admit {
            member: fx.record(4),
        },
        &[&fx.alice, &fx.dave],
    );
    let mut entries = log[..4].to_vec();
    entries.push(early);
    assert!(matches!(
        approval_error(fx.verify(&entries)),
        TeeError::ApproverNotInGroup { .. }
    ));
}

#[test]
fn genesis_id_covers_the_content_not_the_approvals() {
    let fx = Fx::new();
    let a = fx.entry(0, [0; 32], fx.genesis_change(), &[&fx.alice, &fx.bob]);
    let mut b = fx.entry(0, [0; 32], fx.genesis_change(), &[]);
    b.meta.request_id = [0x77; 16];
    let message = b.message(CLUSTER);
    b.approvals = [&fx.carol, &fx.bob, &fx.alice]
        .iter()
        .map(|a| a.approve(&message))
        .collect();
    let sa = fx.state(std::slice::from_ref(&a));
    let sb = fx.state(std::slice::from_ref(&b));
    assert_eq!(sa.genesis_id, sb.genesis_id);
    assert_ne!(sa.head, sb.head, "the head covers the approvals");
    let GovChange::Genesis {
        governors,
        members,
        rules,
        ..
    } = fx.genesis_change()
    else {
        unreachable!()
    };
    let other = GovChange::Genesis {
        governors,
        quorum: 3,
        members,
        rules,
    };
    assert_ne!(genesis_id(CLUSTER, &other), sa.genesis_id);
    assert_ne!(genesis_id("dc2", &a.change), sa.genesis_id);
}

#[test]
fn admission_checks_the_chain_key_name_and_window() {
    let fx = Fx::new();
    let log = fx.log();
    let s1 = fx.state(&log[..1]);
    let admit = |member: MemberRecord| {
        let e = fx.next(
            &log[..1],
            GovChange::Admit { member },
            &[&fx.alice, &fx.bob],
        );
        fx.apply(&s1, &e)
    };
    assert!(admit(fx.record(3)).is_ok());
    // A genuine device certificate of another cluster.
    let foreign = fx.pki.certify(&fx.nodes[2].key, "dc2", "node3");
    assert!(matches!(
        admit(fx.record_of(&foreign, "node3", 3)),
        Err(GovError::MemberChain { .. })
    ));
    // A fingerprint that is not the certified key's.
    let mut r = fx.record(3);
    r.key_fingerprint = fx.nodes[3].fp();
    assert!(matches!(admit(r), Err(GovError::MemberKey { .. })));
    // A record naming another node than its certificate.
    let r = fx.record_of(&fx.nodes[2].chain, "node9", 3);
    assert_eq!(
        admit(r),
        Err(GovError::MemberName {
            node: "node9".into(),
            certified: "node3".into()
        })
    );
    // A new key under a current member's name: the name-takeover.
    let impostor = fx.pki.certify(&fx.nodes[2].key, CLUSTER, "node1");
    assert_eq!(
        admit(fx.record_of(&impostor, "node1", 3)),
        Err(GovError::NameTaken("node1".into()))
    );
    // A current member again, even under a renewed certificate.
    let renewed = fx.pki.certify(&fx.nodes[0].key, CLUSTER, "node1");
    assert_eq!(
        admit(fx.record_of(&renewed, "node1", 1)),
        Err(GovError::AlreadyMember(fx.nodes[0].fp()))
    );
    // Admission time outside the approval window.
    for t in [
        fx.now + 3601,
        fx.now + 3600 - MAX_APPROVAL_LIFETIME_SECS - 1,
    ] {
        let mut r = fx.record(3);
        r.admitted_at = t;
        assert!(matches!(
            admit(r),
            Err(GovError::AdmittedOutsideWindow { .. })
        ));
    }
    // Limits and names are checked before any certificate.
    let mut r = fx.record(3);
    r.evidence = Evidence {
        format: 1,
        document: vec![0; super::super::MAX_EVIDENCE + 1],
    };
    assert!(matches!(admit(r), Err(GovError::TooLong { .. })));
    let mut r = fx.record(3);
    r.node = "Node/3".into();
    assert!(matches!(admit(r), Err(GovError::InvalidName(_))));
    // A refused entry leaves the state as it was.
    let mut s = s1.clone();
    let e = fx.next(
        &log[..1],
        GovChange::Admit {
            member: fx.record_of(&impostor, "node1", 3),
        },
        &[&fx.alice, &fx.bob],
    );
    assert!(s
        .apply(&fx.pki.root, &mut AdminCache::default(), &e)
        .is_err());
    assert_eq!(s, s1);
}

#[test]
fn removal_revocation_and_renewal() {
    let fx = Fx::new();
    let log = fx.log();
    let s = fx.state(&log);
    let ab = [&fx.alice, &fx.bob];
    // Removing a non-member (removed node2, revoked node3, never admitted).
    for fp in [fx.nodes[1].fp(), fx.nodes[2].fp(), [9; 32]] {
        let e = fx.next(
            &log,
            GovChange::Remove {
                key_fingerprint: fp,
                reason: String::new(),
            },
            &ab,
        );
        assert_eq!(fx.apply(&s, &e), Err(GovError::NotAMember(fp)));
    }
    // A removed node may come back; a revoked one never.
    let back = fx.next(
        &log,
        GovChange::Admit {
            member: fx.record(2),
        },
        &ab,
    );
    assert!(fx.apply(&s, &back).is_ok());
    let revoked = fx.next(
        &log,
        GovChange::Admit {
            member: fx.record(3),
        },
        &ab,
    );
    assert_eq!(
        fx.apply(&s, &revoked),
        Err(GovError::DeviceRevoked(fx.nodes[2].fp()))
    );
    // Revoking twice, revoking a governor below quorum, naming a revoked governor.
    let revoke = |admins: Vec<[u8; 32]>, devices: Vec<[u8; 32]>| GovChange::Revoke {
        admins,
        devices,
        reason: "r".into(),
    };
    let e = fx.next(&log, revoke(vec![fx.carol.fp()], vec![]), &ab);
    assert_eq!(
        fx.apply(&s, &e),
        Err(GovError::AlreadyRevoked(fx.carol.fp()))
    );
    let e = fx.next(
        &log,
        revoke(fx.governors(&[&fx.alice, &fx.dave]), vec![]),
        &ab,
    );
    assert_eq!(
        fx.apply(&s, &e),
        Err(GovError::GovernorsBelowQuorum { left: 1, quorum: 2 })
    );
    // A refused revocation changes nothing, not even the keys it named first.
    let e = fx.next(
        &log,
        revoke(fx.governors(&[&fx.alice, &fx.dave]), vec![fx.nodes[0].fp()]),
        &ab,
    );
    let mut unchanged = s.clone();
    assert!(unchanged
        .apply(&fx.pki.root, &mut AdminCache::default(), &e)
        .is_err());
    assert_eq!(unchanged, s);
    let e = fx.next(&log, revoke(vec![], vec![]), &ab);
    assert_eq!(fx.apply(&s, &e), Err(GovError::EmptyRevocation));
    // A reason that would move an approver's terminal cursor over the lines around it.
    let e = fx.next(
        &log,
        GovChange::Remove {
            key_fingerprint: fx.nodes[0].fp(),
            reason: "retired\x1b[2A\x1b[2Krevoked admin 00".into(),
        },
        &ab,
    );
    assert_eq!(fx.apply(&s, &e), Err(GovError::ControlCharacter('\u{1b}')));
    let e = fx.next(
        &log,
        revoke(
            fx.governors(&[&fx.alice, &fx.dave])
                .into_iter()
                .rev()
                .collect(),
            vec![],
        ),
        &ab,
    );
    assert!(matches!(fx.apply(&s, &e), Err(GovError::BadSet { .. })));
    let e = fx.next(
        &log,
        GovChange::SetGovernors {
            governors: fx.governors(&[&fx.alice, &fx.carol]),
            quorum: 1,
        },
        &ab,
    );
    assert_eq!(
        fx.apply(&s, &e),
        Err(GovError::RevokedGovernor(fx.carol.fp()))
    );
    for quorum in [0, 3] {
        let e = fx.next(
            &log,
            GovChange::SetGovernors {
                governors: fx.governors(&[&fx.alice, &fx.bob]),
                quorum,
            },
            &ab,
        );
        assert!(matches!(
            fx.apply(&s, &e),
            Err(GovError::QuorumOutOfRange { .. })
        ));
    }
    // Revoking a member device removes it in the same step.
    let e = fx.next(&log, revoke(vec![], vec![fx.nodes[0].fp()]), &ab);
    let after = fx.apply(&s, &e).unwrap();
    assert!(after.member(&fx.nodes[0].fp()).is_none());
    assert_eq!(
        after.check_device(&fx.identity(&fx.nodes[0].chain)),
        Err(DeviceRefusal::Revoked {
            node: "node1".into(),
            key_fingerprint: fx.nodes[0].fp()
        })
    );

    // Peer checks: a member under a renewed certificate is still the member; a removed node,
    // a stranger and a renamed key are refused by name.
    let renewed = fx.pki.certify(&fx.nodes[0].key, CLUSTER, "node1");
    assert_eq!(
        s.check_device(&fx.identity(&renewed))
            .map(|m| m.admitted_version),
        Ok(0)
    );
    assert_eq!(
        s.check_device(&fx.identity(&fx.nodes[1].chain)),
        Err(DeviceRefusal::NotAMember {
            node: "node2".into(),
            key_fingerprint: fx.nodes[1].fp()
        })
    );
    let stranger = fx.pki.device(CLUSTER, "node7");
    assert!(matches!(
        s.check_device(&fx.identity(&stranger.chain)),
        Err(DeviceRefusal::NotAMember { .. })
    ));
    let renamed = fx.pki.certify(&fx.nodes[0].key, CLUSTER, "node8");
    assert_eq!(
        s.check_device(&fx.identity(&renamed)),
        Err(DeviceRefusal::WrongName {
            node: "node8".into(),
            member: "node1".into(),
            key_fingerprint: fx.nodes[0].fp()
        })
    );
    assert_eq!(
        s.check_device(&fx.identity(&fx.nodes[2].chain)),
        Err(DeviceRefusal::Revoked {
            node: "node3".into(),
            key_fingerprint: fx.nodes[2].fp()
        })
    );
}

#[test]
fn limits_are_enforced_before_any_certificate() {
    let fx = Fx::new();
    let log = fx.log();
    let s1 = fx.state(&log[..1]);
    let ab = [&fx.alice, &fx.bob];
    let long = "x".repeat(super::super::MAX_REASON + 1);
    let e = fx.next(
        &log[..1],
        GovChange::Remove {
            key_fingerprint: fx.nodes[0].fp(),
            reason: long,
        },
        &ab,
    );
    assert!(matches!(fx.apply(&s1, &e), Err(GovError::TooLong { .. })));
    let many: Vec<[u8; 32]> = (0..=MAX_REVOKED as u32)
        .map(|i| {
            let mut fp = [0; 32];
            fp[..4].copy_from_slice(&i.to_be_bytes());
            fp
        })
        .collect();
    let e = fx.next(
        &log[..1],
        GovChange::Revoke {
            admins: many,
            devices: vec![],
            reason: String::new(),
        },
        &ab,
    );
    assert!(matches!(fx.apply(&s1, &e), Err(GovError::TooMany { .. })));
    let GovChange::Genesis {
        governors, members, ..
    } = fx.genesis_change()
    else {
        unreachable!()
    };
    let ruled = GovChange::Genesis {
        governors: governors.clone(),
        quorum: 2,
        members: members.clone(),
        rules: vec![crate::policy::Rule {
            tag: crate::policy::RULE_CLUSTER_ANCHORS,
            body: vec![0; 32],
        }],
    };
    let g = fx.entry(0, [0; 32], ruled, &ab);
    assert!(matches!(fx.verify(&[g]), Err(GovError::Rule(_))));
    let empty = GovChange::Genesis {
        governors,
        quorum: 2,
        members: vec![],
        rules: vec![],
    };
    let g = fx.entry(0, [0; 32], empty, &ab);
    assert!(matches!(fx.verify(&[g]), Err(GovError::TooMany { .. })));
}
