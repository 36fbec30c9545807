//! Wallets (B keys of one cluster): their creation and import requests, signing with a
//! wallet's child key, the execution of these requests in a cluster's TEE and the
//! verification of its answers, and the public derivation of a wallet's children.

use custos_wire::governance::device_key_fingerprint;

use super::*;

impl Cloud {
    /// `POST /v1/wallets`: a wallet sealed with its approver group, made by one node only
    /// (the one named, else the next serving node in turn).
    pub async fn create_wallet(
        &self,
        caller: &Principal,
        body: CreateWalletBody,
    ) -> Result<RequestOutcome, ApiError> {
        self.cluster_config(&body.cluster)?;
        Self::check_quorum(body.quorum)?;
        let group =
            parse_group(&body.group).map_err(|m| ApiError::new(ErrorCode::InvalidGroup, m))?;
        if usize::from(body.quorum) > group.len() {
            return Err(ApiError::new(
                ErrorCode::InvalidGroup,
                format!(
                    "quorum {} is more than the group's {} admins",
                    body.quorum,
                    group.len()
                ),
            ));
        }
        let rules = self
            .wallet_rules(&body.cluster, &group, body.quorum, body.rules.as_ref())
            .await?;
        let wanted = body
            .executor
            .as_deref()
            .map(parse_fingerprint)
            .transpose()
            .map_err(|m| ApiError::new(ErrorCode::UnknownExecutor, format!("executor: {m}")))?;
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let executor = self.choose_executor(&body.cluster, wanted).await?;
        self.create(
            caller,
            Draft {
                cluster: body.cluster,
                quorum: body.quorum,
                terms: Terms::CreateGroupWallet {
                    group,
                    executor_node: executor.node,
                    executor: executor.key_fingerprint,
                    rules,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// A new wallet's transaction rules (issue 14) as its policy carries them: `rules`, or
    /// transactions only when absent (raw digests are off for new keys: only a request
    /// asking for them, `{}`, signs them); a valid policy with `group` and `quorum`; a
    /// window's holder a node serving `cluster` now (else the wallet never would sign).
    async fn wallet_rules(
        &self,
        cluster: &str,
        group: &[[u8; 32]],
        quorum: u8,
        rules: Option<&PolicyRules>,
    ) -> Result<Vec<custos_wire::policy::Rule>, ApiError> {
        let invalid_rules = |m: String| ApiError::new(ErrorCode::InvalidRules, m);
        if rules.is_some_and(|r| r.velocity_share.is_some()) {
            return Err(invalid_rules(
                "velocity_share is a threshold key's; a wallet names its velocity_holder only"
                    .into(),
            ));
        }
        let rules = rules
            .cloned()
            .unwrap_or_else(PolicyRules::new_wallet_default)
            .to_rules()
            .map_err(invalid_rules)?;
        let mut policy = custos_cloud_api::approval::new_wallet_policy(group.to_vec(), quorum);
        policy.rules.extend_from_slice(&rules);
        policy
            .validate()
            .map_err(|e| invalid_rules(e.to_string()))?;
        if let Some(holder) = policy.spend_limits().and_then(|s| s.velocity_holder) {
            self.choose_executor(cluster, Some(holder))
                .await
                .map_err(|e| {
                    invalid_rules(format!(
                        "velocity_holder {} is not a serving node of {cluster}: {}",
                        hex::encode(holder),
                        e.message
                    ))
                })?;
        }
        Ok(rules)
    }

    /// `POST /v1/wallets/import`: the secret is sealed to one healthy node's certified
    /// device key right here and then dropped (zeroized); only ciphertext is stored.
    pub async fn import_wallet(
        &self,
        caller: &Principal,
        body: ImportWalletBody,
    ) -> Result<RequestOutcome, ApiError> {
        self.cluster_config(&body.cluster)?;
        Self::check_quorum(body.quorum)?;
        let group = self.import_group(&body).await?;
        // A group import is a new key: raw digests off unless asked for. A legacy import
        // (no group, an ungoverned cluster) carries no policy to hold rules.
        let rules = match (group.is_empty(), &body.rules) {
            (true, None) => Vec::new(),
            (true, Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRules,
                    "rules are sealed with an approver group: name the wallet's `group`",
                ))
            }
            (false, r) => {
                self.wallet_rules(&body.cluster, &group, body.quorum, r.as_ref())
                    .await?
            }
        };
        let secret = import_secret(&body)?;
        let key_id = import_key_id(&secret).map_err(|e| match e {
            // The TEE core's messages about a rejected secret never contain the secret.
            TeeError::ImportRejected(m) => ApiError::new(ErrorCode::InvalidSecret, m),
            other => ApiError::new(ErrorCode::InvalidSecret, other.to_string()),
        })?;
        let root_id = hex::encode(&key_id);
        if self.store.wallet(&root_id).await?.is_some() {
            return Err(ApiError::new(
                ErrorCode::WalletExists,
                format!("wallet {root_id} is already known"),
            ));
        }
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let status = self
            .clusters
            .status(&body.cluster, true)
            .await
            .map_err(call_api_error)?;
        let mut healthy: Vec<&str> = status
            .nodes
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.node.as_str())
            .collect();
        healthy.shuffle(&mut rand::thread_rng());
        if healthy.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "cluster {} has no healthy node to import into",
                    body.cluster
                ),
            ));
        }
        // The seed is sealed to the chosen device key: once governed, only a current
        // member's, or a key made outside any TEE under a genuine certificate would read it.
        let mut unusable = Vec::new();
        let mut chosen = None;
        for node in healthy {
            // A node whose chain cannot be read is passed over, not the whole import.
            let device_key = match self.clusters.device_key(&body.cluster, node, false).await {
                Ok(k) => k,
                Err(e) => {
                    unusable.push(format!("{node}: {e}"));
                    continue;
                }
            };
            let Some(fp) = device_key_fingerprint(&device_key) else {
                unusable.push(format!("{node}: device key is not P-256"));
                continue;
            };
            match self.may_execute(&body.cluster, node, &fp).await {
                Ok(()) => {
                    chosen = Some((node.to_string(), device_key));
                    break;
                }
                Err(why) => unusable.push(why),
            }
        }
        let Some((node, device_key)) = chosen else {
            return Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "cluster {} has no healthy node to import into; unusable: {}",
                    body.cluster,
                    unusable.join("; ")
                ),
            ));
        };
        let meta = RequestMeta {
            request_id: id,
            expires_at,
        };
        // A group import's ciphertext is bound to its group as well: it never opens under
        // another group's approvals, nor as a legacy import.
        let sealed = if group.is_empty() {
            seal_import(
                &device_key,
                &body.cluster,
                &node,
                &meta,
                body.quorum,
                &key_id,
                &secret,
            )
        } else {
            custos_wire::import::seal_group_import(
                &device_key,
                &body.cluster,
                &node,
                &meta,
                &crate::terms::group_policy(&group, body.quorum, &rules),
                &key_id,
                &secret,
            )
        }
        .map_err(|e| match e {
            TeeError::ImportRejected(m) => ApiError::new(ErrorCode::InvalidSecret, m),
            // The certified device key is not a usable P-256 key: nothing the caller can fix.
            other => ApiError::internal("sealing the import", &other),
        })?;
        drop(secret);
        let root_id: KeyId = key_id.as_slice().try_into().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidSecret,
                "the seed's key id is not 33 bytes",
            )
        })?;
        self.create(
            caller,
            Draft {
                cluster: body.cluster,
                quorum: body.quorum,
                terms: Terms::ImportWallet {
                    root_id,
                    node,
                    sealed,
                    group,
                    rules,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// The approver group of an import: required once the cluster is governed (a legacy
    /// import would give the wallet no group, and the TEE refuses it), at least `quorum`
    /// admins. Empty: the legacy import of an ungoverned cluster.
    async fn import_group(&self, body: &ImportWalletBody) -> Result<Vec<[u8; 32]>, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidGroup, m);
        let Some(group) = &body.group else {
            if self.known_log(&body.cluster, false).await?.0.is_some() {
                return Err(invalid(format!(
                    "cluster {} is governed: an import names the wallet's approver group \
                     (`group`)",
                    body.cluster
                )));
            }
            return Ok(Vec::new());
        };
        let group = parse_group(group).map_err(invalid)?;
        if usize::from(body.quorum) > group.len() {
            return Err(invalid(format!(
                "quorum {} is more than the group's {} admins",
                body.quorum,
                group.len()
            )));
        }
        Ok(group)
    }

    /// `POST /v1/sign-requests`.
    pub async fn sign(
        &self,
        caller: &Principal,
        body: SignRequestBody,
    ) -> Result<RequestOutcome, ApiError> {
        let root_id =
            parse_root_id(&body.root_id).map_err(|m| ApiError::new(ErrorCode::InvalidRootId, m))?;
        let path = parse_path(&body.path)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.to_string()))?;
        let digest =
            parse_digest(&body.digest).map_err(|m| ApiError::new(ErrorCode::InvalidDigest, m))?;
        let wallet = self
            .wallet_row(&caller.tenant, &body.root_id.to_ascii_lowercase())
            .await?;
        self.cluster_config(&wallet.cluster)?;
        // The quorum changes with the approver group, possibly through another server whose
        // change this server's cache has not seen: then it is read from the store. A server
        // alone on its SQLite file made every change itself, and its cache forgets a wallet
        // whose quorum it changed (and every wallet while it sees another replica). A stale
        // quorum only moves when the request is submitted: the TEE counts the approvals
        // against the quorum of the wallet it holds.
        let quorum = if self.store.single_process() && self.replica().alone() {
            wallet.quorum
        } else {
            match self.store.wallet(&wallet.root_id).await? {
                Some(w) => w.quorum,
                None => wallet.quorum,
            }
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: wallet.cluster,
                quorum,
                terms: Terms::Sign {
                    root_id,
                    path,
                    digest,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: Some(wallet.xpub),
            },
        )
        .await
    }

    /// Sends a `submitting` request and records its verified outcome. `wallet_xpub` is the
    /// wallet's recorded xpub when the caller already holds it; otherwise it is read here.
    pub(super) async fn execute(
        &self,
        row: RequestRow,
        wallet_xpub: Option<String>,
    ) -> Result<RequestRow, StoreError> {
        if matches!(row.terms, Terms::ThresholdSignPsbt { .. }) {
            return self.execute_threshold_psbt(row).await;
        }
        match row.kind() {
            RequestKind::ThresholdSign => return self.execute_threshold(row).await,
            RequestKind::CreateThresholdKey => return self.execute_keygen(row).await,
            RequestKind::Governance => return self.execute_governance(row).await,
            RequestKind::SetKeyPolicy => return self.execute_key_policy(row).await,
            _ => {}
        }
        if let Err(failure) = executors::check_format(&row) {
            return self.finish(row, Verdict::Refused(failure)).await;
        }
        let request = match tee_request(&row) {
            Ok(r) => r,
            Err(e) => {
                let failure =
                    Failure::new("bad_request_row", format!("stored request unusable: {e}"));
                return self.finish(row, Verdict::Refused(failure)).await;
            }
        };
        let id = parse_request_id(&row.id).map_err(StoreError::Corrupt)?;
        let started = std::time::Instant::now();
        let answer = self
            .clusters
            .tee_call(&row.cluster, id, &request, row.terms.pinned_node())
            .await;
        let outcome = match &answer {
            Ok(TeeAnswer { outcome: Ok(_), .. }) => "answered",
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        self.metrics
            .tee_call(&row.cluster, outcome, started.elapsed().as_secs_f64());
        // Sign results are checked against the wallet's recorded xpub.
        let xpub = match (&row.terms, wallet_xpub) {
            (Terms::Sign { .. }, Some(xpub)) => Some(xpub),
            (Terms::Sign { root_id, .. }, None) => self
                .recorded_wallet(&hex::encode(root_id))
                .await?
                .map(|w| w.xpub),
            _ => None,
        };
        let verdict = self.judge(&row, xpub.as_deref(), answer);
        self.finish(row, verdict).await
    }

    pub(super) fn judge(
        &self,
        row: &RequestRow,
        wallet_xpub: Option<&str>,
        answer: Result<TeeAnswer, CallError>,
    ) -> Verdict {
        let fail = |code: &str, m: String| Verdict::Failed(Failure::new(code, m));
        // Before the outcome is read: an impostor's refusal would end the request for good,
        // and its "wallet" would be recorded.
        if let Err(f) = executor_key(row, &answer) {
            tracing::warn!(request_id = %row.id, "{}", f.message);
            return Verdict::Failed(f);
        }
        let (node, response) = match answer {
            Ok(TeeAnswer {
                node,
                outcome: Ok(response),
                ..
            }) => (node, response),
            Ok(TeeAnswer {
                node,
                outcome: Err(e),
                ..
            }) => return Verdict::Refused(Failure::new(tee_code(&e), format!("node {node}: {e}"))),
            Err(CallError::OutcomeUnknown { node, message }) => {
                let failure = Failure::new(
                    crate::cluster::OUTCOME_UNKNOWN,
                    format!("outcome unknown on node {node}: {message}"),
                );
                return Verdict::Unknown { node, failure };
            }
            // Whether nothing was executed and a retry of the same id may be served (e.g.
            // "no node could serve now", which the bridge did not store as the answer).
            Err(e) => return Verdict::ended(Failure::new(e.code(), e.to_string()), e.may_retry()),
        };
        match (&row.terms, response) {
            (Terms::Sign { path, digest, .. }, Response::Signature(sig)) => {
                match verify_sign_result(
                    &self.secp,
                    &self.child_keys,
                    digest,
                    path,
                    wallet_xpub,
                    &sig,
                ) {
                    Ok(result) => {
                        Verdict::completed(node, RequestResult::Signature(result), Record::Nothing)
                    }
                    Err(m) => fail("bad_signature", m),
                }
            }
            (Terms::CreateGroupWallet { executor_node, .. }, Response::Wallet(_))
                if *executor_node != node =>
            {
                // Only the approved node may make it; the call was pinned there.
                fail(
                    "bad_result",
                    format!("wallet made by node {node}, the approvals name {executor_node}"),
                )
            }
            (
                Terms::CreateWallet { .. }
                | Terms::CreateGroupWallet { .. }
                | Terms::ImportWallet { .. },
                Response::Wallet(info),
            ) => match self.check_wallet(row, &info) {
                Ok((result, wallet)) => Verdict::completed(node, result, Record::Wallet(wallet)),
                Err(m) => fail("bad_result", m),
            },
            (
                Terms::ImportThresholdKey {
                    node: sealed_to,
                    bundle,
                },
                Response::ThresholdKey(info),
            ) => match self.check_threshold_share(row, sealed_to, bundle, &node, &info) {
                Ok((result, key, share)) => {
                    Verdict::completed(node, result, Record::ThresholdShare(key, share))
                }
                Err(m) => fail("bad_result", m),
            },
            (Terms::SignPsbt { .. }, response) => {
                super::transactions::psbt_verdict(&row.terms, node, response)
            }
            (Terms::SignEthereum { .. }, response) => {
                super::transactions::ethereum_verdict(&self.secp, &row.terms, node, response)
            }
            (_, other) => fail(
                "relay_protocol",
                format!("unexpected TEE response {}", response_name(&other)),
            ),
        }
    }

    pub(super) fn check_wallet(
        &self,
        row: &RequestRow,
        info: &KeyInfo,
    ) -> Result<(RequestResult, WalletRow), String> {
        let xpub = Xpub::from_str(&info.xpub).map_err(|e| format!("xpub: {e}"))?;
        if xpub.public_key.serialize().as_slice() != info.key_id.as_slice() {
            return Err("xpub's public key is not the wallet's key id".into());
        }
        if xpub.depth != 0 {
            return Err("xpub is not a root key".into());
        }
        if info.quorum != row.quorum {
            return Err(format!(
                "wallet quorum {} instead of {}",
                info.quorum, row.quorum
            ));
        }
        let root_id = hex::encode(&info.key_id);
        if let Some(expected) = row.terms.key_id() {
            if expected != info.key_id.as_slice() {
                return Err(format!(
                    "wallet {root_id} instead of {}",
                    hex::encode(expected)
                ));
            }
        }
        let wallet = WalletRow {
            root_id: root_id.clone(),
            cluster: row.cluster.clone(),
            xpub: info.xpub.clone(),
            quorum: info.quorum,
            created_at: self.now_ms(),
            created_by_request: row.id.clone(),
            tenant: row.tenant.clone(),
        };
        Ok((
            RequestResult::Wallet(WalletResult {
                root_id,
                xpub: info.xpub.clone(),
            }),
            wallet,
        ))
    }

    /// The wallet `root_id` of `tenant`: another tenant's wallet is unknown, exactly as one
    /// that does not exist.
    pub(super) async fn wallet_row(
        &self,
        tenant: &str,
        root_id: &str,
    ) -> Result<WalletRow, ApiError> {
        parse_root_id(root_id).map_err(|m| ApiError::new(ErrorCode::InvalidRootId, m))?;
        self.recorded_wallet(&root_id.to_ascii_lowercase())
            .await?
            .filter(|w| w.tenant == tenant)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownWallet, format!("no wallet {root_id}")))
    }

    /// Forgets every cached wallet row (another replica may have changed a quorum).
    pub(crate) fn forget_wallets(&self) {
        let mut cache = self.wallets.lock().expect("wallet cache lock");
        cache.rows.clear();
        cache.forgotten += 1;
    }

    /// The recorded wallet `root_id` (lower-case hex), from memory or the store.
    pub(super) async fn recorded_wallet(
        &self,
        root_id: &str,
    ) -> Result<Option<WalletRow>, StoreError> {
        let forgotten = {
            let cache = self.wallets.lock().expect("wallet cache lock");
            if let Some(w) = cache.rows.get(root_id) {
                return Ok(Some(w.clone()));
            }
            cache.forgotten
        };
        let found = self.store.wallet(root_id).await?;
        if let Some(w) = &found {
            let mut cache = self.wallets.lock().expect("wallet cache lock");
            if cache.forgotten == forgotten {
                if cache.rows.len() >= WALLET_CACHE {
                    cache.rows.clear();
                }
                cache.rows.insert(w.root_id.clone(), w.clone());
            }
        }
        Ok(found)
    }

    /// `GET /v1/wallets`: the wallets of `tenant`.
    pub async fn wallets(&self, tenant: &str) -> Result<WalletList, ApiError> {
        Ok(WalletList {
            wallets: self
                .store
                .wallets_of(Some(tenant))
                .await?
                .iter()
                .map(wallet_view)
                .collect(),
        })
    }

    /// `GET /v1/wallets/{root_id}`.
    pub async fn wallet(&self, tenant: &str, root_id: &str) -> Result<WalletView, ApiError> {
        Ok(wallet_view(&self.wallet_row(tenant, root_id).await?))
    }

    /// `GET /v1/wallets/{root_id}/derive`: public derivation from the recorded xpub.
    pub async fn derive(
        &self,
        tenant: &str,
        root_id: &str,
        q: &DeriveQuery,
    ) -> Result<DeriveView, ApiError> {
        let path_text = q.path.as_deref().unwrap_or("m");
        let path = parse_path(path_text).map_err(|e| match e {
            PathError::Invalid(m) => ApiError::new(ErrorCode::InvalidPath, m),
            PathError::Hardened(m) => ApiError::new(ErrorCode::HardenedPath, m),
        })?;
        if has_hardened(&path) {
            return Err(ApiError::new(
                ErrorCode::HardenedPath,
                format!(
                    "{} has a hardened step; only public derivation is offered",
                    format_path(&path)
                ),
            ));
        }
        let range = match (q.start, q.count) {
            (_, None) => None,
            (start, Some(count)) => {
                let start = start.unwrap_or(0);
                if count == 0
                    || count > MAX_DERIVE_COUNT
                    || u64::from(start) + u64::from(count) > 1 << 31
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRange,
                        format!(
                            "count must be 1..={MAX_DERIVE_COUNT} and start+count at most 2^31"
                        ),
                    ));
                }
                Some((start, count))
            }
        };
        if q.start.is_some() && q.count.is_none() {
            return Err(ApiError::new(ErrorCode::InvalidRange, "start needs count"));
        }
        let wallet = self.wallet_row(tenant, root_id).await?;
        let root =
            Xpub::from_str(&wallet.xpub).map_err(|e| ApiError::internal("stored xpub", &e))?;
        let derived = derive_xpub(&self.secp, &root, &path)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.to_string()))?;
        let addresses = match range {
            None => None,
            Some((start, count)) => {
                let mut out = Vec::with_capacity(count as usize);
                for index in start..start + count {
                    let child = derive_xpub(&self.secp, &derived, &[index])
                        .map_err(|e| ApiError::new(ErrorCode::InvalidRange, e.to_string()))?;
                    let mut full = path.clone();
                    full.push(index);
                    out.push(DerivedAddress {
                        index,
                        path: format_path(&full),
                        public_key: hex::encode(child.public_key.serialize()),
                        address: p2wpkh_address(&child.public_key, self.network),
                    });
                }
                Some(out)
            }
        };
        Ok(DeriveView {
            root_id: wallet.root_id,
            path: format_path(&path),
            xpub: derived.to_string(),
            public_key: hex::encode(derived.public_key.serialize()),
            address: p2wpkh_address(&derived.public_key, self.network),
            network: self.network.to_string(),
            addresses,
        })
    }
}

/// Verifies a signature from the TEE: (r,s) over the digest with the returned key, the
/// recovery id, low-s, and (for non-hardened paths) that the key is the xpub-derived
/// child at the request's path.
///
/// One public-key recovery does the work of a verification and a recovery: the key
/// recovered from (r, s, v) over the digest solves the verification equation for the key,
/// so (r, s) verifies under a key exactly when recovery with the right `v` yields it.
pub fn verify_sign_result(
    secp: &Secp256k1<All>,
    keys: &ChildKeys,
    digest: &[u8; 32],
    path: &[u32],
    wallet_xpub: Option<&str>,
    sig: &EcdsaSignature,
) -> Result<SignResult, String> {
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
    let recid = RecoveryId::from_i32(i32::from(sig.v)).map_err(|e| format!("recovery id: {e}"))?;
    let recoverable = RecoverableSignature::from_compact(&compact, recid)
        .map_err(|e| format!("signature: {e}"))?;
    let signature = recoverable.to_standard();
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature {
        return Err("signature is not low-s".into());
    }
    let not_verified =
        || "signature does not verify with the returned public key and recovery id".to_string();
    let recovered = secp
        .recover_ecdsa(&Message::from_digest(*digest), &recoverable)
        .map_err(|_| not_verified())?;
    if sig.public_key != recovered.serialize() {
        let returned =
            PublicKey::from_slice(&sig.public_key).map_err(|e| format!("public key: {e}"))?;
        if returned != recovered {
            return Err(not_verified());
        }
    }
    if !has_hardened(path) {
        // Sign requests are only accepted for recorded wallets, whose xpub was checked
        // against the key id when the wallet was recorded.
        let xpub = wallet_xpub.ok_or("the wallet's xpub is not recorded")?;
        let child = keys.child_key(secp, xpub, path)?;
        if child != recovered {
            return Err(format!(
                "signed with {}, but the wallet's key at {} is {}",
                hex::encode(sig.public_key.as_slice()),
                format_path(path),
                hex::encode(child.serialize())
            ));
        }
    }
    Ok(SignResult {
        r: hex::encode(sig.r),
        s: hex::encode(sig.s),
        v: sig.v,
        // The key as checked, in its compressed form whatever encoding the TEE used.
        public_key: hex::encode(recovered.serialize()),
        signature_der: hex::encode(signature.serialize_der()),
        clusters: None,
        presignature: None,
    })
}

/// The secret of an import body, checked for shape (exactly one of mnemonic and seed).
pub(super) fn import_secret(body: &ImportWalletBody) -> Result<ImportSecret, ApiError> {
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidSecret, m.to_string());
    match (&body.mnemonic, &body.seed_hex) {
        (Some(m), None) => {
            let passphrase = body.passphrase.as_ref().map(|p| p.expose()).unwrap_or("");
            if m.expose().len() > 1024 || passphrase.len() > 1024 {
                return Err(bad("mnemonic and passphrase are at most 1024 bytes each"));
            }
            Ok(ImportSecret::Mnemonic {
                phrase: SecretString(m.expose().to_string()),
                passphrase: SecretString(passphrase.to_string()),
            })
        }
        (None, Some(seed)) => {
            if body.passphrase.is_some() {
                return Err(bad("passphrase goes with a mnemonic, not a seed"));
            }
            let s = seed.expose();
            if s.len() < 32 || s.len() > 128 || s.len() % 2 != 0 {
                return Err(bad("seed_hex must be 16 to 64 bytes of hex"));
            }
            let bytes = Zeroizing::new(hex::decode(s).map_err(|_| bad("seed_hex is not hex"))?);
            Ok(ImportSecret::Seed(SecretBytes(bytes.to_vec())))
        }
        _ => Err(bad("give exactly one of mnemonic and seed_hex")),
    }
}

pub(super) fn wallet_view(w: &WalletRow) -> WalletView {
    WalletView {
        root_id: w.root_id.clone(),
        cluster: w.cluster.clone(),
        xpub: w.xpub.clone(),
        quorum: w.quorum,
        created_at_ms: w.created_at,
        created_by_request: w.created_by_request.clone(),
    }
}

/// Refuses an answer to a wallet creation signed by a device key other than the executor's
/// its approvals name. The chain that verified it may be genuine and name the executor's
/// node: the Cluster CA certifies names, not TEEs, so a key made outside any TEE under that
/// name (relayed by a compromised bridge) would otherwise have "made" a wallet whose seed
/// it chose. Failed, not refused: the executor itself may still answer a retry.
fn executor_key(row: &RequestRow, answer: &Result<TeeAnswer, CallError>) -> Result<(), Failure> {
    let (
        Terms::CreateGroupWallet {
            executor_node,
            executor,
            ..
        },
        Ok(a),
    ) = (&row.terms, answer)
    else {
        return Ok(());
    };
    if a.key_fingerprint == *executor {
        return Ok(());
    }
    Err(Failure::new(
        ErrorCode::ExecutorKeyMismatch.as_str(),
        format!(
            "request {}: answered by node {} with device key fingerprint {}, but the approvals \
             name executor {executor_node} with device key fingerprint {}; nothing recorded",
            row.id,
            a.node,
            hex::encode(a.key_fingerprint),
            hex::encode(executor)
        ),
    ))
}
