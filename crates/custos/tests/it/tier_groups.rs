//! Approval tiers naming another group, through the whole deployment (issue 14): a wallet of
//! {alice, bob} whose transactions above 50 000 sat need the risk officer's approval
//! besides the key's quorum. The rules are approved with the creation and rebuilt by the
//! approver; the request above the tier waits for the risk officer after the key's own
//! quorum, shows what it still needs, and is signed once the risk officer approved. Below
//! the tier the risk officer's approval is refused (it would count for nothing), and a
//! change lifting the tier waits for the risk officer too.

use bitcoin::psbt::Psbt;
use bitcoin::ScriptBuf;
use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use custos_tx::synthetic::Spend;
use custos_tx::InputKind;

use crate::common::{exe, ruled_wallet, CLUSTER};

async fn approve(
    client: &CloudClient,
    view: &RequestView,
    admin: &AdminSigner,
) -> Result<RequestView, ClientError> {
    let message = approval_message(view).expect("the view carries its terms");
    client
        .approve(&view.id, &sign_approval(admin, &message).unwrap())
        .await
}

/// Up to 1 BTC per transaction; above 50 000 sat, one approval of `risk` besides.
fn rules(risk: &AdminSigner) -> PolicyRules {
    PolicyRules {
        transactions_only: true,
        spend_limits: vec![SpendLimitView {
            asset: "bitcoin:regtest".into(),
            per_transaction: "100000000".into(),
            window_secs: 0,
            per_window: "100000000".into(),
            count_per_window: 1,
        }],
        approval_tiers: vec![ApprovalTierView {
            asset: "bitcoin:regtest".into(),
            above: "50000".into(),
            quorum: 1,
            group: vec![hex::encode(risk.key_fingerprint())],
        }],
        ..PolicyRules::default()
    }
}

/// A PSBT paying `amount` sat out of an 80 000 sat P2WPKH input (1 000 sat fee).
fn psbt(xpub: &str, amount: u64) -> String {
    let out = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([9; 32]),
    ));
    Spend::from(xpub)
        .input(InputKind::P2wpkh, &[0, 1], 80_000)
        .pay(out, amount)
        .change(&[1, 0], 79_000 - amount)
        .psbt()
        .to_string()
}

#[test]
fn a_transaction_above_a_tier_waits_for_the_tier_groups_approval() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(
        &exe(),
        dir.path(),
        &DeploymentOptions {
            clusters: vec![(CLUSTER.into(), LinkTransport::Tcp)],
            nodes: 1,
            admins: ["alice", "bob", "risk"].map(String::from).to_vec(),
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let [alice, bob, risk] = ["alice", "bob", "risk"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        let done = ruled_wallet(&client, [&alice, &bob], Some(rules(&risk)), None).await;
        assert_eq!(done.rules, Some(rules(&risk)), "rules shown as approved");
        let Some(RequestResult::Wallet(w)) = &done.result else {
            panic!("no wallet: {done:?}")
        };
        let submit = |amount| {
            let body = SignPsbtBody {
                root_id: w.root_id.clone(),
                network: "regtest".into(),
                psbt: psbt(&w.xpub, amount),
                clusters: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            };
            let client = &client;
            async move { client.sign_psbt(&body).await.unwrap() }
        };

        // 61 000 sat: the key's quorum (alice) is not enough.
        let view = submit(60_000).await;
        let tiers = view.tiers.clone().expect("the tier reached is shown");
        assert_eq!(tiers.len(), 1);
        assert_eq!(tiers[0].tier, rules(&risk).approval_tiers[0]);
        let shown = custos_cloud_api::review::describe(&view);
        assert!(
            shown.contains("another group besides the key's quorum"),
            "{shown}"
        );
        let waiting = approve(&client, &view, &alice).await.unwrap();
        assert_eq!(
            waiting.status,
            RequestStatus::PendingApproval,
            "{waiting:?}"
        );
        assert_eq!(waiting.tiers.as_ref().unwrap()[0].approved, 0);
        // Bob adds nothing the tier asks for: still waiting.
        let waiting = approve(&client, &waiting, &bob).await.unwrap();
        assert_eq!(
            waiting.status,
            RequestStatus::PendingApproval,
            "{waiting:?}"
        );
        let done = approve(&client, &waiting, &risk).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let Some(RequestResult::Psbt(signed)) = &done.result else {
            panic!("no PSBT: {done:?}")
        };
        let signed: Psbt = signed.psbt.parse().unwrap();
        assert_eq!(signed.inputs[0].partial_sigs.len(), 1);

        // 41 000 sat: below the tier. The risk officer's approval counts for nothing and is
        // refused; alice's alone signs it.
        let view = submit(40_000).await;
        assert_eq!(view.tiers, None);
        let refused = approve(&client, &view, &risk).await.unwrap_err();
        assert_eq!(refused.code(), Some("approver_not_in_group"), "{refused}");
        let done = approve(&client, &view, &alice).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

        // Lifting the tier is a change of the rules: the risk officer approves it too.
        let group = [&alice, &bob].map(|a| hex::encode(a.key_fingerprint()));
        let lifted = PolicyRules {
            approval_tiers: vec![],
            ..rules(&risk)
        };
        let change = client
            .set_wallet_policy(
                &w.root_id,
                &KeyPolicyBody {
                    rules: Some(lifted.clone()),
                    group: group.to_vec(),
                    quorum: 1,
                    request_id: None,
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            change.tiers.as_ref().map(|t| t.len()),
            Some(1),
            "{change:?}"
        );
        let waiting = approve(&client, &change, &alice).await.unwrap();
        assert_eq!(
            waiting.status,
            RequestStatus::PendingApproval,
            "{waiting:?}"
        );
        let done = approve(&client, &waiting, &risk).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let policy = client.wallet_policy(&w.root_id).await.unwrap();
        assert_eq!(policy.rules, Some(lifted));
    });
}
