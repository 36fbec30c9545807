//! The Bridge gRPC service: what vault nodes (registration, key list, sync reports) and
//! the cluster's link endpoint (submit, status, audits) call.

use super::*;

#[tonic::async_trait]
impl Bridge for BridgeService {
    async fn audit(
        &self,
        req: GrpcRequest<AuditRequest>,
    ) -> Result<GrpcResponse<AuditReport>, Status> {
        self.link_caller(&req, "audit").await?;
        Ok(GrpcResponse::new(self.audit_round().await?))
    }

    async fn last_audit(
        &self,
        req: GrpcRequest<AuditRequest>,
    ) -> Result<GrpcResponse<AuditReport>, Status> {
        self.link_caller(&req, "last-audit").await?;
        self.last_audit_report().await.map(GrpcResponse::new)
    }

    async fn register(
        &self,
        req: GrpcRequest<RegisterRequest>,
    ) -> Result<GrpcResponse<RegisterReply>, Status> {
        let id = self.node_caller(&req, "register").await?;
        // The chain `node_caller` verified, kept to hand to callers that ask for it.
        let chain = peer_info(&req)
            .and_then(|p| p.device_chain())
            .map(|c| custos_proto::cluster::DeviceChain {
                device: c.device,
                cluster_ca: c.cluster_ca,
                device_ca: c.device_ca,
            })
            .ok_or_else(|| Status::permission_denied("no device chain"))?;
        // A verified chain parses; if it did not, Status would show 0 (unknown) rather than
        // the node being refused for a display field.
        let cert_not_after = custos_pki::validity_window(&[&chain.device])
            .map(|(_, not_after)| not_after)
            .unwrap_or(0);
        let r = req.into_inner();
        if r.node != id.node {
            return Err(Status::permission_denied(format!(
                "certificate is for node {:?}, not {:?}",
                id.node, r.node
            )));
        }
        let addr: SocketAddr = r
            .endpoint
            .parse()
            .map_err(|_| Status::invalid_argument("endpoint must be host:port"))?;
        let channel = connect_lazy(
            addr,
            &format!("{}.{}.custos", id.node, self.state.cluster),
            self.state.client_cfg.clone(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let client = VaultNodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // Checked and entered under one lock, so a change that removes this node cannot
        // slip between the check and the entry.
        let gov_guard = self.state.gov_apply.lock().await;
        self.check_member(&id, Some(&chain.device), "register")?;
        let governed = self
            .state
            .gov
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let held_count = r.held.len();
        let (held, checking) = self.split_by_policy(r.held);
        let missing: HashSet<Vec<u8>> = self
            .state
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|k| !held.contains(*k) && !checking.contains(*k))
            .cloned()
            .collect();
        self.state
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.node.clone(),
                NodeEntry {
                    endpoint: r.endpoint.clone(),
                    client,
                    device_key: id.public_key.clone(),
                    chain,
                    cert_not_after,
                    healthy: true,
                    held,
                    missing,
                    checking,
                    served: 0,
                    failures: 0,
                },
            );
        drop(gov_guard);
        self.log(NewEntry {
            kind: "register".into(),
            actor: id.node.clone(),
            node: Some(id.node.clone()),
            outcome: "ok".into(),
            detail: format!("endpoint {}, holds {held_count} key(s)", r.endpoint),
            ..Default::default()
        })
        .await?;
        // Keys this node holds that the list lacks (e.g. created while the bridge was down)
        // join the list, with their public facts read from the node's TEE.
        let this = self.clone();
        let node = id.node.clone();
        tokio::spawn(async move {
            if governed {
                this.push_governance(&node).await;
            }
            this.confirm_policies(&node).await;
            this.learn_keys(&node).await
        });
        self.state.sync_trigger.notify_one();
        Ok(GrpcResponse::new(RegisterReply {
            cluster: self.state.cluster.clone(),
        }))
    }

    async fn key_list(
        &self,
        req: GrpcRequest<KeyListRequest>,
    ) -> Result<GrpcResponse<KeyListReply>, Status> {
        let id = self.node_caller(&req, "key-list").await?;
        // A removed or never admitted node learns nothing of the cluster's keys or nodes.
        self.check_member(&id, leaf(&req).as_deref(), "key-list")?;
        let missing_only = req.get_ref().missing_only;
        let st = &self.state;
        // Lock order everywhere: keys, then nodes.
        let keys = st.keys.read().unwrap_or_else(|p| p.into_inner());
        let nodes = st.nodes.read().unwrap_or_else(|p| p.into_inner());
        let holders = |k: &Vec<u8>| -> Vec<String> {
            nodes
                .iter()
                .filter(|(_, n)| n.held.contains(k))
                .map(|(name, _)| name.clone())
                .collect()
        };
        // A member the bridge does not know (the bridge restarted since it registered) is
        // told so, and registers again: until then it is routed nothing.
        if !nodes.contains_key(&id.node) {
            return Err(Status::failed_precondition(format!(
                "{}: node {} has not registered with this bridge since it started",
                custos_proto::NOT_REGISTERED,
                id.node
            )));
        }
        let entries: Vec<KeyEntry> = match (missing_only, nodes.get(&id.node)) {
            (true, Some(me)) => me
                .missing
                .iter()
                .map(|k| KeyEntry {
                    key_id: k.clone(),
                    xpub: keys.get(k).cloned().unwrap_or_default(),
                    holders: holders(k),
                })
                .collect(),
            _ => keys
                .iter()
                .map(|(k, xpub)| KeyEntry {
                    key_id: k.clone(),
                    xpub: xpub.clone(),
                    holders: holders(k),
                })
                .collect(),
        };
        let endpoints = nodes
            .iter()
            .map(|(name, n)| NodeEndpoint {
                node: name.clone(),
                endpoint: n.endpoint.clone(),
                healthy: n.healthy,
            })
            .collect();
        Ok(GrpcResponse::new(KeyListReply {
            keys: entries,
            nodes: endpoints,
        }))
    }

    async fn report_sync(&self, req: GrpcRequest<SyncReport>) -> Result<GrpcResponse<Ack>, Status> {
        let id = self.node_caller(&req, "report-sync").await?;
        self.check_member(&id, leaf(&req).as_deref(), "report-sync")?;
        let r = req.into_inner();
        let count = r.imported.len();
        let mut to_check = false;
        {
            let keys = self.state.keys.read().unwrap_or_else(|p| p.into_inner());
            let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = nodes.get_mut(&id.node) {
                // Only keys of the list count; a node cannot claim arbitrary ids. A key whose
                // policy changed is routed once its TEE shows the change (the sync source
                // may have been behind too).
                let imported = r.imported.into_iter().filter(|k| keys.contains_key(k));
                let (held, checking) = self.split_by_policy(imported);
                for k in held {
                    n.missing.remove(&k);
                    n.held.insert(k);
                }
                for k in checking {
                    n.missing.remove(&k);
                    n.checking.insert(k);
                }
                to_check = !n.checking.is_empty();
            }
        }
        if to_check {
            let this = self.clone();
            let node = id.node.clone();
            tokio::spawn(async move { this.confirm_policies(&node).await });
        }
        self.log(NewEntry {
            kind: "sync".into(),
            actor: id.node.clone(),
            node: Some(id.node.clone()),
            outcome: "ok".into(),
            detail: format!("imported {count} key(s), {} still missing", r.missing),
            ..Default::default()
        })
        .await?;
        Ok(GrpcResponse::new(Ack {}))
    }

    async fn submit(&self, req: GrpcRequest<TeeCall>) -> Result<GrpcResponse<TeeReply>, Status> {
        let actor = match self.caller(&req, "submit").await? {
            Caller::Link(id) => format!("link:{}", id.node),
            Caller::Node(id) => {
                return Err(Status::permission_denied(format!(
                    "vault node {} may not submit requests",
                    id.node
                )))
            }
        };
        self.route(actor, req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn status(
        &self,
        req: GrpcRequest<StatusRequest>,
    ) -> Result<GrpcResponse<ClusterStatus>, Status> {
        self.caller(&req, "status").await?;
        Ok(GrpcResponse::new(self.cluster_status()))
    }
}

/// The caller's device certificate, for the refusal summary's samples.
fn leaf<T>(req: &GrpcRequest<T>) -> Option<Vec<u8>> {
    peer_info(req).and_then(|p| p.certs.first().cloned())
}
