//! Properties of the policy encoding and its checks.

use super::*;

fn fp(b: u8) -> [u8; 32] {
    [b; 32]
}

fn sample() -> KeyPolicy {
    KeyPolicy {
        version: 3,
        group: vec![fp(1), fp(2), fp(3)],
        quorum: 2,
        rules: vec![Rule {
            tag: RULE_CLUSTER_ANCHORS,
            body: [fp(7), fp(8)].concat(),
        }],
    }
}

/// Every variation of one field of `sample()`.
fn variations() -> Vec<KeyPolicy> {
    let base = sample();
    let with = |f: &dyn Fn(&mut KeyPolicy)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    vec![
        with(&|p| p.version = 4),
        with(&|p| p.quorum = 3),
        with(&|p| p.group[1] = fp(4)),
        with(&|p| {
            p.group.pop();
        }),
        with(&|p| p.group.push(fp(9))),
        with(&|p| p.rules.clear()),
        with(&|p| p.rules[0].body[0] ^= 1),
        with(&|p| p.rules[0].body.truncate(32)),
        with(&|p| p.rules[0].tag = 2),
    ]
}

#[test]
fn sample_validates_and_round_trips() {
    let p = sample();
    assert_eq!(p.validate(), Ok(()));
    assert_eq!(KeyPolicy::decode(&p.encode()), Ok(p.clone()));
    assert_eq!(p.cluster_anchors(), Some(vec![fp(7), fp(8)]));
    for v in variations() {
        assert_eq!(KeyPolicy::decode(&v.encode()), Ok(v));
    }
}

#[test]
fn every_field_changes_the_encoding_and_the_hash() {
    let base = sample();
    let mut seen = vec![base.encode()];
    for v in variations() {
        assert_ne!(v.hash(), base.hash(), "{v:?}");
        assert!(!seen.contains(&v.encode()), "{v:?}");
        seen.push(v.encode());
    }
}

#[test]
fn the_hash_is_domain_separated() {
    let p = sample();
    let plain: [u8; 32] = Sha256::digest(p.encode()).into();
    assert_ne!(p.hash(), plain);
}

#[test]
fn decode_refuses_every_cut_and_trailing_bytes() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert!(
            matches!(
                KeyPolicy::decode(&bytes[..len]),
                Err(PolicyError::Malformed(_))
            ),
            "cut at {len}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        KeyPolicy::decode(&long),
        Err(PolicyError::Malformed(_))
    ));
}

#[test]
fn decode_refuses_counts_over_the_limit_before_allocating() {
    let mut out = Vec::new();
    put(&mut out, &1u32.to_be_bytes());
    put(&mut out, &[1]);
    put(&mut out, &u32::MAX.to_be_bytes());
    assert!(matches!(
        KeyPolicy::decode(&out),
        Err(PolicyError::Malformed(m)) if m.contains("group size")
    ));
}

#[test]
fn validate_names_what_is_wrong() {
    let with = |f: &dyn Fn(&mut KeyPolicy)| {
        let mut p = sample();
        f(&mut p);
        p.validate()
    };
    assert_eq!(with(&|p| p.group.clear()), Err(PolicyError::EmptyGroup));
    assert_eq!(
        with(&|p| p.group = (0..=MAX_GROUP as u8).map(fp).collect()),
        Err(PolicyError::GroupTooLarge { len: MAX_GROUP + 1 })
    );
    assert_eq!(
        with(&|p| p.group.swap(0, 1)),
        Err(PolicyError::GroupNotSorted { index: 1 })
    );
    assert_eq!(
        with(&|p| p.group[2] = fp(2)),
        Err(PolicyError::DuplicateApprover {
            key_fingerprint: fp(2)
        })
    );
    for quorum in [0, 4] {
        assert_eq!(
            with(&|p| p.quorum = quorum),
            Err(PolicyError::QuorumOutOfRange {
                quorum,
                group: 3,
                max: 3
            })
        );
    }
    assert_eq!(
        with(&|p| {
            p.group = (0..MAX_GROUP as u8).map(fp).collect();
            p.quorum = MAX_QUORUM + 1;
        }),
        Err(PolicyError::QuorumOutOfRange {
            quorum: MAX_QUORUM + 1,
            group: MAX_GROUP,
            max: usize::from(MAX_QUORUM)
        })
    );
    assert_eq!(
        with(&|p| p.rules[0].tag = 999),
        Err(PolicyError::UnknownRule { tag: 999 })
    );
    assert_eq!(
        with(&|p| p.rules.push(p.rules[0].clone())),
        Err(PolicyError::RulesNotSorted {
            index: 1,
            tag: RULE_CLUSTER_ANCHORS
        })
    );
    for body in [
        vec![],
        vec![0; 31],
        vec![0; 33],
        vec![0; 32 * (MAX_ANCHORS + 1)],
    ] {
        assert!(matches!(
            with(&|p| p.rules[0].body = body.clone()),
            Err(PolicyError::BadRuleBody {
                tag: RULE_CLUSTER_ANCHORS,
                ..
            })
        ));
    }
    assert_eq!(
        with(&|p| p.rules = vec![
            Rule {
                tag: 0,
                body: vec![]
            };
            MAX_RULES + 1
        ]),
        Err(PolicyError::TooManyRules { len: MAX_RULES + 1 })
    );
}

#[test]
fn every_group_size_and_quorum_in_range_validates() {
    for n in 1..=MAX_GROUP {
        for q in 1..=n.min(usize::from(MAX_QUORUM)) {
            let p = KeyPolicy {
                version: 1,
                group: (0..n as u8).map(fp).collect(),
                quorum: q as u8,
                rules: Vec::new(),
            };
            assert_eq!(p.validate(), Ok(()), "{n} {q}");
        }
    }
}

#[test]
fn the_legacy_stand_in_never_validates_and_has_a_stable_hash() {
    assert_eq!(
        KeyPolicy::legacy(2).validate(),
        Err(PolicyError::EmptyGroup)
    );
    assert_eq!(KeyPolicy::legacy(2).hash(), KeyPolicy::legacy(2).hash());
    assert_ne!(KeyPolicy::legacy(2).hash(), KeyPolicy::legacy(3).hash());
}

/// The transaction rules read back what they wrote, and refuse bodies whose meaning would
/// be ambiguous or unbounded, each naming the rule.
#[test]
fn transaction_rules_round_trip_and_refuse_what_they_cannot_mean() {
    let limit = |asset: &str, window| SpendLimit {
        asset: asset.into(),
        per_transaction: 10,
        window_secs: window,
        per_window: 20,
        count_per_window: 3,
    };
    let limits = SpendLimits {
        limits: vec![limit("bitcoin:bitcoin", 3600), limit("ethereum:1", 0)],
        velocity_holder: Some([7; 32]),
    };
    assert_eq!(SpendLimits::decode(&limits.encode()), Ok(limits.clone()));
    // Bitcoin signatures name no network: one key, one Bitcoin network.
    let two_networks = SpendLimits {
        limits: vec![limit("bitcoin:bitcoin", 0), limit("bitcoin:regtest", 0)],
        velocity_holder: None,
    };
    assert!(SpendLimits::decode(&two_networks.encode()).is_err());
    let list = Allowlist {
        time_lock_secs: 86_400,
        entries: vec![AllowEntry {
            asset: "bitcoin:regtest".into(),
            destination: "bcrt1qxyz".into(),
            not_before: 5,
        }],
    };
    assert_eq!(Allowlist::decode(&list.encode()), Ok(list.clone()));
    let bad = |body: Vec<u8>, tag| match (tag, tag == RULE_SPEND_LIMITS) {
        (t, true) => assert!(
            matches!(SpendLimits::decode(&body), Err(PolicyError::BadRuleBody { tag, .. }) if tag == t)
        ),
        (t, false) => assert!(
            matches!(Allowlist::decode(&body), Err(PolicyError::BadRuleBody { tag, .. }) if tag == t)
        ),
    };
    // Unsorted assets; a window without a holder; a holder without a window; a window
    // counting more than a record may hold; a destination with spaces.
    let mut unsorted = limits.clone();
    unsorted.limits.reverse();
    bad(unsorted.encode(), RULE_SPEND_LIMITS);
    let mut no_holder = limits.clone();
    no_holder.velocity_holder = None;
    bad(no_holder.encode(), RULE_SPEND_LIMITS);
    let mut idle = limits.clone();
    idle.limits = vec![limit("bitcoin:regtest", 0)];
    bad(idle.encode(), RULE_SPEND_LIMITS);
    let mut huge = limits.clone();
    huge.limits[0].count_per_window = MAX_WINDOW_COUNT + 1;
    bad(huge.encode(), RULE_SPEND_LIMITS);
    let mut spaced = list.clone();
    spaced.entries[0].destination = "bcrt1q x".into();
    bad(spaced.encode(), RULE_ALLOWLIST);
    let mut cut = list.encode();
    cut.pop();
    bad(cut, RULE_ALLOWLIST);

    // A threshold key's window is counted on the share that takes part in every signing
    // (rule 7, with the limits' holder): only with a window, and a share index of 2 bytes.
    let policy = |limits: &SpendLimits, share: Option<Vec<u8>>| {
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
        if let Some(body) = share {
            rules.push(Rule {
                tag: RULE_VELOCITY_SHARE,
                body,
            });
        }
        KeyPolicy {
            version: 1,
            group: vec![fp(1)],
            quorum: 1,
            rules,
        }
    };
    let refused = |p: KeyPolicy| {
        let r = p.validate();
        assert!(
            matches!(
                r,
                Err(PolicyError::BadRuleBody {
                    tag: RULE_VELOCITY_SHARE,
                    ..
                })
            ),
            "{r:?}"
        )
    };
    let shared = policy(&limits, Some(vec![0, 2]));
    assert_eq!(shared.validate(), Ok(()));
    assert_eq!(shared.velocity_share(), Some(2));
    assert_eq!(
        KeyPolicy::decode(&shared.encode())
            .unwrap()
            .velocity_share(),
        Some(2)
    );
    assert_eq!(policy(&limits, None).velocity_share(), None);
    let mut unwindowed = limits.clone();
    unwindowed.limits = vec![limit("bitcoin:regtest", 0)];
    unwindowed.velocity_holder = None;
    refused(policy(&unwindowed, Some(vec![0, 1])));
    refused(policy(&limits, Some(vec![0, 1, 2])));
}

/// Tiers: the highest tier an amount is above decides; a tier must ask more than the
/// policy's quorum and no more than its group holds.
#[test]
fn approval_tiers_pick_the_highest_tier_passed_and_fit_the_group() {
    let tier = |above, quorum| ApprovalTier {
        asset: "bitcoin:bitcoin".into(),
        above,
        quorum,
    };
    let tiers = ApprovalTiers {
        tiers: vec![tier(1_000, 2), tier(100_000, 3)],
    };
    assert_eq!(ApprovalTiers::decode(&tiers.encode()), Ok(tiers.clone()));
    assert_eq!(tiers.quorum_for("bitcoin:bitcoin", 1_000), None);
    assert_eq!(tiers.quorum_for("bitcoin:bitcoin", 1_001), Some(2));
    assert_eq!(tiers.quorum_for("bitcoin:bitcoin", 100_001), Some(3));
    assert_eq!(tiers.quorum_for("bitcoin:regtest", 100_001), None);
    let with = |t: &ApprovalTiers, quorum| KeyPolicy {
        version: 1,
        group: (0..3).map(fp).collect(),
        quorum,
        rules: vec![
            Rule {
                tag: RULE_TRANSACTIONS_ONLY,
                body: vec![],
            },
            Rule {
                tag: RULE_APPROVAL_TIERS,
                body: t.encode(),
            },
        ],
    };
    assert_eq!(with(&tiers, 1).validate(), Ok(()));
    // Without the transactions-only rule a raw digest would sign around the tiers.
    let mut raw = with(&tiers, 1);
    raw.rules.remove(0);
    assert!(matches!(
        raw.validate(),
        Err(PolicyError::BadRuleBody {
            tag: RULE_APPROVAL_TIERS,
            ..
        })
    ));
    // A larger amount may not ask fewer approvals.
    let falling = ApprovalTiers {
        tiers: vec![tier(1_000, 3), tier(100_000, 2)],
    };
    assert!(ApprovalTiers::decode(&falling.encode()).is_err());
    // Not above the policy's own quorum; more than the group holds.
    assert!(matches!(
        with(&tiers, 2).validate(),
        Err(PolicyError::BadRuleBody {
            tag: RULE_APPROVAL_TIERS,
            ..
        })
    ));
    let too_many = ApprovalTiers {
        tiers: vec![tier(1_000, 4)],
    };
    assert!(with(&too_many, 1).validate().is_err());
    let unsorted = ApprovalTiers {
        tiers: vec![tier(100_000, 3), tier(1_000, 2)],
    };
    assert!(ApprovalTiers::decode(&unsorted.encode()).is_err());
}

#[test]
fn group_tiers_name_other_people_and_apply_cumulatively() {
    let tier = |above, quorum, group: Vec<[u8; 32]>| GroupTier {
        asset: "bitcoin:bitcoin".into(),
        above,
        quorum,
        group,
    };
    let risk = vec![fp(7), fp(8)];
    let execs = vec![fp(9)];
    let tiers = GroupTiers {
        tiers: vec![
            tier(1_000, 1, risk.clone()),
            tier(100_000, 1, execs.clone()),
        ],
    };
    assert_eq!(GroupTiers::decode(&tiers.encode()), Ok(tiers.clone()));
    let reached = |amount| {
        tiers
            .tiers
            .iter()
            .filter(|t| t.applies("bitcoin:bitcoin", amount))
            .map(|t| t.group.clone())
            .collect::<Vec<_>>()
    };
    assert!(reached(1_000).is_empty());
    assert_eq!(reached(1_001), vec![risk.clone()]);
    // Every tier reached applies: above 100 000 the risk group and the executives.
    assert_eq!(reached(100_001), vec![risk.clone(), execs.clone()]);
    assert!(!tiers.tiers[0].applies("bitcoin:regtest", 100_001));
    let with = |t: &GroupTiers, group: Vec<[u8; 32]>| KeyPolicy {
        version: 1,
        group,
        quorum: 2,
        rules: vec![
            Rule {
                tag: RULE_TRANSACTIONS_ONLY,
                body: vec![],
            },
            Rule {
                tag: RULE_GROUP_TIERS,
                body: t.encode(),
            },
        ],
    };
    assert_eq!(with(&tiers, (1..4).map(fp).collect()).validate(), Ok(()));
    // A tier group sharing an admin with the key's group would count them twice.
    let shared = with(&tiers, vec![fp(1), fp(2), fp(8)]).validate();
    assert!(
        matches!(&shared, Err(PolicyError::BadRuleBody { tag: RULE_GROUP_TIERS, reason }) if reason.contains(&hex::encode(fp(8)))),
        "{shared:?}"
    );
    let bad = |t: GroupTiers| GroupTiers::decode(&t.encode()).unwrap_err();
    // A quorum its group cannot reach, a quorum of 0, an unsorted or empty group.
    for t in [
        tier(1_000, 3, risk.clone()),
        tier(1_000, 0, risk.clone()),
        tier(1_000, 1, vec![fp(8), fp(7)]),
        tier(1_000, 1, vec![]),
    ] {
        assert!(matches!(
            bad(GroupTiers { tiers: vec![t] }),
            PolicyError::BadRuleBody {
                tag: RULE_GROUP_TIERS,
                ..
            }
        ));
    }
    // Unsorted tiers, no tiers; a group cut mid-fingerprint.
    bad(GroupTiers {
        tiers: vec![
            tier(100_000, 1, execs.clone()),
            tier(1_000, 1, risk.clone()),
        ],
    });
    bad(GroupTiers { tiers: vec![] });
    let mut cut = GroupTiers {
        tiers: vec![tier(1_000, 1, risk.clone())],
    }
    .encode();
    let n = cut.len();
    cut.truncate(n - 4 - 64);
    crate::field::put(&mut cut, &[0u8; 33]);
    assert!(GroupTiers::decode(&cut).is_err());
    // Without the transactions-only rule a raw digest would sign around them.
    let mut raw = with(&tiers, (1..4).map(fp).collect());
    raw.rules.remove(0);
    assert!(raw.validate().is_err());
}

#[test]
fn tiers_that_could_never_be_approved_together_are_refused() {
    // The key's 10 and two groups of 4 each: 18 approvals, beyond one request's 16, so the
    // rules could never change again.
    let group = |from: u8| (from..from + 4).map(fp).collect::<Vec<_>>();
    let tiers = GroupTiers {
        tiers: vec![
            GroupTier {
                asset: "bitcoin:bitcoin".into(),
                above: 1,
                quorum: 4,
                group: group(100),
            },
            GroupTier {
                asset: "bitcoin:bitcoin".into(),
                above: 2,
                quorum: 4,
                group: group(110),
            },
        ],
    };
    let policy = |quorum| KeyPolicy {
        version: 1,
        group: (1..=12).map(fp).collect(),
        quorum,
        rules: vec![
            Rule {
                tag: RULE_TRANSACTIONS_ONLY,
                body: vec![],
            },
            Rule {
                tag: RULE_GROUP_TIERS,
                body: tiers.encode(),
            },
        ],
    };
    assert_eq!(policy(8).validate(), Ok(()));
    let r = policy(10).validate();
    assert!(
        matches!(&r, Err(PolicyError::BadRuleBody { tag: RULE_GROUP_TIERS, reason }) if reason.contains("18 approvals")),
        "{r:?}"
    );
}
