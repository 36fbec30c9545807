//! A typed client of the REST API (used by `custos approve`, the demo, tests and
//! benchmarks). It shares the wire types of this crate with the server.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::*;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an API error.
    #[error("{status}: {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Message.
        message: String,
        /// Request concerned, if the server named one.
        request_id: Option<String>,
    },
    /// The server could not be reached, or the connection failed.
    #[error("cannot reach the cloud server: {0}")]
    Transport(String),
    /// The answer was not what the API describes.
    #[error("unexpected answer from the cloud server: {0}")]
    Decode(String),
    /// The client could not be built (bad URL or root certificate).
    #[error("client setup: {0}")]
    Setup(String),
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The API error code, typed, if the server answered with one the API defines.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(ErrorCode::parse)
    }
}

/// A client of one API token, bound to one server or to the replicas of one service (an
/// address list: calls go round the list, and one that could not connect, or that a replica
/// refused as `replica_unavailable`, goes to the next address; a call whose connection broke
/// after it was sent is not sent again, since the server may have acted on it: read its
/// request back by id).
#[derive(Clone)]
pub struct CloudClient {
    bases: Vec<String>,
    turn: Arc<AtomicUsize>,
    token: Zeroizing<String>,
    http: reqwest::Client,
}

impl fmt::Debug for CloudClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudClient")
            .field("bases", &self.bases)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Request ids and root ids go into URL paths: only hex (or a cluster name) is sent, so
/// nothing needs escaping; anything else is refused before it leaves.
fn segment(s: &str) -> Result<&str, ClientError> {
    if !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(s)
    } else {
        Err(ClientError::Setup(format!(
            "{s:?} cannot be a path segment"
        )))
    }
}

impl CloudClient {
    /// A client of `base_url` (`http://host:port` or `https://...`) using the system's
    /// nothing: HTTPS needs [`CloudClient::with_root_pem`].
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        Self::build(&[base_url], token, None)
    }

    /// A client that trusts exactly the given root certificate (PEM) for HTTPS.
    pub fn with_root_pem(base_url: &str, token: &str, root_pem: &str) -> Result<Self, ClientError> {
        Self::build(&[base_url], token, Some(root_pem))
    }

    /// A client of the replicas of one service at `base_urls` (trusting `root_pem` for
    /// HTTPS, when given).
    pub fn with_addresses(
        base_urls: &[&str],
        token: &str,
        root_pem: Option<&str>,
    ) -> Result<Self, ClientError> {
        if base_urls.is_empty() {
            return Err(ClientError::Setup("no server address".into()));
        }
        Self::build(base_urls, token, root_pem)
    }

    fn build(base_urls: &[&str], token: &str, root_pem: Option<&str>) -> Result<Self, ClientError> {
        let mut bases = Vec::with_capacity(base_urls.len());
        for base_url in base_urls {
            let base = base_url.trim_end_matches('/').to_string();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(ClientError::Setup(format!(
                    "{base_url:?} is not an http(s) URL"
                )));
            }
            bases.push(base);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            // Signing waits for the cluster; a generous bound still ends a hung call.
            .timeout(Duration::from_secs(300));
        if let Some(pem) = root_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| ClientError::Setup(format!("root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(CloudClient {
            bases,
            turn: Arc::new(AtomicUsize::new(0)),
            token: Zeroizing::new(token.to_string()),
            http,
        })
    }

    /// The (first) server's base URL.
    pub fn base_url(&self) -> &str {
        &self.bases[0]
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let n = self.bases.len();
        let first = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut tried = 0;
        let (status, bytes) = loop {
            let base = &self.bases[(first + tried) % n];
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(self.token.as_str());
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            tried += 1;
            let resp = match req.send().await {
                Ok(resp) => resp,
                // Never reached that server: any other may take the call.
                Err(e) if e.is_connect() && tried < n => continue,
                Err(e) => return Err(ClientError::Transport(e.to_string())),
            };
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            // A replica that lost its heartbeat did nothing: another may take the call.
            if status == StatusCode::SERVICE_UNAVAILABLE && tried < n {
                let refused = serde_json::from_slice::<ApiErrorBody>(&bytes)
                    .is_ok_and(|e| e.error.code == ErrorCode::ReplicaUnavailable.as_str());
                if refused {
                    continue;
                }
            }
            break (status, bytes);
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        Err(match serde_json::from_slice::<ApiErrorBody>(&bytes) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
                request_id: e.error.request_id,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: status_code_name(status),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                request_id: None,
            },
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, query, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    /// `POST /v1/wallets`.
    pub async fn create_wallet(&self, body: &CreateWalletBody) -> Result<RequestView, ClientError> {
        self.post("/v1/wallets", body).await
    }

    /// `POST /v1/wallets/import`.
    pub async fn import_wallet(&self, body: &ImportWalletBody) -> Result<RequestView, ClientError> {
        self.post("/v1/wallets/import", body).await
    }

    /// `GET /v1/wallets`.
    pub async fn wallets(&self) -> Result<WalletList, ClientError> {
        self.get("/v1/wallets", &[]).await
    }

    /// `GET /v1/wallets/{root_id}`.
    pub async fn wallet(&self, root_id: &str) -> Result<WalletView, ClientError> {
        self.get(&format!("/v1/wallets/{}", segment(root_id)?), &[])
            .await
    }

    /// `GET /v1/wallets/{root_id}/policy`: the approver group in force.
    pub async fn wallet_policy(&self, root_id: &str) -> Result<KeyPolicyView, ClientError> {
        self.get(&format!("/v1/wallets/{}/policy", segment(root_id)?), &[])
            .await
    }

    /// `PUT /v1/wallets/{root_id}/policy`: proposes a new approver group.
    pub async fn set_wallet_policy(
        &self,
        root_id: &str,
        body: &KeyPolicyBody,
    ) -> Result<RequestView, ClientError> {
        let path = format!("/v1/wallets/{}/policy", segment(root_id)?);
        self.call(Method::PUT, &path, &[], Some(body)).await
    }

    /// `GET /v1/threshold/keys/{key_id}/policy`: the threshold key's approver group in force.
    pub async fn threshold_key_policy(&self, key_id: &str) -> Result<KeyPolicyView, ClientError> {
        self.get(
            &format!("/v1/threshold/keys/{}/policy", segment(key_id)?),
            &[],
        )
        .await
    }

    /// `PUT /v1/threshold/keys/{key_id}/policy`: proposes a new approver group for every
    /// cluster of the threshold key.
    pub async fn set_threshold_key_policy(
        &self,
        key_id: &str,
        body: &KeyPolicyBody,
    ) -> Result<RequestView, ClientError> {
        let path = format!("/v1/threshold/keys/{}/policy", segment(key_id)?);
        self.call(Method::PUT, &path, &[], Some(body)).await
    }

    /// `GET /v1/wallets/{root_id}/derive`.
    pub async fn derive(
        &self,
        root_id: &str,
        query: &DeriveQuery,
    ) -> Result<DeriveView, ClientError> {
        let mut q = Vec::new();
        if let Some(p) = &query.path {
            q.push(("path", p.clone()));
        }
        if let Some(s) = query.start {
            q.push(("start", s.to_string()));
        }
        if let Some(c) = query.count {
            q.push(("count", c.to_string()));
        }
        self.get(&format!("/v1/wallets/{}/derive", segment(root_id)?), &q)
            .await
    }

    /// `POST /v1/sign-requests`.
    pub async fn sign(&self, body: &SignRequestBody) -> Result<RequestView, ClientError> {
        self.post("/v1/sign-requests", body).await
    }

    /// `GET /v1/wallets/{root_id}/xpub?path=...`.
    pub async fn wallet_xpub(&self, root_id: &str, path: &str) -> Result<XpubView, ClientError> {
        self.get(
            &format!("/v1/wallets/{root_id}/xpub"),
            &[("path", path.to_string())],
        )
        .await
    }

    /// `POST /v1/eth-requests`.
    pub async fn sign_ethereum(&self, body: &SignEthereumBody) -> Result<RequestView, ClientError> {
        self.post("/v1/eth-requests", body).await
    }

    /// `POST /v1/psbt-requests`.
    pub async fn sign_psbt(&self, body: &SignPsbtBody) -> Result<RequestView, ClientError> {
        self.post("/v1/psbt-requests", body).await
    }

    /// `POST /v1/threshold/keys/import`.
    pub async fn import_threshold_key(
        &self,
        body: &ImportThresholdKeyBody,
    ) -> Result<RequestView, ClientError> {
        self.post("/v1/threshold/keys/import", body).await
    }

    /// `POST /v1/threshold/keys`.
    pub async fn create_threshold_key(
        &self,
        body: &CreateThresholdKeyBody,
    ) -> Result<RequestView, ClientError> {
        self.post("/v1/threshold/keys", body).await
    }

    /// `GET /v1/threshold/keys`.
    pub async fn threshold_keys(&self) -> Result<ThresholdKeyList, ClientError> {
        self.get("/v1/threshold/keys", &[]).await
    }

    /// `GET /v1/threshold/keys/{key_id}`.
    pub async fn threshold_key(&self, key_id: &str) -> Result<ThresholdKeyView, ClientError> {
        self.get(&format!("/v1/threshold/keys/{}", segment(key_id)?), &[])
            .await
    }

    /// `POST /v1/threshold/keys/{key_id}/audit`.
    pub async fn threshold_audit(&self, key_id: &str) -> Result<ThresholdAuditReport, ClientError> {
        self.post(
            &format!("/v1/threshold/keys/{}/audit", segment(key_id)?),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/threshold/keys/{key_id}/audit`.
    pub async fn latest_threshold_audit(
        &self,
        key_id: &str,
    ) -> Result<ThresholdAuditReport, ClientError> {
        self.get(
            &format!("/v1/threshold/keys/{}/audit", segment(key_id)?),
            &[],
        )
        .await
    }

    /// `POST /v1/threshold/keys/{key_id}/presignatures`.
    pub async fn make_presignatures(
        &self,
        key_id: &str,
        body: &MakePresignaturesBody,
    ) -> Result<PresignaturePool, ClientError> {
        self.post(
            &format!("/v1/threshold/keys/{}/presignatures", segment(key_id)?),
            body,
        )
        .await
    }

    /// `GET /v1/threshold/keys/{key_id}/presignatures`.
    pub async fn presignatures(&self, key_id: &str) -> Result<PresignaturePool, ClientError> {
        self.get(
            &format!("/v1/threshold/keys/{}/presignatures", segment(key_id)?),
            &[],
        )
        .await
    }

    /// `POST /v1/threshold/sign`.
    pub async fn threshold_sign(
        &self,
        body: &ThresholdSignBody,
    ) -> Result<RequestView, ClientError> {
        self.post("/v1/threshold/sign", body).await
    }

    /// `GET /v1/requests/{id}`.
    pub async fn request(&self, id: &str) -> Result<RequestView, ClientError> {
        self.get(&format!("/v1/requests/{}", segment(id)?), &[])
            .await
    }

    /// `GET /v1/requests`.
    pub async fn requests(&self, query: &RequestQuery) -> Result<RequestList, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = query.status {
            q.push(("status", s.as_str().to_string()));
        }
        if let Some(k) = query.kind {
            q.push(("kind", k.as_str().to_string()));
        }
        if let Some(l) = query.limit {
            q.push(("limit", l.to_string()));
        }
        self.get("/v1/requests", &q).await
    }

    /// `POST /v1/requests/{id}/approvals`.
    pub async fn approve(
        &self,
        id: &str,
        approval: &ApprovalBody,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/v1/requests/{}/approvals", segment(id)?),
            approval,
        )
        .await
    }

    /// `POST /v1/requests/{id}/rejections`: `rejection` signs the request's rejection
    /// message (`CUSTOS-REJECTION-V1\0` + its approval message).
    pub async fn reject(
        &self,
        id: &str,
        rejection: &ApprovalBody,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/v1/requests/{}/rejections", segment(id)?),
            rejection,
        )
        .await
    }

    /// `POST /v1/requests/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/v1/requests/{}/retry", segment(id)?),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/clusters`.
    pub async fn clusters(&self) -> Result<ClusterList, ClientError> {
        self.get("/v1/clusters", &[]).await
    }

    /// `GET /v1/clusters/{name}`.
    pub async fn cluster(&self, name: &str) -> Result<ClusterStatusView, ClientError> {
        self.get(&format!("/v1/clusters/{}", segment(name)?), &[])
            .await
    }

    /// `POST /v1/clusters/{name}/audits`.
    pub async fn run_audit(&self, name: &str) -> Result<AuditReportView, ClientError> {
        self.post(
            &format!("/v1/clusters/{}/audits", segment(name)?),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /v1/clusters/{name}/audits/latest`.
    pub async fn latest_audit(&self, name: &str) -> Result<AuditReportView, ClientError> {
        self.get(
            &format!("/v1/clusters/{}/audits/latest", segment(name)?),
            &[],
        )
        .await
    }

    /// `POST /v1/clusters/{name}/genesis`.
    pub async fn propose_genesis(
        &self,
        cluster: &str,
        body: &GenesisBody,
    ) -> Result<RequestView, ClientError> {
        self.post(&format!("/v1/clusters/{}/genesis", segment(cluster)?), body)
            .await
    }

    /// `POST /v1/clusters/{name}/members`.
    pub async fn admit_member(
        &self,
        cluster: &str,
        body: &AdmitBody,
    ) -> Result<RequestView, ClientError> {
        self.post(&format!("/v1/clusters/{}/members", segment(cluster)?), body)
            .await
    }

    /// `POST /v1/clusters/{name}/members/tickets`.
    pub async fn admission_ticket(
        &self,
        cluster: &str,
        body: &TicketBody,
    ) -> Result<AdmissionTicketView, ClientError> {
        self.post(
            &format!("/v1/clusters/{}/members/tickets", segment(cluster)?),
            body,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/members/{node}/remove`.
    pub async fn remove_member(
        &self,
        cluster: &str,
        node: &str,
        body: &RemoveMemberBody,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!(
                "/v1/clusters/{}/members/{}/remove",
                segment(cluster)?,
                segment(node)?
            ),
            body,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/revocations`.
    pub async fn revoke(
        &self,
        cluster: &str,
        body: &RevokeBody,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/v1/clusters/{}/revocations", segment(cluster)?),
            body,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/governors`.
    pub async fn set_governors(
        &self,
        cluster: &str,
        body: &GovernorsBody,
    ) -> Result<RequestView, ClientError> {
        self.post(
            &format!("/v1/clusters/{}/governors", segment(cluster)?),
            body,
        )
        .await
    }

    /// `GET /v1/clusters/{name}/members`.
    pub async fn members(&self, cluster: &str) -> Result<MembersView, ClientError> {
        self.get(&format!("/v1/clusters/{}/members", segment(cluster)?), &[])
            .await
    }

    /// `GET /v1/clusters/{name}/governance`.
    pub async fn governance_log(
        &self,
        cluster: &str,
        since: Option<u64>,
    ) -> Result<GovernanceLogView, ClientError> {
        let q: Vec<(&str, String)> = since
            .map(|s| ("since", s.to_string()))
            .into_iter()
            .collect();
        self.get(
            &format!("/v1/clusters/{}/governance", segment(cluster)?),
            &q,
        )
        .await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/openapi.json", &[]).await
    }
}

fn status_code_name(s: StatusCode) -> String {
    s.canonical_reason()
        .unwrap_or("http_error")
        .to_ascii_lowercase()
        .replace(' ', "_")
}
