//! Presignatures of threshold keys without chain code: made ahead of time by t clusters
//! (one session each, no message yet), recorded here as `ready`, and used for online
//! signing of a full message: the cloud server takes one (compare-and-swap, never handed out
//! twice), asks each of its t TEEs for a partial signature over the message — each TEE hashes
//! the message itself, checks the approvals and deletes its presignature durably before
//! answering — and combines the partials (patent phase getSig), naming a cluster whose
//! partial does not check against its commitments.
//!
//! A presignature whose use failed is lost (it was taken, and some TEE may have consumed its
//! copy); the request's next attempt takes another one or runs the interactive protocol.

use custos_threshold_public::{combine, PartialSig, PresignaturePublic, PublicError};
use custos_wire::protocol::MAX_PRESIGNATURES_PER_KEY;

use super::*;
use crate::db::{PresignatureRow, PresignatureSigner};

/// Most presignatures one call makes.
pub const MAX_PRESIGNATURES_PER_CALL: u32 = 64;
/// Longest the t partial signatures of an online signing may take.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most presignature sessions one background refill runs per key.
const REFILL_BATCH: usize = 4;

fn view(p: &PresignatureRow) -> PresignatureView {
    PresignatureView {
        id: p.id.clone(),
        clusters: p.signers.iter().map(|s| s.cluster.clone()).collect(),
        nodes: p.signers.iter().map(|s| s.node.clone()).collect(),
        created_at_ms: p.created_at,
    }
}

/// What an online signing ended with.
pub(super) enum Online {
    /// No ready presignature fits the request: nothing was taken or asked.
    NoneReady,
    /// The verified signature, and who made it.
    Signed(SignResult, String),
    /// The taken presignature did not give a signature.
    Failed(Abort),
}

impl Cloud {
    /// A threshold key that presignatures may be made for (no chain code).
    async fn presign_key_row(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<ThresholdKeyRow, ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        if key.chain_code.is_some() {
            return Err(ApiError::new(
                ErrorCode::HdThresholdKey,
                format!(
                    "threshold key {} derives HD children: presignatures are only made for keys \
                     without chain code (RUSTSEC-2025-0127)",
                    key.key_id
                ),
            ));
        }
        Ok(key)
    }

    /// `GET /v1/threshold/keys/{key_id}/presignatures`.
    pub async fn presignatures(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<PresignaturePool, ApiError> {
        let key = self.threshold_key_row(tenant, key_id).await?;
        let ready = self.store.ready_presignatures(&key.key_id).await?;
        Ok(PresignaturePool {
            key_id: key.key_id,
            ready: ready.iter().map(view).collect(),
            made: Vec::new(),
            failed: Vec::new(),
        })
    }

    /// `POST /v1/threshold/keys/{key_id}/presignatures`: runs `count` presignature sessions
    /// one after the other (each between t clusters: the named ones, or the healthiest
    /// share holders) and records each presignature all its TEEs stored. No approvals: a
    /// presignature signs nothing until an approved request uses it.
    pub async fn make_presignatures(
        &self,
        tenant: &str,
        key_id: &str,
        body: MakePresignaturesBody,
    ) -> Result<PresignaturePool, ApiError> {
        let key = self.presign_key_row(tenant, key_id).await?;
        if !(1..=MAX_PRESIGNATURES_PER_CALL).contains(&body.count) {
            return Err(ApiError::new(
                ErrorCode::InvalidCount,
                format!(
                    "{} presignatures, make 1 to {MAX_PRESIGNATURES_PER_CALL} at a time",
                    body.count
                ),
            ));
        }
        if let Some(list) = &body.clusters {
            check_named_clusters(&key, list)?;
        }
        let mut made = Vec::new();
        let mut failed = Vec::new();
        for _ in 0..body.count {
            match self.presign_session(&key, body.clusters.clone()).await? {
                Ok(p) => made.push(view(&p)),
                Err(a) => failed.push(format!("{}: {}", a.code, a.message)),
            }
        }
        let ready = self.store.ready_presignatures(&key.key_id).await?;
        tracing::info!(
            key = %key.key_id,
            made = made.len(),
            failed = failed.len(),
            ready = ready.len(),
            "presignatures made"
        );
        Ok(PresignaturePool {
            key_id: key.key_id,
            ready: ready.iter().map(view).collect(),
            made,
            failed,
        })
    }

    /// Tops up the presignature pool of every threshold key without chain code to the
    /// configured size (`presignature_pool`), at most a few sessions per key per call, and
    /// stops on a key's first failure (its clusters may be down; the next call retries).
    /// Returns how many presignatures were made.
    pub async fn refill_presignatures(&self) -> Result<usize, StoreError> {
        let target = self.presignature_pool as usize;
        if target == 0 {
            return Ok(0);
        }
        let mut made = 0;
        for key in self.store.threshold_keys().await? {
            if key.chain_code.is_some() {
                continue;
            }
            let ready = self.store.ready_presignatures(&key.key_id).await?.len();
            for _ in 0..target.saturating_sub(ready).min(REFILL_BATCH) {
                match self.presign_session(&key, None).await? {
                    Ok(_) => made += 1,
                    Err(a) => {
                        tracing::warn!(
                            key = %key.key_id,
                            code = %a.code,
                            "presignature refill stopped: {}",
                            a.message
                        );
                        break;
                    }
                }
            }
        }
        Ok(made)
    }

    /// One presignature session between t clusters; records the presignature once every
    /// participant stored the same one.
    async fn presign_session(
        &self,
        key: &ThresholdKeyRow,
        clusters: Option<Vec<String>>,
    ) -> Result<Result<PresignatureRow, Abort>, StoreError> {
        let ready = self.store.ready_presignatures(&key.key_id).await?;
        if ready.len() >= MAX_PRESIGNATURES_PER_KEY {
            return Ok(Err(Abort::new(
                "presignature_pool_full",
                format!("{} presignatures are ready already", ready.len()),
                Vec::new(),
            )));
        }
        let participants = match self.choose_participants(key, clusters, &[], None).await? {
            Ok(p) => p,
            Err(a) => return Ok(Err(a)),
        };
        // A fresh session id: presignatures are not requests, and each session runs once.
        let session = SessionRef {
            request_id: random_id(),
            attempt: 0,
        };
        let label = format!("presign-{}", hex::encode(session.request_id));
        let start = encode_request(&Request::ThresholdPresignStart {
            session,
            key_id: hex::decode(&key.key_id).unwrap_or_default(),
            signers: signers_of(&participants),
        });
        let mut st = Session::new(Run::Presign, session, &participants);
        if let Err(a) = self
            .drive_session(&label, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
            .await
        {
            tracing::warn!(
                key = %key.key_id,
                code = %a.code,
                blamed = %names(&a.blamed),
                "presignature session failed: {}",
                a.message
            );
            return Ok(Err(a));
        }
        let indexes: Vec<u16> = participants.iter().map(|p| p.share_index).collect();
        let mut id = None;
        for (p, out) in participants.iter().zip(&st.output) {
            let bad = |what: &str| {
                Abort::new(
                    "threshold_aborted",
                    format!("cluster {} {what}", p.cluster),
                    vec![p.cluster.clone()],
                )
            };
            let info = match out {
                Some(Output::Presignature(info)) => info,
                _ => return Ok(Err(bad("returned no presignature"))),
            };
            if hex::encode(&info.key_id) != key.key_id || info.signers != indexes {
                return Ok(Err(bad("stored a presignature for another key or signers")));
            }
            if *id.get_or_insert(info.id) != info.id {
                return Ok(Err(bad("stored another presignature than the others")));
            }
        }
        let row = PresignatureRow {
            id: hex::encode(id.expect("t >= 2 participants")),
            key_id: key.key_id.clone(),
            signers: participants
                .iter()
                .map(|p| PresignatureSigner {
                    cluster: p.cluster.clone(),
                    node: p.node.clone(),
                    share_index: p.share_index,
                })
                .collect(),
            created_at: self.now_ms(),
            taken_by: None,
        };
        self.store.insert_presignature(&row).await?;
        tracing::info!(
            key = %key.key_id,
            presignature = %row.id,
            clusters = %names(&row.signers.iter().map(|s| s.cluster.clone()).collect::<Vec<_>>()),
            exchanges = st.exchanges,
            "presignature stored"
        );
        Ok(Ok(row))
    }

    /// Online signing of `row` (attempt `attempt`) from a ready presignature of `key`: one
    /// whose clusters are all among the named ones (if any) and none blamed by the previous
    /// attempt.
    pub(super) async fn sign_presigned(
        &self,
        row: &RequestRow,
        key: &ThresholdKeyRow,
        attempt: u8,
        message: &[u8],
        digest: &[u8; 32],
        approvals: Vec<Approval>,
    ) -> Result<Online, StoreError> {
        let (named, blamed) = self.cluster_preferences(row);
        let mut taken = None;
        for p in self.store.ready_presignatures(&key.key_id).await? {
            let fits = p.signers.iter().all(|s| {
                named.as_ref().is_none_or(|n| n.contains(&s.cluster))
                    && !blamed.contains(&s.cluster)
            });
            if fits
                && self
                    .store
                    .take_presignature(&p.id, &row.id, self.now_ms())
                    .await?
            {
                taken = Some(p);
                break;
            }
        }
        let Some(presig) = taken else {
            return Ok(Online::NoneReady);
        };
        let described = presig
            .signers
            .iter()
            .map(|s| format!("{}/{} (share {})", s.cluster, s.node, s.share_index))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            request_id = %row.id,
            attempt,
            presignature = %presig.id,
            signers = %described,
            "online signing from a presignature (getSig)"
        );
        let began = Instant::now();
        let outcome = tokio::time::timeout(
            ONLINE_TIMEOUT,
            self.online_partials(row, key, attempt, &presig, message, approvals),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Abort::new(
                "threshold_aborted",
                format!(
                    "presignature {}: no partial signatures within {} s",
                    presig.id,
                    ONLINE_TIMEOUT.as_secs()
                ),
                presig.signers.iter().map(|s| s.cluster.clone()).collect(),
            ))
        });
        let signed = outcome.and_then(|sig| {
            verify_threshold_result(&self.secp, &self.child_keys, key, &[], digest, &sig)
                .map_err(|m| Abort::new("bad_signature", m, Vec::new()))
        });
        Ok(match signed {
            Ok(mut result) => {
                result.clusters = Some(presig.signers.iter().map(|s| s.cluster.clone()).collect());
                result.presignature = Some(presig.id.clone());
                tracing::info!(
                    request_id = %row.id,
                    attempt,
                    ms = began.elapsed().as_millis() as u64,
                    "threshold signature from a presignature"
                );
                Online::Signed(
                    result,
                    format!(
                        "{described} from presignature {} (attempt {attempt})",
                        presig.id
                    ),
                )
            }
            Err(mut a) => {
                a.message = format!("presignature {}: {}", presig.id, a.message);
                Online::Failed(a)
            }
        })
    }

    /// Asks each holder of `presig` for its partial signature and combines them.
    async fn online_partials(
        &self,
        row: &RequestRow,
        key: &ThresholdKeyRow,
        attempt: u8,
        presig: &PresignatureRow,
        message: &[u8],
        approvals: Vec<Approval>,
    ) -> Result<EcdsaSignature, Abort> {
        let request_id =
            parse_request_id(&row.id).map_err(|m| Abort::new("bad_request_row", m, Vec::new()))?;
        let id = <[u8; 32]>::try_from(hex::decode(&presig.id).unwrap_or_default())
            .map_err(|_| Abort::new("bad_presignature_row", presig.id.clone(), Vec::new()))?;
        let request = encode_request(&Request::ThresholdPresignSign {
            meta: RequestMeta {
                request_id,
                expires_at: row.expires_at,
            },
            attempt,
            params: PresignSignParams {
                key_id: hex::decode(&key.key_id).unwrap_or_default(),
                presignature: id,
                message: message.to_vec(),
            },
            approvals,
        });
        let nodes: Vec<(&str, &str)> = presig
            .signers
            .iter()
            .map(|s| (s.cluster.as_str(), s.node.as_str()))
            .collect();
        self.push_foreign_logs(&nodes).await;
        let calls = presig.signers.iter().map(|s| {
            let link_id = start_link_id(&request_id, attempt, &s.cluster);
            self.start_on(&s.cluster, &s.node, link_id, &request)
        });
        let answers = futures::future::join_all(calls).await;
        let mut aborts = Vec::new();
        let mut partials = Vec::new();
        let mut publics: Vec<(usize, Vec<u8>)> = Vec::new();
        for (pos, (s, answer)) in presig.signers.iter().zip(answers).enumerate() {
            let blame = |code: &str, what: String, final_: bool| Abort {
                final_,
                ..Abort::new(
                    code,
                    format!("cluster {} (node {}) {what}", s.cluster, s.node),
                    vec![s.cluster.clone()],
                )
            };
            match answer {
                Err(e) => aborts.push(blame(
                    "threshold_aborted",
                    format!("failed in getSig: {e}"),
                    false,
                )),
                Ok(TeeAnswer {
                    outcome: Err(e), ..
                }) => aborts.push(blame(
                    &tee_code(&e),
                    format!("refused in getSig: {e}"),
                    final_refusal(&e),
                )),
                Ok(TeeAnswer {
                    outcome:
                        Ok(Response::ThresholdPartial {
                            presignature,
                            position,
                            sigma,
                            public,
                        }),
                    ..
                }) if presignature == id && usize::from(position) == pos => {
                    partials.push(PartialSig { position, sigma });
                    publics.push((pos, public));
                }
                Ok(TeeAnswer { outcome: Ok(r), .. }) => aborts.push(blame(
                    "threshold_aborted",
                    format!(
                        "answered {} instead of its partial signature",
                        response_name(&r)
                    ),
                    false,
                )),
            }
        }
        if let Some(a) = Abort::merge(aborts) {
            return Err(a);
        }
        let cluster = |pos: usize| presig.signers[pos].cluster.clone();
        let (_, first) = &publics[0];
        if let Some((pos, _)) = publics.iter().find(|(_, p)| p != first) {
            return Err(Abort::new(
                "threshold_aborted",
                format!(
                    "clusters {} and {} returned different presignature data",
                    cluster(0),
                    cluster(*pos)
                ),
                vec![cluster(0), cluster(*pos)],
            ));
        }
        let public = PresignaturePublic::from_bytes(first).map_err(|e| {
            Abort::new(
                "threshold_aborted",
                format!(
                    "presignature data of {}: {e}",
                    names(
                        &presig
                            .signers
                            .iter()
                            .map(|s| s.cluster.clone())
                            .collect::<Vec<_>>()
                    )
                ),
                presig.signers.iter().map(|s| s.cluster.clone()).collect(),
            )
        })?;
        let indexes: Vec<u16> = presig.signers.iter().map(|s| s.share_index).collect();
        if public.parties() != indexes.as_slice() || hex::encode(public.public_key()) != key.key_id
        {
            return Err(Abort::new(
                "threshold_aborted",
                "the presignature data names other signers or another key".into(),
                presig.signers.iter().map(|s| s.cluster.clone()).collect(),
            ));
        }
        let sig = combine(&partials, &public, message).map_err(|e| match e {
            PublicError::BadPartial { position } => Abort::new(
                "threshold_aborted",
                format!(
                    "cluster {}'s partial signature does not match its presignature commitments",
                    cluster(usize::from(position))
                ),
                vec![cluster(usize::from(position))],
            ),
            e => Abort::new("bad_signature", e.to_string(), Vec::new()),
        })?;
        let compact = sig.to_compact();
        Ok(EcdsaSignature {
            r: compact[..32].try_into().expect("32 bytes"),
            s: compact[32..].try_into().expect("32 bytes"),
            v: sig.v,
            public_key: sig.public_key.to_vec(),
        })
    }
}
