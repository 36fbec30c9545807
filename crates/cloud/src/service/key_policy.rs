//! A wallet's approver group (issue 12, item 3, plan step E2): the policy in force as a
//! node's TEE reports it, requests that replace it (approved by a quorum of the group in
//! force), and their execution on every node through the bridge.
//!
//! The server never takes the policy in force from its own records: it asks a TEE
//! (`GetKeyPolicy`, an answer signed by the node's device key and checked like every TEE
//! answer), so the `prev` hash a request names is the one the TEEs compare with.

use custos_cloud_api::key_policy::policy_view;
use custos_wire::policy::KeyPolicy;

use super::*;
use crate::terms::PolicyTerms;

impl Cloud {
    /// The policy of wallet `root_id` of `cluster` as a node's TEE holds it, with that
    /// node's name.
    async fn read_policy(
        &self,
        cluster: &str,
        root_id: &KeyId,
    ) -> Result<(KeyPolicy, String), ApiError> {
        let request = encode_request(&Request::GetKeyPolicy {
            key_id: root_id.to_vec(),
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
                if key_id.as_slice() != root_id.as_slice() {
                    return Err(unverified(format!(
                        "node {node} answered the policy of key {}, not of wallet {}",
                        hex::encode(key_id),
                        hex::encode(root_id)
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
                format!(
                    "node {node} refused to show the policy of wallet {}: {e}",
                    hex::encode(root_id)
                ),
            )),
        }
    }

    /// `GET /v1/wallets/{root_id}/policy`.
    pub async fn wallet_policy(
        &self,
        tenant: &str,
        root_id: &str,
    ) -> Result<KeyPolicyView, ApiError> {
        let wallet = self.wallet_row(tenant, root_id).await?;
        let id = parse_root_id(&wallet.root_id)
            .map_err(|m| ApiError::internal("a recorded wallet's root id", &m))?;
        let (policy, node) = self.read_policy(&wallet.cluster, &id).await?;
        Ok(policy_view(&id, &policy, &node))
    }

    /// `PUT /v1/wallets/{root_id}/policy`: records a `set_key_policy` request naming the
    /// policy in force (read from a TEE now) and the new one, one version later.
    pub async fn propose_key_policy(
        &self,
        caller: &Principal,
        root_id: &str,
        body: KeyPolicyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidGroup, m);
        Self::check_quorum(body.quorum)?;
        let group = parse_group(&body.group).map_err(invalid)?;
        let wallet = self.wallet_row(&caller.tenant, root_id).await?;
        self.cluster_config(&wallet.cluster)?;
        let id = parse_root_id(&wallet.root_id)
            .map_err(|m| ApiError::internal("a recorded wallet's root id", &m))?;
        let (current, _) = self.read_policy(&wallet.cluster, &id).await?;
        if !current.rules.is_empty() {
            return Err(invalid(format!(
                "the policy in force of wallet {} carries rules this server cannot carry over",
                wallet.root_id
            )));
        }
        let version = current.version.checked_add(1).ok_or_else(|| {
            invalid(format!(
                "wallet {} is at the last policy version",
                wallet.root_id
            ))
        })?;
        let new = KeyPolicy {
            version,
            group,
            quorum: body.quorum,
            rules: Vec::new(),
        };
        new.validate().map_err(|e| invalid(e.to_string()))?;
        if (current.version > 0) && (&current.group, current.quorum) == (&new.group, new.quorum) {
            return Err(invalid(format!(
                "wallet {} already has this group and quorum",
                wallet.root_id
            )));
        }
        let (rid, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: wallet.cluster,
                // The group in force approves.
                quorum: current.quorum,
                terms: Terms::SetKeyPolicy(PolicyTerms::new(id, &current, &new)),
                id: rid,
                expires_at,
                approvals: Vec::new(),
                wallet_xpub: None,
            },
        )
        .await
    }

    /// Submits an approved group change: the bridge sends it to every node; the answer
    /// must be the new policy of this wallet.
    pub(super) async fn execute_key_policy(
        &self,
        row: RequestRow,
    ) -> Result<RequestRow, StoreError> {
        let verdict = self.key_policy_verdict(&row).await;
        self.finish(row, verdict).await
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
                    Recorded::WalletQuorum(root_id, wanted.quorum),
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
