//! A cluster's governance log built the way the governors build it: each entry names its
//! predecessor's hash and carries real approvals by the test admins (alice, bob, carol) of
//! [`crate::Pki`], so every TEE, bridge and node verifies it with the production code.

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_wire::approval::Approval;
use custos_wire::governance::{
    device_key_fingerprint, entry_hash, Evidence, GovChange, GovEntry, MemberRecord,
};
use custos_wire::protocol::{CertChain, Request, RequestMeta, Response, TeeError};

use crate::pki::Pki;
use crate::platform::now;

/// How long the test governors' approvals stay valid.
const APPROVAL_SECS: u64 = 3600;

/// A member record for the device whose certified chain is `chain` (its name and key read
/// from the verified certificate), admitted now, with no attestation evidence.
pub fn member(pki: &Pki, chain: &CertChain) -> MemberRecord {
    let id = pki
        .root
        .verify_device(&chain.clone().into(), None, now())
        .expect("a device chain of this PKI");
    MemberRecord {
        node: id.node,
        key_fingerprint: device_key_fingerprint(&id.public_key).expect("a P-256 device key"),
        chain: chain.clone(),
        evidence: Evidence::default(),
        admitted_at: now(),
    }
}

/// The key fingerprints of test admins, sorted as a log requires.
pub fn admin_keys(pki: &Pki, names: &[&str]) -> Vec<[u8; 32]> {
    let mut keys: Vec<[u8; 32]> = names
        .iter()
        .map(|n| pki.admin(n).key_fingerprint())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// One cluster's log under construction.
pub struct GovLog<'a> {
    pki: &'a Pki,
    cluster: String,
    entries: Vec<GovEntry>,
}

impl<'a> GovLog<'a> {
    /// A genesis naming `governors` (quorum `quorum`) and `members`, approved by `signers`,
    /// with the development measurement policy (software-platform nodes are admitted).
    pub fn genesis(
        pki: &'a Pki,
        cluster: &str,
        governors: &[&str],
        quorum: u8,
        members: Vec<MemberRecord>,
        signers: &[&str],
    ) -> Self {
        let mut log = GovLog {
            pki,
            cluster: cluster.into(),
            entries: Vec::new(),
        };
        log.push(
            GovChange::Genesis {
                governors: admin_keys(pki, governors),
                quorum,
                members,
                // Test clusters admit software-platform nodes, as the demo's do.
                rules: vec![custos_wire::governance::MeasurementPolicy::development().rule()],
            },
            signers,
        );
        log
    }

    /// Appends the next entry with `change`, approved by `signers`; returns it.
    pub fn push(&mut self, change: GovChange, signers: &[&str]) -> &GovEntry {
        let entry = self.next_entry(change, signers);
        self.entries.push(entry);
        self.entries.last().expect("just pushed")
    }

    /// The entry that would come next, without appending it (for refused attempts).
    pub fn next_entry(&self, change: GovChange, signers: &[&str]) -> GovEntry {
        self.next_entry_expiring(change, signers, now() + APPROVAL_SECS)
    }

    /// [`GovLog::next_entry`] whose approvals expire at `expires_at` (Unix seconds): an
    /// entry approved long ago, or shelved and relayed late.
    pub fn next_entry_expiring(
        &self,
        change: GovChange,
        signers: &[&str],
        expires_at: u64,
    ) -> GovEntry {
        let (version, prev) = match self.entries.last() {
            Some(last) => (last.version + 1, entry_hash(&self.cluster, last)),
            None => (0, [0; 32]),
        };
        let mut request_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut request_id);
        let mut entry = GovEntry {
            version,
            prev,
            meta: RequestMeta {
                request_id,
                expires_at,
            },
            change,
            approvals: Vec::new(),
        };
        let message = entry.message(&self.cluster);
        entry.approvals = signers
            .iter()
            .map(|n| {
                let s = self.pki.admin(n);
                Approval::by_key_file(s, &message).expect("a test admin's file key signs")
            })
            .collect();
        entry
    }

    /// Admits `member`, approved by `signers`.
    pub fn admit(&mut self, member: MemberRecord, signers: &[&str]) -> &GovEntry {
        self.push(GovChange::Admit { member }, signers)
    }

    /// Removes the member with this key fingerprint, approved by `signers`.
    pub fn remove(&mut self, key_fingerprint: [u8; 32], signers: &[&str]) -> &GovEntry {
        self.push(
            GovChange::Remove {
                key_fingerprint,
                reason: "decommissioned in a test".into(),
            },
            signers,
        )
    }

    /// Revokes the keys of admins `admins` and of the devices `devices`.
    pub fn revoke(
        &mut self,
        admins: &[&str],
        devices: Vec<[u8; 32]>,
        signers: &[&str],
    ) -> &GovEntry {
        self.push(
            GovChange::Revoke {
                admins: admin_keys(self.pki, admins),
                devices,
                reason: "compromised in a test".into(),
            },
            signers,
        )
    }

    /// The cluster this log governs.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Every entry, from the genesis.
    pub fn entries(&self) -> &[GovEntry] {
        &self.entries
    }
}

/// The device chain `core` holds.
pub fn chain<P: Platform>(core: &mut TeeCore<P>) -> CertChain {
    match crate::call_core(core, &Request::DeviceChain) {
        Ok(Response::DeviceChain(c)) => c,
        other => panic!("expected the device chain, got {other:?}"),
    }
}

/// Has `core` apply `entries` of `cluster`'s log; the version it then holds, or its refusal.
pub fn apply<P: Platform>(
    core: &mut TeeCore<P>,
    cluster: &str,
    entries: &[GovEntry],
) -> Result<u64, TeeError> {
    let request = Request::ApplyGovernance {
        cluster: cluster.into(),
        entries: entries.to_vec(),
    };
    match crate::call_core(core, &request) {
        Ok(Response::Governance(v)) => Ok(v.version),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    }
}
