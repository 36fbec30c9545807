//! The cloud server on 127.0.0.1 (an ephemeral port) in front of a [`FakeGateway`], with a
//! typed client holding a valid API token.

use std::net::SocketAddr;
use std::sync::Arc;

use custos_cloud::config::{ApiTokenConfig, ClusterConfig, RelayToken, MAX_RATE};
use custos_cloud::gateway::Gateway;
use custos_cloud::{generate_api_token, CloudConfig};
use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::{RequestView, Scope};

use crate::db::TestDb;
use crate::gateway::FakeGateway;
use crate::pki::Pki;

/// Tokens every test server has besides the test token: `reader` (tenant `default`, scope
/// read only), `other` (tenant `other`, every scope), `limited` (tenant `default`, every
/// scope, 1 request per second with a burst of 2), `requester` (tenant `default`, scopes
/// read and request: creates requests, cannot approve them).
pub const GUESTS: [&str; 4] = ["reader", "other", "limited", "requester"];

fn guest_token(name: &str, sha256: String) -> ApiTokenConfig {
    let mut t = ApiTokenConfig::new(name, sha256, &Scope::ALL);
    match name {
        "reader" => t.scopes = vec![Scope::Read],
        "requester" => t.scopes = vec![Scope::Read, Scope::Request],
        "other" => t.tenant = "other".into(),
        "limited" => (t.rate_per_sec, t.burst) = (1, 2),
        _ => {}
    }
    if name != "limited" {
        (t.rate_per_sec, t.burst) = (MAX_RATE, MAX_RATE);
    }
    t
}

pub struct TestServer {
    pub pki: Pki,
    pub gateway: Arc<FakeGateway>,
    pub client: CloudClient,
    pub token: String,
    /// Further API tokens by name (see [`GUESTS`]), for access-control tests.
    pub guests: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub config: CloudConfig,
    /// The Root CA of the server's TLS certificate, when it serves HTTPS (the last
    /// certificate of `tls_cert`, see [`tls_files`]).
    pub tls_root: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    db: Option<TestDb>,
}

impl TestServer {
    /// Clusters dc1 (two nodes) and dc2 (one node); SQLite.
    pub async fn start() -> TestServer {
        Self::start_on(TestDb::sqlite()).await
    }

    pub async fn start_on(db: TestDb) -> TestServer {
        let pki = Pki::new();
        let gateway = FakeGateway::new(&pki, &[("dc1", 2), ("dc2", 1)]);
        Self::start_with(pki, gateway, db).await
    }

    pub fn config_for(pki: &Pki, db_url: &str, token_hash: &str) -> CloudConfig {
        let mut config = CloudConfig::new("127.0.0.1:0".parse().unwrap(), pki.root_path());
        config.db_url = Some(db_url.to_string());
        // Every scope, tenant `default`, never throttled: tests of one thing at a time
        // (the OpenAPI-driven test sends thousands of requests).
        let mut tester = ApiTokenConfig::new("tester", token_hash, &Scope::ALL);
        (tester.rate_per_sec, tester.burst) = (MAX_RATE, MAX_RATE);
        config.api_tokens = vec![tester];
        config.clusters = ["dc1", "dc2", "dc3"]
            .iter()
            .map(|c| ClusterConfig {
                name: c.to_string(),
                relay: "127.0.0.1:9".parse().unwrap(),
                relay_token: RelayToken::new("relay-token"),
                genesis_id: None,
            })
            .collect();
        config
    }

    pub async fn start_with(pki: Pki, gateway: Arc<FakeGateway>, db: TestDb) -> TestServer {
        Self::start_configured(pki, gateway, db, |_| {}).await
    }

    /// [`TestServer::start_with`], with the configuration changed by `configure` first.
    pub async fn start_configured(
        pki: Pki,
        gateway: Arc<FakeGateway>,
        db: TestDb,
        configure: impl FnOnce(&mut CloudConfig),
    ) -> TestServer {
        let (token, hash) = generate_api_token();
        let mut config = Self::config_for(&pki, &db.url, &hash);
        configure(&mut config);
        let mut guests = Vec::new();
        for guest in GUESTS {
            let (token, hash) = generate_api_token();
            config.api_tokens.push(guest_token(guest, hash));
            guests.push((guest.to_string(), token.to_string()));
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gw: Arc<dyn Gateway> = gateway.clone();
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            custos_cloud::run_with(
                cfg,
                gw,
                move |addr| {
                    let _ = ready_tx.send(addr);
                },
                async move {
                    let _ = stop_rx.await;
                },
            )
            .await
            .expect("server runs");
        });
        let addr = ready_rx.await.expect("server ready");
        let tls_root = config.tls_cert.as_ref().map(|chain| {
            let chain = std::fs::read(chain).expect("TLS chain");
            let blocks = pem::parse_many(chain).expect("TLS chain PEM");
            pem::encode(blocks.last().expect("a certificate"))
        });
        let client = client_of(addr, &token, tls_root.as_deref());
        TestServer {
            pki,
            gateway,
            client,
            token: token.to_string(),
            guests,
            addr,
            config,
            tls_root,
            shutdown: Some(stop_tx),
            task: Some(task),
            db: Some(db),
        }
    }

    /// The token of guest `name` (one of [`GUESTS`]).
    pub fn guest_token(&self, name: &str) -> &str {
        self.guests
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no guest token {name:?}"))
    }

    /// A typed client holding guest `name`'s token.
    pub fn client_as(&self, name: &str) -> CloudClient {
        client_of(self.addr, self.guest_token(name), self.tls_root.as_deref())
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls_root.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// A raw HTTP client for malformed requests.
    pub fn raw(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Stops the server and starts another on the same PKI, gateway and database, with the
    /// configuration changed by `configure` (an operator's edit, then a restart).
    pub async fn restart_configured(self, configure: impl FnOnce(&mut CloudConfig)) -> TestServer {
        let mut s = self;
        if let Some(stop) = s.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = s.task.take() {
            t.await.unwrap();
        }
        let db = s.db.take().expect("database");
        let mut config = s.config;
        configure(&mut config);
        Self::start_configured(s.pki, s.gateway, db, move |c| {
            c.clusters = config.clusters;
            c.webhooks = config.webhooks;
        })
        .await
    }

    pub async fn stop(self) {
        self.stop_keeping_db().await.cleanup().await;
    }

    /// Stops the server and hands back its database (files still there).
    pub async fn stop_keeping_db(mut self) -> TestDb {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        self.db.take().expect("database")
    }
}

fn client_of(addr: SocketAddr, token: &str, tls_root: Option<&str>) -> CloudClient {
    match tls_root {
        Some(root) => CloudClient::with_root_pem(&format!("https://{addr}"), token, root),
        None => CloudClient::new(&format!("http://{addr}"), token),
    }
    .unwrap()
}

/// Writes `tls.crt` (a server certificate for `names`, DNS names or IP addresses, then the
/// throwaway Root CA that issued it) and `tls.key` into `dir`: what `tls_cert` and
/// `tls_key` name to serve HTTPS.
pub fn tls_files(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (chain, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&chain, cert.pem() + &ca.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (chain, key_file)
}

/// Hex of the approval message the server shows, after checking that it equals the
/// message recomputed from the request's fields.
pub fn message_of(view: &RequestView) -> Vec<u8> {
    let m = custos_cloud_api::approval::approval_message(view).unwrap();
    assert_eq!(hex::encode(&m), view.approval_message);
    m
}

/// The API error code of a failed call (panics on any other failure).
pub fn code(e: ClientError) -> String {
    match e {
        ClientError::Api { code, .. } => code,
        other => panic!("expected an API error, got {other}"),
    }
}

impl TestServer {
    /// POSTs `body` as JSON with the test token, bypassing the typed client (for malformed
    /// input); the status and the JSON answer (`null` if none).
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .raw()
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl TestServer {
    /// The device key fingerprint of `node` of `cluster`: what a wallet creation names as
    /// its executor.
    pub fn executor(&self, cluster: &str, node: &str) -> [u8; 32] {
        let chain = self.gateway.node(cluster, node).chain();
        crate::governance::member(&self.pki, &chain).key_fingerprint
    }

    /// The approver group of the first `n` test admins ([`crate::ADMINS`]), hex, sorted.
    pub fn group_of(&self, n: usize) -> Vec<String> {
        crate::governance::admin_keys(&self.pki, &crate::ADMINS[..n])
            .iter()
            .map(hex::encode)
            .collect()
    }

    /// A wallet creation on `cluster` with `quorum` of the group of the first `group`
    /// admins, executed by `node`, with its request id and expiry fixed now so that its
    /// approval message is known before the request exists (to pre-sign approvals): the
    /// body, without approvals, and that message.
    pub fn presigned_wallet(
        &self,
        cluster: &str,
        quorum: u8,
        group: usize,
        node: &str,
    ) -> (custos_cloud_api::CreateWalletBody, Vec<u8>) {
        let meta = custos_wire::protocol::RequestMeta {
            request_id: rand::random(),
            expires_at: crate::now() + 600,
        };
        let executor = self.executor(cluster, node);
        let policy = custos_cloud_api::approval::new_wallet_policy(
            crate::governance::admin_keys(&self.pki, &crate::ADMINS[..group]),
            quorum,
        );
        let message = custos_wire::approval::Action::CreateGroupWallet {
            policy: &policy,
            executor: &executor,
        }
        .message(cluster, &meta);
        let body = custos_cloud_api::CreateWalletBody {
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            executor: Some(hex::encode(executor)),
            request_id: Some(hex::encode(meta.request_id)),
            expires_at: Some(meta.expires_at),
            ..self.wallet_body(cluster, quorum, group)
        };
        (body, message)
    }

    /// Creates the wallet `body` describes, approved one by one by the first `approvers`
    /// test admins (key files): its root id, once completed.
    pub async fn created_wallet(
        &self,
        body: &custos_cloud_api::CreateWalletBody,
        approvers: usize,
    ) -> String {
        let view = self.client.create_wallet(body).await.unwrap();
        let message = message_of(&view);
        let mut done = view;
        for i in 0..approvers {
            done = self
                .client
                .approve(&done.id, &self.pki.approve(i, &message))
                .await
                .unwrap();
        }
        assert_eq!(
            done.status,
            custos_cloud_api::RequestStatus::Completed,
            "{done:?}"
        );
        done.root_id.expect("a created wallet's root id")
    }

    /// A wallet creation on `cluster` with `quorum` of the group of the first `group`
    /// admins, executed where the server chooses, without approvals.
    pub fn wallet_body(
        &self,
        cluster: &str,
        quorum: u8,
        group: usize,
    ) -> custos_cloud_api::CreateWalletBody {
        custos_cloud_api::CreateWalletBody {
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            cluster: cluster.into(),
            quorum,
            group: self.group_of(group),
            executor: None,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        }
    }
}
