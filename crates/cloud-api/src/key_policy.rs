//! A wallet's approver group change between the TEE's [`KeyPolicy`] and the API's views:
//! the server builds [`KeyPolicyChange`] from the policy in force and the new one, and an
//! approver rebuilds both policies from it (never trusting the server's hash), so the
//! approval message names exactly the groups shown.

use custos_wire::policy::KeyPolicy;

use crate::approval::parse_group;
use crate::{KeyPolicyChange, KeyPolicyView};

/// The view of `policy` of wallet `root_id`, as `node`'s TEE reported it.
pub fn policy_view(root_id: &[u8], policy: &KeyPolicy, node: &str) -> KeyPolicyView {
    KeyPolicyView {
        root_id: hex::encode(root_id),
        version: policy.version,
        group: policy.group.iter().map(hex::encode).collect(),
        quorum: policy.quorum,
        hash: hex::encode(policy.hash()),
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
    }
}

/// The policy in force and the new one, rebuilt from `change` of a request needing `quorum`
/// approvals: the current one must be the legacy stand-in (version 0, no group) or a valid
/// group, its quorum the request's, its hash the `prev` shown; the new one valid, one version
/// later. Policies carry no rules here (a wallet's never does).
pub fn policies(change: &KeyPolicyChange, quorum: u8) -> Result<(KeyPolicy, KeyPolicy), String> {
    if change.current_quorum != quorum {
        return Err(format!(
            "the change needs {quorum} approvals but the group in force has quorum {}",
            change.current_quorum
        ));
    }
    let current = if change.current_version == 0 {
        if !change.current_group.is_empty() {
            return Err("a version-0 (legacy) policy has no group".into());
        }
        KeyPolicy::legacy(change.current_quorum)
    } else {
        let current = KeyPolicy {
            version: change.current_version,
            group: parse_group(&change.current_group).map_err(|e| format!("current {e}"))?,
            quorum: change.current_quorum,
            rules: Vec::new(),
        };
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
    let new = KeyPolicy {
        version: change.version,
        group: parse_group(&change.group).map_err(|e| format!("new {e}"))?,
        quorum: change.quorum,
        rules: Vec::new(),
    };
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

/// The change in words: "change the approvers of wallet 02ab… from 2 of 1a2b…,3c4d… to 2 of
/// 1a2b…,5e6f…; version 2".
pub fn describe_change(root_id: &str, change: &KeyPolicyChange) -> String {
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
    format!(
        "change the approvers of wallet {}… from {from} to {} of {}; version {}",
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
        assert_eq!(policies(&view, 2).unwrap(), (cur.clone(), new.clone()));
        let words = describe_change(&"02ab".repeat(16), &view);
        assert_eq!(
            words,
            "change the approvers of wallet 02ab… from 2 of 01010101…,02020202…,03030303… \
             to 2 of 01010101…,02020202…,04040404…; version 2"
        );
        // Another quorum than the request's, a group in force other than the hash names, a
        // version that skips, a new quorum over the group: refused.
        assert!(policies(&view, 1).is_err());
        let mut forged = view.clone();
        forged.current_group[2] = hex::encode([9u8; 32]);
        assert!(policies(&forged, 2).unwrap_err().contains("hash"));
        let mut skip = view.clone();
        skip.version = 3;
        assert!(policies(&skip, 2).unwrap_err().contains("follow"));
        let mut over = view.clone();
        over.quorum = 4;
        assert!(policies(&over, 2).is_err());
        // A legacy wallet's policy in force is the stand-in of its quorum.
        let legacy = change_view(&KeyPolicy::legacy(2), &policy(1, &[1, 2], 2));
        assert_eq!(policies(&legacy, 2).unwrap().0, KeyPolicy::legacy(2));
        assert!(describe_change("02ab", &legacy).contains("any admin"));
    }
}
