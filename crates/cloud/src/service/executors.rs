//! A wallet creation (and each share of a group key generation) names the one node that
//! executes it (issue 12, item 5: failover never makes a second key) and the admins who alone approve the new key (item 3): choosing that
//! node, and checking an approver against the group before the TEE does.

use custos_wire::governance::device_key_fingerprint;

use super::*;

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
    /// healthy nodes by name, so creations spread over the cluster).
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
                    return Ok(Executor {
                        node: node.to_string(),
                        key_fingerprint: fp,
                    })
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

    /// The fingerprint of `node`'s certified device key (its chain verified, cached).
    async fn device_fingerprint(&self, cluster: &str, node: &str) -> Result<[u8; 32], CallError> {
        let device = self.clusters.device(cluster, node, false).await?;
        device_key_fingerprint(&device.public_key)
            .ok_or_else(|| CallError::Unverified(format!("device key of {node} is not P-256")))
    }
}

/// Refuses, before the TEE does, an approval by an admin outside the approver group the
/// request's terms fix (a wallet creation's): a genuine Admin-CA certificate for someone
/// else never counts toward the new key's quorum. Names the admin's key fingerprint.
pub(super) fn check_in_group(row: &RequestRow, a: &StoredApproval) -> Result<(), ApiError> {
    let Some(group) = row.terms.group() else {
        return Ok(());
    };
    if group.iter().any(|g| hex::encode(g) == a.key) {
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
