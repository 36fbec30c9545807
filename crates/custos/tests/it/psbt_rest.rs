//! Bitcoin PSBTs signed through the whole deployment (issue 14): a wallet created through
//! REST with transaction rules (approved with them), a PSBT submitted with `custos wallet
//! sign-psbt`, its intent computed by a TEE and approved by its hash, signed only by the
//! velocity holder's TEE. Attacker first, each with the full quorum present: a transaction
//! over the limit, a second one over the window's amount, a raw digest.

use bitcoin::psbt::Psbt;
use bitcoin::ScriptBuf;
use custos::deployment::Deployment;
use custos::wallet::psbt::{run, SignPsbtArgs};
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use custos_tx::synthetic::Spend;
use custos_tx::InputKind;

use crate::common::{dc1_alice_and_bob, ruled_wallet};

const DC: &str = "dc1";

/// Signs the message recomputed from the view (which checks the intent against its hash)
/// and posts it.
async fn approve(client: &CloudClient, view: &RequestView, admin: &AdminSigner) -> RequestView {
    let message = approval_message(view).expect("the view carries its terms");
    assert_eq!(hex::encode(&message), view.approval_message);
    client
        .approve(&view.id, &sign_approval(admin, &message).unwrap())
        .await
        .unwrap()
}

/// Transactions only; at most 100 000 sat per transaction and 150 000 sat in five
/// transactions an hour, counted by `holder`'s TEE.
fn rules(holder: &str) -> PolicyRules {
    PolicyRules {
        transactions_only: true,
        spend_limits: vec![SpendLimitView {
            asset: "bitcoin:regtest".into(),
            per_transaction: "100000".into(),
            window_secs: 3600,
            per_window: "150000".into(),
            count_per_window: 5,
        }],
        velocity_holder: Some(holder.into()),
        velocity_share: None,
        allowlist: None,
        approval_tiers: vec![],
    }
}

/// A PSBT spending 80 000 sat (P2WPKH) and 40 000 sat (P2TR key path) of the wallet, paying
/// `pay` sat out and the rest but 1 000 sat of fee back as change.
fn psbt(xpub: &str, pay: u64) -> Vec<u8> {
    let out = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([7; 32]),
    ));
    Spend::from(xpub)
        .input(InputKind::P2wpkh, &[0, 1], 80_000)
        .input(InputKind::P2trKeyPath, &[0, 2], 40_000)
        .pay(out, pay)
        .change(&[1, 0], 120_000 - pay - 1_000)
        .psbt()
        .serialize()
}

/// Submits `psbt` with `custos wallet sign-psbt` and returns the recorded request and what
/// the command printed.
async fn submit(
    d: &Deployment,
    dir: &std::path::Path,
    root: &str,
    psbt: &[u8],
) -> (RequestView, String) {
    let file = dir.join("tx.psbt");
    std::fs::write(&file, psbt).unwrap();
    let args = SignPsbtArgs {
        api: d.api_url.clone(),
        token: d.api_token.clone(),
        api_root_ca: None,
        root: root.into(),
        clusters: None,
        network: "regtest".into(),
        psbt: file,
        wait: None,
        out: None,
    };
    let mut out = Vec::new();
    let view = run(&args, &mut out).await.unwrap();
    (view, String::from_utf8(out).unwrap())
}

#[test]
fn a_psbt_signed_through_rest_under_the_wallets_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dc1_alice_and_bob(dir.path(), 2);
    let [alice, bob] = ["alice", "bob"].map(|n| d.admin(n).unwrap());
    let holder_node = &d.cluster(DC).unwrap().nodes[0].name;
    let holder = hex::encode(
        custos_pki::cert_key_fingerprint(&d.node_chain(DC, 0).unwrap().device).unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        // The rules are part of the creation's approval: shown, and rebuilt by the approver.
        let wallet = client
            .create_wallet(&CreateWalletBody {
                rules: Some(rules(&holder)),
                cluster: DC.into(),
                quorum: 1,
                group: [&alice, &bob]
                    .map(|a| hex::encode(a.key_fingerprint()))
                    .to_vec(),
                executor: Some(holder.clone()),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        assert_eq!(wallet.rules, Some(rules(&holder)));
        let shown = custos_cloud_api::review::describe(&wallet);
        assert!(shown.contains("at most 100000 per transaction"), "{shown}");
        let wallet = approve(&client, &wallet, &alice).await;
        assert_eq!(wallet.status, RequestStatus::Completed, "{wallet:?}");
        let Some(RequestResult::Wallet(w)) = &wallet.result else {
            panic!("no wallet: {wallet:?}")
        };
        let policy = client.wallet_policy(&w.root_id).await.unwrap();
        assert_eq!(policy.rules, Some(rules(&holder)));

        // Signed: the intent shown is the TEE's, the request pinned to the holder.
        let (view, printed) = submit(&d, dir.path(), &w.root_id, &psbt(&w.xpub, 60_000)).await;
        assert_eq!(view.kind, RequestKind::SignPsbt);
        assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
        assert_eq!(view.target_node.as_deref(), Some(holder_node.as_str()));
        assert!(
            printed.contains("send 0.00060000 BTC to 1 recipient(s), fee 0.00001000 BTC"),
            "{printed}"
        );
        assert!(printed.contains("change 0.00059000 BTC"), "{printed}");
        let done = approve(&client, &view, &bob).await;
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let Some(RequestResult::Psbt(signed)) = &done.result else {
            panic!("no PSBT: {done:?}")
        };
        assert_eq!(
            Some(&signed.intent_hash),
            view.transaction.as_ref().map(|t| &t.intent_hash)
        );
        let signed: Psbt = signed.psbt.parse().unwrap();
        assert_eq!(signed.inputs[0].partial_sigs.len(), 1);
        assert!(signed.inputs[1].tap_key_sig.is_some());

        // Over the per-transaction limit: refused by name, approvals notwithstanding.
        let (view, _) = submit(&d, dir.path(), &w.root_id, &psbt(&w.xpub, 110_000)).await;
        let refused = approve(&client, &view, &alice).await;
        assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
        let e = refused.error.unwrap();
        assert_eq!(e.code, "tee_policy_refused");
        assert!(e.message.contains("transaction_limit"), "{}", e.message);

        // Within the per-transaction limit, over the window's amount (61 000 sat signed).
        let (view, _) = submit(&d, dir.path(), &w.root_id, &psbt(&w.xpub, 95_000)).await;
        let refused = approve(&client, &view, &alice).await;
        let e = refused.error.unwrap();
        assert_eq!(e.code, "tee_policy_refused");
        assert!(e.message.contains("window_amount"), "{}", e.message);

        // A raw digest: the wallet signs transactions only.
        let digest = client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: "m/0/1".into(),
                digest: "22".repeat(32),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let refused = approve(&client, &digest, &alice).await;
        assert_eq!(
            refused.error.map(|e| e.code),
            Some("tee_raw_signing_off".to_string())
        );
    });
}

/// A regtest P2WSH script of `byte`, and its address.
fn outside(byte: u8) -> (ScriptBuf, String) {
    let script = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([byte; 32]),
    ));
    let address = custos_tx::btc::address_of(script.as_bytes(), "regtest").unwrap();
    (script, address)
}

/// A PSBT paying 50 000 sat to `to` from an 80 000 sat P2WPKH input, 29 000 sat back.
fn pay(xpub: &str, to: ScriptBuf) -> Vec<u8> {
    Spend::from(xpub)
        .input(InputKind::P2wpkh, &[0, 1], 80_000)
        .pay(to, 50_000)
        .change(&[1, 0], 29_000)
        .psbt()
        .serialize()
}

/// An allowlist changed through REST (`PUT /v1/wallets/{root}/policy` with rules): an entry
/// payable before the time lock in force ends is refused by every TEE, one payable after it
/// is accepted, and paying it before then is refused with the full quorum present.
#[test]
fn an_allowlist_change_waits_for_the_time_lock_in_force_through_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dc1_alice_and_bob(dir.path(), 1);
    let [alice, bob] = ["alice", "bob"].map(|n| d.admin(n).unwrap());
    let group: Vec<String> = [&alice, &bob]
        .map(|a| hex::encode(a.key_fingerprint()))
        .to_vec();
    let (to_a, a) = outside(7);
    let (to_b, b) = outside(8);
    let entry = |destination: &str, not_before: u64| AllowEntryView {
        asset: "bitcoin:regtest".into(),
        destination: destination.into(),
        not_before,
    };
    let rules = |entries: Vec<AllowEntryView>| PolicyRules {
        transactions_only: true,
        spend_limits: vec![SpendLimitView {
            asset: "bitcoin:regtest".into(),
            per_transaction: "1000000".into(),
            window_secs: 0,
            per_window: "1000000".into(),
            count_per_window: 1,
        }],
        allowlist: Some(AllowlistView {
            time_lock_secs: 3600,
            entries,
        }),
        ..PolicyRules::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        // A wallet created without rules signs transactions only: no raw digest.
        let plain = client
            .create_wallet(&CreateWalletBody {
                rules: None,
                cluster: DC.into(),
                quorum: 1,
                group: group.clone(),
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let shown = custos_cloud_api::review::describe(&plain);
        assert!(shown.contains("transactions only"), "{shown}");
        let plain = approve(&client, &plain, &alice).await;
        let digest = client
            .sign(&SignRequestBody {
                root_id: plain.root_id.clone().unwrap(),
                path: "m/0".into(),
                digest: "33".repeat(32),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let refused = approve(&client, &digest, &alice).await;
        assert_eq!(
            refused.error.map(|e| e.code),
            Some("tee_raw_signing_off".to_string())
        );

        let done = ruled_wallet(
            &client,
            [&alice, &bob],
            Some(rules(vec![entry(&a, 0)])),
            None,
        )
        .await;
        let Some(RequestResult::Wallet(w)) = &done.result else {
            panic!("no wallet: {done:?}")
        };
        let sign = |psbt: Vec<u8>| {
            let client = &client;
            let alice = &alice;
            let d = &d;
            let dir = dir.path();
            let root = w.root_id.clone();
            async move {
                let (view, _) = submit(d, dir, &root, &psbt).await;
                approve(client, &view, alice).await
            }
        };
        assert_eq!(
            sign(pay(&w.xpub, to_a.clone())).await.status,
            RequestStatus::Completed
        );
        let refused = sign(pay(&w.xpub, to_b.clone())).await;
        assert!(
            refused.error.unwrap().message.contains("not_allowlisted"),
            "b is not on the list"
        );

        // b added to be payable at once: every TEE refuses the change (the lock in force).
        let now = custos_pki::clock::now_unix();
        let change = |entries| KeyPolicyBody {
            rules: Some(rules(entries)),
            group: group.clone(),
            quorum: 1,
            request_id: None,
            expires_at: None,
        };
        let early = client
            .set_wallet_policy(&w.root_id, &change(vec![entry(&a, 0), entry(&b, now)]))
            .await
            .unwrap();
        let shown = custos_cloud_api::review::describe(&early);
        assert!(shown.contains("rules after"), "{shown}");
        let early = approve(&client, &early, &alice).await;
        assert_eq!(early.status, RequestStatus::Refused, "{early:?}");
        assert_eq!(early.error.unwrap().code, "tee_policy_rejected");

        // b payable after the lock: accepted, but paying b now is refused by name.
        let later = client
            .set_wallet_policy(
                &w.root_id,
                &change(vec![entry(&a, 0), entry(&b, now + 3600 + 600)]),
            )
            .await
            .unwrap();
        let later = approve(&client, &later, &alice).await;
        assert_eq!(later.status, RequestStatus::Completed, "{later:?}");
        let policy = client.wallet_policy(&w.root_id).await.unwrap();
        assert_eq!(policy.rules.unwrap().allowlist.unwrap().entries.len(), 2);
        let locked = sign(pay(&w.xpub, to_b)).await;
        let e = locked.error.unwrap();
        assert_eq!(e.code, "tee_policy_refused");
        assert!(e.message.contains("allowlist_time_lock"), "{}", e.message);
    });
}
