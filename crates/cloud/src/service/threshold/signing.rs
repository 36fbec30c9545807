//! Threshold signing requests: created with their approvals, executed with a presignature
//! when one fits or by the interactive protocol between t clusters, and the combined
//! signature verified with libsecp256k1 against the child key at the approved path.

use super::*;

/// Verifies a threshold signature for the key's child at `path` (low-s, `v`, the child
/// derived from the recorded key).
pub(super) fn verify_threshold_result(
    secp: &Secp256k1<All>,
    keys: &ChildKeys,
    key: &ThresholdKeyRow,
    path: &[u32],
    digest: &[u8; 32],
    sig: &EcdsaSignature,
) -> Result<SignResult, String> {
    // Without a chain code only the key itself signs (path m, checked at creation); a zero
    // chain code then stands in, derivation along an empty path being the identity.
    let key_id = hex::decode(&key.key_id).map_err(|e| e.to_string())?;
    let chain_code = chain_code_of(key)?;
    if chain_code.is_none() && !path.is_empty() {
        return Err("a key without chain code signed with a path".into());
    }
    let xpub = threshold_xpub(&key_id, &chain_code.unwrap_or([0u8; 32]))?.to_string();
    verify_sign_result(secp, keys, digest, path, Some(&xpub), sig)
}

/// Checks clusters a caller named for a session of `key`: each named once, each holding a
/// share, at least t of them.
pub(super) fn check_named_clusters(key: &ThresholdKeyRow, list: &[String]) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for c in list {
        if !seen.insert(c.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidClusters,
                format!("cluster {c} named twice"),
            ));
        }
        if !key.clusters.contains(c) {
            return Err(ApiError::new(
                ErrorCode::InvalidClusters,
                format!(
                    "cluster {c} holds no share of threshold key {} (its clusters: {})",
                    key.key_id,
                    key.clusters.join(", ")
                ),
            ));
        }
    }
    if list.len() < usize::from(key.threshold) {
        return Err(ApiError::new(
            ErrorCode::InvalidClusters,
            format!(
                "{} clusters named, threshold key {} needs {}",
                list.len(),
                key.key_id,
                key.threshold
            ),
        ));
    }
    Ok(())
}

impl Cloud {
    /// The clusters a caller named for a session of `key` (`None`: the server chooses),
    /// checked: 1 to [`MAX_THRESHOLD_CLUSTERS`] configured clusters, each holding a share,
    /// each once, at least t.
    pub(super) fn named_clusters(
        &self,
        key: &ThresholdKeyRow,
        list: Option<&[String]>,
    ) -> Result<Option<Vec<String>>, ApiError> {
        self.check_cluster_names(list)?;
        let Some(list) = list else {
            return Ok(None);
        };
        check_named_clusters(key, list)?;
        Ok(Some(list.to_vec()))
    }

    /// A list of clusters a caller named: 1 to [`MAX_THRESHOLD_CLUSTERS`], each configured
    /// here (`unknown_cluster` before any key is looked up).
    pub(in crate::service) fn check_cluster_names(
        &self,
        list: Option<&[String]>,
    ) -> Result<(), ApiError> {
        let Some(list) = list else {
            return Ok(());
        };
        if list.is_empty() || list.len() > MAX_THRESHOLD_CLUSTERS {
            return Err(ApiError::new(
                ErrorCode::InvalidClusters,
                format!("name 1 to {MAX_THRESHOLD_CLUSTERS} clusters"),
            ));
        }
        list.iter()
            .try_for_each(|c| self.cluster_config(c).map(|_| ()))
    }

    /// `POST /v1/threshold/sign`: records a `threshold_sign` request (cluster
    /// `*threshold*`); the clusters the caller named are part of its terms.
    pub async fn threshold_sign(
        &self,
        caller: &Principal,
        body: ThresholdSignBody,
    ) -> Result<RequestOutcome, ApiError> {
        let key_id =
            parse_key_id(&body.key_id).map_err(|m| ApiError::new(ErrorCode::InvalidKeyId, m))?;
        let path = parse_path(&body.path)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.to_string()))?;
        if has_hardened(&path) {
            return Err(ApiError::new(
                ErrorCode::HardenedPath,
                format!(
                    "{}: threshold keys derive non-hardened children only",
                    format_path(&path)
                ),
            ));
        }
        let message = match &body.message {
            None => None,
            Some(m) => {
                let bytes = hex::decode(m).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidMessage, format!("message: {e}"))
                })?;
                if bytes.len() > MAX_PRESIGN_MESSAGE {
                    return Err(ApiError::new(
                        ErrorCode::InvalidMessage,
                        format!(
                            "message of {} bytes, at most {MAX_PRESIGN_MESSAGE}",
                            bytes.len()
                        ),
                    ));
                }
                Some(bytes)
            }
        };
        let digest = match &message {
            Some(m) => {
                let d: [u8; 32] = Sha256::digest(m).into();
                if !body.digest.is_empty() && !body.digest.eq_ignore_ascii_case(&hex::encode(d)) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidMessage,
                        "the digest given is not SHA-256 of the message",
                    ));
                }
                d
            }
            None => parse_digest(&body.digest)
                .map_err(|m| ApiError::new(ErrorCode::InvalidDigest, m))?,
        };
        self.check_cluster_names(body.clusters.as_deref())?;
        let key = self.threshold_key_row(&caller.tenant, &body.key_id).await?;
        if key.chain_code.is_none() && !path.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!(
                    "threshold key {} has no chain code (no HD derivation): only path m",
                    key.key_id
                ),
            ));
        }
        let clusters = self.named_clusters(&key, body.clusters.as_deref())?;
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: THRESHOLD_SCOPE.to_string(),
                quorum: key.quorum,
                terms: Terms::ThresholdSign {
                    key_id,
                    path,
                    digest,
                    message,
                    clusters,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// The recorded threshold key a stored request of `row`'s tenant names, or the refusal
    /// (`unknown_threshold_key`): checked when the request was made, again as it is used.
    pub(super) async fn recorded_key(
        &self,
        row: &RequestRow,
        key_id: &[u8],
    ) -> Result<Result<ThresholdKeyRow, Verdict>, StoreError> {
        let key_id = hex::encode(key_id);
        let key = self.store.threshold_key(&key_id).await?;
        Ok(key.filter(|k| k.tenant == row.tenant).ok_or_else(|| {
            Verdict::Refused(Failure::new(
                "unknown_threshold_key",
                format!("threshold key {key_id} is not recorded"),
            ))
        }))
    }

    /// Runs a `submitting` threshold sign request as one session attempt and records the
    /// outcome.
    pub(in crate::service) async fn execute_threshold(
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
        let Terms::ThresholdSign {
            key_id,
            path,
            digest,
            message,
            ..
        } = row.terms.clone()
        else {
            let v = Verdict::Refused(Failure::new("bad_request_row", "not a threshold signing"));
            return self.finish(row, v).await;
        };
        let key = match self.recorded_key(&row, &key_id).await? {
            Ok(k) => k,
            Err(v) => return self.finish(row, v).await,
        };
        // A full message for a key without chain code: from a presignature when one is ready.
        if let (Some(message), None, true) = (&message, &key.chain_code, path.is_empty()) {
            match self
                .sign_presigned(&row, &key, attempt, message, &digest, approvals.clone())
                .await?
            {
                presign::Online::NoneReady => {}
                presign::Online::Signed(result, by) => {
                    self.forget_blame(&row.id);
                    let v =
                        Verdict::completed(by, RequestResult::Signature(result), Record::Nothing);
                    return self.finish(row, v).await;
                }
                presign::Online::Failed(a) => return self.threshold_failed(row, attempt, a).await,
            }
        }
        let participants = match self.threshold_participants(&row, &key).await? {
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
            key = %key.key_id,
            participants = %described,
            "threshold session starting"
        );
        let start = encode_request(&Request::ThresholdStart {
            meta: RequestMeta {
                request_id,
                expires_at: row.expires_at,
            },
            attempt,
            params: ThresholdSignParams {
                key_id: hex::decode(&key.key_id).unwrap_or_default(),
                path: path.clone(),
                digest,
                signers: signers_of(&participants),
            },
            approvals,
        });
        let began = Instant::now();
        let mut st = Session::new(Run::Sign, session, &participants);
        if let Err(abort) = self
            .drive_session(&row.id, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
            .await
        {
            return self.threshold_failed(row, attempt, abort).await;
        }
        tracing::info!(
            request_id = %row.id,
            attempt,
            exchanges = st.exchanges,
            ms = began.elapsed().as_millis() as u64,
            "threshold session signed"
        );
        let clusters: Vec<String> = participants.iter().map(|p| p.cluster.clone()).collect();
        let verdict = self.check_threshold_signature(&key, &path, &digest, &st);
        match verdict {
            Ok(mut result) => {
                result.clusters = Some(clusters);
                self.forget_blame(&row.id);
                let by = format!(
                    "{} (attempt {attempt}, {} exchanges)",
                    described, st.exchanges
                );
                let v = Verdict::completed(by, RequestResult::Signature(result), Record::Nothing);
                self.finish(row, v).await
            }
            Err(m) => {
                self.threshold_failed(row, attempt, Abort::new("bad_signature", m, Vec::new()))
                    .await
            }
        }
    }

    /// All participants' signatures agree and verify for the key's child at `path`.
    pub(super) fn check_threshold_signature(
        &self,
        key: &ThresholdKeyRow,
        path: &[u32],
        digest: &[u8; 32],
        st: &Session<'_>,
    ) -> Result<SignResult, String> {
        let sigs: Vec<&EcdsaSignature> = st
            .output
            .iter()
            .map(|o| match o {
                Some(Output::Signature(s)) => Ok(s),
                _ => Err("a participant returned no signature".to_string()),
            })
            .collect::<Result<_, _>>()?;
        let first = *sigs.first().ok_or("no signature")?;
        if let Some(i) = sigs.iter().position(|s| *s != first) {
            return Err(format!(
                "participants disagree: {} and {} returned different signatures",
                st.participants[0].cluster, st.participants[i].cluster
            ));
        }
        verify_threshold_result(&self.secp, &self.child_keys, key, path, digest, first)
    }

    /// Records a failed attempt (retryable unless `final_`) and remembers whom it blamed.
    pub(super) async fn threshold_failed(
        &self,
        row: RequestRow,
        attempt: u8,
        abort: Abort,
    ) -> Result<RequestRow, StoreError> {
        tracing::warn!(
            request_id = %row.id,
            attempt,
            code = %abort.code,
            blamed = %names(&abort.blamed),
            "threshold attempt failed: {}",
            abort.message
        );
        if !abort.blamed.is_empty() {
            let mut blamed = self.threshold_blamed.lock().expect("blame lock");
            if blamed.len() >= 10_000 {
                blamed.clear();
            }
            blamed.insert(row.id.clone(), abort.blamed.clone());
        }
        let message = format!("attempt {attempt}: {}", abort.message);
        let failure = Failure::new(abort.code, message);
        self.finish(row, Verdict::ended(failure, !abort.final_))
            .await
    }
}
