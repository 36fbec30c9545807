//! The bridge's background upkeep: node health rounds, learning which keys a node holds,
//! pushing sync work, flushing the key list and the refusal counts to the metadata DB, and
//! auditing one node.

use super::*;

impl BridgeService {
    pub(super) async fn audit_node(&self, node: &str, keys: &[Vec<u8>]) -> NodeAudit {
        let mut out = NodeAudit {
            node: node.to_string(),
            ..Default::default()
        };
        let Some((mut client, device_key)) = self.node_client(node) else {
            out.error = "not registered".into();
            return out;
        };
        for key in keys {
            let message = fresh_message();
            let request = encode_request(&Request::AuditSign {
                key_id: key.clone(),
                message: message.clone(),
            });
            let call = TeeCall {
                request: request.clone(),
                ..Default::default()
            };
            let reply =
                match tokio::time::timeout(self.state.call_timeout, client.execute(call)).await {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(e)) => {
                        out.error = format!("node failed: {}", e.message());
                        return out;
                    }
                    Err(_) => {
                        out.error = "node timed out".into();
                        return out;
                    }
                };
            out.checked += 1;
            match verify_signed_response(&device_key, &request, &reply.response) {
                Ok(Ok(Response::AuditSignature(sig)))
                    if audit_signature_valid(key, &message, &sig) =>
                {
                    out.ok += 1
                }
                Ok(Err(e)) if node_lacks_key(&e) => out.missing.push(key.clone()),
                _ => out.wrong.push(key.clone()),
            }
        }
        out
    }

    /// One verified answer of `node`'s TEE to a list request, or `None` (unreachable, slow,
    /// refused or not signed by that node's D key).
    pub(super) async fn node_answer(&self, node: &str, request: &Request) -> Option<Response> {
        self.node_outcome(node, request).await?.ok()
    }

    /// `node`'s TEE's verified outcome of `request` (an answer or a refusal), or `None`
    /// (unreachable, slow or not signed by that node's D key).
    pub(super) async fn node_outcome(
        &self,
        node: &str,
        request: &Request,
    ) -> Option<Result<Response, TeeError>> {
        let (mut client, device_key) = self.node_client(node)?;
        let request = encode_request(request);
        let reply = tokio::time::timeout(
            self.state.call_timeout * 4,
            client.execute(TeeCall {
                request: request.clone(),
                ..Default::default()
            }),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        verify_signed_response(&device_key, &request, &reply.response).ok()
    }

    pub(super) fn known_keys(&self) -> HashSet<Vec<u8>> {
        self.state
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub(super) async fn learn_keys(&self, node: &str) {
        if let Some(Response::Keys(infos)) = self.node_answer(node, &Request::ListKeys).await {
            let known = self.known_keys();
            for info in infos.iter().filter(|i| !known.contains(&i.key_id)) {
                self.record_new_key(node, info);
            }
        }
        if let Some(Response::ThresholdKeys(infos)) =
            self.node_answer(node, &Request::ListThresholdKeys).await
        {
            let known = self.known_keys();
            for info in infos.iter().filter(|i| !known.contains(&i.key_id)) {
                self.record_threshold_share(node, info);
            }
        }
    }

    pub(super) async fn health_round(&self) {
        let names: Vec<String> = {
            let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
            nodes.keys().cloned().collect()
        };
        for name in names {
            let Some((mut client, _)) = self.node_client(&name) else {
                continue;
            };
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(1), client.health(HealthRequest {})).await,
                Ok(Ok(_))
            );
            let changed = {
                let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
                match nodes.get_mut(&name) {
                    Some(n) if n.healthy != ok => {
                        n.healthy = ok;
                        true
                    }
                    _ => false,
                }
            };
            if changed {
                let _ = self
                    .state
                    .db
                    .append(NewEntry {
                        kind: "node-health".into(),
                        actor: "bridge".into(),
                        node: Some(name.clone()),
                        outcome: if ok { "healthy" } else { "unhealthy" }.into(),
                        ..Default::default()
                    })
                    .await;
                if ok {
                    self.state.sync_trigger.notify_one();
                }
            }
        }
    }

    /// After keys were created, asks every other healthy node to sync now (coalesced).
    pub(super) async fn sync_pusher(&self) {
        loop {
            self.state.sync_trigger.notified().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let targets: Vec<(String, VaultNodeClient<Channel>)> = {
                let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
                nodes
                    .iter()
                    .filter(|(_, n)| n.healthy && !n.missing.is_empty())
                    .map(|(k, n)| (k.clone(), n.client.clone()))
                    .collect()
            };
            let mut tasks = Vec::new();
            for (name, mut c) in targets {
                tasks.push(tokio::spawn(async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs(60),
                        c.sync_now(SyncNowRequest {}),
                    )
                    .await;
                    if !matches!(r, Ok(Ok(_))) {
                        tracing::warn!(node = %name, "sync request failed");
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    pub(super) async fn key_flusher(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let batch: Vec<KeyRecord> = std::mem::take(
                &mut *self
                    .state
                    .pending_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.state.db.upsert_keys(&batch).await {
                tracing::error!(error = %e, "key list not persisted; will retry");
                self.state
                    .pending_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(batch);
            }
        }
    }

    /// Writes the counted refusals as aggregated history rows, at the tally's pace; a row
    /// that cannot be written stays counted (the tally logs it).
    pub(super) async fn refusal_flusher(&self) {
        let tally = self.state.refusals.clone();
        loop {
            tokio::time::sleep(tally.tick()).await;
            let _ = tally.flush(&self.state.db, now_ms(), false).await;
        }
    }
}
