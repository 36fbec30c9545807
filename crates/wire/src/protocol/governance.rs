//! The governance log as a TEE reports it: its head, governors, members and revocations.

use serde::{Deserialize, Serialize};

use crate::governance::{GovEntry, GovState};

/// A current member, as [`GovView`] lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node name.
    pub node: String,
    /// SHA-256 of its certified device key (its member id).
    pub key_fingerprint: [u8; 32],
    /// Version of the entry that admitted it.
    pub admitted_version: u64,
    /// When it was admitted (Unix seconds).
    pub admitted_at: u64,
    /// Format of the attestation evidence it was admitted with (0: none).
    pub evidence_format: u16,
}

/// Answer to [`super::Request::Governance`] and [`super::Request::ApplyGovernance`]: the state
/// of one cluster's governance log in this TEE, signed by D like every answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GovView {
    /// Cluster the log governs.
    pub cluster: String,
    /// Id of its genesis.
    pub genesis_id: [u8; 32],
    /// Version of its last entry.
    pub version: u64,
    /// Hash of its last entry.
    pub head: [u8; 32],
    /// Governor key fingerprints.
    pub governors: Vec<[u8; 32]>,
    /// Distinct governors needed for the next entry.
    pub quorum: u8,
    /// Current members, by key fingerprint.
    pub members: Vec<MemberInfo>,
    /// Revoked admin keys, each with the version that revoked it.
    pub revoked_admins: Vec<([u8; 32], u64)>,
    /// Revoked device keys, each with the version that revoked it.
    pub revoked_devices: Vec<([u8; 32], u64)>,
    /// The entries from the version the request named on, in order (a page).
    pub entries: Vec<GovEntry>,
}

impl GovView {
    /// The view of a verified state, with the entries after the version asked for.
    pub fn of(state: &GovState, entries: Vec<GovEntry>) -> Self {
        GovView {
            cluster: state.cluster.clone(),
            genesis_id: state.genesis_id,
            version: state.version,
            head: state.head,
            governors: state.governors.clone(),
            quorum: state.quorum,
            members: state
                .members
                .iter()
                .map(|(fp, m)| MemberInfo {
                    node: m.record.node.clone(),
                    key_fingerprint: *fp,
                    admitted_version: m.admitted_version,
                    admitted_at: m.record.admitted_at,
                    evidence_format: m.record.evidence.format,
                })
                .collect(),
            revoked_admins: state.revoked_admins.iter().map(|(k, v)| (*k, *v)).collect(),
            revoked_devices: state
                .revoked_devices
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            entries,
        }
    }
}
