//! Other clusters' governance logs (issue 12, plan step D5): a threshold key whose policy
//! anchors each share's cluster at its log's genesis is co-signed with another cluster's node
//! only if that node is a current member of that cluster's log, which this cluster's TEEs
//! must therefore hold. The cloud server pushes such a log to each node as
//! `ApplyGovernance { cluster: other, .. }`; the bridge forwards it and keeps nothing of it.
//!
//! The bridge neither verifies it against nor adds it to its own log, and writes no
//! governance history row: the TEE verifies the foreign log itself from its genesis against
//! the pinned Root and stores it only under a held key's anchor, so the bridge's opinion of
//! it would decide nothing, and this cluster's membership must never follow another
//! cluster's log.

use custos_wire::governance::{GovEntry, MAX_GOV_ENTRIES_PER_APPLY};
use custos_wire::protocol::GovView;

use super::*;

/// Why the answer of `node` to a foreign `ApplyGovernance` cannot be relayed: the TEE signed
/// a view of another cluster's log, or one that does not hold the entries sent.
fn check_foreign_view(cluster: &str, entries: &[GovEntry], view: &GovView) -> Result<(), String> {
    if view.cluster != cluster {
        return Err(format!(
            "its TEE answered with the log of {:?}, not of {cluster:?}",
            view.cluster
        ));
    }
    let last = entries.last().map_or(0, |e| e.version);
    if view.version < last {
        return Err(format!(
            "its TEE holds the log of {cluster:?} up to version {}, the entries sent reach {last}",
            view.version
        ));
    }
    Ok(())
}

/// One node's answer: its signed bytes and what they say.
struct Answered {
    node: String,
    response: Vec<u8>,
    applied: bool,
}

/// The answer relayed: the first node whose TEE applied the entries, else the first signed
/// refusal (a TEE holding no key anchored at that cluster refuses, and the caller needs to
/// know why).
fn pick(answers: Vec<Answered>) -> Option<Answered> {
    let mut first_refusal = None;
    for a in answers {
        if a.applied {
            return Some(a);
        }
        if first_refusal.is_none() {
            first_refusal = Some(a);
        }
    }
    first_refusal
}

impl BridgeService {
    /// Routes [`Request::ApplyGovernance`] for a cluster other than the bridge's: to the
    /// node the caller pinned, else to every serving node (every registered one when none
    /// is known healthy). Each answer must be signed by that node's TEE and, when it applied
    /// the entries, be a view of that cluster's log holding them. The answer is one such
    /// signed answer: a node that applied them, else a signed refusal.
    pub(super) async fn route_foreign_governance(
        &self,
        call: TeeCall,
        cluster: String,
        entries: Vec<GovEntry>,
    ) -> Result<TeeReply, Status> {
        if entries.is_empty() || entries.len() > MAX_GOV_ENTRIES_PER_APPLY {
            return Err(Status::failed_precondition(format!(
                "governance_rejected: {} entries, one request carries \
                 1..={MAX_GOV_ENTRIES_PER_APPLY}",
                entries.len()
            )));
        }
        let targets: Vec<String> = {
            let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
            if !call.node.is_empty() {
                nodes
                    .contains_key(&call.node)
                    .then(|| call.node.clone())
                    .into_iter()
                    .collect()
            } else {
                let healthy: Vec<String> = nodes
                    .iter()
                    .filter(|(_, n)| n.healthy)
                    .map(|(k, _)| k.clone())
                    .collect();
                if healthy.is_empty() {
                    nodes.keys().cloned().collect()
                } else {
                    healthy
                }
            }
        };
        let mut answers = Vec::new();
        let mut problems = Vec::new();
        for node in targets {
            match self
                .foreign_apply_on(&node, &call.request, &cluster, &entries)
                .await
            {
                Ok(a) => answers.push(a),
                Err(why) => {
                    tracing::warn!(%node, %cluster, %why, "foreign governance log not relayed");
                    problems.push(format!("{node}: {why}"));
                }
            }
        }
        let applied = answers.iter().filter(|a| a.applied).count();
        let asked = answers.len() + problems.len();
        let Some(Answered { node, response, .. }) = pick(answers) else {
            return Err(Status::unavailable(format!(
                "no node answered the log of {cluster:?} (asked {asked}): {}",
                problems.join("; ")
            )));
        };
        tracing::info!(
            %cluster,
            entries = entries.len(),
            last = entries.last().map_or(0, |e| e.version),
            applied,
            asked,
            answered_by = %node,
            "foreign governance log relayed"
        );
        let chain = self.node_chain(&node);
        Ok(TeeReply {
            response,
            node,
            chain,
        })
    }

    /// Sends the encoded foreign `ApplyGovernance` `request` to `node`'s TEE; the answer must
    /// be signed by that node's D ([`check_foreign_view`] when it applied the entries).
    async fn foreign_apply_on(
        &self,
        node: &str,
        request: &[u8],
        cluster: &str,
        entries: &[GovEntry],
    ) -> Result<Answered, String> {
        let (mut client, device_key) = self.node_client(node).ok_or("not registered")?;
        let fwd = TeeCall {
            request: request.to_vec(),
            node: String::new(),
        };
        let reply = match tokio::time::timeout(self.state.call_timeout, client.execute(fwd)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                self.mark(node, false);
                return Err(format!("failed ({})", status.message()));
            }
            Err(_) => {
                self.mark(node, false);
                return Err("timed out".into());
            }
        };
        let applied = match verify_signed_response(&device_key, request, &reply.response) {
            Ok(Ok(Response::Governance(v))) => {
                check_foreign_view(cluster, entries, &v)?;
                true
            }
            Ok(Ok(other)) => {
                return Err(format!(
                    "its TEE answered {other:?} rather than a governance view"
                ))
            }
            Ok(Err(_)) => false,
            Err(e) => {
                self.mark(node, false);
                return Err(format!("answer not signed by its TEE: {e}"));
            }
        };
        self.mark(node, true);
        Ok(Answered {
            node: node.to_string(),
            response: reply.response,
            applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_wire::governance::GovChange;
    use custos_wire::protocol::RequestMeta;

    fn entry(version: u64) -> GovEntry {
        GovEntry {
            version,
            prev: [0; 32],
            meta: RequestMeta {
                request_id: [7; 16],
                expires_at: 1,
            },
            change: GovChange::Remove {
                key_fingerprint: [9; 32],
                reason: "lost".into(),
            },
            approvals: Vec::new(),
        }
    }

    fn view(cluster: &str, version: u64) -> GovView {
        GovView {
            cluster: cluster.into(),
            genesis_id: [1; 32],
            version,
            head: [2; 32],
            governors: Vec::new(),
            quorum: 1,
            members: Vec::new(),
            revoked_admins: Vec::new(),
            revoked_devices: Vec::new(),
            entries: Vec::new(),
        }
    }

    #[test]
    fn a_foreign_view_must_be_of_that_cluster_and_hold_the_entries() {
        let entries = [entry(0), entry(1), entry(2)];
        check_foreign_view("dc2", &entries, &view("dc2", 2)).unwrap();
        // Holding more (a later page was applied before) is fine.
        check_foreign_view("dc2", &entries, &view("dc2", 7)).unwrap();
        let e = check_foreign_view("dc2", &entries, &view("dc1", 2)).unwrap_err();
        assert!(e.contains("log of \"dc1\""), "{e}");
        let e = check_foreign_view("dc2", &entries, &view("dc2", 1)).unwrap_err();
        assert!(e.contains("up to version 1"), "{e}");
    }

    #[test]
    fn an_applied_answer_is_relayed_before_a_refusal() {
        let a = |node: &str, applied| Answered {
            node: node.into(),
            response: Vec::new(),
            applied,
        };
        let picked = pick(vec![a("n1", false), a("n2", true), a("n3", true)]).unwrap();
        assert_eq!(picked.node, "n2");
        let picked = pick(vec![a("n1", false), a("n2", false)]).unwrap();
        assert_eq!(picked.node, "n1", "the first signed refusal");
        assert!(pick(Vec::new()).is_none());
    }
}
