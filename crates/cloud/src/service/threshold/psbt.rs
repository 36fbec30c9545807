//! PSBTs signed with a threshold key (issue 14): the request is recorded with the intent a
//! TEE holding a share computed, and executed as one signing session per input between t
//! clusters, each participant checking the PSBT, the approvals of its intent and the policy
//! sealed with its own share before it takes part. The server places the signatures,
//! each verified with libsecp256k1 against the child key the xpub derives at the input's
//! path and the signature hash computed here independently of the TEEs.

use crate::service::transactions::transaction_need;
use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use custos_cloud_api::transaction::wire_network;
use custos_tx::btc::{plan_psbt, InputSignature, XpubKeys};
use custos_tx::InputKind;
use custos_wire::protocol::{BitcoinNetwork, ThresholdPsbtParams};
use custos_wire::threshold::input_session;

use super::*;

impl Cloud {
    /// `POST /v1/psbt-requests` naming a threshold key: records a `sign_psbt` request in
    /// scope [`THRESHOLD_SCOPE`] with the intent a TEE holding a share computed, the quorum
    /// its approval tiers ask and the key's group.
    pub(in crate::service) async fn threshold_psbt_request(
        &self,
        caller: &Principal,
        body: SignPsbtBody,
        key: ThresholdKeyRow,
        network: BitcoinNetwork,
        psbt: Vec<u8>,
    ) -> Result<RequestOutcome, ApiError> {
        let key_id = parse_key_id(&key.key_id)
            .map_err(|m| ApiError::internal("a recorded threshold key's id", &m))?;
        if key.chain_code.is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidPsbt,
                format!(
                    "threshold key {} has no chain code: the keys of a PSBT's inputs are its \
                     children",
                    key.key_id
                ),
            ));
        }
        let clusters = self.named_clusters(&key, body.clusters.as_deref())?;
        // The intent and the policy as a TEE holding a share computes and holds them.
        let shares = self.store.threshold_shares(Some(&key.key_id)).await?;
        let candidates = clusters.as_deref().unwrap_or(&key.clusters);
        let share = shares
            .iter()
            .find(|s| candidates.contains(&s.cluster))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidClusters,
                    format!(
                        "no share of threshold key {} is recorded in {}",
                        key.key_id,
                        candidates.join(", ")
                    ),
                )
            })?;
        let name = format!("threshold key {}", key.key_id);
        let (policy, _) = self.read_policy(&share.cluster, &key_id, &name).await?;
        let preview = Request::PreviewPsbt {
            key_id: key_id.to_vec(),
            network,
            psbt: psbt.clone(),
        };
        let (intent_hash, intent) = self
            .preview(&share.cluster, Some(&share.node), &preview)
            .await?;
        let need = transaction_need(&policy, &intent)?;
        refuse_taproot(&intent)?;
        // A window is counted on the velocity share's node, which takes part every time.
        let holder = policy.spend_limits().and_then(|l| l.velocity_holder);
        let (velocity_share, node) = match (policy.velocity_share(), holder) {
            (Some(k), Some(holder)) => {
                let cluster = key.clusters.get(usize::from(k)).ok_or_else(|| {
                    ApiError::internal("a threshold key's velocity share", &"out of range")
                })?;
                if clusters.as_ref().is_some_and(|c| !c.contains(cluster)) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidClusters,
                        format!(
                            "share {k} of {name} (cluster {cluster}) counts its window and takes \
                             part in every signing: name {cluster}"
                        ),
                    ));
                }
                let node = self.choose_executor(cluster, Some(holder)).await?.node;
                (Some(k), Some(node))
            }
            _ => (None, None),
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: THRESHOLD_SCOPE.to_string(),
                quorum: need.quorum,
                terms: Terms::ThresholdSignPsbt {
                    key_id,
                    network: body.network,
                    psbt,
                    intent_hash,
                    intent,
                    clusters,
                    group: policy.group,
                    tiers: need.groups,
                    velocity_share,
                    node,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// Runs a `submitting` threshold PSBT request as one attempt: the same participants sign
    /// every input in turn, one session each; the PSBT comes back with every signature in
    /// place, or the attempt fails naming the input whose session did.
    pub(in crate::service) async fn execute_threshold_psbt(
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
        let refuse = |code: &str, m: String| Verdict::Refused(Failure::new(code, m));
        let Terms::ThresholdSignPsbt {
            key_id,
            network,
            psbt,
            intent_hash,
            ..
        } = row.terms.clone()
        else {
            let v = refuse("bad_request_row", "not a threshold PSBT signing".into());
            return self.finish(row, v).await;
        };
        let key = match self.recorded_key(&row, &key_id).await? {
            Ok(k) => k,
            Err(v) => return self.finish(row, v).await,
        };
        let network = match wire_network(&network) {
            Ok(n) => n,
            Err(m) => return self.finish(row, refuse("bad_request_row", m)).await,
        };
        // The server's own plan: the signature hashes the signatures are checked against.
        let plan = match threshold_plan(&key, network, &psbt, &intent_hash) {
            Ok(p) => p,
            Err(m) => return self.finish(row, refuse("bad_request_row", m)).await,
        };
        let participants = match self.threshold_participants(&row, &key).await? {
            Ok(p) => p,
            Err(a) => return self.threshold_failed(row, attempt, a).await,
        };
        let (row, described) = self.record_session(&row, attempt, &participants).await?;
        let params = ThresholdPsbtParams {
            key_id: key_id.to_vec(),
            network,
            psbt,
            intent_hash,
            signers: signers_of(&participants),
        };
        let meta = RequestMeta {
            request_id,
            expires_at: row.expires_at,
        };
        let mut signatures = Vec::with_capacity(plan.jobs().len());
        let mut exchanges = 0;
        for job in plan.jobs() {
            let input = job.input as u16;
            let start = encode_request(&Request::ThresholdPsbtStart {
                meta: meta.clone(),
                attempt,
                input,
                params: params.clone(),
                approvals: approvals.clone(),
            });
            let session = input_session(&request_id, input, attempt);
            let mut st = Session::new(Run::Sign, session, &participants);
            if let Err(mut abort) = self
                .drive_session(&row.id, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
                .await
            {
                abort.message = format!("input {input}: {}", abort.message);
                return self.threshold_failed(row, attempt, abort).await;
            }
            exchanges += st.exchanges;
            let checked = self
                .check_threshold_signature(&key, &job.path, &job.sighash, &st)
                .and_then(|sig| input_signature(&sig));
            match checked {
                Ok(s) => signatures.push(s),
                Err(m) => {
                    let abort = Abort::new("bad_signature", format!("input {input}: {m}"), vec![]);
                    return self.threshold_failed(row, attempt, abort).await;
                }
            }
        }
        let signed = match plan.finish(signatures) {
            Ok(p) => p,
            Err(e) => {
                let abort = Abort::new("bad_signature", e.to_string(), Vec::new());
                return self.threshold_failed(row, attempt, abort).await;
            }
        };
        self.forget_blame(&row.id);
        let by = format!("{described} (attempt {attempt}, {exchanges} exchanges)");
        let result = RequestResult::Psbt(PsbtResult {
            psbt: BASE64.encode(&signed),
            intent_hash: hex::encode(intent_hash),
        });
        let v = Verdict::completed(by, result, Record::Nothing);
        self.finish(row, v).await
    }
}

/// The server's plan of a recorded threshold PSBT: its intent must be the approved one
/// (computed here from the key's xpub, independently of the TEEs).
fn threshold_plan(
    key: &ThresholdKeyRow,
    network: BitcoinNetwork,
    psbt: &[u8],
    intent_hash: &[u8; 32],
) -> Result<custos_tx::btc::PsbtPlan, String> {
    let key_id = hex::decode(&key.key_id).map_err(|e| e.to_string())?;
    let chain_code = chain_code_of(key)?.ok_or("the key has no chain code")?;
    let keys = XpubKeys(threshold_xpub(&key_id, &chain_code)?);
    let plan = plan_psbt(psbt, network.network(), &keys).map_err(|e| e.to_string())?;
    if plan.intent().hash() != *intent_hash {
        return Err("the PSBT's intent is not the approved one".into());
    }
    Ok(plan)
}

/// A taproot input cannot be signed by a threshold key (its protocol makes ECDSA
/// signatures): refused before any approval is asked for (every TEE refuses it too).
fn refuse_taproot(intent: &serde_json::Value) -> Result<(), ApiError> {
    let parsed = serde_json::from_value::<custos_tx::Intent>(intent.clone())
        .map_err(|e| ApiError::internal("checked intent", &e))?;
    let custos_tx::Intent::Bitcoin(b) = parsed else {
        return Ok(());
    };
    match b
        .inputs
        .iter()
        .position(|i| i.kind == InputKind::P2trKeyPath)
    {
        Some(i) => Err(ApiError::new(
            ErrorCode::InvalidPsbt,
            format!(
                "input {i} is a taproot key-path spend: a threshold key signs P2WPKH and \
                 P2SH-P2WPKH inputs only"
            ),
        )),
        None => Ok(()),
    }
}

/// A verified threshold signature as a PSBT input's.
fn input_signature(sig: &SignResult) -> Result<InputSignature, String> {
    let compact = [hex::decode(&sig.r), hex::decode(&sig.s)]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?
        .concat();
    bitcoin::secp256k1::ecdsa::Signature::from_compact(&compact)
        .map(InputSignature::Ecdsa)
        .map_err(|e| e.to_string())
}
