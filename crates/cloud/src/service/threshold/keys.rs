//! Threshold keys as recorded: dealer bundles decoded and checked, each cluster's share
//! imported (sealed to a node of that cluster), and the key views of the API.

use super::*;

/// Decodes and checks a dealer bundle from hex (the TEE checks the dealer's signature and
/// opens the share; this checks what the cloud server relies on).
pub fn decode_bundle(text: &str) -> Result<ThresholdBundle, String> {
    if text.len() > 2 * MAX_BUNDLE {
        return Err(format!(
            "bundle is {} hex characters, at most {} ({MAX_BUNDLE} bytes)",
            text.len(),
            2 * MAX_BUNDLE
        ));
    }
    let bytes = hex::decode(text).map_err(|_| "bundle_hex is not hex".to_string())?;
    let (bundle, rest) = postcard::take_from_bytes::<ThresholdBundle>(&bytes)
        .map_err(|e| format!("not a dealer bundle: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the bundle", rest.len()));
    }
    check_threshold_key_info(&bundle.key)?;
    Ok(bundle)
}

/// Checks the public facts of a threshold share with the TEE core's own rules: a
/// compressed point as key id, 2 ≤ t ≤ n ≤ [`MAX_THRESHOLD_CLUSTERS`], distinct valid
/// cluster names, the share index among the n, a usable quorum.
pub fn check_threshold_key_info(k: &ThresholdKeyInfo) -> Result<(), String> {
    custos_wire::threshold::check_key_info(k)
}

/// The extended public key (depth 0, mainnet version bytes like the TEE's wallets) of a
/// threshold key with HD derivation.
pub fn threshold_xpub(key_id: &[u8], chain_code: &[u8; 32]) -> Result<Xpub, String> {
    Ok(Xpub {
        network: NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::from([0u8; 4]),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: PublicKey::from_slice(key_id).map_err(|e| format!("key id: {e}"))?,
        chain_code: ChainCode::from(*chain_code),
    })
}

pub(super) fn origin_name(o: ThresholdOrigin) -> &'static str {
    match o {
        ThresholdOrigin::Dealer => "dealer",
        ThresholdOrigin::Dkg => "dkg",
    }
}

pub(super) fn key_row(
    k: &ThresholdKeyInfo,
    now_ms: u64,
    request: &str,
    tenant: &str,
) -> ThresholdKeyRow {
    ThresholdKeyRow {
        key_id: hex::encode(&k.key_id),
        threshold: k.threshold,
        clusters: k.clusters.clone(),
        quorum: k.quorum,
        chain_code: k.chain_code.map(hex::encode),
        origin: origin_name(k.origin).to_string(),
        created_at: now_ms,
        created_by_request: request.to_string(),
        tenant: tenant.to_string(),
    }
}

pub(super) fn chain_code_of(key: &ThresholdKeyRow) -> Result<Option<[u8; 32]>, String> {
    key.chain_code
        .as_deref()
        .map(|c| parse_digest(c).map_err(|_| "recorded chain code is not 32 bytes of hex".into()))
        .transpose()
}

/// The recorded key's xpub, when it has a chain code.
pub(super) fn key_xpub(key: &ThresholdKeyRow) -> Result<Option<Xpub>, String> {
    let key_id = hex::decode(&key.key_id).map_err(|e| e.to_string())?;
    chain_code_of(key)?
        .map(|c| threshold_xpub(&key_id, &c))
        .transpose()
}

pub(super) fn threshold_key_view(
    key: &ThresholdKeyRow,
    shares: &[ThresholdShareRow],
) -> ThresholdKeyView {
    let xpub = key_xpub(key).ok().flatten().map(|x| x.to_string());
    let mine: Vec<&ThresholdShareRow> = shares.iter().filter(|s| s.key_id == key.key_id).collect();
    ThresholdKeyView {
        key_id: key.key_id.clone(),
        xpub,
        threshold: key.threshold,
        clusters: key.clusters.clone(),
        quorum: key.quorum,
        origin: key.origin.clone(),
        shares: mine
            .iter()
            .map(|s| ThresholdShareView {
                share_index: s.share_index,
                cluster: s.cluster.clone(),
                node: s.node.clone(),
                imported_at_ms: s.imported_at,
                request_id: s.request_id.clone(),
            })
            .collect(),
        missing_shares: (0..key.clusters.len() as u16)
            .filter(|i| !mine.iter().any(|s| s.share_index == *i))
            .collect(),
        created_at_ms: key.created_at,
        created_by_request: key.created_by_request.clone(),
    }
}

impl Cloud {
    /// `POST /v1/threshold/keys/import`: records an `import_threshold_key` request for the
    /// node the bundle is sealed to.
    pub async fn import_threshold_key(
        &self,
        caller: &Principal,
        body: ImportThresholdKeyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let bundle = decode_bundle(&body.bundle_hex)
            .map_err(|m| ApiError::new(ErrorCode::InvalidBundle, m))?;
        let key = &bundle.key;
        let cluster = key.clusters[usize::from(key.share_index)].clone();
        self.cluster_config(&cluster)?;
        let key_id = hex::encode(&key.key_id);
        if let Some(recorded) = self.store.threshold_key(&key_id).await? {
            if let Some(why) = recorded.disagreement(&key_row(key, 0, "", &caller.tenant)) {
                return Err(ApiError::new(ErrorCode::ThresholdKeyMismatch, why));
            }
        }
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let node = self
            .bundle_recipient(&cluster, &bundle.recipient_fingerprint)
            .await?;
        let quorum = key.quorum;
        self.create(
            caller,
            Draft {
                cluster,
                quorum,
                terms: Terms::ImportThresholdKey { node, bundle },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// The node of `cluster` whose device certificate has SHA-256 `fingerprint`.
    pub(super) async fn bundle_recipient(
        &self,
        cluster: &str,
        fingerprint: &[u8; 32],
    ) -> Result<String, ApiError> {
        let status = self
            .clusters
            .status(cluster, true)
            .await
            .map_err(call_api_error)?;
        let checks = status.nodes.iter().map(|n| async move {
            let chain = self.clusters.device_chain(cluster, &n.node).await;
            (n.node.clone(), chain)
        });
        let mut unreachable = Vec::new();
        for (node, chain) in futures::future::join_all(checks).await {
            match chain {
                Ok(c) => {
                    let fp: [u8; 32] = Sha256::digest(&c.device).into();
                    if &fp == fingerprint {
                        return Ok(node);
                    }
                }
                Err(e) => unreachable.push(format!("{node}: {e}")),
            }
        }
        let what = format!(
            "no node of cluster {cluster} has the device certificate the bundle is sealed to \
             (SHA-256 {})",
            hex::encode(fingerprint)
        );
        if unreachable.is_empty() {
            Err(ApiError::new(ErrorCode::BundleRecipientUnknown, what))
        } else {
            Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!("{what}; unreachable: {}", unreachable.join("; ")),
            ))
        }
    }

    /// Checks the TEE's answer to an import against the bundle and builds what is recorded.
    pub(in crate::service) fn check_threshold_share(
        &self,
        row: &RequestRow,
        sealed_to: &str,
        bundle: &ThresholdBundle,
        node: &str,
        info: &ThresholdKeyInfo,
    ) -> Result<(RequestResult, ThresholdKeyRow, ThresholdShareRow), String> {
        if *info != bundle.key {
            return Err(format!(
                "the TEE imported {info:?}, the bundle carries {:?}",
                bundle.key
            ));
        }
        if sealed_to != node {
            return Err(format!(
                "imported by node {node}, the bundle is sealed to {sealed_to}"
            ));
        }
        let now = self.now_ms();
        let key = key_row(info, now, &row.id, &row.tenant);
        let share = ThresholdShareRow {
            key_id: key.key_id.clone(),
            share_index: info.share_index,
            cluster: row.cluster.clone(),
            node: node.to_string(),
            imported_at: now,
            request_id: row.id.clone(),
        };
        let result = RequestResult::ThresholdShare(ThresholdShareResult {
            key_id: key.key_id.clone(),
            share_index: info.share_index,
            cluster: row.cluster.clone(),
            node: node.to_string(),
            xpub: key_xpub(&key)?.map(|x| x.to_string()),
        });
        Ok((result, key, share))
    }

    /// `GET /v1/threshold/keys`: the threshold keys of `tenant`.
    pub async fn threshold_keys(&self, tenant: &str) -> Result<ThresholdKeyList, ApiError> {
        let keys = self.store.threshold_keys_of(Some(tenant)).await?;
        let shares = self.store.threshold_shares(None).await?;
        Ok(ThresholdKeyList {
            keys: keys
                .iter()
                .map(|k| threshold_key_view(k, &shares))
                .collect(),
        })
    }

    /// The threshold key `key_id` of `tenant`: another tenant's key is unknown, exactly as
    /// one that does not exist.
    pub(in crate::service) async fn threshold_key_row(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<ThresholdKeyRow, ApiError> {
        parse_key_id(key_id).map_err(|m| ApiError::new(ErrorCode::InvalidKeyId, m))?;
        self.store
            .threshold_key(&key_id.to_ascii_lowercase())
            .await?
            .filter(|k| k.tenant == tenant)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownThresholdKey,
                    // Also an id that is not a point of secp256k1: no key can have it.
                    format!("no threshold key {key_id}"),
                )
            })
    }

    /// `GET /v1/threshold/keys/{key_id}`.
    pub async fn threshold_key(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<ThresholdKeyView, ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        let shares = self.store.threshold_shares(Some(&key.key_id)).await?;
        Ok(threshold_key_view(&key, &shares))
    }
}
