//! The cluster governance log (issue 12, items 1 and 4): who the members of a cluster are,
//! who governs it, and which admin and device keys are revoked.
//!
//! The log is a hash chain of [`GovEntry`]s, each approved by a quorum of the governors as of
//! the entry before it. Every verifier (the TEE, the bridge, the node server, the cloud
//! server) replays it with the same code, [`GovState`] and [`verify_log`]; only the TEE's
//! verdict is authoritative. Members and admins are named by the fingerprint of their
//! certified key, so a renewed certificate keeps its membership.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::approval::{Action, Approval};
use crate::field::put;
use crate::policy::{put_fingerprints, put_rules, Rule};
use crate::protocol::{CertChain, RequestMeta};

mod admission;
mod error;
mod limits;
mod stored;
mod verify;

pub use admission::*;
pub use error::{DeviceRefusal, GovError};
pub use verify::{verify_log, GovState, Member};

/// Most members of one cluster.
pub const MAX_MEMBERS: usize = 64;
/// Most governors of one cluster.
pub const MAX_GOVERNORS: usize = crate::policy::MAX_GROUP;
/// Most revoked key fingerprints (admins and devices together) of one cluster.
pub const MAX_REVOKED: usize = 4096;
/// Largest attestation evidence document, bytes (a TDX quote with its collateral is about
/// 21 KiB; as hex it must still fit the cloud server's 160 KiB body limit).
pub const MAX_EVIDENCE: usize = 48 * 1024;
/// Longest reason text of a removal or revocation, bytes.
pub const MAX_REASON: usize = 1024;
/// Most entries one apply request may carry.
pub const MAX_GOV_ENTRIES_PER_APPLY: usize = 256;
/// Domain separation tag of [`genesis_id`].
pub const GENESIS_DOMAIN: &[u8] = b"CUSTOS-GENESIS-V1\0";
/// Domain separation tag of [`entry_hash`].
pub const ENTRY_DOMAIN: &[u8] = b"CUSTOS-GOV-ENTRY-V1\0";

/// Attestation evidence that binds a node's device key: [`EVIDENCE_NONE`] or
/// [`EVIDENCE_ADMISSION_V1`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Evidence {
    /// Format of `document` (0: no evidence).
    pub format: u16,
    /// The evidence, at most [`MAX_EVIDENCE`] bytes.
    pub document: Vec<u8>,
}

/// A member as admitted: its device key and the certificate it was admitted with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    /// Node name; unique among current members, and the name its certificate carries.
    pub node: String,
    /// SHA-256 of the certified device key D (SubjectPublicKeyInfo DER): the member's id,
    /// which survives certificate renewal.
    pub key_fingerprint: [u8; 32],
    /// The device chain at admission (informational once admitted).
    pub chain: CertChain,
    /// Attestation evidence offered at admission.
    pub evidence: Evidence,
    /// When it was admitted (Unix seconds): signed, within the entry's approval window, and
    /// the instant the chain is verified at.
    pub admitted_at: u64,
}

/// What one log entry changes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum GovChange {
    /// The first entry: the governors, their quorum and the first members.
    Genesis {
        /// Governor key fingerprints: sorted, distinct, 1..=[`MAX_GOVERNORS`].
        governors: Vec<[u8; 32]>,
        /// Distinct governors needed for every later entry.
        quorum: u8,
        /// First members, 1..=[`MAX_MEMBERS`].
        members: Vec<MemberRecord>,
        /// Cluster rules: at most the [`MeasurementPolicy::rule`] (any other rule is refused).
        rules: Vec<Rule>,
    },
    /// Admits a node.
    Admit {
        /// The new member.
        member: MemberRecord,
    },
    /// Removes a member.
    Remove {
        /// The member's key fingerprint.
        key_fingerprint: [u8; 32],
        /// Why (shown in the history).
        reason: String,
    },
    /// Revokes admin and device keys; a revoked device that is a member is removed with it.
    Revoke {
        /// Admin key fingerprints, sorted and distinct.
        admins: Vec<[u8; 32]>,
        /// Device key fingerprints, sorted and distinct.
        devices: Vec<[u8; 32]>,
        /// Why (shown in the history).
        reason: String,
    },
    /// Replaces the governors and their quorum.
    SetGovernors {
        /// Governor key fingerprints: sorted, distinct, 1..=[`MAX_GOVERNORS`].
        governors: Vec<[u8; 32]>,
        /// Distinct governors needed.
        quorum: u8,
    },
    /// Replaces the measurement policy nodes are admitted under (members already admitted
    /// stay).
    SetMeasurementPolicy {
        /// The new policy.
        policy: MeasurementPolicy,
    },
}

/// One entry of a cluster's governance log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GovEntry {
    /// Position: genesis is 0, then +1 per entry.
    pub version: u64,
    /// [`entry_hash`] of the entry at `version - 1` (zero for the genesis).
    pub prev: [u8; 32],
    /// Request id and expiry the governors signed.
    pub meta: RequestMeta,
    /// The change.
    pub change: GovChange,
    /// The governors' approvals of [`Action::Governance`].
    pub approvals: Vec<Approval>,
}

impl GovChange {
    /// The approval message tag of this kind of change.
    pub fn tag(&self) -> &'static [u8] {
        match self {
            GovChange::Genesis { .. } => b"gov-genesis",
            GovChange::Admit { .. } => b"gov-admit",
            GovChange::Remove { .. } => b"gov-remove",
            GovChange::Revoke { .. } => b"gov-revoke",
            GovChange::SetGovernors { .. } => b"gov-set-governors",
            GovChange::SetMeasurementPolicy { .. } => b"gov-set-measurement-policy",
        }
    }

    /// Canonical bytes, each a [`put`] field (lists as their length, u32 BE, then each
    /// item): governors, [quorum], members, rules; or the member; or the removed key and
    /// reason; or admin keys, device keys, reason; or governors, [quorum]; or the policy's
    /// canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        match self {
            GovChange::Genesis {
                governors,
                quorum,
                members,
                rules,
            } => {
                put_fingerprints(&mut out, governors);
                put(&mut out, &[*quorum]);
                put(&mut out, &(members.len() as u32).to_be_bytes());
                for m in members {
                    put_member(&mut out, m);
                }
                put_rules(&mut out, rules);
            }
            GovChange::Admit { member } => put_member(&mut out, member),
            GovChange::Remove {
                key_fingerprint,
                reason,
            } => {
                put(&mut out, key_fingerprint);
                put(&mut out, reason.as_bytes());
            }
            GovChange::Revoke {
                admins,
                devices,
                reason,
            } => {
                put_fingerprints(&mut out, admins);
                put_fingerprints(&mut out, devices);
                put(&mut out, reason.as_bytes());
            }
            GovChange::SetGovernors { governors, quorum } => {
                put_fingerprints(&mut out, governors);
                put(&mut out, &[*quorum]);
            }
            GovChange::SetMeasurementPolicy { policy } => put(&mut out, &policy.encode()),
        }
        out
    }
}

fn put_member(out: &mut Vec<u8>, m: &MemberRecord) {
    put(out, m.node.as_bytes());
    put(out, &m.key_fingerprint);
    put(out, &m.chain.device);
    put(out, &m.chain.cluster_ca);
    put(out, &m.chain.device_ca);
    put(out, &m.evidence.format.to_be_bytes());
    put(out, &m.evidence.document);
    put(out, &m.admitted_at.to_be_bytes());
}

impl GovEntry {
    /// The exact bytes the governors sign for this entry in `cluster`.
    pub fn message(&self, cluster: &str) -> Vec<u8> {
        Action::Governance {
            version: self.version,
            prev: &self.prev,
            change: &self.change,
        }
        .message(cluster, &self.meta)
    }
}

/// The id of a cluster's log: SHA-256 of [`GENESIS_DOMAIN`], the cluster name (a field) and
/// the genesis change. It leaves out the approvals, so it can be printed and pinned before
/// anyone signs; a forged genesis with the same content would need the governors' keys.
pub fn genesis_id(cluster: &str, genesis: &GovChange) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    let mut name = Vec::with_capacity(4 + cluster.len());
    put(&mut name, cluster.as_bytes());
    h.update(name);
    h.update(genesis.encode());
    h.finalize().into()
}

/// Reads a genesis id as configured (64 hex digits, surrounding blanks ignored); the error
/// names what is wrong with it.
pub fn parse_genesis_id(text: &str) -> Result<[u8; 32], String> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("genesis_id {text:?} is not 32 bytes of hex (64 digits)"))
}

/// The hash that chains entries: SHA-256 of [`ENTRY_DOMAIN`] and the approval message, which
/// covers cluster, version, prev, request id, expiry and change. The approvals are evidence
/// for the content, not part of it: the same approved content can travel with its approvals
/// in another order, with more of them than the quorum, or with another valid certificate of
/// the same key, and every verifier still agrees on one hash, so nobody who relays an entry
/// can fork the log by re-packaging its approvals.
pub fn entry_hash(cluster: &str, e: &GovEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(e.message(cluster));
    h.finalize().into()
}

/// The member id of a device key: SHA-256 of the SubjectPublicKeyInfo DER of the P-256 key
/// given as a SEC1 point (as `custos_pki::DeviceIdentity::public_key` holds it), the same
/// fingerprint `custos_pki::key_fingerprint` gives an admin key. `None` if the bytes are not
/// a P-256 point.
pub fn device_key_fingerprint(sec1: &[u8]) -> Option<[u8; 32]> {
    use p256::pkcs8::EncodePublicKey;
    let key = p256::PublicKey::from_sec1_bytes(sec1).ok()?;
    let spki = key.to_public_key_der().ok()?;
    Some(custos_pki::key_fingerprint(spki.as_bytes()))
}

#[cfg(test)]
mod tests;
