//! Attestation-verified admission between real TEE cores (issue 13, item 2): a member issues
//! a ticket, the candidate's core answers it on its own platform, and the member applies the
//! `Admit` entry only if the evidence holds; replayed evidence is refused by name.

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_tee_host::{SealingKeySource, SoftwarePlatform};
use custos_test_kit::governance::{member, GovLog};
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::governance::{
    AdmissionChallenge, Evidence, GovChange, GovEntry, MeasurementPolicy, MemberRecord,
    NitroMeasurement, TpmIdentity,
};
use custos_wire::protocol::{Request, Response, TeeError};

pub(crate) const CLUSTER: &str = "dc1";
pub(crate) const GOVERNORS: [&str; 2] = ["alice", "bob"];

pub(crate) use custos_test_kit::governance::chain;

pub(crate) fn apply(
    core: &mut TeeCore<MemPlatform>,
    entries: &[GovEntry],
) -> Result<u64, TeeError> {
    custos_test_kit::governance::apply(core, CLUSTER, entries)
}

/// The ticket `issuer` makes for `candidate`'s key.
pub(crate) fn ticket(
    issuer: &mut TeeCore<MemPlatform>,
    candidate: &MemberRecord,
    tpm: Option<TpmIdentity>,
) -> Result<AdmissionChallenge, TeeError> {
    match call(
        issuer,
        &Request::IssueAdmissionTicket {
            node_key: candidate.key_fingerprint,
            tpm,
        },
    ) {
        Ok(Response::AdmissionChallenge(c)) => Ok(c),
        other => other.map(|r| panic!("unexpected {r:?}")),
    }
}

/// `candidate`'s answer to `challenge`.
pub(crate) fn answer<P: Platform>(
    candidate: &mut TeeCore<P>,
    challenge: AdmissionChallenge,
) -> Result<Evidence, TeeError> {
    match call(candidate, &Request::AdmissionEvidence { challenge }) {
        Ok(Response::AdmissionEvidence(e)) => Ok(e),
        other => other.map(|r| panic!("unexpected {r:?}")),
    }
}

/// A member core `node1` governing dc1 under `policy`, and the log.
pub(crate) fn governed<'a>(
    pki: &'a Pki,
    policy: MeasurementPolicy,
) -> (TeeCore<MemPlatform>, GovLog<'a>) {
    governed_core(pki, pki.node(CLUSTER, "node1"), policy)
}

/// `node1` made the one member of dc1's log (development genesis, then `policy`).
pub(crate) fn governed_core(
    pki: &Pki,
    mut node1: TeeCore<MemPlatform>,
    policy: MeasurementPolicy,
) -> (TeeCore<MemPlatform>, GovLog<'_>) {
    let me = member(pki, &chain(&mut node1));
    let mut log = GovLog::genesis(pki, CLUSTER, &GOVERNORS, 2, vec![me], &GOVERNORS);
    log.push(GovChange::SetMeasurementPolicy { policy }, &GOVERNORS);
    apply(&mut node1, log.entries()).unwrap();
    (node1, log)
}

pub(crate) fn software_core(
    pki: &Pki,
    dir: &std::path::Path,
    node: &str,
) -> TeeCore<SoftwarePlatform> {
    let key = dir.join("seal.key");
    custos_tee_host::sealed::generate_key_file(&key).unwrap();
    let platform =
        SoftwarePlatform::open(&dir.join("store"), &SealingKeySource::KeyFile(key), true).unwrap();
    let mut core = TeeCore::open(platform, "software").unwrap();
    pki.provision(&mut core, CLUSTER, node);
    core
}

fn refusal(r: Result<u64, TeeError>) -> String {
    match r {
        Err(TeeError::GovernanceRejected(m)) => m,
        other => panic!("expected a governance refusal, got {other:?}"),
    }
}

#[test]
fn a_software_node_answers_a_ticket_and_is_admitted_once() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut node1, mut log) = governed(&pki, MeasurementPolicy::development());
    let dir = tempfile::tempdir().unwrap();
    let mut node2 = software_core(&pki, dir.path(), "node2");
    let mut record = member(&pki, &chain(&mut node2));

    let challenge = ticket(&mut node1, &record, None).unwrap();
    assert!(
        challenge.nonce.is_some(),
        "no TPM: the nonce travels in clear"
    );
    // A ticket for node2 is not node3's to answer.
    let dir3 = tempfile::tempdir().unwrap();
    let mut node3 = software_core(&pki, dir3.path(), "node3");
    let e = answer(&mut node3, challenge.clone()).unwrap_err();
    assert_eq!(e.code(), "admission_refused", "{e}");

    record.evidence = answer(&mut node2, challenge).unwrap();

    // Proposed now, as the cloud server does: within the ticket's window.

    record.admitted_at = custos_test_kit::now();
    log.admit(record.clone(), &GOVERNORS);
    assert_eq!(apply(&mut node1, log.entries()), Ok(2));

    // Removed, node2 cannot come back with its old evidence.
    log.remove(record.key_fingerprint, &GOVERNORS);
    apply(&mut node1, log.entries()).unwrap();
    let replay = log.next_entry(GovChange::Admit { member: record }, &GOVERNORS);
    let m = refusal(apply(&mut node1, &[replay]));
    assert!(m.contains("admission_nonce_reused"), "{m}");
}

#[test]
fn a_policy_without_software_refuses_a_software_node() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let policy = MeasurementPolicy {
        nitro: Some(NitroMeasurement {
            pcrs: vec![(0, vec![0; 48])],
        }),
        ..Default::default()
    };
    let (mut node1, log) = governed(&pki, policy);
    let dir = tempfile::tempdir().unwrap();
    let mut node2 = software_core(&pki, dir.path(), "node2");
    let mut record = member(&pki, &chain(&mut node2));
    // A TPM identity for a cluster that admits no TPM is refused at issuance.
    let tpm = TpmIdentity {
        ek_cert: vec![0x30],
        ek_chain: Vec::new(),
        ak_public: vec![0],
    };
    let e = ticket(&mut node1, &record, Some(tpm)).unwrap_err();
    assert_eq!(e.code(), "admission_refused", "{e}");

    let challenge = ticket(&mut node1, &record, None).unwrap();
    record.evidence = answer(&mut node2, challenge).unwrap();
    // Proposed now, as the cloud server does: within the ticket's window.
    record.admitted_at = custos_test_kit::now();
    let admit = log.next_entry(
        GovChange::Admit {
            member: record.clone(),
        },
        &GOVERNORS,
    );
    let m = refusal(apply(&mut node1, &[admit]));
    assert!(m.contains("platform_not_admitted"), "{m}");
    // Without evidence at all, the same.
    record.evidence = Evidence::default();
    let admit = log.next_entry(GovChange::Admit { member: record }, &GOVERNORS);
    let m = refusal(apply(&mut node1, &[admit]));
    assert!(m.contains("platform_not_admitted"), "{m}");
}
