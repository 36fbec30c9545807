//! Threshold keys made by distributed key generation across every cluster of the key: the
//! request, its execution, and the check that every TEE reported the same key.

use super::*;

impl Cloud {
    /// `POST /v1/threshold/keys`: records a `create_threshold_key` request (cluster
    /// `*threshold*`) for a `threshold`-of-n key over `clusters` (share i to cluster i).
    /// With an approver group, one executing node per cluster is chosen now (the next
    /// serving node in turn) and named in the terms: every attempt runs on those nodes.
    pub async fn create_threshold_key(
        &self,
        caller: &Principal,
        body: CreateThresholdKeyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let n = body.clusters.len();
        if !(2..=MAX_THRESHOLD_CLUSTERS).contains(&n) {
            return Err(ApiError::new(
                ErrorCode::InvalidClusters,
                format!("{n} clusters named; a threshold key spans 2 to {MAX_THRESHOLD_CLUSTERS}"),
            ));
        }
        let mut seen = HashSet::new();
        for c in &body.clusters {
            if !seen.insert(c.as_str()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidClusters,
                    format!("cluster {c} named twice: each cluster holds one share"),
                ));
            }
        }
        for c in &body.clusters {
            self.cluster_config(c)?;
        }
        if body.threshold < 2 || usize::from(body.threshold) > n {
            return Err(ApiError::new(
                ErrorCode::InvalidThreshold,
                format!(
                    "threshold {} outside 2..={n} (the number of clusters)",
                    body.threshold
                ),
            ));
        }
        Self::check_quorum(body.quorum)?;
        let group = body
            .group
            .as_deref()
            .map(parse_group)
            .transpose()
            .map_err(|m| ApiError::new(ErrorCode::InvalidGroup, m))?;
        if let Some(g) = &group {
            if usize::from(body.quorum) > g.len() {
                return Err(ApiError::new(
                    ErrorCode::InvalidGroup,
                    format!(
                        "quorum {} is more than the group's {} admins",
                        body.quorum,
                        g.len()
                    ),
                ));
            }
        }
        if group.is_none() && body.rules.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidRules,
                "rules are sealed with an approver group: name the key's `group`",
            ));
        }
        if group.is_none() {
            // A key without a group names no executing nodes: once a cluster is governed,
            // an attempt retried on another of its nodes could make a second key under the
            // same approvals (issue 12 item 5), and any governor would count for its use.
            for c in &body.clusters {
                if self.known_log(c, false).await?.0.is_some() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidGroup,
                        format!(
                            "cluster {c} is governed: a threshold key made there names its \
                             approver group (`group`), so that its approvals bind the node \
                             that makes each share"
                        ),
                    ));
                }
            }
        }
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let terms = match group {
            None => Terms::CreateThresholdKey {
                threshold: body.threshold,
                hd: body.hd,
                clusters: body.clusters,
            },
            Some(group) => {
                let mut executor_nodes = Vec::with_capacity(n);
                let mut executors = Vec::with_capacity(n);
                for c in &body.clusters {
                    let e = self.choose_executor(c, None).await?;
                    executor_nodes.push(e.node);
                    executors.push(e.key_fingerprint);
                }
                let anchors = self.cluster_anchors(&body.clusters).await?;
                let rules = self.new_key_rules(&body, &group, &anchors).await?;
                Terms::CreateGroupThresholdKey {
                    threshold: body.threshold,
                    hd: body.hd,
                    clusters: body.clusters,
                    group,
                    executor_nodes,
                    executors,
                    anchors,
                    rules,
                }
            }
        };
        self.create(
            caller,
            Draft {
                cluster: THRESHOLD_SCOPE.to_string(),
                quorum: body.quorum,
                terms,
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// A new threshold key's transaction rules: the body's, or transactions only when absent
    /// (raw digests are off for new keys); a valid policy with the group, quorum and
    /// anchors; a window counted on one of its shares, by a node serving that share's
    /// cluster.
    async fn new_key_rules(
        &self,
        body: &CreateThresholdKeyBody,
        group: &[[u8; 32]],
        anchors: &[[u8; 32]],
    ) -> Result<Vec<custos_wire::policy::Rule>, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidRules, m);
        let asked = body
            .rules
            .clone()
            .unwrap_or_else(PolicyRules::new_wallet_default);
        let rules = asked.to_rules().map_err(invalid)?;
        let policy = crate::terms::threshold_group_policy(group, body.quorum, anchors, &rules);
        policy.validate().map_err(|e| invalid(e.to_string()))?;
        let holder = policy.spend_limits().and_then(|l| l.velocity_holder);
        match (policy.velocity_share(), holder) {
            (None, None) => {}
            (Some(k), Some(holder)) => {
                let cluster = body.clusters.get(usize::from(k)).ok_or_else(|| {
                    invalid(format!(
                        "velocity_share {k} of a key of {} shares",
                        body.clusters.len()
                    ))
                })?;
                self.choose_executor(cluster, Some(holder))
                    .await
                    .map_err(|e| {
                        invalid(format!(
                            "velocity holder {} is not a serving node of {cluster}: {}",
                            hex::encode(holder),
                            e.message
                        ))
                    })?;
            }
            _ => {
                return Err(invalid(
                    "a threshold key's window is counted on the share taking part in every \
                     signing: name its velocity_share and that share's node as velocity_holder"
                        .into(),
                ))
            }
        }
        Ok(rules)
    }

    /// The genesis id of each cluster's governance log, by share index, when every cluster
    /// is governed (a pinned genesis, else the log this server verified): sealed into the
    /// new key's policy, so that each TEE counts a co-signer of another cluster only as a
    /// current member of that cluster's log. Empty when some cluster has no log yet: an
    /// anchor is checked by the TEEs of its own cluster against the log they hold (a cluster
    /// without one would refuse the key), so such a key stays as before, with other
    /// clusters' co-signers checked by certificate only.
    async fn cluster_anchors(&self, clusters: &[String]) -> Result<Vec<[u8; 32]>, ApiError> {
        let mut anchors = Vec::with_capacity(clusters.len());
        for c in clusters {
            let pinned = self
                .cluster_config(c)?
                .genesis_pin()
                .map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
            let genesis = match pinned {
                Some(pin) => Some(pin),
                None => self.known_log(c, false).await?.0.map(|s| s.genesis_id),
            };
            match genesis {
                Some(g) => anchors.push(g),
                None => return Ok(Vec::new()),
            }
        }
        Ok(anchors)
    }

    /// Runs a `submitting` key creation as one distributed key generation attempt across
    /// all its clusters and records the key.
    pub(in crate::service) async fn execute_keygen(
        &self,
        row: RequestRow,
    ) -> Result<RequestRow, StoreError> {
        let StoredAttempt {
            attempt,
            request_id,
            approvals,
        } = match stored_attempt(&row) {
            Ok(a) => a,
            Err(v) => return self.finish(row, v).await,
        };
        let (threshold, hd, clusters, pinned) = match row.terms.clone() {
            Terms::CreateThresholdKey {
                threshold,
                hd,
                clusters,
            } => (threshold, hd, clusters, None),
            Terms::CreateGroupThresholdKey {
                threshold,
                hd,
                clusters,
                group,
                executor_nodes,
                executors,
                anchors,
                rules,
            } => (
                threshold,
                hd,
                clusters,
                Some((group, executor_nodes, executors, anchors, rules)),
            ),
            _ => {
                let v = Verdict::Refused(Failure::new(
                    "bad_request_row",
                    "stored request unusable: not a threshold key creation",
                ));
                return self.finish(row, v).await;
            }
        };
        let chosen = match &pinned {
            None => self.keygen_participants(&clusters).await,
            Some((_, nodes, executors, _, _)) => {
                self.pinned_keygen_participants(&clusters, nodes, executors)
                    .await
            }
        };
        let participants = match chosen {
            Ok(p) => p,
            Err(a) => return self.threshold_failed(row, attempt, a).await,
        };
        let session = SessionRef {
            request_id,
            attempt,
        };
        let (row, described) = self.record_session(&row, attempt, &participants).await?;
        tracing::info!(
            request_id = %row.id,
            attempt,
            threshold,
            participants = %described,
            "key generation starting"
        );
        let meta = RequestMeta {
            request_id,
            expires_at: row.expires_at,
        };
        let params = ThresholdKeygenParams {
            threshold,
            hd,
            clusters: clusters.clone(),
            quorum: row.quorum,
            participants: signers_of(&participants),
        };
        let anchored = pinned.as_ref().is_some_and(|(_, _, _, a, _)| !a.is_empty());
        let start = encode_request(&match pinned {
            None => Request::ThresholdKeygenStart {
                meta,
                attempt,
                params,
                approvals,
            },
            Some((group, _, executors, anchors, rules)) => Request::ThresholdGroupKeygenStart {
                meta,
                attempt,
                params,
                policy: crate::terms::threshold_group_policy(&group, row.quorum, &anchors, &rules),
                executors,
                approvals,
            },
        });
        let began = Instant::now();
        let mut st = Session::new(Run::Keygen, session, &participants);
        if let Err(abort) = self
            .drive_session(&row.id, &start, &mut st, THRESHOLD_KEYGEN_TIMEOUT)
            .await
        {
            return self.threshold_failed(row, attempt, abort).await;
        }
        tracing::info!(
            request_id = %row.id,
            attempt,
            exchanges = st.exchanges,
            polls = st.polls,
            ms = began.elapsed().as_millis() as u64,
            "key generation finished"
        );
        match self.check_keygen(&row, threshold, hd, &clusters, &st) {
            Ok((result, key, shares)) => {
                self.forget_blame(&row.id);
                if anchored {
                    // Their TEEs now hold a key anchored at the other clusters: logs they
                    // refused before are pushed again before their next session.
                    let nodes: Vec<(&str, &str)> = participants
                        .iter()
                        .map(|p| (p.cluster.as_str(), p.node.as_str()))
                        .collect();
                    self.forget_pushes(&nodes);
                }
                let by = format!(
                    "{} (attempt {attempt}, {} exchanges, {} polls)",
                    described, st.exchanges, st.polls
                );
                let v = Verdict::completed(
                    by,
                    RequestResult::ThresholdKey(result),
                    Record::ThresholdKey(key, shares),
                );
                self.finish(row, v).await
            }
            // The TEEs stored shares of different keys (or of other terms): nothing is
            // recorded, and no retry under these approvals can run (each TEE consumed them).
            Err(m) => {
                let v = Verdict::Refused(Failure::new("threshold_key_mismatch", m));
                self.finish(row, v).await
            }
        }
    }

    /// Every participant reported the same key (all but the share index), its own share,
    /// made of the approved terms; returns the result and what is recorded.
    pub(super) fn check_keygen(
        &self,
        row: &RequestRow,
        threshold: u16,
        hd: bool,
        clusters: &[String],
        st: &Session<'_>,
    ) -> Result<(ThresholdKeyResult, ThresholdKeyRow, Vec<ThresholdShareRow>), String> {
        let mut infos = Vec::with_capacity(st.participants.len());
        for (p, o) in st.participants.iter().zip(&st.output) {
            let Some(Output::Key(info)) = o else {
                return Err(format!("cluster {} returned no key", p.cluster));
            };
            check_threshold_key_info(info)
                .map_err(|e| format!("cluster {} reported an unusable key: {e}", p.cluster))?;
            if info.share_index != p.share_index {
                return Err(format!(
                    "cluster {} holds share {}, it was to make share {}",
                    p.cluster, info.share_index, p.share_index
                ));
            }
            infos.push(info);
        }
        let first = *infos.first().ok_or("no participant")?;
        let terms = |k: &ThresholdKeyInfo| ThresholdKeyInfo {
            share_index: 0,
            ..k.clone()
        };
        for (p, info) in st.participants.iter().zip(&infos).skip(1) {
            if terms(info) != terms(first) {
                return Err(format!(
                    "participants disagree on the key: cluster {} made {} and cluster {} made \
                     {}",
                    st.participants[0].cluster,
                    hex::encode(&first.key_id),
                    p.cluster,
                    hex::encode(&info.key_id)
                ));
            }
        }
        if first.threshold != threshold
            || first.clusters != clusters
            || first.quorum != row.quorum
            || first.chain_code.is_some() != hd
            || first.origin != ThresholdOrigin::Dkg
        {
            return Err(format!(
                "the key made is not the approved one: {}-of-{:?}, quorum {}, HD {}, {:?}",
                first.threshold,
                first.clusters,
                first.quorum,
                first.chain_code.is_some(),
                first.origin
            ));
        }
        let now = self.now_ms();
        let key = key_row(first, now, &row.id, &row.tenant);
        let shares: Vec<ThresholdShareRow> = st
            .participants
            .iter()
            .map(|p| ThresholdShareRow {
                key_id: key.key_id.clone(),
                share_index: p.share_index,
                cluster: p.cluster.clone(),
                node: p.node.clone(),
                imported_at: now,
                request_id: row.id.clone(),
            })
            .collect();
        let result = ThresholdKeyResult {
            key_id: key.key_id.clone(),
            xpub: key_xpub(&key)?.map(|x| x.to_string()),
            threshold: key.threshold,
            clusters: key.clusters.clone(),
            quorum: key.quorum,
            origin: key.origin.clone(),
            shares: shares
                .iter()
                .map(|s| ThresholdKeyShare {
                    share_index: s.share_index,
                    cluster: s.cluster.clone(),
                    node: s.node.clone(),
                })
                .collect(),
        };
        Ok((result, key, shares))
    }
}
