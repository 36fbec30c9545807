//! Governance requests through the API against real TEE cores (in memory): a genesis
//! proposed with chains the bridge hands out, approved by the governors it names and applied
//! in the TEE; an admin who is not a governor and a revoked governor are refused by name; an
//! approved entry whose version another entry took can never apply.

use custos_cloud_api::*;
use custos_test_kit::*;
use custos_wire::protocol::TeeError;

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
        measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
            allow_software: true,
            ..Default::default()
        }),
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

/// An import into dc1, quorum 1, of BIP-32 test vector 1's seed, under `group`.
fn seed_import(group: Option<Vec<String>>) -> ImportWalletBody {
    ImportWalletBody {
        cluster: "dc1".into(),
        quorum: 1,
        mnemonic: None,
        passphrase: None,
        seed_hex: Some(SecretText::new("000102030405060708090a0b0c0d0e0f")),
        request_id: None,
        expires_at: None,
        approvals: vec![],
        group,
        rules: None,
    }
}

/// Starts `cluster`'s log with governors alice and bob (both needed) and `members`.
async fn govern(s: &TestServer, cluster: &str, members: &[&str]) {
    let genesis = GenesisBody {
        governors: vec![fp(s, "alice"), fp(s, "bob")],
        quorum: 2,
        members: members.iter().map(|m| m.to_string()).collect(),
        measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
            allow_software: true,
            ..Default::default()
        }),
        request_id: None,
        expires_at: None,
    };
    let view = s.client.propose_genesis(cluster, &genesis).await.unwrap();
    approve(s, &view, 0).await.unwrap();
    let done = approve(s, &view, 1).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
}

/// Has the bridge relay an impostor for dc1's node1 (a key of its own under a genuine
/// Cluster-CA certificate for the name), refusing every request with `refusal`; returns the
/// impostor's key fingerprint.
fn relay_impostor(
    s: &TestServer,
    refusal: impl Fn(&custos_wire::protocol::Request) -> TeeError + Send + Sync + 'static,
) -> [u8; 32] {
    let tee = s.pki.scripted_tee("dc1", "node1");
    let key = custos_test_kit::governance::member(&s.pki, &tee.chain).key_fingerprint;
    *s.gateway.impostor.lock().unwrap() = Some(Impostor {
        cluster: "dc1".into(),
        node: "node1".into(),
        tee,
        script: std::sync::Arc::new(move |_, _, _, request| Err(refusal(&request))),
    });
    key
}

/// Once governed, a wallet is created only by a current member: node2 of dc1, serving and
/// certified by the Cluster CA but left out of the genesis, is never chosen and cannot be
/// named as the executor (an impostor registered by a bridge would be such a node).
#[tokio::test]
async fn only_members_execute_wallet_creations() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 2)]);
    let s = TestServer::start_with(pki, gateway, TestDb::sqlite()).await;
    // Before the genesis both nodes take turns (the log is read once, then cached).
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let view = s
            .client
            .create_wallet(&s.wallet_body("dc1", 1, 1))
            .await
            .unwrap();
        nodes.push(view.target_node.unwrap());
    }
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2"]);
    // The completed genesis is seen at once, though "not governed" was cached.
    govern(&s, "dc1", &["node1"]).await;
    for _ in 0..3 {
        let view = s
            .client
            .create_wallet(&s.wallet_body("dc1", 1, 1))
            .await
            .unwrap();
        assert_eq!(view.target_node.as_deref(), Some("node1"));
    }
    let mut body = s.wallet_body("dc1", 1, 1);
    body.executor = Some(hex::encode(s.executor("dc1", "node2")));
    let e = s.client.create_wallet(&body).await.unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    assert_eq!(code(e), "unknown_executor");
    s.stop().await;
}

/// A governed cluster whose bridge relays an impostor under node1's name (a key made outside
/// any TEE, a genuine Cluster-CA certificate for "node1"): the creation pinned to node1 is
/// refused (`executor_key_mismatch`), and the impostor's key, which the server then holds as
/// node1's device key, is never named as an executor: creations go to node2, and a caller
/// naming the impostor's key is refused because that key is no member.
#[tokio::test]
async fn an_impostor_under_a_members_name_never_executes() {
    let s = TestServer::start().await;
    govern(&s, "dc1", &["node1", "node2"]).await;
    // A creation reads the log while the bridge still routes to the genuine node1 (later
    // reads may reach the impostor, which shows no log: they make node1 unusable only).
    s.client
        .create_wallet(&s.wallet_body("dc1", 1, 1))
        .await
        .unwrap();
    let impostor_key = relay_impostor(&s, |request| {
        TeeError::InvalidRequest(format!("impostor: {request:?}"))
    });

    let (mut body, message) = s.presigned_wallet("dc1", 1, 1, "node1");
    body.approvals = vec![s.pki.approve(0, &message)];
    let e = s.client.create_wallet(&body).await.unwrap_err();
    assert_eq!(code(e), "executor_key_mismatch");

    for _ in 0..4 {
        let view = s
            .client
            .create_wallet(&s.wallet_body("dc1", 1, 1))
            .await
            .unwrap();
        assert_eq!(view.target_node.as_deref(), Some("node2"), "{view:?}");
        assert_eq!(view.executor, Some(hex::encode(s.executor("dc1", "node2"))));
    }
    let mut named = s.wallet_body("dc1", 1, 1);
    named.executor = Some(hex::encode(impostor_key));
    let e = s.client.create_wallet(&named).await.unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    assert_eq!(code(e), "unknown_executor");
    assert!(s.client.wallets().await.unwrap().wallets.is_empty());
    s.stop().await;
}

/// A seed to import is sealed only to a current member's device key: with node2 down and
/// the server holding an impostor's key as node1's (after its answer was refused), the
/// import is refused rather than sealed to a key the impostor holds.
#[tokio::test]
async fn an_import_is_never_sealed_to_an_impostor() {
    let s = TestServer::start().await;
    govern(&s, "dc1", &["node1", "node2"]).await;
    s.client
        .create_wallet(&s.wallet_body("dc1", 1, 1))
        .await
        .unwrap();
    relay_impostor(&s, |request| {
        TeeError::InvalidRequest(format!("impostor: {request:?}"))
    });
    let (mut body, message) = s.presigned_wallet("dc1", 1, 1, "node1");
    body.approvals = vec![s.pki.approve(0, &message)];
    let e = s.client.create_wallet(&body).await.unwrap_err();
    assert_eq!(code(e), "executor_key_mismatch");

    s.gateway.clusters["dc1"].nodes[1]
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let e = s
        .client
        .import_wallet(&seed_import(Some(s.group_of(1))))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    assert_eq!(code(e), "cluster_unavailable");
    let imports = RequestQuery {
        kind: Some(RequestKind::ImportWallet),
        ..Default::default()
    };
    let listed = s.client.requests(&imports).await.unwrap().requests;
    assert!(listed.is_empty(), "{listed:?}");
    s.stop().await;
}

/// A genesis id pinned in the configuration. Attacker first: a bridge relays an impostor for
/// the only node of a governed cluster, which answers that there is no log; a server without
/// the pin believes it, a pinned server does not (the members view and a wallet creation are
/// refused as unverified). A server pinned to another genesis refuses the real log, and only
/// the pinned genesis may be proposed for a cluster still without one.
#[tokio::test]
async fn a_pinned_genesis_is_the_only_log_believed() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 1), ("dc2", 1)]);
    let s = TestServer::start_with(pki, gateway, TestDb::sqlite()).await;
    govern(&s, "dc1", &["node1"]).await;
    let id = s.client.members("dc1").await.unwrap().genesis_id;
    let pin = |cluster: &'static str, id: String| {
        move |c: &mut custos_cloud::CloudConfig| {
            for k in c.clusters.iter_mut().filter(|k| k.name == cluster) {
                k.genesis_id = Some(id.clone());
            }
        }
    };
    relay_impostor(&s, |_| TeeError::NotGoverned);
    // Unpinned, a fresh server takes the impostor's word.
    let s = s.restart_configured(|_| {}).await;
    assert_eq!(
        code(s.client.members("dc1").await.unwrap_err()),
        "not_governed"
    );

    let s = s.restart_configured(pin("dc1", id.clone())).await;
    let e = s.client.members("dc1").await.unwrap_err();
    assert!(e.to_string().contains(&id), "{e}");
    assert_eq!(code(e), "unverified_response");
    let e = s
        .client
        .create_wallet(&s.wallet_body("dc1", 1, 1))
        .await
        .unwrap_err();
    // No node can be shown to be a member: none executes (the reason names the pin).
    assert!(e.to_string().contains(&id), "{e}");
    assert_eq!(code(e), "cluster_unavailable");

    // The genuine node back: the pinned log is served; pinned to another genesis, refused.
    *s.gateway.impostor.lock().unwrap() = None;
    assert_eq!(s.client.members("dc1").await.unwrap().genesis_id, id);
    let s = s.restart_configured(pin("dc1", "07".repeat(32))).await;
    let e = s.client.members("dc1").await.unwrap_err();
    assert!(e.to_string().contains("pinned"), "{e}");
    assert_eq!(code(e), "unverified_response");

    // dc2 has no log yet: a genesis other than the pinned one is refused before approval.
    let s = s.restart_configured(pin("dc2", "07".repeat(32))).await;
    let body = GenesisBody {
        governors: vec![fp(&s, "alice"), fp(&s, "bob")],
        quorum: 2,
        members: vec!["node1".into()],
        measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
            allow_software: true,
            ..Default::default()
        }),
        request_id: None,
        expires_at: None,
    };
    let e = s.client.propose_genesis("dc2", &body).await.unwrap_err();
    assert!(e.to_string().contains("pins"), "{e}");
    assert_eq!(code(e), "invalid_governance");
    s.stop().await;
}

/// Once one of its clusters is governed, a threshold key is created only with an approver
/// group: without one its approvals would name no executing node, and a retried attempt
/// could make the key's share on another node (a second key under the same approvals).
#[tokio::test]
async fn a_governed_cluster_makes_threshold_keys_only_with_a_group() {
    let s = TestServer::start().await;
    let body = |group: Option<Vec<String>>| CreateThresholdKeyBody {
        group,
        clusters: vec!["dc1".into(), "dc2".into()],
        threshold: 2,
        quorum: 2,
        hd: true,
        request_id: None,
        expires_at: None,
        approvals: vec![],
        rules: None,
    };
    // Ungoverned: the legacy creation is still proposed.
    s.client.create_threshold_key(&body(None)).await.unwrap();
    let group = Some(vec![fp(&s, "alice"), fp(&s, "bob")]);
    govern(&s, "dc1", &["node1", "node2"]).await;
    let e = s
        .client
        .create_threshold_key(&body(None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("dc1 is governed"), "{e}");
    assert_eq!(code(e), "invalid_group");
    let view = s
        .client
        .create_threshold_key(&body(group.clone()))
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
    assert_eq!(view.executors.as_ref().map(Vec::len), Some(2), "{view:?}");
    // dc2 has no log: no anchors (dc2's TEEs could not check theirs), as before D5.
    assert_eq!(view.anchors, None, "{view:?}");
    let shown = custos_cloud_api::review::describe(&view);
    assert!(shown.contains("checked by certificate only"), "{shown}");

    // Both governed: the key's policy anchors each share's cluster at its log's genesis.
    govern(&s, "dc2", &["node1"]).await;
    let view = s.client.create_threshold_key(&body(group)).await.unwrap();
    let mut anchors = Vec::new();
    for c in ["dc1", "dc2"] {
        anchors.push(s.client.members(c).await.unwrap().genesis_id);
    }
    assert_ne!(anchors[0], anchors[1]);
    assert_eq!(view.anchors.as_ref(), Some(&anchors), "{view:?}");
    let shown = custos_cloud_api::review::describe(&view);
    assert!(
        shown.contains(&format!("0: dc1 {}", anchors[0]))
            && shown.contains(&format!("1: dc2 {}", anchors[1])),
        "the approver is shown the anchors: {shown}"
    );
    // What the admins sign is the policy with the anchors, as the TEE rebuilds it.
    let parse = |v: &[String]| -> Vec<[u8; 32]> {
        v.iter()
            .map(|h| hex::decode(h).unwrap().try_into().unwrap())
            .collect()
    };
    let policy = custos_wire::policy::KeyPolicy {
        version: 1,
        group: custos_test_kit::governance::admin_keys(&s.pki, &["alice", "bob"]),
        quorum: 2,
        // The anchors, then transactions only: no rules asked, raw digests off.
        rules: vec![
            custos_wire::policy::Rule {
                tag: custos_wire::policy::RULE_CLUSTER_ANCHORS,
                body: parse(&anchors).concat(),
            },
            custos_wire::policy::Rule {
                tag: custos_wire::policy::RULE_TRANSACTIONS_ONLY,
                body: vec![],
            },
        ],
    };
    policy.validate().unwrap();
    assert_eq!(policy.cluster_anchors(), Some(parse(&anchors)));
    let meta = custos_wire::protocol::RequestMeta {
        request_id: hex::decode(&view.id).unwrap().try_into().unwrap(),
        expires_at: view.expires_at,
    };
    let expected = custos_wire::approval::Action::CreateGroupThresholdKey {
        policy: &policy,
        threshold: 2,
        hd: true,
        clusters: view.clusters.as_deref().unwrap(),
        executors: &parse(view.executors.as_deref().unwrap()),
    }
    .message(custos_wire::approval::THRESHOLD_SCOPE, &meta);
    assert_eq!(message_of(&view), expected);
    assert_eq!(view.approval_message, hex::encode(&expected));
    s.stop().await;
}

/// A group key generation approved for a node that was removed from its cluster meanwhile
/// never runs there: the approvals can name no other node, and the other clusters' TEEs
/// check a foreign participant by certificate only, so the server ends the request.
#[tokio::test]
async fn a_key_generation_never_runs_on_a_removed_executor() {
    let s = TestServer::start().await;
    govern(&s, "dc1", &["node1", "node2"]).await;
    let view = s
        .client
        .create_threshold_key(&CreateThresholdKeyBody {
            group: Some(vec![fp(&s, "alice"), fp(&s, "bob")]),
            clusters: vec!["dc1".into(), "dc2".into()],
            threshold: 2,
            quorum: 2,
            hd: true,
            request_id: None,
            expires_at: None,
            approvals: vec![],
            rules: None,
        })
        .await
        .unwrap();
    let targets = view.target_node.clone().unwrap();
    let executor = targets.split(',').next().unwrap().trim().to_string();
    let removal = s
        .client
        .remove_member(
            "dc1",
            &executor,
            &RemoveMemberBody {
                reason: "decommissioned".into(),
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    approve(&s, &removal, 0).await.unwrap();
    let removed = approve(&s, &removal, 1).await.unwrap();
    assert_eq!(removed.status, RequestStatus::Completed, "{removed:?}");

    approve(&s, &view, 0).await.unwrap();
    let done = approve(&s, &view, 1).await.unwrap();
    let error = done.error.as_ref().map(|e| e.code.as_str());
    assert_eq!(error, Some("executor_not_member"), "{done:?}");
    assert!(done.result.is_none(), "{done:?}");
    s.stop().await;
}

/// Plan step G6 for imports: once a cluster is governed, an import names the wallet's
/// approver group (`invalid_group` without it; the legacy import would give the wallet no
/// group of its own, and the TEE refuses it by name). With a group, the approvals are of
/// `import-wallet-v2` by that group: an admin outside it is refused by the server and
/// counts for nothing, and the wallet made counts only its group.
#[tokio::test]
async fn a_governed_cluster_imports_wallets_only_under_a_group() {
    let s = TestServer::start().await;
    govern(&s, "dc1", &["node1", "node2"]).await;
    let body = seed_import;
    let e = s.client.import_wallet(&body(None)).await.unwrap_err();
    assert!(e.to_string().contains("dc1 is governed"), "{e}");
    assert_eq!(code(e), "invalid_group");

    // bob and carol are the wallet's group; alice governs dc1 but is not in it.
    let view = s
        .client
        .import_wallet(&body(Some(vec![fp(&s, "carol"), fp(&s, "bob")])))
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
    let mut group = vec![fp(&s, "bob"), fp(&s, "carol")];
    group.sort();
    assert_eq!(view.group.as_ref(), Some(&group), "{view:?}");
    let message = custos_cloud_api::approval::approval_message(&view).unwrap();
    assert!(
        message.windows(16).any(|w| w == b"import-wallet-v2"),
        "the admins approve the group import"
    );
    let e = approve(&s, &view, 0).await.unwrap_err();
    assert_eq!(e, "approver_not_in_group");
    let done = approve(&s, &view, 2).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert!(
        matches!(done.result, Some(RequestResult::Wallet(_))),
        "{done:?}"
    );
    let imports = s.gateway.executed("ImportGroupWalletSealed");
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert!(s.gateway.executed("ImportWalletSealed").is_empty());

    // Attacker first (issue 14): raw digests are off for new keys, imports included. The
    // import above named no rules: shown and sealed as transactions only, its TEE refuses a
    // digest its approvers could not read, with the wallet's full quorum.
    assert_eq!(
        view.rules,
        Some(custos_cloud_api::PolicyRules::new_wallet_default())
    );
    let Some(RequestResult::Wallet(w)) = &done.result else {
        unreachable!()
    };
    let digest = |root_id: &str| custos_cloud_api::SignRequestBody {
        root_id: root_id.into(),
        path: "m/0/1".into(),
        digest: "44".repeat(32),
        request_id: None,
        expires_at: None,
        approvals: vec![],
    };
    let sign = s.client.sign(&digest(&w.root_id)).await.unwrap();
    let refused = approve(&s, &sign, 2).await.unwrap();
    assert_eq!(
        refused.error.as_ref().map(|e| e.code.as_str()),
        Some("tee_raw_signing_off"),
        "{refused:?}"
    );
    // An import asking for raw digests (`{}`) shows it, and signs them.
    let mut raw = body(Some(vec![fp(&s, "carol"), fp(&s, "bob")]));
    raw.seed_hex = Some(SecretText::new("fffcf9f6f3f0edeae7e4e1dedbd8d5d2"));
    raw.rules = Some(custos_cloud_api::PolicyRules::raw_digests());
    let view = s.client.import_wallet(&raw).await.unwrap();
    assert_eq!(view.rules, None, "no rule at all: {view:?}");
    let shown = custos_cloud_api::review::describe(&view);
    assert!(shown.contains("signs raw digests"), "{shown}");
    let done = approve(&s, &view, 2).await.unwrap();
    let Some(RequestResult::Wallet(w)) = &done.result else {
        panic!("{done:?}")
    };
    let sign = s.client.sign(&digest(&w.root_id)).await.unwrap();
    let signed = approve(&s, &sign, 2).await.unwrap();
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    s.stop().await;
}
