//! A key's transaction rules between the API's [`PolicyRules`] and the policy's [`Rule`]s:
//! the server builds a new key's policy with them, approvers rebuild the same policy from
//! the request they read (so the approval message names exactly the rules shown), and a
//! policy a TEE reports is shown with them.

use custos_wire::policy::{
    AllowEntry, Allowlist, ApprovalTier, ApprovalTiers, GroupTier, GroupTiers, KeyPolicy, Rule,
    SpendLimit, SpendLimits, RULE_ALLOWLIST, RULE_APPROVAL_TIERS, RULE_GROUP_TIERS,
    RULE_SPEND_LIMITS, RULE_TRANSACTIONS_ONLY, RULE_VELOCITY_SHARE,
};

use crate::approval::parse_fingerprint;
use crate::{AllowEntryView, AllowlistView, ApprovalTierView, PolicyRules, SpendLimitView};

/// Most admins in a tier's own group through the API (a risk officer or two, the
/// executives), which keeps the largest request body within the server's limit.
pub const MAX_TIER_GROUP: usize = 4;
/// Most approval tiers of both kinds through the API.
pub const MAX_API_TIERS: usize = 8;

fn amount(what: &str, s: &str) -> Result<u128, String> {
    if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a decimal amount"));
    }
    s.parse()
        .map_err(|_| format!("{what} {s:?} is out of range"))
}

impl PolicyRules {
    /// No rule at all: the key signs raw digests its approvers cannot read (what a wallet
    /// creation must ask for explicitly; without rules a new wallet signs transactions only).
    pub fn raw_digests() -> Self {
        PolicyRules::default()
    }

    /// The rules a new wallet gets when its creation names none: transactions only (and,
    /// without a spend limit, no transaction either until its group adds one).
    pub fn new_wallet_default() -> Self {
        PolicyRules {
            transactions_only: true,
            ..PolicyRules::default()
        }
    }

    /// Transactions only, each sending at most `per_transaction` (decimal, the asset's
    /// smallest unit) of `asset` (e.g. `bitcoin:regtest`), without a window.
    pub fn per_transaction_limit(asset: &str, per_transaction: &str) -> Self {
        PolicyRules {
            transactions_only: true,
            spend_limits: vec![SpendLimitView {
                asset: asset.into(),
                per_transaction: per_transaction.into(),
                window_secs: 0,
                per_window: "0".into(),
                count_per_window: 0,
            }],
            ..PolicyRules::default()
        }
    }

    /// Whether it sets no rule at all.
    pub fn is_empty(&self) -> bool {
        *self == PolicyRules::default()
    }

    /// The policy's rules, by tag, in the order the TEE requires (the lists sorted), or why
    /// they cannot be: an amount that is not decimal, a holder that is not a fingerprint, a
    /// holder without limits. Whether they make a valid policy is [`KeyPolicy::validate`]'s
    /// call.
    pub fn to_rules(&self) -> Result<Vec<Rule>, String> {
        let assets = self
            .spend_limits
            .iter()
            .map(|l| &l.asset)
            .chain(self.approval_tiers.iter().map(|t| &t.asset))
            .chain(
                self.allowlist
                    .iter()
                    .flat_map(|a| a.entries.iter().map(|e| &e.asset)),
            );
        for asset in assets {
            check_asset(&ethereum_lower(asset))?;
        }
        let mut rules = Vec::new();
        if self.transactions_only {
            rules.push(Rule {
                tag: RULE_TRANSACTIONS_ONLY,
                body: Vec::new(),
            });
        }
        if !self.spend_limits.is_empty() {
            let mut limits = self
                .spend_limits
                .iter()
                .map(|l| {
                    Ok(SpendLimit {
                        asset: ethereum_lower(&l.asset),
                        per_transaction: amount("per_transaction", &l.per_transaction)?,
                        window_secs: l.window_secs,
                        per_window: amount("per_window", &l.per_window)?,
                        count_per_window: l.count_per_window,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            limits.sort_by(|a, b| a.asset.cmp(&b.asset));
            let velocity_holder = self
                .velocity_holder
                .as_deref()
                .map(parse_fingerprint)
                .transpose()
                .map_err(|e| format!("velocity_holder: {e}"))?;
            rules.push(Rule {
                tag: RULE_SPEND_LIMITS,
                body: SpendLimits {
                    limits,
                    velocity_holder,
                }
                .encode(),
            });
        } else if self.velocity_holder.is_some() || self.velocity_share.is_some() {
            return Err("a velocity holder without spend_limits".into());
        }
        if let Some(a) = &self.allowlist {
            let mut entries: Vec<AllowEntry> = a
                .entries
                .iter()
                .map(|e| AllowEntry {
                    asset: ethereum_lower(&e.asset),
                    destination: ethereum_lower_for(&e.asset, &e.destination),
                    not_before: e.not_before,
                })
                .collect();
            entries.sort_by(|x, y| (&x.asset, &x.destination).cmp(&(&y.asset, &y.destination)));
            rules.push(Rule {
                tag: RULE_ALLOWLIST,
                body: Allowlist {
                    time_lock_secs: a.time_lock_secs,
                    entries,
                }
                .encode(),
            });
        }
        if self.approval_tiers.len() > MAX_API_TIERS {
            return Err(format!(
                "{} approval tiers, at most {MAX_API_TIERS}",
                self.approval_tiers.len()
            ));
        }
        let (own, other): (Vec<_>, Vec<_>) =
            self.approval_tiers.iter().partition(|t| t.group.is_empty());
        if !own.is_empty() {
            let mut tiers = own
                .iter()
                .map(|t| {
                    Ok(ApprovalTier {
                        asset: ethereum_lower(&t.asset),
                        above: amount("above", &t.above)?,
                        quorum: t.quorum,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            tiers.sort_by(|a, b| (&a.asset, a.above).cmp(&(&b.asset, b.above)));
            rules.push(Rule {
                tag: RULE_APPROVAL_TIERS,
                body: ApprovalTiers { tiers }.encode(),
            });
        }
        if let Some(share) = self.velocity_share {
            rules.push(Rule {
                tag: RULE_VELOCITY_SHARE,
                body: share.to_be_bytes().to_vec(),
            });
        }
        if !other.is_empty() {
            let mut tiers = other
                .iter()
                .map(|t| {
                    if t.group.len() > MAX_TIER_GROUP {
                        return Err(format!(
                            "a tier group of {} admins, at most {MAX_TIER_GROUP}",
                            t.group.len()
                        ));
                    }
                    let mut group = t
                        .group
                        .iter()
                        .map(|g| parse_fingerprint(g))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("tier group: {e}"))?;
                    group.sort();
                    Ok(GroupTier {
                        asset: ethereum_lower(&t.asset),
                        above: amount("above", &t.above)?,
                        quorum: t.quorum,
                        group,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            tiers.sort_by(|a, b| (&a.asset, a.above, &a.group).cmp(&(&b.asset, b.above, &b.group)));
            rules.push(Rule {
                tag: RULE_GROUP_TIERS,
                body: GroupTiers { tiers }.encode(),
            });
        }
        Ok(rules)
    }

    /// The transaction rules of `policy` (`None` when it has none).
    pub fn of(policy: &KeyPolicy) -> Option<PolicyRules> {
        let mut out = PolicyRules {
            transactions_only: !policy.raw_digest_allowed(),
            ..PolicyRules::default()
        };
        if let Some(s) = policy.spend_limits() {
            out.spend_limits = s
                .limits
                .iter()
                .map(|l| SpendLimitView {
                    asset: l.asset.clone(),
                    per_transaction: l.per_transaction.to_string(),
                    window_secs: l.window_secs,
                    per_window: l.per_window.to_string(),
                    count_per_window: l.count_per_window,
                })
                .collect();
            out.velocity_holder = s.velocity_holder.map(hex::encode);
        }
        out.velocity_share = policy.velocity_share();
        out.allowlist = policy.allowlist().map(|a| AllowlistView {
            time_lock_secs: a.time_lock_secs,
            entries: a
                .entries
                .iter()
                .map(|e| AllowEntryView {
                    asset: e.asset.clone(),
                    destination: e.destination.clone(),
                    not_before: e.not_before,
                })
                .collect(),
        });
        if let Some(t) = policy.approval_tiers() {
            out.approval_tiers = t
                .tiers
                .iter()
                .map(|t| ApprovalTierView {
                    asset: t.asset.clone(),
                    above: t.above.to_string(),
                    quorum: t.quorum,
                    group: Vec::new(),
                })
                .collect();
        }
        if let Some(t) = policy.group_tiers() {
            out.approval_tiers
                .extend(t.tiers.iter().map(ApprovalTierView::of_group_tier));
        }
        (!out.is_empty()).then_some(out)
    }

    /// The rules as lines an approver reads.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.transactions_only {
            lines.push("transactions only: no raw digest is ever signed".to_string());
        }
        for l in &self.spend_limits {
            let window = if l.window_secs == 0 {
                String::new()
            } else {
                format!(
                    ", at most {} in {} transaction(s) per {} s",
                    l.per_window, l.count_per_window, l.window_secs
                )
            };
            lines.push(format!(
                "limit {}: at most {} per transaction{window}",
                l.asset, l.per_transaction
            ));
        }
        if let Some(h) = &self.velocity_holder {
            lines.push(format!("signed only by node with device key {h}"));
        }
        if let Some(i) = self.velocity_share {
            lines.push(format!(
                "share {i} takes part in every signing (it counts the window)"
            ));
        }
        if self.spend_limits.is_empty() {
            lines.push("no spend limit: the key signs no transaction".to_string());
        }
        if let Some(a) = &self.allowlist {
            lines.push(format!(
                "allowlist ({} entries), new entries wait {} s",
                a.entries.len(),
                a.time_lock_secs
            ));
            for e in &a.entries {
                lines.push(format!(
                    "  {} {} from {}",
                    e.asset, e.destination, e.not_before
                ));
            }
        }
        for t in &self.approval_tiers {
            lines.push(t.describe());
        }
        lines
    }
}

impl ApprovalTierView {
    /// A tier of another group, as the API writes it.
    pub fn of_group_tier(t: &GroupTier) -> Self {
        ApprovalTierView {
            asset: t.asset.clone(),
            above: t.above.to_string(),
            quorum: t.quorum,
            group: t.group.iter().map(hex::encode).collect(),
        }
    }

    /// The tier as a line an approver reads.
    pub fn describe(&self) -> String {
        match self.group.as_slice() {
            [] => format!(
                "above {} of {}: {} approvals",
                self.above, self.asset, self.quorum
            ),
            group => format!(
                "above {} of {}: {} approval(s) of another group besides the key's quorum: {}",
                self.above,
                self.asset,
                self.quorum,
                group.join(", ")
            ),
        }
    }
}

/// An asset as the TEE names what a transaction spends (`custos_tx::policy::spends_of`):
/// `bitcoin:<network>`, `ethereum:<chain id>`, `ethereum:<chain id>:call`, `ethereum:message`
/// or `erc20:<chain id>:0x<40 hex>`. Any other name would never match, so a tier on it would
/// silently not apply.
fn check_asset(asset: &str) -> Result<(), String> {
    let chain = |c: &str| c.parse::<u64>().is_ok_and(|n| n.to_string() == c);
    let token = |t: &str| {
        t.len() == 42 && t.starts_with("0x") && t[2..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    let parts: Vec<&str> = asset.split(':').collect();
    let ok = match parts.as_slice() {
        ["bitcoin", n] => ["bitcoin", "testnet", "signet", "regtest"].contains(n),
        ["ethereum", "message"] => true,
        ["ethereum", c] => chain(c),
        ["ethereum", c, "call"] => chain(c),
        ["erc20", c, t] => chain(c) && token(t),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "asset {asset:?} is none the TEE counts (bitcoin:<network>, ethereum:<chain id>, \
             ethereum:<chain id>:call, ethereum:message, erc20:<chain id>:0x<token>)"
        ))
    }
}

/// Ethereum addresses are compared in lower case (`custos_tx::policy::spends_of`): an
/// `erc20:` asset's token and an Ethereum destination are written so.
fn ethereum_lower(asset: &str) -> String {
    if asset.starts_with("erc20:") {
        asset.to_ascii_lowercase()
    } else {
        asset.to_string()
    }
}

fn ethereum_lower_for(asset: &str, destination: &str) -> String {
    if asset.starts_with("ethereum:") || asset.starts_with("erc20:") {
        destination.to_ascii_lowercase()
    } else {
        destination.to_string()
    }
}

/// `policy` with `rules` added after the rules it has (a new wallet's policy has none; a
/// threshold key's cluster anchors come first, their tag being lower).
pub fn with_rules(mut policy: KeyPolicy, rules: Option<&PolicyRules>) -> Result<KeyPolicy, String> {
    if let Some(r) = rules {
        policy.rules.extend(r.to_rules()?);
    }
    Ok(policy)
}
