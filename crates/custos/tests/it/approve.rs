//! `custos approve` against a real cloud server on 127.0.0.1 (real TEE cores behind the test
//! kit's fake relay + link + bridge): the admin's key loaded from the admin's own folder, the
//! approval message recomputed and compared, the prompt, and refusals before any signing.

use custos::admin::KeySource;
use custos::approve::{approve, ApproveArgs, ApproveError};
use custos_cloud_api::review::{checked_message, ReviewError};
use custos_cloud_api::RequestStatus;
use custos_test_kit::TestServer;

#[tokio::test]
async fn approve_command_recomputes_confirms_and_signs() {
    let s = TestServer::start().await;
    let view = s
        .client
        .create_wallet(&s.wallet_body("dc1", 1, 3))
        .await
        .unwrap();
    let mut args = ApproveArgs {
        api: s.url(""),
        token: s.token.clone(),
        api_root_ca: None,
        cert: s.pki.admin_folder("bob").chain(),
        key: KeySource::File(s.pki.admin_folder("bob").key()),
        request: None,
        yes: false,
    };
    let mut out = Vec::new();
    approve(&args, &mut &b""[..], &mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains(&view.id));

    args.request = Some(view.id.clone());
    let mut out = Vec::new();
    let e = approve(&args, &mut &b"no\n"[..], &mut out)
        .await
        .unwrap_err();
    assert!(matches!(e, ApproveError::Review(ReviewError::Refused(_))));
    let shown = String::from_utf8_lossy(&out).to_string();
    assert!(
        shown.contains("create a new wallet") && shown.contains("dc1"),
        "{shown}"
    );
    // The approver sees who alone will approve the key, and the one node that makes it.
    let node = view.target_node.clone().unwrap();
    assert!(
        shown.contains(&format!("executed by   {node}"))
            && shown.contains(&hex::encode(s.executor("dc1", &node)))
            && s.group_of(3).iter().all(|fp| shown.contains(fp)),
        "{shown}"
    );
    assert_eq!(s.client.request(&view.id).await.unwrap().approvals.len(), 0);

    let mut out = Vec::new();
    let done = approve(&args, &mut &b"yes\n"[..], &mut out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    assert_eq!(done.approvals[0].admin, "bob");
    // Approving something no longer pending is refused before any signing.
    args.yes = true;
    let e = approve(&args, &mut &b""[..], &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ApproveError::Review(ReviewError::Refused(_))));

    // A server that shows one request but asks to sign other bytes is refused.
    let mut lying = view.clone();
    lying.approval_message = hex::encode(b"something else");
    assert!(checked_message(&lying, &view.id).is_err());
    assert!(checked_message(&view, &"00".repeat(16)).is_err());
    let mut altered = view.clone();
    altered.quorum = 2;
    assert!(checked_message(&altered, &view.id).is_err());
    assert!(checked_message(&view, &view.id).is_ok());
    s.stop().await;
}

#[tokio::test]
async fn approve_refuses_a_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start().await;
    let view = s
        .client
        .create_wallet(&s.wallet_body("dc1", 1, 3))
        .await
        .unwrap();
    let folder = s.pki.admin_folder("carol");
    std::fs::set_permissions(folder.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = ApproveArgs {
        api: s.url(""),
        token: s.token.clone(),
        api_root_ca: None,
        cert: folder.chain(),
        key: KeySource::File(folder.key()),
        request: Some(view.id.clone()),
        yes: true,
    };
    let e = approve(&args, &mut &b""[..], &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApproveError::Key(custos::admin::AdminKeyError::Pki(
                custos_pki::PkiError::KeyFileExposed { mode: 0o644, .. }
            ))
        ),
        "{e}"
    );
    assert!(s
        .client
        .request(&view.id)
        .await
        .unwrap()
        .approvals
        .is_empty());
    s.stop().await;
}

/// `custos wallet create` names the group by the admins' chain files; an admin outside it
/// (alice here) is refused by name, one of it (carol) creates the wallet.
#[tokio::test]
async fn wallet_create_names_the_group_from_the_admins_chains() {
    use custos::wallet::{create, CreateArgs, WalletCliError};
    let s = TestServer::start().await;
    let mut args = CreateArgs {
        api: s.url(""),
        token: s.token.clone(),
        api_root_ca: None,
        cluster: "dc1".into(),
        quorum: 1,
        group: vec![],
        group_certs: vec![],
        executor: None,
        rules: None,
    };
    let e = create(&args, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(e, WalletCliError::GroupSize(0)), "{e}");
    args.group_certs = vec![
        s.pki.admin_folder("carol").chain(),
        s.pki.admin_folder("bob").chain(),
    ];
    let mut out = Vec::new();
    let view = create(&args, &mut out).await.unwrap();
    let mut want: Vec<String> = ["bob", "carol"]
        .iter()
        .map(|a| hex::encode(s.pki.admin(a).key_fingerprint()))
        .collect();
    want.sort();
    assert_eq!(view.group, Some(want));
    let shown = String::from_utf8_lossy(&out).to_string();
    assert!(
        shown.contains(&format!("custos approve --request {}", view.id)),
        "{shown}"
    );
    let message = custos_test_kit::message_of(&view);
    let e = s
        .client
        .approve(&view.id, &s.pki.approve(0, &message))
        .await
        .unwrap_err();
    assert_eq!(custos_test_kit::code(e), "approver_not_in_group");
    let done = s
        .client
        .approve(&view.id, &s.pki.approve(2, &message))
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
}
