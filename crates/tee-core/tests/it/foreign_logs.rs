//! Co-signers of other clusters (issue 12, item 1, plan step D5): a threshold key whose
//! policy anchors each share's cluster at its governance genesis is used only with members
//! of those logs. The attacker holds a genuine device certificate of cluster dc2 that no dc2
//! quorum ever admitted; before this step, dc1's TEE accepted it as the co-signer of dc2's
//! share on its certificate alone (the chain reaches dc2's Cluster CA), and a signing session
//! started with it.

use custos_tee_core::TeeCore;
use custos_test_kit::governance::{member, GovLog};
use custos_test_kit::{call_core, MemPlatform};
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::governance::{genesis_id, GovEntry};
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{Outcome, Request, Response, TeeError, ThresholdKeyInfo};

use crate::dkg::{make_group_key, meta, sign_start, GroupKeygen, Node, Pki};
use crate::governance::{approvals_by, group_policy};

/// Applies `entries` of `cluster`'s log to `node`.
fn apply(core: &mut TeeCore<MemPlatform>, cluster: &str, entries: &[GovEntry]) -> Outcome {
    call_core(
        core,
        &Request::ApplyGovernance {
            cluster: cluster.into(),
            entries: entries.to_vec(),
        },
    )
}

/// A signing start of `key` on shares 0 and 1 by `signers`, approved by the group.
fn sign(pki: &Pki, key: &ThresholdKeyInfo, signers: [&Node; 2]) -> Request {
    sign_start(pki, key, &["alice", "bob"], signers)
}

fn not_a_member(o: Outcome, name: &str) {
    match o {
        Err(TeeError::NotAMember { node, .. }) if node == name => {}
        other => panic!("expected {name} refused as no member, got {other:?}"),
    }
}

fn records(node: &Node, prefix: &str) -> usize {
    let store = &node.core.platform().committed;
    store.keys().filter(|k| k.starts_with(prefix)).count()
}

#[test]
fn a_co_signer_of_another_cluster_must_be_a_member_of_its_anchored_log() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let mut b = pki.node("dc2", "dc2-node1", 1, 1);
    let b2 = pki.node("dc2", "dc2-node2", 2, 0);
    // Genuinely certified by dc2's Cluster CA, never admitted by a dc2 quorum.
    let rogue = pki.node("dc2", "dc2-rogue", 3, 0);
    let governors = ["alice", "bob"];
    let dc1 = GovLog::genesis(
        &pki,
        "dc1",
        &governors,
        2,
        vec![member(&pki, &a.chain)],
        &governors,
    );
    let mut dc2 = GovLog::genesis(
        &pki,
        "dc2",
        &governors,
        2,
        vec![member(&pki, &b.chain)],
        &governors,
    );
    assert!(apply(&mut a.core, "dc1", dc1.entries()).is_ok());
    assert!(apply(&mut b.core, "dc2", dc2.entries()).is_ok());
    let g2 = genesis_id("dc2", &dc2.entries()[0].change);
    let anchors = [genesis_id("dc1", &dc1.entries()[0].change), g2];
    let policy = crate::governance::anchored(group_policy(&pki, &governors, 2), &anchors);

    // Before the key exists, nothing anchors dc2 here: its log is not taken.
    match apply(&mut a.core, "dc2", dc2.entries()) {
        Err(TeeError::GovernanceRejected(m)) => assert!(m.contains("no held key anchors"), "{m}"),
        other => panic!("a log no key anchors was taken: {other:?}"),
    }
    let req = GroupKeygen::new(&pki, &[&a, &b], false, &policy, &governors);
    let key = make_group_key(&req, &mut a, &mut b);

    // The key anchors dc2, whose log dc1 does not hold yet: no dc2 device is believed.
    for other in [&rogue, &b] {
        let request = sign(&pki, &key, [&a, other]);
        assert_eq!(
            a.call(&request),
            Err(TeeError::ForeignLogMissing {
                cluster: "dc2".into(),
                genesis_id: g2
            })
        );
    }
    // Another genesis made for dc2 (the rogue its one member, approved by admins the Admin
    // CA certified) is anchored by no key: refused, nothing stored.
    let fake = GovLog::genesis(
        &pki,
        "dc2",
        &["carol"],
        1,
        vec![member(&pki, &rogue.chain)],
        &["carol"],
    );
    match apply(&mut a.core, "dc2", fake.entries()) {
        Err(TeeError::GovernanceRejected(m)) => assert!(m.contains("no held key anchors"), "{m}"),
        other => panic!("an unanchored genesis was taken: {other:?}"),
    }
    assert_eq!(records(&a, "govf/"), 0);

    // dc2's own log, once pushed, decides: the rogue is no member, dc2's node is.
    match apply(&mut a.core, "dc2", dc2.entries()) {
        Ok(Response::Governance(v)) => assert_eq!((v.cluster.as_str(), v.version), ("dc2", 0)),
        other => panic!("dc2's anchored log was refused: {other:?}"),
    }
    let sessions = records(&a, "tsession/");
    not_a_member(a.call(&sign(&pki, &key, [&a, &rogue])), "dc2-rogue");
    assert_eq!(
        records(&a, "tsession/"),
        sessions,
        "a refused start recorded a session"
    );
    assert!(matches!(
        a.call(&sign(&pki, &key, [&a, &b])),
        Ok(Response::ThresholdRound { .. })
    ));

    // dc2 admits a second node and removes the first; the page after the genesis finds the
    // log it continues, and the removal holds at once.
    dc2.admit(member(&pki, &b2.chain), &governors);
    let b_key = member(&pki, &b.chain).key_fingerprint;
    dc2.remove(b_key, &governors);
    match apply(&mut a.core, "dc2", &dc2.entries()[1..]) {
        Ok(Response::Governance(v)) => assert_eq!(v.version, 2),
        other => panic!("dc2's later entries were refused: {other:?}"),
    }
    not_a_member(a.call(&sign(&pki, &key, [&a, &b])), "dc2-node1");
    assert!(matches!(
        a.call(&sign(&pki, &key, [&a, &b2])),
        Ok(Response::ThresholdRound { .. })
    ));

    // Entries past a gap are refused as a gap (the coordinator sends from the genesis); an
    // entry at a held version that is not the held one, as a fork.
    dc2.admit(member(&pki, &b.chain), &governors);
    dc2.remove(b_key, &governors);
    assert_eq!(
        apply(&mut a.core, "dc2", &dc2.entries()[4..]),
        Err(TeeError::GovernanceGap { head: 2, first: 4 })
    );
    let other = dc2.next_entry(
        custos_wire::governance::GovChange::Remove {
            key_fingerprint: b_key,
            reason: "another history".into(),
        },
        &governors,
    );
    let fork = custos_wire::governance::GovEntry {
        version: 2,
        prev: custos_wire::governance::entry_hash("dc2", &dc2.entries()[1]),
        ..other
    };
    match apply(&mut a.core, "dc2", &[fork]) {
        Err(TeeError::GovernanceRejected(m)) => assert!(m.contains("differs"), "{m}"),
        other => panic!("a fork of dc2's log was taken: {other:?}"),
    }
    // The foreign log is sealed: a restarted TEE still holds it at version 2.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    not_a_member(a.call(&sign(&pki, &key, [&a, &rogue])), "dc2-rogue");
    not_a_member(a.call(&sign(&pki, &key, [&a, &b])), "dc2-node1");
    // A foreign log with an entry missing from storage stops the TEE from opening, as its
    // own log would: it never falls back to certificates alone.
    let mut store = a.core.platform().after_restart();
    let entry = store
        .committed
        .keys()
        .find(|k| k.starts_with("govf/") && k.ends_with("0000000000000001"))
        .cloned()
        .expect("a sealed foreign entry");
    store.committed.remove(&entry);
    store.staged.remove(&entry);
    match TeeCore::open(store, "memory") {
        Err(custos_tee_core::OpenError::Essential { record, .. }) => {
            assert!(record.starts_with("govf/"), "{record}")
        }
        Err(e) => panic!("expected the foreign log named, got {e}"),
        Ok(_) => panic!("opened without a sealed foreign entry"),
    }
}

/// A policy change of threshold key `key_id` (one message for every cluster of the key).
fn change(
    pki: &custos_test_kit::Pki,
    key_id: &[u8],
    prev: [u8; 32],
    policy: &KeyPolicy,
    signers: &[&str],
) -> Request {
    let meta = meta();
    let action = Action::SetKeyPolicy {
        key_id,
        prev: &prev,
        policy,
    };
    Request::SetKeyPolicy {
        approvals: approvals_by(pki, signers, &action.message(THRESHOLD_SCOPE, &meta)),
        meta,
        key_id: key_id.to_vec(),
        prev,
        policy: policy.clone(),
    }
}

/// A dealt key carries no group: once its cluster is governed, its governors approve it. They
/// give it a group and cluster anchors (a policy change each cluster's TEE checks alone), and
/// from then on only the group counts and only members of the anchored logs co-sign: the
/// rogue dc2 device the key's certificate rule accepted before is refused by name.
/// Each cluster's governance log from a genesis by `governors` (quorum 2) with `nodes` as its
/// members, and the anchors naming those geneses, in the order given.
fn genesis_logs<'a>(
    pki: &'a crate::threshold::Pki,
    governors: &[&str],
    clusters: [(&str, Vec<&crate::threshold::Node>); 3],
) -> (Vec<GovLog<'a>>, Vec<[u8; 32]>) {
    let logs: Vec<GovLog> = clusters
        .into_iter()
        .map(|(cluster, nodes)| {
            let members = nodes.iter().map(|n| member(pki, &n.chain)).collect();
            GovLog::genesis(pki, cluster, governors, 2, members, governors)
        })
        .collect();
    let anchors = logs
        .iter()
        .map(|l| genesis_id(l.cluster(), &l.entries()[0].change))
        .collect();
    (logs, anchors)
}

#[test]
fn a_dealt_key_given_anchors_by_its_governors_refuses_a_rogue_co_signer() {
    use crate::threshold as dealt;

    let pki = dealt::Pki::new();
    let mut a = pki.node("dc1", "dc1-node1");
    let mut peer = pki.node("dc1", "dc1-node2");
    let b = pki.node("dc2", "dc2-node1");
    let rogue = pki.node("dc2", "dc2-rogue");
    dealt::import_share(&pki, 0, &mut a);
    let sync = |from: &mut dealt::Node, to: &mut dealt::Node, key: &[u8]| {
        let Ok(Response::KeyTransfer(transfer)) = from.call(&Request::ExportKeys {
            requester: to.chain.clone(),
            key_ids: vec![key.to_vec()],
        }) else {
            panic!("export refused")
        };
        to.call(&Request::ImportKeys { transfer })
    };
    assert!(sync(&mut a, &mut peer, &dealt::key_id()).is_ok());
    let key = dealt::key_id();
    let get = |n: &mut dealt::Node| match n.call(&Request::GetKeyPolicy {
        key_id: key.clone(),
    }) {
        Ok(Response::KeyPolicy { policy, .. }) => policy,
        other => panic!("no policy read: {other:?}"),
    };
    let legacy = get(&mut a);
    assert_eq!(legacy, KeyPolicy::legacy(2));
    // Before: the rogue's certificate alone made it dc2's co-signer.
    let digest = [0x11; 32];
    let with_rogue =
        |a: &dealt::Node| dealt::SignRequest::new(&pki, &[(0, a), (1, &rogue)], digest, 2).start(0);
    let request = with_rogue(&a);
    assert!(matches!(
        a.call(&request),
        Ok(Response::ThresholdRound { .. })
    ));

    let governors = ["alice", "bob"];
    let c = pki.node("dc3", "dc3-node1");
    let (logs, anchors) = genesis_logs(
        &pki,
        &governors,
        [
            ("dc1", vec![&a, &peer]),
            ("dc2", vec![&b]),
            ("dc3", vec![&c]),
        ],
    );
    let anchored = |anchors: &[[u8; 32]], quorum| {
        crate::governance::anchored(group_policy(&pki, &governors, quorum), anchors)
    };
    let v1 = anchored(&anchors, 2);
    // Ungoverned, no one may narrow a key any Admin-CA certificate approves.
    assert_eq!(
        a.call(&change(&pki, &key, legacy.hash(), &v1, &governors)),
        Err(TeeError::NotGoverned)
    );
    assert!(apply(&mut a.core, "dc1", logs[0].entries()).is_ok());
    assert!(apply(&mut peer.core, "dc1", logs[0].entries()).is_ok());
    // The key's quorum is part of the key; the anchor of this share is this cluster's log;
    // carol, no governor, counts for nothing.
    let other_quorum = anchored(&anchors, 1);
    let swapped = anchored(&[anchors[1], anchors[0], anchors[2]], 2);
    for (policy, why) in [(&other_quorum, "quorum"), (&swapped, "anchor of share 0")] {
        match a.call(&change(&pki, &key, legacy.hash(), policy, &governors)) {
            Err(TeeError::PolicyRejected(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("expected PolicyRejected ({why}), got {other:?}"),
        }
    }
    crate::governance::refused_outsider(
        a.call(&change(&pki, &key, legacy.hash(), &v1, &["alice", "carol"])),
        "carol",
    );
    assert_eq!(get(&mut a), legacy);
    match a.call(&change(&pki, &key, legacy.hash(), &v1, &governors)) {
        Ok(Response::KeyPolicy { policy, .. }) => assert_eq!(policy, v1),
        other => panic!("the governors' change was refused: {other:?}"),
    }

    // Now the key anchors dc2: its log is taken, and decides.
    let request = with_rogue(&a);
    assert_eq!(
        a.call(&request),
        Err(TeeError::ForeignLogMissing {
            cluster: "dc2".into(),
            genesis_id: anchors[1]
        })
    );
    assert!(matches!(
        apply(&mut a.core, "dc2", logs[1].entries()),
        Ok(Response::Governance(_))
    ));
    let request = with_rogue(&a);
    not_a_member(a.call(&request), "dc2-rogue");
    let request = dealt::SignRequest::new(&pki, &[(0, &a), (1, &b)], digest, 2).start(0);
    assert!(matches!(
        a.call(&request),
        Ok(Response::ThresholdRound { .. })
    ));
    // dc1's second node missed the change: the next sync from a member brings it (before,
    // a held share was skipped and the node kept the old policy for good).
    assert_eq!(get(&mut peer), legacy);
    assert!(matches!(
        sync(&mut a, &mut peer, &key),
        Ok(Response::KeysImported {
            already_held: 1,
            ..
        })
    ));
    assert_eq!(get(&mut peer), v1);
    // The policy is sealed with the share.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert_eq!(get(&mut a), v1);
    let request = with_rogue(&a);
    not_a_member(a.call(&request), "dc2-rogue");
}

/// An approved online signing with presignature `id` of `key`, by the admins `signers`.
fn use_presignature(
    pki: &custos_test_kit::Pki,
    key: &[u8],
    id: [u8; 32],
    signers: &[&str],
) -> Request {
    let meta = meta();
    let message = b"pay 1 BTC to the attacker".to_vec();
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&message).into();
    let action = Action::ThresholdSign {
        key_id: key,
        path: &[],
        digest: &digest,
    };
    Request::ThresholdPresignSign {
        approvals: approvals_by(pki, signers, &action.message(THRESHOLD_SCOPE, &meta)),
        meta,
        attempt: 0,
        params: custos_wire::protocol::PresignSignParams {
            key_id: key.to_vec(),
            presignature: id,
            message,
        },
    }
}

/// Whether `node` committed the record of presignature `id`.
fn stored(node: &crate::threshold::Node, id: [u8; 32]) -> bool {
    let name = format!("tpresig/{}", hex::encode(id));
    node.core.platform().committed.contains_key(&name)
}

/// Rewrites presignature `id`'s sealed record at `node` as a version 1 record (the
/// presignature alone, as sealed before its co-signers were recorded) and restarts the TEE.
fn as_version_1(node: &mut crate::threshold::Node, id: [u8; 32]) {
    let name = format!("tpresig/{}", hex::encode(id));
    let mut store = node.core.platform().after_restart();
    let record = store.committed[&name].clone();
    assert_eq!(&record[..2], b"P\x02", "not a version 2 record");
    let mut input = &record[2..];
    let json = custos_wire::field::take(&mut input).unwrap().to_vec();
    assert_eq!(json.first(), Some(&b'{'));
    store.committed.insert(name.clone(), json.clone());
    store.staged.insert(name, json);
    node.core = TeeCore::open(store, "memory").unwrap();
}

/// Attacker first (issue 12: a removed node gets nothing more from the moment of removal).
/// dc2's node made presignatures with dc1's node while it was a member; dc2's governors then
/// removed it (or revoked its device) and dc1's TEE holds that log. Before this step, dc1's
/// TEE still issued its partial signature with such a presignature (getSig): only a policy
/// change of the key ended them. Now each use checks every signer of the presignature again
/// as a session start does, refuses by name, and deletes the presignature for good (it is
/// bound to that signer set). dc1's own removal ends its own presignatures likewise. A
/// record sealed before the signers were recorded is refused and deleted when the key
/// anchors the co-signer's cluster, and used as before when it does not.
#[test]
fn a_presignature_is_used_only_while_its_signers_are_members() {
    use crate::threshold as dealt;

    let pki = dealt::Pki::new();
    let mut a = pki.node("dc1", "dc1-node1");
    let a2 = pki.node("dc1", "dc1-node2");
    let mut b = pki.node("dc2", "dc2-node1");
    let mut b2 = pki.node("dc2", "dc2-node2");
    let mut c = pki.node("dc3", "dc3-node1");
    let key = dealt::import_plain_share(&pki, 0, &mut a).key_id;
    dealt::import_plain_share(&pki, 1, &mut b);
    dealt::import_plain_share(&pki, 1, &mut b2);
    dealt::import_plain_share(&pki, 2, &mut c);
    let governors = ["alice", "bob"];

    // Without anchors a record sealed before the signers were kept is used as before: the
    // start checked certificates only, and there is nothing more to check.
    let p0 = dealt::presign(&mut [(0, &mut a), (1, &mut b)], &key);
    as_version_1(&mut a, p0);
    assert_eq!(dealt::held(&mut a, &key), vec![p0]);
    dealt::partial(a.call(&use_presignature(&pki, &key, p0, &governors)));

    let (mut logs, anchors) = genesis_logs(
        &pki,
        &governors,
        [
            ("dc1", vec![&a, &a2]),
            ("dc2", vec![&b, &b2]),
            ("dc3", vec![&c]),
        ],
    );
    let policy = crate::governance::anchored(group_policy(&pki, &governors, 2), &anchors);
    let legacy = KeyPolicy::legacy(2).hash();
    for (node, own) in [(&mut a, 0), (&mut b, 1), (&mut b2, 1), (&mut c, 2)] {
        assert!(apply(&mut node.core, logs[own].cluster(), logs[own].entries()).is_ok());
        assert!(matches!(
            node.call(&change(&pki, &key, legacy, &policy, &governors)),
            Ok(Response::KeyPolicy { .. })
        ));
        for other in (0..3).filter(|o| *o != own) {
            let log = &logs[other];
            assert!(apply(&mut node.core, log.cluster(), log.entries()).is_ok());
        }
    }

    // While everyone is a member, presignatures are made and used.
    let p1 = dealt::presign(&mut [(0, &mut a), (1, &mut b)], &key);
    let removed = dealt::presign(&mut [(0, &mut a), (1, &mut b)], &key);
    let old = dealt::presign(&mut [(0, &mut a), (1, &mut b)], &key);
    let revoked = dealt::presign(&mut [(0, &mut a), (1, &mut b2)], &key);
    let own = dealt::presign(&mut [(0, &mut a), (2, &mut c)], &key);
    dealt::partial(a.call(&use_presignature(&pki, &key, p1, &governors)));

    // dc2 removes its first node; dc1's TEE receives the removal.
    let b_key = member(&pki, &b.chain).key_fingerprint;
    logs[1].remove(b_key, &governors);
    assert!(apply(&mut a.core, "dc2", &logs[1].entries()[1..]).is_ok());
    assert!(stored(&a, removed));
    let request = use_presignature(&pki, &key, removed, &governors);
    not_a_member(a.call(&request), "dc2-node1");
    assert!(
        !stored(&a, removed),
        "the refused presignature is still stored"
    );
    assert!(!dealt::held(&mut a, &key).contains(&removed));
    // Refused again after a restart, now as unknown: it is gone.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert!(matches!(
        a.call(&use_presignature(&pki, &key, removed, &governors)),
        Err(TeeError::UnknownPresignature(_))
    ));

    // dc2 revokes its second node's device.
    let b2_key = member(&pki, &b2.chain).key_fingerprint;
    logs[1].revoke(&[], vec![b2_key], &governors);
    assert!(apply(&mut a.core, "dc2", &logs[1].entries()[2..]).is_ok());
    // The deletion fails to commit: the refusal says so, the presignature is out of memory
    // and still stored, and a restarted TEE refuses it again.
    a.core
        .platform()
        .fail_next_commit
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        a.call(&use_presignature(&pki, &key, revoked, &governors)),
        Err(TeeError::Storage(_))
    ));
    assert!(stored(&a, revoked));
    assert!(!dealt::held(&mut a, &key).contains(&revoked));
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    match a.call(&use_presignature(&pki, &key, revoked, &governors)) {
        Err(TeeError::DeviceRevoked { node, .. }) => assert_eq!(node, "dc2-node2"),
        other => panic!("a revoked co-signer's presignature was used: {other:?}"),
    }
    assert!(!stored(&a, revoked));

    // A version 1 record of an anchored key names no co-signer to check: refused and
    // deleted, whoever it was made with.
    as_version_1(&mut a, old);
    match a.call(&use_presignature(&pki, &key, old, &governors)) {
        Err(TeeError::ThresholdRejected(m)) => {
            assert!(m.contains("before its co-signers were recorded"), "{m}")
        }
        other => panic!("a presignature whose co-signer is unknown was used: {other:?}"),
    }
    assert!(!stored(&a, old), "the refused presignature is still stored");

    // dc1 removes this node itself: its own presignatures end with its membership.
    let a_key = member(&pki, &a.chain).key_fingerprint;
    logs[0].remove(a_key, &governors);
    assert!(apply(&mut a.core, "dc1", &logs[0].entries()[1..]).is_ok());
    assert!(stored(&a, own));
    not_a_member(
        a.call(&use_presignature(&pki, &key, own, &governors)),
        "dc1-node1",
    );
    assert!(!stored(&a, own));
    assert!(dealt::held(&mut a, &key).is_empty());
}
