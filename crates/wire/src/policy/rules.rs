//! The transaction rules of a key's policy (issue 14): what it may send per asset, and
//! where. The TEE evaluates them (`custos-tx`'s policy module) before it signs; a full
//! quorum of approvals never overrides them, only a policy change approved by the key's
//! group does, and an allowlist entry added by a change takes effect only after the time
//! lock of the policy it replaces.
//!
//! Bodies (every field [`put`]):
//! * [`RULE_SPEND_LIMITS`]: the limit count (u32 BE), per limit its asset, per-transaction
//!   maximum (u128 BE), window in seconds (u64 BE, 0: no rolling window), maximum per window
//!   (u128 BE) and count per window (u32 BE); then the velocity holder (32 bytes, or an
//!   empty field when no limit has a window).
//! * [`RULE_ALLOWLIST`]: the time lock in seconds (u64 BE), the entry count (u32 BE), per
//!   entry its asset, destination and `not_before` (u64 BE, Unix seconds).
//! * [`RULE_APPROVAL_TIERS`]: the tier count (u32 BE), per tier its asset, the amount above
//!   which it applies (u128 BE) and the quorum of the key's group it needs (one byte).
//! * [`RULE_GROUP_TIERS`]: the tier count (u32 BE), per tier its asset, the amount above
//!   which it applies (u128 BE), the quorum of its group (one byte) and its group (the
//!   admins' key fingerprints, sorted, concatenated in one field).

use serde::{Deserialize, Serialize};

use super::{check_fingerprint_set, PolicyError};
use crate::field::{put, take};
use crate::protocol::MAX_QUORUM;

/// Rule of a key: its spend limits per asset ([`SpendLimits`]). Without it the key signs no
/// transaction (default deny).
pub const RULE_SPEND_LIMITS: u16 = 4;
/// Rule of a key: the destinations it may pay ([`Allowlist`]). Without it any destination
/// within the limits.
pub const RULE_ALLOWLIST: u16 = 5;
/// Rule of a key: more approvals of its group above amounts ([`ApprovalTiers`]).
pub const RULE_APPROVAL_TIERS: u16 = 6;
/// Rule of a key: approvals of other groups above amounts ([`GroupTiers`]).
pub const RULE_GROUP_TIERS: u16 = 8;
/// Most tiers (of each tier rule).
pub const MAX_TIERS: usize = 8;
/// Most limits of one rule.
pub const MAX_LIMITS: usize = 16;
/// Most allowlist entries.
pub const MAX_ALLOWLIST: usize = 24;
/// Longest asset name (`bitcoin:regtest`, `ethereum:1`, `erc20:1:0x…`).
pub const MAX_ASSET: usize = 64;
/// Longest destination (an address).
pub const MAX_DESTINATION: usize = 100;
/// Most transactions a window may count (bounds the sealed window record).
pub const MAX_WINDOW_COUNT: u32 = 10_000;

/// What a key may send of one asset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpendLimit {
    /// The asset (`bitcoin:<network>`: sat leaving the wallet, fee included).
    pub asset: String,
    /// Most one transaction may send.
    pub per_transaction: u128,
    /// Rolling window, seconds (0: none).
    pub window_secs: u64,
    /// Most the transactions signed within any window may send together.
    pub per_window: u128,
    /// Most transactions within any window.
    pub count_per_window: u32,
}

/// The spend limits of a key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpendLimits {
    /// By asset, sorted and distinct.
    pub limits: Vec<SpendLimit>,
    /// The one member (device key fingerprint) whose TEE signs the key's transactions when
    /// a window is set: the window's record lives in one TEE, so another node could not
    /// count what it signed.
    pub velocity_holder: Option<[u8; 32]>,
}

/// One destination a key may pay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllowEntry {
    /// The asset.
    pub asset: String,
    /// The destination (an address, as the intent writes it).
    pub destination: String,
    /// From when it may be paid (Unix seconds).
    pub not_before: u64,
}

/// The destinations a key may pay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allowlist {
    /// How long after a change an entry it adds may take effect at the earliest.
    pub time_lock_secs: u64,
    /// Sorted by (asset, destination), distinct.
    pub entries: Vec<AllowEntry>,
}

fn bad(tag: u16, reason: impl Into<String>) -> PolicyError {
    PolicyError::BadRuleBody {
        tag,
        reason: reason.into(),
    }
}

fn check_text(tag: u16, what: &str, s: &str, max: usize) -> Result<(), PolicyError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
    if !ok {
        return Err(bad(
            tag,
            format!("{what} {s:?} is not 1..={max} of [A-Za-z0-9:._-]"),
        ));
    }
    Ok(())
}

struct Reader<'a> {
    input: &'a [u8],
    tag: u16,
}

impl<'a> Reader<'a> {
    fn field(&mut self, what: &str) -> Result<&'a [u8], PolicyError> {
        take(&mut self.input).ok_or_else(|| bad(self.tag, format!("{what} cut short")))
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], PolicyError> {
        let tag = self.tag;
        self.field(what)?
            .try_into()
            .map_err(|_| bad(tag, format!("{what} is not {N} bytes")))
    }

    fn text(&mut self, what: &str, max: usize) -> Result<String, PolicyError> {
        let s = std::str::from_utf8(self.field(what)?)
            .map_err(|_| bad(self.tag, format!("{what} is not UTF-8")))?
            .to_string();
        check_text(self.tag, what, &s, max)?;
        Ok(s)
    }

    fn count(&mut self, what: &str, max: usize) -> Result<usize, PolicyError> {
        let n = u32::from_be_bytes(self.fixed(what)?) as usize;
        if n > max {
            return Err(bad(self.tag, format!("{n} {what}, at most {max}")));
        }
        Ok(n)
    }

    fn end(self) -> Result<(), PolicyError> {
        if !self.input.is_empty() {
            return Err(bad(
                self.tag,
                format!("{} trailing bytes", self.input.len()),
            ));
        }
        Ok(())
    }
}

/// Above `above` of `asset`, a transaction needs `quorum` approvals of the key's group
/// (more than the policy's own quorum, for larger amounts).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalTier {
    /// The asset.
    pub asset: String,
    /// The amount above which the tier applies.
    pub above: u128,
    /// Distinct approvers of the key's group needed.
    pub quorum: u8,
}

/// A key's approval tiers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalTiers {
    /// Sorted by (asset, above), distinct.
    pub tiers: Vec<ApprovalTier>,
}

impl ApprovalTiers {
    /// The rule body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &(self.tiers.len() as u32).to_be_bytes());
        for t in &self.tiers {
            put(&mut out, t.asset.as_bytes());
            put(&mut out, &t.above.to_be_bytes());
            put(&mut out, &[t.quorum]);
        }
        out
    }

    /// Reads and checks a rule body: tiers sorted by (asset, above) and distinct, quorums
    /// above zero (the policy checks them against its group).
    pub fn decode(body: &[u8]) -> Result<Self, PolicyError> {
        let tag = RULE_APPROVAL_TIERS;
        let mut r = Reader { input: body, tag };
        let n = r.count("tiers", MAX_TIERS)?;
        let mut tiers = Vec::with_capacity(n);
        for _ in 0..n {
            let asset = r.text("asset", MAX_ASSET)?;
            let above = u128::from_be_bytes(r.fixed("amount")?);
            let [quorum] = r.fixed("quorum")?;
            tiers.push(ApprovalTier {
                asset,
                above,
                quorum,
            });
        }
        r.end()?;
        if tiers.is_empty() || tiers.iter().any(|t| t.quorum == 0) {
            return Err(bad(tag, "no tiers, or a tier of quorum 0"));
        }
        let key = |t: &ApprovalTier| (t.asset.clone(), t.above);
        if tiers.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
            return Err(bad(tag, "tiers are not sorted and distinct"));
        }
        if tiers
            .windows(2)
            .any(|w| w[0].asset == w[1].asset && w[1].quorum < w[0].quorum)
        {
            return Err(bad(tag, "a larger amount's tier asks fewer approvals"));
        }
        Ok(ApprovalTiers { tiers })
    }

    /// The quorum `amount` of `asset` needs: that of the highest tier it is above.
    pub fn quorum_for(&self, asset: &str, amount: u128) -> Option<u8> {
        self.tiers
            .iter()
            .filter(|t| t.asset == asset && amount > t.above)
            .max_by_key(|t| t.above)
            .map(|t| t.quorum)
    }
}

/// Above `above` of `asset`, a transaction needs `quorum` approvals of `group` besides
/// those of the key's group: a risk officer, the executives. Every tier a transaction
/// reaches applies, each with its own group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupTier {
    /// The asset.
    pub asset: String,
    /// The amount above which the tier applies.
    pub above: u128,
    /// Distinct approvers of `group` needed: 1..=its size, at most [`MAX_QUORUM`].
    pub quorum: u8,
    /// Admin key fingerprints, sorted and distinct; none of them in the key's group (the
    /// policy checks), so the tier always asks for other people.
    pub group: Vec<[u8; 32]>,
}

/// A key's tiers naming other groups than its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupTiers {
    /// Sorted by (asset, above, group), distinct.
    pub tiers: Vec<GroupTier>,
}

impl GroupTiers {
    /// The rule body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &(self.tiers.len() as u32).to_be_bytes());
        for t in &self.tiers {
            put(&mut out, t.asset.as_bytes());
            put(&mut out, &t.above.to_be_bytes());
            put(&mut out, &[t.quorum]);
            put(&mut out, &t.group.concat());
        }
        out
    }

    /// Reads and checks a rule body: tiers sorted by (asset, above, group) and distinct,
    /// each group a valid set its quorum fits.
    pub fn decode(body: &[u8]) -> Result<Self, PolicyError> {
        let tag = RULE_GROUP_TIERS;
        let mut r = Reader { input: body, tag };
        let n = r.count("tiers", MAX_TIERS)?;
        let mut tiers = Vec::with_capacity(n);
        for _ in 0..n {
            let asset = r.text("asset", MAX_ASSET)?;
            let above = u128::from_be_bytes(r.fixed("amount")?);
            let [quorum] = r.fixed("quorum")?;
            let members = r.field("group")?;
            if members.len() % 32 != 0 {
                return Err(bad(tag, "a group that is not 32-byte fingerprints"));
            }
            let group: Vec<[u8; 32]> = members
                .chunks(32)
                .map(|c| c.try_into().expect("32-byte chunks"))
                .collect();
            check_fingerprint_set(&group).map_err(|e| bad(tag, format!("tier group: {e}")))?;
            let max = group.len().min(usize::from(MAX_QUORUM));
            if quorum == 0 || usize::from(quorum) > max {
                return Err(bad(
                    tag,
                    format!("tier quorum {quorum} outside 1..={max} for its group"),
                ));
            }
            tiers.push(GroupTier {
                asset,
                above,
                quorum,
                group,
            });
        }
        r.end()?;
        if tiers.is_empty() {
            return Err(bad(tag, "no tiers"));
        }
        let key = |t: &GroupTier| (t.asset.clone(), t.above, t.group.clone());
        if tiers.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
            return Err(bad(tag, "tiers are not sorted and distinct"));
        }
        Ok(GroupTiers { tiers })
    }
}

impl GroupTier {
    /// Whether `amount` of `asset` reaches the tier.
    pub fn applies(&self, asset: &str, amount: u128) -> bool {
        self.asset == asset && amount > self.above
    }
}

impl SpendLimits {
    /// The rule body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &(self.limits.len() as u32).to_be_bytes());
        for l in &self.limits {
            put(&mut out, l.asset.as_bytes());
            put(&mut out, &l.per_transaction.to_be_bytes());
            put(&mut out, &l.window_secs.to_be_bytes());
            put(&mut out, &l.per_window.to_be_bytes());
            put(&mut out, &l.count_per_window.to_be_bytes());
        }
        put(
            &mut out,
            self.velocity_holder.as_ref().map_or(&[][..], |h| h),
        );
        out
    }

    /// Reads and checks a rule body: assets named, sorted and distinct; a velocity holder
    /// exactly when some limit has a window.
    pub fn decode(body: &[u8]) -> Result<Self, PolicyError> {
        let tag = RULE_SPEND_LIMITS;
        let mut r = Reader { input: body, tag };
        let n = r.count("limits", MAX_LIMITS)?;
        let mut limits = Vec::with_capacity(n);
        for _ in 0..n {
            limits.push(SpendLimit {
                asset: r.text("asset", MAX_ASSET)?,
                per_transaction: u128::from_be_bytes(r.fixed("per-transaction limit")?),
                window_secs: u64::from_be_bytes(r.fixed("window")?),
                per_window: u128::from_be_bytes(r.fixed("window limit")?),
                count_per_window: u32::from_be_bytes(r.fixed("window count")?),
            });
        }
        let holder = r.field("velocity holder")?;
        let velocity_holder = match holder.len() {
            0 => None,
            32 => Some(holder.try_into().expect("32 bytes")),
            n => return Err(bad(tag, format!("velocity holder of {n} bytes"))),
        };
        r.end()?;
        if limits.is_empty() {
            return Err(bad(tag, "no limits"));
        }
        if limits.windows(2).any(|w| w[0].asset >= w[1].asset) {
            return Err(bad(tag, "assets are not sorted and distinct"));
        }
        // Bitcoin signatures commit to no network: a key limited on two would have a mainnet
        // spend checked against the other's limits and allowlist when presented as such.
        if limits
            .iter()
            .filter(|l| l.asset.starts_with("bitcoin:"))
            .count()
            > 1
        {
            return Err(bad(tag, "limits for more than one Bitcoin network"));
        }
        if let Some(l) = limits
            .iter()
            .find(|l| l.window_secs > 0 && l.count_per_window > MAX_WINDOW_COUNT)
        {
            return Err(bad(
                tag,
                format!(
                    "{}: {} transactions per window, at most {MAX_WINDOW_COUNT}",
                    l.asset, l.count_per_window
                ),
            ));
        }
        let windowed = limits.iter().any(|l| l.window_secs > 0);
        if windowed != velocity_holder.is_some() {
            return Err(bad(
                tag,
                "a velocity holder is named exactly when a limit has a window",
            ));
        }
        Ok(SpendLimits {
            limits,
            velocity_holder,
        })
    }

    /// The limit of `asset`.
    pub fn of(&self, asset: &str) -> Option<&SpendLimit> {
        self.limits.iter().find(|l| l.asset == asset)
    }

    /// The longest window.
    pub fn longest_window(&self) -> u64 {
        self.limits.iter().map(|l| l.window_secs).max().unwrap_or(0)
    }
}

impl Allowlist {
    /// The rule body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &self.time_lock_secs.to_be_bytes());
        put(&mut out, &(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            put(&mut out, e.asset.as_bytes());
            put(&mut out, e.destination.as_bytes());
            put(&mut out, &e.not_before.to_be_bytes());
        }
        out
    }

    /// Reads and checks a rule body: entries named, sorted by (asset, destination) and
    /// distinct.
    pub fn decode(body: &[u8]) -> Result<Self, PolicyError> {
        let tag = RULE_ALLOWLIST;
        let mut r = Reader { input: body, tag };
        let time_lock_secs = u64::from_be_bytes(r.fixed("time lock")?);
        let n = r.count("entries", MAX_ALLOWLIST)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(AllowEntry {
                asset: r.text("asset", MAX_ASSET)?,
                destination: r.text("destination", MAX_DESTINATION)?,
                not_before: u64::from_be_bytes(r.fixed("not before")?),
            });
        }
        r.end()?;
        let key = |e: &AllowEntry| (e.asset.clone(), e.destination.clone());
        if entries.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
            return Err(bad(tag, "entries are not sorted and distinct"));
        }
        Ok(Allowlist {
            time_lock_secs,
            entries,
        })
    }

    /// The entry for `destination` of `asset`.
    pub fn entry(&self, asset: &str, destination: &str) -> Option<&AllowEntry> {
        self.entries
            .iter()
            .find(|e| e.asset == asset && e.destination == destination)
    }

    /// The entries of `new` that take effect before `now` plus this list's time lock and
    /// are not in this list as they are: what a change from this list may not add.
    pub fn too_early<'a>(&self, new: &'a Allowlist, now: u64) -> Vec<&'a AllowEntry> {
        let earliest = now.saturating_add(self.time_lock_secs);
        new.entries
            .iter()
            .filter(|e| !self.entries.contains(e) && e.not_before < earliest)
            .collect()
    }
}
