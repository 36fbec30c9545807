//! Each rule refusing with a full quorum's approvals beside the point (the engine sees no
//! approvals: they never override it), and the window record across time.

use custos_wire::policy::{
    AllowEntry, Allowlist, KeyPolicy, Rule, SpendLimit, SpendLimits, RULE_ALLOWLIST,
    RULE_SPEND_LIMITS, RULE_TRANSACTIONS_ONLY, RULE_VELOCITY_SHARE,
};

use super::*;

const ASSET: &str = "bitcoin:regtest";
const NODE: [u8; 32] = [7; 32];
const ME: &Member = &Member {
    node: NODE,
    threshold: None,
};
const T0: u64 = 1_800_000_000;

fn policy(window: u64, allow: Option<Allowlist>) -> KeyPolicy {
    let limits = SpendLimits {
        limits: vec![SpendLimit {
            asset: ASSET.into(),
            per_transaction: 100_000,
            window_secs: window,
            per_window: 150_000,
            count_per_window: 2,
        }],
        velocity_holder: (window > 0).then_some(NODE),
    };
    let mut rules = vec![
        Rule {
            tag: RULE_TRANSACTIONS_ONLY,
            body: vec![],
        },
        Rule {
            tag: RULE_SPEND_LIMITS,
            body: limits.encode(),
        },
    ];
    if let Some(a) = allow {
        rules.push(Rule {
            tag: RULE_ALLOWLIST,
            body: a.encode(),
        });
    }
    let p = KeyPolicy {
        version: 1,
        group: vec![[1; 32]],
        quorum: 1,
        rules,
    };
    p.validate().unwrap();
    p
}

fn spend(amount: u128, to: &str) -> Spend {
    Spend {
        asset: ASSET.into(),
        amount,
        destinations: vec![to.into()],
    }
}

fn refused(r: Result<Verdict, PolicyRefusal>) -> &'static str {
    match r {
        Err(e) => e.rule(),
        Ok(v) => panic!("allowed: {v:?}"),
    }
}

#[test]
fn without_a_limit_for_the_asset_nothing_is_sent() {
    let mut p = policy(0, None);
    p.rules.clear();
    assert_eq!(
        refused(evaluate(&p, &spend(1, "a"), T0, ME, &[])),
        "no_spend_limit"
    );
    let other = Spend {
        asset: "bitcoin:bitcoin".into(),
        ..spend(1, "a")
    };
    assert_eq!(
        refused(evaluate(&policy(0, None), &other, T0, ME, &[])),
        "no_spend_limit"
    );
}

#[test]
fn one_transaction_above_the_limit_is_refused() {
    let p = policy(0, None);
    assert!(evaluate(&p, &spend(100_000, "a"), T0, ME, &[]).is_ok());
    match evaluate(&p, &spend(100_001, "a"), T0, ME, &[]) {
        Err(e @ PolicyRefusal::OverTransactionLimit { .. }) => {
            assert_eq!(e.rule(), "transaction_limit")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_destination_pays_only_once_listed_and_past_its_time_lock() {
    let list = Allowlist {
        time_lock_secs: 86_400,
        entries: vec![
            AllowEntry {
                asset: ASSET.into(),
                destination: "bcrt1qlater".into(),
                not_before: T0 + 3600,
            },
            AllowEntry {
                asset: ASSET.into(),
                destination: "bcrt1qnow".into(),
                not_before: T0 - 1,
            },
        ],
    };
    let p = policy(0, Some(list));
    assert!(evaluate(&p, &spend(10, "bcrt1qnow"), T0, ME, &[]).is_ok());
    assert_eq!(
        refused(evaluate(&p, &spend(10, "bcrt1qother"), T0, ME, &[])),
        "not_allowlisted"
    );
    assert_eq!(
        refused(evaluate(&p, &spend(10, "bcrt1qlater"), T0, ME, &[])),
        "allowlist_time_lock"
    );
    assert!(evaluate(&p, &spend(10, "bcrt1qlater"), T0 + 3600, ME, &[]).is_ok());
}

#[test]
fn a_window_counts_what_was_signed_and_forgets_it_when_it_has_passed() {
    let p = policy(3600, None);
    let first = evaluate(&p, &spend(60_000, "a"), T0, ME, &[]).unwrap();
    let record = first.record.unwrap();
    assert_eq!(record.len(), 1);
    // The same amount again within the hour passes the window's 150 000.
    let second = evaluate(&p, &spend(60_000, "a"), T0 + 10, ME, &record)
        .unwrap()
        .record
        .unwrap();
    match evaluate(&p, &spend(60_000, "a"), T0 + 20, ME, &second) {
        Err(PolicyRefusal::OverWindowCount { count: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    // One transaction in the window, but too much together.
    match evaluate(&p, &spend(100_000, "a"), T0 + 20, ME, &record) {
        Err(e @ PolicyRefusal::OverWindowAmount { spent: 60_000, .. }) => {
            assert_eq!(e.rule(), "window_amount")
        }
        other => panic!("{other:?}"),
    }
    // An hour after the first, it has left the window (and the record): 60 000 (the
    // second) and 90 000 make the window's 150 000 exactly.
    let later = evaluate(&p, &spend(90_000, "a"), T0 + 3601, ME, &second)
        .unwrap()
        .record
        .unwrap();
    assert_eq!(later.len(), 2, "{later:?}");
    assert_eq!(decode_record(&encode_record(&later)), Some(later));
}

#[test]
fn a_key_with_a_window_signs_on_its_velocity_holder_only() {
    let p = policy(3600, None);
    assert_eq!(
        refused(evaluate(
            &p,
            &spend(1, "a"),
            T0,
            &Member {
                node: [8; 32],
                threshold: None,
            },
            &[]
        )),
        "not_velocity_holder"
    );
    // A threshold key's window is counted by its velocity share's holder, which takes part
    // in every signing: another share signs without counting, no set without it signs.
    let mut shared = p.clone();
    shared.rules.push(Rule {
        tag: RULE_VELOCITY_SHARE,
        body: 1u16.to_be_bytes().to_vec(),
    });
    shared.validate().unwrap();
    let signing = |share, signers: &[u16]| Member {
        node: NODE,
        threshold: Some(ShareSigning {
            share,
            signers: signers.to_vec(),
        }),
    };
    let counted = evaluate(&shared, &spend(1, "a"), T0, &signing(1, &[0, 1]), &[]).unwrap();
    assert_eq!(counted.record.map(|r| r.len()), Some(1));
    let other = evaluate(&shared, &spend(1, "a"), T0, &signing(0, &[0, 1]), &[]).unwrap();
    assert_eq!(other.record, None);
    for (policy, member, rule) in [
        (&shared, signing(0, &[0, 2]), "velocity_share_absent"),
        (&shared, signing(2, &[2, 0]), "velocity_share_absent"),
        (&p, signing(1, &[0, 1]), "no_velocity_share"),
    ] {
        assert_eq!(
            refused(evaluate(policy, &spend(1, "a"), T0, &member, &[])),
            rule
        );
    }
}

#[test]
fn an_allowlist_change_may_not_add_entries_before_the_old_time_lock_ends() {
    let entry = |d: &str, at| AllowEntry {
        asset: ASSET.into(),
        destination: d.into(),
        not_before: at,
    };
    let old = Allowlist {
        time_lock_secs: 86_400,
        entries: vec![entry("a", T0 - 5)],
    };
    // A new list lowering its own time lock still waits for the old one.
    let new = Allowlist {
        time_lock_secs: 0,
        entries: vec![
            entry("a", T0 - 5),
            entry("b", T0 + 100),
            entry("c", T0 + 86_400),
        ],
    };
    let early: Vec<&str> = old
        .too_early(&new, T0)
        .iter()
        .map(|e| e.destination.as_str())
        .collect();
    assert_eq!(early, ["b"]);
}
