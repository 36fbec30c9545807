//! A PSBT signed with a threshold key through the whole deployment (issue 14): the key's
//! group sets its transaction rules for every cluster (transactions only, a limit, a window
//! counted on the share taking part in every signing), a PSBT naming the key is submitted to
//! `POST /v1/psbt-requests`, its intent computed by a TEE holding a share and approved by
//! its hash, and signed by two clusters, one session per input, each TEE checking it and
//! its share's policy. The signed PSBT is finalized by miniscript and every input run by
//! libbitcoinconsensus. Attacker first, with the full quorum present: an amount over the
//! limit, a second transfer inside the window, a raw digest.

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::ScriptBuf;
use custos::deployment::{approve, Deployment};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use custos_tx::synthetic::Spend;
use custos_tx::InputKind;
use miniscript::psbt::PsbtExt;

use crate::bitcoin_signer::verify_scripts;
use crate::common::THRESHOLD_CLUSTERS as CLUSTERS;

/// Transactions only; at most 100 000 sat per transaction and one transaction an hour,
/// counted on share 0 (dc1) by `holder`, its node.
fn rules(holder: &str) -> PolicyRules {
    PolicyRules {
        transactions_only: true,
        spend_limits: vec![SpendLimitView {
            asset: "bitcoin:regtest".into(),
            per_transaction: "100000".into(),
            window_secs: 3600,
            per_window: "200000".into(),
            count_per_window: 1,
        }],
        velocity_holder: Some(holder.into()),
        velocity_share: Some(0),
        ..PolicyRules::default()
    }
}

/// Spends `sat` (P2WPKH) and 30 000 sat (P2SH-P2WPKH) of the key's children, paying `pay`
/// out and the rest but 1 000 sat of fee back as change; base64.
fn psbt(xpub: &str, sat: u64, pay: u64) -> String {
    let out = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([9; 32]),
    ));
    Spend::from(xpub)
        .input(InputKind::P2wpkh, &[0, 3], sat)
        .input(InputKind::P2shP2wpkh, &[0, 4], 30_000)
        .pay(out, pay)
        .change(&[1, 0], sat + 29_000 - pay)
        .psbt()
        .to_string()
}

fn body(key_id: &str, psbt: String, clusters: [&str; 2]) -> SignPsbtBody {
    SignPsbtBody {
        root_id: key_id.into(),
        network: "regtest".into(),
        psbt,
        clusters: Some(clusters.map(String::from).to_vec()),
        request_id: None,
        expires_at: None,
        approvals: vec![],
    }
}

async fn submit(client: &CloudClient, key_id: &str, psbt: String) -> RequestView {
    let view = client
        .sign_psbt(&body(key_id, psbt, ["dc2", "dc1"]))
        .await
        .unwrap();
    assert_eq!(view.kind, RequestKind::SignPsbt);
    assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
    view
}

/// Refused for good (no retry helps), naming the rule.
fn refused_by(view: &RequestView, rule: &str) {
    assert_eq!(view.status, RequestStatus::Refused, "{view:?}");
    let e = view.error.as_ref().expect("why it was refused");
    assert_eq!(e.code, "tee_policy_refused", "{e:?}");
    assert!(e.message.contains(rule), "{}", e.message);
}

/// The key's group (`bob`) gives it rules, then signs a PSBT with it through REST.
pub(crate) async fn threshold_psbt_through_rest(
    dep: &Deployment,
    client: &CloudClient,
    bob: &AdminSigner,
    key_id: &str,
    xpub: &str,
) {
    let holder = hex::encode(
        custos_pki::cert_key_fingerprint(&dep.node_chain(CLUSTERS[0], 0).unwrap().device).unwrap(),
    );
    let change = client
        .set_threshold_key_policy(
            key_id,
            &KeyPolicyBody {
                rules: Some(rules(&holder)),
                group: vec![hex::encode(bob.key_fingerprint())],
                quorum: 1,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let shown = review::describe(&change);
    assert!(
        shown.contains("share 0 takes part in every signing (it counts the window)"),
        "{shown}"
    );
    let done = approve(client, bob, &change.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let policy = client.threshold_key_policy(key_id).await.unwrap();
    assert_eq!(policy.rules, Some(rules(&holder)));

    // Signed by dc2 and dc1: every input has its signature, and Bitcoin Core's interpreter
    // runs every script of the finalized transaction.
    let view = submit(client, key_id, psbt(xpub, 50_000, 60_000)).await;
    assert_eq!(view.cluster, "*threshold*");
    let shown = review::describe(&view);
    assert!(
        shown.contains("send 0.00060000 BTC to 1 recipient(s), fee 0.00001000 BTC")
            && shown.contains("sign a Bitcoin transaction (PSBT) with a threshold key"),
        "{shown}"
    );
    let done = approve(client, bob, &view.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let Some(RequestResult::Psbt(signed)) = &done.result else {
        panic!("no PSBT: {done:?}")
    };
    let mut signed: Psbt = signed.psbt.parse().unwrap();
    assert!(signed.inputs.iter().all(|i| i.partial_sigs.len() == 1));
    signed
        .finalize_mut(&Secp256k1::verification_only())
        .unwrap_or_else(|e| panic!("not finalizable: {e:?}"));
    let tx = signed.clone().extract_tx().unwrap();
    verify_scripts(&signed, &tx).unwrap();

    // Over the limit, then a second transfer inside the window: each participant's TEE
    // refuses by the rule, whatever the approvals.
    let view = submit(client, key_id, psbt(xpub, 150_000, 120_000)).await;
    refused_by(
        &approve(client, bob, &view.id).await.unwrap(),
        "transaction_limit",
    );
    let view = submit(client, key_id, psbt(xpub, 50_000, 10_000)).await;
    refused_by(
        &approve(client, bob, &view.id).await.unwrap(),
        "window_count",
    );

    // Signers without the velocity share (dc1): the server refuses to ask for them (every
    // TEE would refuse such a set, `velocity_share_absent`).
    let e = client
        .sign_psbt(&body(key_id, psbt(xpub, 50_000, 1_000), ["dc2", "dc3"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_clusters"), "{e}");

    // A raw digest: the key signs transactions only.
    let digest = client
        .threshold_sign(&ThresholdSignBody {
            key_id: key_id.into(),
            path: "m/0/3".into(),
            digest: "33".repeat(32),
            message: None,
            clusters: Some(vec!["dc1".into(), "dc2".into()]),
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let refused = approve(client, bob, &digest.id).await.unwrap();
    let e = refused.error.expect("why it was refused");
    assert!(
        format!("{}: {}", e.code, e.message).contains("raw_signing_off"),
        "{e:?}"
    );
}
