//! Approval tiers naming another group than the key's (issue 14): above its amount a
//! transaction needs that group's approvals besides the key's quorum. Attacker first: the
//! key's whole group without the tier's, the tier's admin standing in for a key approver,
//! an outsider, and the key's group lifting the tier on its own are each refused by name;
//! with the tier group's approval the PSBT is signed.

use custos_tee_core::TeeCore;
use custos_test_kit::governance::admin_keys;
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::policy::{GroupTier, GroupTiers, KeyPolicy, Rule, RULE_GROUP_TIERS};
use custos_wire::protocol::{KeyInfo, Response, TeeError};

use crate::governance::{create_group_wallet, group_policy};
use crate::transaction::{
    intent_hash_of, limits, me, request, set_policy_by, spend, transactions_only, CLUSTER,
};

/// A PKI with the tiers' admins and an outsider beside alice, bob and carol.
fn pki() -> Pki {
    let mut pki = Pki::with_clusters(&[CLUSTER]);
    for name in ["risk1", "risk2", "exec", "mallory"] {
        pki.enroll_admin(name);
    }
    pki
}

/// Tiers of other groups: `risk` above 50 000 sat (one of its two admins), the executives
/// above 10 BTC.
fn tiers(pki: &Pki) -> Rule {
    let tier = |above, group: &[&str]| GroupTier {
        asset: "bitcoin:regtest".into(),
        above,
        quorum: 1,
        group: admin_keys(pki, group),
    };
    Rule {
        tag: RULE_GROUP_TIERS,
        body: GroupTiers {
            tiers: vec![
                tier(50_000, &["risk1", "risk2"]),
                tier(1_000_000_000, &["exec"]),
            ],
        }
        .encode(),
    }
}

/// node1 holding a wallet of {alice, bob}, 2 of 2, up to 1 BTC per transaction, under
/// [`tiers`]; and its policy.
fn wallet(pki: &Pki) -> (TeeCore<MemPlatform>, KeyInfo, KeyPolicy) {
    let mut core = pki.node(CLUSTER, "node1");
    let me = me(pki, &mut core);
    let mut policy = group_policy(pki, &["alice", "bob"], 2);
    policy.rules = transactions_only(vec![limits(100_000_000, 0, [0; 32]), tiers(pki)]);
    policy.validate().unwrap();
    let w = create_group_wallet(pki, &mut core, &policy, me, &["alice", "bob"]).unwrap();
    (core, w, policy)
}

#[test]
fn a_tier_of_another_group_needs_its_approval_besides_the_keys_quorum() {
    let pki = pki();
    let (mut core, w, _) = wallet(&pki);
    // 71 000 sat leave the wallet: above the risk tier, below the executives'.
    let psbt = spend(&w).psbt();
    let h = intent_hash_of(&w, &psbt);
    let mut run = |who: &[&str]| call(&mut core, &request(&pki, &w, &psbt, h, h, who));
    // The key's whole group is not the risk officer.
    let r = run(&["alice", "bob"]);
    let Err(TeeError::TransactionPolicyRefused { rule, reason }) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(rule, "approval_tier");
    assert!(
        reason.contains("tier above 50000 of bitcoin:regtest"),
        "{reason}"
    );
    assert!(
        reason.contains("1 approvals") && reason.contains("0 given"),
        "{reason}"
    );
    // Nor does the risk officer stand in for one of the key's approvers.
    assert_eq!(
        run(&["alice", "risk1"]),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    // An admin of no group refuses the request, by name.
    let r = run(&["alice", "bob", "mallory"]);
    assert!(
        matches!(&r, Err(TeeError::ApproverNotInGroup { index: 2, admin, .. }) if admin == "mallory"),
        "{r:?}"
    );
    // Nothing was consumed by the refusals: the approvals asked for sign it.
    assert!(matches!(
        run(&["alice", "risk2", "bob"]),
        Ok(Response::SignedPsbt { .. })
    ));
}

#[test]
fn an_executive_may_approve_below_their_tier_without_being_asked() {
    let pki = pki();
    let (mut core, w, _) = wallet(&pki);
    let psbt = spend(&w).psbt();
    let h = intent_hash_of(&w, &psbt);
    let r = call(
        &mut core,
        &request(&pki, &w, &psbt, h, h, &["alice", "bob", "exec", "risk1"]),
    );
    assert!(matches!(r, Ok(Response::SignedPsbt { .. })), "{r:?}");
}

#[test]
fn the_keys_group_cannot_lift_a_tier_of_other_groups_alone() {
    let pki = pki();
    let (mut core, w, policy) = wallet(&pki);
    let mut lifted = policy.clone();
    lifted.version += 1;
    lifted.rules.pop();
    // alice and bob alone: the risk group's approval is missing.
    let r = call(
        &mut core,
        &set_policy_by(&pki, &w, (&policy, &lifted), &["alice", "bob"]),
    );
    assert_eq!(
        r,
        Err(TeeError::QuorumNotMet {
            required: 1,
            approved: 0
        })
    );
    // Nor can they move a risk officer into their own group: a tier group apart from the
    // key's is part of a valid policy.
    let mut joined = policy.clone();
    joined.version += 1;
    joined.group = admin_keys(&pki, &["alice", "bob", "risk1"]);
    let r = call(
        &mut core,
        &set_policy_by(&pki, &w, (&policy, &joined), &["alice", "bob"]),
    );
    assert!(
        matches!(&r, Err(TeeError::PolicyRejected(reason)) if reason.contains("shares admin")),
        "{r:?}"
    );
    // With every tier group's approval the change applies.
    let r = call(
        &mut core,
        &set_policy_by(
            &pki,
            &w,
            (&policy, &lifted),
            &["alice", "bob", "risk1", "exec"],
        ),
    );
    assert!(matches!(r, Ok(Response::KeyPolicy { .. })), "{r:?}");
}
