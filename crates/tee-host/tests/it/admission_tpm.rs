//! Attestation-verified admission of a node on a TPM (issue 13, acceptance "Attestation"),
//! real cores on a real `swtpm` with an endorsement certificate: the member's ticket seals
//! its nonce to the node's TPM; a quote over other PCR values than the policy's, a quote
//! binding another device key, and an old nonce are each refused by name; the node's own
//! fresh quote admits it, and from then on a member's TEE exports keys to it.

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_tee_host::tpm::{PcrSelection, TpmOptions, TpmPlatform, DEFAULT_NV_INDEX};
use custos_tee_host::SealingKeySource;
use custos_test_kit::governance::member;
use custos_test_kit::swtpm::Swtpm;
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::approval::Action;
use custos_wire::governance::{
    admission_binding, genesis_id, AdmissionEvidence, Evidence, GovChange, MeasurementPolicy,
    TpmIdentity, TpmMeasurement, EVIDENCE_ADMISSION_V1,
};
use custos_wire::protocol::{Request, RequestMeta, Response, TeeError};
use sha2::{Digest, Sha256};

use crate::admission::{answer, apply, chain, governed, ticket, CLUSTER, GOVERNORS};

fn open_platform(dir: &std::path::Path, tpm: &Swtpm, create: bool) -> TpmPlatform {
    let key = dir.join("seal.key");
    if create {
        custos_tee_host::sealed::generate_key_file(&key).unwrap();
    }
    let options = TpmOptions {
        tcti: tpm.tcti(),
        pcrs: PcrSelection::parse("sha256:23").unwrap(),
        nv_index: DEFAULT_NV_INDEX,
    };
    TpmPlatform::open(
        &dir.join("store"),
        &SealingKeySource::KeyFile(key),
        &options,
        create,
    )
    .unwrap()
}

fn identity(core: &mut TeeCore<TpmPlatform>, tpm: &Swtpm) -> TpmIdentity {
    let mut i = match call(core, &Request::AttestationIdentity) {
        Ok(Response::AttestationIdentity(Some(i))) => i,
        other => panic!("no TPM identity: {other:?}"),
    };
    // swtpm carries no chain: the operator adds the issuer and root (`--ek-chain`), here as
    // one entry of two certificates back to back, as a TCG chain NV index may hold them.
    i.ek_chain
        .push([tpm.ek_ca_issuer_der(), tpm.ek_ca_root_der()].concat());
    i
}

fn policy(tpm: &Swtpm, pcr23: [u8; 32]) -> MeasurementPolicy {
    MeasurementPolicy {
        tpm: Some(TpmMeasurement {
            ek_roots_sha256: vec![Sha256::digest(tpm.ek_ca_root_der()).into()],
            pcrs: vec![(23, pcr23)],
        }),
        ..Default::default()
    }
}

/// A wallet made on `core` before its cluster is governed.
fn wallet(pki: &Pki, core: &mut TeeCore<MemPlatform>) -> Vec<u8> {
    let meta = RequestMeta {
        request_id: [0x77; 16],
        expires_at: custos_test_kit::now() + 600,
    };
    let message = Action::CreateWallet { quorum: 1 }.message(CLUSTER, &meta);
    let request = Request::CreateWallet {
        meta,
        quorum: 1,
        approvals: pki.approvals(1, &message),
    };
    match call(core, &request) {
        Ok(Response::Wallet(w)) => w.key_id,
        other => panic!("no wallet: {other:?}"),
    }
}

fn export(
    from: &mut TeeCore<MemPlatform>,
    to: &mut TeeCore<TpmPlatform>,
    key_id: &[u8],
) -> Result<Response, TeeError> {
    let requester = chain(to);
    call(
        from,
        &Request::ExportKeys {
            requester,
            key_ids: vec![key_id.to_vec()],
        },
    )
}

fn refused_with(r: Result<u64, TeeError>, what: &str) {
    match r {
        Err(TeeError::GovernanceRejected(m)) if m.contains(what) => {}
        other => panic!("expected a refusal naming {what}, got {other:?}"),
    }
}

#[test]
fn a_tpm_node_is_admitted_only_with_its_own_fresh_quote_over_the_policys_pcrs() {
    let Some(tpm) = Swtpm::start_manufactured() else {
        return;
    };
    let pki = Pki::with_clusters(&[CLUSTER]);
    let dir2 = tempfile::tempdir().unwrap();
    let mut node2 = TeeCore::open(open_platform(dir2.path(), &tpm, true), "tpm").unwrap();
    pki.provision(&mut node2, CLUSTER, "node2");
    let mut record2 = member(&pki, &chain(&mut node2));
    let id2 = identity(&mut node2, &tpm);

    // A cluster expecting another PCR 23 than this TPM's (zero after its start).
    let (mut other, other_log) = governed(&pki, policy(&tpm, [1; 32]));
    let challenge = ticket(&mut other, &record2, Some(id2.clone())).unwrap();
    assert!(challenge.nonce.is_none(), "the nonce is sealed to the TPM");
    record2.evidence = answer(&mut node2, challenge).unwrap();
    // Proposed now, as the cloud server does: within the ticket's window.
    record2.admitted_at = custos_test_kit::now();
    let admit = other_log.next_entry(
        GovChange::Admit {
            member: record2.clone(),
        },
        &GOVERNORS,
    );
    refused_with(apply(&mut other, &[admit]), "tpm_pcr_mismatch");

    // The right cluster, with a wallet made before its genesis.
    let mut node1 = pki.node(CLUSTER, "node1");
    let key_id = wallet(&pki, &mut node1);
    let (mut node1, mut log) = crate::admission::governed_core(&pki, node1, policy(&tpm, [0; 32]));
    let genesis = genesis_id(CLUSTER, &log.entries()[0].change);

    // node3's host has node2's TPM at hand: a ticket for node3 sealed to node2's TPM,
    // activated and quoted there, binds node2's key, not node3's.
    let dir3 = tempfile::tempdir().unwrap();
    let mut node3 = crate::admission::software_core(&pki, dir3.path(), "node3");
    let mut record3 = member(&pki, &chain(&mut node3));
    let for3 = ticket(&mut node1, &record3, Some(id2.clone())).unwrap();
    let key2 = custos_pki::cert_public_key(&record2.chain.device).unwrap();
    drop(node2);
    let mut raw2 = open_platform(dir2.path(), &tpm, false);
    let credential = for3.ticket.ticket.tpm.clone().unwrap();
    let nonce = raw2
        .activate_credential(&custos_attest::TpmCredential {
            id_object: credential.id_object,
            encrypted_secret: credential.encrypted_secret,
        })
        .unwrap();
    let quote = raw2
        .attest(&admission_binding(&genesis, &nonce, &key2))
        .unwrap();
    drop(raw2);
    record3.evidence = Evidence {
        format: EVIDENCE_ADMISSION_V1,
        document: AdmissionEvidence {
            ticket: for3.ticket,
            nonce: *nonce,
            platform: quote.platform,
            document: quote.document,
        }
        .encode(),
    };
    record3.admitted_at = custos_test_kit::now();
    let admit3 = log.next_entry(GovChange::Admit { member: record3 }, &GOVERNORS);
    refused_with(apply(&mut node1, &[admit3]), "tpm_qualifying_mismatch");

    // node2's own answer to a fresh ticket admits it; only then does node1 export to it.
    let mut node2 = TeeCore::open(open_platform(dir2.path(), &tpm, false), "tpm").unwrap();
    assert!(matches!(
        export(&mut node1, &mut node2, &key_id),
        Err(TeeError::NotAMember { .. })
    ));
    let challenge = ticket(&mut node1, &record2, Some(id2)).unwrap();
    record2.evidence = answer(&mut node2, challenge).unwrap();
    // Proposed now, as the cloud server does: within the ticket's window.
    record2.admitted_at = custos_test_kit::now();
    log.admit(record2.clone(), &GOVERNORS);
    apply(&mut node1, log.entries()).unwrap();
    let Ok(Response::KeyTransfer(transfer)) = export(&mut node1, &mut node2, &key_id) else {
        panic!("a member gets no keys")
    };
    call(&mut node2, &Request::ImportKeys { transfer }).unwrap();
    let Ok(Response::Keys(keys)) = call(&mut node2, &Request::ListKeys) else {
        panic!("no key list")
    };
    assert!(
        keys.iter().any(|k| k.key_id == key_id),
        "the wallet did not sync"
    );

    // Removed, node2 cannot come back with the same quote: its nonce was used.
    log.remove(record2.key_fingerprint, &GOVERNORS);
    apply(&mut node1, log.entries()).unwrap();
    let again = log.next_entry(GovChange::Admit { member: record2 }, &GOVERNORS);
    refused_with(apply(&mut node1, &[again]), "admission_nonce_reused");
}
