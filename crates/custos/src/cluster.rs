//! A whole cluster on loopback as real processes: a bridge server, and per node a TEE core
//! process and a vault node server (`custos cluster up`, the tests and the demo use it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use custos_bridge::{BridgeConfig, LinkConfig};
use custos_link::qr::damage::Damage;
use custos_net::{client_config, connect, TlsIdentity};
use custos_pki::{pem_to_der, PkiDir, Service};
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_relay::{RelayConfig, TransportConfig};
use custos_vault_node::NodeConfig;
use tonic::transport::Channel;

use crate::link_channel::{qr_dirs, QrCameras, SerialCable};
use crate::ops::provision;
use crate::tee_plan::{launch, tee_section, TeePlan};
use crate::tee_process::{spawn_service, KeyArg, SpawnError, TeeProcess};

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Cluster name.
    pub name: String,
    /// Number of vault nodes.
    pub nodes: usize,
    /// Metadata DB URL; default SQLite in the cluster directory.
    pub db_url: Option<String>,
    /// Seconds between periodic sync rounds of each node.
    pub sync_interval_secs: u64,
    /// Seconds between scheduled audits by the bridge (0: on demand only).
    pub audit_interval_secs: u64,
    /// The link between the external relay and the bridge (none: no relay is started).
    pub link: Option<LinkTransport>,
}

/// Which link transport a cluster's external relay and bridge use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkTransport {
    /// Length-prefixed frames over TCP.
    Tcp,
    /// Envelope files in two spool directories (a removable medium).
    Spool,
    /// Animated QR codes: each side draws frames into a screen folder, and a camera films
    /// them into the other side's captured folder through this damage ([`QrCameras`]).
    Qr(Damage),
    /// A serial line at 115 200 baud between two pseudo-terminals ([`SerialCable`]).
    Serial,
}

/// The channel a cluster's link runs over, when it is not a network or a folder.
pub enum LinkChannel {
    /// Cameras filming the screens.
    Qr(QrCameras),
    /// A serial cable.
    Serial(SerialCable),
}

/// A cluster's external relay as the cloud server reaches it.
#[derive(Clone, Debug)]
pub struct RelayEndpoint {
    /// Address of the relay's `ExternalRelay` service.
    pub addr: SocketAddr,
    /// Bearer token the relay accepts (generated for this deployment).
    pub token: String,
    /// The relay's metrics (`GET /metrics`, Prometheus), on a loopback port of their own.
    pub metrics_url: String,
}

/// Failures bringing a cluster up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A process did not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// PKI step failed.
    #[error(transparent)]
    Pki(#[from] custos_pki::PkiError),
    /// Provisioning failed.
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    /// TLS set-up failed.
    #[error(transparent)]
    Net(#[from] custos_net::NetError),
    /// File or other I/O failure.
    #[error("{0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Io(e.to_string())
}

/// One vault node: its TEE process and its node server process.
pub struct Node {
    /// Node name.
    pub name: String,
    /// The TEE core process.
    pub tee: TeeProcess,
    /// The software TPM of its own the TEE runs on ([`crate::tee_plan::TeeChoice::Swtpm`]);
    /// declared after `tee` so that it stops after the TEE.
    pub swtpm: Option<custos_tee_host::swtpm::Swtpm>,
    server: Option<Child>,
    config_path: PathBuf,
    /// Address the node server listens on (changes on restart).
    pub addr: Option<SocketAddr>,
    /// The node server's metrics (`GET /metrics`, Prometheus), on a loopback port of its own.
    pub metrics_url: String,
}

/// A running cluster; every process is killed when it is dropped.
pub struct Cluster {
    /// Cluster name.
    pub name: String,
    /// Working directory.
    pub dir: PathBuf,
    /// Metadata DB URL of the bridge.
    pub db_url: String,
    /// Bridge address.
    pub bridge_addr: SocketAddr,
    /// The bridge's metrics (`GET /metrics`, Prometheus), on a loopback port of their own.
    pub bridge_metrics_url: String,
    bridge: Option<Child>,
    bridge_config: PathBuf,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The external relay, if the cluster has a link.
    pub relay: Option<RelayEndpoint>,
    relay_child: Option<Child>,
    relay_config: PathBuf,
    exe: PathBuf,
    pki: PathBuf,
    /// Where each node's TEE runs.
    plan: TeePlan,
    /// The link's physical channel, if it has one of its own; stops after the processes.
    pub channel: Option<LinkChannel>,
}

fn parse_ready_addr(line: &str) -> Result<SocketAddr, ClusterError> {
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io(format!("unexpected ready line {line:?}")))
}

impl Node {
    /// The node server's configuration file (what `custos node ...` commands take).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

impl Cluster {
    /// Brings up a cluster under `dir` with the CA directory `pki` (initialized): Cluster CA
    /// and bridge certificate, the bridge, then each node's TEE (provisioned) and server.
    /// Every TEE on the software platform.
    pub fn start(
        exe: &Path,
        pki: &PkiDir,
        dir: &Path,
        opts: &ClusterOptions,
    ) -> Result<Self, ClusterError> {
        Self::start_on(exe, pki, dir, opts, &TeePlan::default())
    }

    /// [`Cluster::start`] with each node's TEE where `plan` says (also for the nodes added
    /// later by [`Cluster::add_node`]).
    pub fn start_on(
        exe: &Path,
        pki: &PkiDir,
        dir: &Path,
        opts: &ClusterOptions,
        plan: &TeePlan,
    ) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        // Every configuration written below names absolute paths (a relative one would be
        // read against its configuration file's folder).
        let dir = &std::fs::canonicalize(dir).map_err(io)?;
        let pki = &PkiDir::new(std::fs::canonicalize(pki.path()).map_err(io)?);
        if pki.cluster_ca_pem(&opts.name).is_err() {
            pki.create_cluster_ca(&opts.name)?;
        }
        pki.issue_bridge(&opts.name)?;
        let cdir = pki.path().join("clusters").join(&opts.name);
        let relay_config = dir.join("relay.toml");
        let (link, relay, channel) = match opts.link {
            Some(transport) => {
                let (link, relay, channel) =
                    link_configs(pki, &opts.name, dir, transport, &relay_config)?;
                (Some(link), Some(relay), channel)
            }
            None => (None, None, None),
        };
        let db_url = opts
            .db_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("metadata.db").display()));
        let metrics = free_port()?;
        let bridge_cfg = BridgeConfig {
            cluster: opts.name.clone(),
            listen: "127.0.0.1:0".parse().expect("valid"),
            cert: cdir.join("bridge.crt"),
            key: cdir.join("bridge.key"),
            cluster_ca: cdir.join("cluster-ca.crt"),
            device_ca: pki.path().join("device-ca.crt"),
            root_ca: pki.path().join("root-ca.crt"),
            db_url: db_url.clone(),
            health_interval_ms: 300,
            // Threshold rounds compute for a second or more per call on a busy machine.
            call_timeout_ms: 15_000,
            audit_interval_secs: opts.audit_interval_secs,
            refusal_summary_secs: 60,
            genesis_id: None,
            link,
            metrics_listen: Some(metrics),
        };
        let bridge_config = dir.join("bridge.toml");
        bridge_cfg.save(&bridge_config).map_err(io)?;
        let mut cluster = Cluster {
            name: opts.name.clone(),
            dir: dir.to_path_buf(),
            db_url,
            bridge_addr: "127.0.0.1:0".parse().expect("valid"),
            bridge_metrics_url: format!("http://{metrics}/metrics"),
            bridge: None,
            bridge_config,
            nodes: Vec::new(),
            relay,
            relay_child: None,
            relay_config,
            exe: exe.to_path_buf(),
            pki: pki.path().to_path_buf(),
            plan: plan.clone(),
            channel,
        };
        cluster.start_bridge()?;
        if cluster.relay.is_some() {
            cluster.start_relay()?;
        }
        for i in 1..=opts.nodes {
            let name = format!("{}-node{i}", opts.name);
            cluster.add_node(pki, &name, opts.sync_interval_secs)?;
        }
        Ok(cluster)
    }

    fn start_bridge(&mut self) -> Result<(), ClusterError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["bridge", "run", "--config"])
            .arg(&self.bridge_config);
        let log = self.dir.join("logs").join("bridge.log");
        let (child, line) = spawn_service(cmd, "custos-bridge ready", &log)?;
        self.bridge_addr = parse_ready_addr(&line)?;
        self.bridge = Some(child);
        // The first start picks a free port; a restart must come back on it, where the
        // node servers and the relay look for the bridge.
        let mut config = BridgeConfig::load(&self.bridge_config).map_err(io)?;
        if config.listen.port() == 0 {
            config.listen = self.bridge_addr;
            config.save(&self.bridge_config).map_err(io)?;
        }
        Ok(())
    }

    /// Starts the external relay (configured at [`Cluster::start`]).
    pub fn start_relay(&mut self) -> Result<(), ClusterError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["relay", "run", "--config"])
            .arg(&self.relay_config);
        let log = self.dir.join("logs").join("relay.log");
        let (child, line) = spawn_service(cmd, "custos-relay ready", &log)?;
        let addr = parse_ready_addr(&line)?;
        if let Some(r) = self.relay.as_mut() {
            r.addr = addr;
        }
        self.relay_child = Some(child);
        Ok(())
    }

    /// SIGKILLs the external relay.
    pub fn kill_relay(&mut self) {
        if let Some(mut c) = self.relay_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the bridge (after [`Cluster::kill_bridge`]) on its configured ports.
    pub fn restart_bridge(&mut self) -> Result<(), ClusterError> {
        if self.bridge.is_none() {
            self.start_bridge()?;
        }
        Ok(())
    }

    /// Adds and starts a node of this cluster (TEE provisioned by `pki`, on the platform the
    /// cluster's plan gives the node).
    pub fn add_node(
        &mut self,
        pki: &PkiDir,
        name: &str,
        sync_interval_secs: u64,
    ) -> Result<(), ClusterError> {
        let key = self.dir.join(format!("{name}.sealing-key"));
        if !key.exists() {
            custos_tee_host::sealed::generate_key_file(&key).map_err(io)?;
        }
        let (platform, swtpm) = launch(self.plan.for_node(name), &self.dir, name).map_err(io)?;
        let tee = TeeProcess::start_on(
            &self.exe,
            &self.dir.join(format!("{name}.sock")),
            &self.dir.join(format!("{name}-store")),
            KeyArg::File(key),
            platform,
        )?;
        let mut client = tee.client().map_err(io)?;
        provision(&mut client, pki, &self.name, name)?;
        let config_path = self.dir.join(format!("{name}.toml"));
        let metrics = free_port()?;
        NodeConfig {
            node: name.to_string(),
            cluster: self.name.clone(),
            listen: "127.0.0.1:0".parse().expect("valid"),
            advertise: None,
            bridge: self.bridge_addr,
            tee_socket: tee.socket.clone(),
            root_ca: self.pki.join("root-ca.crt"),
            sync_interval_secs,
            tee_connections: 8,
            tee: Some(tee_section(tee.platform())),
            metrics_listen: Some(metrics),
        }
        .save(&config_path)
        .map_err(io)?;
        self.nodes.push(Node {
            name: name.to_string(),
            tee,
            swtpm,
            server: None,
            config_path,
            addr: None,
            metrics_url: format!("http://{metrics}/metrics"),
        });
        let i = self.nodes.len() - 1;
        self.start_node_server(i)
    }

    /// Starts node `i`'s server (its TEE must be running).
    pub fn start_node_server(&mut self, i: usize) -> Result<(), ClusterError> {
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(&self.exe);
        cmd.args(["node", "run", "--config"]).arg(&node.config_path);
        let log = self.dir.join("logs").join(format!("{}.log", node.name));
        let (child, line) = spawn_service(cmd, "custos-node ready", &log)?;
        node.addr = Some(parse_ready_addr(&line)?);
        node.server = Some(child);
        Ok(())
    }

    /// Restarts node `i`'s server registering `advertise` with the bridge as the address
    /// it is reached at (for a test that puts a proxy in front of it).
    pub fn advertise_node(&mut self, i: usize, advertise: SocketAddr) -> Result<(), ClusterError> {
        self.kill_node_server(i);
        let path = &self.nodes[i].config_path;
        let mut config = NodeConfig::load(path).map_err(io)?;
        config.advertise = Some(advertise);
        config.save(path).map_err(io)?;
        self.start_node_server(i)
    }

    /// SIGKILLs node `i`'s server process.
    pub fn kill_node_server(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs node `i`'s TEE process.
    pub fn kill_tee(&mut self, i: usize) {
        self.nodes[i].tee.kill();
    }

    /// Restarts node `i`: its TEE if it is down, and its server if it is down.
    pub fn restart_node(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.nodes[i].tee.pid().is_none() {
            self.nodes[i].tee.restart()?;
        }
        if self.nodes[i].server.is_none() {
            self.start_node_server(i)?;
        }
        Ok(())
    }

    /// SIGKILLs the bridge.
    pub fn kill_bridge(&mut self) {
        if let Some(mut c) = self.bridge.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the bridge (SIGSTOP) or lets it go on (SIGCONT): calls through it wait, as
    /// behind a stalled machine, and nothing in flight is lost.
    pub fn freeze_bridge(&self, frozen: bool) -> Result<(), ClusterError> {
        use nix::sys::signal::{kill, Signal};
        let child = self
            .bridge
            .as_ref()
            .ok_or_else(|| io(format!("the bridge of {} is not running", self.name)))?;
        let pid = i32::try_from(child.id()).map_err(io)?;
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(nix::unistd::Pid::from_raw(pid), signal).map_err(io)
    }

    /// Stops the bridge the way a service manager does (SIGTERM), so that it writes what it
    /// still holds in memory (refusal counts), and waits for it to exit: at most 30 s, then
    /// it is killed and the timeout reported.
    pub fn stop_bridge(&mut self) -> Result<(), ClusterError> {
        match self.bridge.take() {
            Some(child) => terminate(child, "the bridge"),
            None => Ok(()),
        }
    }

    /// A gRPC client of the bridge on the link side (bridge-role certificate).
    pub async fn link_client(&self) -> Result<BridgeClient<Channel>, ClusterError> {
        let cdir = self.pki.join("clusters").join(&self.name);
        let read = |p: PathBuf| std::fs::read_to_string(p).map_err(io);
        let chain = vec![
            pem_to_der(&read(cdir.join("bridge.crt"))?, "bridge certificate")?,
            pem_to_der(&read(cdir.join("cluster-ca.crt"))?, "Cluster CA")?,
            pem_to_der(&read(self.pki.join("device-ca.crt"))?, "Device CA")?,
        ];
        let key =
            zeroize::Zeroizing::new(pem_to_der(&read(cdir.join("bridge.key"))?, "bridge key")?);
        let root = pem_to_der(&read(self.pki.join("root-ca.crt"))?, "Root CA")?;
        let identity = TlsIdentity::from_local_key(chain, &key)?;
        let channel = connect(
            self.bridge_addr,
            &format!("bridge.{}.custos", self.name),
            client_config(&identity, &root)?,
        )
        .await?;
        Ok(BridgeClient::new(channel)
            .max_decoding_message_size(custos_bridge::MAX_MESSAGE)
            .max_encoding_message_size(custos_bridge::MAX_MESSAGE))
    }

    /// Waits (bounded) until every running node's TEE holds at least `keys` wallets.
    pub fn wait_synced(&self, keys: usize, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut counts = Vec::new();
            for n in &self.nodes {
                if n.tee.pid().is_none() {
                    continue;
                }
                let count = n
                    .tee
                    .client()
                    .ok()
                    .and_then(|mut c| c.call(&custos_wire::protocol::Request::Status).ok())
                    .and_then(|r| match r {
                        custos_wire::protocol::Response::Status(s) => Some(s.wallets as usize),
                        _ => None,
                    })
                    .unwrap_or(0);
                counts.push((n.name.clone(), count));
            }
            if counts.iter().all(|(_, c)| *c >= keys) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io(format!("nodes not synced to {keys} keys: {counts:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node_server(i);
        }
        self.kill_relay();
        self.kill_bridge();
    }
}

/// Stops `child` the way a service manager does: SIGTERM, then waits for the exit, at most
/// 30 s; then it is killed and the timeout reported (naming `what`).
pub(crate) fn terminate(mut child: Child, what: &str) -> Result<(), ClusterError> {
    use nix::sys::signal::{kill, Signal};
    let pid = i32::try_from(child.id()).map_err(io)?;
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).map_err(io)?;
    // Bounded wait: 600 polls of 50 ms.
    for _ in 0..600 {
        if child.try_wait().map_err(io)?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(io(format!(
        "{what} did not stop within 30 s of SIGTERM; killed"
    )))
}

/// Ports [`free_port`] picks from: below Linux's ephemeral range (32768-60999 by default),
/// from which the OS takes the local port of every outgoing connection and of every
/// listener bound to port 0. A port picked there could be taken by such a socket between
/// the pick and the bind of the process it is written into.
const FIXED_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A loopback port free right now, outside the ephemeral range (the bridge's link listener
/// keeps it across restarts, so the relay's configuration stays valid; so does a cloud
/// server replica's API). Never the same port twice in one process: deployments started
/// side by side (parallel tests) pick theirs before their processes bind them.
pub(crate) fn free_port() -> Result<SocketAddr, ClusterError> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..200 {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), FIXED_PORTS.clone());
        let mut given = GIVEN.lock().expect("port set lock");
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return l.local_addr().map_err(io);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    l.local_addr().map_err(io)
}

/// Issues the relay certificate and writes the relay's configuration; returns the bridge's
/// side of the link, the relay endpoint (address filled in when it starts) and the
/// channel between them when the transport needs one.
fn link_configs(
    pki: &PkiDir,
    cluster: &str,
    dir: &Path,
    transport: LinkTransport,
    relay_config: &Path,
) -> Result<(LinkConfig, RelayEndpoint, Option<LinkChannel>), ClusterError> {
    pki.issue_service(cluster, Service::Relay)?;
    let (relay_cert, relay_key) = pki.service_files(cluster, Service::Relay);
    let (bridge_cert, _) = pki.service_files(cluster, Service::Bridge);
    let cdir = pki.path().join("clusters").join(cluster);
    let to_bridge = dir.join("link-spool").join("to-bridge");
    let to_relay = dir.join("link-spool").join("to-relay");
    let none = LinkConfig {
        relay_cert: relay_cert.clone(),
        dedup_db: dir.join("link-dedup.redb"),
        tcp: None,
        spool_inbound: None,
        spool_outbound: None,
        spool_poll_ms: 5,
        qr_screen: None,
        qr_captured: None,
        serial_device: None,
        serial_baud: SERIAL_BAUD,
    };
    let (link, relay_transport, channel) = match transport {
        LinkTransport::Tcp => {
            let addr = free_port()?;
            let link = LinkConfig {
                tcp: Some(addr),
                spool_poll_ms: 20,
                ..none
            };
            (link, TransportConfig::Tcp { address: addr }, None)
        }
        LinkTransport::Spool => (
            LinkConfig {
                spool_inbound: Some(to_bridge.clone()),
                spool_outbound: Some(to_relay.clone()),
                ..none
            },
            TransportConfig::Spool {
                outbound: to_bridge,
                inbound: to_relay,
                poll_ms: 5,
            },
            None,
        ),
        LinkTransport::Qr(damage) => {
            let (relay, bridge) = qr_dirs(dir);
            let cameras = QrCameras::start(dir, damage).map_err(io)?;
            let link = LinkConfig {
                qr_screen: Some(bridge.screen),
                qr_captured: Some(bridge.captured),
                spool_poll_ms: 10,
                ..none
            };
            let relay = TransportConfig::Qr {
                screen: relay.screen,
                captured: relay.captured,
                poll_ms: 10,
            };
            (link, relay, Some(LinkChannel::Qr(cameras)))
        }
        LinkTransport::Serial => {
            let cable = SerialCable::start().map_err(io)?;
            let link = LinkConfig {
                serial_device: Some(cable.bridge_device.clone()),
                ..none
            };
            let relay = TransportConfig::Serial {
                device: cable.relay_device.clone(),
                baud: SERIAL_BAUD,
            };
            (link, relay, Some(LinkChannel::Serial(cable)))
        }
    };
    let token = random_token()?;
    let metrics = free_port()?;
    RelayConfig {
        cluster: cluster.to_string(),
        listen: "127.0.0.1:0".parse().expect("valid"),
        cert: relay_cert,
        key: relay_key,
        cluster_ca: cdir.join("cluster-ca.crt"),
        device_ca: pki.path().join("device-ca.crt"),
        root_ca: pki.path().join("root-ca.crt"),
        bridge_cert,
        token_sha256: hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            token.as_bytes(),
        )),
        transport: relay_transport,
        attempt_timeout_ms: 20_000,
        max_attempts: 3,
        metrics_listen: Some(metrics),
    }
    .save(relay_config)
    .map_err(io)?;
    Ok((
        link,
        RelayEndpoint {
            addr: "127.0.0.1:0".parse().expect("valid"),
            token,
            metrics_url: format!("http://{metrics}/metrics"),
        },
        channel,
    ))
}

/// Line rate of a local deployment's serial link: what a USB serial adapter runs.
pub const SERIAL_BAUD: u32 = 115_200;

/// A fresh random bearer token (hex of 32 random bytes).
pub fn random_token() -> Result<String, ClusterError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io("random source failed"))?;
    Ok(hex::encode(bytes))
}
