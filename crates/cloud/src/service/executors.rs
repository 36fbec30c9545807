//! A wallet creation (and each share of a group key generation) names the one node that
//! executes it (issue 12, item 5: failover never makes a second key) and the admins who
//! alone approve the new key (item 3): choosing that node (once the cluster is governed,
//! only a current member of its verified log), and checking an approver against the group
//! before the TEE does.

use custos_wire::governance::{device_key_fingerprint, GovState};

use super::*;

/// How long a verified log (or the answer that a cluster has none) is used by executor
/// choices before it is read again: a change applied without this server (another instance,
/// the CLI at a bridge) is noticed within this time.
const KNOWN_LOG_TTL_MS: u64 = 60 * 1000;

/// What this server last verified of a cluster's governance log.
pub(super) struct KnownLog {
    /// The state the log led to; `None` while the cluster answered it has none.
    state: Option<GovState>,
    /// When it was read (server clock); 0 once a governance request completed since.
    read_at_ms: u64,
    /// A log was verified or applied through this server: a cluster never leaves governed
    /// mode, so a later "no log" can only come from a node that is no member.
    governed: bool,
    /// Governance requests completed so far: a read that began before the latest one may
    /// show the log without it, and is used once but not kept as fresh.
    changes: u64,
}

/// The node chosen to execute a wallet creation.
pub(super) struct Executor {
    /// Its name (every attempt is pinned to it).
    pub node: String,
    /// SHA-256 of its certified device key (SubjectPublicKeyInfo), as the approvals name it.
    pub key_fingerprint: [u8; 32],
}

impl Cloud {
    /// The node of `cluster` that executes a new wallet: the serving node whose certified
    /// device key has fingerprint `wanted` (a caller pre-signing approvals names it), or
    /// else the next serving node in turn whose device chain verifies (round-robin over the
    /// healthy nodes by name, so creations spread over the cluster); once governed, only a
    /// current member under its own name.
    pub(super) async fn choose_executor(
        &self,
        cluster: &str,
        wanted: Option<[u8; 32]>,
    ) -> Result<Executor, ApiError> {
        let status = self
            .clusters
            .status(cluster, true)
            .await
            .map_err(call_api_error)?;
        let mut serving: Vec<&str> = status
            .nodes
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.node.as_str())
            .collect();
        serving.sort_unstable();
        if serving.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!("cluster {cluster} has no serving node to execute the creation"),
            ));
        }
        let start = if wanted.is_some() {
            0
        } else {
            self.next_turn(cluster)
        };
        let mut unusable = Vec::new();
        for i in 0..serving.len() {
            let node = serving[(start + i) % serving.len()];
            match self.device_fingerprint(cluster, node).await {
                Ok(fp) if wanted.is_none_or(|w| w == fp) => {
                    // Governed, only a current member executes: a bridge that registered an
                    // impostor (a genuine Cluster-CA certificate on a key made outside any
                    // TEE) could otherwise have it named, and the approvals would bind it.
                    match self.may_execute(cluster, node, &fp).await {
                        Ok(()) => {
                            return Ok(Executor {
                                node: node.to_string(),
                                key_fingerprint: fp,
                            })
                        }
                        Err(why) => unusable.push(why),
                    }
                }
                Ok(_) => {}
                Err(e) => unusable.push(format!("{node}: {e}")),
            }
        }
        let unusable = if unusable.is_empty() {
            String::new()
        } else {
            format!("; unusable: {}", unusable.join("; "))
        };
        Err(match wanted {
            Some(w) => ApiError::new(
                ErrorCode::UnknownExecutor,
                format!(
                    "no serving node of cluster {cluster} has device key fingerprint {}{unusable}",
                    hex::encode(w)
                ),
            ),
            None => ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!("no serving node of cluster {cluster} has a usable device chain{unusable}"),
            ),
        })
    }

    /// This creation's turn in `cluster` (counts up per call).
    fn next_turn(&self, cluster: &str) -> usize {
        let mut turns = self.executor_turns.lock().expect("executor turns lock");
        let turn = turns.entry(cluster.to_string()).or_insert(0);
        let this = *turn;
        *turn = turn.wrapping_add(1);
        this
    }

    /// Whether `node` with device key `fp` may execute a creation or receive a sealed seed
    /// (else why not, for the caller's list of unusable nodes): always while the cluster has
    /// no log, else only as a current member under its own name. A node the known log does
    /// not name has the log read again first: it may have been admitted since. A read that
    /// fails makes only this node unusable, so a bridge routing the read to an impostor
    /// cannot stop the others.
    pub(super) async fn may_execute(
        &self,
        cluster: &str,
        node: &str,
        fp: &[u8; 32],
    ) -> Result<(), String> {
        let not_member = |why: String| {
            format!(
                "{node}: device key {} is not a member of the governance log{why}",
                hex::encode(fp)
            )
        };
        let (state, fresh) = self
            .known_log(cluster, false)
            .await
            .map_err(|e| format!("{node}: governance log unreadable: {}", e.message))?;
        if is_member(state.as_ref(), node, fp) {
            return Ok(());
        }
        if fresh {
            return Err(not_member(String::new()));
        }
        match self.known_log(cluster, true).await {
            Ok((state, _)) if is_member(state.as_ref(), node, fp) => Ok(()),
            Ok(_) => Err(not_member(String::new())),
            Err(e) => Err(not_member(format!(
                " last verified (reading it again failed: {})",
                e.message
            ))),
        }
    }

    /// The state of `cluster`'s log as last verified (`None`: not governed), and whether it
    /// was read just now: read anew when `refresh`, when never read, after a governance
    /// request completed, or after [`KNOWN_LOG_TTL_MS`]. Read through the bridge's routing
    /// (not from the node being judged, which could be the impostor itself).
    pub(super) async fn known_log(
        &self,
        cluster: &str,
        refresh: bool,
    ) -> Result<(Option<GovState>, bool), ApiError> {
        let now = self.now_ms();
        let (governed, changes) = {
            let logs = self.known_logs.lock().expect("known log lock");
            match logs.get(cluster) {
                Some(k)
                    if !refresh
                        && k.read_at_ms != 0
                        && now.saturating_sub(k.read_at_ms) < KNOWN_LOG_TTL_MS =>
                {
                    return Ok((k.state.clone(), false))
                }
                Some(k) => (k.governed, k.changes),
                None => (false, 0),
            }
        };
        let read = self.read_log(cluster).await?.map(|l| l.state);
        let mut logs = self.known_logs.lock().expect("known log lock");
        let known = logs.get(cluster).and_then(|k| k.state.as_ref());
        let unverified = |m: String| Err(ApiError::new(ErrorCode::UnverifiedResponse, m));
        let state = match (read, known) {
            (None, _) if governed => {
                return unverified(format!(
                    "cluster {cluster} is governed, yet the node that answered has no log \
                     (no member would say so)"
                ))
            }
            (Some(new), Some(old)) if new.genesis_id != old.genesis_id => {
                return unverified(format!(
                    "the governance log of {cluster} starts from genesis {}, not {}",
                    hex::encode(new.genesis_id),
                    hex::encode(old.genesis_id)
                ))
            }
            // A lagging member's head: the newer log this server verified stays.
            (Some(new), Some(old)) if new.version < old.version => Some(old.clone()),
            (read, _) => read,
        };
        // A governance request completed while this read was under way: its entry may be
        // missing from what was read, so the next use reads again.
        let (changed_since, changes_now) = logs
            .get(cluster)
            .map_or((false, changes), |k| (k.changes != changes, k.changes));
        logs.insert(
            cluster.to_string(),
            KnownLog {
                governed: governed || changed_since || state.is_some(),
                state: state.clone(),
                read_at_ms: if changed_since { 0 } else { now },
                changes: changes_now,
            },
        );
        Ok((state, true))
    }

    /// Called once a governance request of `cluster` completed: the next executor choice
    /// reads the log again, and "no log" is no longer believed.
    pub(super) fn governance_changed(&self, cluster: &str) {
        let mut logs = self.known_logs.lock().expect("known log lock");
        let known = logs.entry(cluster.to_string()).or_insert(KnownLog {
            state: None,
            read_at_ms: 0,
            governed: true,
            changes: 0,
        });
        known.read_at_ms = 0;
        known.governed = true;
        known.changes += 1;
    }

    /// The fingerprint of `node`'s certified device key (its chain verified, cached).
    async fn device_fingerprint(&self, cluster: &str, node: &str) -> Result<[u8; 32], CallError> {
        let device = self.clusters.device(cluster, node, false).await?;
        device_key_fingerprint(&device.public_key)
            .ok_or_else(|| CallError::Unverified(format!("device key of {node} is not P-256")))
    }
}

/// Whether `node` with device key `fp` may execute: always while the cluster has no log,
/// else only as a current member under its own name.
fn is_member(state: Option<&GovState>, node: &str, fp: &[u8; 32]) -> bool {
    state.is_none_or(|s| s.members.get(fp).is_some_and(|m| m.record.node == node))
}

/// Refuses, before the TEE does, an approval by an admin outside the approver group the
/// request's terms fix (a wallet creation's): a genuine Admin-CA certificate for someone
/// else never counts toward the new key's quorum. Names the admin's key fingerprint.
pub(super) fn check_in_group(row: &RequestRow, a: &StoredApproval) -> Result<(), ApiError> {
    let Some(group) = row.terms.group() else {
        return Ok(());
    };
    let member = |g: &[[u8; 32]]| in_group(g, a);
    // A tier's group approves besides the key's (its admins are counted apart).
    if member(group) || row.terms.tier_groups().iter().any(|t| member(&t.group)) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ApproverNotInGroup,
        format!(
            "admin {:?} (key fingerprint {}) is not in the approver group of request {} \
             ({} admins: {})",
            a.admin,
            a.key,
            row.id,
            group.len(),
            group.iter().map(hex::encode).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Whether approval `a` is by an admin of `group` (by key fingerprint).
pub(super) fn in_group(group: &[[u8; 32]], a: &StoredApproval) -> bool {
    group.iter().any(|k| hex::encode(k) == a.key)
}

/// Whether `row` has every approval it needs: `quorum` of the terms' group (or of anyone,
/// without one) and each tier group's quorum, each counted among its own admins.
pub(super) fn approvals_complete(row: &RequestRow) -> bool {
    let count = |g: &[[u8; 32]]| row.approvals.iter().filter(|a| in_group(g, a)).count();
    let tiers = row.terms.tier_groups();
    // Without tiers every approval is of the group (checked as it was added).
    let own = match row.terms.group() {
        Some(group) if !tiers.is_empty() => count(group),
        _ => row.approvals.len(),
    };
    own >= usize::from(row.quorum)
        && tiers
            .iter()
            .all(|t| count(&t.group) >= usize::from(t.quorum))
}

/// The approvals sent to the TEE. With tiers of other groups, one group may keep approving
/// while another is awaited, so only those that fill a requirement not yet met go, in the
/// order given (the TEE takes at most 16, and the policy's requirements fit in them).
/// Otherwise all of them, as recorded.
pub(super) fn needed_approvals(row: &RequestRow) -> Vec<&StoredApproval> {
    let tiers = row.terms.tier_groups();
    let Some(group) = row.terms.group().filter(|_| !tiers.is_empty()) else {
        return row.approvals.iter().collect();
    };
    let mut needs: Vec<(&[[u8; 32]], usize)> = vec![(group, usize::from(row.quorum))];
    needs.extend(tiers.iter().map(|t| (&t.group[..], usize::from(t.quorum))));
    let mut picked = Vec::new();
    for a in &row.approvals {
        let member = |g: &[[u8; 32]]| in_group(g, a);
        if !needs.iter().any(|(g, left)| *left > 0 && member(g)) {
            continue;
        }
        for (g, left) in needs.iter_mut() {
            if member(g) {
                *left = left.saturating_sub(1);
            }
        }
        picked.push(a);
    }
    picked
}

/// Refuses a request approved under a message this server no longer executes (a wallet
/// creation made before approver groups: any Admin-CA admin would count for it).
pub(super) fn check_format(row: &RequestRow) -> Result<(), Failure> {
    if !row.terms.approval_format_changed() {
        return Ok(());
    }
    let code = ErrorCode::ApprovalFormatChanged.as_str();
    Err(Failure::new(
        code,
        format!(
            "request {} creates a wallet without approver group or executing node (made before \
             approver groups); it is not executed: create a new request naming the group",
            row.id
        ),
    ))
}
