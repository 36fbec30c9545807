//! Transactions a TEE understands (issue 14): a PSBT signing request is recorded with the
//! intent a TEE of the wallet's cluster computed from it, which approvers read and sign; the
//! TEE signs only a PSBT whose intent is that one and which the wallet's policy allows.

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use bitcoin::psbt::Psbt;
use custos_cloud_api::transaction::{checked_intent, network_of, wire_network};

use custos_wire::policy::{ApprovalNeed, GroupTier};
use custos_wire::protocol::EthPayload;

use super::*;

/// What a transaction request is recorded with, besides its payload.
struct Prepared {
    cluster: String,
    quorum: u8,
    group: Vec<[u8; 32]>,
    tiers: Vec<GroupTier>,
    node: Option<String>,
    intent_hash: [u8; 32],
    intent: serde_json::Value,
    xpub: String,
}

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
        let threshold_key = self
            .store
            .threshold_key(&body.root_id.to_ascii_lowercase())
            .await?
            .filter(|k| k.tenant == caller.tenant);
        if let Some(key) = threshold_key {
            return self
                .threshold_psbt_request(caller, body, key, network, psbt)
                .await;
        }
        if body.clusters.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidClusters,
                "clusters are named for a threshold key only; a wallet signs in its cluster",
            ));
        }
        let preview = Request::PreviewPsbt {
            key_id: root_id.to_vec(),
            network,
            psbt: psbt.clone(),
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let p = self
            .prepare_transaction(&caller.tenant, &body.root_id, &root_id, preview)
            .await?;
        self.create(
            caller,
            Draft {
                cluster: p.cluster,
                quorum: p.quorum,
                terms: Terms::SignPsbt {
                    root_id,
                    network: body.network,
                    psbt,
                    intent_hash: p.intent_hash,
                    intent: p.intent,
                    node: p.node,
                    group: p.group,
                    tiers: p.tiers,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: Some(p.xpub),
            },
        )
        .await
    }

    /// `POST /v1/eth-requests`.
    pub async fn sign_ethereum(
        &self,
        caller: &Principal,
        body: SignEthereumBody,
    ) -> Result<RequestOutcome, ApiError> {
        let root_id =
            parse_root_id(&body.root_id).map_err(|m| ApiError::new(ErrorCode::InvalidRootId, m))?;
        let path = parse_path(&body.path)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPath, e.to_string()))?;
        let payload = ethereum_payload(&body)?;
        let preview = Request::PreviewEthereum {
            key_id: root_id.to_vec(),
            path: path.clone(),
            payload: payload.clone(),
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let p = self
            .prepare_transaction(&caller.tenant, &body.root_id, &root_id, preview)
            .await?;
        self.create(
            caller,
            Draft {
                cluster: p.cluster,
                quorum: p.quorum,
                terms: Terms::SignEthereum {
                    root_id,
                    path,
                    payload,
                    intent_hash: p.intent_hash,
                    intent: p.intent,
                    node: p.node,
                    group: p.group,
                    tiers: p.tiers,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: Some(p.xpub),
            },
        )
        .await
    }

    /// Everything a transaction request of `tenant`'s wallet needs before it is recorded:
    /// the wallet's policy as its TEE holds it (its group; the velocity holder's node, to
    /// which every attempt is pinned since a rolling window is counted in one TEE only), the
    /// intent a TEE computes for `preview`, and the approvals needed: the policy's quorum,
    /// or the approval tier's for the intent's amount (fewer would be refused).
    async fn prepare_transaction(
        &self,
        tenant: &str,
        root_text: &str,
        root_id: &KeyId,
        preview: Request,
    ) -> Result<Prepared, ApiError> {
        let wallet = self
            .wallet_row(tenant, &root_text.to_ascii_lowercase())
            .await?;
        self.cluster_config(&wallet.cluster)?;
        let (policy, _) = self
            .read_policy(&wallet.cluster, root_id, &wallet.root_id)
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
            .preview(&wallet.cluster, node.as_deref(), &preview)
            .await?;
        let need = transaction_need(&policy, &intent)?;
        Ok(Prepared {
            cluster: wallet.cluster,
            quorum: need.quorum,
            tiers: need.groups,
            group: policy.group,
            node,
            intent_hash,
            intent,
            xpub: wallet.xpub,
        })
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

    /// The intent of `preview` (a `PreviewPsbt` or `PreviewEthereum`) as a TEE of
    /// `cluster` (of `node`, when named) computes it (an answer signed by its certified
    /// device key), checked to hash to the hash it comes with.
    pub(in crate::service) async fn preview(
        &self,
        cluster: &str,
        node: Option<&str>,
        preview: &Request,
    ) -> Result<([u8; 32], serde_json::Value), ApiError> {
        let request = encode_request(preview);
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
                    "answered {} to a preview",
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
        let parsed: custos_tx::Intent =
            serde_json::from_value(intent.clone()).map_err(|e| bad(format!("intent: {e}")))?;
        let view = TransactionView {
            network: network_of(&parsed).to_string(),
            intent_hash: hex::encode(intent_hash),
            intent,
        };
        checked_intent(&view).map_err(bad)?;
        Ok((intent_hash, view.intent))
    }
}

/// The approvals a transaction needs under `policy`: the policy's quorum or the approval
/// tier's for the intent's amount, and the tiers of other groups it reaches (fewer would
/// be refused by the TEE).
pub(in crate::service) fn transaction_need(
    policy: &custos_wire::policy::KeyPolicy,
    intent: &serde_json::Value,
) -> Result<ApprovalNeed, ApiError> {
    let spends = serde_json::from_value::<custos_tx::Intent>(intent.clone())
        .map(|i| custos_tx::policy::spends_of(&i))
        .map_err(|e| ApiError::internal("checked intent", &e))?;
    Ok(custos_tx::policy::approval_need(policy, &spends))
}

/// A TEE answer of another kind than the request's.
fn unexpected(response: &Response) -> Verdict {
    Verdict::Failed(Failure::new(
        "relay_protocol",
        format!("unexpected TEE response {}", response_name(response)),
    ))
}

/// Whether the TEE signed the intent the approvals name.
fn same_intent(signed: &[u8; 32], approved: &[u8; 32]) -> Result<(), Verdict> {
    if signed == approved {
        return Ok(());
    }
    Err(Verdict::Failed(Failure::new(
        "bad_result",
        format!(
            "the TEE signed intent {}, the approvals name {}",
            hex::encode(signed),
            hex::encode(approved)
        ),
    )))
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
        return unexpected(&response);
    };
    if let Err(v) = same_intent(&signed, intent_hash) {
        return v;
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
        Record::Nothing,
    )
}

/// The one payload `body` names, decoded and within its limit.
fn ethereum_payload(body: &SignEthereumBody) -> Result<EthPayload, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidEthereum, m);
    let bytes = |what: &str, text: &str, max: usize| {
        let raw = hex::decode(text.strip_prefix("0x").unwrap_or(text))
            .map_err(|e| invalid(format!("{what} is not hex: {e}")))?;
        if raw.len() > max {
            return Err(invalid(format!(
                "{what} of {} bytes, at most {max}",
                raw.len()
            )));
        }
        Ok(raw)
    };
    match (&body.transaction, &body.message, &body.typed_data) {
        (Some(t), None, None) => Ok(EthPayload::Transaction(bytes(
            "transaction",
            t,
            custos_tx::eth::MAX_TRANSACTION_BYTES,
        )?)),
        (None, Some(m), None) => Ok(EthPayload::PersonalMessage(bytes(
            "message",
            m,
            custos_tx::eth::MAX_MESSAGE_BYTES,
        )?)),
        (None, None, Some(d)) if d.len() <= custos_tx::eth::MAX_TYPED_DATA_BYTES => {
            Ok(EthPayload::TypedData(d.clone()))
        }
        (None, None, Some(d)) => Err(invalid(format!(
            "typed data of {} bytes, at most {}",
            d.len(),
            custos_tx::eth::MAX_TYPED_DATA_BYTES
        ))),
        _ => Err(invalid(
            "name exactly one of transaction, message and typed_data".into(),
        )),
    }
}

/// The verdict on a TEE's answer to an Ethereum signing: the intent signed is the approved
/// one, the signature recovers (over the payload's own signing hash) to the sender the
/// intent names, and a transaction comes back signed.
pub(super) fn ethereum_verdict(
    secp: &Secp256k1<All>,
    terms: &Terms,
    node: String,
    response: Response,
) -> Verdict {
    let Terms::SignEthereum {
        payload,
        intent_hash,
        intent,
        ..
    } = terms
    else {
        return Verdict::Failed(Failure::new("bad_result", "not an Ethereum request"));
    };
    let fail = |m: String| Verdict::Failed(Failure::new("bad_result", m));
    let Response::SignedEthereum {
        signature,
        raw_transaction,
        intent_hash: signed,
    } = response
    else {
        return unexpected(&response);
    };
    if let Err(v) = same_intent(&signed, intent_hash) {
        return v;
    }
    let Some(from) = intent.get("from").and_then(|f| f.as_str()) else {
        return fail("the intent names no sender".into());
    };
    let recovered = custos_tx::eth::signing_hash(payload).ok().and_then(|hash| {
        let (rs, v) = signature.split_at_checked(64)?;
        let recid = RecoveryId::from_i32(i32::from(v.first()?.checked_sub(27)?)).ok()?;
        let sig = RecoverableSignature::from_compact(rs, recid).ok()?;
        secp.recover_ecdsa(&Message::from_digest(hash), &sig).ok()
    });
    let Some(key) = recovered else {
        return fail("the signature does not recover over the payload's signing hash".into());
    };
    let address = custos_tx::eth::address_of(&key).to_string();
    if address != from {
        return fail(format!(
            "signed by {address}, the intent's sender is {from}"
        ));
    }
    if matches!(payload, EthPayload::Transaction(_)) != raw_transaction.is_some() {
        return fail("a transaction must come back signed, and only a transaction".into());
    }
    Verdict::completed(
        node,
        RequestResult::Ethereum(EthereumResult {
            address,
            signature: format!("0x{}", hex::encode(&signature)),
            raw_transaction: raw_transaction.map(|r| format!("0x{}", hex::encode(r))),
            intent_hash: hex::encode(signed),
        }),
        Record::Nothing,
    )
}
