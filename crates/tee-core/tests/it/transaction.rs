//! Transactions the TEE understands (issue 14), attacker first, each with a full quorum
//! present: approvals of intent A presented with transaction B, a transaction whose intent
//! is claimed to be the approved one but is not, an input the wallet does not own, and a
//! raw digest on a key whose raw signing is off are refused by name; the approved PSBT
//! (P2WPKH, P2SH-P2WPKH and P2TR key-path inputs) is signed, each signature verifying
//! against the hash the `bitcoin` crate computes on its own.

use bitcoin::hashes::Hash;
use bitcoin::key::TapTweak;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{Network, ScriptBuf, XOnlyPublicKey};
use custos_tee_core::TeeCore;
use custos_test_kit::governance::member;
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_tx::btc::{plan_psbt, XpubKeys};
use custos_tx::synthetic::{script_of, Spend};
use custos_tx::InputKind;
use custos_wire::approval::Action;
use custos_wire::policy::{
    AllowEntry, Allowlist, ApprovalTier, ApprovalTiers, KeyPolicy, Rule, SpendLimit, SpendLimits,
    RULE_ALLOWLIST, RULE_APPROVAL_TIERS, RULE_SPEND_LIMITS, RULE_TRANSACTIONS_ONLY,
};
use custos_wire::protocol::{BitcoinNetwork, KeyInfo, Request, Response, TeeError};

use crate::governance::{approvals_by, chain, create_group_wallet, group_policy, meta, sign};

pub(crate) const CLUSTER: &str = "dc1";

const ASSET: &str = "bitcoin:regtest";

/// Spend limits for [`ASSET`]: `per_tx` per transaction; with `window` a rolling window of
/// one transaction and `per_tx` held by `holder`.
pub(crate) fn limits(per_tx: u128, window: u64, holder: [u8; 32]) -> Rule {
    let limits = SpendLimits {
        limits: vec![SpendLimit {
            asset: ASSET.into(),
            per_transaction: per_tx,
            window_secs: window,
            per_window: per_tx,
            count_per_window: 1,
        }],
        velocity_holder: (window > 0).then_some(holder),
    };
    Rule {
        tag: RULE_SPEND_LIMITS,
        body: limits.encode(),
    }
}

/// This node's member id (its device key fingerprint).
pub(crate) fn me(pki: &Pki, core: &mut TeeCore<MemPlatform>) -> [u8; 32] {
    member(pki, &chain(core)).key_fingerprint
}

/// node1 holding a wallet of {alice, bob}, 2 of 2, under `rules` (sorted by tag).
pub(crate) fn wallet_under(
    pki: &Pki,
    rules: impl FnOnce([u8; 32]) -> Vec<Rule>,
) -> (TeeCore<MemPlatform>, KeyInfo) {
    let mut core = pki.node(CLUSTER, "node1");
    let me = me(pki, &mut core);
    let mut policy = group_policy(pki, &["alice", "bob"], 2);
    policy.rules = transactions_only(rules(me));
    let w = create_group_wallet(pki, &mut core, &policy, me, &["alice", "bob"]).unwrap();
    (core, w)
}

/// `rules` (sorted by tag, transaction rules) after the transactions-only rule they need,
/// when there are any.
pub(crate) fn transactions_only(mut rules: Vec<Rule>) -> Vec<Rule> {
    if !rules.is_empty() {
        let only = Rule {
            tag: RULE_TRANSACTIONS_ONLY,
            body: vec![],
        };
        rules.insert(0, only);
    }
    rules
}

/// node1 holding a wallet of {alice, bob}, 2 of 2: sending up to 1 BTC per transaction and
/// signing transactions only, or (`raw`) with no transaction rule, signing digests.
fn wallet(pki: &Pki, raw: bool) -> (TeeCore<MemPlatform>, KeyInfo) {
    wallet_under(pki, |_| match raw {
        true => vec![],
        false => vec![limits(100_000_000, 0, [0; 32])],
    })
}

/// A spend of three wallet outputs: 70 000 sat to an outside key, 29 000 back as change.
pub(crate) fn spend(w: &KeyInfo) -> Spend<'static> {
    let outside = Spend::from(&w.xpub).key(&[99]);
    Spend::from(&w.xpub)
        .input(InputKind::P2wpkh, &[0, 0], 50_000)
        .input(InputKind::P2shP2wpkh, &[0, 1], 30_000)
        .input(InputKind::P2trKeyPath, &[0, 2], 20_000)
        .pay(script_of(InputKind::P2wpkh, &outside), 70_000)
        .change(&[1, 0], 29_000)
}

/// The intent hash of `psbt`, as a watch-only approver computes it from the xpub.
pub(crate) fn intent_hash_of(w: &KeyInfo, psbt: &Psbt) -> [u8; 32] {
    let keys = XpubKeys(w.xpub.parse().unwrap());
    plan_psbt(&psbt.serialize(), Network::Regtest, &keys)
        .unwrap()
        .intent()
        .hash()
}

/// A SignPsbt for `psbt`, claiming intent `claimed`, approved by `signers` for `approved`.
pub(crate) fn request(
    pki: &Pki,
    w: &KeyInfo,
    psbt: &Psbt,
    claimed: [u8; 32],
    approved: [u8; 32],
    signers: &[&str],
) -> Request {
    request_at(pki, w, psbt, (claimed, approved), signers, 0)
}

/// [`request`] made `ahead` seconds later (when a test moved the TEE's clock on).
fn request_at(
    pki: &Pki,
    w: &KeyInfo,
    psbt: &Psbt,
    (claimed, approved): ([u8; 32], [u8; 32]),
    signers: &[&str],
    ahead: u64,
) -> Request {
    let mut meta = meta();
    meta.expires_at += ahead;
    let action = Action::SignTransaction {
        key_id: &w.key_id,
        intent_hash: &approved,
    };
    Request::SignPsbt {
        approvals: approvals_by(pki, signers, &action.message(CLUSTER, &meta)),
        meta,
        key_id: w.key_id.clone(),
        network: BitcoinNetwork::Regtest,
        psbt: psbt.serialize(),
        intent_hash: claimed,
    }
}

#[test]
fn an_approved_psbt_is_signed_and_every_signature_verifies_independently() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet(&pki, false);
    let psbt = spend(&w).psbt();
    let h = intent_hash_of(&w, &psbt);
    let Ok(Response::SignedPsbt {
        psbt: signed,
        intent_hash,
    }) = call(
        &mut core,
        &request(&pki, &w, &psbt, h, h, &["alice", "bob"]),
    )
    else {
        panic!("the approved PSBT was not signed")
    };
    assert_eq!(intent_hash, h);
    let signed = Psbt::deserialize(&signed).unwrap();
    let secp = Secp256k1::verification_only();
    // The hashes as the `bitcoin` crate's own PSBT code computes them.
    for i in 0..2 {
        let (msg, _) = signed
            .sighash_ecdsa(i, &mut SighashCache::new(&signed.unsigned_tx))
            .unwrap();
        let (key, sig) = signed.inputs[i].partial_sigs.iter().next().unwrap();
        secp.verify_ecdsa(&msg, &sig.signature, &key.inner).unwrap();
    }
    let spent: Vec<_> = signed
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let hash = SighashCache::new(&signed.unsigned_tx)
        .taproot_key_spend_signature_hash(2, &Prevouts::All(&spent), TapSighashType::Default)
        .unwrap();
    let internal = signed.inputs[2].tap_internal_key.unwrap();
    let (output_key, _) = internal.tap_tweak(&secp, None);
    let sig = signed.inputs[2].tap_key_sig.unwrap();
    secp.verify_schnorr(
        &sig.signature,
        &Message::from_digest(hash.to_byte_array()),
        &output_key.to_x_only_public_key(),
    )
    .unwrap();
    // The key signed is the wallet's own output key.
    let script = &spent[2].script_pubkey;
    assert_eq!(*script, ScriptBuf::new_p2tr_tweaked(output_key));
    let _ = XOnlyPublicKey::from(Spend::from(&w.xpub).key(&[0, 2]));
}

#[test]
fn approvals_of_one_intent_never_sign_another_transaction() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet(&pki, false);
    let approved = spend(&w).psbt();
    let a = intent_hash_of(&w, &approved);
    // The same spend with the change output swapped for an outsider's script.
    let mut swapped = approved.clone();
    let thief = Spend::from(&w.xpub).key(&[98]);
    swapped.unsigned_tx.output[1].script_pubkey = script_of(InputKind::P2wpkh, &thief);
    let b = intent_hash_of(&w, &swapped);
    assert_ne!(a, b);

    // Presented as what it is: its intent is not the one approved.
    match call(
        &mut core,
        &request(&pki, &w, &swapped, a, a, &["alice", "bob"]),
    ) {
        Err(e @ TeeError::IntentMismatch { claimed, computed }) => {
            assert_eq!((claimed, computed), (a, b));
            assert_eq!(e.code(), "intent_mismatch");
        }
        other => panic!("expected intent_mismatch, got {other:?}"),
    }
    // Claiming its own intent with approvals of the other: the approvals do not verify.
    match call(
        &mut core,
        &request(&pki, &w, &swapped, b, a, &["alice", "bob"]),
    ) {
        Err(TeeError::ApprovalRejected { .. }) => {}
        other => panic!("expected approval_rejected, got {other:?}"),
    }
    // A full quorum cannot make the TEE sign an input of another wallet.
    let mut foreign = approved.clone();
    foreign.inputs[0].bip32_derivation.clear();
    let f = [0u8; 32];
    match call(
        &mut core,
        &request(&pki, &w, &foreign, f, f, &["alice", "bob"]),
    ) {
        Err(TeeError::TransactionRejected { code, reason }) => {
            assert_eq!(code, "input_not_ours", "{reason}");
        }
        other => panic!("expected transaction_rejected, got {other:?}"),
    }
}

#[test]
fn a_raw_digest_is_refused_for_a_key_that_signs_transactions_only() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet(&pki, false);
    match sign(&pki, &mut core, &w.key_id, &["alice", "bob"]) {
        Err(e @ TeeError::RawSigningOff { .. }) => assert_eq!(e.code(), "raw_signing_off"),
        other => panic!("expected raw_signing_off, got {other:?}"),
    }
    let (mut core, w) = wallet(&pki, true);
    assert!(matches!(
        sign(&pki, &mut core, &w.key_id, &["alice", "bob"]),
        Ok(Response::Signature(_))
    ));
}

pub(crate) fn policy_refusal(r: Result<Response, TeeError>) -> String {
    match r {
        Err(TeeError::TransactionPolicyRefused { rule, .. }) => rule,
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

/// An approved SignPsbt of `psbt` by alice and bob.
fn approved(pki: &Pki, w: &KeyInfo, psbt: &Psbt) -> Request {
    approved_at(pki, w, psbt, 0)
}

/// [`approved`] `ahead` seconds later.
fn approved_at(pki: &Pki, w: &KeyInfo, psbt: &Psbt, ahead: u64) -> Request {
    let h = intent_hash_of(w, psbt);
    request_at(pki, w, psbt, (h, h), &["alice", "bob"], ahead)
}

#[test]
fn a_full_quorum_cannot_pass_the_keys_limit_nor_sign_an_asset_without_one() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    // 71 000 sat leave the wallet (70 000 paid, 1 000 fee): above a limit of 50 000.
    let (mut core, w) = wallet_under(&pki, |_| vec![limits(50_000, 0, [0; 32])]);
    let psbt = spend(&w).psbt();
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "transaction_limit"
    );
    // Default deny: a key whose policy names no limit sends nothing.
    let (mut core, w) = wallet_under(&pki, |_| vec![]);
    let psbt = spend(&w).psbt();
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "no_spend_limit"
    );
}

/// A change of `w`'s policy from `current` to `new`, approved by alice and bob.
fn set_policy(pki: &Pki, w: &KeyInfo, current: &KeyPolicy, new: &KeyPolicy) -> Request {
    set_policy_by(pki, w, (current, new), &["alice", "bob"])
}

/// A SetKeyPolicy from `current` to `new` approved by `signers`.
pub(crate) fn set_policy_by(
    pki: &Pki,
    w: &KeyInfo,
    (current, new): (&KeyPolicy, &KeyPolicy),
    signers: &[&str],
) -> Request {
    let meta = meta();
    let prev = current.hash();
    let action = Action::SetKeyPolicy {
        key_id: &w.key_id,
        prev: &prev,
        policy: new,
    };
    Request::SetKeyPolicy {
        approvals: approvals_by(pki, signers, &action.message(CLUSTER, &meta)),
        meta,
        key_id: w.key_id.clone(),
        prev,
        policy: new.clone(),
    }
}

#[test]
fn only_allowlisted_destinations_are_paid_and_an_added_one_waits_for_its_time_lock() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let list = |entries: Vec<AllowEntry>| Rule {
        tag: RULE_ALLOWLIST,
        body: Allowlist {
            time_lock_secs: 3600,
            entries,
        }
        .encode(),
    };
    let (mut core, w) = wallet_under(&pki, |_| {
        vec![limits(100_000_000, 0, [0; 32]), list(vec![])]
    });
    let psbt = spend(&w).psbt();
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "not_allowlisted"
    );

    // The recipient added by a change: not before the time lock in force has run.
    let outside = script_of(InputKind::P2wpkh, &Spend::from(&w.xpub).key(&[99]));
    let address = custos_tx::btc::address_of(outside.as_bytes(), "regtest").unwrap();
    let current = match call(
        &mut core,
        &Request::GetKeyPolicy {
            key_id: w.key_id.clone(),
        },
    ) {
        Ok(Response::KeyPolicy { policy, .. }) => policy,
        other => panic!("{other:?}"),
    };
    let now = custos_test_kit::now();
    let with = |not_before| KeyPolicy {
        version: 2,
        rules: [
            &current.rules[..2],
            &[list(vec![AllowEntry {
                asset: ASSET.into(),
                destination: address.clone(),
                not_before,
            }])],
        ]
        .concat(),
        ..current.clone()
    };
    match call(&mut core, &set_policy(&pki, &w, &current, &with(now + 60))) {
        Err(TeeError::PolicyRejected(m)) => assert!(m.contains("time lock"), "{m}"),
        other => panic!("an early entry was accepted: {other:?}"),
    }
    let later = with(now + 3700);
    assert!(matches!(
        call(&mut core, &set_policy(&pki, &w, &current, &later)),
        Ok(Response::KeyPolicy { .. })
    ));
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "allowlist_time_lock"
    );
    core.platform()
        .clock_ahead
        .store(3800, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        call(&mut core, &approved_at(&pki, &w, &psbt, 3800)),
        Ok(Response::SignedPsbt { .. })
    ));
    // Nor lower the time lock (the next change could then add an entry at once).
    let lowered = KeyPolicy {
        version: 3,
        rules: [
            &current.rules[..2],
            &[Rule {
                tag: RULE_ALLOWLIST,
                body: Allowlist {
                    time_lock_secs: 0,
                    entries: later.allowlist().unwrap().entries,
                }
                .encode(),
            }],
        ]
        .concat(),
        ..current.clone()
    };
    match call(&mut core, &set_policy(&pki, &w, &later, &lowered)) {
        Err(TeeError::PolicyRejected(m)) => assert!(m.contains("cannot be lowered"), "{m}"),
        other => panic!("the time lock was lowered: {other:?}"),
    }
    // Nor can a change take the allowlist away.
    let open = KeyPolicy {
        version: 3,
        rules: current.rules[..2].to_vec(),
        ..current.clone()
    };
    assert!(matches!(
        call(&mut core, &set_policy(&pki, &w, &later, &open)),
        Err(TeeError::PolicyRejected(_))
    ));
}

#[test]
fn a_second_transfer_inside_the_window_waits_for_the_window_to_pass() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet_under(&pki, |me| vec![limits(100_000, 3600, me)]);
    let psbt = spend(&w).psbt();
    let first = approved(&pki, &w, &psbt);
    assert!(matches!(
        call(&mut core, &first),
        Ok(Response::SignedPsbt { .. })
    ));
    // Its answer lost, the same request signs again without counting twice.
    assert!(matches!(
        call(&mut core, &first),
        Ok(Response::SignedPsbt { .. })
    ));
    // Another transaction approved under the used id signs nothing, policy or not.
    let Request::SignPsbt { meta, .. } = &first else {
        unreachable!()
    };
    let mut other = spend(&w).psbt();
    other.unsigned_tx.output[0].value = bitcoin::Amount::from_sat(60_000);
    let h = intent_hash_of(&w, &other);
    let action = Action::SignTransaction {
        key_id: &w.key_id,
        intent_hash: &h,
    };
    let reused = Request::SignPsbt {
        approvals: approvals_by(&pki, &["alice", "bob"], &action.message(CLUSTER, meta)),
        meta: meta.clone(),
        key_id: w.key_id.clone(),
        network: BitcoinNetwork::Regtest,
        psbt: other.serialize(),
        intent_hash: h,
    };
    match call(&mut core, &reused) {
        Err(e @ TeeError::RequestReplayed(_)) => assert_eq!(e.code(), "request_replayed"),
        other => panic!("another transaction signed under a used id: {other:?}"),
    }
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "window_count"
    );
    // The window's record is sealed: a restart does not forget it.
    let mut core = crate::governance::reopen(&core).unwrap();
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "window_count"
    );
    core.platform()
        .clock_ahead
        .store(3601, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        call(&mut core, &approved_at(&pki, &w, &psbt, 3601)),
        Ok(Response::SignedPsbt { .. })
    ));
}

#[test]
fn a_key_with_a_window_signs_only_on_its_velocity_holder() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet_under(&pki, |_| vec![limits(100_000, 3600, [9; 32])]);
    let psbt = spend(&w).psbt();
    assert_eq!(
        policy_refusal(call(&mut core, &approved(&pki, &w, &psbt))),
        "not_velocity_holder"
    );
}

/// The TEE's preview of a PSBT's intent is the intent a watch-only approver computes, its
/// JSON hashes to the hash it names, and previewing changes nothing (the same approvals
/// still sign afterwards).
#[test]
fn the_tees_preview_is_the_intent_it_signs() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet(&pki, false);
    let psbt = spend(&w).psbt();
    let Ok(Response::TransactionIntent {
        intent_hash,
        intent_json,
    }) = call(
        &mut core,
        &Request::PreviewPsbt {
            key_id: w.key_id.clone(),
            network: BitcoinNetwork::Regtest,
            psbt: psbt.serialize(),
        },
    )
    else {
        panic!("no preview")
    };
    assert_eq!(intent_hash, intent_hash_of(&w, &psbt));
    let intent: custos_tx::Intent = serde_json::from_slice(&intent_json).unwrap();
    assert_eq!(intent.hash(), intent_hash);
    let lines = intent.describe().join("\n");
    assert!(
        lines.contains("send 0.00070000 BTC to 1 recipient(s)"),
        "{lines}"
    );
    assert!(lines.contains("bcrt1q"), "{lines}");
    assert!(matches!(
        call(&mut core, &approved(&pki, &w, &psbt)),
        Ok(Response::SignedPsbt { .. })
    ));
}

/// node1 holding a wallet of {alice, bob, carol}, 2 of 3, sending up to 1 BTC per
/// transaction, all three approvals above 50 000 sat; and its policy.
fn tiered_wallet(pki: &Pki) -> (TeeCore<MemPlatform>, KeyInfo, KeyPolicy) {
    let mut core = pki.node(CLUSTER, "node1");
    let me = me(pki, &mut core);
    let mut policy = group_policy(pki, &["alice", "bob", "carol"], 2);
    let tiers = Rule {
        tag: RULE_APPROVAL_TIERS,
        body: ApprovalTiers {
            tiers: vec![ApprovalTier {
                asset: ASSET.into(),
                above: 50_000,
                quorum: 3,
            }],
        }
        .encode(),
    };
    policy.rules = transactions_only(vec![limits(100_000_000, 0, [0; 32]), tiers]);
    let w = create_group_wallet(pki, &mut core, &policy, me, &["alice", "bob"]).unwrap();
    (core, w, policy)
}

/// Above its tier's amount, a transaction needs more of the key's group than its quorum: two
/// of alice, bob and carol approve small amounts, all three the 71 000 sat sent here.
#[test]
fn an_amount_above_a_tier_needs_the_tiers_quorum() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w, _) = tiered_wallet(&pki);
    let psbt = spend(&w).psbt();
    let h = intent_hash_of(&w, &psbt);
    assert_eq!(
        policy_refusal(call(
            &mut core,
            &request(&pki, &w, &psbt, h, h, &["alice", "bob"])
        )),
        "approval_tier"
    );
    assert!(matches!(
        call(
            &mut core,
            &request(&pki, &w, &psbt, h, h, &["alice", "bob", "carol"])
        ),
        Ok(Response::SignedPsbt { .. })
    ));
}

/// The policy's own quorum cannot lift a tier (nor touch any rule) of a policy with tiers:
/// the change needs the highest tier's quorum, else two admins could remove the tier and
/// then sign what it held back.
#[test]
fn a_rule_change_of_a_policy_with_tiers_needs_the_highest_tiers_quorum() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w, policy) = tiered_wallet(&pki);
    let mut lifted = policy.clone();
    lifted.version += 1;
    lifted.rules.pop();
    let r = call(&mut core, &set_policy(&pki, &w, &policy, &lifted));
    assert!(
        matches!(r, Err(TeeError::QuorumNotMet { required: 3, .. })),
        "{r:?}"
    );
    // With the tier's three approvals it applies.
    let mut three = set_policy(&pki, &w, &policy, &lifted);
    if let Request::SetKeyPolicy {
        approvals,
        meta,
        prev,
        ..
    } = &mut three
    {
        let action = Action::SetKeyPolicy {
            key_id: &w.key_id,
            prev,
            policy: &lifted,
        };
        *approvals = approvals_by(
            &pki,
            &["alice", "bob", "carol"],
            &action.message(CLUSTER, meta),
        );
    }
    assert!(matches!(
        call(&mut core, &three),
        Ok(Response::KeyPolicy { .. })
    ));
}
