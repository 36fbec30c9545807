//! A wallet's or threshold key's approver group (issue 12, item 3, plan step E2): the policy
//! in force as a node's TEE reports it, requests that replace it (approved by a quorum of the
//! group in force), and their execution on every node through the bridge — for a threshold
//! key, on every cluster holding a share, under one approval of scope [`THRESHOLD_SCOPE`].
//!
//! The server never takes the policy in force from its own records: it asks a TEE
//! (`GetKeyPolicy`, an answer signed by the node's device key and checked like every TEE
//! answer), so the `prev` hash a request names is the one the TEEs compare with.

use custos_cloud_api::approval::{new_threshold_policy, parse_key_id};
use custos_cloud_api::key_policy::policy_view;
use custos_wire::approval::THRESHOLD_SCOPE;
use custos_wire::policy::{KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};

use super::threshold::start_link_id;
use super::*;
use crate::terms::PolicyTerms;

/// The key a policy request is about, as recorded.
struct PolicyTarget {
    /// Its id.
    id: KeyId,
    /// "wallet 02ab…" or "threshold key 02ab…", for messages.
    name: String,
    /// The cluster its policy is read from: the wallet's, or the key's first share's.
    cluster: String,
    /// A threshold key's clusters by share index (where a change goes); empty for a wallet.
    clusters: Vec<String>,
}

impl Cloud {
    /// The policy of key `key_id` (a wallet or threshold key) held in `cluster`, as a node's
    /// TEE there holds it, with that node's name. `name` names the key in refusals.
    pub(super) async fn read_policy(
        &self,
        cluster: &str,
        key: &KeyId,
        name: &str,
    ) -> Result<(KeyPolicy, String), ApiError> {
        let request = encode_request(&Request::GetKeyPolicy {
            key_id: key.to_vec(),
        });
        let answer = self
            .clusters
            .tee_call(cluster, random_id(), &request, None)
            .await
            .map_err(call_api_error)?;
        let node = answer.node;
        let unverified = |m: String| ApiError::new(ErrorCode::UnverifiedResponse, m);
        match answer.outcome {
            Ok(Response::KeyPolicy {
                key_id,
                policy,
                hash,
            }) => {
                if key_id.as_slice() != key.as_slice() {
                    return Err(unverified(format!(
                        "node {node} answered the policy of key {}, not of {name}",
                        hex::encode(key_id),
                    )));
                }
                if hash != policy.hash() {
                    return Err(unverified(format!(
                        "node {node} sent a policy whose hash is not the one it names"
                    )));
                }
                Ok((policy, node))
            }
            Ok(other) => Err(unverified(format!(
                "node {node} answered GetKeyPolicy with {}",
                response_name(&other)
            ))),
            Err(e) => Err(ApiError::new(
                ErrorCode::BridgeRefused,
                format!("node {node} refused to show the policy of {name}: {e}"),
            )),
        }
    }

    /// The wallet `root_id` of `tenant` as a policy target.
    async fn wallet_target(&self, tenant: &str, root_id: &str) -> Result<PolicyTarget, ApiError> {
        let wallet = self.wallet_row(tenant, root_id).await?;
        let id = parse_root_id(&wallet.root_id)
            .map_err(|m| ApiError::internal("a recorded wallet's root id", &m))?;
        Ok(PolicyTarget {
            id,
            name: format!("wallet {}", wallet.root_id),
            cluster: wallet.cluster,
            clusters: Vec::new(),
        })
    }

    /// The threshold key `key_id` of `tenant` as a policy target, with its recorded quorum.
    async fn threshold_target(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<(PolicyTarget, u8), ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        let id = parse_key_id(&key.key_id)
            .map_err(|m| ApiError::internal("a recorded threshold key's id", &m))?;
        let cluster = key
            .clusters
            .first()
            .cloned()
            .ok_or_else(|| ApiError::internal("a recorded threshold key", &"no clusters"))?;
        Ok((
            PolicyTarget {
                id,
                name: format!("threshold key {}", key.key_id),
                cluster,
                clusters: key.clusters,
            },
            key.quorum,
        ))
    }

    /// `GET /v1/wallets/{root_id}/policy`.
    pub async fn wallet_policy(
        &self,
        tenant: &str,
        root_id: &str,
    ) -> Result<KeyPolicyView, ApiError> {
        let target = self.wallet_target(tenant, root_id).await?;
        let (policy, node) = self
            .read_policy(&target.cluster, &target.id, &target.name)
            .await?;
        Ok(policy_view(&target.id, &policy, &node))
    }

    /// `GET /v1/threshold/keys/{key_id}/policy`: the policy held with the share of the key's
    /// first cluster (a change applies to every cluster under one approval).
    pub async fn threshold_key_policy(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<KeyPolicyView, ApiError> {
        let (target, _) = self.threshold_target(tenant, key_id).await?;
        let (policy, node) = self
            .read_policy(&target.cluster, &target.id, &target.name)
            .await?;
        Ok(policy_view(&target.id, &policy, &node))
    }

    /// `PUT /v1/wallets/{root_id}/policy`: records a `set_key_policy` request naming the
    /// policy in force (read from a TEE now) and the new one, one version later.
    pub async fn propose_key_policy(
        &self,
        caller: &Principal,
        root_id: &str,
        body: KeyPolicyBody,
    ) -> Result<RequestOutcome, ApiError> {
        Self::check_quorum(body.quorum)?;
        let group = parse_group(&body.group).map_err(invalid_group)?;
        let target = self.wallet_target(&caller.tenant, root_id).await?;
        self.propose_policy(caller, target, group, body).await
    }

    /// `PUT /v1/threshold/keys/{key_id}/policy`: as [`Cloud::propose_key_policy`], for every
    /// cluster of the key under one approval ([`THRESHOLD_SCOPE`]). The quorum must stay the
    /// key's (its TEEs refuse another), and the policy's cluster anchors are carried over.
    pub async fn propose_threshold_key_policy(
        &self,
        caller: &Principal,
        key_id: &str,
        body: KeyPolicyBody,
    ) -> Result<RequestOutcome, ApiError> {
        Self::check_quorum(body.quorum)?;
        let group = parse_group(&body.group).map_err(invalid_group)?;
        let (target, quorum) = self.threshold_target(&caller.tenant, key_id).await?;
        if body.quorum != quorum {
            return Err(ApiError::new(
                ErrorCode::InvalidQuorum,
                format!(
                    "quorum {}: a threshold key's quorum is part of the key ({quorum} for {}); \
                     only its group changes",
                    body.quorum, target.name
                ),
            ));
        }
        self.propose_policy(caller, target, group, body).await
    }

    /// The window counter `rules` name fits the key: a node serving the wallet's cluster;
    /// for a threshold key, a share of the key (the one taking part in every signing) and a
    /// node serving that share's cluster (a holder that cannot sign would stop the key).
    async fn check_holders(
        &self,
        rules: &PolicyRules,
        target: &PolicyTarget,
    ) -> Result<(), ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidRules, m);
        let cluster = match (target.clusters.is_empty(), rules.velocity_share) {
            (true, Some(_)) => {
                return Err(invalid(
                    "velocity_share is a threshold key's; a wallet names its velocity_holder \
                     only"
                        .into(),
                ))
            }
            (true, None) => &target.cluster,
            (false, Some(i)) => target.clusters.get(usize::from(i)).ok_or_else(|| {
                invalid(format!(
                    "velocity_share {i} of a key of {} shares",
                    target.clusters.len()
                ))
            })?,
            (false, None) if rules.velocity_holder.is_some() => {
                return Err(invalid(
                    "a threshold key's window is counted on the share taking part in every \
                     signing: name its velocity_share"
                        .into(),
                ))
            }
            (false, None) => return Ok(()),
        };
        if let Some(holder) = &rules.velocity_holder {
            let fp = parse_fingerprint(holder).map_err(|m| invalid(format!("holder: {m}")))?;
            self.choose_executor(cluster, Some(fp)).await.map_err(|e| {
                invalid(format!(
                    "velocity holder {holder} is not a serving node of {cluster}: {}",
                    e.message
                ))
            })?;
        }
        Ok(())
    }

    /// Records the change of `target`'s policy in force (read from a TEE now) to `group`
    /// with `body.quorum`, one version later, keeping the policy's cluster anchors.
    async fn propose_policy(
        &self,
        caller: &Principal,
        target: PolicyTarget,
        group: Vec<[u8; 32]>,
        body: KeyPolicyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let name = &target.name;
        let threshold = !target.clusters.is_empty();
        for c in std::iter::once(&target.cluster).chain(&target.clusters) {
            self.cluster_config(c)?;
        }
        let (current, _) = self.read_policy(&target.cluster, &target.id, name).await?;
        // Cluster anchors are carried over as they are; the transaction rules (issue 14) too,
        // unless the body names new ones.
        let anchors = match current.cluster_anchors() {
            Some(a) if threshold => a,
            _ => Vec::new(),
        };
        let kept_rules: Vec<Rule> = current
            .rules
            .iter()
            .filter(|r| r.tag != RULE_CLUSTER_ANCHORS)
            .cloned()
            .collect();
        let mut rebuilt = new_threshold_policy(current.group.clone(), current.quorum, &anchors);
        rebuilt.rules.extend(kept_rules.iter().cloned());
        if rebuilt.rules != current.rules {
            return Err(invalid_group(format!(
                "the policy in force of {name} carries rules this server cannot rebuild"
            )));
        }
        let invalid_rules = |m: String| ApiError::new(ErrorCode::InvalidRules, m);
        let rules = match &body.rules {
            Some(r) => {
                self.check_holders(r, &target).await?;
                r.to_rules().map_err(invalid_rules)?
            }
            None => kept_rules.clone(),
        };
        let version = current
            .version
            .checked_add(1)
            .ok_or_else(|| invalid_group(format!("{name} is at the last policy version")))?;
        let mut new = KeyPolicy {
            version,
            ..new_threshold_policy(group, body.quorum, &anchors)
        };
        new.rules.extend(rules.iter().cloned());
        new.validate().map_err(|e| match body.rules {
            Some(_) => invalid_rules(e.to_string()),
            None => invalid_group(e.to_string()),
        })?;
        if (current.version > 0)
            && (&current.group, current.quorum, &kept_rules) == (&new.group, new.quorum, &rules)
        {
            return Err(invalid_group(format!(
                "{name} already has this group, quorum and rules"
            )));
        }
        let (rid, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let (cluster, mut terms) = if threshold {
            let terms = PolicyTerms::threshold(target.id, target.clusters, anchors, &current, &new);
            (THRESHOLD_SCOPE.to_string(), terms)
        } else {
            (target.cluster, PolicyTerms::new(target.id, &current, &new))
        };
        // A change of the rules of a policy with tiers needs what its strictest tier needs,
        // every tier group's approvals included (the TEE asks for them; fewer approvals
        // would end refused).
        let quorum = match current.rules_change_need() {
            need if rules != kept_rules => {
                terms.tiers = need.groups;
                need.quorum
            }
            _ => current.quorum,
        };
        if quorum != current.quorum {
            terms.current_quorum = Some(current.quorum);
        }
        self.create(
            caller,
            Draft {
                cluster,
                // The group in force approves.
                quorum,
                terms: Terms::SetKeyPolicy(terms),
                id: rid,
                expires_at,
                approvals: Vec::new(),
                wallet_xpub: None,
            },
        )
        .await
    }

    /// Submits an approved group change: the bridge sends it to every node (of every cluster
    /// of a threshold key); each answer must be the new policy of this key.
    pub(super) async fn execute_key_policy(
        &self,
        row: RequestRow,
    ) -> Result<RequestRow, StoreError> {
        let verdict = match &row.terms {
            Terms::SetKeyPolicy(p) if p.is_threshold() => {
                self.threshold_policy_verdict(&row, p).await
            }
            _ => self.key_policy_verdict(&row).await,
        };
        self.finish(row, verdict).await
    }

    /// Sends a threshold key's change to every cluster of the key at once; it completed
    /// when every cluster answers the new policy. Otherwise the clusters that did not are
    /// named: refused when none applied it and a TEE refused (the approvals are the same
    /// everywhere, so a retry cannot help), else failed, and a retry sends it to every
    /// cluster again (a TEE answers a replay of the change it applied with the policy).
    async fn threshold_policy_verdict(&self, row: &RequestRow, p: &PolicyTerms) -> Verdict {
        let (id, request) = match (parse_request_id(&row.id), tee_request(row)) {
            (Ok(id), Ok(r)) => (id, r),
            (Err(e), _) | (_, Err(e)) => {
                return Verdict::Refused(Failure::new(
                    "bad_request_row",
                    format!("stored request unusable: {e}"),
                ))
            }
        };
        // One link id per attempt and cluster: a retry reaches the TEE again rather than a
        // refusal the link keeps for the id.
        let attempt = u8::try_from(row.attempts).unwrap_or(u8::MAX);
        let wanted = p.policy();
        let key = hex::encode(p.root_id);
        let calls = p.clusters.iter().map(|cluster| {
            let request = &request;
            async move {
                let link_id = start_link_id(&id, attempt, cluster);
                let answer = self
                    .clusters
                    .tee_call(cluster, link_id, request, None)
                    .await;
                (cluster, answer)
            }
        });
        let mut applied = Vec::new();
        let (mut refusals, mut failures) = (Vec::new(), Vec::new());
        for (cluster, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(TeeAnswer {
                    node,
                    outcome: Ok(Response::KeyPolicy { key_id, policy, .. }),
                    ..
                }) if key_id.as_slice() == p.root_id.as_slice() && policy == wanted => {
                    applied.push((cluster, node))
                }
                Ok(TeeAnswer {
                    node,
                    outcome: Ok(Response::KeyPolicy { key_id, policy, .. }),
                    ..
                }) => failures.push(Failure::new(
                    "bad_result",
                    format!(
                        "cluster {cluster}: node {node} reports version {} of key {}, not \
                         version {} of threshold key {key}",
                        policy.version,
                        hex::encode(key_id),
                        wanted.version
                    ),
                )),
                Ok(TeeAnswer {
                    node,
                    outcome: Ok(other),
                    ..
                }) => failures.push(Failure::new(
                    "relay_protocol",
                    format!(
                        "cluster {cluster}: node {node} answered {} to SetKeyPolicy",
                        response_name(&other)
                    ),
                )),
                Ok(TeeAnswer {
                    node,
                    outcome: Err(e),
                    ..
                }) => refusals.push(Failure::new(
                    tee_code(&e),
                    format!("cluster {cluster}: node {node}: {e}"),
                )),
                Err(e) => failures.push(Failure::new(e.code(), format!("cluster {cluster}: {e}"))),
            }
        }
        if refusals.is_empty() && failures.is_empty() {
            let by: Vec<String> = applied.iter().map(|(c, n)| format!("{c}/{n}")).collect();
            // The view names the node of the first cluster, as the policy route reads it.
            let first = applied.first().map_or("", |(_, n)| n.as_str());
            let view = policy_view(&p.root_id, &wanted, first);
            return Verdict::completed(
                by.join(", "),
                RequestResult::KeyPolicy(view),
                // The key's quorum is part of the key: nothing recorded changes.
                Record::Nothing,
            );
        }
        let none_applied = applied.is_empty();
        let mut message: Vec<String> = refusals
            .iter()
            .chain(&failures)
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect();
        if !none_applied {
            let on: Vec<&str> = applied.iter().map(|(c, _)| c.as_str()).collect();
            message.push(format!("applied on {} already", on.join(", ")));
        }
        let first = refusals
            .first()
            .or(failures.first())
            .map(|f| f.code.clone());
        let failure = Failure::new(first.unwrap_or_default(), message.join("; "));
        // Final only when every cluster refused it for certain: a cluster whose outcome is
        // unknown may hold the new group, so the request stays open to a resubmission.
        if none_applied && failures.is_empty() {
            Verdict::Refused(failure)
        } else {
            Verdict::Failed(failure)
        }
    }

    async fn key_policy_verdict(&self, row: &RequestRow) -> Verdict {
        let refused = |code: &str, m: String| Verdict::Refused(Failure::new(code, m));
        let Terms::SetKeyPolicy(p) = &row.terms else {
            return refused("bad_request_row", "not a set_key_policy request".into());
        };
        let (id, request) = match (parse_request_id(&row.id), tee_request(row)) {
            (Ok(id), Ok(r)) => (id, r),
            (Err(e), _) | (_, Err(e)) => {
                return refused("bad_request_row", format!("stored request unusable: {e}"))
            }
        };
        let wanted = p.policy();
        let root_id = hex::encode(p.root_id);
        match self
            .clusters
            .tee_call(&row.cluster, id, &request, None)
            .await
        {
            Ok(TeeAnswer {
                node,
                outcome: Ok(Response::KeyPolicy { key_id, policy, .. }),
                ..
            }) if key_id.as_slice() == p.root_id.as_slice() && policy == wanted => {
                let view = policy_view(&p.root_id, &policy, &node);
                Verdict::completed(
                    node,
                    RequestResult::KeyPolicy(view),
                    Record::WalletQuorum(root_id, wanted.quorum),
                )
            }
            Ok(TeeAnswer {
                node,
                outcome: Ok(Response::KeyPolicy { key_id, policy, .. }),
                ..
            }) => Verdict::Failed(Failure::new(
                "bad_result",
                format!(
                    "node {node} reports version {} of key {}, not version {} of wallet \
                     {root_id}",
                    policy.version,
                    hex::encode(key_id),
                    wanted.version
                ),
            )),
            Ok(TeeAnswer {
                node,
                outcome: Ok(other),
                ..
            }) => Verdict::Failed(Failure::new(
                "relay_protocol",
                format!(
                    "node {node} answered {} to SetKeyPolicy",
                    response_name(&other)
                ),
            )),
            // `tee_policy_conflict`: the policy changed since the request was made (another
            // change went first); this one can never apply.
            Ok(TeeAnswer {
                node,
                outcome: Err(e),
                ..
            }) => refused(&tee_code(&e), format!("node {node}: {e}")),
            // A TEE answers a replay of the change it applied with the policy itself, so an
            // answer lost on the way is resubmitted like a failure.
            Err(e @ CallError::OutcomeUnknown { .. }) => {
                Verdict::Failed(Failure::new(e.code(), e.to_string()))
            }
            Err(e) => Verdict::ended(Failure::new(e.code(), e.to_string()), e.may_retry()),
        }
    }
}

/// An `invalid_group` refusal.
fn invalid_group(m: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidGroup, m)
}
