//! The cloud server's logic, independent of HTTP: requests, approvals, submission through
//! the relays, verification of answers, wallets and derivation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1};
use bitcoin::Network;
use custos_pki::{AdminCache, TrustRoot};
use custos_proto::cluster::{AuditReport, ClusterStatus};
use custos_wire::approval::{Approval, MAX_APPROVAL_LIFETIME_SECS};
use custos_wire::import::{import_key_id, seal_import};
use custos_wire::protocol::{
    encode_request, EcdsaSignature, ImportSecret, KeyInfo, Request, RequestMeta, Response,
    SecretBytes, SecretString, TeeError, MAX_APPROVALS,
};
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use zeroize::Zeroizing;

use crate::api::*;
use crate::approval::{decode_approval, parse_digest, parse_request_id, parse_root_id};
use crate::cluster::{random_id, CallError, Clusters, TeeAnswer};
use crate::config::{CloudConfig, ClusterConfig};
use crate::db::{
    Record, RequestRow, Store, StoreError, StoredApproval, ThresholdKeyRow, ThresholdShareRow,
    WalletRow,
};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::path::{
    derive_xpub, has_hardened, p2wpkh_address, parse_network, parse_path, PathError,
};
use crate::terms::{KeyId, Terms};
use crate::Clock;

mod threshold;

pub use threshold::{
    check_threshold_key_info, decode_bundle, threshold_xpub, MAX_BUNDLE, MAX_KEYGEN_EXCHANGES,
    MAX_THRESHOLD_CLUSTERS, MAX_THRESHOLD_EXCHANGES, THRESHOLD_KEYGEN_TIMEOUT,
    THRESHOLD_SESSION_TIMEOUT,
};

use custos_wire::protocol::{format_path, MAX_QUORUM};
/// Most children one derive call lists.
pub const MAX_DERIVE_COUNT: u32 = 1000;
/// Most requests one list call returns.
pub const MAX_LIST: u32 = 500;
/// Compare-and-swap retries when approvals race.
const CAS_RETRIES: usize = 8;

/// Failures opening the service.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The trust root could not be read or is not a Custos Root CA.
    #[error("trust root {path}: {reason}")]
    TrustRoot {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a creation or approval call produced.
#[derive(Debug)]
pub struct RequestOutcome {
    /// The request as it now stands.
    pub view: RequestView,
    /// Whether it was submitted to its cluster during this call.
    pub submitted: bool,
}

/// A request about to be recorded.
struct Draft {
    cluster: String,
    quorum: u8,
    terms: Terms,
    id: [u8; 16],
    expires_at: u64,
    approvals: Vec<ApprovalBody>,
    /// The wallet's recorded xpub when the caller already read it (sign requests).
    wallet_xpub: Option<String>,
}

/// The cloud server's state.
pub struct Cloud {
    store: Store,
    clusters: Clusters,
    cluster_config: Vec<ClusterConfig>,
    trust_root: TrustRoot,
    tokens: Vec<(String, [u8; 32])>,
    ttl_secs: u64,
    network: Network,
    clock: Clock,
    secp: Secp256k1<All>,
    admins: Mutex<AdminCache>,
    /// Clusters blamed by the last failed attempt of a threshold request (request id →
    /// clusters), avoided by its next attempt when the caller named none.
    threshold_blamed: Mutex<HashMap<String, Vec<String>>>,
    /// Latest threshold audit report per key id (in memory only: lost on restart).
    threshold_audits: Mutex<HashMap<String, ThresholdAuditReport>>,
    /// When this server opened its store: crash recovery resumes only requests last
    /// changed before, never one this server is executing right now.
    started_at_ms: u64,
    /// Presignatures to keep ready per key without chain code (0: on request only).
    presignature_pool: u32,
    /// Wallets read from the store (rows are written once and never change, so a cached
    /// row stays true; absence is never cached). Saves a read per sign request.
    wallets: Mutex<HashMap<String, WalletRow>>,
}

/// Most wallets [`Cloud`] keeps in memory (the cache is emptied when full).
const WALLET_CACHE: usize = 100_000;

/// The system clock (Unix milliseconds).
pub fn system_clock() -> Clock {
    Arc::new(custos_pki::clock::now_unix_ms)
}

/// `tee_` + the TEE refusal's stable code ([`TeeError::code`]).
pub fn tee_code(e: &TeeError) -> String {
    format!("tee_{}", e.code())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Cloud {
    /// Opens the database (migrating it) and sets up cluster access through `gateway`.
    pub async fn open(
        config: &CloudConfig,
        gateway: Arc<dyn Gateway>,
    ) -> Result<Arc<Self>, OpenError> {
        Self::open_with_clock(config, gateway, system_clock()).await
    }

    /// [`Cloud::open`] with a chosen clock (tests move time forward to expire requests).
    pub async fn open_with_clock(
        config: &CloudConfig,
        gateway: Arc<dyn Gateway>,
        clock: Clock,
    ) -> Result<Arc<Self>, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let trust_root = load_trust_root(&config.trust_root)?;
        let url = config
            .db_url
            .as_deref()
            .ok_or_else(|| OpenError::Config("db_url is not set (use CloudConfig::load)".into()))?;
        let store = Store::connect(url).await?;
        let tokens = config
            .api_tokens
            .iter()
            .filter_map(|t| {
                let h: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                Some((t.name.clone(), h))
            })
            .collect();
        let mut secp = Secp256k1::new();
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed[..]);
        // Blinds libsecp256k1's context against side channels.
        secp.seeded_randomize(&seed);
        let started_at_ms = clock();
        Ok(Arc::new(Cloud {
            store,
            clusters: Clusters::new(
                gateway,
                trust_root.clone(),
                config.submit_attempts,
                clock.clone(),
            ),
            cluster_config: config.clusters.clone(),
            trust_root,
            tokens,
            ttl_secs: config.request_ttl_secs,
            network: parse_network(&config.network).map_err(OpenError::Config)?,
            clock,
            secp,
            admins: Mutex::new(AdminCache::default()),
            threshold_blamed: Mutex::new(HashMap::new()),
            threshold_audits: Mutex::new(HashMap::new()),
            started_at_ms,
            presignature_pool: config.presignature_pool,
            wallets: Mutex::new(HashMap::new()),
        }))
    }

    /// The database handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The name of the API token `token`, if it is configured.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for (name, expected) in &self.tokens {
            if constant_time_eq(&h, expected) {
                found = Some(name.as_str());
            }
        }
        found
    }

    fn cluster_config(&self, name: &str) -> Result<&ClusterConfig, ApiError> {
        self.cluster_config
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    "unknown_cluster",
                    format!("no cluster {name:?} is configured"),
                )
            })
    }

    // ----- requests -------------------------------------------------------------------

    fn request_id_and_expiry(
        &self,
        request_id: Option<&str>,
        expires_at: Option<u64>,
    ) -> Result<([u8; 16], u64), ApiError> {
        let id = match request_id {
            Some(s) => parse_request_id(s).map_err(|m| ApiError::new("invalid_request_id", m))?,
            None => random_id(),
        };
        let now = self.now_secs();
        let expires_at = expires_at.unwrap_or(now + self.ttl_secs);
        if expires_at <= now || expires_at > now + MAX_APPROVAL_LIFETIME_SECS {
            return Err(ApiError::new(
                "invalid_expiry",
                format!(
                    "expires_at must be after now ({now}) and at most {MAX_APPROVAL_LIFETIME_SECS} s ahead"
                ),
            ));
        }
        Ok((id, expires_at))
    }

    fn check_quorum(quorum: u8) -> Result<(), ApiError> {
        if quorum == 0 || quorum > MAX_QUORUM {
            return Err(ApiError::new(
                "invalid_quorum",
                format!("quorum {quorum} outside 1..={MAX_QUORUM}"),
            ));
        }
        Ok(())
    }

    /// `POST /v1/wallets`.
    pub async fn create_wallet(
        &self,
        caller: &str,
        body: CreateWalletBody,
    ) -> Result<RequestOutcome, ApiError> {
        self.cluster_config(&body.cluster)?;
        Self::check_quorum(body.quorum)?;
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: body.cluster,
                quorum: body.quorum,
                terms: Terms::CreateWallet,
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// `POST /v1/wallets/import`: the secret is sealed to one healthy node's certified
    /// device key right here and then dropped (zeroized); only ciphertext is stored.
    pub async fn import_wallet(
        &self,
        caller: &str,
        body: ImportWalletBody,
    ) -> Result<RequestOutcome, ApiError> {
        self.cluster_config(&body.cluster)?;
        Self::check_quorum(body.quorum)?;
        let secret = import_secret(&body)?;
        let key_id = import_key_id(&secret).map_err(|e| match e {
            // The TEE core's messages about a rejected secret never contain the secret.
            TeeError::ImportRejected(m) => ApiError::new("invalid_secret", m),
            other => ApiError::new("invalid_secret", other.to_string()),
        })?;
        let root_id = hex::encode(&key_id);
        if self.store.wallet(&root_id).await?.is_some() {
            return Err(ApiError::new(
                "wallet_exists",
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
        let Some(node) = healthy.first().map(|s| s.to_string()) else {
            return Err(ApiError::new(
                "cluster_unavailable",
                format!(
                    "cluster {} has no healthy node to import into",
                    body.cluster
                ),
            ));
        };
        let device_key = self
            .clusters
            .device_key(&body.cluster, &node, false)
            .await
            .map_err(call_api_error)?;
        let meta = RequestMeta {
            request_id: id,
            expires_at,
        };
        let sealed = seal_import(
            &device_key,
            &body.cluster,
            &node,
            &meta,
            body.quorum,
            &key_id,
            &secret,
        )
        .map_err(|e| match e {
            TeeError::ImportRejected(m) => ApiError::new("invalid_secret", m),
            // The certified device key is not a usable P-256 key: nothing the caller can fix.
            other => ApiError::internal("sealing the import", &other),
        })?;
        drop(secret);
        let root_id: KeyId = key_id
            .as_slice()
            .try_into()
            .map_err(|_| ApiError::new("invalid_secret", "the seed's key id is not 33 bytes"))?;
        self.create(
            caller,
            Draft {
                cluster: body.cluster,
                quorum: body.quorum,
                terms: Terms::ImportWallet {
                    root_id,
                    node,
                    sealed,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// `POST /v1/sign-requests`.
    pub async fn sign(
        &self,
        caller: &str,
        body: SignRequestBody,
    ) -> Result<RequestOutcome, ApiError> {
        let root_id: KeyId = parse_root_id(&body.root_id)
            .map_err(|m| ApiError::new("invalid_root_id", m))?
            .try_into()
            .expect("root ids are 33 bytes");
        let path =
            parse_path(&body.path).map_err(|e| ApiError::new("invalid_path", e.to_string()))?;
        let digest = parse_digest(&body.digest).map_err(|m| ApiError::new("invalid_digest", m))?;
        let wallet = self.wallet_row(&body.root_id.to_ascii_lowercase()).await?;
        self.cluster_config(&wallet.cluster)?;
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: wallet.cluster,
                quorum: wallet.quorum,
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

    async fn create(&self, caller: &str, d: Draft) -> Result<RequestOutcome, ApiError> {
        if d.approvals.len() > MAX_APPROVALS {
            return Err(ApiError::new(
                "too_many_approvals",
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
            created_by: caller.to_string(),
            version: 1,
            events: Vec::new(),
        };
        let message = message_of(&row);
        for a in &d.approvals {
            let stored = self.verify_approval(a, &message)?;
            if row.approvals.iter().any(|x| x.subject == stored.subject) {
                return Err(ApiError::new(
                    "duplicate_approval",
                    format!("admin {:?} approved twice", stored.admin),
                ));
            }
            row.approvals.push(stored);
        }
        let admins: Vec<&str> = row.approvals.iter().map(|a| a.admin.as_str()).collect();
        let detail = format!(
            "{} on {} by {caller}; quorum {}; approvals: [{}]",
            row.kind().as_str(),
            row.cluster,
            row.quorum,
            admins.join(", ")
        );
        let ready = row.approvals.len() >= usize::from(row.quorum);
        let mut events = vec![("created", detail)];
        if ready {
            // Quorum on arrival: stored as submitting in the same statement.
            row.status = RequestStatus::Submitting;
            row.attempts = 1;
            row.version = 2;
            events.push(("submitting", "attempt 1".to_string()));
        }
        self.store
            .insert_request_with_events(&mut row, events)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => ApiError::new(
                    "request_exists",
                    format!("request {} already exists", row.id),
                ),
                other => other.into(),
            })?;
        tracing::info!(
            request_id = %row.id,
            kind = row.kind().as_str(),
            cluster = %row.cluster,
            caller,
            approvals = row.approvals.len(),
            quorum = row.quorum,
            "request created"
        );
        if ready {
            tracing::info!(request_id = %row.id, attempt = 1, cluster = %row.cluster, "submitting");
            let row = self.execute(row, d.wallet_xpub).await?;
            return self.outcome(row, true).await;
        }
        self.outcome(row, false).await
    }

    async fn outcome(&self, row: RequestRow, submitted: bool) -> Result<RequestOutcome, ApiError> {
        let view = self.view(&row, true).await?;
        if submitted && view.status == RequestStatus::Failed {
            if let Some(e) = &view.error {
                // The caller asked for an answer now; the request stays retryable.
                let code = match e.code.as_str() {
                    "cluster_unavailable" => "cluster_unavailable",
                    "relay_rejected" => "relay_rejected",
                    "unverified_response" => "unverified_response",
                    _ => "",
                };
                if !code.is_empty() {
                    return Err(
                        ApiError::new(code, format!("request {}: {}", view.id, e.message))
                            .with_request(&view.id),
                    );
                }
            }
        }
        Ok(RequestOutcome { view, submitted })
    }

    /// Verifies an approval's chain (cached) and signature over `message`.
    fn verify_approval(
        &self,
        a: &ApprovalBody,
        message: &[u8],
    ) -> Result<StoredApproval, ApiError> {
        let invalid = |m: String| ApiError::new("approval_invalid", m);
        let crate::approval::DecodedApproval {
            cert,
            ca,
            signature: sig,
        } = decode_approval(a).map_err(invalid)?;
        let now = self.now_secs();
        let admin = self
            .admins
            .lock()
            .expect("admin cache lock")
            .verify(&self.trust_root, &cert, &ca, now)
            .cloned()
            .map_err(|e| invalid(e.to_string()))?;
        admin.verify_signature(message, &sig).map_err(|_| {
            invalid(format!(
                "signature of admin {:?} does not cover this request's approval message",
                admin.identity.name
            ))
        })?;
        Ok(StoredApproval {
            admin: admin.identity.name.clone(),
            fingerprint: hex::encode(admin.identity.fingerprint),
            subject: hex::encode(&admin.identity.subject),
            cert: hex::encode(&cert),
            ca: hex::encode(&ca),
            signature: hex::encode(&sig),
            at_ms: self.now_ms(),
        })
    }

    async fn request_row(&self, id: &str) -> Result<RequestRow, ApiError> {
        parse_request_id(id).map_err(|m| ApiError::new("invalid_request_id", m))?;
        let id = id.to_ascii_lowercase();
        let row = self
            .store
            .request(&id)
            .await?
            .ok_or_else(|| ApiError::new("unknown_request", format!("no request {id}")))?;
        self.expire_if_due(row).await
    }

    /// Marks a pending request whose window has passed as expired.
    async fn expire_if_due(&self, row: RequestRow) -> Result<RequestRow, ApiError> {
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
            Err(StoreError::Conflict(_)) => {
                self.store.request(&row.id).await?.ok_or_else(|| {
                    ApiError::new("unknown_request", format!("no request {}", row.id))
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A request for a background sweep; one that cannot be read is logged and skipped so
    /// that it does not stop the sweep.
    async fn readable(&self, id: &str) -> Option<RequestRow> {
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

    /// `GET /v1/requests/{id}`.
    pub async fn request(&self, id: &str) -> Result<RequestView, ApiError> {
        let row = self.request_row(id).await?;
        self.view(&row, true).await
    }

    /// `GET /v1/requests`.
    pub async fn requests(&self, q: &RequestQuery) -> Result<RequestList, ApiError> {
        let limit = q.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIST {
            return Err(ApiError::new(
                "invalid_query",
                format!("limit must be 1..={MAX_LIST}"),
            ));
        }
        let rows = self.store.requests(q.status, q.kind, limit).await?;
        let mut requests = Vec::with_capacity(rows.len());
        for r in &rows {
            requests.push(self.view(r, false).await?);
        }
        Ok(RequestList { requests })
    }

    /// `POST /v1/requests/{id}/approvals`: verifies and records one approval; at quorum,
    /// submits and waits for the cluster's verified answer.
    pub async fn approve(&self, id: &str, body: ApprovalBody) -> Result<RequestOutcome, ApiError> {
        let mut row = self.request_row(id).await?;
        for _ in 0..CAS_RETRIES {
            match row.status {
                RequestStatus::PendingApproval => {}
                RequestStatus::Expired => {
                    return Err(ApiError::new(
                        "request_expired",
                        format!("request {} expired at {}", row.id, row.expires_at),
                    ))
                }
                s => {
                    return Err(ApiError::new(
                        "not_pending",
                        format!("request {} is {}", row.id, s.as_str()),
                    ))
                }
            }
            let message = message_of(&row);
            let approval = self.verify_approval(&body, &message)?;
            if row.approvals.iter().any(|a| a.subject == approval.subject) {
                return Err(ApiError::new(
                    "duplicate_approval",
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
            match self
                .store
                .update_request(&next, "approved", detail, None)
                .await
            {
                Ok(stored) => {
                    tracing::info!(
                        request_id = %stored.id,
                        approvals = stored.approvals.len(),
                        quorum = stored.quorum,
                        "approval recorded"
                    );
                    if stored.approvals.len() >= usize::from(stored.quorum) {
                        let done = self.submit(stored).await?;
                        return self.outcome(done, true).await;
                    }
                    return self.outcome(stored, false).await;
                }
                Err(StoreError::Conflict(_)) => row = self.request_row(id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            "conflict",
            format!("request {id} keeps changing; retry"),
        ))
    }

    /// `POST /v1/requests/{id}/retry`: resubmits a failed request with the same id.
    pub async fn retry(&self, id: &str) -> Result<RequestOutcome, ApiError> {
        let row = self.request_row(id).await?;
        if row.status != RequestStatus::Failed {
            return Err(ApiError::new(
                "not_pending",
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
    async fn submit(&self, row: RequestRow) -> Result<RequestRow, ApiError> {
        let mut next = row.clone();
        next.status = RequestStatus::Submitting;
        next.attempts += 1;
        next.updated_at = self.now_ms();
        next.error_code = None;
        next.error_message = None;
        let event = if row.status == RequestStatus::Submitting {
            "resubmitting"
        } else {
            "submitting"
        };
        let detail = format!("attempt {}", next.attempts);
        let stored = match self.store.update_request(&next, event, detail, None).await {
            Ok(s) => s,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::new(
                    "not_pending",
                    format!("request {} is being submitted by another call", row.id),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(request_id = %stored.id, attempt = stored.attempts, cluster = %stored.cluster, "submitting");
        Ok(self.execute(stored, None).await?)
    }

    /// Resubmits every request left in `submitting` by an earlier run (crash recovery),
    /// with its own id: the link returns the first answer if the request was executed
    /// before the crash. Requests this server changed since it started are its own, being
    /// executed (recovery runs while the server already serves); they are left alone.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let ids = self
            .store
            .request_ids_with_status(RequestStatus::Submitting, None)
            .await?;
        let mut n = 0;
        for id in ids {
            if let Some(row) = self.readable(&id).await {
                if row.status == RequestStatus::Submitting && row.updated_at < self.started_at_ms {
                    n += 1;
                    tracing::info!(request_id = %id, "resubmitting after restart");
                    if let Err(e) = self.submit(row).await {
                        tracing::warn!(request_id = %id, error = %e.message, "recovery failed");
                    }
                }
            }
        }
        Ok(n)
    }

    /// Sends a `submitting` request and records its verified outcome. `wallet_xpub` is the
    /// wallet's recorded xpub when the caller already holds it; otherwise it is read here.
    async fn execute(
        &self,
        row: RequestRow,
        wallet_xpub: Option<String>,
    ) -> Result<RequestRow, StoreError> {
        match row.kind() {
            RequestKind::ThresholdSign => return self.execute_threshold(row).await,
            RequestKind::CreateThresholdKey => return self.execute_keygen(row).await,
            _ => {}
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
        let answer = self
            .clusters
            .tee_call(&row.cluster, id, &request, row.terms.pinned_node())
            .await;
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

    fn judge(
        &self,
        row: &RequestRow,
        wallet_xpub: Option<&str>,
        answer: Result<TeeAnswer, CallError>,
    ) -> Verdict {
        let fail = |code: &str, m: String| Verdict::Failed(Failure::new(code, m));
        let (node, response) = match answer {
            Ok(TeeAnswer {
                node,
                outcome: Ok(response),
            }) => (node, response),
            Ok(TeeAnswer {
                node,
                outcome: Err(e),
            }) => return Verdict::Refused(Failure::new(tee_code(&e), format!("node {node}: {e}"))),
            // Whether nothing was executed and a retry of the same id may be served (e.g.
            // "no node could serve now", which the bridge did not store as the answer).
            Err(e) => return Verdict::ended(Failure::new(e.code(), e.to_string()), e.may_retry()),
        };
        match (&row.terms, response) {
            (Terms::Sign { path, digest, .. }, Response::Signature(sig)) => {
                match verify_sign_result(&self.secp, digest, path, wallet_xpub, &sig) {
                    Ok(result) => Verdict::completed(
                        node,
                        RequestResult::Signature(result),
                        Recorded::Nothing,
                    ),
                    Err(m) => fail("bad_signature", m),
                }
            }
            (Terms::CreateWallet | Terms::ImportWallet { .. }, Response::Wallet(info)) => {
                match self.check_wallet(row, &info) {
                    Ok((result, wallet)) => {
                        Verdict::completed(node, result, Recorded::Wallet(wallet))
                    }
                    Err(m) => fail("bad_result", m),
                }
            }
            (
                Terms::ImportThresholdKey {
                    node: sealed_to,
                    bundle,
                },
                Response::ThresholdKey(info),
            ) => match self.check_threshold_share(row, sealed_to, bundle, &node, &info) {
                Ok((result, key, share)) => {
                    Verdict::completed(node, result, Recorded::ThresholdShare(key, share))
                }
                Err(m) => fail("bad_result", m),
            },
            (_, other) => fail(
                "relay_protocol",
                format!("unexpected TEE response {}", response_name(&other)),
            ),
        }
    }

    fn check_wallet(
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
        };
        Ok((
            RequestResult::Wallet(WalletResult {
                root_id,
                xpub: info.xpub.clone(),
            }),
            wallet,
        ))
    }

    /// Records how a submission ended (one transaction with what it records).
    async fn finish(&self, row: RequestRow, verdict: Verdict) -> Result<RequestRow, StoreError> {
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
        };
        let record = match &recorded {
            Recorded::Nothing => Record::Nothing,
            Recorded::Wallet(w) => Record::Wallet(w),
            Recorded::ThresholdShare(k, s) => Record::ThresholdShare(k, s),
            Recorded::ThresholdKey(k, s) => Record::ThresholdKey(k, s),
        };
        let stored = match self
            .store
            .update_request_recording(&next, event, detail.clone(), record)
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
            other => other?,
        };
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

    async fn view(&self, row: &RequestRow, with_events: bool) -> Result<RequestView, ApiError> {
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

    // ----- wallets ----------------------------------------------------------------------

    async fn wallet_row(&self, root_id: &str) -> Result<WalletRow, ApiError> {
        parse_root_id(root_id).map_err(|m| ApiError::new("invalid_root_id", m))?;
        self.recorded_wallet(&root_id.to_ascii_lowercase())
            .await?
            .ok_or_else(|| ApiError::new("unknown_wallet", format!("no wallet {root_id}")))
    }

    /// The recorded wallet `root_id` (lower-case hex), from memory or the store.
    async fn recorded_wallet(&self, root_id: &str) -> Result<Option<WalletRow>, StoreError> {
        if let Some(w) = self.wallets.lock().expect("wallet cache lock").get(root_id) {
            return Ok(Some(w.clone()));
        }
        let found = self.store.wallet(root_id).await?;
        if let Some(w) = &found {
            let mut cache = self.wallets.lock().expect("wallet cache lock");
            if cache.len() >= WALLET_CACHE {
                cache.clear();
            }
            cache.insert(w.root_id.clone(), w.clone());
        }
        Ok(found)
    }

    /// `GET /v1/wallets`.
    pub async fn wallets(&self) -> Result<WalletList, ApiError> {
        Ok(WalletList {
            wallets: self
                .store
                .wallets()
                .await?
                .iter()
                .map(wallet_view)
                .collect(),
        })
    }

    /// `GET /v1/wallets/{root_id}`.
    pub async fn wallet(&self, root_id: &str) -> Result<WalletView, ApiError> {
        Ok(wallet_view(&self.wallet_row(root_id).await?))
    }

    /// `GET /v1/wallets/{root_id}/derive`: public derivation from the recorded xpub.
    pub async fn derive(&self, root_id: &str, q: &DeriveQuery) -> Result<DeriveView, ApiError> {
        let path_text = q.path.as_deref().unwrap_or("m");
        let path = parse_path(path_text).map_err(|e| match e {
            PathError::Invalid(m) => ApiError::new("invalid_path", m),
            PathError::Hardened(m) => ApiError::new("hardened_path", m),
        })?;
        if has_hardened(&path) {
            return Err(ApiError::new(
                "hardened_path",
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
                        "invalid_range",
                        format!(
                            "count must be 1..={MAX_DERIVE_COUNT} and start+count at most 2^31"
                        ),
                    ));
                }
                Some((start, count))
            }
        };
        if q.start.is_some() && q.count.is_none() {
            return Err(ApiError::new("invalid_range", "start needs count"));
        }
        let wallet = self.wallet_row(root_id).await?;
        let root =
            Xpub::from_str(&wallet.xpub).map_err(|e| ApiError::internal("stored xpub", &e))?;
        let derived = derive_xpub(&self.secp, &root, &path)
            .map_err(|e| ApiError::new("invalid_path", e.to_string()))?;
        let addresses = match range {
            None => None,
            Some((start, count)) => {
                let mut out = Vec::with_capacity(count as usize);
                for index in start..start + count {
                    let child = derive_xpub(&self.secp, &derived, &[index])
                        .map_err(|e| ApiError::new("invalid_range", e.to_string()))?;
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

    // ----- clusters ---------------------------------------------------------------------

    /// `GET /v1/clusters`: every configured cluster with a quick reachability probe.
    pub async fn cluster_list(&self) -> ClusterList {
        let probes = self.cluster_config.iter().map(|c| async move {
            let probe = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.clusters.status(&c.name, false),
            )
            .await
            .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())));
            match probe {
                Ok(s) => ClusterView {
                    name: c.name.clone(),
                    relay: c.relay.to_string(),
                    reachable: true,
                    nodes: Some(s.nodes.len() as u32),
                    healthy_nodes: Some(s.nodes.iter().filter(|n| n.healthy).count() as u32),
                    keys: Some(s.keys),
                    error: None,
                },
                Err(e) => ClusterView {
                    name: c.name.clone(),
                    relay: c.relay.to_string(),
                    reachable: false,
                    nodes: None,
                    healthy_nodes: None,
                    keys: None,
                    error: Some(e.to_string()),
                },
            }
        });
        ClusterList {
            clusters: futures::future::join_all(probes).await,
        }
    }

    /// `GET /v1/clusters/{name}`.
    pub async fn cluster_status(&self, name: &str) -> Result<ClusterStatusView, ApiError> {
        self.cluster_config(name)?;
        let s = self
            .clusters
            .status(name, true)
            .await
            .map_err(call_api_error)?;
        Ok(status_view(s))
    }

    /// `POST /v1/clusters/{name}/audits` (`latest` false) and
    /// `GET /v1/clusters/{name}/audits/latest` (`latest` true).
    pub async fn audit(&self, name: &str, latest: bool) -> Result<AuditReportView, ApiError> {
        self.cluster_config(name)?;
        let report = self
            .clusters
            .audit(name, latest)
            .await
            .map_err(call_api_error)?;
        tracing::info!(
            cluster = name,
            latest,
            nodes = report.nodes.len(),
            "audit report relayed"
        );
        Ok(audit_view(report))
    }
}

/// Verifies a signature from the TEE: (r,s) over the digest with the returned key, the
/// recovery id, low-s, and (for non-hardened paths) that the key is the xpub-derived
/// child at the request's path.
pub fn verify_sign_result(
    secp: &Secp256k1<All>,
    digest: &[u8; 32],
    path: &[u32],
    wallet_xpub: Option<&str>,
    sig: &EcdsaSignature,
) -> Result<SignResult, String> {
    let public_key =
        PublicKey::from_slice(&sig.public_key).map_err(|e| format!("public key: {e}"))?;
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
    let signature = Signature::from_compact(&compact).map_err(|e| format!("signature: {e}"))?;
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature {
        return Err("signature is not low-s".into());
    }
    let msg = Message::from_digest(*digest);
    secp.verify_ecdsa(&msg, &signature, &public_key)
        .map_err(|_| "signature does not verify with the returned public key".to_string())?;
    let recid = RecoveryId::from_i32(i32::from(sig.v)).map_err(|e| format!("recovery id: {e}"))?;
    let recovered = RecoverableSignature::from_compact(&compact, recid)
        .and_then(|r| secp.recover_ecdsa(&msg, &r))
        .map_err(|e| format!("recovery: {e}"))?;
    if recovered != public_key {
        return Err("recovery id does not recover the signing key".into());
    }
    if !has_hardened(path) {
        // Sign requests are only accepted for recorded wallets, whose xpub was checked
        // against the key id when the wallet was recorded.
        let root = Xpub::from_str(wallet_xpub.ok_or("the wallet's xpub is not recorded")?)
            .map_err(|e| format!("recorded xpub: {e}"))?;
        let child = derive_xpub(secp, &root, path).map_err(|e| e.to_string())?;
        if child.public_key != public_key {
            return Err(format!(
                "signed with {}, but the wallet's key at {} is {}",
                hex::encode(sig.public_key.as_slice()),
                format_path(path),
                hex::encode(child.public_key.serialize())
            ));
        }
    }
    Ok(SignResult {
        r: hex::encode(sig.r),
        s: hex::encode(sig.s),
        v: sig.v,
        public_key: hex::encode(&sig.public_key),
        signature_der: hex::encode(signature.serialize_der()),
        clusters: None,
        presignature: None,
    })
}

/// What a completed request records besides itself.
pub(crate) enum Recorded {
    Nothing,
    Wallet(WalletRow),
    ThresholdShare(ThresholdKeyRow, ThresholdShareRow),
    ThresholdKey(ThresholdKeyRow, Vec<ThresholdShareRow>),
}

/// How one submission of a request ended, as [`Cloud::finish`] records it.
pub(crate) enum Verdict {
    /// Done, its answer verified: `completed`.
    Completed(Box<Completion>),
    /// Not done, and another submission with the same id may succeed: `failed`.
    Failed(Failure),
    /// Final: `refused` (a retry cannot help; a new request needs new approvals).
    Refused(Failure),
}

/// A completed request's verified result, with what it records besides itself.
pub(crate) struct Completion {
    /// The node (or, for threshold requests, the clusters) that served it.
    node: String,
    result: RequestResult,
    recorded: Recorded,
}

impl Verdict {
    fn completed(node: String, result: RequestResult, recorded: Recorded) -> Self {
        Verdict::Completed(Box::new(Completion {
            node,
            result,
            recorded,
        }))
    }

    /// [`Verdict::Failed`] when `may_retry`, else [`Verdict::Refused`].
    pub(crate) fn ended(failure: Failure, may_retry: bool) -> Self {
        if may_retry {
            Verdict::Failed(failure)
        } else {
            Verdict::Refused(failure)
        }
    }
}

/// Why a submission did not complete: a stable code and a message for humans.
pub(crate) struct Failure {
    code: String,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Writes the failure into `row` with `status`; the event's name and detail.
    fn record(
        self,
        row: &mut RequestRow,
        status: RequestStatus,
    ) -> (&'static str, String, Recorded) {
        row.status = status;
        let detail = format!("{}: {}", self.code, self.message);
        row.error_code = Some(self.code);
        row.error_message = Some(self.message);
        (status.as_str(), detail, Recorded::Nothing)
    }
}

/// The TEE request of a non-threshold request, encoded.
fn tee_request(row: &RequestRow) -> Result<Vec<u8>, String> {
    let meta = RequestMeta {
        request_id: parse_request_id(&row.id)?,
        expires_at: row.expires_at,
    };
    let request = row
        .terms
        .tee_request(meta, row.quorum, tee_approvals(row)?)
        .ok_or("threshold requests run as sessions")?;
    Ok(encode_request(&request))
}

/// The exact bytes an admin signs to approve `row`.
fn message_of(row: &RequestRow) -> Vec<u8> {
    let meta = RequestMeta {
        // Ids are written by this server as 16 bytes of hex and checked when read back.
        request_id: parse_request_id(&row.id).unwrap_or_default(),
        expires_at: row.expires_at,
    };
    row.terms.approval_message(&row.cluster, row.quorum, &meta)
}

/// The approvals of a request as the TEE takes them.
fn tee_approvals(row: &RequestRow) -> Result<Vec<Approval>, String> {
    row.approvals
        .iter()
        .map(|a| {
            Ok(Approval {
                admin_cert: hex::decode(&a.cert).map_err(|e| e.to_string())?,
                admin_ca: hex::decode(&a.ca).map_err(|e| e.to_string())?,
                signature: hex::decode(&a.signature).map_err(|e| e.to_string())?,
            })
        })
        .collect()
}

fn response_name(r: &Response) -> String {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

pub(crate) fn load_trust_root(path: &std::path::Path) -> Result<TrustRoot, OpenError> {
    let err = |reason: String| OpenError::TrustRoot {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let der =
        custos_pki::pem_to_der(&pem, "Root CA certificate").map_err(|e| err(e.to_string()))?;
    TrustRoot::from_der(&der).map_err(|e| err(e.to_string()))
}

/// The secret of an import body, checked for shape (exactly one of mnemonic and seed).
fn import_secret(body: &ImportWalletBody) -> Result<ImportSecret, ApiError> {
    let bad = |m: &str| ApiError::new("invalid_secret", m.to_string());
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

/// An API error for a cluster call made on the caller's behalf.
fn call_api_error(e: CallError) -> ApiError {
    match e {
        CallError::UnknownCluster(c) => {
            ApiError::new("unknown_cluster", format!("no cluster {c:?}"))
        }
        CallError::Unavailable(m) => ApiError::new("cluster_unavailable", m),
        CallError::Rejected(m) => ApiError::new("relay_rejected", m),
        CallError::Refused { code, message } => {
            ApiError::new("bridge_refused", format!("{}: {message}", code.as_str()))
        }
        CallError::Unverified(m) | CallError::Protocol(m) => {
            ApiError::new("unverified_response", m)
        }
    }
}

fn wallet_view(w: &WalletRow) -> WalletView {
    WalletView {
        root_id: w.root_id.clone(),
        cluster: w.cluster.clone(),
        xpub: w.xpub.clone(),
        quorum: w.quorum,
        created_at_ms: w.created_at,
        created_by_request: w.created_by_request.clone(),
    }
}

/// The view of a row without events and approval message.
fn base_view(row: &RequestRow) -> RequestView {
    let mut view = RequestView {
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
        quorum: row.quorum,
        approvals: row
            .approvals
            .iter()
            .map(|a| ApprovalView {
                admin: a.admin.clone(),
                fingerprint: a.fingerprint.clone(),
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

fn status_view(s: ClusterStatus) -> ClusterStatusView {
    ClusterStatusView {
        healthy: s.nodes.iter().filter(|n| n.healthy).count() as u32,
        cluster: s.cluster,
        keys: s.keys,
        nodes: s
            .nodes
            .into_iter()
            .map(|n| NodeStatusView {
                node: n.node,
                endpoint: n.endpoint,
                healthy: n.healthy,
                keys_held: n.keys_held,
                served: n.served,
                failures: n.failures,
            })
            .collect(),
    }
}

fn audit_view(a: AuditReport) -> AuditReportView {
    AuditReportView {
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        keys: a.keys,
        nodes: a
            .nodes
            .into_iter()
            .map(|n| NodeAuditView {
                node: n.node,
                checked: n.checked,
                ok: n.ok,
                missing: n.missing.iter().map(hex::encode).collect(),
                wrong: n.wrong.iter().map(hex::encode).collect(),
                error: (!n.error.is_empty()).then_some(n.error),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip32::{ChildNumber, Xpriv};
    use bitcoin::NetworkKind;
    use custos_wire::approval::THRESHOLD_SCOPE;
    use custos_wire::protocol::HARDENED;

    /// A row of `terms` in its scope, completed with `result` when given.
    fn row_of(terms: Terms, result: Option<&str>) -> RequestRow {
        let cluster = match terms.kind() {
            RequestKind::ThresholdSign | RequestKind::CreateThresholdKey => THRESHOLD_SCOPE,
            _ => "dc1",
        };
        RequestRow {
            id: "ab".repeat(16),
            cluster: cluster.into(),
            quorum: 2,
            terms,
            status: RequestStatus::PendingApproval,
            created_at: 1,
            updated_at: 1,
            expires_at: 1000,
            approvals: vec![],
            result: result.map(String::from),
            error_code: None,
            error_message: None,
            attempts: 0,
            created_by: "tester".into(),
            version: 1,
            events: vec![],
        }
    }

    /// Approvers recompute the approval message from the view (never trusting the
    /// server's bytes); the server makes it from the terms. Both agree for every kind.
    #[test]
    fn the_view_gives_approvers_the_message_the_server_checks() {
        let g = PublicKey::from_secret_key(
            &Secp256k1::new(),
            &bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).unwrap(),
        )
        .serialize();
        let bundle = custos_wire::protocol::ThresholdBundle {
            key: custos_wire::protocol::ThresholdKeyInfo {
                key_id: g.to_vec(),
                chain_code: None,
                threshold: 2,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 2,
                origin: custos_wire::protocol::ThresholdOrigin::Dealer,
                share_index: 0,
            },
            recipient_fingerprint: [0; 32],
            dealer_cert: vec![],
            dealer_ca: vec![],
            enc: vec![],
            ciphertext: vec![],
            signature: vec![],
        };
        let all = [
            Terms::CreateWallet,
            Terms::ImportWallet {
                root_id: g,
                node: "node1".into(),
                sealed: custos_wire::import::SealedImport {
                    enc: vec![1],
                    ciphertext: vec![2],
                },
            },
            Terms::Sign {
                root_id: g,
                path: vec![HARDENED | 44, 0, 7],
                digest: [3; 32],
            },
            Terms::ImportThresholdKey {
                node: "node1".into(),
                bundle,
            },
            Terms::ThresholdSign {
                key_id: g,
                path: vec![],
                digest: Sha256::digest(b"m").into(),
                message: Some(b"m".to_vec()),
                clusters: Some(vec!["dc2".into(), "dc1".into()]),
            },
            Terms::CreateThresholdKey {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
            },
        ];
        for terms in all {
            let kind = terms.kind();
            let row = row_of(terms, None);
            row.terms.check(&row.cluster, row.quorum).unwrap();
            let view = base_view(&row);
            assert_eq!(
                crate::approval::approval_message(&view).unwrap(),
                message_of(&row),
                "{kind:?}"
            );
        }
        // A completed creation shows the wallet it made, from its result.
        let done = row_of(
            Terms::CreateWallet,
            Some(&format!(r#"{{"root_id":"{}","xpub":"x"}}"#, hex::encode(g))),
        );
        assert_eq!(base_view(&done).root_id, Some(hex::encode(g)));
    }

    fn sign(
        secp: &Secp256k1<All>,
        key: &bitcoin::secp256k1::SecretKey,
        digest: &[u8; 32],
    ) -> EcdsaSignature {
        let rs = secp.sign_ecdsa_recoverable(&Message::from_digest(*digest), key);
        let (recid, compact) = rs.serialize_compact();
        EcdsaSignature {
            r: compact[..32].try_into().unwrap(),
            s: compact[32..].try_into().unwrap(),
            v: recid.to_i32() as u8,
            public_key: PublicKey::from_secret_key(secp, key).serialize().to_vec(),
        }
    }

    #[test]
    fn sign_results_are_verified_against_the_wallet() {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(NetworkKind::Main, &[7u8; 32]).unwrap();
        let xpub = Xpub::from_priv(&secp, &master).to_string();
        let path = [0u32, 7];
        let steps: Vec<ChildNumber> = path.iter().map(|&i| ChildNumber::from(i)).collect();
        let child = master.derive_priv(&secp, &steps).unwrap();
        let digest = [9u8; 32];
        let good = sign(&secp, &child.private_key, &digest);
        let r = verify_sign_result(&secp, &digest, &path, Some(&xpub), &good).unwrap();
        assert_eq!(r.public_key, hex::encode(&good.public_key));

        // A valid signature by the wrong key (the root instead of the child).
        let wrong_key = sign(&secp, &master.private_key, &digest);
        let e = verify_sign_result(&secp, &digest, &path, Some(&xpub), &wrong_key).unwrap_err();
        assert!(e.contains("wallet's key"), "{e}");
        // Over another digest.
        let e = verify_sign_result(&secp, &[8u8; 32], &path, Some(&xpub), &good).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // Wrong recovery id.
        let mut bad_v = good.clone();
        bad_v.v ^= 1;
        assert!(verify_sign_result(&secp, &digest, &path, Some(&xpub), &bad_v).is_err());
        // High s.
        let mut high = good.clone();
        let n = bitcoin::secp256k1::constants::CURVE_ORDER;
        let mut s = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(good.s[i]) - borrow;
            s[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        high.s = s;
        let e = verify_sign_result(&secp, &digest, &path, Some(&xpub), &high).unwrap_err();
        assert!(e.contains("low-s"), "{e}");
        // Hardened paths cannot be checked against the xpub, the signature still is.
        let hardened = [1u32 << 31];
        assert!(verify_sign_result(&secp, &digest, &hardened, Some(&xpub), &wrong_key).is_ok());
        assert!(verify_sign_result(&secp, &[8u8; 32], &hardened, Some(&xpub), &wrong_key).is_err());
    }

    #[test]
    fn tee_error_codes() {
        assert_eq!(
            tee_code(&TeeError::ApprovalRejected {
                index: 0,
                fault: custos_wire::protocol::ApprovalFault::BadSignature,
                detail: String::new()
            }),
            "tee_approval_rejected"
        );
        assert_eq!(
            tee_code(&TeeError::RootAlreadyPinned),
            "tee_root_already_pinned"
        );
        assert_eq!(
            tee_code(&TeeError::UnknownKey("x".into())),
            "tee_unknown_key"
        );
    }
}
