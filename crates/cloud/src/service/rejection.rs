//! Rejection: one admin of a request's approver group refuses it before quorum (the
//! console's "Reject"). Nothing reaches a cluster: the request becomes `refused` with code
//! `rejected_by_admin`, naming the admin, and no approval counts for it any more. The admin
//! signs (with a key file or, in the console, a passkey) the rejection message
//! ([`rejection_message`]: [`REJECTION_DOMAIN`] followed by the request's approval
//! message).
//!
//! The TEE never sees a rejection, so this server decides alone who may reject, and only
//! where it knows who may approve ([`Cloud::approvers`]): a member of the key's group or of
//! a tier group, not revoked in the cluster's governance log; for governance, a current
//! governor. A request whose approvers only a TEE knows (no group) cannot be rejected: it
//! expires unapproved.

use super::*;

pub use custos_cloud_api::approval::{rejection_message, REJECTION_DOMAIN};

/// The stable error code of a rejected request.
pub const REJECTED: &str = "rejected_by_admin";

impl Cloud {
    /// The admin keys (fingerprints) whose approvals count for request `id` of `tenant`, as
    /// far as this server knows: the group its terms fix and its tier groups, less those
    /// the key's policy in force no longer names; for a signature whose terms name none (a
    /// raw digest), the groups of the key's policy in force, read from a TEE now; for
    /// governance, the current governors. `None`: not known here (a key without group, for
    /// which the TEE decides).
    pub async fn approvers(&self, tenant: &str, id: &str) -> Result<Option<Vec<String>>, ApiError> {
        let row = self.request_row(tenant, id).await?;
        if matches!(row.terms, Terms::Governance(_)) {
            return Ok(Some(self.members(&row.cluster).await?.governors));
        }
        Ok(self
            .approver_keys(tenant, &row)
            .await?
            .map(|keys| keys.iter().map(hex::encode).collect()))
    }

    async fn approver_keys(
        &self,
        tenant: &str,
        row: &RequestRow,
    ) -> Result<Option<Vec<[u8; 32]>>, ApiError> {
        // The TEE counts the key's policy in force when it executes: an admin it no longer
        // names approves, and so rejects, nothing.
        let in_force = self.key_policy_of(tenant, row).await?;
        let Some(group) = row.terms.group() else {
            return Ok(in_force.filter(|keys| !keys.is_empty()));
        };
        let mut keys = group.to_vec();
        for tier in row.terms.tier_groups() {
            keys.extend_from_slice(&tier.group);
        }
        if let Some(current) = in_force {
            keys.retain(|k| current.contains(k));
        }
        Ok(Some(keys))
    }

    /// The admins of the policy in force of the key request `row` uses (its group and its
    /// tiers' groups), read from a TEE now; `None` for a request that uses no key yet.
    async fn key_policy_of(
        &self,
        tenant: &str,
        row: &RequestRow,
    ) -> Result<Option<Vec<[u8; 32]>>, ApiError> {
        let policy = match &row.terms {
            Terms::Sign { root_id, .. }
            | Terms::SignPsbt { root_id, .. }
            | Terms::SignEthereum { root_id, .. } => {
                self.wallet_policy(tenant, &hex::encode(root_id)).await?
            }
            Terms::ThresholdSign { key_id, .. } | Terms::ThresholdSignPsbt { key_id, .. } => {
                self.threshold_key_policy(tenant, &hex::encode(key_id))
                    .await?
            }
            _ => return Ok(None),
        };
        let tiers = policy.rules.iter().flat_map(|r| &r.approval_tiers);
        policy
            .group
            .iter()
            .chain(tiers.flat_map(|t| &t.group))
            .map(|k| custos_cloud_api::approval::parse_fingerprint(k))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|e| ApiError::internal("a key policy's group", &e))
    }

    /// Refuses pending request `id` of `tenant` on the word of the admin whose signature
    /// over its rejection message `body` carries (see the module's rules).
    pub async fn reject(
        &self,
        tenant: &str,
        id: &str,
        body: ApprovalBody,
    ) -> Result<RequestView, ApiError> {
        let mut row = self.request_row(tenant, id).await?;
        for _ in 0..CAS_RETRIES {
            row = self.expire_if_due(row).await?;
            if row.status != RequestStatus::PendingApproval {
                return Err(ApiError::new(
                    ErrorCode::NotPending,
                    format!("request {} is {}", row.id, row.status.as_str()),
                ));
            }
            let by = self.verify_approval(&body, &rejection_message(&message_of(&row)))?;
            self.may_reject(tenant, &row, &by).await?;
            let mut next = row.clone();
            next.status = RequestStatus::Refused;
            next.updated_at = self.now_ms();
            next.error_code = Some(REJECTED.into());
            next.error_message = Some(format!("rejected by admin {:?} (key {})", by.admin, by.key));
            let detail = format!("{} ({})", by.admin, by.fingerprint);
            match self
                .store
                .update_request(&next, "rejected", detail, None)
                .await
            {
                Ok(stored) => {
                    tracing::info!(request_id = %stored.id, admin = %by.admin, "request rejected");
                    return self.view(&stored, true).await;
                }
                Err(StoreError::Conflict(_)) => row = self.request_row(tenant, id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("request {id} keeps changing; retry"),
        ))
    }

    async fn may_reject(
        &self,
        tenant: &str,
        row: &RequestRow,
        by: &StoredApproval,
    ) -> Result<(), ApiError> {
        if matches!(row.terms, Terms::Governance(_)) {
            return self.check_governor(row, by).await;
        }
        let Some(keys) = self.approver_keys(tenant, row).await? else {
            return Err(ApiError::new(
                ErrorCode::ApproverNotInGroup,
                format!(
                    "request {} names no approver group this server knows: only its TEE \
                     decides who approves it, so no one rejects it (it expires unapproved)",
                    row.id
                ),
            ));
        };
        if !keys
            .iter()
            .any(|k| hex::encode(k).eq_ignore_ascii_case(&by.key))
        {
            return Err(ApiError::new(
                ErrorCode::ApproverNotInGroup,
                format!(
                    "admin {:?} (key fingerprint {}) is not an approver of request {}",
                    by.admin, by.key, row.id
                ),
            ));
        }
        // A governed cluster's log may have revoked the admin (for approvals the TEE
        // checks it; a rejection reaches no TEE). A log that cannot be read refuses the
        // rejection (retried later); a cluster without governance has no revocations.
        let members = match self.members(&row.cluster).await {
            Ok(m) => m,
            Err(e) if e.code == ErrorCode::NotGoverned => return Ok(()),
            Err(e) => return Err(e),
        };
        if members
            .revoked_admins
            .iter()
            .any(|r| r.fingerprint.eq_ignore_ascii_case(&by.key))
        {
            return Err(ApiError::new(
                ErrorCode::AdminRevoked,
                format!("admin {:?} is revoked in cluster {}", by.admin, row.cluster),
            ));
        }
        Ok(())
    }
}
