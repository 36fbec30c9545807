//! A key's approver group change between the TEE's [`KeyPolicy`] and the API's views: the
//! server builds [`KeyPolicyChange`] from the policy in force and the new one, and an
//! approver rebuilds both policies from it (never trusting the server's hash), so the
//! approval message names exactly the groups shown. A threshold key's policy may carry
//! cluster anchors, the same in both (a change carries them over). A key whose policy
//! carries transaction rules (issue 14) cannot change its group through this server yet: it
//! refuses rather than drop them.

use custos_wire::policy::KeyPolicy;

use crate::approval::{new_threshold_policy, parse_group};
use crate::rules::with_rules;
use crate::{KeyPolicyChange, KeyPolicyView, PolicyRules};

/// The view of `policy` of key `root_id` (a wallet or threshold key), as `node`'s TEE
/// reported it.
pub fn policy_view(root_id: &[u8], policy: &KeyPolicy, node: &str) -> KeyPolicyView {
    KeyPolicyView {
        root_id: hex::encode(root_id),
        version: policy.version,
        group: policy.group.iter().map(hex::encode).collect(),
        quorum: policy.quorum,
        hash: hex::encode(policy.hash()),
        anchors: policy
            .cluster_anchors()
            .map(|a| a.iter().map(hex::encode).collect()),
        rules: crate::PolicyRules::of(policy),
        node: node.to_string(),
    }
}

/// The terms shown for replacing `current` by `new`.
pub fn change_view(current: &KeyPolicy, new: &KeyPolicy) -> KeyPolicyChange {
    KeyPolicyChange {
        current_version: current.version,
        current_group: current.group.iter().map(hex::encode).collect(),
        current_quorum: current.quorum,
        prev: hex::encode(current.hash()),
        version: new.version,
        group: new.group.iter().map(hex::encode).collect(),
        quorum: new.quorum,
        current_rules: PolicyRules::of(current),
        rules: PolicyRules::of(new),
    }
}

/// The policy in force and the new one, rebuilt from `change` of a request needing `quorum`
/// approvals, both with the cluster anchors `anchors` (a threshold key's; empty for a
/// wallet): the current one must be the legacy stand-in (version 0, no group, no anchors) or
/// a valid group, its quorum the request's, its hash the `prev` shown; the new one valid, one
/// version later.
pub fn policies(
    change: &KeyPolicyChange,
    quorum: u8,
    anchors: &[[u8; 32]],
) -> Result<(KeyPolicy, KeyPolicy), String> {
    // The request needs the quorum in force, or more: the highest approval tier's when the
    // change touches the rules of a policy with tiers (the TEE asks for it).
    if quorum < change.current_quorum {
        return Err(format!(
            "the change needs {quorum} approvals but the group in force has quorum {}",
            change.current_quorum
        ));
    }
    let current = if change.current_version == 0 {
        if !change.current_group.is_empty() || !anchors.is_empty() {
            return Err("a version-0 (legacy) policy has no group and no anchors".into());
        }
        KeyPolicy::legacy(change.current_quorum)
    } else {
        let current = with_rules(
            KeyPolicy {
                version: change.current_version,
                ..new_threshold_policy(
                    parse_group(&change.current_group).map_err(|e| format!("current {e}"))?,
                    change.current_quorum,
                    anchors,
                )
            },
            change.current_rules.as_ref(),
        )
        .map_err(|e| format!("the rules in force: {e}"))?;
        current
            .validate()
            .map_err(|e| format!("the policy in force: {e}"))?;
        current
    };
    if !change
        .prev
        .eq_ignore_ascii_case(&hex::encode(current.hash()))
    {
        return Err(format!(
            "the hash shown ({}) is not the hash of the group in force shown",
            change.prev
        ));
    }
    if Some(change.version) != change.current_version.checked_add(1) {
        return Err(format!(
            "version {} does not follow version {}",
            change.version, change.current_version
        ));
    }
    let new = with_rules(
        KeyPolicy {
            version: change.version,
            ..new_threshold_policy(
                parse_group(&change.group).map_err(|e| format!("new {e}"))?,
                change.quorum,
                anchors,
            )
        },
        change.rules.as_ref(),
    )
    .map_err(|e| format!("the new rules: {e}"))?;
    new.validate().map_err(|e| format!("the new policy: {e}"))?;
    Ok((current, new))
}

/// The first 8 hex characters of each fingerprint, comma-separated.
fn short(group: &[String]) -> String {
    group
        .iter()
        .map(|g| format!("{}…", g.get(..8).unwrap_or(g)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The change of key `root_id` (`what`: "wallet" or "threshold key") in words: "change the
/// approvers of wallet 02ab… from 2 of 1a2b…,3c4d… to 2 of 1a2b…,5e6f…; version 2".
pub fn describe_change(what: &str, root_id: &str, change: &KeyPolicyChange) -> String {
    let from = if change.current_version == 0 {
        format!(
            "{} of any admin (sealed before approver groups)",
            change.current_quorum
        )
    } else {
        format!(
            "{} of {}",
            change.current_quorum,
            short(&change.current_group)
        )
    };
    let rules = if change.rules == change.current_rules {
        ""
    } else {
        "; its transaction rules change"
    };
    format!(
        "change the approvers of {what} {}… from {from} to {} of {}; version {}{rules}",
        root_id.get(..4).unwrap_or(root_id),
        change.quorum,
        short(&change.group),
        change.version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(version: u32, group: &[u8], quorum: u8) -> KeyPolicy {
        KeyPolicy {
            version,
            group: group.iter().map(|b| [*b; 32]).collect(),
            quorum,
            rules: Vec::new(),
        }
    }

    #[test]
    fn a_change_rebuilds_both_policies_and_refuses_what_does_not_fit() {
        let (cur, new) = (policy(1, &[1, 2, 3], 2), policy(2, &[1, 2, 4], 2));
        let view = change_view(&cur, &new);
        assert_eq!(policies(&view, 2, &[]).unwrap(), (cur.clone(), new.clone()));
        let words = describe_change("wallet", &"02ab".repeat(16), &view);
        assert_eq!(
            words,
            "change the approvers of wallet 02ab… from 2 of 01010101…,02020202…,03030303… \
             to 2 of 01010101…,02020202…,04040404…; version 2"
        );
        // Another quorum than the request's, a group in force other than the hash names, a
        // version that skips, a new quorum over the group: refused.
        assert!(policies(&view, 1, &[]).is_err());
        let mut forged = view.clone();
        forged.current_group[2] = hex::encode([9u8; 32]);
        assert!(policies(&forged, 2, &[]).unwrap_err().contains("hash"));
        let mut skip = view.clone();
        skip.version = 3;
        assert!(policies(&skip, 2, &[]).unwrap_err().contains("follow"));
        let mut over = view.clone();
        over.quorum = 4;
        assert!(policies(&over, 2, &[]).is_err());
        // A legacy wallet's policy in force is the stand-in of its quorum.
        let legacy = change_view(&KeyPolicy::legacy(2), &policy(1, &[1, 2], 2));
        assert_eq!(policies(&legacy, 2, &[]).unwrap().0, KeyPolicy::legacy(2));
        assert!(describe_change("wallet", "02ab", &legacy).contains("any admin"));
    }

    /// A threshold key's anchors are part of both policies: the hash shown must be of the
    /// policy with them, and a legacy policy never has any.
    #[test]
    fn anchors_are_carried_over_into_both_policies() {
        let anchors = [[7u8; 32], [8u8; 32]];
        let with = |p: KeyPolicy| KeyPolicy {
            version: p.version,
            ..new_threshold_policy(p.group, p.quorum, &anchors)
        };
        let (cur, new) = (with(policy(1, &[1, 2], 2)), with(policy(2, &[1, 3], 2)));
        let view = change_view(&cur, &new);
        assert_eq!(
            policies(&view, 2, &anchors).unwrap(),
            (cur.clone(), new.clone())
        );
        assert_eq!(new.cluster_anchors(), Some(anchors.to_vec()));
        // Without the anchors (or others), the hash shown is not the group in force's.
        assert!(policies(&view, 2, &[]).unwrap_err().contains("hash"));
        assert!(policies(&view, 2, &[anchors[1], anchors[0]])
            .unwrap_err()
            .contains("hash"));
        let legacy = change_view(&KeyPolicy::legacy(2), &policy(1, &[1, 2], 2));
        assert!(policies(&legacy, 2, &anchors)
            .unwrap_err()
            .contains("legacy"));
        assert_eq!(
            policy_view(&[2; 33], &cur, "node1").anchors,
            Some(vec!["07".repeat(32), "08".repeat(32)])
        );
        assert_eq!(
            policy_view(&[2; 33], &policy(1, &[1], 1), "n").anchors,
            None
        );
    }
}
