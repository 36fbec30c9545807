//! Per-key approver groups (issue 12, item 3): who may approve the use of a key, and how many
//! of them must.
//!
//! A [`KeyPolicy`] is sealed with its key and named in approval messages by its canonical
//! encoding ([`KeyPolicy::encode`]) or its hash ([`KeyPolicy::hash`]). Admins in a group are
//! key fingerprints (`custos_pki::key_fingerprint` of the certified public key), never names,
//! so a second certificate for a new subject cannot join a group.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::field::{put, take};
use crate::protocol::MAX_QUORUM;

mod rules;

pub use rules::{
    AllowEntry, Allowlist, ApprovalTier, ApprovalTiers, GroupTier, GroupTiers, SpendLimit,
    SpendLimits, MAX_ALLOWLIST, MAX_ASSET, MAX_DESTINATION, MAX_LIMITS, MAX_TIERS,
    MAX_WINDOW_COUNT, RULE_ALLOWLIST, RULE_APPROVAL_TIERS, RULE_GROUP_TIERS, RULE_SPEND_LIMITS,
};

/// Most admins in one approver group.
pub const MAX_GROUP: usize = 32;
/// Most rules one policy carries.
pub const MAX_RULES: usize = 16;
/// Largest rule body, bytes.
pub const MAX_RULE_BODY: usize = 4096;
/// Rule of threshold keys: the genesis id (32 bytes) of each share's cluster, by share index.
pub const RULE_CLUSTER_ANCHORS: u16 = 1;
/// Rule of a governance genesis: the cluster's measurement policy
/// ([`crate::governance::MeasurementPolicy`], its canonical encoding).
pub const RULE_MEASUREMENT_POLICY: u16 = 2;
/// Rule of a key: it signs only transactions the TEE parses (`custos-tx`), never a raw
/// digest or opaque message (an empty body). Only a policy change approved by the key's
/// group takes it away. A key whose policy lacks it (every key made before it existed)
/// signs digests as before.
pub const RULE_TRANSACTIONS_ONLY: u16 = 3;
/// Rule of threshold keys with a windowed spend limit: the share (its index, u16 BE) that
/// takes part in every transaction the key signs, whose node (the limits' velocity holder)
/// counts the window. Every participant refuses a signer set without it, so the one record
/// sees every transaction; holders per share would each see only the transactions their
/// share signed, and signer sets chosen to spread the spends would pass the window n/t
/// times over.
pub const RULE_VELOCITY_SHARE: u16 = 7;
/// Most clusters a [`RULE_CLUSTER_ANCHORS`] rule names.
pub const MAX_ANCHORS: usize = 64;
/// Domain separation tag of [`KeyPolicy::hash`].
pub const POLICY_DOMAIN: &[u8] = b"CUSTOS-KEY-POLICY-V1\0";

/// The approvals one request on a key needs: `quorum` of the key's group and, for each
/// tier of another group that applies, `quorum` of that group besides.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalNeed {
    /// Distinct admins of the key's group.
    pub quorum: u8,
    /// The tiers of other groups that apply, each once.
    pub groups: Vec<GroupTier>,
}

/// Who approves the use of one key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyPolicy {
    /// 1 at creation, +1 on every change; 0 only for [`KeyPolicy::legacy`].
    pub version: u32,
    /// Admin key fingerprints: sorted, distinct, 1..=[`MAX_GROUP`].
    pub group: Vec<[u8; 32]>,
    /// Distinct admins of `group` needed: 1..=group size, at most [`MAX_QUORUM`].
    pub quorum: u8,
    /// Further conditions, sorted by distinct tag; an unknown tag is refused, never ignored.
    pub rules: Vec<Rule>,
}

/// One further condition of a policy, by tag (the extension point of later issues: tiers,
/// limits, allowlists).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rule {
    /// What the rule is ([`RULE_CLUSTER_ANCHORS`], ...).
    pub tag: u16,
    /// Its content, in the format its tag defines.
    pub body: Vec<u8>,
}

/// Why a policy is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The group is empty.
    #[error("the approver group is empty")]
    EmptyGroup,
    /// The group is larger than [`MAX_GROUP`].
    #[error("the approver group has {len} admins, at most {MAX_GROUP} allowed")]
    GroupTooLarge {
        /// Admins offered.
        len: usize,
    },
    /// The group is not in strictly increasing order (so its encoding would not be the one
    /// canonical encoding of that set).
    #[error("group entry #{index} is not after the one before it (sort the fingerprints)")]
    GroupNotSorted {
        /// Position of the out-of-order fingerprint.
        index: usize,
    },
    /// An admin appears twice in the group.
    #[error("admin {} appears twice in the group", hex::encode(.key_fingerprint))]
    DuplicateApprover {
        /// The repeated fingerprint.
        key_fingerprint: [u8; 32],
    },
    /// The quorum is 0, above the group size or above [`MAX_QUORUM`].
    #[error("quorum {quorum} is outside 1..={max} for a group of {group}")]
    QuorumOutOfRange {
        /// Quorum offered.
        quorum: u8,
        /// Group size.
        group: usize,
        /// Largest quorum allowed for this group.
        max: usize,
    },
    /// More than [`MAX_RULES`] rules.
    #[error("{len} rules, at most {MAX_RULES} allowed")]
    TooManyRules {
        /// Rules offered.
        len: usize,
    },
    /// A rule tag this version does not know: refused, since ignoring a condition would
    /// loosen the policy.
    #[error("unknown policy rule tag {tag}")]
    UnknownRule {
        /// The tag.
        tag: u16,
    },
    /// Rules are not sorted by strictly increasing tag (one rule per tag).
    #[error("rule #{index} (tag {tag}) is not after the rule before it")]
    RulesNotSorted {
        /// Position of the rule.
        index: usize,
        /// Its tag.
        tag: u16,
    },
    /// A rule's body is malformed or too large.
    #[error("rule tag {tag} has a malformed body: {reason}")]
    BadRuleBody {
        /// The rule's tag.
        tag: u16,
        /// What is wrong.
        reason: String,
    },
    /// The bytes are not a canonical policy encoding.
    #[error("malformed policy encoding: {0}")]
    Malformed(String),
}

impl KeyPolicy {
    /// The stand-in for a key sealed before policies existed (version 0, empty group, no
    /// rules): what a first policy change names as its `prev` hash. It never validates,
    /// because it is never a policy anyone approves.
    pub fn legacy(quorum: u8) -> Self {
        KeyPolicy {
            version: 0,
            group: Vec::new(),
            quorum,
            rules: Vec::new(),
        }
    }

    /// Canonical bytes: [`put`] fields version (u32 BE), [quorum], group size (u32 BE), each
    /// fingerprint, rule count (u32 BE), each rule's tag (u16 BE) and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 36 * self.group.len());
        put(&mut out, &self.version.to_be_bytes());
        put(&mut out, &[self.quorum]);
        put_fingerprints(&mut out, &self.group);
        put_rules(&mut out, &self.rules);
        out
    }

    /// Reads [`KeyPolicy::encode`]'s bytes back, refusing trailing bytes and any count over
    /// its limit before allocating. The result still needs [`KeyPolicy::validate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, PolicyError> {
        let mut input = bytes;
        let version = u32::from_be_bytes(fixed(&mut input, "version")?);
        let [quorum] = fixed(&mut input, "quorum")?;
        let n = count(&mut input, "group size", MAX_GROUP)?;
        let group = (0..n)
            .map(|_| fixed(&mut input, "admin fingerprint"))
            .collect::<Result<Vec<[u8; 32]>, _>>()?;
        let n = count(&mut input, "rule count", MAX_RULES)?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = u16::from_be_bytes(fixed(&mut input, "rule tag")?);
            let body = field(&mut input, "rule body")?;
            if body.len() > MAX_RULE_BODY {
                return Err(PolicyError::BadRuleBody {
                    tag,
                    reason: format!("{} bytes, at most {MAX_RULE_BODY}", body.len()),
                });
            }
            rules.push(Rule {
                tag,
                body: body.to_vec(),
            });
        }
        if !input.is_empty() {
            return Err(PolicyError::Malformed(format!(
                "{} trailing bytes",
                input.len()
            )));
        }
        Ok(KeyPolicy {
            version,
            group,
            quorum,
            rules,
        })
    }

    /// SHA-256 of [`POLICY_DOMAIN`] and [`KeyPolicy::encode`]: how a policy change names the
    /// policy it replaces.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(POLICY_DOMAIN);
        h.update(self.encode());
        h.finalize().into()
    }

    /// Checks every limit and the canonical form: group sorted and distinct, 1..=
    /// [`MAX_GROUP`]; `1 <= quorum <= min(group size, MAX_QUORUM)`; rules sorted by distinct
    /// known tags with well-formed bodies.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_fingerprint_set(&self.group)?;
        let max = self.group.len().min(usize::from(MAX_QUORUM));
        if self.quorum == 0 || usize::from(self.quorum) > max {
            return Err(PolicyError::QuorumOutOfRange {
                quorum: self.quorum,
                group: self.group.len(),
                max,
            });
        }
        check_rules(
            &self.rules,
            &[
                RULE_CLUSTER_ANCHORS,
                RULE_TRANSACTIONS_ONLY,
                RULE_SPEND_LIMITS,
                RULE_ALLOWLIST,
                RULE_APPROVAL_TIERS,
                RULE_VELOCITY_SHARE,
                RULE_GROUP_TIERS,
            ],
        )?;
        if self.velocity_share().is_some()
            && self
                .spend_limits()
                .is_none_or(|l| l.velocity_holder.is_none())
        {
            return Err(PolicyError::BadRuleBody {
                tag: RULE_VELOCITY_SHARE,
                reason: "a velocity share without a window to count".into(),
            });
        }
        let transaction_rules = [
            RULE_SPEND_LIMITS,
            RULE_ALLOWLIST,
            RULE_APPROVAL_TIERS,
            RULE_GROUP_TIERS,
        ];
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| transaction_rules.contains(&r.tag))
            .filter(|_| self.raw_digest_allowed())
        {
            return Err(PolicyError::BadRuleBody {
                tag: r.tag,
                reason: format!(
                    "a transaction rule needs rule {RULE_TRANSACTIONS_ONLY} (transactions \
                     only): a raw digest would sign around it"
                ),
            });
        }
        if let Some(t) = self.approval_tiers().and_then(|t| {
            t.tiers
                .into_iter()
                .find(|t| usize::from(t.quorum) > max || t.quorum <= self.quorum)
        }) {
            return Err(PolicyError::BadRuleBody {
                tag: RULE_APPROVAL_TIERS,
                reason: format!(
                    "tier above {} of {} asks {} approvals: more than the policy's {} and at \
                     most {max}",
                    t.above, t.asset, t.quorum, self.quorum
                ),
            });
        }
        // A tier's group apart from the key's: its approvals are other people's, never the
        // key's own approvers counted a second time.
        if let Some((t, shared)) = self.group_tiers().and_then(|g| {
            g.tiers.into_iter().find_map(|t| {
                let shared = *t.group.iter().find(|k| self.group.contains(k))?;
                Some((t, shared))
            })
        }) {
            return Err(PolicyError::BadRuleBody {
                tag: RULE_GROUP_TIERS,
                reason: format!(
                    "the group of the tier above {} of {} shares admin {} with the key's group",
                    t.above,
                    t.asset,
                    hex::encode(shared)
                ),
            });
        }
        // Every requirement met at once must fit in one request's approvals, or the rules
        // (whose change needs them all) could never change again.
        let need = self.rules_change_need();
        let mut groups: Vec<(&[[u8; 32]], u8)> = Vec::new();
        for t in &need.groups {
            match groups.iter_mut().find(|(g, _)| *g == &t.group[..]) {
                Some(e) => e.1 = e.1.max(t.quorum),
                None => groups.push((&t.group, t.quorum)),
            }
        }
        let total: usize =
            usize::from(need.quorum) + groups.iter().map(|(_, q)| usize::from(*q)).sum::<usize>();
        if total > usize::from(MAX_QUORUM) {
            return Err(PolicyError::BadRuleBody {
                tag: RULE_GROUP_TIERS,
                reason: format!(
                    "the tiers together ask {total} approvals, more than the {MAX_QUORUM} one \
                     request carries"
                ),
            });
        }
        Ok(())
    }

    /// What a change of the rules needs: the highest tier's quorum of the key's group and
    /// every tier's group at its quorum. The policy's own quorum could otherwise lift a
    /// tier (or raise a limit) and then sign what the tier held back.
    pub fn rules_change_need(&self) -> ApprovalNeed {
        let quorum = self.approval_tiers().map_or(self.quorum, |t| {
            t.tiers.iter().map(|t| t.quorum).fold(self.quorum, u8::max)
        });
        ApprovalNeed {
            quorum,
            groups: self.group_tiers().map(|g| g.tiers).unwrap_or_default(),
        }
    }

    /// The key's tiers naming other groups ([`RULE_GROUP_TIERS`]); `None` without the rule.
    pub fn group_tiers(&self) -> Option<GroupTiers> {
        GroupTiers::decode(&self.rule(RULE_GROUP_TIERS)?.body).ok()
    }

    /// The share that takes part in every transaction of a threshold key with a window
    /// ([`RULE_VELOCITY_SHARE`]).
    pub fn velocity_share(&self) -> Option<u16> {
        let rule = self.rules.iter().find(|r| r.tag == RULE_VELOCITY_SHARE)?;
        Some(u16::from_be_bytes(rule.body.as_slice().try_into().ok()?))
    }

    /// The key's approval tiers ([`RULE_APPROVAL_TIERS`]); `None` without the rule.
    pub fn approval_tiers(&self) -> Option<ApprovalTiers> {
        ApprovalTiers::decode(&self.rule(RULE_APPROVAL_TIERS)?.body).ok()
    }

    fn rule(&self, tag: u16) -> Option<&Rule> {
        self.rules.iter().find(|r| r.tag == tag)
    }

    /// The key's spend limits ([`RULE_SPEND_LIMITS`]); `None` without the rule (then it
    /// signs no transaction) or, in a policy never validated, with a malformed one.
    pub fn spend_limits(&self) -> Option<SpendLimits> {
        SpendLimits::decode(&self.rule(RULE_SPEND_LIMITS)?.body).ok()
    }

    /// The key's allowlist ([`RULE_ALLOWLIST`]); `None` without the rule.
    pub fn allowlist(&self) -> Option<Allowlist> {
        Allowlist::decode(&self.rule(RULE_ALLOWLIST)?.body).ok()
    }

    /// Whether the key signs raw digests (its policy has no [`RULE_TRANSACTIONS_ONLY`]).
    pub fn raw_digest_allowed(&self) -> bool {
        !self.rules.iter().any(|r| r.tag == RULE_TRANSACTIONS_ONLY)
    }

    /// The genesis id of each share's cluster, by share index, when the policy has a
    /// [`RULE_CLUSTER_ANCHORS`] rule (validated policies only carry well-formed ones).
    pub fn cluster_anchors(&self) -> Option<Vec<[u8; 32]>> {
        let rule = self.rules.iter().find(|r| r.tag == RULE_CLUSTER_ANCHORS)?;
        rule.body
            .chunks(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<[u8; 32]>>>()
    }
}

/// Checks a set of fingerprints given as a list: 1..=[`MAX_GROUP`] entries, strictly
/// increasing.
pub(crate) fn check_fingerprint_set(set: &[[u8; 32]]) -> Result<(), PolicyError> {
    if set.is_empty() {
        return Err(PolicyError::EmptyGroup);
    }
    if set.len() > MAX_GROUP {
        return Err(PolicyError::GroupTooLarge { len: set.len() });
    }
    for (index, pair) in set.windows(2).enumerate() {
        match pair[0].cmp(&pair[1]) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                return Err(PolicyError::DuplicateApprover {
                    key_fingerprint: pair[1],
                })
            }
            std::cmp::Ordering::Greater => {
                return Err(PolicyError::GroupNotSorted { index: index + 1 })
            }
        }
    }
    Ok(())
}

/// Checks rules: at most [`MAX_RULES`], strictly increasing tags, each among `known`, each
/// body well-formed for its tag.
pub(crate) fn check_rules(rules: &[Rule], known: &[u16]) -> Result<(), PolicyError> {
    if rules.len() > MAX_RULES {
        return Err(PolicyError::TooManyRules { len: rules.len() });
    }
    for (index, r) in rules.iter().enumerate() {
        if !known.contains(&r.tag) {
            return Err(PolicyError::UnknownRule { tag: r.tag });
        }
        if index > 0 && rules[index - 1].tag >= r.tag {
            return Err(PolicyError::RulesNotSorted { index, tag: r.tag });
        }
        let bad = |reason: String| PolicyError::BadRuleBody { tag: r.tag, reason };
        if r.body.len() > MAX_RULE_BODY {
            return Err(bad(format!(
                "{} bytes, at most {MAX_RULE_BODY}",
                r.body.len()
            )));
        }
        if r.tag == RULE_SPEND_LIMITS {
            SpendLimits::decode(&r.body)?;
        }
        if r.tag == RULE_ALLOWLIST {
            Allowlist::decode(&r.body)?;
        }
        if r.tag == RULE_APPROVAL_TIERS {
            ApprovalTiers::decode(&r.body)?;
        }
        if r.tag == RULE_GROUP_TIERS {
            GroupTiers::decode(&r.body)?;
        }
        if r.tag == RULE_TRANSACTIONS_ONLY && !r.body.is_empty() {
            return Err(bad(format!("{} bytes, the rule has none", r.body.len())));
        }
        if r.tag == RULE_CLUSTER_ANCHORS {
            let n = r.body.len() / 32;
            if r.body.is_empty() || r.body.len() % 32 != 0 || n > MAX_ANCHORS {
                return Err(bad(format!(
                    "{} bytes is not 1..={MAX_ANCHORS} genesis ids of 32 bytes",
                    r.body.len()
                )));
            }
        }
        if r.tag == RULE_VELOCITY_SHARE && r.body.len() != 2 {
            return Err(bad(format!(
                "{} bytes, a share index is 2 (u16 BE)",
                r.body.len()
            )));
        }
    }
    Ok(())
}

/// Appends a fingerprint list: its length (u32 BE), then each fingerprint, each a field.
pub(crate) fn put_fingerprints(out: &mut Vec<u8>, fps: &[[u8; 32]]) {
    put(out, &(fps.len() as u32).to_be_bytes());
    for fp in fps {
        put(out, fp);
    }
}

/// Appends a rule list: its length (u32 BE), then each rule's tag (u16 BE) and body.
pub(crate) fn put_rules(out: &mut Vec<u8>, rules: &[Rule]) {
    put(out, &(rules.len() as u32).to_be_bytes());
    for r in rules {
        put(out, &r.tag.to_be_bytes());
        put(out, &r.body);
    }
}

fn field<'a>(input: &mut &'a [u8], what: &str) -> Result<&'a [u8], PolicyError> {
    take(input).ok_or_else(|| PolicyError::Malformed(format!("{what} cut short")))
}

fn fixed<const N: usize>(input: &mut &[u8], what: &str) -> Result<[u8; N], PolicyError> {
    field(input, what)?
        .try_into()
        .map_err(|_| PolicyError::Malformed(format!("{what} is not {N} bytes")))
}

fn count(input: &mut &[u8], what: &str, max: usize) -> Result<usize, PolicyError> {
    let n = u32::from_be_bytes(fixed(input, what)?) as usize;
    if n > max {
        return Err(PolicyError::Malformed(format!("{what} {n} exceeds {max}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
