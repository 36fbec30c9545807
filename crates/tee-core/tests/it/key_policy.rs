//! Changing a wallet's approver group (issue 12 item 3, step E2), attacker first: only a
//! quorum of the group in force changes it; another group's quorum, a stale or skipped
//! version, a used request id and a revoked admin change nothing; the change is sealed (it
//! survives a restart) and travels with the key to a peer, never backwards.

use std::sync::atomic::Ordering;

use custos_tee_core::TeeCore;
use custos_test_kit::governance::{admin_keys, member, GovLog};
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::approval::Action;
use custos_wire::policy::{KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};
use custos_wire::protocol::{KeyId, Request, RequestMeta, Response, TeeError};

use crate::governance::{
    apply, approvals_by, chain, create_group_wallet, group_policy, meta, refused_outsider, reopen,
    sign,
};

const CLUSTER: &str = "dc1";

/// A policy change of `key_id` from the policy hashing to `prev`, approved by `signers`.
fn change(
    pki: &Pki,
    meta: &RequestMeta,
    key_id: &[u8],
    prev: [u8; 32],
    policy: &KeyPolicy,
    signers: &[&str],
) -> Request {
    let action = Action::SetKeyPolicy {
        key_id,
        prev: &prev,
        policy,
    };
    Request::SetKeyPolicy {
        meta: meta.clone(),
        key_id: key_id.to_vec(),
        prev,
        policy: policy.clone(),
        approvals: approvals_by(pki, signers, &action.message(CLUSTER, meta)),
    }
}

/// Sends `request` and returns the policy it answers.
fn set(core: &mut TeeCore<MemPlatform>, request: &Request) -> Result<KeyPolicy, TeeError> {
    match call(core, request) {
        Ok(Response::KeyPolicy { policy, hash, .. }) => {
            assert_eq!(hash, policy.hash(), "the answer's hash is its policy's");
            Ok(policy)
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
}

/// The policy in force for `key_id`.
fn current(core: &mut TeeCore<MemPlatform>, key_id: &[u8]) -> KeyPolicy {
    set(
        core,
        &Request::GetKeyPolicy {
            key_id: key_id.to_vec(),
        },
    )
    .expect("the key's policy")
}

/// `names` with `quorum`, at `version`.
fn policy_v(pki: &Pki, names: &[&str], quorum: u8, version: u32) -> KeyPolicy {
    KeyPolicy {
        version,
        ..group_policy(pki, names, quorum)
    }
}

/// node1 holding a wallet of {alice, bob}, 2 of 2, and its key id.
fn wallet_of_alice_and_bob(pki: &Pki) -> (TeeCore<MemPlatform>, KeyId) {
    let mut core = pki.node(CLUSTER, "node1");
    let me = member(pki, &chain(&mut core)).key_fingerprint;
    let policy = group_policy(pki, &["alice", "bob"], 2);
    let w = create_group_wallet(pki, &mut core, &policy, me, &["alice", "bob"]).unwrap();
    (core, w.key_id)
}

/// `key` exported by `from` to `to` and imported there, as a sync round does.
fn transfer(
    from: &mut TeeCore<MemPlatform>,
    to: &mut TeeCore<MemPlatform>,
    key: &[u8],
) -> Result<Response, TeeError> {
    let Ok(Response::KeyTransfer(transfer)) = call(
        from,
        &Request::ExportKeys {
            requester: chain(to),
            key_ids: vec![key.to_vec()],
        },
    ) else {
        panic!("export refused")
    };
    call(to, &Request::ImportKeys { transfer })
}

fn signs(r: Result<Response, TeeError>) -> bool {
    matches!(r, Ok(Response::Signature(_)))
}

#[test]
fn another_groups_quorum_changes_nothing() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let v1 = current(&mut core, &key);
    // carol, a genuine admin outside the group, hands the key to herself: alone, or with one
    // member of the group to make up the numbers. Each time she is named, nothing changes.
    let mine = policy_v(&pki, &["carol"], 1, 2);
    for signers in [&["carol"][..], &["alice", "carol"], &["carol", "bob"]] {
        let r = change(&pki, &meta(), &key, v1.hash(), &mine, signers);
        refused_outsider(set(&mut core, &r), "carol");
    }
    assert_eq!(current(&mut core, &key), v1);
    assert_eq!(current(&mut reopen(&core).unwrap(), &key), v1);
    refused_outsider(sign(&pki, &mut core, &key, &["carol"]), "carol");
    assert!(signs(sign(&pki, &mut core, &key, &["alice", "bob"])));
    // One member alone is not the group's quorum either.
    let r = change(&pki, &meta(), &key, v1.hash(), &mine, &["alice"]);
    assert_eq!(
        set(&mut core, &r),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    assert_eq!(current(&mut core, &key), v1);
}

#[test]
fn the_current_group_changes_it_and_a_removed_member_stops_counting() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let v1 = current(&mut core, &key);
    let v2 = policy_v(&pki, &["bob", "carol"], 2, 2);
    let first = meta();
    let r = change(&pki, &first, &key, v1.hash(), &v2, &["alice", "bob"]);
    assert_eq!(set(&mut core, &r), Ok(v2.clone()));
    assert_eq!(current(&mut core, &key), v2);
    // The list reports the new quorum.
    let Ok(Response::Keys(keys)) = call(&mut core, &Request::ListKeys) else {
        panic!("key list")
    };
    assert_eq!(keys[0].quorum, 2);

    // alice is out: her approval refuses a signature, by name; the new group signs.
    refused_outsider(sign(&pki, &mut core, &key, &["alice", "bob"]), "alice");
    assert!(signs(sign(&pki, &mut core, &key, &["carol", "bob"])));

    // Sealed with the key: the same after a restart.
    let mut reopened = reopen(&core).unwrap();
    assert_eq!(current(&mut reopened, &key), v2);
    refused_outsider(sign(&pki, &mut reopened, &key, &["bob", "alice"]), "alice");
    assert!(signs(sign(&pki, &mut reopened, &key, &["bob", "carol"])));

    // The old group cannot take it back: its members approving as before are refused.
    let back = policy_v(&pki, &["alice", "bob"], 2, 3);
    let r = change(&pki, &meta(), &key, v2.hash(), &back, &["alice", "bob"]);
    refused_outsider(set(&mut reopened, &r), "alice");
    assert_eq!(current(&mut reopened, &key), v2);
}

#[test]
fn stale_prev_and_skipped_versions_are_refused() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let v1 = current(&mut core, &key);
    let v2 = policy_v(&pki, &["alice", "bob", "carol"], 2, 2);
    let r = change(&pki, &meta(), &key, v1.hash(), &v2, &["alice", "bob"]);
    assert_eq!(set(&mut core, &r), Ok(v2.clone()));

    // Approved against v1, which is no longer in force: a conflict naming both hashes.
    let v3 = policy_v(&pki, &["alice", "bob"], 1, 3);
    let r = change(&pki, &meta(), &key, v1.hash(), &v3, &["alice", "bob"]);
    assert_eq!(
        set(&mut core, &r),
        Err(TeeError::PolicyConflict {
            key: hex::encode(&key),
            expected: v2.hash(),
            found: v1.hash(),
        })
    );
    // A version that skips one, or repeats the current one, is refused.
    for version in [2, 4, u32::MAX] {
        let p = policy_v(&pki, &["alice", "bob"], 1, version);
        let r = change(&pki, &meta(), &key, v2.hash(), &p, &["alice", "bob"]);
        match set(&mut core, &r) {
            Err(TeeError::PolicyRejected(m)) => assert!(m.contains("version"), "{m}"),
            other => panic!("version {version} accepted: {other:?}"),
        }
    }
    // A wallet's policy carries no cluster anchors; an invalid group is refused.
    let mut anchored = v3.clone();
    anchored.rules = vec![Rule {
        tag: RULE_CLUSTER_ANCHORS,
        body: vec![7; 32],
    }];
    let mut unsorted = v3.clone();
    unsorted.group.reverse();
    for bad in [anchored, unsorted] {
        let r = change(&pki, &meta(), &key, v2.hash(), &bad, &["alice", "bob"]);
        assert!(
            matches!(set(&mut core, &r), Err(TeeError::PolicyRejected(_))),
            "{bad:?}"
        );
    }
    assert_eq!(current(&mut core, &key), v2);
}

#[test]
fn a_used_request_id_changes_nothing_twice() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let v1 = current(&mut core, &key);
    let v2 = policy_v(&pki, &["alice", "bob", "carol"], 2, 2);
    let id = meta();
    let first = change(&pki, &id, &key, v1.hash(), &v2, &["alice", "bob"]);
    assert_eq!(set(&mut core, &first), Ok(v2.clone()));
    // The same request again (its answer was lost): the same answer, nothing more.
    assert_eq!(set(&mut core, &first), Ok(v2.clone()));
    // Other terms under the used id: refused, naming both versions.
    let other = policy_v(&pki, &["carol"], 1, 3);
    let r = change(&pki, &id, &key, v2.hash(), &other, &["alice", "bob"]);
    match set(&mut core, &r) {
        Err(TeeError::RequestReplayed(m)) => assert!(m.contains("version 3"), "{m}"),
        other => panic!("a used id applied other terms: {other:?}"),
    }
    // Once the policy moved on, the first request replayed is refused too (after a restart
    // as well): it never puts v2 back.
    let v3 = policy_v(&pki, &["bob", "carol"], 2, 3);
    let r = change(&pki, &meta(), &key, v2.hash(), &v3, &["bob", "carol"]);
    assert_eq!(set(&mut core, &r), Ok(v3.clone()));
    let mut reopened = reopen(&core).unwrap();
    for core in [&mut core, &mut reopened] {
        assert!(matches!(
            set(core, &first),
            Err(TeeError::RequestReplayed(_))
        ));
        assert_eq!(current(core, &key), v3);
    }
}

#[test]
fn a_failed_commit_changes_nothing_and_uses_no_id() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let v1 = current(&mut core, &key);
    let v2 = policy_v(&pki, &["carol"], 1, 2);
    let r = change(&pki, &meta(), &key, v1.hash(), &v2, &["alice", "bob"]);
    core.platform()
        .fail_next_commit
        .store(true, Ordering::SeqCst);
    assert!(matches!(set(&mut core, &r), Err(TeeError::Storage(_))));
    assert_eq!(current(&mut core, &key), v1);
    refused_outsider(sign(&pki, &mut core, &key, &["carol"]), "carol");
    // The same request lands afterwards: its id was not used up.
    assert_eq!(set(&mut core, &r), Ok(v2));
}

#[test]
fn revoked_admins_and_non_governors_do_not_count() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    // A legacy wallet (no group of its own, quorum 1), made before the cluster was governed.
    let m = meta();
    let message = Action::CreateWallet { quorum: 1 }.message(CLUSTER, &m);
    let Ok(Response::Wallet(legacy)) = call(
        &mut core,
        &Request::CreateWallet {
            meta: m,
            quorum: 1,
            approvals: approvals_by(&pki, &["carol"], &message),
        },
    ) else {
        panic!("legacy create refused")
    };
    let key = legacy.key_id;
    let v0 = current(&mut core, &key);
    assert_eq!(v0, KeyPolicy::legacy(1));
    // Ungoverned, any Admin-CA certificate counts for a legacy wallet: a group set now
    // would be whoever can mint admin certificates. Refused until governors exist.
    let mine = policy_v(&pki, &["carol"], 1, 1);
    let r = change(&pki, &meta(), &key, v0.hash(), &mine, &["carol"]);
    assert_eq!(set(&mut core, &r), Err(TeeError::NotGoverned));
    assert_eq!(current(&mut core, &key), v0);

    // Governed by alice and bob, then carol's key revoked.
    let me = member(&pki, &chain(&mut core));
    let mut log = GovLog::genesis(
        &pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        1,
        vec![me],
        &["alice"],
    );
    log.revoke(&["carol"], vec![], &["alice"]);
    apply(&mut core, log.entries()).unwrap();

    let v1 = policy_v(&pki, &["bob", "carol"], 1, 1);
    let r = change(&pki, &meta(), &key, v0.hash(), &v1, &["carol"]);
    match set(&mut core, &r) {
        Err(TeeError::AdminRevoked {
            admin,
            key_fingerprint,
            ..
        }) => {
            assert_eq!(admin, "carol");
            assert_eq!(key_fingerprint, admin_keys(&pki, &["carol"])[0]);
        }
        other => panic!("a revoked admin changed the group: {other:?}"),
    }
    assert_eq!(current(&mut core, &key), v0);
    // A governor narrows the legacy wallet to a group of its own.
    let r = change(&pki, &meta(), &key, v0.hash(), &v1, &["bob"]);
    assert_eq!(set(&mut core, &r), Ok(v1.clone()));
    assert!(signs(sign(&pki, &mut core, &key, &["bob"])));
}

#[test]
fn a_synced_record_upgrades_the_policy_and_never_downgrades_it() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let mut peer = pki.node(CLUSTER, "node2");
    // Both are members of a governed cluster: only members pass policy changes on.
    let log = GovLog::genesis(
        &pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        2,
        vec![
            member(&pki, &chain(&mut core)),
            member(&pki, &chain(&mut peer)),
        ],
        &["alice", "bob"],
    );
    apply(&mut core, log.entries()).unwrap();
    apply(&mut peer, log.entries()).unwrap();
    let export =
        |from: &mut TeeCore<MemPlatform>, to: &mut TeeCore<MemPlatform>| transfer(from, to, &key);
    export(&mut core, &mut peer).unwrap();
    let v1 = current(&mut peer, &key);

    // The change reaches node1 only (node2 was down).
    let v2 = policy_v(&pki, &["bob", "carol"], 2, 2);
    let r = change(&pki, &meta(), &key, v1.hash(), &v2, &["alice", "bob"]);
    assert_eq!(set(&mut core, &r), Ok(v2.clone()));

    // node2's older record never takes node1 back to v1.
    assert_eq!(
        export(&mut peer, &mut core),
        Ok(Response::KeysImported {
            imported: vec![],
            already_held: 1
        })
    );
    assert_eq!(current(&mut core, &key), v2);
    assert_eq!(current(&mut reopen(&core).unwrap(), &key), v2);

    // node1's record brings node2 up to v2, durably: alice no longer counts there.
    assert!(signs(sign(&pki, &mut peer, &key, &["alice", "bob"])));
    export(&mut core, &mut peer).unwrap();
    assert_eq!(current(&mut peer, &key), v2);
    let mut peer = reopen(&peer).unwrap();
    assert_eq!(current(&mut peer, &key), v2);
    refused_outsider(sign(&pki, &mut peer, &key, &["alice", "bob"]), "alice");
    assert!(signs(sign(&pki, &mut peer, &key, &["carol", "bob"])));
}

#[test]
fn an_ungoverned_node_takes_no_policy_from_a_synced_record() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, key) = wallet_of_alice_and_bob(&pki);
    let mut peer = pki.node(CLUSTER, "node2");
    let export =
        |from: &mut TeeCore<MemPlatform>, to: &mut TeeCore<MemPlatform>| transfer(from, to, &key);
    export(&mut core, &mut peer).unwrap();
    let v1 = current(&mut peer, &key);
    // Without a log any certified device may send records (no member check), so a record's
    // newer policy has no quorum behind it there: the peer keeps the group it has.
    let v2 = policy_v(&pki, &["bob", "carol"], 2, 2);
    let r = change(&pki, &meta(), &key, v1.hash(), &v2, &["alice", "bob"]);
    assert_eq!(set(&mut core, &r), Ok(v2));
    export(&mut core, &mut peer).unwrap();
    assert_eq!(current(&mut peer, &key), v1);
}
