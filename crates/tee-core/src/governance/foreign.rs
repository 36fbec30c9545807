//! Other clusters' governance logs (plan step D5): what lets this TEE tell a member of
//! another cluster from any device that cluster's CA certified, when the two co-sign with a
//! threshold key.
//!
//! A threshold key's policy may anchor each share's cluster at a genesis
//! ([`KeyPolicy::cluster_anchors`], approved by the key's group at creation). A foreign log
//! is stored only when its genesis is such an anchor of a key this TEE holds (so what anyone
//! can make it store is bounded by what its admins approved), verified here from that genesis
//! against the pinned Root like this cluster's own log, and kept per genesis: a second
//! genesis made for the same cluster name is another log, believed only where a key anchors
//! it.
//!
//! Sealed records, per foreign log (`<g>`: its genesis id in hex):
//!
//! | record | body |
//! |---|---|
//! | `govf/<g>/e/<version, 16 hex digits>` | postcard of the [`GovEntry`] |
//! | `govf/<g>/head` | version (u64 BE) ‖ head hash (32) ‖ genesis id (32) ‖ cluster name (UTF-8) |
//!
//! Freshness is the coordinator's duty: it pushes a cluster's log again after each change
//! (the log itself cannot be forged, only withheld), and a removal reaches this TEE with the
//! next push.

use std::collections::BTreeMap;

use custos_pki::DeviceIdentity;
use custos_wire::governance::{genesis_id, GovEntry};
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::*;

use super::{device_refused, essential, rejected, Governed};
use crate::platform::Platform;
use crate::{OpenError, TeeCore};

const FOREIGN_ROOT: &str = "govf/";

/// The foreign logs this TEE holds, by genesis id.
#[derive(Default)]
pub(crate) struct ForeignLogs(BTreeMap<[u8; 32], Governed>);

/// Record prefix of the foreign log of genesis `id`.
fn prefix(id: &[u8; 32]) -> String {
    format!("{FOREIGN_ROOT}{}/", hex::encode(id))
}

impl<P: Platform> TeeCore<P> {
    /// Stores or extends the log of another cluster: a page from the genesis must start a
    /// log some held key anchors; a later page must continue a log held.
    pub(super) fn apply_foreign_governance(
        &mut self,
        cluster: &str,
        entries: &[GovEntry],
    ) -> Outcome {
        let first = &entries[0];
        let genesis = if first.version == 0 {
            let id = genesis_id(cluster, &first.change);
            if !self.foreign.0.contains_key(&id) && !self.anchors(cluster, &id) {
                return Err(rejected(format!(
                    "no held key anchors cluster {cluster:?} at genesis {}",
                    hex::encode(id)
                )));
            }
            id
        } else {
            let held = self
                .foreign
                .0
                .iter()
                .filter(|(_, g)| g.state.cluster == cluster);
            // A page past the genesis belongs to the held log it continues. Else, behind a
            // held log's head it is a gap to fill (the coordinator then sends from the
            // genesis); only within every held log's range is it another history.
            let mut found = None;
            let mut gap_after = None;
            let mut any = false;
            for (id, g) in held {
                any = true;
                if g.continues(first) {
                    found = Some(*id);
                } else if first.version > g.state.version.saturating_add(1) {
                    gap_after = gap_after.max(Some(g.state.version));
                }
            }
            match (found, gap_after) {
                (Some(id), _) => id,
                (None, Some(head)) => {
                    return Err(TeeError::GovernanceGap {
                        head,
                        first: first.version,
                    })
                }
                (None, None) if any => {
                    return Err(rejected(format!(
                        "entry {} of cluster {cluster:?} continues no log held here (a fork)",
                        first.version
                    )))
                }
                (None, None) => {
                    return Err(rejected(format!(
                        "no log of cluster {cluster:?} is held here; send it from its genesis"
                    )))
                }
            }
        };
        let root = self.root()?.clone();
        let (next, fresh) = Governed::extend(
            self.foreign.0.get(&genesis),
            &root,
            &mut self.admins,
            cluster,
            Some(genesis),
            entries,
        )?;
        if !fresh.is_empty() {
            self.store_governance(&prefix(&genesis), &next, &fresh)?;
        }
        let view = GovView::of(&next.state, Vec::new());
        self.foreign.0.insert(genesis, next);
        Ok(Response::Governance(view))
    }

    /// Whether a held threshold key anchors the share of `cluster` at genesis `id`.
    fn anchors(&self, cluster: &str, id: &[u8; 32]) -> bool {
        self.threshold.keys.values().any(|k| {
            k.policy
                .as_ref()
                .and_then(KeyPolicy::cluster_anchors)
                .is_some_and(|anchors| {
                    anchors
                        .iter()
                        .zip(&k.info.clusters)
                        .any(|(a, c)| a == id && c == cluster)
                })
        })
    }

    /// Refuses a device of another cluster that is not a current member of the log its
    /// share's cluster is anchored at; `ForeignLogMissing` while that log is not held.
    pub(crate) fn check_foreign_member(
        &self,
        peer: &DeviceIdentity,
        anchor: &[u8; 32],
    ) -> Result<(), TeeError> {
        let log = self
            .foreign
            .0
            .get(anchor)
            .filter(|g| g.state.cluster == peer.cluster)
            .ok_or_else(|| TeeError::ForeignLogMissing {
                cluster: peer.cluster.clone(),
                genesis_id: *anchor,
            })?;
        log.state
            .check_device(peer)
            .map(|_| ())
            .map_err(device_refused)
    }

    /// Whether the log of genesis `id` is held.
    pub(crate) fn holds_foreign_log(&self, id: &[u8; 32]) -> bool {
        self.foreign.0.contains_key(id)
    }

    /// Loads every sealed foreign log at open, each verified again from its genesis (which
    /// must be the one its record name carries); one that does not is essential, as for
    /// this cluster's log.
    pub(super) fn load_foreign_logs(&mut self) -> Result<(), OpenError> {
        let mut prefixes: Vec<String> = self
            .platform
            .list(FOREIGN_ROOT)?
            .iter()
            .filter_map(|r| {
                let rest = r.as_str().strip_prefix(FOREIGN_ROOT)?;
                Some(format!("{FOREIGN_ROOT}{}/", rest.split('/').next()?))
            })
            .collect();
        prefixes.sort();
        prefixes.dedup();
        for p in prefixes {
            let head_name = format!("{p}head");
            let head = self
                .unseal_essential(&head_name)?
                .ok_or_else(|| essential(&head_name, "missing while log entries exist"))?;
            if head.len() <= 72 {
                return Err(essential(&head_name, format!("{} bytes", head.len())));
            }
            let cluster = std::str::from_utf8(&head[72..])
                .map_err(|e| essential(&head_name, e))?
                .to_string();
            let id: [u8; 32] = head[40..72].try_into().expect("32 bytes");
            if prefix(&id) != p {
                return Err(essential(
                    &head_name,
                    "the genesis differs from the record name",
                ));
            }
            let log = self.load_log(&p, &head, &cluster, Some(id))?;
            self.foreign.0.insert(id, log);
        }
        Ok(())
    }
}
