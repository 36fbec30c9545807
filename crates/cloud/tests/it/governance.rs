//! Governance requests through the API against real TEE cores (in memory): a genesis
//! proposed with chains the bridge hands out, approved by the governors it names and applied
//! in the TEE; an admin who is not a governor and a revoked governor are refused by name; an
//! approved entry whose version another entry took can never apply.

use custos_cloud_api::*;
use custos_test_kit::*;

/// Approves `view` as test admin `i` with the message recomputed from the view.
async fn approve(s: &TestServer, view: &RequestView, i: usize) -> Result<RequestView, String> {
    s.client
        .approve(&view.id, &s.pki.approve(i, &message_of(view)))
        .await
        .map_err(code)
}

fn fp(s: &TestServer, name: &str) -> String {
    hex::encode(s.pki.admin(name).key_fingerprint())
}

#[tokio::test]
async fn genesis_revocation_and_a_moved_head_through_the_api() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 1)]);
    let s = TestServer::start_with(pki, gateway, TestDb::sqlite()).await;
    let [alice, bob, carol] = [0, 1, 2];

    // Before a genesis nothing else can be proposed, and a member must be a node the
    // bridge knows.
    let e = s.client.members("dc1").await.unwrap_err();
    assert_eq!(code(e), "not_governed");
    let mut genesis = GenesisBody {
        governors: vec![fp(&s, "bob"), fp(&s, "alice"), fp(&s, "bob")],
        quorum: 2,
        members: vec!["node9".into()],
        request_id: None,
        expires_at: None,
    };
    let e = s.client.propose_genesis("dc1", &genesis).await.unwrap_err();
    assert_eq!(code(e), "invalid_chain");
    genesis.members = vec!["node1".into()];
    genesis.quorum = 3;
    let e = s.client.propose_genesis("dc1", &genesis).await.unwrap_err();
    assert_eq!(
        code(e),
        "invalid_governance",
        "a quorum above the governors"
    );
    genesis.quorum = 2;

    let view = s.client.propose_genesis("dc1", &genesis).await.unwrap();
    let terms = view.governance.clone().unwrap();
    match &terms.change {
        GovChangeView::Genesis {
            governors, members, ..
        } => {
            assert_eq!(governors.len(), 2, "repeats dropped");
            assert_eq!(members[0].node, "node1");
        }
        other => panic!("{other:?}"),
    }
    // Carol holds a genuine admin certificate but is no governor of this genesis.
    assert_eq!(
        approve(&s, &view, carol).await.unwrap_err(),
        "approver_not_a_governor"
    );
    approve(&s, &view, alice).await.unwrap();
    let done = approve(&s, &view, bob).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let members = s.client.members("dc1").await.unwrap();
    assert_eq!(members.version, 0);
    assert_eq!(members.members[0].node, "node1");
    assert_eq!(
        code(s.client.propose_genesis("dc1", &genesis).await.unwrap_err()),
        "already_governed"
    );

    // Two proposals for version 1: the first applied wins, the other can never apply.
    let governors = GovernorsBody {
        governors: vec![fp(&s, "alice"), fp(&s, "bob"), fp(&s, "carol")],
        quorum: 2,
        request_id: None,
        expires_at: None,
    };
    let widen = s.client.set_governors("dc1", &governors).await.unwrap();
    let narrow = s
        .client
        .set_governors(
            "dc1",
            &GovernorsBody {
                governors: vec![fp(&s, "alice"), fp(&s, "bob")],
                quorum: 1,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(widen.governance.as_ref().unwrap().version, 1);
    assert_eq!(narrow.governance.as_ref().unwrap().version, 1);
    approve(&s, &widen, alice).await.unwrap();
    let done = approve(&s, &widen, bob).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    approve(&s, &narrow, alice).await.unwrap();
    let late = approve(&s, &narrow, bob).await.unwrap();
    assert_eq!(late.status, RequestStatus::Refused, "{late:?}");
    assert_eq!(late.error.unwrap().code, "governance_head_moved");

    // Carol, a governor now, is revoked; from then on her approval is refused by name.
    let revoke_carol = s
        .client
        .revoke(
            "dc1",
            &RevokeBody {
                admins: vec![fp(&s, "carol")],
                devices: vec![],
                reason: "key lost".into(),
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    approve(&s, &revoke_carol, carol).await.unwrap();
    let done = approve(&s, &revoke_carol, alice).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let next = s
        .client
        .set_governors(
            "dc1",
            &GovernorsBody {
                governors: vec![fp(&s, "alice"), fp(&s, "bob")],
                quorum: 2,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        approve(&s, &next, carol).await.unwrap_err(),
        "admin_revoked"
    );
    let log = s.client.governance_log("dc1", None).await.unwrap();
    assert_eq!(log.version, 2);
    assert_eq!(log.entries.len(), 3);
    assert_eq!(
        s.client.members("dc1").await.unwrap().revoked_admins[0].fingerprint,
        fp(&s, "carol")
    );
    // Removing a node that is no member is refused before anything is recorded.
    let e = s
        .client
        .remove_member(
            "dc1",
            "node7",
            &RemoveMemberBody {
                reason: "gone".into(),
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), "unknown_member");
    s.stop().await;
}
