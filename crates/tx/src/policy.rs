//! The policy engine: a transaction's intent checked against the transaction rules of its
//! key's policy (`custos_wire::policy`: spend limits with rolling windows, the allowlist),
//! default deny. Pure: the TEE hands in the time, this node's member id and the key's
//! window record, and commits the record [`Verdict::record`] returns before any signature
//! leaves.

use custos_wire::policy::{ApprovalNeed, KeyPolicy};

use crate::intent::Intent;

/// What a transaction spends, in the terms of the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    /// The asset (`bitcoin:<network>`).
    pub asset: String,
    /// What leaves the wallet: payments and fee (sat).
    pub amount: u128,
    /// Each destination paid, as the intent writes it (an address, or `script:<hex>`).
    pub destinations: Vec<String>,
}

/// Who evaluates: the member (device key fingerprint) of this TEE and, for a threshold key,
/// the signing it takes part in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// This node's device key fingerprint.
    pub node: [u8; 32],
    /// For a threshold key: the share this TEE signs with and the session's signers.
    pub threshold: Option<ShareSigning>,
}

/// A threshold key's share in a signing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareSigning {
    /// This TEE's share index.
    pub share: u16,
    /// The share indexes of every signer of the session.
    pub signers: Vec<u16>,
}

/// One signed transaction, as a window counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spent {
    /// When it was signed (Unix seconds).
    pub at: u64,
    /// Its asset.
    pub asset: String,
    /// Its amount.
    pub amount: u128,
}

/// A transaction the policy allows, and the key's window record with it counted.
#[derive(Debug)]
pub struct Verdict {
    /// The record to commit before the signatures leave (entries older than the longest
    /// window dropped); `None` when the key has no window.
    pub record: Option<Vec<Spent>>,
}

/// Why the policy refuses a transaction; [`PolicyRefusal::rule`] names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// The key's policy sets no limit for the asset (default deny).
    #[error("the key's policy sets no spend limit for {asset}: it sends none")]
    NoLimit {
        /// The asset.
        asset: String,
    },
    /// Above the per-transaction limit.
    #[error("{amount} of {asset} in one transaction, the limit is {limit}")]
    OverTransactionLimit {
        /// The asset.
        asset: String,
        /// What the transaction sends.
        amount: u128,
        /// The limit.
        limit: u128,
    },
    /// The window's amount would be exceeded.
    #[error("{spent} of {asset} sent in the last {window_secs} s; {amount} more passes the limit of {limit}")]
    OverWindowAmount {
        /// The asset.
        asset: String,
        /// The window.
        window_secs: u64,
        /// Sent within it already.
        spent: u128,
        /// What the transaction sends.
        amount: u128,
        /// The limit.
        limit: u128,
    },
    /// The window's count would be exceeded.
    #[error("{count} transactions of {asset} in the last {window_secs} s, at most {limit}")]
    OverWindowCount {
        /// The asset.
        asset: String,
        /// The window.
        window_secs: u64,
        /// Signed within it already.
        count: u32,
        /// The limit.
        limit: u32,
    },
    /// A destination not on the allowlist.
    #[error("{destination} is not on the key's allowlist for {asset}")]
    NotAllowlisted {
        /// The asset.
        asset: String,
        /// The destination.
        destination: String,
    },
    /// A destination on the allowlist whose time lock has not ended.
    #[error("{destination} is on the allowlist from {not_before} (Unix seconds) only")]
    TimeLocked {
        /// The destination.
        destination: String,
        /// When it takes effect.
        not_before: u64,
    },
    /// A key with a window signs its transactions on its velocity holder only.
    #[error("the key's transactions are signed by member {} only (its velocity holder)", hex::encode(.holder))]
    NotVelocityHolder {
        /// The holder.
        holder: [u8; 32],
    },
    /// A threshold key with a window whose policy names no velocity share: no one record
    /// would see every transaction.
    #[error("the threshold key's policy names no velocity share to count its window")]
    NoVelocityShare,
    /// A threshold key with a window signs only with its velocity share taking part.
    #[error("share {share} counts the key's window and takes part in every signing; the signers are another set")]
    VelocityShareAbsent {
        /// The velocity share.
        share: u16,
    },
}

impl PolicyRefusal {
    /// The rule refusing, as clients match on it.
    pub fn rule(&self) -> &'static str {
        match self {
            PolicyRefusal::NoLimit { .. } => "no_spend_limit",
            PolicyRefusal::OverTransactionLimit { .. } => "transaction_limit",
            PolicyRefusal::OverWindowAmount { .. } => "window_amount",
            PolicyRefusal::OverWindowCount { .. } => "window_count",
            PolicyRefusal::NotAllowlisted { .. } => "not_allowlisted",
            PolicyRefusal::TimeLocked { .. } => "allowlist_time_lock",
            PolicyRefusal::NotVelocityHolder { .. } => "not_velocity_holder",
            PolicyRefusal::NoVelocityShare => "no_velocity_share",
            PolicyRefusal::VelocityShareAbsent { .. } => "velocity_share_absent",
        }
    }
}

/// The sealed form of a window record: per entry its time (u64 BE), asset and amount
/// (u128 BE), each a field.
pub fn encode_record(record: &[Spent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() * 48);
    for s in record {
        custos_wire::field::put(&mut out, &s.at.to_be_bytes());
        custos_wire::field::put(&mut out, s.asset.as_bytes());
        custos_wire::field::put(&mut out, &s.amount.to_be_bytes());
    }
    out
}

/// Reads [`encode_record`]'s bytes; `None` when they are not such a record.
pub fn decode_record(mut bytes: &[u8]) -> Option<Vec<Spent>> {
    use custos_wire::field::take;
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let at = u64::from_be_bytes(take(&mut bytes)?.try_into().ok()?);
        let asset = String::from_utf8(take(&mut bytes)?.to_vec()).ok()?;
        let amount = u128::from_be_bytes(take(&mut bytes)?.try_into().ok()?);
        out.push(Spent { at, asset, amount });
    }
    Some(out)
}

/// What a signature off the chain (an Ethereum personal message or typed data) counts
/// against: a key signs them only with a limit on this asset (default deny), and typed data
/// naming a verifying contract only for an allowlisted one (when the key has an allowlist).
pub const ETHEREUM_MESSAGE_ASSET: &str = "ethereum:message";

/// `wei` as an amount of the policy (saturating: beyond u128 exceeds every limit).
fn amount_of(decimal: &str) -> u128 {
    decimal.parse().unwrap_or(u128::MAX)
}

/// What `intent` spends, each against its own asset's limit (default deny). An Ethereum
/// transaction spends ether (`ethereum:<chain id>`: its value and the most its fee can be, to
/// its recipient); an ERC-20 `transfer` or `approve` also spends the token
/// (`erc20:<chain id>:<token>`: the amount, to the recipient or spender); any other call
/// (call data the signer does not decode, or a contract creation) spends
/// `ethereum:<chain id>:call` instead of plain ether, so that a key calls contracts only when
/// its policy says so. Ethereum addresses are compared in lower case (allowlists write them
/// so).
pub fn spends_of(intent: &Intent) -> Vec<Spend> {
    use crate::intent::EthereumIntent;
    match intent {
        Intent::Ethereum(EthereumIntent::Transaction(t)) => {
            let to =
                t.to.as_deref()
                    .map_or("contract-creation".into(), str::to_ascii_lowercase);
            let ether = amount_of(&t.value_wei).saturating_add(amount_of(&t.max_fee_wei));
            match &t.call {
                Some(c) => vec![
                    Spend {
                        asset: format!("erc20:{}:{}", t.chain_id, c.token.to_ascii_lowercase()),
                        amount: amount_of(&c.amount),
                        destinations: vec![c.counterparty.to_ascii_lowercase()],
                    },
                    // The fee of the call, in ether, to nobody an allowlist names.
                    Spend {
                        asset: format!("ethereum:{}", t.chain_id),
                        amount: ether,
                        destinations: vec![],
                    },
                ],
                None if t.data.is_empty() && t.to.is_some() => vec![Spend {
                    asset: format!("ethereum:{}", t.chain_id),
                    amount: ether,
                    destinations: vec![to],
                }],
                None => vec![Spend {
                    asset: format!("ethereum:{}:call", t.chain_id),
                    amount: ether,
                    destinations: vec![to],
                }],
            }
        }
        Intent::Ethereum(EthereumIntent::PersonalMessage(_)) => vec![Spend {
            asset: ETHEREUM_MESSAGE_ASSET.into(),
            amount: 0,
            destinations: vec![],
        }],
        // Typed data is for its verifying contract; without one it is for `none`, so that a
        // key with an allowlist signs it only when that is listed too.
        Intent::Ethereum(EthereumIntent::TypedData(d)) => vec![Spend {
            asset: ETHEREUM_MESSAGE_ASSET.into(),
            amount: 0,
            destinations: vec![d
                .verifying_contract
                .as_deref()
                .map_or("none".into(), str::to_ascii_lowercase)],
        }],
        Intent::Bitcoin(b) => vec![Spend {
            asset: format!("bitcoin:{}", b.network),
            amount: u128::from(b.sent_sat()) + u128::from(b.fee_sat),
            destinations: b
                .outputs
                .iter()
                .filter(|o| o.change_path.is_none())
                .map(|o| {
                    crate::btc::address_of(&o.script, &b.network)
                        .unwrap_or_else(|| format!("script:{}", hex::encode(&o.script)))
                })
                .collect(),
        }],
    }
}

/// Checks every spend of a transaction in turn ([`spends_of`]), each against the window
/// record as the ones before it left it: the record to commit when all pass.
pub fn evaluate_all(
    policy: &KeyPolicy,
    spends: &[Spend],
    now: u64,
    member: &Member,
    history: &[Spent],
) -> Result<Verdict, PolicyRefusal> {
    let mut record: Option<Vec<Spent>> = None;
    for spend in spends {
        let verdict = evaluate(
            policy,
            spend,
            now,
            member,
            record.as_deref().unwrap_or(history),
        )?;
        if verdict.record.is_some() {
            record = verdict.record;
        }
    }
    Ok(Verdict { record })
}

/// The approvals `spends` need by the key's approval tiers (the highest tier any of them
/// reaches), if any tier applies, with the spend that reaches it.
pub fn tier_quorum<'a>(policy: &KeyPolicy, spends: &'a [Spend]) -> Option<(u8, &'a Spend)> {
    let tiers = policy.approval_tiers()?;
    spends
        .iter()
        .filter_map(|s| tiers.quorum_for(&s.asset, s.amount).map(|q| (q, s)))
        .max_by_key(|(q, _)| *q)
}

/// The approvals `spends` need: the key's group at its policy's quorum, raised by the
/// highest approval tier reached, and the group of every tier of other groups reached
/// (each tier once, in the rule's order).
pub fn approval_need(policy: &KeyPolicy, spends: &[Spend]) -> ApprovalNeed {
    let quorum = tier_quorum(policy, spends).map_or(policy.quorum, |(q, _)| q.max(policy.quorum));
    let groups = policy
        .group_tiers()
        .map(|g| {
            g.tiers
                .into_iter()
                .filter(|t| spends.iter().any(|s| t.applies(&s.asset, s.amount)))
                .collect()
        })
        .unwrap_or_default();
    ApprovalNeed { quorum, groups }
}

/// Checks `spend` against `policy` at `now` on `member`, with `history` the key's window
/// record (this member's); the record to commit when it passes.
pub fn evaluate(
    policy: &KeyPolicy,
    spend: &Spend,
    now: u64,
    member: &Member,
    history: &[Spent],
) -> Result<Verdict, PolicyRefusal> {
    let asset = &spend.asset;
    let no_limit = || PolicyRefusal::NoLimit {
        asset: asset.clone(),
    };
    let limits = policy.spend_limits().ok_or_else(no_limit)?;
    let limit = limits.of(asset).ok_or_else(no_limit)?;
    if spend.amount > limit.per_transaction {
        return Err(PolicyRefusal::OverTransactionLimit {
            asset: asset.clone(),
            amount: spend.amount,
            limit: limit.per_transaction,
        });
    }
    if let Some(list) = policy.allowlist() {
        for d in &spend.destinations {
            match list.entry(asset, d) {
                None => {
                    return Err(PolicyRefusal::NotAllowlisted {
                        asset: asset.clone(),
                        destination: d.clone(),
                    })
                }
                Some(e) if e.not_before > now => {
                    return Err(PolicyRefusal::TimeLocked {
                        destination: d.clone(),
                        not_before: e.not_before,
                    })
                }
                Some(_) => {}
            }
        }
    }
    // A validated policy names a holder exactly when a limit has a window.
    let Some(holder) = limits.velocity_holder else {
        return Ok(Verdict { record: None });
    };
    if let Some(t) = &member.threshold {
        let share = policy
            .velocity_share()
            .ok_or(PolicyRefusal::NoVelocityShare)?;
        if !t.signers.contains(&share) {
            return Err(PolicyRefusal::VelocityShareAbsent { share });
        }
        // The velocity share's holder counts for the key; this share's TEE does not.
        if t.share != share {
            return Ok(Verdict { record: None });
        }
    }
    if holder != member.node {
        return Err(PolicyRefusal::NotVelocityHolder { holder });
    }
    let keep_from = now.saturating_sub(limits.longest_window());
    let mut record: Vec<Spent> = history
        .iter()
        .filter(|s| s.at > keep_from)
        .cloned()
        .collect();
    if limit.window_secs > 0 {
        let from = now.saturating_sub(limit.window_secs);
        let within: Vec<&Spent> = record
            .iter()
            .filter(|s| s.asset == *asset && s.at > from)
            .collect();
        let count = within.len() as u32;
        if count >= limit.count_per_window {
            return Err(PolicyRefusal::OverWindowCount {
                asset: asset.clone(),
                window_secs: limit.window_secs,
                count,
                limit: limit.count_per_window,
            });
        }
        let spent: u128 = within.iter().map(|s| s.amount).sum();
        if spent.saturating_add(spend.amount) > limit.per_window {
            return Err(PolicyRefusal::OverWindowAmount {
                asset: asset.clone(),
                window_secs: limit.window_secs,
                spent,
                amount: spend.amount,
                limit: limit.per_window,
            });
        }
    }
    record.push(Spent {
        at: now,
        asset: asset.clone(),
        amount: spend.amount,
    });
    Ok(Verdict {
        record: Some(record),
    })
}

#[cfg(test)]
mod tests;
