//! Routing of one TEE request: the candidate nodes, failover, the two history lines
//! (received, then the outcome) and the key-list bookkeeping of answers that made a key.

use super::*;

impl BridgeService {
    /// Nodes to try for a request, best first: healthy holders (rotated), then unhealthy
    /// holders (their health may be stale), or any node for requests making a new key.
    pub(super) fn candidates(&self, d: &Described, pinned: &str) -> Vec<String> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        if !pinned.is_empty() {
            return match nodes.get(pinned) {
                Some(n) if !self.behind_policy(n, d) => vec![pinned.to_string()],
                _ => Vec::new(),
            };
        }
        let eligible = |n: &NodeEntry| match (&d.key_id, d.any_node) {
            (Some(k), false) => n.held.contains(k),
            _ => true,
        };
        let mut healthy: Vec<String> = Vec::new();
        let mut rest: Vec<String> = Vec::new();
        for (name, n) in nodes.iter() {
            if eligible(n) {
                if n.healthy {
                    healthy.push(name.clone())
                } else {
                    rest.push(name.clone())
                }
            }
        }
        if healthy.is_empty() && rest.is_empty() {
            // The bridge may not know every holder yet: let any node answer authoritatively,
            // except a node known to lack the key or to be behind its policy (which would
            // answer under a group the admins replaced).
            let unknown = |n: &NodeEntry| {
                d.key_id
                    .as_ref()
                    .is_none_or(|k| !n.missing.contains(k) && !n.checking.contains(k))
            };
            healthy = nodes
                .iter()
                .filter(|(_, n)| n.healthy && unknown(n))
                .map(|(k, _)| k.clone())
                .collect();
        }
        if !healthy.is_empty() {
            let start = self.state.rr.fetch_add(1, Ordering::Relaxed) % healthy.len();
            healthy.rotate_left(start);
        }
        healthy.extend(rest);
        healthy
    }

    /// Whether `n` must not be sent `d` even when the caller names it: `d` carries approvals
    /// for a key whose policy changed, and `n`'s TEE is not known to enforce the change
    /// (waiting for its check, or found behind). Requests without approvals (reads) pass.
    fn behind_policy(&self, n: &NodeEntry, d: &Described) -> bool {
        let Some(k) = d.key_id.as_ref().filter(|_| !d.approvers.is_empty()) else {
            return false;
        };
        let changed = self
            .state
            .policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(k);
        changed && (n.checking.contains(k) || n.missing.contains(k))
    }

    pub(super) fn node_client(&self, name: &str) -> Option<(VaultNodeClient<Channel>, Vec<u8>)> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(name)
            .map(|n| (n.client.clone(), n.device_key.clone()))
    }

    pub(super) fn node_chain(&self, name: &str) -> Option<custos_proto::cluster::DeviceChain> {
        let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(name).map(|n| n.chain.clone())
    }

    pub(super) fn mark(&self, name: &str, ok: bool) {
        let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.get_mut(name) {
            if ok {
                n.served += 1;
                n.healthy = true;
            } else {
                n.failures += 1;
                n.healthy = false;
            }
        }
    }

    pub(super) fn record_new_key(&self, node: &str, info: &custos_wire::protocol::KeyInfo) {
        let origin = match info.origin {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
        };
        self.record_key(node, &info.key_id, &info.xpub, info.quorum, origin);
    }

    /// A threshold share a node now holds joins the key list, so that the cluster's other
    /// nodes fetch it by sync like a wallet ([0073]-[0074]).
    pub(super) fn record_threshold_share(
        &self,
        node: &str,
        info: &custos_wire::protocol::ThresholdKeyInfo,
    ) {
        self.state
            .threshold
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.key_id.clone());
        let origin = match info.origin {
            ThresholdOrigin::Dealer => "threshold-dealer",
            ThresholdOrigin::Dkg => "threshold-dkg",
        };
        let description = format!(
            "threshold {}-of-{} share {}",
            info.threshold,
            info.clusters.len(),
            info.share_index
        );
        self.record_key(node, &info.key_id, &description, info.quorum, origin);
    }

    pub(super) fn record_key(
        &self,
        node: &str,
        key_id: &[u8],
        xpub: &str,
        quorum: u8,
        origin: &str,
    ) {
        let st = &self.state;
        st.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.to_vec(), xpub.to_string());
        for (name, n) in st
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            if name == node {
                n.held.insert(key_id.to_vec());
                n.missing.remove(key_id);
            } else if !n.held.contains(key_id) {
                n.missing.insert(key_id.to_vec());
            }
        }
        st.pending_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(KeyRecord {
                key_id: hex::encode(key_id),
                xpub: xpub.to_string(),
                quorum: quorum as i64,
                origin: origin.to_string(),
                created_at_ms: now_ms(),
                created_on: node.to_string(),
            });
        st.sync_trigger.notify_one();
    }

    /// Routes one TEE request with failover; logs it before and after (fail closed).
    pub(crate) async fn route(&self, actor: String, call: TeeCall) -> Result<TeeReply, Status> {
        let request =
            decode_request(&call.request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Every member must apply a governance change, not one node of the usual routing.
        if let Request::ApplyGovernance { cluster, entries } = request {
            // Another cluster's log is for this cluster's TEEs to check co-signers against
            // (plan step D5): forwarded only, never this cluster's membership.
            if cluster != self.state.cluster {
                return self.route_foreign_governance(call, cluster, entries).await;
            }
            return self.route_governance(actor, call, cluster, entries).await;
        }
        let d = describe(&request).ok_or_else(|| {
            Status::invalid_argument("this TEE operation is not routed by the bridge")
        })?;
        // Every node must hold a key under its new group, not one node of the usual routing.
        if let Request::SetKeyPolicy { policy, .. } = request {
            return self.route_key_policy(actor, call, d, policy).await;
        }
        let entry = |node: Option<String>, outcome: String, detail: String, us: i64| NewEntry {
            kind: d.kind.into(),
            request_id: d.request_id.clone(),
            actor: actor.clone(),
            key_id: d.key_id.as_ref().map(hex::encode),
            path: d.path.clone(),
            approvers: d.approvers.clone(),
            node,
            outcome,
            detail,
            duration_us: us,
        };
        // Both lines of this request go to the history one after the other: the writer may
        // hold a commit briefly for the second one to share it with other requests' lines.
        let _expect = self.state.db.expect_appends();
        self.log(entry(None, "received".into(), String::new(), 0))
            .await?;
        let t0 = Instant::now();
        let mut tried = Vec::new();
        let first = match (&d.request_id, d.one_effect) {
            (Some(id), true) => self.state.sent_to.get(id),
            _ => None,
        };
        let pinned = first.as_deref().unwrap_or(&call.node);
        for node in self.candidates(&d, pinned) {
            let Some((mut client, device_key)) = self.node_client(&node) else {
                continue;
            };
            tried.push(node.clone());
            if let (Some(id), true) = (&d.request_id, d.one_effect) {
                // Durable before the request leaves, so that a restarted bridge still sends
                // a resend here; if it cannot be recorded, the request is not sent.
                if let Err(e) = self.state.sent_to.remember(&self.state.db, id, &node).await {
                    let us = t0.elapsed().as_micros() as i64;
                    let detail = format!("cannot record that {id} goes to node {node}: {e}");
                    let code = custos_proto::RefusalCode::Unavailable.as_str().to_string();
                    self.log(entry(None, code, detail.clone(), us)).await?;
                    return Err(Status::unavailable(detail));
                }
            }
            let fwd = TeeCall {
                request: call.request.clone(),
                node: String::new(),
                request_id: d.request_id.clone().unwrap_or_default(),
            };
            let reply = tokio::time::timeout(self.state.call_timeout, client.execute(fwd)).await;
            // Why the node gave no answer, and whether the request may have reached it.
            let reply = match reply {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err((
                    format!("failed ({})", status.message()),
                    !never_sent(&status),
                )),
                Err(_) => Err(("timed out".to_string(), true)),
            };
            let reply = match reply {
                Ok(r) => r,
                Err((why, may_have_run)) => {
                    self.mark(&node, false);
                    if d.one_effect && may_have_run {
                        // The node may have made the key: another node must not make a
                        // second one. The caller retries the same request id on this node,
                        // whose TEE answers the key it made (or makes it, if the request
                        // never got there).
                        let us = t0.elapsed().as_micros() as i64;
                        let detail = format!(
                            "node {node} {why} after the request was sent; outcome unknown"
                        );
                        self.log(entry(
                            Some(node.clone()),
                            "outcome_unknown".into(),
                            detail.clone(),
                            us,
                        ))
                        .await?;
                        return Err(outcome_unknown(&node, detail));
                    }
                    tracing::warn!(%node, %why, "node gave no answer; failing over");
                    continue;
                }
            };
            // The answer must come from that node's TEE (its D), untouched by the relay.
            let outcome = match verify_signed_response(&device_key, &call.request, &reply.response)
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(%node, error = %e, "response not signed by the node's TEE");
                    self.mark(&node, false);
                    continue;
                }
            };
            let us = t0.elapsed().as_micros() as i64;
            let (code, detail) = match &outcome {
                Ok(resp) => {
                    match resp {
                        Response::Wallet(info) => self.record_new_key(&node, info),
                        Response::ThresholdKey(info)
                        | Response::ThresholdKeygenRound {
                            key: Some(info), ..
                        } => self.record_threshold_share(&node, info),
                        _ => {}
                    }
                    ("ok".to_string(), String::new())
                }
                Err(e) if node_lacks_key(e) && call.node.is_empty() => {
                    // This holder lost the key: try the next one and let sync repair it.
                    if let Some(k) = &d.key_id {
                        if let Some(n) = self
                            .state
                            .nodes
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_mut(&node)
                        {
                            n.held.remove(k);
                            n.missing.insert(k.clone());
                        }
                    }
                    self.state.sync_trigger.notify_one();
                    continue;
                }
                Err(e) => (e.code().to_string(), e.to_string()),
            };
            self.mark(&node, true);
            self.log(entry(Some(node.clone()), code, detail, us))
                .await?;
            // Every answer carries the node's chain (not part of the request, so the
            // exactly-once store compares the same bytes whatever the caller knows).
            let chain = self.node_chain(&node);
            return Ok(TeeReply {
                response: reply.response,
                node,
                chain,
            });
        }
        let us = t0.elapsed().as_micros() as i64;
        let detail = format!("no node could serve; tried {tried:?}");
        let code = custos_proto::RefusalCode::Unavailable.as_str().to_string();
        self.log(entry(None, code, detail.clone(), us)).await?;
        Err(Status::unavailable(detail))
    }
}

/// The refusal of a one-effect request whose answer was lost after it reached `node`,
/// naming that node for the retry ([`crate::routing::NODE_HEADER`]).
fn outcome_unknown(node: &str, detail: String) -> Status {
    let mut status = Status::deadline_exceeded(detail);
    if let Ok(value) = node.parse() {
        status
            .metadata_mut()
            .insert(crate::routing::NODE_HEADER, value);
    }
    status
}

/// Whether a failed call certainly never reached the node: its connection was refused, so
/// another node may serve even a one-effect request.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}
