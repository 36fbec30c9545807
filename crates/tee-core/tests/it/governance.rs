//! The member log in the TEE core (issue 12, item 1): written before it answers, never
//! half-applied, and refused whole at open when a sealed entry was tampered with.

use std::sync::atomic::Ordering;

use custos_tee_core::{OpenError, TeeCore};
use custos_test_kit::governance::{member, GovLog};
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::governance::GovEntry;
use custos_wire::protocol::{CertChain, Request, Response, TeeError};

const CLUSTER: &str = "dc1";

pub(crate) fn chain(core: &mut TeeCore<MemPlatform>) -> CertChain {
    custos_test_kit::governance::chain(core)
}

/// Governs `core` alone: governors alice and bob (both needed), `core` its one member.
pub(crate) fn govern_alone<'a>(pki: &'a Pki, core: &mut TeeCore<MemPlatform>) -> GovLog<'a> {
    let me = member(pki, &chain(core));
    let governors = ["alice", "bob"];
    let log = GovLog::genesis(pki, CLUSTER, &governors, 2, vec![me], &governors);
    apply(core, log.entries()).unwrap();
    log
}

pub(crate) fn apply(
    core: &mut TeeCore<MemPlatform>,
    entries: &[GovEntry],
) -> Result<u64, TeeError> {
    custos_test_kit::governance::apply(core, CLUSTER, entries)
}

fn version(core: &mut TeeCore<MemPlatform>) -> Result<u64, TeeError> {
    match call(
        core,
        &Request::Governance {
            cluster: CLUSTER.into(),
            since: 0,
        },
    ) {
        Ok(Response::Governance(v)) => Ok(v.version),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
}

pub(crate) fn reopen(core: &TeeCore<MemPlatform>) -> Result<TeeCore<MemPlatform>, OpenError> {
    TeeCore::open(core.platform().after_restart(), "memory")
}

#[test]
fn governance_commit_failure_rolls_back() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let mut node2 = pki.node(CLUSTER, "node2");
    let me = member(&pki, &chain(&mut core));
    let mut log = GovLog::genesis(
        &pki,
        CLUSTER,
        &["alice", "bob"],
        2,
        vec![me],
        &["alice", "bob"],
    );
    log.admit(member(&pki, &chain(&mut node2)), &["alice", "bob"]);

    // The genesis does not reach storage: nothing is held, in memory or after a restart.
    core.platform()
        .fail_next_commit
        .store(true, Ordering::SeqCst);
    assert!(matches!(
        apply(&mut core, &log.entries()[..1]),
        Err(TeeError::Storage(_))
    ));
    assert_eq!(version(&mut core), Err(TeeError::NotGoverned));
    assert_eq!(
        version(&mut reopen(&core).unwrap()),
        Err(TeeError::NotGoverned)
    );

    // The next attempt lands; a failed extension leaves the genesis in place.
    assert_eq!(apply(&mut core, &log.entries()[..1]), Ok(0));
    core.platform()
        .fail_next_commit
        .store(true, Ordering::SeqCst);
    assert!(matches!(
        apply(&mut core, log.entries()),
        Err(TeeError::Storage(_))
    ));
    assert_eq!(version(&mut core), Ok(0));
    assert_eq!(apply(&mut core, log.entries()), Ok(1));
    let mut reopened = reopen(&core).unwrap();
    assert_eq!(version(&mut reopened), Ok(1));
    // Applying what is held again is harmless; a gap names the versions.
    assert_eq!(apply(&mut reopened, &log.entries()[1..]), Ok(1));
    let later = log.next_entry(
        custos_wire::governance::GovChange::SetGovernors {
            governors: custos_test_kit::governance::admin_keys(&pki, &["alice"]),
            quorum: 1,
        },
        &["alice", "bob"],
    );
    let mut gap = later.clone();
    gap.version += 1;
    assert_eq!(
        apply(&mut reopened, &[gap]),
        Err(TeeError::GovernanceGap { head: 1, first: 3 })
    );
}

#[test]
fn a_tampered_sealed_log_stops_the_core_from_opening() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let me = member(&pki, &chain(&mut core));
    let log = GovLog::genesis(&pki, CLUSTER, &["alice", "bob"], 1, vec![me], &["alice"]);
    apply(&mut core, log.entries()).unwrap();

    // MemPlatform stores plaintext: an attacker's edit of the sealed entry is modelled as a
    // record that opens but no longer verifies (a real platform would already fail AEAD).
    let mut platform = core.platform().after_restart();
    let body = platform
        .committed
        .get_mut("gov/e/0000000000000000")
        .unwrap();
    let last = body.len() - 1;
    body[last] ^= 1;
    platform.staged = platform.committed.clone();
    match TeeCore::open(platform, "memory") {
        Err(OpenError::Essential { record, .. }) => assert!(record.starts_with("gov/"), "{record}"),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a core opened on a tampered member log"),
    }

    // A removed entry is refused the same way, never read as a shorter log.
    let mut platform = core.platform().after_restart();
    platform.committed.remove("gov/e/0000000000000000");
    platform.staged = platform.committed.clone();
    assert!(matches!(
        TeeCore::open(platform, "memory"),
        Err(OpenError::Essential { .. })
    ));
}

pub(crate) fn approvals_by(
    pki: &Pki,
    names: &[&str],
    message: &[u8],
) -> Vec<custos_wire::approval::Approval> {
    names
        .iter()
        .map(|n| {
            let s = pki.admin(n);
            custos_wire::approval::Approval::by_key_file(s, message).unwrap()
        })
        .collect()
}

pub(crate) fn meta() -> custos_wire::protocol::RequestMeta {
    let mut request_id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut request_id);
    custos_wire::protocol::RequestMeta {
        request_id,
        expires_at: custos_test_kit::now() + 600,
    }
}

pub(crate) fn group_policy(
    pki: &Pki,
    names: &[&str],
    quorum: u8,
) -> custos_wire::policy::KeyPolicy {
    custos_wire::policy::KeyPolicy {
        version: 1,
        group: custos_test_kit::governance::admin_keys(pki, names),
        quorum,
        rules: vec![],
    }
}

/// `policy` with a cluster-anchors rule naming `anchors` (before its other rules: rules are
/// sorted by tag).
pub(crate) fn anchored(
    mut policy: custos_wire::policy::KeyPolicy,
    anchors: &[[u8; 32]],
) -> custos_wire::policy::KeyPolicy {
    policy.rules.insert(
        0,
        custos_wire::policy::Rule {
            tag: custos_wire::policy::RULE_CLUSTER_ANCHORS,
            body: anchors.concat(),
        },
    );
    policy
}

pub(crate) fn create_group_wallet(
    pki: &Pki,
    core: &mut TeeCore<MemPlatform>,
    policy: &custos_wire::policy::KeyPolicy,
    executor: [u8; 32],
    signers: &[&str],
) -> Result<custos_wire::protocol::KeyInfo, TeeError> {
    let meta = meta();
    let action = custos_wire::approval::Action::CreateGroupWallet {
        policy,
        executor: &executor,
    };
    let approvals = approvals_by(pki, signers, &action.message(CLUSTER, &meta));
    match call(
        core,
        &Request::CreateGroupWallet {
            meta,
            policy: policy.clone(),
            executor,
            approvals,
        },
    ) {
        Ok(Response::Wallet(info)) => Ok(info),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
}

pub(crate) fn sign(
    pki: &Pki,
    core: &mut TeeCore<MemPlatform>,
    key_id: &[u8],
    signers: &[&str],
) -> Result<Response, TeeError> {
    let meta = meta();
    let digest = [0x5a; 32];
    let action = custos_wire::approval::Action::Sign {
        key_id,
        path: &[1],
        digest: &digest,
    };
    let approvals = approvals_by(pki, signers, &action.message(CLUSTER, &meta));
    call(
        core,
        &Request::Sign {
            meta,
            key_id: key_id.to_vec(),
            path: vec![1],
            digest,
            approvals,
        },
    )
}

pub(crate) fn refused_outsider(r: Result<impl std::fmt::Debug, TeeError>, name: &str) {
    match r {
        Err(TeeError::ApproverNotInGroup { admin, .. }) if admin == name => {}
        other => panic!("expected {name} named as outside the group, got {other:?}"),
    }
}

/// A wallet's approver group is fixed at creation by a quorum of that group, on the node the
/// approvals name; a valid admin outside the group counts for nothing and is named; the group
/// travels with the key to a peer and survives a restart.
#[test]
fn a_group_wallet_counts_only_its_group() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let mut peer = pki.node(CLUSTER, "node2");
    let me = member(&pki, &chain(&mut core)).key_fingerprint;
    let other = member(&pki, &chain(&mut peer)).key_fingerprint;
    let policy = group_policy(&pki, &["alice", "bob"], 2);

    // The creating quorum must come from the new group, and the named node must execute.
    refused_outsider(
        create_group_wallet(&pki, &mut core, &policy, me, &["alice", "carol"]),
        "carol",
    );
    match create_group_wallet(&pki, &mut core, &policy, other, &["alice", "bob"]) {
        Err(TeeError::NotExecutor {
            executor,
            this_node,
        }) => {
            assert_eq!((executor, this_node), (other, me));
        }
        r => panic!("another node's request executed here: {r:?}"),
    }
    let mut late = policy.clone();
    late.version = u32::MAX;
    match create_group_wallet(&pki, &mut core, &late, me, &["alice", "bob"]) {
        Err(TeeError::PolicyRejected(m)) => assert!(m.contains("version 1"), "{m}"),
        r => panic!("a policy at version u32::MAX was accepted: {r:?}"),
    }
    let Ok(Response::Keys(none)) = call(&mut core, &Request::ListKeys) else {
        panic!()
    };
    assert!(none.is_empty(), "a refused creation stored a key");

    let wallet = create_group_wallet(&pki, &mut core, &policy, me, &["alice", "bob"]).unwrap();
    assert_eq!(wallet.quorum, 2);
    refused_outsider(
        sign(&pki, &mut core, &wallet.key_id, &["alice", "carol"]),
        "carol",
    );
    assert!(matches!(
        sign(&pki, &mut core, &wallet.key_id, &["bob", "alice"]),
        Ok(Response::Signature(_))
    ));

    // Synced to a peer: the peer enforces the same group.
    let Ok(Response::KeyTransfer(transfer)) = call(
        &mut core,
        &Request::ExportKeys {
            requester: chain(&mut peer),
            key_ids: vec![wallet.key_id.clone()],
        },
    ) else {
        panic!("export refused")
    };
    call(&mut peer, &Request::ImportKeys { transfer }).unwrap();
    refused_outsider(
        sign(&pki, &mut peer, &wallet.key_id, &["carol", "alice"]),
        "carol",
    );

    // Sealed with the key: the group survives a restart.
    let mut reopened = reopen(&core).unwrap();
    refused_outsider(
        sign(&pki, &mut reopened, &wallet.key_id, &["alice", "carol"]),
        "carol",
    );
    assert!(matches!(
        sign(&pki, &mut reopened, &wallet.key_id, &["alice", "bob"]),
        Ok(Response::Signature(_))
    ));
}

/// Once the cluster is governed, a wallet sealed before groups existed is approved by its
/// quorum of the cluster's governors only: an Admin-CA certificate alone no longer counts.
#[test]
fn a_legacy_wallet_on_a_governed_node_needs_the_governors() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let meta = meta();
    let action = custos_wire::approval::Action::CreateWallet { quorum: 1 };
    let approvals = approvals_by(&pki, &["carol"], &action.message(CLUSTER, &meta));
    let Ok(Response::Wallet(wallet)) = call(
        &mut core,
        &Request::CreateWallet {
            meta,
            quorum: 1,
            approvals,
        },
    ) else {
        panic!("legacy create refused")
    };
    assert!(sign(&pki, &mut core, &wallet.key_id, &["carol"]).is_ok());

    govern_alone(&pki, &mut core);
    refused_outsider(sign(&pki, &mut core, &wallet.key_id, &["carol"]), "carol");
    assert!(matches!(
        sign(&pki, &mut core, &wallet.key_id, &["bob"]),
        Ok(Response::Signature(_))
    ));
}

/// Once governed, a legacy creation (no approver group, no executing node) is refused by
/// name even with the governors' approvals, and nothing is made: the same approvals sent to
/// two nodes would make two wallets. A repeat of a creation made before the genesis still
/// answers the wallet it made.
#[test]
fn a_governed_node_refuses_legacy_creation() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut core = pki.node(CLUSTER, "node1");
    let create = |meta: custos_wire::protocol::RequestMeta, signers: &[&str]| {
        let action = custos_wire::approval::Action::CreateWallet { quorum: 1 };
        Request::CreateWallet {
            approvals: approvals_by(&pki, signers, &action.message(CLUSTER, &meta)),
            meta,
            quorum: 1,
        }
    };
    let early = create(meta(), &["alice"]);
    let Ok(Response::Wallet(made)) = call(&mut core, &early) else {
        panic!("legacy create refused before the genesis")
    };
    let me = member(&pki, &chain(&mut core));
    let log = GovLog::genesis(&pki, CLUSTER, &["alice", "bob"], 1, vec![me], &["alice"]);
    apply(&mut core, log.entries()).unwrap();
    let keys = |core: &mut _| match call(core, &Request::ListKeys) {
        Ok(Response::Keys(k)) => k.len(),
        other => panic!("{other:?}"),
    };
    let before = keys(&mut core);

    let e = call(&mut core, &create(meta(), &["alice"])).unwrap_err();
    assert!(
        matches!(&e, TeeError::LegacyRequest(m) if m.contains("CreateGroupWallet")),
        "{e:?}"
    );
    assert_eq!(e.code(), "legacy_request");
    assert_eq!(keys(&mut core), before, "a legacy creation made a wallet");
    match call(&mut core, &early) {
        Ok(Response::Wallet(again)) => assert_eq!(again.key_id, made.key_id),
        other => panic!("the first outcome is not answered: {other:?}"),
    }
}

/// The same approved entry re-packaged by whoever relays it (approvals reordered, one more
/// than the quorum) is the same entry: a node given one packaging and a node given another
/// both accept the next entry, so nobody on the path can fork the log that way.
#[test]
fn re_packaged_approvals_do_not_fork_the_log() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let mut a = pki.node(CLUSTER, "node1");
    let mut b = pki.node(CLUSTER, "node2");
    let members = vec![member(&pki, &chain(&mut a)), member(&pki, &chain(&mut b))];
    let mut log = GovLog::genesis(
        &pki,
        CLUSTER,
        &["alice", "bob", "carol"],
        2,
        members,
        &["alice", "bob", "carol"],
    );
    let mut other = log.entries().to_vec();
    other[0].approvals.reverse();
    other[0].approvals.truncate(2);
    assert_eq!(apply(&mut a, log.entries()), Ok(0));
    assert_eq!(apply(&mut b, &other), Ok(0));
    // Each node takes the other packaging as what it holds already.
    assert_eq!(apply(&mut a, &other), Ok(0));
    log.revoke(&["carol"], vec![], &["alice", "bob"]);
    assert_eq!(apply(&mut a, &log.entries()[1..]), Ok(1));
    assert_eq!(apply(&mut b, &log.entries()[1..]), Ok(1));
}
