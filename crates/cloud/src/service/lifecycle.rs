//! A request's lifecycle, whatever its kind: creation with its approvals, approvals one by
//! one, expiry, submission (and resubmission after a restart), the recorded outcome, and
//! the API view.

use super::*;
use crate::replica::Job;
use std::time::Duration;

/// How long a request whose outcome is unknown rests before it is sent again after its
/// first attempt (the node that lost its answer may be restarting); doubled after each
/// attempt up to [`RETRY_UNKNOWN_MAX_MS`], so a node that never answers costs a few
/// attempts an hour, not one every few seconds.
pub(crate) const RETRY_UNKNOWN_AFTER_MS: u64 = 1000;
/// Longest rest between two attempts of a request whose outcome is unknown.
pub(crate) const RETRY_UNKNOWN_MAX_MS: u64 = 5 * 60 * 1000;

/// Rest before the next attempt of a request that has had `attempts`.
fn unknown_rest_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(20);
    RETRY_UNKNOWN_AFTER_MS
        .saturating_mul(1u64 << doublings)
        .min(RETRY_UNKNOWN_MAX_MS)
}

impl Cloud {
    pub(super) async fn create(
        &self,
        caller: &Principal,
        d: Draft,
    ) -> Result<RequestOutcome, ApiError> {
        // The routes check this before anything else; here it holds for every way in.
        crate::access::check_inline_approvals(caller, d.approvals.len())?;
        if d.approvals.len() > MAX_APPROVALS {
            return Err(ApiError::new(
                ErrorCode::TooManyApprovals,
                format!("{} approvals, at most {MAX_APPROVALS}", d.approvals.len()),
            ));
        }
        let now = self.now_ms();
        let mut row = RequestRow {
            id: hex::encode(d.id),
            cluster: d.cluster,
            quorum: d.quorum,
            terms: d.terms,
            status: RequestStatus::PendingApproval,
            created_at: now,
            updated_at: now,
            expires_at: d.expires_at,
            approvals: Vec::new(),
            result: None,
            error_code: None,
            error_message: None,
            attempts: 0,
            created_by: caller.name.clone(),
            tenant: caller.tenant.clone(),
            version: 1,
            owner: None,
            events: Vec::new(),
        };
        let message = message_of(&row);
        for a in &d.approvals {
            let stored = self.verify_approval(a, &message)?;
            executors::check_in_group(&row, &stored)?;
            let by_key = row.terms.counts_keys_only();
            if row.approvals.iter().any(|x| x.same_admin(&stored, by_key)) {
                return Err(ApiError::new(
                    ErrorCode::DuplicateApproval,
                    format!("admin {:?} approved twice", stored.admin),
                ));
            }
            row.approvals.push(stored);
        }
        let admins: Vec<&str> = row.approvals.iter().map(|a| a.admin.as_str()).collect();
        let detail = format!(
            "{} on {} by {} (tenant {}); quorum {}; approvals: [{}]",
            row.kind().as_str(),
            row.cluster,
            caller.name,
            caller.tenant,
            row.quorum,
            admins.join(", ")
        );
        let ready = executors::approvals_complete(&row);
        let mut events = vec![("created", detail)];
        // Marked before the row exists, so that this replica's own recovery never takes it.
        let _executing = ready.then(|| self.replica().executing(&row.id));
        if ready {
            self.replica().check_fresh()?;
            // Quorum on arrival: stored as submitting in the same statement.
            row.status = RequestStatus::Submitting;
            row.attempts = 1;
            row.version = 2;
            row.owner = Some(self.replica().id.clone());
            events.push((
                "submitting",
                format!("attempt 1 by replica {}", self.replica().id),
            ));
        }
        self.store
            .insert_request_with_events(&mut row, events)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => ApiError::new(
                    ErrorCode::RequestExists,
                    format!("request {} already exists", row.id),
                ),
                other => other.into(),
            })?;
        self.metrics.created(row.kind().as_str());
        // One line per created request; with its quorum on arrival it is also submitted
        // (attempt 1), which the same line says.
        tracing::info!(
            request_id = %row.id,
            kind = row.kind().as_str(),
            cluster = %row.cluster,
            caller = %caller.name,
            tenant = %caller.tenant,
            approvals = row.approvals.len(),
            quorum = row.quorum,
            submitting = ready,
            "request created"
        );
        if ready {
            let row = self.execute(row, d.wallet_xpub).await?;
            return self.outcome(row, true).await;
        }
        self.outcome(row, false).await
    }

    pub(super) async fn outcome(
        &self,
        row: RequestRow,
        submitted: bool,
    ) -> Result<RequestOutcome, ApiError> {
        let view = self.view(&row, true).await?;
        if submitted && view.status == RequestStatus::Failed {
            if let Some(e) = &view.error {
                // The caller asked for an answer now; the request stays retryable.
                let code = ErrorCode::parse(&e.code).filter(|c| {
                    matches!(
                        c,
                        ErrorCode::ClusterUnavailable
                            | ErrorCode::RelayRejected
                            | ErrorCode::UnverifiedResponse
                            | ErrorCode::ExecutorKeyMismatch
                    )
                });
                if let Some(code) = code {
                    return Err(
                        ApiError::new(code, format!("request {}: {}", view.id, e.message))
                            .with_request(&view.id),
                    );
                }
            }
        }
        Ok(RequestOutcome { view, submitted })
    }

    /// The admin certificate `cert` issued by `ca`, verified against the trust root
    /// (cached) and valid now.
    pub(crate) fn verified_admin(&self, cert: &[u8], ca: &[u8]) -> Result<VerifiedAdmin, String> {
        let now = self.now_secs();
        self.admins
            .lock()
            .expect("admin cache lock")
            .verify(&self.trust_root, cert, ca, now)
            .cloned()
            .map_err(|e| e.to_string())
    }

    /// Verifies an approval's chain (cached) and signature over `message`.
    pub(crate) fn verify_approval(
        &self,
        a: &ApprovalBody,
        message: &[u8],
    ) -> Result<StoredApproval, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::ApprovalInvalid, m);
        let approval = decode_approval(a).map_err(invalid)?;
        let admin = self
            .verified_admin(&approval.admin_cert, &approval.admin_ca)
            .map_err(invalid)?;
        // The TEE's own check (it also keeps passkey counters, which only it can).
        check_signature(&admin, message, &approval).map_err(|(fault, detail)| {
            invalid(format!(
                "approval of admin {:?} refused ({}): {detail}",
                admin.identity.name,
                fault.as_str()
            ))
        })?;
        Ok(StoredApproval {
            admin: admin.identity.name.clone(),
            fingerprint: hex::encode(admin.identity.fingerprint),
            subject: hex::encode(&admin.identity.subject),
            key: hex::encode(admin.identity.key),
            cert: hex::encode(&approval.admin_cert),
            ca: hex::encode(&approval.admin_ca),
            signature: hex::encode(&approval.signature),
            webauthn: a.webauthn.clone(),
            at_ms: self.now_ms(),
        })
    }

    /// The request `id` of `tenant`: another tenant's request is unknown, exactly as one
    /// that does not exist (its existence is not told).
    pub(super) async fn request_row(&self, tenant: &str, id: &str) -> Result<RequestRow, ApiError> {
        parse_request_id(id).map_err(|m| ApiError::new(ErrorCode::InvalidRequestId, m))?;
        let id = id.to_ascii_lowercase();
        let row = self
            .store
            .request(&id)
            .await?
            .filter(|r| r.tenant == tenant)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownRequest, format!("no request {id}")))?;
        self.expire_if_due(row).await
    }

    /// Marks a pending request whose window has passed as expired.
    pub(super) async fn expire_if_due(&self, row: RequestRow) -> Result<RequestRow, ApiError> {
        if row.status != RequestStatus::PendingApproval || self.now_secs() <= row.expires_at {
            return Ok(row);
        }
        let mut next = row.clone();
        next.status = RequestStatus::Expired;
        next.updated_at = self.now_ms();
        let detail = format!(
            "{} of {} approvals at expiry {}",
            row.approvals.len(),
            row.quorum,
            row.expires_at
        );
        match self
            .store
            .update_request(&next, "expired", detail, None)
            .await
        {
            Ok(r) => {
                tracing::info!(request_id = %r.id, "request expired");
                Ok(r)
            }
            // Someone else moved it on; report what is stored now.
            Err(StoreError::Conflict(_)) => self.store.request(&row.id).await?.ok_or_else(|| {
                ApiError::new(ErrorCode::UnknownRequest, format!("no request {}", row.id))
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A request for a background sweep; one that cannot be read is logged and skipped so
    /// that it does not stop the sweep.
    pub(super) async fn readable(&self, id: &str) -> Option<RequestRow> {
        self.store
            .request(id)
            .await
            .map_err(|e| tracing::error!(request_id = %id, error = %e, "request skipped"))
            .ok()
            .flatten()
    }

    /// Expires every pending request past its window; returns how many.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        let ids = self
            .store
            .request_ids_with_status(RequestStatus::PendingApproval, Some(self.now_secs()))
            .await?;
        let mut n = 0;
        for id in ids {
            if let Some(row) = self.readable(&id).await {
                match self.expire_if_due(row).await {
                    Ok(r) if r.status == RequestStatus::Expired => n += 1,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(request_id = %id, error = %e.message, "expiry failed"),
                }
            }
        }
        Ok(n)
    }

    /// `GET /v1/requests/{id}` for a token of `tenant`.
    pub async fn request(&self, tenant: &str, id: &str) -> Result<RequestView, ApiError> {
        let row = self.request_row(tenant, id).await?;
        self.view(&row, true).await
    }

    /// `GET /v1/requests`: the requests of `tenant`.
    pub async fn requests(&self, tenant: &str, q: &RequestQuery) -> Result<RequestList, ApiError> {
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIST {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("limit must be 1..={MAX_LIST}"),
            ));
        }
        let rows = self
            .store
            .requests_of(Some(tenant), q.status, q.kind, limit)
            .await?;
        let mut requests = Vec::with_capacity(rows.len());
        for r in &rows {
            requests.push(self.view(r, false).await?);
        }
        Ok(RequestList { requests })
    }

    /// `POST /v1/requests/{id}/approvals`: verifies and records one approval; at quorum,
    /// submits and waits for the cluster's verified answer.
    pub async fn approve(
        &self,
        tenant: &str,
        id: &str,
        body: ApprovalBody,
    ) -> Result<RequestOutcome, ApiError> {
        // Refused before anything is recorded: an approval completing the quorum is stored
        // with the submission it starts.
        self.replica().check_fresh()?;
        let mut row = self.request_row(tenant, id).await?;
        for _ in 0..CAS_RETRIES {
            match row.status {
                RequestStatus::PendingApproval => {}
                RequestStatus::Expired => {
                    return Err(ApiError::new(
                        ErrorCode::RequestExpired,
                        format!("request {} expired at {}", row.id, row.expires_at),
                    ))
                }
                s => {
                    return Err(ApiError::new(
                        ErrorCode::NotPending,
                        format!("request {} is {}", row.id, s.as_str()),
                    ))
                }
            }
            if let Err(f) = executors::check_format(&row) {
                return Err(ApiError::new(ErrorCode::ApprovalFormatChanged, f.message));
            }
            let message = message_of(&row);
            let approval = self.verify_approval(&body, &message)?;
            // Governance: only a current, unrevoked governor counts (refused early, by name).
            self.check_governor(&row, &approval).await?;
            executors::check_in_group(&row, &approval)?;
            let by_key = row.terms.counts_keys_only();
            if row
                .approvals
                .iter()
                .any(|a| a.same_admin(&approval, by_key))
            {
                return Err(ApiError::new(
                    ErrorCode::DuplicateApproval,
                    format!(
                        "admin {:?} already approved request {}",
                        approval.admin, row.id
                    ),
                ));
            }
            let mut next = row.clone();
            let detail = format!("{} ({})", approval.admin, approval.fingerprint);
            next.approvals.push(approval);
            next.updated_at = self.now_ms();
            let complete = executors::approvals_complete(&next);
            let mut steps = vec![("approved", detail)];
            // At quorum the approval and the submission it starts are one write, so that no
            // approved request is ever stored unsubmitted (a crash between two writes would
            // have left one that nothing submits).
            let _executing = complete.then(|| self.replica().executing(&next.id));
            if complete {
                self.replica().check_fresh()?;
                next.status = RequestStatus::Submitting;
                next.attempts += 1;
                next.owner = Some(self.replica().id.clone());
                steps.push((
                    "submitting",
                    format!("attempt {} by replica {}", next.attempts, self.replica().id),
                ));
            }
            match self
                .store
                .update_request_steps(&next, steps, Record::Nothing)
                .await
            {
                Ok(stored) => {
                    tracing::info!(
                        request_id = %stored.id,
                        approvals = stored.approvals.len(),
                        quorum = stored.quorum,
                        submitting = complete,
                        "approval recorded"
                    );
                    if complete {
                        let done = self.execute(stored, None).await?;
                        return self.outcome(done, true).await;
                    }
                    return self.outcome(stored, false).await;
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

    /// `POST /v1/requests/{id}/retry`: resubmits a failed request with the same id.
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<RequestOutcome, ApiError> {
        let row = self.request_row(tenant, id).await?;
        if row.status != RequestStatus::Failed {
            return Err(ApiError::new(
                ErrorCode::NotPending,
                format!(
                    "request {} is {}, only failed requests are retried",
                    row.id,
                    row.status.as_str()
                ),
            ));
        }
        let done = self.submit(row).await?;
        self.outcome(done, true).await
    }

    /// Moves a request to `submitting` (compare-and-swap, so only one caller submits) and
    /// executes it.
    pub(super) async fn submit(&self, row: RequestRow) -> Result<RequestRow, ApiError> {
        self.replica().check_fresh()?;
        let _executing = self.replica().executing(&row.id);
        let mut next = row.clone();
        next.status = RequestStatus::Submitting;
        next.attempts += 1;
        next.updated_at = self.now_ms();
        next.error_code = None;
        next.error_message = None;
        next.owner = Some(self.replica().id.clone());
        let event = if row.status == RequestStatus::Submitting {
            "resubmitting"
        } else {
            "submitting"
        };
        let detail = format!("attempt {} by replica {}", next.attempts, self.replica().id);
        let stored = match self.store.update_request(&next, event, detail, None).await {
            Ok(s) => s,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::new(
                    ErrorCode::NotPending,
                    format!("request {} is being submitted by another call", row.id),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(request_id = %stored.id, attempt = stored.attempts, cluster = %stored.cluster, "submitting");
        Ok(self.execute(stored, None).await?)
    }

    /// Resubmits every request in `submitting` that no live replica is executing (crash
    /// recovery: its owner died, or it was left by a server older than replicas), with its
    /// own id: the link returns the first answer if the request was executed before the
    /// crash. A threshold request waits until its last attempt's session must have ended
    /// ([`takeover_after_ms`]). The requests this replica or another live one executes are
    /// left alone, and of two replicas recovering at once only one moves a request on
    /// (compare-and-swap, and only while its owner is still the dead one).
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let me = self.replica().id.clone();
        let now = self.replica_now_ms().await?;
        let orphans = self.store.orphaned_submissions(&me, now).await?;
        let mut n = 0;
        for orphan in orphans {
            let id = orphan.id.clone();
            if !self.replica().may_run(Job::Recovery) || self.replica().stopping() {
                break;
            }
            let Some(row) = self.readable(&id).await else {
                continue;
            };
            if row.status != RequestStatus::Submitting || row.owner != orphan.owner {
                continue;
            }
            let after = takeover_after_ms(&row);
            let due = match orphan.owner_seen {
                // The owner fenced itself half its TTL after its last heartbeat began, and
                // its last session ended within its limit after that (database clock).
                Some((seen, ttl)) => now >= seen.saturating_add(ttl / 2).saturating_add(after),
                // Its row is gone (a day dead) or it predates replicas: its last change.
                None => self.now_ms() >= row.updated_at.saturating_add(after),
            };
            if !due {
                continue;
            }
            n += 1;
            tracing::info!(
                request_id = %id,
                owner = orphan.owner.as_deref().unwrap_or("none"),
                "resubmitting a request whose replica is gone"
            );
            if let Err(e) = self.submit(row).await {
                tracing::warn!(request_id = %id, error = %e.message, "recovery failed");
            }
        }
        Ok(n)
    }

    /// Resubmits the requests this replica owns in `submitting` but no longer executes: a
    /// call that ended (an error, a panic) before it recorded an outcome. Every replica runs
    /// it for its own requests.
    pub async fn recover_own(&self) -> Result<usize, StoreError> {
        let me = self.replica().id.clone();
        let mut n = 0;
        for id in self.store.owned_submissions(&me).await? {
            if self.replica().stopping() {
                break;
            }
            if self.replica().is_executing(&id) {
                continue;
            }
            let Some(row) = self.readable(&id).await else {
                continue;
            };
            if row.status != RequestStatus::Submitting
                || row.owner.as_deref() != Some(&me)
                || self.replica().is_executing(&id)
            {
                continue;
            }
            n += 1;
            tracing::warn!(request_id = %id, "resubmitting a request whose call ended without an outcome");
            if let Err(e) = self.submit(row).await {
                tracing::warn!(request_id = %id, error = %e.message, "resubmission failed");
            }
        }
        Ok(n)
    }

    /// Sends again, with its own id and to the node it is pinned to, every request whose
    /// last attempt's outcome is unknown once it has rested ([`RETRY_UNKNOWN_AFTER_MS`], doubling): that
    /// node's TEE answers the key it made, or makes it if the request never got there. One
    /// whose approvals expired meanwhile ends refused, naming the node (a key made there
    /// reaches the key list when the node registers).
    pub async fn retry_unknown_outcomes(&self) -> Result<usize, StoreError> {
        let ids = self
            .store
            .request_ids_with_status(RequestStatus::Submitting, None)
            .await?;
        let mut n = 0;
        for id in ids {
            let Some(row) = self.readable(&id).await else {
                continue;
            };
            if row.status != RequestStatus::Submitting
                || row.error_code.as_deref() != Some(crate::cluster::OUTCOME_UNKNOWN)
                || self.now_ms() < row.updated_at.saturating_add(unknown_rest_ms(row.attempts))
            {
                continue;
            }
            n += 1;
            let done = if row.expires_at <= self.now_secs() {
                let node = row.terms.pinned_node().unwrap_or("?").to_string();
                let failure = Failure::new(
                    crate::cluster::OUTCOME_UNKNOWN,
                    format!(
                        "its approvals expired while its outcome on node {node} was unknown; a \
                         key made there reaches the key list when the node registers"
                    ),
                );
                self.finish(row, Verdict::Refused(failure))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                tracing::info!(request_id = %id, "resubmitting after an unknown outcome");
                self.submit(row).await.map(|_| ()).map_err(|e| e.message)
            };
            if let Err(e) = done {
                tracing::warn!(request_id = %id, error = %e, "retry after an unknown outcome failed");
            }
        }
        Ok(n)
    }

    /// Records how a submission ended (one transaction with what it records).
    pub(super) async fn finish(
        &self,
        row: RequestRow,
        verdict: Verdict,
    ) -> Result<RequestRow, StoreError> {
        let mut next = row.clone();
        next.updated_at = self.now_ms();
        let (event, detail, recorded) = match verdict {
            Verdict::Completed(c) => {
                let Completion {
                    node,
                    result,
                    recorded,
                } = *c;
                next.status = RequestStatus::Completed;
                next.result = Some(serde_json::to_string(&result).expect("results serialize"));
                ("completed", format!("served by {node}"), recorded)
            }
            Verdict::Failed(f) => f.record(&mut next, RequestStatus::Failed),
            Verdict::Refused(f) => f.record(&mut next, RequestStatus::Refused),
            Verdict::Unknown { node, failure } => {
                // Every later attempt goes to that node: another would make a second key.
                if let Terms::CreateWallet {
                    node: pinned @ None,
                } = &mut next.terms
                {
                    *pinned = Some(node);
                }
                let (_, detail, recorded) = failure.record(&mut next, RequestStatus::Submitting);
                ("outcome_unknown", detail, recorded)
            }
        };
        // The wallet whose cached row must go once its new quorum is stored.
        let quorum = match &recorded {
            Record::WalletQuorum(root_id, _) => Some(root_id.clone()),
            _ => None,
        };
        let stored = match self
            .store
            .update_request_recording(&next, event, detail.clone(), recorded.clone())
            .await
        {
            // The same wallet recorded by an earlier request (e.g. one seed imported into
            // two clusters): the request still completed.
            Err(StoreError::Duplicate(w)) => {
                tracing::warn!(request_id = %row.id, "{w} was already recorded");
                self.store
                    .update_request(&next, event, detail, None)
                    .await?
            }
            // The TEE imported a share whose key facts differ from those recorded by the
            // key's earlier imports (or a key generation made a key already recorded):
            // nothing is recorded, the request is refused.
            Err(StoreError::Inconsistent(why)) => {
                tracing::error!(request_id = %row.id, "{why}");
                let mut refused = row.clone();
                refused.updated_at = next.updated_at;
                refused.status = RequestStatus::Refused;
                refused.error_code = Some("threshold_key_mismatch".into());
                refused.error_message = Some(why.clone());
                self.store
                    .update_request(
                        &refused,
                        "refused",
                        format!("threshold_key_mismatch: {why}"),
                        None,
                    )
                    .await?
            }
            // Another replica took the request over meanwhile (this one looked dead to it).
            Err(StoreError::Conflict(_)) => {
                match self
                    .finish_taken_over(&row, &next, event, detail, recorded)
                    .await?
                {
                    TakenOver::Recorded(stored) => stored,
                    TakenOver::Left(now) => return Ok(now),
                }
            }
            other => other?,
        };
        if let (RequestStatus::Completed, Some(root_id)) = (stored.status, &quorum) {
            // The cached row holds the quorum replaced; a read under way may too.
            let mut cache = self.wallets.lock().expect("wallet cache lock");
            cache.rows.remove(root_id);
            cache.forgotten += 1;
        }
        self.metrics.ended(
            stored.kind().as_str(),
            stored.status.as_str(),
            stored.updated_at.saturating_sub(stored.created_at) as f64 / 1000.0,
        );
        match stored.status {
            RequestStatus::Completed => {
                tracing::info!(request_id = %stored.id, kind = stored.kind().as_str(), "request completed")
            }
            s => tracing::warn!(
                request_id = %stored.id,
                status = s.as_str(),
                code = stored.error_code.as_deref().unwrap_or_default(),
                "request did not complete"
            ),
        }
        Ok(stored)
    }

    /// [`Cloud::finish`] after another replica moved the request on. A completion is
    /// recorded, with what it records, on the request as it is now while that is still
    /// being submitted or ended failed (the other attempt, sent with the same id, gets the
    /// same answer, or failed where this one succeeded); any other outcome, or a request
    /// that ended otherwise, is left to the replica that took it over.
    async fn finish_taken_over(
        &self,
        row: &RequestRow,
        ours: &RequestRow,
        event: &str,
        detail: String,
        recorded: Record,
    ) -> Result<TakenOver, StoreError> {
        for _ in 0..CAS_RETRIES {
            let now = self
                .store
                .request(&row.id)
                .await?
                .ok_or_else(|| StoreError::Conflict(row.id.clone()))?;
            let open = matches!(
                now.status,
                RequestStatus::Submitting | RequestStatus::Failed
            );
            if ours.status != RequestStatus::Completed || !open {
                tracing::warn!(
                    request_id = %row.id,
                    owner = now.owner.as_deref().unwrap_or("none"),
                    status = now.status.as_str(),
                    "outcome left to the replica that took the request over"
                );
                return Ok(TakenOver::Left(now));
            }
            let mut next = now.clone();
            next.status = RequestStatus::Completed;
            next.result = ours.result.clone();
            next.error_code = None;
            next.error_message = None;
            next.updated_at = ours.updated_at;
            let written = match self
                .store
                .update_request_recording(&next, event, detail.clone(), recorded.clone())
                .await
            {
                // Recorded already (by the other replica's completion of the same answer).
                Err(StoreError::Duplicate(_)) => {
                    self.store
                        .update_request(&next, event, detail.clone(), None)
                        .await
                }
                other => other,
            };
            match written {
                Ok(stored) => return Ok(TakenOver::Recorded(stored)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(row.id.clone()))
    }

    pub(super) async fn view(
        &self,
        row: &RequestRow,
        with_events: bool,
    ) -> Result<RequestView, ApiError> {
        let mut view = base_view(row);
        view.approval_message = hex::encode(message_of(row));
        if with_events {
            // The log is part of the row: no second read.
            view.events = row
                .events
                .iter()
                .map(|e| EventView {
                    at_ms: e.at,
                    event: e.event.clone(),
                    detail: e.detail.clone(),
                })
                .collect();
        }
        Ok(view)
    }
}

/// What [`Cloud::finish`] did after losing its compare-and-swap to another replica.
enum TakenOver {
    /// Its completion is recorded (the row as stored).
    Recorded(RequestRow),
    /// The request is the other replica's to finish (the row as it is now).
    Left(RequestRow),
}

/// The view of a row without events and approval message.
pub(super) fn base_view(row: &RequestRow) -> RequestView {
    let mut view = RequestView {
        rules: None,
        transaction: None,
        id: row.id.clone(),
        kind: row.kind(),
        cluster: row.cluster.clone(),
        status: row.status,
        root_id: None,
        share_index: None,
        threshold: None,
        hd: None,
        clusters: None,
        path: None,
        digest: None,
        message: None,
        governance: None,
        key_policy: None,
        quorum: row.quorum,
        tiers: None,
        group: None,
        executor: None,
        executors: None,
        anchors: None,
        approvals: row
            .approvals
            .iter()
            .map(|a| ApprovalView {
                admin: a.admin.clone(),
                fingerprint: a.fingerprint.clone(),
                key_fingerprint: a.key.clone(),
                approved_at_ms: a.at_ms,
            })
            .collect(),
        expires_at: row.expires_at,
        created_at_ms: row.created_at,
        updated_at_ms: row.updated_at,
        created_by: row.created_by.clone(),
        target_node: None,
        attempts: row.attempts,
        approval_message: String::new(),
        summary: row.terms.summary(&row.cluster, row.quorum),
        result: row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        error: row.error_code.as_ref().map(|code| RequestError {
            code: code.clone(),
            message: row.error_message.clone().unwrap_or_default(),
        }),
        events: Vec::new(),
    };
    row.terms.fill_view(&mut view);
    view.tiers = tier_needs(row);
    // A creation has no wallet or key until it completed (its approval message does not
    // depend on one); then it is the result's.
    if view.root_id.is_none() {
        view.root_id = match &view.result {
            Some(RequestResult::Wallet(w)) => Some(w.root_id.clone()),
            Some(RequestResult::ThresholdKey(k)) => Some(k.key_id.clone()),
            _ => None,
        };
    }
    view
}

/// The tiers of other groups `row` needs, with the approvals of each so far.
fn tier_needs(row: &RequestRow) -> Option<Vec<TierNeedView>> {
    let tiers = row.terms.tier_groups();
    (!tiers.is_empty()).then(|| {
        tiers
            .iter()
            .map(|t| TierNeedView {
                tier: ApprovalTierView::of_group_tier(t),
                approved: row
                    .approvals
                    .iter()
                    .filter(|a| executors::in_group(&t.group, a))
                    .count()
                    .min(usize::from(u8::MAX)) as u8,
            })
            .collect()
    })
}

/// How long after its owner fenced itself a request may still be executing there. A
/// threshold request's attempt is a session of its own, and a resubmission starts another:
/// it is taken over only once the session must have ended (the driver's limit and its abort;
/// a fenced owner starts no further session, see `drive_session`). Any other request is
/// resent with its own id, which the link answers once: at once.
pub(crate) fn takeover_after_ms(row: &RequestRow) -> u64 {
    const ABORT_MARGIN: Duration = Duration::from_secs(15);
    let limit = match row.kind() {
        _ if !row.terms.spans() => return 0,
        RequestKind::CreateThresholdKey => THRESHOLD_KEYGEN_TIMEOUT,
        _ => THRESHOLD_SESSION_TIMEOUT,
    };
    (limit + ABORT_MARGIN).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::{unknown_rest_ms, RETRY_UNKNOWN_AFTER_MS, RETRY_UNKNOWN_MAX_MS};

    #[test]
    fn resends_after_an_unknown_outcome_back_off_to_a_cap() {
        assert_eq!(unknown_rest_ms(0), RETRY_UNKNOWN_AFTER_MS);
        assert_eq!(unknown_rest_ms(1), RETRY_UNKNOWN_AFTER_MS);
        assert_eq!(unknown_rest_ms(2), 2 * RETRY_UNKNOWN_AFTER_MS);
        assert_eq!(unknown_rest_ms(5), 16 * RETRY_UNKNOWN_AFTER_MS);
        assert_eq!(unknown_rest_ms(30), RETRY_UNKNOWN_MAX_MS);
        assert_eq!(unknown_rest_ms(u32::MAX), RETRY_UNKNOWN_MAX_MS);
    }
}
