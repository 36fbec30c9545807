//! A whole Custos deployment on loopback as real processes (patent FIG. 1): the PKI, several
//! clusters (bridge, node servers, TEE processes), one external relay per cluster linked to
//! its bridge by a real link transport, and the cloud server with its REST API. The demo,
//! the end-to-end tests and the end-to-end benchmark use it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use custos_cloud::config::{ApiTokenConfig, ClusterConfig, RelayToken, MAX_RATE};
use custos_cloud::CloudConfig;
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::RequestView;
use custos_cloud_api::Scope;
use custos_pki::{AdminFolder, AdminSigner, DealerFolder, PkiDir};

use crate::cluster::{Cluster, ClusterError, ClusterOptions, LinkTransport};
use crate::tee_plan::TeePlan;
use crate::tee_process::spawn_service;

/// What to deploy.
#[derive(Clone, Debug)]
pub struct DeploymentOptions {
    /// Clusters: name and link transport between its external relay and bridge.
    pub clusters: Vec<(String, LinkTransport)>,
    /// Vault nodes per cluster.
    pub nodes: usize,
    /// Admins to certify. Each makes its key in its own folder (`admins/<name>/`, outside
    /// the PKI folder) and gets its certificate from the PKI through a CSR.
    pub admins: Vec<String>,
    /// Seconds between periodic sync rounds of each node.
    pub sync_interval_secs: u64,
    /// Seconds between scheduled audits of each bridge (0: on demand only).
    pub audit_interval_secs: u64,
    /// Cloud server database URL (default: SQLite in the deployment directory).
    pub cloud_db_url: Option<String>,
    /// Receivers the cloud server notifies of request events.
    pub webhooks: Vec<custos_cloud::config::WebhookConfig>,
}

/// A running deployment; every process is killed when it is dropped.
pub struct Deployment {
    /// Working directory.
    pub dir: PathBuf,
    /// The operating company's CA directory.
    pub pki: PkiDir,
    /// The clusters.
    pub clusters: Vec<Cluster>,
    /// Base URL of the cloud server's REST API.
    pub api_url: String,
    /// API token of the deployment's client (generated; never written in clear to disk).
    pub api_token: String,
    /// The cloud server's metrics (`GET /metrics`, Prometheus), on a loopback port of
    /// their own.
    pub metrics_url: String,
    /// The cloud server processes on the one database: the first is the one `api_url`
    /// names; [`Deployment::add_cloud_replica`] adds more.
    clouds: Vec<CloudProcess>,
    exe: PathBuf,
}

/// One cloud server process of a deployment. Its API and metrics ports are fixed when it
/// is configured, so that it serves at the same address after a restart.
struct CloudProcess {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    api_url: String,
    metrics_url: String,
}

/// Admin `name`'s own folder in deployment `dir`: `admins/<name>/`, beside (never inside) the
/// PKI folder.
fn admin_folder(dir: &Path, name: &str) -> Result<AdminFolder, ClusterError> {
    custos_pki::check_name(name)?;
    Ok(AdminFolder::new(dir.join("admins").join(name)))
}

fn io(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Io(e.to_string())
}

impl Deployment {
    /// Creates the PKI under `dir/pki`, the clusters with their relays, and the cloud server;
    /// every TEE on the software platform.
    pub fn start(exe: &Path, dir: &Path, opts: &DeploymentOptions) -> Result<Self, ClusterError> {
        Self::start_on(exe, dir, opts, &TeePlan::default())
    }

    /// [`Deployment::start`] with each node's TEE where `plan` says (nodes by name, e.g.
    /// `dc1-node1`: a TPM, or a software TPM of its own).
    pub fn start_on(
        exe: &Path,
        dir: &Path,
        opts: &DeploymentOptions,
        plan: &TeePlan,
    ) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        // Every configuration written below names absolute paths, whatever the caller's
        // working directory.
        let dir = &std::fs::canonicalize(dir).map_err(io)?;
        let pki = PkiDir::new(dir.join("pki"));
        if !pki.path().join("root-ca.crt").exists() {
            pki.init()?;
        }
        for admin in &opts.admins {
            let folder = admin_folder(dir, admin)?;
            if !folder.chain().exists() {
                folder.enroll(admin, &pki)?;
            }
        }
        let mut clusters = Vec::new();
        for (name, transport) in &opts.clusters {
            clusters.push(Cluster::start_on(
                exe,
                &pki,
                &dir.join(name),
                &ClusterOptions {
                    name: name.clone(),
                    nodes: opts.nodes,
                    db_url: None,
                    sync_interval_secs: opts.sync_interval_secs,
                    audit_interval_secs: opts.audit_interval_secs,
                    link: Some(*transport),
                },
                plan,
            )?);
        }
        let (token, token_sha256) = custos_cloud::generate_api_token();
        let mut config =
            CloudConfig::new(crate::cluster::free_port()?, pki.path().join("root-ca.crt"));
        config.db_url =
            Some(opts.cloud_db_url.clone().unwrap_or_else(|| {
                format!("sqlite://{}?mode=rwc", dir.join("cloud.db").display())
            }));
        // The local deployment's one token does everything the demo and the benchmarks do
        // (every scope) and is not throttled in practice (the benchmarks send thousands of
        // requests per second).
        let mut operator = ApiTokenConfig::new("operator", token_sha256, &Scope::ALL);
        (operator.rate_per_sec, operator.burst) = (MAX_RATE, MAX_RATE);
        config.api_tokens.push(operator);
        for c in &clusters {
            config.clusters.push(cloud_entry(c)?);
        }
        config.metrics_listen = Some(crate::cluster::free_port()?);
        config.webhooks = opts.webhooks.clone();
        let primary = CloudProcess::configure(dir, "cloud", &config)?;
        let mut deployment = Deployment {
            dir: dir.to_path_buf(),
            pki,
            clusters,
            api_url: primary.api_url.clone(),
            api_token: token.to_string(),
            metrics_url: primary.metrics_url.clone(),
            clouds: vec![primary],
            exe: exe.to_path_buf(),
        };
        deployment.start_cloud()?;
        Ok(deployment)
    }

    /// Configures one more cloud server on the deployment's database (the first one's
    /// configuration on ports of its own) and starts it; returns its index for
    /// [`Deployment::kill_cloud_replica`] and the like (the first server is index 0).
    pub fn add_cloud_replica(&mut self) -> Result<usize, ClusterError> {
        let i = self.clouds.len();
        let mut config = self.clouds[0].read_config()?;
        config.listen = crate::cluster::free_port()?;
        config.metrics_listen = Some(crate::cluster::free_port()?);
        let replica = CloudProcess::configure(&self.dir, &format!("cloud-{i}"), &config)?;
        self.clouds.push(replica);
        self.start_cloud_replica(i)?;
        Ok(i)
    }

    /// Starts cloud server `i` again (after [`Deployment::kill_cloud_replica`]), at the
    /// same address.
    pub fn start_cloud_replica(&mut self, i: usize) -> Result<(), ClusterError> {
        let exe = self.exe.clone();
        self.cloud_process(i)?.start(&exe)
    }

    /// SIGKILLs cloud server `i`.
    pub fn kill_cloud_replica(&mut self, i: usize) {
        if let Some(c) = self.clouds.get_mut(i) {
            c.kill();
        }
    }

    /// The REST API base URL of every cloud server, first one first.
    pub fn cloud_urls(&self) -> Vec<String> {
        self.clouds.iter().map(|c| c.api_url.clone()).collect()
    }

    /// The metrics URL of cloud server `i`.
    pub fn cloud_metrics_url(&self, i: usize) -> Option<&str> {
        self.clouds.get(i).map(|c| c.metrics_url.as_str())
    }

    /// A REST client of every cloud server (round robin, the next one when one is down).
    pub fn replicas_client(&self) -> Result<CloudClient, ClusterError> {
        let urls = self.cloud_urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        CloudClient::with_addresses(&urls, &self.api_token, None).map_err(io)
    }

    fn cloud_process(&mut self, i: usize) -> Result<&mut CloudProcess, ClusterError> {
        self.clouds
            .get_mut(i)
            .ok_or_else(|| io(format!("no cloud server {i}")))
    }

    /// Brings up one more cluster of `nodes` nodes linked by `transport`, and restarts the
    /// cloud server with it (the API URL changes: make a new client).
    pub fn add_cluster(
        &mut self,
        name: &str,
        transport: LinkTransport,
        nodes: usize,
        plan: &TeePlan,
    ) -> Result<(), ClusterError> {
        let cluster = Cluster::start_on(
            &self.exe,
            &self.pki,
            &self.dir.join(name),
            &ClusterOptions {
                name: name.to_string(),
                nodes,
                db_url: None,
                sync_interval_secs: 2,
                audit_interval_secs: 0,
                link: Some(transport),
            },
            plan,
        )?;
        let entry = cloud_entry(&cluster)?;
        self.clusters.push(cluster);
        self.reconfigure_cloud(|config| config.clusters.push(entry.clone()))
    }

    /// Starts the (first) cloud server process (after [`Deployment::kill_cloud`]).
    pub fn start_cloud(&mut self) -> Result<(), ClusterError> {
        self.start_cloud_replica(0)
    }

    /// Changes every cloud server's configuration with `change` (each keeps its own ports)
    /// and restarts them the way a service manager does (SIGTERM: each hands its background
    /// jobs over at once).
    pub fn reconfigure_cloud(
        &mut self,
        change: impl Fn(&mut CloudConfig),
    ) -> Result<(), ClusterError> {
        for i in 0..self.clouds.len() {
            let c = &mut self.clouds[i];
            let mut config = c.read_config()?;
            change(&mut config);
            c.write_config(&config)?;
            c.stop()?;
            self.start_cloud_replica(i)?;
        }
        Ok(())
    }

    /// SIGKILLs the (first) cloud server.
    pub fn kill_cloud(&mut self) {
        self.kill_cloud_replica(0);
    }

    /// A REST client with the deployment's API token.
    pub fn client(&self) -> Result<CloudClient, ClusterError> {
        CloudClient::new(&self.api_url, &self.api_token).map_err(io)
    }

    /// An admin's signing key and certificate chain, from the admin's own folder.
    pub fn admin(&self, name: &str) -> Result<AdminSigner, ClusterError> {
        Ok(admin_folder(&self.dir, name)?.signer()?)
    }

    /// The folder of admin `name` (key file, CSR, certificate chain), outside the PKI folder.
    pub fn admin_folder(&self, name: &str) -> Result<AdminFolder, ClusterError> {
        admin_folder(&self.dir, name)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The certificate chain of node `i` of `cluster`, read at the node's own TEE socket
    /// (as an operator in that data center would export it for the dealer).
    pub fn node_chain(
        &self,
        cluster: &str,
        i: usize,
    ) -> Result<custos_wire::protocol::CertChain, ClusterError> {
        let c = self
            .cluster(cluster)
            .ok_or_else(|| io(format!("no cluster {cluster}")))?;
        let node = c
            .nodes
            .get(i)
            .ok_or_else(|| io(format!("cluster {cluster} has no node {i}")))?;
        let mut client = node.tee.client().map_err(io)?;
        match client
            .call(&custos_wire::protocol::Request::DeviceChain)
            .map_err(io)?
        {
            custos_wire::protocol::Response::DeviceChain(chain) => Ok(chain),
            _ => Err(io("DeviceChain answered with another kind")),
        }
    }

    /// Dealer `name`'s signer: its key made in its own folder and its CSR signed by the PKI
    /// at first use.
    pub fn dealer(&self, name: &str) -> Result<custos_pki::DealerSigner, ClusterError> {
        let folder = self.dealer_folder(name)?;
        Ok(if folder.chain().exists() {
            folder.signer()?
        } else {
            folder.enroll(name, &self.pki)?
        })
    }

    /// The deployment's Root CA, as a verifier.
    pub fn trust_root(&self) -> Result<custos_pki::TrustRoot, ClusterError> {
        Ok(custos_pki::TrustRoot::from_der(&custos_pki::pem_to_der(
            &self.pki.root_pem()?,
            "Root CA certificate",
        )?)?)
    }

    /// The folder of dealer `name` (key file, CSR, certificate chain): `dealers/<name>/`,
    /// beside (never inside) the PKI folder.
    pub fn dealer_folder(&self, name: &str) -> Result<DealerFolder, ClusterError> {
        custos_pki::check_name(name)?;
        Ok(DealerFolder::new(self.dir.join("dealers").join(name)))
    }

    /// Runs the dealer program for a `threshold`-of-n key over `clusters` (share i to the
    /// first node of cluster i), as dealer `dealer` (its key made in its own folder and its
    /// CSR signed by the PKI if new), and returns the
    /// sealed bundles. `primes` as for `custos dealer deal --primes`.
    pub fn deal_threshold(
        &self,
        dealer: &str,
        threshold: u16,
        clusters: &[&str],
        quorum: u8,
        hd: bool,
        primes: crate::dealer::PrimeSource,
    ) -> Result<crate::dealer::Dealt, ClusterError> {
        let signer = self.dealer(dealer)?;
        let root = self.trust_root()?;
        let recipients = clusters
            .iter()
            .map(|c| Ok((c.to_string(), self.node_chain(c, 0)?)))
            .collect::<Result<Vec<_>, ClusterError>>()?;
        crate::dealer::deal_bundles(
            &signer,
            &root,
            &crate::dealer::DealOptions {
                threshold,
                quorum,
                hd,
                recipients,
                primes,
            },
            false,
        )
        .map_err(io)
    }

    /// The cluster named `name`, mutable (to kill and restart its processes).
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut Cluster> {
        self.clusters.iter_mut().find(|c| c.name == name)
    }

    /// Gives node `i` of `cluster` one pregenerated Paillier primes set for distributed key
    /// generation: seals `set` to the node's certified device key and signs it as dealer
    /// `dealer`, as `custos dealer primes --for` does, writes it to `<cluster dir>/<node>.primes.json` and restarts the node's
    /// TEE process naming it in `CUSTOS_TEE_PRIMES_FILE`; the TEE imports the set and empties
    /// the file before it serves. Returns the file once the TEE answers again. (Without
    /// primes a TEE generates real safe primes itself, which takes minutes.)
    pub fn provide_tee_primes(
        &mut self,
        dealer: &str,
        cluster: &str,
        i: usize,
        set: &custos_threshold::Primes,
    ) -> Result<PathBuf, ClusterError> {
        let (_, sealed) = crate::dealer::seal_primes_for(
            &self.trust_root()?,
            &self.dealer(dealer)?,
            cluster,
            &self.node_chain(cluster, i)?,
            set,
        )
        .map_err(io)?;
        let c = self
            .cluster_mut(cluster)
            .ok_or_else(|| io(format!("no cluster {cluster}")))?;
        let dir = c.dir.clone();
        let node = c
            .nodes
            .get_mut(i)
            .ok_or_else(|| io(format!("cluster {cluster} has no node {i}")))?;
        let file = dir.join(format!("{}.primes.json", node.name));
        custos_tee_host::sealed::write_atomic(&file, &sealed, 0o600).map_err(io)?;
        node.tee.restart_with_primes(&file)?;
        let mut client = node.tee.client().map_err(io)?;
        client
            .call(&custos_wire::protocol::Request::Status)
            .map_err(io)?;
        Ok(file)
    }
}

/// Waits (bounded) until the cloud server sees every node of `clusters` healthy (after a
/// restart, the bridges' health checks catch up within a second).
pub async fn wait_healthy(
    client: &CloudClient,
    clusters: &[&str],
    timeout: std::time::Duration,
) -> Result<(), ClusterError> {
    let deadline = std::time::Instant::now() + timeout;
    for c in clusters {
        loop {
            match client.cluster(c).await {
                Ok(s) if !s.nodes.is_empty() && s.nodes.iter().all(|n| n.healthy) => break,
                other if std::time::Instant::now() > deadline => {
                    return Err(io(format!("cluster {c} not healthy: {other:?}")))
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}

/// Asks for a `threshold`-of-n key over `clusters` (share i to cluster i) by distributed key
/// generation through the REST API, and has `admins` approve it the way `custos approve`
/// does; returns the request's final state (completed with the key id and xpub, when the
/// TEEs made the key).
pub async fn create_threshold_key(
    client: &CloudClient,
    clusters: &[&str],
    threshold: u16,
    quorum: u8,
    hd: bool,
    admins: &[&AdminSigner],
) -> Result<RequestView, ClusterError> {
    let mut view = client
        .create_threshold_key(&custos_cloud_api::CreateThresholdKeyBody {
            // The approvers are the key's group: its approvals then name the node that
            // makes each share (required once a cluster is governed).
            group: Some(
                admins
                    .iter()
                    .map(|a| hex::encode(a.key_fingerprint()))
                    .collect(),
            ),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            threshold,
            quorum,
            hd,
            // Asked for explicitly, as its approvers read: the key signs raw digests (what
            // the demo and the tests sign with it; its group may add rules later).
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .map_err(io)?;
    for a in admins {
        view = approve(client, a, &view.id).await?;
    }
    Ok(view)
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in &mut self.clouds {
            c.kill();
        }
    }
}

impl CloudProcess {
    /// Writes `config` as `<dir>/<name>.toml` (owner-only: it holds the relay tokens).
    fn configure(dir: &Path, name: &str, config: &CloudConfig) -> Result<Self, ClusterError> {
        let metrics = config
            .metrics_listen
            .ok_or_else(|| io("a deployment's cloud server serves metrics"))?;
        let c = CloudProcess {
            config: dir.join(format!("{name}.toml")),
            log: dir.join("logs").join(format!("{name}.log")),
            child: None,
            api_url: format!("http://{}", config.listen),
            metrics_url: format!("http://{metrics}/metrics"),
        };
        c.write_config(config)?;
        Ok(c)
    }

    fn read_config(&self) -> Result<CloudConfig, ClusterError> {
        let text = std::fs::read_to_string(&self.config).map_err(io)?;
        toml::from_str(&text).map_err(io)
    }

    fn write_config(&self, config: &CloudConfig) -> Result<(), ClusterError> {
        custos_tee_host::sealed::write_atomic(
            &self.config,
            toml::to_string_pretty(config).map_err(io)?.as_bytes(),
            0o600,
        )
        .map_err(io)
    }

    fn start(&mut self, exe: &Path) -> Result<(), ClusterError> {
        let mut cmd = Command::new(exe);
        cmd.args(["cloud", "run", "--config"]).arg(&self.config);
        let (child, line) = spawn_service(cmd, "custos cloud listening on", &self.log)?;
        let url = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http"))
            .ok_or_else(|| io(format!("unexpected ready line {line:?}")))?;
        if url != self.api_url {
            return Err(io(format!(
                "cloud server listens on {url}, configured for {}",
                self.api_url
            )));
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit awaited ([`crate::cluster::terminate`]).
    fn stop(&mut self) -> Result<(), ClusterError> {
        match self.child.take() {
            Some(child) => crate::cluster::terminate(child, "the cloud server"),
            None => Ok(()),
        }
    }
}

/// Imports every dealt bundle through the REST API and has `admins` approve each import;
/// returns the final state of each import request.
pub async fn import_threshold(
    client: &CloudClient,
    dealt: &crate::dealer::Dealt,
    admins: &[&AdminSigner],
) -> Result<Vec<RequestView>, ClusterError> {
    let mut out = Vec::new();
    for bundle in &dealt.bundles {
        let mut view = client
            .import_threshold_key(&custos_cloud_api::ImportThresholdKeyBody {
                bundle_hex: hex::encode(postcard::to_allocvec(bundle).map_err(io)?),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await
            .map_err(io)?;
        for a in admins {
            view = approve(client, a, &view.id).await?;
        }
        out.push(view);
    }
    Ok(out)
}

/// Approves request `id` as `signer`, the way `custos approve` does: fetches the request,
/// recomputes the approval message from its fields (never trusting the server's bytes),
/// refuses if the server's differs, signs and posts the approval. Returns the new state.
pub async fn approve(
    client: &CloudClient,
    signer: &AdminSigner,
    id: &str,
) -> Result<RequestView, ClusterError> {
    let view = client.request(id).await.map_err(io)?;
    let message = custos_cloud_api::review::checked_message(&view, id).map_err(io)?;
    client
        .approve(
            id,
            &custos_cloud_api::approval::sign_approval(signer, &message)?,
        )
        .await
        .map_err(io)
}

/// The cloud server's entry for `c`: its relay and the relay's token.
fn cloud_entry(c: &Cluster) -> Result<ClusterConfig, ClusterError> {
    let relay = c
        .relay
        .as_ref()
        .ok_or_else(|| io(format!("cluster {} has no relay", c.name)))?;
    Ok(ClusterConfig {
        name: c.name.clone(),
        relay: relay.addr,
        relay_token: RelayToken::new(relay.token.clone()),
        genesis_id: None,
    })
}
