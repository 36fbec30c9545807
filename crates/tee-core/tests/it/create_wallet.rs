//! Wallet creation repeated after its answer was lost: the TEE is killed right after the
//! wallet is durable, and the same approved request, sent again to the restarted TEE,
//! answers that wallet; exactly one wallet exists.

use custos_test_kit::{call_core as call, now, Pki};

use custos_wire::approval::Action;
use custos_wire::protocol::{Origin, Request, RequestMeta, Response, TeeError};
use rand::RngCore;

use crate::crash;

const CLUSTER: &str = "dc1";

fn create(pki: &Pki, meta: &RequestMeta, quorum: u8) -> Request {
    let message = Action::CreateWallet { quorum }.message(CLUSTER, meta);
    Request::CreateWallet {
        meta: meta.clone(),
        quorum,
        approvals: pki.approvals(usize::from(quorum), &message),
    }
}

#[test]
fn create_wallet_crash_after_commit_then_replay() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let node = pki.node(CLUSTER, "node1");
    let mut request_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut request_id);
    let meta = RequestMeta {
        request_id,
        expires_at: now() + 600,
    };
    let req = create(&pki, &meta, 2);
    let mut node = crash::killed_after_commit(node, &req, pki.dir.path());
    let Ok(Response::Keys(made)) = call(&mut node, &Request::ListKeys) else {
        panic!("expected the key list");
    };
    assert_eq!(made.len(), 1, "the killed TEE made its wallet durably");
    // The repeat answers that wallet, again and again; no second one is made.
    for _ in 0..2 {
        assert_eq!(call(&mut node, &req), Ok(Response::Wallet(made[0].clone())));
    }
    assert_eq!(made[0].origin, Origin::Generated);
    // Another quorum under the used id is another request: refused, naming both.
    match call(&mut node, &create(&pki, &meta, 1)) {
        Err(TeeError::RequestReplayed(m)) => {
            assert!(m.contains("quorum 2") && m.contains("quorum 1"), "{m}")
        }
        other => panic!("expected RequestReplayed, got {other:?}"),
    }
    assert_eq!(
        call(&mut node, &Request::ListKeys),
        Ok(Response::Keys(made))
    );
}
