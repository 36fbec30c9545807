//! Rejection: one admin of a request's approver group refuses it before quorum (the
//! console's "Reject"). Nothing reaches a cluster: the request becomes `refused` with code
//! `rejected_by_admin`, naming the admin, and no approval counts for it any more. The admin
//! signs (with a key file or, in the console, a passkey) the rejection message:
//! [`REJECTION_DOMAIN`] followed by the request's approval message, so a rejection is never
//! an approval, and names exactly the request it refuses.

use super::*;

/// Domain of a rejection message.
pub const REJECTION_DOMAIN: &[u8] = b"CUSTOS-REJECTION-V1\0";

/// The stable error code of a rejected request.
pub const REJECTED: &str = "rejected_by_admin";

/// What an admin signs to reject the request whose approval message is `approval_message`.
pub fn rejection_message(approval_message: &[u8]) -> Vec<u8> {
    let mut m = REJECTION_DOMAIN.to_vec();
    m.extend_from_slice(approval_message);
    m
}

impl Cloud {
    /// Refuses pending request `id` of `tenant` on the word of the admin whose signature
    /// over its rejection message `body` carries: a member of the group whose approvals
    /// would count (for governance, a current governor), as for an approval.
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
            self.check_governor(&row, &by).await?;
            executors::check_in_group(&row, &by)?;
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
}
