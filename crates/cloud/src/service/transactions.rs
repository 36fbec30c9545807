//! Transactions a TEE understands (issue 14): a PSBT signing request is recorded with the
//! intent a TEE of the wallet's cluster computed from it, which approvers read and sign; the
//! TEE signs only a PSBT whose intent is that one and which the wallet's policy allows.

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use bitcoin::psbt::Psbt;
use custos_cloud_api::transaction::{checked_intent, wire_network};

use super::*;

impl Cloud {
    /// `POST /v1/psbt-requests`.
    pub async fn sign_psbt(
        &self,
        caller: &Principal,
        body: SignPsbtBody,
    ) -> Result<RequestOutcome, ApiError> {
        let root_id =
            parse_root_id(&body.root_id).map_err(|m| ApiError::new(ErrorCode::InvalidRootId, m))?;
        let network =
            wire_network(&body.network).map_err(|m| ApiError::new(ErrorCode::InvalidNetwork, m))?;
        let psbt = BASE64
            .decode(&body.psbt)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPsbt, format!("not base64: {e}")))?;
        if psbt.len() > MAX_PSBT_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidPsbt,
                format!("{} bytes, at most {MAX_PSBT_BYTES}", psbt.len()),
            ));
        }
        let wallet = self
            .wallet_row(&caller.tenant, &body.root_id.to_ascii_lowercase())
            .await?;
        self.cluster_config(&wallet.cluster)?;
        let quorum = match self.store.wallet(&wallet.root_id).await? {
            Some(w) => w.quorum,
            None => wallet.quorum,
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        // A rolling window is counted in one TEE only (the velocity holder's): the request
        // is pinned to its node, any other would refuse it.
        let (policy, _) = self
            .read_policy(&wallet.cluster, &root_id, &wallet.root_id)
            .await?;
        let node = match policy.spend_limits().and_then(|s| s.velocity_holder) {
            Some(holder) => Some(
                self.choose_executor(&wallet.cluster, Some(holder))
                    .await?
                    .node,
            ),
            None => None,
        };
        let (intent_hash, intent) = self
            .preview_psbt(&wallet.cluster, node.as_deref(), &root_id, network, &psbt)
            .await?;
        self.create(
            caller,
            Draft {
                cluster: wallet.cluster,
                quorum,
                terms: Terms::SignPsbt {
                    root_id,
                    network: body.network,
                    psbt,
                    intent_hash,
                    intent,
                    node,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: Some(wallet.xpub),
            },
        )
        .await
    }

    /// `GET /v1/wallets/{root_id}/xpub`: the extended public key at a path with hardened
    /// steps, which only a TEE can derive; its answer is signed by its certified device key,
    /// and the key is checked to sit at that path (depth, child number, and below the root
    /// directly its parent's fingerprint).
    pub async fn xpub(
        &self,
        tenant: &str,
        root_id: &str,
        q: &XpubQuery,
    ) -> Result<XpubView, ApiError> {
        let path = parse_path(&q.path)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.to_string()))?;
        let wallet = self.wallet_row(tenant, root_id).await?;
        let root =
            Xpub::from_str(&wallet.xpub).map_err(|e| ApiError::internal("stored xpub", &e))?;
        let key_id = root.public_key.serialize().to_vec();
        let request = encode_request(&Request::GetXpub {
            key_id,
            path: path.clone(),
        });
        let answer = self
            .clusters
            .tee_call(&wallet.cluster, random_id(), &request, None)
            .await
            .map_err(super::call_api_error)?;
        let node = answer.node;
        let bad =
            |m: String| ApiError::new(ErrorCode::UnverifiedResponse, format!("node {node}: {m}"));
        let xpub = match answer.outcome {
            Ok(Response::Xpub { xpub, .. }) => xpub,
            Ok(other) => {
                return Err(bad(format!(
                    "answered {} to GetXpub",
                    response_name(&other)
                )))
            }
            Err(e) => return Err(bad(format!("refused: {} ({e})", tee_code(&e)))),
        };
        let derived = Xpub::from_str(&xpub).map_err(|e| bad(format!("xpub: {e}")))?;
        let at_path = usize::from(derived.depth) == path.len()
            && path
                .last()
                .is_none_or(|&c| u32::from(derived.child_number) == c)
            && (path.len() != 1 || derived.parent_fingerprint == root.fingerprint());
        let at_path = at_path && (!path.is_empty() || derived == root);
        if !at_path {
            return Err(bad(format!("{xpub} is not at {}", format_path(&path))));
        }
        Ok(XpubView {
            root_id: wallet.root_id,
            path: format_path(&path),
            xpub,
            fingerprint: root.fingerprint().to_string(),
            node,
        })
    }

    /// The intent of `psbt` as a TEE of `cluster` (of `node`, when named) computes it (an
    /// answer signed by its certified device key), checked to hash to the hash it comes
    /// with.
    async fn preview_psbt(
        &self,
        cluster: &str,
        node: Option<&str>,
        root_id: &KeyId,
        network: custos_wire::protocol::BitcoinNetwork,
        psbt: &[u8],
    ) -> Result<([u8; 32], serde_json::Value), ApiError> {
        let request = encode_request(&Request::PreviewPsbt {
            key_id: root_id.to_vec(),
            network,
            psbt: psbt.to_vec(),
        });
        let answer = self
            .clusters
            .tee_call(cluster, random_id(), &request, node)
            .await
            .map_err(super::call_api_error)?;
        let bad = |m: String| {
            ApiError::new(
                ErrorCode::UnverifiedResponse,
                format!("node {}: {m}", answer.node),
            )
        };
        let (intent_hash, intent_json) = match &answer.outcome {
            Ok(Response::TransactionIntent {
                intent_hash,
                intent_json,
            }) => (*intent_hash, intent_json),
            Ok(other) => {
                return Err(bad(format!(
                    "answered {} to PreviewPsbt",
                    response_name(other)
                )))
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::TransactionRejected,
                    format!("node {}: {} ({e})", answer.node, tee_code(e)),
                ))
            }
        };
        let intent: serde_json::Value =
            serde_json::from_slice(intent_json).map_err(|e| bad(format!("intent: {e}")))?;
        let view = TransactionView {
            network: custos_cloud_api::transaction::network_name(network).to_string(),
            intent_hash: hex::encode(intent_hash),
            intent,
        };
        checked_intent(&view).map_err(bad)?;
        Ok((intent_hash, view.intent))
    }
}

/// The verdict on a TEE's answer to a PSBT signing: the intent it signed is the approved
/// one and the PSBT is the submitted transaction with a signature on every input (each
/// signature verified by the TEE, whose answer is signed by its device key).
pub(super) fn psbt_verdict(terms: &Terms, node: String, response: Response) -> Verdict {
    let Terms::SignPsbt {
        psbt: submitted,
        intent_hash,
        ..
    } = terms
    else {
        return Verdict::Failed(Failure::new("bad_result", "not a PSBT request"));
    };
    let fail = |m: String| Verdict::Failed(Failure::new("bad_result", m));
    let Response::SignedPsbt {
        psbt,
        intent_hash: signed,
    } = response
    else {
        return Verdict::Failed(Failure::new(
            "relay_protocol",
            format!("unexpected TEE response {}", response_name(&response)),
        ));
    };
    if signed != *intent_hash {
        return fail(format!(
            "the TEE signed intent {}, the approvals name {}",
            hex::encode(signed),
            hex::encode(intent_hash)
        ));
    }
    let (Ok(before), Ok(after)) = (Psbt::deserialize(submitted), Psbt::deserialize(&psbt)) else {
        return fail("the signed PSBT does not parse".into());
    };
    if before.unsigned_tx != after.unsigned_tx {
        return fail("the signed PSBT is another transaction".into());
    }
    if let Some(i) = after
        .inputs
        .iter()
        .position(|i| i.partial_sigs.is_empty() && i.tap_key_sig.is_none())
    {
        return fail(format!("input {i} of the signed PSBT has no signature"));
    }
    Verdict::completed(
        node,
        RequestResult::Psbt(PsbtResult {
            psbt: BASE64.encode(&psbt),
            intent_hash: hex::encode(signed),
        }),
        Recorded::Nothing,
    )
}
