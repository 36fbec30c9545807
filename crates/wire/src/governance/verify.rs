//! One verifier of governance logs for everyone: the state a log leads to, and the rules every
//! entry must keep to move it on.

use std::collections::{BTreeMap, BTreeSet};

use custos_pki::{AdminCache, DeviceIdentity, TrustRoot};
use serde::{Deserialize, Serialize};

use super::{
    device_key_fingerprint, entry_hash, genesis_id, DeviceRefusal, GovChange, GovEntry, GovError,
    MeasurementPolicy, MemberRecord, MAX_MEMBERS, MAX_REVOKED,
};
use crate::approval::{verify_approvals, ApprovalTime, Approvers, MAX_APPROVAL_LIFETIME_SECS};

/// A current member of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// The record it was admitted with.
    pub record: MemberRecord,
    /// Version of the entry that admitted it.
    pub admitted_version: u64,
}

/// The state a verified log leads to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GovState {
    /// Cluster the log governs (part of every approval message).
    pub cluster: String,
    /// [`genesis_id`] of its first entry.
    pub genesis_id: [u8; 32],
    /// Version of the last entry applied.
    pub version: u64,
    /// [`entry_hash`] of the last entry applied.
    pub head: [u8; 32],
    /// Governor key fingerprints (sorted).
    pub governors: Vec<[u8; 32]>,
    /// Distinct unrevoked governors needed for the next entry.
    pub quorum: u8,
    /// Current members by device key fingerprint.
    pub members: BTreeMap<[u8; 32], Member>,
    /// Members removed by a [`GovChange::Remove`], with its version (a revoked member is in
    /// `revoked_devices` instead); a removed key may be admitted again.
    pub removed: BTreeMap<[u8; 32], u64>,
    /// Revoked admin keys, with the version that revoked them.
    pub revoked_admins: BTreeMap<[u8; 32], u64>,
    /// Revoked device keys, with the version that revoked them.
    pub revoked_devices: BTreeMap<[u8; 32], u64>,
    /// The platforms nodes are admitted on (none: no node is admitted after the genesis).
    #[serde(default)]
    pub measurement: Option<MeasurementPolicy>,
    /// [`super::nonce_hash`] of every admission ticket used so far: a nonce admits once.
    #[serde(default)]
    pub used_nonces: BTreeSet<[u8; 32]>,
}

impl GovState {
    /// Starts a state from the genesis entry `e` of `cluster`'s log: version 0, prev zero, its
    /// [`genesis_id`] equal to `pin` when one is given, approved by a quorum of the governors
    /// it names, and every member admissible.
    pub fn genesis(
        root: &TrustRoot,
        cache: &mut AdminCache,
        cluster: &str,
        pin: Option<[u8; 32]>,
        e: &GovEntry,
    ) -> Result<Self, GovError> {
        e.change.check_limits()?;
        let GovChange::Genesis {
            governors,
            quorum,
            members,
            rules,
        } = &e.change
        else {
            return Err(GovError::NotGenesis { version: e.version });
        };
        if e.version != 0 || e.prev != [0; 32] {
            return Err(GovError::GenesisPosition { version: e.version });
        }
        let id = genesis_id(cluster, &e.change);
        if let Some(expected) = pin {
            if expected != id {
                return Err(GovError::WrongPin {
                    expected,
                    found: id,
                });
            }
        }
        let who = Approvers::Group {
            group: governors,
            quorum: *quorum,
        };
        count(root, cache, cluster, e, &who, &|_| false)?;
        let mut state = GovState {
            cluster: cluster.to_string(),
            genesis_id: id,
            version: 0,
            head: [0; 32],
            governors: governors.clone(),
            quorum: *quorum,
            members: BTreeMap::new(),
            removed: BTreeMap::new(),
            revoked_admins: BTreeMap::new(),
            revoked_devices: BTreeMap::new(),
            measurement: MeasurementPolicy::from_rules(rules)?,
            used_nonces: BTreeSet::new(),
        };
        for m in members {
            // The governors chose the first members themselves: no ticket to check.
            state.admit(root, e, m)?;
        }
        state.head = entry_hash(cluster, e);
        Ok(state)
    }

    /// Applies the next entry: `version == self.version + 1`, `prev == self.head`, approved
    /// by a quorum of the governors as of this state (revoked governors do not count), and a
    /// change that keeps the rules of its kind. On a refusal the state is unchanged.
    pub fn apply(
        &mut self,
        root: &TrustRoot,
        cache: &mut AdminCache,
        e: &GovEntry,
    ) -> Result<(), GovError> {
        e.change.check_limits()?;
        if matches!(e.change, GovChange::Genesis { .. }) {
            return Err(GovError::UnexpectedGenesis { version: e.version });
        }
        let expected = self.version.saturating_add(1);
        if e.version != expected {
            return Err(GovError::WrongVersion {
                expected,
                found: e.version,
            });
        }
        if e.prev != self.head {
            return Err(GovError::WrongPrev {
                version: e.version,
                expected: self.head,
                found: e.prev,
            });
        }
        let who = Approvers::Group {
            group: &self.governors,
            quorum: self.quorum,
        };
        let revoked = |fp: &[u8; 32]| self.revoked_admins.contains_key(fp);
        count(root, cache, &self.cluster, e, &who, &revoked)?;
        // Every change checks all its rules before it mutates anything, so a refusal leaves
        // `self` as it was without copying the state for each entry.
        self.change(root, e)?;
        self.version = e.version;
        self.head = entry_hash(&self.cluster, e);
        Ok(())
    }

    /// The current member with this device key fingerprint (`None` if never admitted,
    /// removed or revoked).
    pub fn member(&self, key_fingerprint: &[u8; 32]) -> Option<&Member> {
        if self.revoked_devices.contains_key(key_fingerprint) {
            return None;
        }
        self.members.get(key_fingerprint)
    }

    /// Whether a device whose chain verified (for this cluster) is a current member under the
    /// name its certificate carries.
    pub fn check_device(&self, id: &DeviceIdentity) -> Result<&Member, DeviceRefusal> {
        // A key that is not a P-256 point cannot have verified; the zero id matches nothing.
        let key_fingerprint = device_key_fingerprint(&id.public_key).unwrap_or([0; 32]);
        let node = id.node.clone();
        if self.revoked_devices.contains_key(&key_fingerprint) {
            return Err(DeviceRefusal::Revoked {
                node,
                key_fingerprint,
            });
        }
        let member = match self.member(&key_fingerprint) {
            Some(m) if id.cluster == self.cluster => m,
            _ => {
                return Err(DeviceRefusal::NotAMember {
                    node,
                    key_fingerprint,
                })
            }
        };
        if member.record.node != id.node {
            return Err(DeviceRefusal::WrongName {
                node,
                member: member.record.node.clone(),
                key_fingerprint,
            });
        }
        Ok(member)
    }

    fn change(&mut self, root: &TrustRoot, e: &GovEntry) -> Result<(), GovError> {
        match &e.change {
            GovChange::Genesis { .. } => Err(GovError::UnexpectedGenesis { version: e.version }),
            GovChange::Admit { member } => {
                let nonce = self.check_admission(member, Some(e.meta.expires_at))?;
                self.admit(root, e, member)?;
                if let Some(n) = nonce {
                    self.used_nonces.insert(n);
                }
                Ok(())
            }
            GovChange::SetMeasurementPolicy { policy } => {
                self.measurement = Some(policy.clone());
                Ok(())
            }
            GovChange::Remove {
                key_fingerprint, ..
            } => {
                if self.members.remove(key_fingerprint).is_none() {
                    return Err(GovError::NotAMember(*key_fingerprint));
                }
                self.removed.insert(*key_fingerprint, e.version);
                Ok(())
            }
            GovChange::Revoke {
                admins, devices, ..
            } => self.revoke(admins, devices, e.version),
            GovChange::SetGovernors { governors, quorum } => {
                if let Some(g) = governors
                    .iter()
                    .find(|g| self.revoked_admins.contains_key(*g))
                {
                    return Err(GovError::RevokedGovernor(*g));
                }
                self.governors = governors.clone();
                self.quorum = *quorum;
                Ok(())
            }
        }
    }

    fn revoke(
        &mut self,
        admins: &[[u8; 32]],
        devices: &[[u8; 32]],
        version: u64,
    ) -> Result<(), GovError> {
        let total = self.revoked_admins.len() + self.revoked_devices.len();
        let len = total + admins.len() + devices.len();
        if len > MAX_REVOKED {
            return Err(GovError::TooMany {
                what: "revoked keys",
                len,
                max: MAX_REVOKED,
            });
        }
        let already = admins
            .iter()
            .find(|fp| self.revoked_admins.contains_key(*fp))
            .or_else(|| {
                devices
                    .iter()
                    .find(|fp| self.revoked_devices.contains_key(*fp))
            });
        if let Some(fp) = already {
            return Err(GovError::AlreadyRevoked(*fp));
        }
        // `admins` is sorted (checked with the limits), so it can be searched.
        let left = self
            .governors
            .iter()
            .filter(|g| !self.revoked_admins.contains_key(*g) && admins.binary_search(g).is_err())
            .count();
        if left < usize::from(self.quorum) {
            return Err(GovError::GovernorsBelowQuorum {
                left,
                quorum: self.quorum,
            });
        }
        for fp in admins {
            self.revoked_admins.insert(*fp, version);
        }
        for fp in devices {
            self.revoked_devices.insert(*fp, version);
            // A revoked member leaves in the same step; `removed` keeps removals only.
            self.members.remove(fp);
        }
        Ok(())
    }

    /// Admits `m`, approved by entry `e`: admission time within the entry's approval window,
    /// chain valid for this cluster at that time, fingerprint of the certified key, name the
    /// certificate's, name unused, key neither a member nor revoked.
    fn admit(&mut self, root: &TrustRoot, e: &GovEntry, m: &MemberRecord) -> Result<(), GovError> {
        let expires_at = e.meta.expires_at;
        let earliest = expires_at.saturating_sub(MAX_APPROVAL_LIFETIME_SECS);
        if m.admitted_at < earliest || m.admitted_at > expires_at {
            return Err(GovError::AdmittedOutsideWindow {
                node: m.node.clone(),
                admitted_at: m.admitted_at,
                expires_at,
            });
        }
        let chain_err = |reason: String| GovError::MemberChain {
            node: m.node.clone(),
            admitted_at: m.admitted_at,
            reason,
        };
        let id = root
            .verify_device(&m.chain.clone().into(), Some(&self.cluster), m.admitted_at)
            .map_err(|e| chain_err(e.to_string()))?;
        let certified = device_key_fingerprint(&id.public_key)
            .ok_or_else(|| chain_err("the certified key is not a P-256 point".into()))?;
        if certified != m.key_fingerprint {
            return Err(GovError::MemberKey {
                node: m.node.clone(),
                certified,
                found: m.key_fingerprint,
            });
        }
        if id.node != m.node {
            return Err(GovError::MemberName {
                node: m.node.clone(),
                certified: id.node,
            });
        }
        if self.revoked_devices.contains_key(&certified) {
            return Err(GovError::DeviceRevoked(certified));
        }
        if self.members.contains_key(&certified) {
            return Err(GovError::AlreadyMember(certified));
        }
        if self.members.values().any(|x| x.record.node == m.node) {
            return Err(GovError::NameTaken(m.node.clone()));
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(GovError::TooMany {
                what: "members",
                len: self.members.len() + 1,
                max: MAX_MEMBERS,
            });
        }
        self.removed.remove(&certified);
        self.members.insert(
            certified,
            Member {
                record: m.clone(),
                admitted_version: e.version,
            },
        );
        Ok(())
    }
}

/// Counts the approvals of `e` in `cluster` against `who`, with certificates checked within
/// the entry's approval window (a joining node verifies entries approved long ago).
fn count(
    root: &TrustRoot,
    cache: &mut AdminCache,
    cluster: &str,
    e: &GovEntry,
    who: &Approvers<'_>,
    revoked: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<(), GovError> {
    let at = ApprovalTime::Window {
        expires_at: e.meta.expires_at,
    };
    verify_approvals(
        cache,
        root,
        &e.message(cluster),
        &e.approvals,
        at,
        who,
        revoked,
    )
    .map(drop)
    .map_err(|error| GovError::Approvals {
        version: e.version,
        error,
    })
}

/// Verifies a whole log of `cluster` from its genesis (pinned when `pin` is given) and
/// returns the state it leads to. The log's length is not limited here: each request that
/// carries entries limits them ([`super::MAX_GOV_ENTRIES_PER_APPLY`]).
pub fn verify_log(
    root: &TrustRoot,
    cluster: &str,
    pin: Option<[u8; 32]>,
    entries: &[GovEntry],
) -> Result<GovState, GovError> {
    let (first, rest) = entries.split_first().ok_or(GovError::EmptyLog)?;
    let mut cache = AdminCache::default();
    let mut state = GovState::genesis(root, &mut cache, cluster, pin, first)?;
    for e in rest {
        state.apply(root, &mut cache, e)?;
    }
    Ok(state)
}

mod admission;
#[cfg(test)]
mod tests;
