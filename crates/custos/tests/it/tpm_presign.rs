//! A presignature's single use against a store copy put back, with real processes: three
//! clusters (one node each) and a dealt 2-of-3 key without chain code, dc1's TEE on a
//! software TPM of its own (`swtpm`, skipped where it is not installed unless
//! `CUSTOS_TEST_REQUIRE_SWTPM` is set) or on the software platform.
//!
//! dc1's store is copied once presignatures are made; one is then used through the cloud
//! server (dc1 and dc2 each produce their partial signature, the TEE having committed the
//! presignature's deletion first), and the copy is put back. On the TPM platform the TEE
//! refuses to open (`store_rolled_back`) and the used presignature never yields a second
//! partial. On the software platform, the development stand-in, the copy opens and the used
//! presignature produces a second partial for another message: the documented limit of that
//! platform (a second partial of one presignature reveals the share to whoever combines
//! them).

use crate::common::three_clusters_on;
use crate::threshold::{import_plain_key, sign_message, tee_presignatures};
use custos::deployment::Deployment;
use custos::ops::{approvals, new_meta};
use custos::tee_plan::{TeeChoice, TeePlan};
use custos::tee_process::{SpawnError, TeePlatform};
use custos_cloud_api::{MakePresignaturesBody, RequestResult, RequestStatus};
use custos_test_kit::swtpm::{available, copy_dir, replace_dir};
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::{PresignSignParams, Request, Response, TeeError};
use sha2::{Digest, Sha256};

/// Where the scenario leaves things: the deployment (dc1's TEE stopped, the copy in place of
/// its store), the key, the presignature used, the restart's outcome, and the latest store
/// (copied before the older one was put back).
struct PutBack {
    dep: Deployment,
    /// The deployment's folder: bind it (`_tmp`, not `..`) to keep it while the test runs.
    _tmp: tempfile::TempDir,
    key: Vec<u8>,
    used: [u8; 32],
    restart: Result<(), SpawnError>,
    latest: std::path::PathBuf,
}

/// Presignatures made by dc1+dc2, dc1's TEE stopped and its store copied, restarted; the
/// oldest presignature used through the cloud server; dc1's TEE stopped again, the copy put
/// back and a start.
fn use_a_presignature_and_put_back_the_store(dc1: TeeChoice) -> PutBack {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters_on(tmp.path(), 1, 1, &TeePlan::default().with("dc1-node1", dc1));
    let (alice, client, rt) = crate::common::alice_client(&dep);
    let key = import_plain_key(&mut dep, &rt, &client, &alice);
    let key_id = hex::encode(&key);
    let pool = rt
        .block_on(client.make_presignatures(
            &key_id,
            &MakePresignaturesBody {
                count: 2,
                clusters: Some(vec!["dc1".into(), "dc2".into()]),
            },
        ))
        .unwrap();
    assert_eq!(pool.ready.len(), 2, "{pool:?}");
    let first = pool.ready[0].id.clone();

    let store = dep.cluster("dc1").unwrap().nodes[0].tee.store.clone();
    let copy = tmp.path().join("dc1-store-copy");
    {
        let dc1 = dep.cluster_mut("dc1").unwrap();
        dc1.kill_tee(0);
        copy_dir(&store, &copy);
        dc1.restart_node(0).unwrap();
    }
    assert!(tee_presignatures(&dep, "dc1", 0, &key).contains(&first));

    // Used: both TEEs commit its deletion, then answer their partials, which combine.
    let view = rt.block_on(sign_message(
        &client,
        &alice,
        &key_id,
        b"custos: pay 1 BTC to bc1qfirst",
    ));
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::Signature(sig)) = &view.result else {
        panic!("no signature: {view:?}");
    };
    assert_eq!(sig.presignature.as_deref(), Some(first.as_str()));
    assert!(!tee_presignatures(&dep, "dc1", 0, &key).contains(&first));

    let latest = tmp.path().join("dc1-store-latest");
    let dc1 = dep.cluster_mut("dc1").unwrap();
    dc1.kill_tee(0);
    copy_dir(&store, &latest);
    replace_dir(&store, &copy);
    let restart = dc1.nodes[0].tee.restart();
    PutBack {
        dep,
        _tmp: tmp,
        key,
        used: <[u8; 32]>::try_from(hex::decode(&first).unwrap()).unwrap(),
        restart,
        latest,
    }
}

/// dc1's TEE asked directly (as a compromised cloud server could) for its partial signature
/// of `message` with presignature `id`, under alice's genuine approval of that message.
fn partial_at_dc1(
    dep: &Deployment,
    key: &[u8],
    id: [u8; 32],
    message: &[u8],
) -> Result<[u8; 32], TeeError> {
    let alice = dep.admin("alice").unwrap();
    let meta = new_meta(600);
    let digest: [u8; 32] = Sha256::digest(message).into();
    let action = Action::ThresholdSign {
        key_id: key,
        path: &[],
        digest: &digest,
    };
    let request = Request::ThresholdPresignSign {
        meta: meta.clone(),
        attempt: 0,
        params: PresignSignParams {
            key_id: key.to_vec(),
            presignature: id,
            message: message.to_vec(),
        },
        approvals: approvals(&[&alice], THRESHOLD_SCOPE, &meta, &action).unwrap(),
    };
    let mut tee = dep.cluster("dc1").unwrap().nodes[0].tee.client().unwrap();
    match tee.call(&request) {
        Ok(Response::ThresholdPartial { presignature, .. }) => Ok(presignature),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(custos_wire::client::ClientError::Tee(e)) => Err(e),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn tpm_tee_refuses_a_store_copy_from_before_a_presignature_was_used() {
    if !available() {
        return;
    }
    let PutBack {
        mut dep,
        key,
        used,
        restart,
        latest,
        _tmp,
    } = use_a_presignature_and_put_back_the_store(TeeChoice::Swtpm);
    assert!(matches!(
        dep.cluster("dc1").unwrap().nodes[0].tee.platform(),
        TeePlatform::Tpm(_)
    ));
    let err = restart.expect_err("a store copy put back must not open on the TPM platform");
    let SpawnError::Exited { stderr, .. } = &err else {
        panic!("{err}")
    };
    assert!(stderr.starts_with("error: store_rolled_back: "), "{stderr}");

    // The latest store put back opens; the used presignature is gone for good: no second
    // partial, whatever the message.
    let dc1 = dep.cluster_mut("dc1").unwrap();
    replace_dir(&dc1.nodes[0].tee.store, &latest);
    dc1.restart_node(0).unwrap();
    assert!(!tee_presignatures(&dep, "dc1", 0, &key).contains(&hex::encode(used)));
    let refused = partial_at_dc1(&dep, &key, used, b"custos: pay 1 BTC to bc1qsecond")
        .expect_err("a used presignature produced a second partial");
    assert_eq!(refused.code(), "unknown_presignature", "{refused}");
}

/// The software platform's documented limit: its counter lives in the store, so the copy
/// opens, the used presignature is back, and it produces a second partial for another
/// message. (Nothing but the TPM platform, or a TEE with a hardware counter, prevents it.)
#[test]
fn software_tee_opens_a_store_copy_and_uses_a_presignature_twice() {
    let PutBack {
        dep,
        key,
        used,
        restart,
        _tmp,
        ..
    } = use_a_presignature_and_put_back_the_store(TeeChoice::Software);
    restart.expect("the software platform cannot tell a copy put back");
    assert!(tee_presignatures(&dep, "dc1", 0, &key).contains(&hex::encode(used)));
    let again = partial_at_dc1(&dep, &key, used, b"custos: pay 1 BTC to bc1qsecond")
        .expect("the development stand-in issues a second partial");
    assert_eq!(again, used);
}
