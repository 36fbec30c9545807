//! A wallet's policy change (issue 12 item 3, plan step E2) delivered to every node: a holder
//! that kept the old group would go on signing with approvals the admins meant to void.
//!
//! Each TEE checks the change itself (the bridge is trusted for liveness only). A node that
//! lacks the key gets it later by sync, with the new policy in its record; a holder that did
//! not apply the change (down, timed out, refused) is routed no request for the key until its
//! next sync fetches the record from a node that did, which upgrades its policy
//! (`ImportKeys` never downgrades one). The change's version is recorded in the metadata DB
//! first, so that this holds after restarts too (`policy_check`).

use custos_wire::protocol::TeeError;

use super::*;
use crate::routing::node_lacks_key;

/// What each node made of the change, for the history row.
#[derive(Default)]
struct Fanout {
    applied: Vec<String>,
    lacking: Vec<String>,
    problems: Vec<String>,
}

impl BridgeService {
    /// Routes [`Request::SetKeyPolicy`] to every registered node and writes one history row.
    /// The answer is a signed one: a node that applied the change (the one the caller named,
    /// if it did), else the first refusal from a node holding the key.
    pub(super) async fn route_key_policy(
        &self,
        actor: String,
        call: TeeCall,
        d: Described,
        wanted: custos_wire::policy::KeyPolicy,
    ) -> Result<TeeReply, Status> {
        let t0 = Instant::now();
        // One change at a time, as for the governance log: two competing changes of one
        // key never interleave over the nodes (each node would keep whichever came first).
        let _one = self.state.gov_apply.lock().await;
        let key = d.key_id.clone().unwrap_or_default();
        let nodes: Vec<String> = self
            .state
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut seen = Fanout::default();
        // (node, signed answer, whether it applied the change, its outcome code)
        let mut answer: Option<(String, Vec<u8>, bool, &'static str)> = None;
        for node in nodes {
            let Some((reply, outcome)) = self.call_one(&node, &call.request, &mut seen).await
            else {
                continue;
            };
            let applied = match &outcome {
                // Only the policy asked for counts as applied: a node answering another one
                // (a competing change of the same version won there) keeps its place in
                // the problems, not among the nodes that now enforce this change.
                Ok(Response::KeyPolicy { policy, .. }) if *policy == wanted => {
                    seen.applied.push(node.clone());
                    true
                }
                Ok(Response::KeyPolicy { policy, .. }) => {
                    seen.problems.push(format!(
                        "{node}: enforces policy version {} with another content",
                        policy.version
                    ));
                    false
                }
                Err(e) if node_lacks_key(e) => {
                    seen.lacking.push(node.clone());
                    continue;
                }
                Err(e) => {
                    seen.problems.push(format!("{node}: {}", e.code()));
                    false
                }
                Ok(_) => {
                    seen.problems
                        .push(format!("{node}: not a key policy answer"));
                    continue;
                }
            };
            let better = match &answer {
                None => true,
                Some((_, _, was, _)) => (applied && !was) || (applied == *was && node == call.node),
            };
            if better {
                let code = outcome.as_ref().map_or_else(TeeError::code, |_| "ok");
                answer = Some((node, reply, applied, code));
            }
        }
        let moved = match answer {
            Some((_, _, true, _)) => {
                // Holders that missed it leave routing first, whatever happens next; then
                // the version is made durable before anyone hears of the change, so that
                // they stay out after a restart of the bridge or of the node. A failed
                // write fails the call: its resend gets the same answers and writes again.
                let moved = self.route_away_until_synced(&key, &seen.applied);
                self.record_policy(&key, (wanted.version, wanted.hash()))
                    .await?;
                moved
            }
            _ => Vec::new(),
        };
        let detail = format!(
            "applied by {:?}; without the key (sync brings it with the new policy) {:?}; \
             not applied by {:?}; routed away from {moved:?} until their next sync",
            seen.applied, seen.lacking, seen.problems
        );
        let (node, code, response) = match answer {
            Some((node, response, _, code)) => (Some(node), code.to_string(), Some(response)),
            None => (
                None,
                custos_proto::RefusalCode::Unavailable.as_str().to_string(),
                None,
            ),
        };
        self.log(NewEntry {
            kind: d.kind.into(),
            request_id: d.request_id.clone(),
            actor,
            key_id: Some(hex::encode(&key)),
            approvers: d.approvers.clone(),
            node: node.clone(),
            outcome: code,
            detail: detail.clone(),
            duration_us: t0.elapsed().as_micros() as i64,
            ..Default::default()
        })
        .await?;
        let (Some(node), Some(response)) = (node, response) else {
            return Err(Status::unavailable(format!(
                "no node holding the key answered; {detail}"
            )));
        };
        let chain = self.node_chain(&node);
        Ok(TeeReply {
            response,
            node,
            chain,
        })
    }

    /// Sends `request` to `node`'s TEE; its answer, checked to be signed by that TEE, or
    /// `None` with the reason noted in `seen`.
    async fn call_one(
        &self,
        node: &str,
        request: &[u8],
        seen: &mut Fanout,
    ) -> Option<(Vec<u8>, Result<Response, TeeError>)> {
        let (mut client, device_key) = self.node_client(node)?;
        let fwd = TeeCall {
            request: request.to_vec(),
            ..Default::default()
        };
        let why = match tokio::time::timeout(self.state.call_timeout, client.execute(fwd)).await {
            Ok(Ok(r)) => {
                let response = r.into_inner().response;
                match verify_signed_response(&device_key, request, &response) {
                    Ok(outcome) => {
                        self.mark(node, true);
                        return Some((response, outcome));
                    }
                    Err(e) => format!("answer not signed by its TEE: {e}"),
                }
            }
            Ok(Err(status)) => format!("failed ({})", status.message()),
            Err(_) => "timed out".to_string(),
        };
        self.mark(node, false);
        seen.problems.push(format!("{node}: {why}"));
        None
    }

    /// Once some node applied the change: every other holder of `key` stops being routed
    /// requests for it and is asked to fetch it again, so that it signs nothing under the old
    /// group and its next sync upgrades its policy. Returns their names.
    fn route_away_until_synced(&self, key: &[u8], applied: &[String]) -> Vec<String> {
        let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
        let mut moved = Vec::new();
        for (name, n) in nodes.iter_mut() {
            if !applied.contains(name) && n.held.remove(key) {
                n.missing.insert(key.to_vec());
                moved.push(name.clone());
            }
        }
        drop(nodes);
        if !moved.is_empty() {
            self.state.sync_trigger.notify_one();
        }
        moved
    }
}
