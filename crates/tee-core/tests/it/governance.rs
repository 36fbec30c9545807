//! The member log in the TEE core (issue 12, item 1): written before it answers, never
//! half-applied, and refused whole at open when a sealed entry was tampered with.

use std::sync::atomic::Ordering;

use custos_tee_core::{OpenError, TeeCore};
use custos_test_kit::governance::{member, GovLog};
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::governance::GovEntry;
use custos_wire::protocol::{CertChain, Request, Response, TeeError};

const CLUSTER: &str = "dc1";

fn chain(core: &mut TeeCore<MemPlatform>) -> CertChain {
    match call(core, &Request::DeviceChain) {
        Ok(Response::DeviceChain(c)) => c,
        other => panic!("expected the device chain, got {other:?}"),
    }
}

fn apply(core: &mut TeeCore<MemPlatform>, entries: &[GovEntry]) -> Result<u64, TeeError> {
    match call(
        core,
        &Request::ApplyGovernance {
            cluster: CLUSTER.into(),
            entries: entries.to_vec(),
        },
    ) {
        Ok(Response::Governance(v)) => Ok(v.version),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
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

fn reopen(core: &TeeCore<MemPlatform>) -> Result<TeeCore<MemPlatform>, OpenError> {
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
