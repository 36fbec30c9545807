//! Which clusters take part: t of a key's clusters for signing (the caller's preferences
//! first, clusters blamed by the previous attempt last, each with a healthy node holding
//! its share), every cluster of a new key for key generation.

use super::*;

impl Cloud {
    /// Chooses the t participants: the named clusters in order, or else the clusters
    /// with an imported share, healthy first (and those blamed by the previous attempt
    /// last); each runs on the node that imported the share, or on any healthy node of
    /// its cluster when that one is not healthy.
    pub(super) async fn threshold_participants(
        &self,
        row: &RequestRow,
        key: &ThresholdKeyRow,
    ) -> Result<Result<Vec<Participant>, Abort>, StoreError> {
        let (named, blamed_before) = self.cluster_preferences(row);
        let pinned = match &row.terms {
            Terms::ThresholdSignPsbt {
                velocity_share: Some(share),
                node: Some(node),
                ..
            } => Some((*share, node.as_str())),
            _ => None,
        };
        self.choose_participants(key, named, &blamed_before, pinned)
            .await
    }

    /// The clusters a threshold request named, and those its previous attempt blamed.
    pub(super) fn cluster_preferences(
        &self,
        row: &RequestRow,
    ) -> (Option<Vec<String>>, Vec<String>) {
        let named = match &row.terms {
            Terms::ThresholdSign { clusters, .. } | Terms::ThresholdSignPsbt { clusters, .. } => {
                clusters.clone()
            }
            _ => None,
        };
        let blamed = self
            .threshold_blamed
            .lock()
            .expect("blame lock")
            .get(&row.id)
            .cloned()
            .unwrap_or_default();
        (named, blamed)
    }

    /// [`Cloud::threshold_participants`] for the `named` clusters (in this order) or else
    /// the healthiest holders, avoiding `blamed_before`. A `pinned` share (a threshold key's
    /// velocity share, which takes part in every transaction) always takes part, on its
    /// node: the window's record lives in that TEE only.
    pub(super) async fn choose_participants(
        &self,
        key: &ThresholdKeyRow,
        named: Option<Vec<String>>,
        blamed_before: &[String],
        pinned: Option<(u16, &str)>,
    ) -> Result<Result<Vec<Participant>, Abort>, StoreError> {
        let t = usize::from(key.threshold);
        let shares = self.store.threshold_shares(Some(&key.key_id)).await?;
        let candidates: Vec<String> = match &named {
            Some(list) => list.clone(),
            None => {
                let mut v: Vec<String> = Vec::new();
                for s in &shares {
                    if !v.contains(&s.cluster) {
                        v.push(s.cluster.clone());
                    }
                }
                v
            }
        };
        if candidates.len() < t {
            return Ok(Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "threshold key {} needs {t} clusters; shares are recorded as imported on \
                     {} only ({})",
                    key.key_id,
                    candidates.len(),
                    names(&candidates)
                ),
                Vec::new(),
            )));
        }
        let mut indexed = Vec::with_capacity(candidates.len());
        for c in &candidates {
            match key.clusters.iter().position(|k| k == c) {
                Some(i) => indexed.push((c.clone(), i as u16)),
                None => {
                    return Ok(Err(Abort {
                        final_: true,
                        ..Abort::new(
                            "invalid_clusters",
                            format!("cluster {c} holds no share of threshold key {}", key.key_id),
                            Vec::new(),
                        )
                    }))
                }
            }
        }
        let probes = futures::future::join_all(indexed.iter().map(|(c, _)| async move {
            tokio::time::timeout(STATUS_TIMEOUT, self.clusters.status(c, false))
                .await
                .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())))
        }))
        .await;
        // (cluster, share index, node, whether that node imported the share)
        let mut usable: Vec<(String, u16, String, bool)> = Vec::new();
        let mut unusable: Vec<String> = Vec::new();
        let mut unusable_clusters: Vec<String> = Vec::new();
        for ((cluster, index), probe) in indexed.into_iter().zip(probes) {
            let status = match probe {
                Ok(s) => s,
                Err(e) => {
                    unusable.push(format!("{cluster}: {e}"));
                    unusable_clusters.push(cluster);
                    continue;
                }
            };
            let healthy: Vec<&str> = status
                .nodes
                .iter()
                .filter(|n| n.healthy)
                .map(|n| n.node.as_str())
                .collect();
            let recorded = shares
                .iter()
                .find(|s| s.share_index == index)
                .map(|s| s.node.as_str());
            let node = match (pinned, recorded) {
                (Some((share, node)), _) if share == index => healthy
                    .contains(&node)
                    .then(|| (node.to_string(), recorded == Some(node))),
                (_, Some(n)) if healthy.contains(&n) => Some((n.to_string(), true)),
                _ => healthy.first().map(|n| (n.to_string(), false)),
            };
            match node {
                Some((node, imported_here)) => usable.push((cluster, index, node, imported_here)),
                None => {
                    unusable.push(format!("{cluster}: no healthy node"));
                    unusable_clusters.push(cluster);
                }
            }
        }
        if named.is_none() {
            // Stable: share index order among equals.
            usable.sort_by_key(|(c, _, _, imported_here)| {
                (blamed_before.contains(c), !imported_here)
            });
        }
        if usable.len() < t {
            return Ok(Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "threshold key {} needs {t} clusters, {} of {} can take part now \
                     (unavailable: {})",
                    key.key_id,
                    usable.len(),
                    names(&candidates),
                    unusable.join("; ")
                ),
                unusable_clusters,
            )));
        }
        if let Some((share, node)) = pinned {
            let Some(at) = usable.iter().position(|u| u.1 == share) else {
                return Ok(Err(Abort::new(
                    "cluster_unavailable",
                    format!(
                        "share {share} of threshold key {} counts its window and takes part in \
                         every signing; its node {node} cannot now (unavailable: {})",
                        key.key_id,
                        unusable.join("; ")
                    ),
                    unusable_clusters,
                )));
            };
            let first = usable.remove(at);
            usable.insert(0, first);
        }
        usable.truncate(t);
        if named.is_none() {
            usable.sort_by_key(|(_, index, _, _)| *index);
        }
        let chains = futures::future::join_all(
            usable
                .iter()
                .map(|(c, _, node, _)| self.clusters.device_chain(c, node)),
        )
        .await;
        let mut participants = Vec::with_capacity(t);
        for ((cluster, share_index, node, _), chain) in usable.into_iter().zip(chains) {
            match chain {
                Ok(chain) => participants.push(Participant {
                    cluster,
                    node,
                    share_index,
                    chain,
                }),
                Err(e) => {
                    return Ok(Err(Abort::new(
                        &e.code(),
                        format!("device chain of {cluster}/{node}: {e}"),
                        vec![cluster],
                    )))
                }
            }
        }
        Ok(Ok(participants))
    }

    /// The participants a key generation's approvals name: `nodes[i]` for share i, whose
    /// verified device key must still be `executors[i]` (a node re-provisioned with another
    /// key can never run it: its TEE would refuse, so the request ends here, final), and a
    /// current member of its cluster's log once governed (else final too). A node
    /// that cannot be reached fails the attempt without another node taking its place: a
    /// retry goes to the same nodes, so no second key is ever made.
    pub(super) async fn pinned_keygen_participants(
        &self,
        clusters: &[String],
        nodes: &[String],
        executors: &[[u8; 32]],
    ) -> Result<Vec<Participant>, Abort> {
        let mut participants = Vec::with_capacity(clusters.len());
        for (i, ((cluster, node), executor)) in
            clusters.iter().zip(nodes).zip(executors).enumerate()
        {
            let unavailable = |e: CallError| {
                Abort::new(
                    &e.code(),
                    format!("executor {cluster}/{node} of share {i}: {e}"),
                    vec![cluster.clone()],
                )
            };
            let device = self
                .clusters
                .device(cluster, node, false)
                .await
                .map_err(unavailable)?;
            let found = custos_wire::governance::device_key_fingerprint(&device.public_key);
            if found != Some(*executor) {
                return Err(Abort {
                    final_: true,
                    ..Abort::new(
                        "executor_changed",
                        format!(
                            "node {cluster}/{node}, approved to make share {i} with device key \
                             {}, now has device key {}",
                            hex::encode(executor),
                            found
                                .map(hex::encode)
                                .unwrap_or_else(|| "(not P-256)".into())
                        ),
                        vec![cluster.clone()],
                    )
                });
            }
            // Removed from its cluster since the approval (or an impostor under its name):
            // the other clusters' TEEs check a foreign participant by certificate only, so
            // the server stops it here; the approvals can never name another node.
            if let Err(why) = self.may_execute(cluster, node, executor).await {
                return Err(Abort {
                    final_: true,
                    ..Abort::new(
                        "executor_not_member",
                        format!("share {i} cannot be made: {why}"),
                        vec![cluster.clone()],
                    )
                });
            }
            let chain = self
                .clusters
                .device_chain(cluster, node)
                .await
                .map_err(unavailable)?;
            participants.push(Participant {
                cluster: cluster.clone(),
                node: node.clone(),
                share_index: i as u16,
                chain,
            });
        }
        Ok(participants)
    }

    /// One participant per cluster, in share order: a healthy node of each (its device
    /// chain fetched and verified). Every cluster must take part.
    pub(super) async fn keygen_participants(
        &self,
        clusters: &[String],
    ) -> Result<Vec<Participant>, Abort> {
        let probes = futures::future::join_all(clusters.iter().map(|c| async move {
            tokio::time::timeout(STATUS_TIMEOUT, self.clusters.status(c, false))
                .await
                .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())))
        }))
        .await;
        let mut chosen: Vec<(String, u16, String)> = Vec::with_capacity(clusters.len());
        let mut unusable: Vec<String> = Vec::new();
        let mut unusable_clusters: Vec<String> = Vec::new();
        for (i, (cluster, probe)) in clusters.iter().zip(probes).enumerate() {
            let node = match probe {
                Ok(status) => status
                    .nodes
                    .iter()
                    .find(|n| n.healthy)
                    .map(|n| n.node.clone())
                    .ok_or_else(|| "no healthy node".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match node {
                Ok(node) => chosen.push((cluster.clone(), i as u16, node)),
                Err(why) => {
                    unusable.push(format!("{cluster}: {why}"));
                    unusable_clusters.push(cluster.clone());
                }
            }
        }
        if !unusable.is_empty() {
            return Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "a key generation needs every one of its {} clusters; unavailable: {}",
                    clusters.len(),
                    unusable.join("; ")
                ),
                unusable_clusters,
            ));
        }
        let chains = futures::future::join_all(
            chosen
                .iter()
                .map(|(c, _, node)| self.clusters.device_chain(c, node)),
        )
        .await;
        let mut participants = Vec::with_capacity(chosen.len());
        for ((cluster, share_index, node), chain) in chosen.into_iter().zip(chains) {
            match chain {
                Ok(chain) => participants.push(Participant {
                    cluster,
                    node,
                    share_index,
                    chain,
                }),
                Err(e) => {
                    return Err(Abort::new(
                        &e.code(),
                        format!("device chain of {cluster}/{node}: {e}"),
                        vec![cluster],
                    ))
                }
            }
        }
        Ok(participants)
    }
}
