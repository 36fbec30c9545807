//! Cluster governance inside the TEE (issue 12, items 1 and 4): the cluster's member list and
//! revocation list, as a hash-chained log of admin-approved entries that this TEE verified
//! itself against the pinned Root ([`custos_wire::governance`]), sealed entry by entry.
//!
//! Once governed, the TEE hands keys only to members ([`TeeCore::check_member`] in key export,
//! key import and threshold participation) and counts no approval of a revoked admin. The log
//! is adopted, never trusted: the first state is a genesis approved by a quorum of the
//! governors it names (and equal to the genesis pinned at provisioning, when one was), and
//! each later entry must extend the head this TEE holds.
//!
//! Sealed records:
//!
//! | record | body |
//! |---|---|
//! | `gov/e/<version, 16 hex digits>` | postcard of the [`GovEntry`] |
//! | `gov/head` | version (u64 BE) ‖ head hash (32) ‖ genesis id (32) |
//! | `gov/pin` | the genesis id this node was provisioned to accept (32) |
//!
//! A log record that does not open or does not verify stops the TEE from opening
//! ([`crate::OpenError::Essential`]): a TEE never runs on a partial member list.

use custos_pki::{AdminCache, DeviceIdentity, TrustRoot};
use custos_wire::governance::{
    device_key_fingerprint, entry_hash, verify_log, DeviceRefusal, GovChange, GovEntry, GovError,
    GovState, MAX_GOV_ENTRIES_PER_APPLY,
};
use custos_wire::protocol::*;

use crate::platform::{Platform, RecordId};

mod foreign;
use crate::{rec, storage, OpenError, TeeCore};
pub(crate) use foreign::ForeignLogs;

/// Prefix of this cluster's log records (`e/<version>` and `head` follow it).
const OWN_PREFIX: &str = "gov/";
const GOV_ENTRY_PREFIX: &str = "gov/e/";
const REC_GOV_HEAD: &str = "gov/head";
const REC_GOV_PIN: &str = "gov/pin";

/// Encoded entries one `Governance` page carries at most (besides the entry count limit):
/// half of a request's size limit, so a page is always one `ApplyGovernance` for a peer.
const MAX_GOV_PAGE_BYTES: usize = MAX_REQUEST_LEN / 2;

/// The verified log this TEE holds: the state it leads to and each entry's hash, by version.
#[derive(Clone)]
pub(crate) struct Governed {
    pub(crate) state: GovState,
    hashes: Vec<[u8; 32]>,
}

fn entry_record(prefix: &str, version: u64) -> Result<RecordId, TeeError> {
    RecordId::new(format!("{prefix}e/{version:016x}")).map_err(storage)
}

fn head_record(prefix: &str) -> Result<RecordId, TeeError> {
    RecordId::new(format!("{prefix}head")).map_err(storage)
}

/// One request's entries: at least one, at most [`MAX_GOV_ENTRIES_PER_APPLY`].
fn check_page(entries: &[GovEntry]) -> Result<(), TeeError> {
    if entries.is_empty() || entries.len() > MAX_GOV_ENTRIES_PER_APPLY {
        return Err(TeeError::InvalidRequest(format!(
            "{} governance entries, 1..={MAX_GOV_ENTRIES_PER_APPLY} per request",
            entries.len()
        )));
    }
    Ok(())
}

impl Governed {
    /// The log `base` extended by `entries` (or started by them, from a genesis equal to
    /// `pin` when one is given), and the entries that were new. Entries already held must be
    /// the very same bytes (a repeated apply is harmless, a fork is refused); the rest must
    /// follow the head without a gap.
    pub(crate) fn extend<'e>(
        base: Option<&Governed>,
        root: &TrustRoot,
        admins: &mut AdminCache,
        cluster: &str,
        pin: Option<[u8; 32]>,
        entries: &'e [GovEntry],
    ) -> Result<(Governed, Vec<&'e GovEntry>), TeeError> {
        let mut fresh: Vec<&GovEntry> = Vec::new();
        let (mut next, mut rest) = match base {
            Some(g) => (g.clone(), entries),
            None => {
                let state = GovState::genesis(root, admins, cluster, pin, &entries[0])
                    .map_err(|e| refused(0, e))?;
                fresh.push(&entries[0]);
                let first = Governed {
                    state,
                    hashes: vec![entry_hash(cluster, &entries[0])],
                };
                (first, &entries[1..])
            }
        };
        while let Some(e) = rest.first() {
            let Some(held) = next.hashes.get(e.version as usize) else {
                break;
            };
            if *held != entry_hash(cluster, e) {
                return Err(rejected(format!(
                    "entry {} differs from the one this node holds",
                    e.version
                )));
            }
            rest = &rest[1..];
        }
        for e in rest {
            let expected = next.hashes.len() as u64;
            if e.version != expected {
                return Err(TeeError::GovernanceGap {
                    head: expected - 1,
                    first: e.version,
                });
            }
            // An admission's platform evidence is this TEE's own check, against the policy in
            // force before the entry, and only once the entry's approvals and the log's rules
            // (everyone's, in `apply`) hold: nobody makes the TEE verify unapproved evidence.
            let before = matches!(e.change, GovChange::Admit { .. }).then(|| next.state.clone());
            next.state
                .apply(root, admins, e)
                .map_err(|r| refused(e.version, r))?;
            if let (Some(before), GovChange::Admit { member }) = (before, &e.change) {
                crate::admission::check_evidence(&before, member)
                    .map_err(|r| refused(e.version, r))?;
            }
            next.hashes.push(entry_hash(cluster, e));
            fresh.push(e);
        }
        Ok((next, fresh))
    }

    /// Whether `e` follows on an entry this log holds (its `prev` is that entry's hash):
    /// how a page that starts past the genesis finds the log it belongs to.
    pub(crate) fn continues(&self, e: &GovEntry) -> bool {
        e.version
            .checked_sub(1)
            .and_then(|v| self.hashes.get(v as usize))
            == Some(&e.prev)
    }
}

/// A device refused by a log, as the TEE names it.
pub(crate) fn device_refused(r: DeviceRefusal) -> TeeError {
    match r {
        DeviceRefusal::Revoked {
            node,
            key_fingerprint,
        } => TeeError::DeviceRevoked {
            node,
            key_fingerprint,
        },
        DeviceRefusal::NotAMember {
            node,
            key_fingerprint,
        }
        | DeviceRefusal::WrongName {
            node,
            key_fingerprint,
            ..
        } => TeeError::NotAMember {
            node,
            key_fingerprint,
        },
    }
}

fn rejected(reason: impl std::fmt::Display) -> TeeError {
    TeeError::GovernanceRejected(reason.to_string())
}

/// A refused entry: an approval by a revoked admin or by an admin outside the governors keeps
/// its own typed refusal (naming the admin); anything else is `GovernanceRejected`.
fn refused(version: u64, e: GovError) -> TeeError {
    match e {
        GovError::Approvals {
            error: error @ (TeeError::AdminRevoked { .. } | TeeError::ApproverNotInGroup { .. }),
            ..
        } => error,
        e => rejected(format!("entry {version}: {e}")),
    }
}

impl<P: Platform> TeeCore<P> {
    /// Adopts or extends this cluster's governance log. Entries this TEE already holds must
    /// be the very same (a repeated apply is harmless); the rest must extend the head. The new
    /// state is sealed and committed before the answer, and this TEE must be a member of it:
    /// a node never adopts a log that does not name it.
    pub(crate) fn apply_governance(&mut self, cluster: &str, entries: &[GovEntry]) -> Outcome {
        let (own, _) = self.identity()?.clone();
        check_page(entries)?;
        if cluster != own.cluster {
            return self.apply_foreign_governance(cluster, entries);
        }
        let root = self.root()?.clone();
        let adopting = self.gov.is_none();
        let (next, fresh) = Governed::extend(
            self.gov.as_ref(),
            &root,
            &mut self.admins,
            cluster,
            self.gov_pin,
            entries,
        )?;
        // A node adopts only a log that names it; a member that is later removed still
        // follows the log (and from then on gets nothing from its peers).
        let own_key = device_key_fingerprint(&own.public_key).unwrap_or([0; 32]);
        if adopting && next.state.member(&own_key).is_none() {
            return Err(TeeError::NotAMember {
                node: own.node.clone(),
                key_fingerprint: own_key,
            });
        }
        if !fresh.is_empty() {
            self.store_governance(OWN_PREFIX, &next, &fresh)?;
            self.gov = Some(next);
        }
        Ok(Response::Governance(self.governance_view(u64::MAX)?))
    }

    /// Seals the new entries and the head under `prefix` (this cluster's log, or a foreign
    /// one), and commits them before anything answers; the caller puts the new state in
    /// memory only after that, so a failed commit leaves the old one.
    pub(crate) fn store_governance(
        &mut self,
        prefix: &str,
        next: &Governed,
        fresh: &[&GovEntry],
    ) -> Result<(), TeeError> {
        for e in fresh {
            let body = postcard::to_allocvec(*e).map_err(|e| TeeError::Storage(e.to_string()))?;
            self.platform
                .seal(&entry_record(prefix, e.version)?, &body)
                .map_err(storage)?;
        }
        let mut head = next.state.version.to_be_bytes().to_vec();
        head.extend_from_slice(&next.state.head);
        head.extend_from_slice(&next.state.genesis_id);
        // A foreign log's head also names its cluster (the approvals are bound to it, and
        // the record name carries only the genesis).
        if prefix != OWN_PREFIX {
            head.extend_from_slice(next.state.cluster.as_bytes());
        }
        self.platform
            .seal(&head_record(prefix)?, &head)
            .map_err(storage)?;
        self.commit_pending().map_err(storage)
    }

    /// The log this TEE holds, with the entries from version `since` on (at most
    /// [`MAX_GOV_ENTRIES_PER_APPLY`], so a peer can page through it).
    pub(crate) fn governance_view(&mut self, since: u64) -> Result<GovView, TeeError> {
        let g = self.gov.as_ref().ok_or(TeeError::NotGoverned)?;
        let last = g.state.version;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut v = since;
        while v <= last && entries.len() < MAX_GOV_ENTRIES_PER_APPLY {
            let body = self
                .platform
                .unseal(&entry_record(OWN_PREFIX, v)?)
                .map_err(storage)?
                .ok_or_else(|| TeeError::Storage(format!("governance entry {v} is missing")))?;
            // A page must fit one ApplyGovernance when a peer feeds it on: stop before the
            // byte budget, but always give at least one entry so paging makes progress.
            bytes += body.len();
            if bytes > MAX_GOV_PAGE_BYTES && !entries.is_empty() {
                break;
            }
            entries.push(
                GovEntry::decode_stored(&body).map_err(|e| TeeError::Storage(e.to_string()))?,
            );
            let Some(next) = v.checked_add(1) else { break };
            v = next;
        }
        let g = self.gov.as_ref().expect("checked above");
        Ok(GovView::of(&g.state, entries))
    }

    /// Pins the genesis this node will accept; once, before any log is held.
    pub(crate) fn pin_genesis(&mut self, genesis_id: [u8; 32]) -> Outcome {
        self.identity()?;
        if self.gov_pin.is_some() || self.gov.is_some() {
            return Err(TeeError::GovernanceRejected(
                "a genesis is already pinned or a governance log is held".into(),
            ));
        }
        self.seal_now(REC_GOV_PIN, &genesis_id)?;
        self.gov_pin = Some(genesis_id);
        Ok(Response::GenesisPinned { genesis_id })
    }

    /// Refuses a peer device that is not a current member of this governed cluster (removed,
    /// revoked, never admitted, or certified under another member's name). An ungoverned TEE
    /// keeps today's rule: the certificate chain alone.
    pub(crate) fn check_member(&self, peer: &DeviceIdentity) -> Result<(), TeeError> {
        let Some(g) = &self.gov else {
            return Ok(());
        };
        g.state
            .check_device(peer)
            .map(|_| ())
            .map_err(device_refused)
    }

    /// Loads the sealed logs at open (this cluster's and the foreign ones) and verifies each
    /// again from its genesis.
    pub(crate) fn load_governance(&mut self) -> Result<(), OpenError> {
        if let Some(pin) = self.unseal_essential(REC_GOV_PIN)? {
            self.gov_pin = Some(
                pin[..]
                    .try_into()
                    .map_err(|_| essential(REC_GOV_PIN, "not 32 bytes"))?,
            );
        }
        let Some(head) = self.unseal_essential(REC_GOV_HEAD)? else {
            // Entries without a head are a log whose head was deleted: opening as ungoverned
            // would silently fall back to certificates alone.
            if !self.platform.list(GOV_ENTRY_PREFIX)?.is_empty() {
                return Err(essential(REC_GOV_HEAD, "missing while log entries exist"));
            }
            return self.load_foreign_logs();
        };
        if head.len() != 72 {
            return Err(essential(
                REC_GOV_HEAD,
                format!("{} bytes, not 72", head.len()),
            ));
        }
        // The cluster comes from the sealed device key, not from a certificate valid now: a
        // node whose certificate lapsed must still open (with its log) to be re-certified.
        let Some(cluster) = self.device.as_ref().map(|d| d.cluster.clone()) else {
            return Err(essential(
                REC_GOV_HEAD,
                "a governance log without a device key",
            ));
        };
        self.gov = Some(self.load_log(OWN_PREFIX, &head, &cluster, self.gov_pin)?);
        self.load_foreign_logs()
    }

    /// A sealed record that must open if present.
    pub(crate) fn unseal_essential(
        &mut self,
        name: &str,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, OpenError> {
        self.platform
            .unseal(&rec(name))
            .map_err(|e| essential(name, e))
    }

    /// Reads the entries of the log under `prefix` up to its sealed `head` (version ‖ head
    /// hash ‖ genesis id, then anything the caller parsed already) and verifies them again
    /// from the genesis against the pinned Root.
    pub(crate) fn load_log(
        &mut self,
        prefix: &str,
        head: &[u8],
        cluster: &str,
        pin: Option<[u8; 32]>,
    ) -> Result<Governed, OpenError> {
        let head_name = format!("{prefix}head");
        let root = self
            .root
            .clone()
            .ok_or_else(|| essential(&head_name, "a governance log without a pinned root"))?;
        let version = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let mut entries = Vec::new();
        for v in 0..=version {
            let name = format!("{prefix}e/{v:016x}");
            let body = self
                .unseal_essential(&name)?
                .ok_or_else(|| essential(&name, "missing from the log"))?;
            entries.push(GovEntry::decode_stored(&body).map_err(|e| essential(&name, e))?);
        }
        let state = verify_log(&root, cluster, pin, &entries)
            .map_err(|e| essential(&head_name, format!("the sealed log does not verify: {e}")))?;
        if state.head[..] != head[8..40] || state.genesis_id[..] != head[40..72] {
            return Err(essential(
                &head_name,
                "the head does not match the sealed entries",
            ));
        }
        let hashes = entries.iter().map(|e| entry_hash(cluster, e)).collect();
        Ok(Governed { state, hashes })
    }
}

/// A governance record that stops the TEE from opening.
pub(crate) fn essential(record: &str, reason: impl std::fmt::Display) -> OpenError {
    OpenError::Essential {
        record: record.into(),
        reason: reason.to_string(),
    }
}
