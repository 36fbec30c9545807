//! A TCP proxy in front of a node server that can lose one answer: the fault of a network
//! that delivered a request and dropped its reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Client data chunks at least this long are requests worth losing (a create-wallet with
/// its approvals); health probes and HTTP/2 housekeeping are far shorter.
const BIG_REQUEST: usize = 512;
/// Server data chunks at least this long are answers (a signed TEE response); HTTP/2
/// flow-control and settings frames are a few bytes.
const BIG_REPLY: usize = 100;

/// Decides, while an answer is held back, whether it is the one to lose.
pub type Trigger = Arc<dyn Fn() -> bool + Send + Sync>;

/// Forwards every connection to `upstream`. Once armed, the first reply that follows a big
/// request on a connection (or, armed with a [`Trigger`], the first big reply for which it
/// holds) is discarded and that connection cut (both ways), after which the proxy forwards
/// faithfully again.
pub struct ReplyDropper {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    armed: Arc<AtomicBool>,
    trigger: Arc<Mutex<Option<Trigger>>>,
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplyDropper {
    /// Listens on a loopback port; connections wait for [`Self::set_upstream`].
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(None));
        let armed = Arc::new(AtomicBool::new(false));
        let trigger = Arc::new(Mutex::new(None));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (up, arm, when, drops) = (
            upstream.clone(),
            armed.clone(),
            trigger.clone(),
            dropped.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Some(target) = *up.lock().unwrap() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    arm.clone(),
                    when.clone(),
                    drops.clone(),
                ));
            }
        });
        ReplyDropper {
            addr,
            upstream,
            armed,
            trigger,
            dropped,
            task,
        }
    }

    /// The node server behind the proxy.
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(addr);
    }

    /// Loses the next reply to a big request.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Loses the first big reply for which `trigger` holds, whatever the request was: an
    /// answer is chosen by what its sending has already done (the proxy sees only TLS),
    /// e.g. "the TEE behind this node has stored the key", checked while the reply waits.
    pub fn arm_when(&self, trigger: Trigger) {
        *self.trigger.lock().unwrap() = Some(trigger);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Loses nothing more.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
        *self.trigger.lock().unwrap() = None;
    }

    /// Replies lost so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    trigger: Arc<Mutex<Option<Trigger>>>,
    dropped: Arc<AtomicUsize>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let big_request = Arc::new(AtomicBool::new(false));
    let seen = big_request.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if n >= BIG_REQUEST {
                seen.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Flow-control frames (a few bytes) may precede the answer: only an answer counts.
            if n >= BIG_REPLY {
                let answers_big = big_request.swap(false, Ordering::SeqCst);
                let when = trigger.lock().unwrap().clone();
                let hit = match when {
                    _ if !armed.load(Ordering::SeqCst) => false,
                    None => answers_big,
                    // The trigger may block (a TEE call): the reply waits for its verdict.
                    Some(t) => tokio::task::spawn_blocking(move || t())
                        .await
                        .unwrap_or(false),
                };
                if hit && armed.swap(false, Ordering::SeqCst) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first cuts the connection: dropping both halves closes it.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Puts the first two nodes of `cluster` behind a [`ReplyDropper`] each (their servers
/// restarted advertising the proxy) and waits, bounded, until the cloud server sees every
/// node of the cluster at its proxy and healthy; returns the proxies.
pub fn front_two_nodes(
    rt: &tokio::runtime::Runtime,
    dep: &mut custos::deployment::Deployment,
    client: &custos_cloud_api::client::CloudClient,
    cluster: &str,
) -> [ReplyDropper; 2] {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    let proxies = rt.block_on(async { [ReplyDropper::start().await, ReplyDropper::start().await] });
    let c = dep.cluster_mut(cluster).unwrap();
    for (i, proxy) in proxies.iter().enumerate() {
        c.advertise_node(i, proxy.addr).unwrap();
        proxy.set_upstream(c.nodes[i].addr.unwrap());
    }
    let advertised: BTreeSet<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = client.cluster(cluster).await.unwrap();
            let endpoints: BTreeSet<String> = s.nodes.iter().map(|n| n.endpoint.clone()).collect();
            if endpoints == advertised && s.nodes.iter().all(|n| n.healthy) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nodes not behind their proxies: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    proxies
}
