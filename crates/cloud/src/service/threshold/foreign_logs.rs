//! Other clusters' governance logs in each co-signer's TEE (issue 12, plan step D5). A
//! threshold key whose policy anchors each share's cluster at its log's genesis is used with
//! a participant of another cluster only if that participant is a current member of that
//! cluster's log, which the TEE must hold: before a session starts, this server pushes to
//! each participant the current log of every other governed cluster taking part (once per
//! version and node), and when a start is still refused `foreign_log_missing` it pushes the
//! log named and sends the start once more.
//!
//! The TEE verifies a pushed log itself from its genesis against its pinned Root, and stores
//! it only under the anchor of a key it holds: a push decides nothing, it only brings what
//! the TEE needs to decide.

use custos_wire::governance::{GovEntry, MAX_GOV_ENTRIES_PER_APPLY};

use super::*;
use crate::service::governance::VerifiedLog;

/// Most bytes of entries (postcard, as they travel) one push carries, well within the TEE's
/// request limit; a longer log goes in several pushes, each extending the last.
const MAX_PUSH_BYTES: usize = 1024 * 1024;

/// The start of the TEE's refusal of a log that anchors no key it holds
/// (`GovernanceRejected`): a node holding only keys without anchors, which checks other
/// clusters' participants by certificate and needs no log.
const NOT_ANCHORED: &str = "no held key anchors";

/// What a node's TEE did with a pushed log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// It holds the log (up to the version pushed, or later).
    Applied,
    /// It holds no key anchored at that cluster, so it keeps no log of it.
    NotAnchored,
}

/// `entries` in pushes within [`MAX_GOV_ENTRIES_PER_APPLY`] entries and
/// [`MAX_PUSH_BYTES`] bytes (an entry larger than that goes alone).
fn pages(entries: &[GovEntry]) -> Vec<&[GovEntry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let size = postcard::to_allocvec(e).map_or(MAX_PUSH_BYTES, |b| b.len());
        if i > start && (i - start >= MAX_GOV_ENTRIES_PER_APPLY || bytes + size > MAX_PUSH_BYTES) {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// The link id of a start sent again after its refusal: the link answers a repeated id with
/// its first answer, so the second start needs its own.
fn resend_link_id(link_id: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"custos-threshold-start-after-foreign-log");
    h.update(link_id);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

impl Cloud {
    /// Before a session of `nodes` (cluster, node) starts: for each governed cluster X among
    /// their clusters, every node of another cluster whose TEE was not yet pushed X's
    /// current version gets X's log. Best effort: a log that cannot be read or pushed is
    /// logged, and the TEE decides without it (refusing `foreign_log_missing` if it needs it,
    /// which [`Cloud::start_on`] answers with a push).
    pub(super) async fn push_foreign_logs(&self, nodes: &[(&str, &str)]) {
        let mut clusters: Vec<&str> = nodes.iter().map(|(c, _)| *c).collect();
        clusters.sort_unstable();
        clusters.dedup();
        if clusters.len() < 2 {
            return;
        }
        // A log that cannot be read is not pushed; the session then meets the TEE's own
        // refusal (`foreign_log_missing`) instead of running without the check.
        let unreadable = |log_of: &str, e: &ApiError| {
            tracing::warn!(
                cluster = log_of,
                error = %e.message,
                "governance log unreadable: not pushed to other clusters' co-signers"
            );
        };
        for log_of in clusters {
            let version = match self.known_log(log_of, false).await {
                Ok((Some(state), _)) => state.version,
                Ok((None, _)) => continue,
                Err(e) => {
                    unreadable(log_of, &e);
                    continue;
                }
            };
            let needing: Vec<(&str, &str)> = nodes
                .iter()
                .filter(|(c, n)| *c != log_of && !self.pushed_already(c, n, log_of, version))
                .copied()
                .collect();
            if needing.is_empty() {
                continue;
            }
            let log = match self.read_log(log_of).await {
                Ok(Some(log)) => log,
                Ok(None) => continue,
                Err(e) => {
                    unreadable(log_of, &e);
                    continue;
                }
            };
            let pushes = needing
                .iter()
                .map(|(c, n)| self.push_log(c, n, log_of, &log));
            let results = futures::future::join_all(pushes).await;
            for ((cluster, node), r) in needing.iter().zip(results) {
                match r {
                    Ok(pushed) => tracing::debug!(
                        cluster,
                        node,
                        log = log_of,
                        version = log.state.version,
                        ?pushed,
                        "governance log pushed to a co-signer"
                    ),
                    Err(why) => tracing::warn!(
                        cluster,
                        node,
                        log = log_of,
                        %why,
                        "governance log not pushed to a co-signer; its TEE decides without it"
                    ),
                }
            }
        }
    }

    /// Sends a session's `start` to `node` of `cluster` under `link_id`. A refusal
    /// `foreign_log_missing` (the key anchors a cluster whose log the TEE lacks: a node that
    /// got the key by sync, or a push this server believed done) has that log pushed to the
    /// node and the start sent once more; any other answer, or a push that fails, is the
    /// answer. The TEE refuses such a start before it consumes anything, so the same start
    /// may be sent again.
    pub(super) async fn start_on(
        &self,
        cluster: &str,
        node: &str,
        link_id: [u8; 16],
        start: &[u8],
    ) -> Result<TeeAnswer, CallError> {
        let first = self
            .clusters
            .tee_call(cluster, link_id, start, Some(node))
            .await;
        let (log_of, genesis_id) = match &first {
            Ok(TeeAnswer {
                outcome:
                    Err(TeeError::ForeignLogMissing {
                        cluster: log_of,
                        genesis_id,
                    }),
                ..
            }) => (log_of.clone(), *genesis_id),
            _ => return first,
        };
        if let Err(why) = self
            .push_missing_log(cluster, node, &log_of, genesis_id)
            .await
        {
            tracing::warn!(
                cluster,
                node,
                log = %log_of,
                %why,
                "the governance log a co-signer lacks cannot be pushed"
            );
            return first;
        }
        tracing::info!(
            cluster,
            node,
            log = %log_of,
            "governance log pushed after foreign_log_missing; start sent again"
        );
        self.clusters
            .tee_call(cluster, resend_link_id(&link_id), start, Some(node))
            .await
    }

    /// Pushes `log_of`'s log to `node` of `cluster`, whose TEE named it missing under genesis
    /// `genesis_id`, whatever was pushed before.
    async fn push_missing_log(
        &self,
        cluster: &str,
        node: &str,
        log_of: &str,
        genesis_id: [u8; 32],
    ) -> Result<(), String> {
        self.cluster_config(log_of).map_err(|e| e.message)?;
        let log = self
            .read_log(log_of)
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| format!("cluster {log_of} has no governance log"))?;
        if log.state.genesis_id != genesis_id {
            return Err(format!(
                "the key anchors {log_of} at genesis {}, its log starts at genesis {}",
                hex::encode(genesis_id),
                hex::encode(log.state.genesis_id)
            ));
        }
        match self.push_log(cluster, node, log_of, &log).await? {
            Pushed::Applied => Ok(()),
            Pushed::NotAnchored => Err(format!(
                "its TEE holds no key anchored at {log_of}, yet named its log missing"
            )),
        }
    }

    /// Pushes every entry of `log` (the log of `log_of`) to `node` of `cluster`, pinned to
    /// it, page by page from the genesis, and records the version pushed. Each signed
    /// answer must be a view of that log from that genesis holding the page; a refusal
    /// because no held key is anchored there is recorded too (that node needs no log until it
    /// holds such a key, and then its refusal `foreign_log_missing` brings the log).
    async fn push_log(
        &self,
        cluster: &str,
        node: &str,
        log_of: &str,
        log: &VerifiedLog,
    ) -> Result<Pushed, String> {
        let state = &log.state;
        for page in pages(&log.entries) {
            let last = page.last().map_or(0, |e| e.version);
            let request = encode_request(&Request::ApplyGovernance {
                cluster: log_of.to_string(),
                entries: page.to_vec(),
            });
            let answer = self
                .clusters
                .tee_call(cluster, random_id(), &request, Some(node))
                .await
                .map_err(|e| e.to_string())?;
            if answer.node != node {
                return Err(format!("answered by node {} instead", answer.node));
            }
            match answer.outcome {
                Ok(Response::Governance(v))
                    if v.cluster == log_of
                        && v.genesis_id == state.genesis_id
                        && v.version >= last => {}
                Ok(Response::Governance(v)) => {
                    return Err(format!(
                        "its TEE shows the log of {} from genesis {} at version {}, not of \
                         {log_of} from genesis {} at version {last} or later",
                        v.cluster,
                        hex::encode(v.genesis_id),
                        v.version,
                        hex::encode(state.genesis_id)
                    ))
                }
                Ok(other) => {
                    return Err(format!(
                        "its TEE answered {} to ApplyGovernance",
                        response_name(&other)
                    ))
                }
                Err(TeeError::GovernanceRejected(m)) if m.starts_with(NOT_ANCHORED) => {
                    self.record_push(cluster, node, log_of, state.version);
                    return Ok(Pushed::NotAnchored);
                }
                Err(e) => return Err(format!("its TEE refused: {e}")),
            }
        }
        self.record_push(cluster, node, log_of, state.version);
        Ok(Pushed::Applied)
    }

    /// Whether `node` of `cluster` was pushed `log_of`'s log at `version` or later.
    fn pushed_already(&self, cluster: &str, node: &str, log_of: &str, version: u64) -> bool {
        let key = (cluster.to_string(), node.to_string(), log_of.to_string());
        self.foreign_pushed
            .lock()
            .expect("foreign push lock")
            .get(&key)
            .is_some_and(|v| *v >= version)
    }

    fn record_push(&self, cluster: &str, node: &str, log_of: &str, version: u64) {
        let key = (cluster.to_string(), node.to_string(), log_of.to_string());
        let mut pushed = self.foreign_pushed.lock().expect("foreign push lock");
        let v = pushed.entry(key).or_insert(version);
        *v = (*v).max(version);
    }

    /// Forgets what was pushed to `nodes`: they now hold a key anchored at other clusters,
    /// so a log they refused before (holding no such key) is pushed before their next
    /// session rather than after a refused start.
    pub(super) fn forget_pushes(&self, nodes: &[(&str, &str)]) {
        self.foreign_pushed
            .lock()
            .expect("foreign push lock")
            .retain(|(c, n, _), _| !nodes.contains(&(c.as_str(), n.as_str())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_wire::governance::GovChange;

    fn entry(version: u64, reason_len: usize) -> GovEntry {
        GovEntry {
            version,
            prev: [0; 32],
            meta: RequestMeta {
                request_id: [7; 16],
                expires_at: 1,
            },
            change: GovChange::Remove {
                key_fingerprint: [9; 32],
                reason: "r".repeat(reason_len),
            },
            approvals: Vec::new(),
        }
    }

    #[test]
    fn a_log_is_pushed_in_pages_within_the_limits() {
        let small: Vec<GovEntry> = (0..600).map(|v| entry(v, 1)).collect();
        let p = pages(&small);
        let lens: Vec<usize> = p.iter().map(|p| p.len()).collect();
        assert_eq!(lens, [256, 256, 88]);
        assert_eq!(p[1][0].version, 256, "pages follow each other");
        assert!(pages(&[]).is_empty());
        // Large entries: a page stays within the byte budget, a huge entry goes alone.
        let big: Vec<GovEntry> = (0..5).map(|v| entry(v, 400 * 1024)).collect();
        let lens: Vec<usize> = pages(&big).iter().map(|p| p.len()).collect();
        assert_eq!(lens, [2, 2, 1]);
        let huge = [entry(0, 1), entry(1, 2 * MAX_PUSH_BYTES), entry(2, 1)];
        let lens: Vec<usize> = pages(&huge).iter().map(|p| p.len()).collect();
        assert_eq!(lens, [1, 1, 1]);
    }

    #[test]
    fn a_resent_start_has_its_own_link_id() {
        let id = [3u8; 16];
        assert_ne!(resend_link_id(&id), id);
        assert_eq!(resend_link_id(&id), resend_link_id(&id));
        assert_ne!(resend_link_id(&id), resend_link_id(&[4u8; 16]));
    }
}
