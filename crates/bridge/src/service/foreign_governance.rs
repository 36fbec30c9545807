//! Other clusters' governance logs (issue 12, plan step D5): a threshold key whose policy
//! anchors each share's cluster at its log's genesis is co-signed with another cluster's node
//! only if that node is a current member of that cluster's log, which this cluster's TEEs
//! must therefore hold. The cloud server pushes such a log to each node as
//! `ApplyGovernance { cluster: other, .. }`; the bridge forwards it and keeps nothing of it.
//!
//! The bridge neither verifies it against nor adds it to its own log, and writes no
//! governance row (`governance` table): the TEE verifies the foreign log itself from its
//! genesis against the pinned Root and stores it only under a held key's anchor, so the
//! bridge's opinion of it would decide nothing, and this cluster's membership must never
//! follow another cluster's log.
//!
//! Each forward's outcome goes to the history as an aggregated row (`refusal-summary`,
//! actor `bridge:foreign-log`, outcome one of [`RELAYED`], [`REFUSED_BY_TEE`],
//! [`NOT_RELAYED`]; the example names the cluster, the versions sent and why): the cloud
//! server pushes a log again after every change and before sessions, so one row per push
//! would grow the history at the pace of the pushes. Counted like refused callers, each
//! outcome is written within a second the first time, then at most once per interval.

use custos_wire::governance::{GovEntry, MAX_GOV_ENTRIES_PER_APPLY};
use custos_wire::protocol::GovView;

use super::*;

/// History outcome: a node's TEE applied the entries, and its answer was relayed.
pub(crate) const RELAYED: &str = "relayed";
/// History outcome: every TEE that answered refused the entries; the first signed refusal
/// was relayed.
pub(crate) const REFUSED_BY_TEE: &str = "refused_by_tee";
/// History outcome: nothing was relayed (no node answered in a way the bridge can relay, or
/// the request was malformed).
pub(crate) const NOT_RELAYED: &str = "not_relayed";

/// Counts one forward of `cluster`'s entries in `tally` under `outcome`; the text explains
/// it (written for the first forward of a row only).
fn record_forward(
    tally: &RefusalTally,
    outcome: &'static str,
    cluster: &str,
    entries: &[GovEntry],
    now_ms: i64,
    why: impl FnOnce() -> String,
) {
    tally.record(Layer::ForeignLog, outcome, None, now_ms, || {
        let first = entries.first().map_or(0, |e| e.version);
        let last = entries.last().map_or(0, |e| e.version);
        format!("cluster {cluster:?} entries {first}..={last}: {}", why())
    });
}

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
        let tally = &self.state.refusals;
        if entries.is_empty() || entries.len() > MAX_GOV_ENTRIES_PER_APPLY {
            let why = format!(
                "governance_rejected: {} entries, one request carries \
                 1..={MAX_GOV_ENTRIES_PER_APPLY}",
                entries.len()
            );
            record_forward(tally, NOT_RELAYED, &cluster, &entries, now_ms(), || {
                why.clone()
            });
            return Err(Status::failed_precondition(why));
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
            let why = format!(
                "no node answered the log of {cluster:?} (asked {asked}): {}",
                problems.join("; ")
            );
            record_forward(tally, NOT_RELAYED, &cluster, &entries, now_ms(), || {
                why.clone()
            });
            return Err(Status::unavailable(why));
        };
        let outcome = if applied > 0 { RELAYED } else { REFUSED_BY_TEE };
        record_forward(tally, outcome, &cluster, &entries, now_ms(), || {
            format!(
                "answered by {node}, applied by {applied} of {asked} nodes{}",
                if problems.is_empty() {
                    String::new()
                } else {
                    format!("; {}", problems.join("; "))
                }
            )
        });
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
            ..Default::default()
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

    /// The cloud server pushes a log again and again: each outcome is one history row per
    /// interval, counting the forwards, with the first one explained; the rows read back as
    /// well-formed summaries of a verifying chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_forward_outcome_is_one_aggregated_history_row() {
        use custos_metadata::RefusalSummary;

        let dir = tempfile::tempdir().unwrap();
        let url = custos_metadata::sqlite_url(&dir.path().join("m.db")).unwrap();
        let db = MetadataDb::connect(&url).await.unwrap();
        let tally = RefusalTally::new(Duration::from_secs(60));
        let entries = [entry(3), entry(4)];
        for i in 0..1000 {
            record_forward(&tally, RELAYED, "dc2", &entries, 10 + i, || {
                format!("answered by n1 ({i})")
            });
        }
        record_forward(&tally, NOT_RELAYED, "dc3", &entries[..1], 20, || {
            "no node answered".into()
        });
        record_forward(&tally, REFUSED_BY_TEE, "dc4", &entries, 30, || {
            "answered by n2, applied by 0 of 2 nodes".into()
        });
        assert_eq!(tally.flush(&db, 2_000, false).await.unwrap(), 3);
        // More forwards within the interval write nothing yet; at stop, everything counted.
        for i in 0..100 {
            record_forward(&tally, RELAYED, "dc2", &entries, 2_000 + i, String::new);
        }
        assert_eq!(tally.flush(&db, 3_000, false).await.unwrap(), 0);
        assert_eq!(tally.flush(&db, 3_001, true).await.unwrap(), 1);

        let rows = db.history(0, 100).await.unwrap();
        assert_eq!(rows.len(), 4, "one row per outcome and interval");
        let found: Vec<(String, String, u64, String)> = rows
            .iter()
            .map(|e| {
                let s = RefusalSummary::from_entry(e)
                    .unwrap()
                    .expect("a summary row");
                (s.source, s.reason, s.count, s.example)
            })
            .collect();
        let source = "bridge:foreign-log".to_string();
        let relayed = found.iter().find(|f| f.1 == RELAYED).unwrap();
        assert_eq!(
            relayed,
            &(
                source.clone(),
                RELAYED.into(),
                1000,
                "cluster \"dc2\" entries 3..=4: answered by n1 (0)".into()
            )
        );
        let not_relayed = found.iter().find(|f| f.1 == NOT_RELAYED).unwrap();
        assert_eq!(
            not_relayed,
            &(
                source.clone(),
                NOT_RELAYED.into(),
                1,
                "cluster \"dc3\" entries 3..=3: no node answered".into()
            )
        );
        assert!(found
            .iter()
            .any(|f| f.1 == REFUSED_BY_TEE && f.2 == 1 && f.3.contains("dc4")));
        assert_eq!(found[3].1, RELAYED);
        assert_eq!(found[3].2, 100);
        assert!(
            db.verify().await.unwrap().is_ok(),
            "the history chain verifies"
        );
    }
}
