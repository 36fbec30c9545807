//! Threshold key audits: every group of t clusters signs a fresh audit message with the
//! key, so each share is shown to still work together with the others.

use super::*;

/// The clusters (share indexes) of each audit session of an `n`-cluster key with threshold
/// `t`: consecutive groups of t, wrapping around, so every cluster takes part at least once
/// in ⌈n/t⌉ sessions.
pub(super) fn audit_groups(n: usize, t: usize) -> Vec<Vec<usize>> {
    if t == 0 || t > n {
        return Vec::new();
    }
    (0..n.div_ceil(t))
        .map(|k| (0..t).map(|j| (k * t + j) % n).collect())
        .collect()
}

impl Cloud {
    /// `POST /v1/threshold/keys/{key_id}/audit` (patent \[0086\]): runs audit sessions
    /// ([`audit_groups`]: consecutive groups of t clusters, wrapping around) so that every
    /// cluster holding a share takes part at least once, each signing a fresh random
    /// 8-byte message; every signature is verified against the key's root public key over
    /// `audit_digest(message)`. No admin approvals: a TEE signs only the domain-separated
    /// audit digest with the root key in such a session, which can never be a transaction
    /// digest. No request is recorded; the report is stored as the key's latest (every
    /// replica reads it).
    pub async fn threshold_audit(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<ThresholdAuditReport, ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        let started_at_ms = self.now_ms();
        let groups = audit_groups(key.clusters.len(), usize::from(key.threshold));
        let runs = groups.iter().map(|g| {
            let clusters: Vec<String> = g.iter().map(|&i| key.clusters[i].clone()).collect();
            self.audit_session(&key, clusters)
        });
        let sessions = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, StoreError>>()?;
        let clusters = key
            .clusters
            .iter()
            .map(|c| {
                let mine: Vec<&ThresholdAuditSessionView> =
                    sessions.iter().filter(|s| s.clusters.contains(c)).collect();
                let ok = mine.iter().any(|s| s.verified);
                let error = (!ok).then(|| {
                    mine.iter()
                        .map(|s| {
                            format!(
                                "session with {}: {}",
                                s.clusters.join(", "),
                                s.error.as_deref().unwrap_or("no verified signature")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                ThresholdAuditClusterView {
                    cluster: c.clone(),
                    ok,
                    error,
                }
            })
            .collect::<Vec<_>>();
        let report = ThresholdAuditReport {
            key_id: key.key_id.clone(),
            started_at_ms,
            finished_at_ms: self.now_ms(),
            sessions,
            clusters,
        };
        tracing::info!(
            key = %key.key_id,
            sessions = report.sessions.len(),
            verified = report.sessions.iter().filter(|s| s.verified).count(),
            failed_clusters = %names(
                &report
                    .clusters
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.cluster.clone())
                    .collect::<Vec<_>>()
            ),
            "threshold audit done"
        );
        let verified = report.sessions.iter().filter(|s| s.verified).count();
        self.metrics
            .threshold_audited(verified, report.sessions.len() - verified);
        let json = serde_json::to_string(&report).expect("reports serialize");
        self.store
            .save_threshold_audit(&key.key_id, report.finished_at_ms, json)
            .await?;
        Ok(report)
    }

    /// `GET /v1/threshold/keys/{key_id}/audit`: the latest report, whichever replica made it.
    pub async fn latest_threshold_audit(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<ThresholdAuditReport, ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        let Some(json) = self.store.threshold_audit(&key.key_id).await? else {
            return Err(ApiError::new(
                ErrorCode::NoThresholdAudit,
                format!("threshold key {} was never audited", key.key_id),
            ));
        };
        serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("threshold audit of {}: {e}", key.key_id)).into()
        })
    }

    /// One audit session between `clusters` (exactly t), over a fresh random message.
    pub(super) async fn audit_session(
        &self,
        key: &ThresholdKeyRow,
        clusters: Vec<String>,
    ) -> Result<ThresholdAuditSessionView, StoreError> {
        let mut message = [0u8; MAX_AUDIT_MESSAGE];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut message);
        let mut view = ThresholdAuditSessionView {
            clusters: clusters.clone(),
            message_hex: hex::encode(message),
            r: None,
            s: None,
            v: None,
            verified: false,
            error: None,
            blamed: Vec::new(),
        };
        let failed = |mut view: ThresholdAuditSessionView, a: Abort| {
            tracing::warn!(
                key = %key.key_id,
                clusters = %names(&view.clusters),
                code = %a.code,
                blamed = %names(&a.blamed),
                "threshold audit session failed: {}",
                a.message
            );
            view.error = Some(format!("{}: {}", a.code, a.message));
            view.blamed = a.blamed;
            view
        };
        let participants = match self
            .choose_participants(key, Some(clusters), &[], None)
            .await?
        {
            Ok(p) => p,
            Err(a) => return Ok(failed(view, a)),
        };
        // A fresh session id: audits are not requests, and each session runs once.
        let session = SessionRef {
            request_id: random_id(),
            attempt: 0,
        };
        let label = format!("audit-{}", hex::encode(session.request_id));
        let start = encode_request(&Request::ThresholdAuditStart {
            session,
            key_id: hex::decode(&key.key_id).unwrap_or_default(),
            message: message.to_vec(),
            signers: signers_of(&participants),
        });
        let mut st = Session::new(Run::Sign, session, &participants);
        if let Err(a) = self
            .drive_session(&label, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
            .await
        {
            return Ok(failed(view, a));
        }
        match self.check_threshold_signature(key, &[], &audit_digest(&message), &st) {
            Ok(sig) => {
                view.r = Some(sig.r);
                view.s = Some(sig.s);
                view.v = Some(sig.v);
                view.verified = true;
                Ok(view)
            }
            Err(m) => Ok(failed(view, Abort::new("bad_signature", m, Vec::new()))),
        }
    }
}
