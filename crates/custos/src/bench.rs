//! `custos bench cluster`: measures, on this machine, a cluster's wallet creation rate and
//! the time to sync every key to a fresh node, each beside the limit of the TEE process
//! alone measured in the same run (direct socket calls, no bridge, no network, no history).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos::cluster::{Cluster, ClusterOptions};
use custos::ops::{approvals, new_meta, provision};
use custos::tee_process::{KeyArg, TeeProcess};
use custos_pki::{AdminSigner, PkiDir, PkiError};
use custos_proto::cluster::TeeCall;
use custos_wire::approval::Action;
use custos_wire::client::TeeClient;
use custos_wire::protocol::MAX_TRANSFER_KEYS;
use custos_wire::protocol::{encode_request, CertChain, Request, Response};

type AnyError = Box<dyn std::error::Error>;

pub(crate) const CLUSTER: &str = "bench";

/// A node that executes wallet creations: its name and device key fingerprint.
type Executor = (String, [u8; 32]);

/// `n` approved creations of wallets of the group {`admin`}, spread over `executors` in
/// turn (each names its node, and only that node makes it): (node, encoded request).
fn create_requests(
    admin: &AdminSigner,
    executors: &[Executor],
    n: usize,
) -> Result<Vec<(String, Vec<u8>)>, PkiError> {
    let policy = custos_cloud_api::approval::new_wallet_policy(vec![admin.key_fingerprint()], 1);
    (0..n)
        .map(|i| {
            let (node, executor) = &executors[i % executors.len()];
            let meta = new_meta(3600);
            let action = Action::CreateGroupWallet {
                policy: &policy,
                executor,
            };
            let request = encode_request(&Request::CreateGroupWallet {
                meta: meta.clone(),
                policy: policy.clone(),
                executor: *executor,
                approvals: approvals(&[admin], CLUSTER, &meta, &action)?,
            });
            Ok((node.clone(), request))
        })
        .collect()
}

/// The executor identity of the TEE behind `c`, named `node`.
fn executor_of(c: &mut TeeClient, node: &str) -> Result<Executor, AnyError> {
    let chain = chain_of(c)?;
    Ok((
        node.to_string(),
        custos_pki::cert_key_fingerprint(&chain.device)?,
    ))
}

/// Creates wallets straight on one TEE process with `threads` connections: the limit.
fn tee_alone_rate(
    tee: &TeeProcess,
    requests: Vec<(String, Vec<u8>)>,
    threads: usize,
) -> Result<f64, AnyError> {
    let n = requests.len();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..threads {
        let mut c = tee.client()?;
        let queue = queue.clone();
        let done = done.clone();
        handles.push(std::thread::spawn(move || loop {
            let Some((_, req)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                return;
            };
            if let Ok(Ok(Response::Wallet(_))) = c.call_bytes(&req) {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let ok = done.load(Ordering::Relaxed);
    if ok != n {
        return Err(format!("TEE alone created {ok} of {n} wallets").into());
    }
    Ok(n as f64 / secs)
}

fn chain_of(c: &mut TeeClient) -> Result<CertChain, AnyError> {
    match c.call(&Request::DeviceChain)? {
        Response::DeviceChain(ch) => Ok(ch),
        _ => Err("no device chain".into()),
    }
}

fn key_ids(c: &mut TeeClient) -> Result<Vec<Vec<u8>>, AnyError> {
    match c.call(&Request::ListKeys)? {
        Response::Keys(k) => Ok(k.into_iter().map(|k| k.key_id).collect()),
        _ => Err("no key list".into()),
    }
}

/// Moves every key of `from` to the fresh TEE `to` directly: the limit of a sync.
fn tee_alone_sync(from: &TeeProcess, to: &TeeProcess) -> Result<(Duration, usize), AnyError> {
    let mut src = from.client()?;
    let mut dst = to.client()?;
    let ids = key_ids(&mut src)?;
    let requester = chain_of(&mut dst)?;
    let t0 = Instant::now();
    let mut imported = 0;
    for chunk in ids.chunks(MAX_TRANSFER_KEYS) {
        let Response::KeyTransfer(t) = src.call(&Request::ExportKeys {
            requester: requester.clone(),
            key_ids: chunk.to_vec(),
        })?
        else {
            return Err("no transfer".into());
        };
        let Response::KeysImported { imported: got, .. } =
            dst.call(&Request::ImportKeys { transfer: t })?
        else {
            return Err("no import".into());
        };
        imported += got.len();
    }
    Ok((t0.elapsed(), imported))
}

/// Runs the cluster benchmark and prints the figures.
/// A benchmark's working folder (`dir`, or a temporary one kept alive by the guard), with
/// a PKI of cluster [`CLUSTER`] and its admin.
pub(crate) struct BenchSetup {
    pub dir: std::path::PathBuf,
    pub pki: PkiDir,
    pub admin: AdminSigner,
    _tmp: tempfile::TempDir,
}

impl BenchSetup {
    pub(crate) fn new(dir: Option<&Path>) -> Result<Self, AnyError> {
        let tmp = tempfile::Builder::new().prefix("custos-bench-").tempdir()?;
        let dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| tmp.path().to_path_buf());
        std::fs::create_dir_all(&dir)?;
        let pki = PkiDir::new(dir.join("pki"));
        pki.init()?;
        pki.create_cluster_ca(CLUSTER)?;
        // The admin's key lives in its own folder, beside the PKI's; the PKI sees only the
        // CSR.
        let admin =
            custos_pki::AdminFolder::new(dir.join("bench-admin")).enroll("bench-admin", &pki)?;
        Ok(BenchSetup {
            dir,
            pki,
            admin,
            _tmp: tmp,
        })
    }

    /// A TEE process `name` in the folder (software platform), not provisioned.
    pub(crate) fn tee(&self, name: &str) -> Result<TeeProcess, AnyError> {
        let key = self.dir.join(format!("{name}.sealing-key"));
        custos_tee_host::sealed::generate_key_file(&key)?;
        Ok(TeeProcess::start(
            &std::env::current_exe()?,
            &self.dir.join(format!("{name}.sock")),
            &self.dir.join(format!("{name}-store")),
            KeyArg::File(key),
        )?)
    }
}

pub fn run(keys: usize, concurrency: usize, dir: Option<&Path>) -> Result<(), AnyError> {
    let setup = BenchSetup::new(dir)?;
    let (dir, pki, admin) = (&setup.dir, &setup.pki, &setup.admin);
    let exe = std::env::current_exe()?;

    // The limit: one TEE process alone, same machine, same concurrency.
    let limit_tee = setup.tee("limit")?;
    provision(&mut limit_tee.client()?, pki, CLUSTER, "limit")?;
    let limit_n = keys.min(20_000);
    println!("preparing {limit_n} approved creation requests for the TEE alone...");
    let limit_executor = executor_of(&mut limit_tee.client()?, "limit")?;
    let limit_requests = create_requests(admin, &[limit_executor], limit_n)?;
    // The TEE accepts at most 64 connections; beyond a few dozen, batching gains nothing.
    let limit_threads = concurrency.min(48);
    let limit_rate = tee_alone_rate(&limit_tee, limit_requests, limit_threads)?;

    // The cluster: two nodes serving, bridge routing and logging every request.
    let mut cluster = Cluster::start(
        &exe,
        pki,
        &dir.join("cluster"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 2,
            db_url: None,
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            link: None,
        },
    )?;
    // Each creation names the node that makes it: spread over the nodes in turn.
    let executors = cluster
        .nodes
        .iter()
        .map(|n| executor_of(&mut n.tee.client()?, &n.name))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "preparing {keys} approved creation requests, spread over {} nodes...",
        executors.len()
    );
    let cluster_requests = create_requests(admin, &executors, keys)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let created = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    rt.block_on(async {
        let link = cluster.link_client().await?;
        let queue = Arc::new(tokio::sync::Mutex::new(cluster_requests));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let mut link = link.clone();
            let queue = queue.clone();
            let created = created.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some((node, request)) = queue.lock().await.pop() else {
                        return;
                    };
                    // Pinned to the node the approvals name: any other refuses it.
                    let r = link
                        .submit(TeeCall {
                            request,
                            node,
                            ..Default::default()
                        })
                        .await;
                    if r.is_ok() {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok::<_, AnyError>(())
    })?;
    let create_secs = t0.elapsed().as_secs_f64();
    let n_created = created.load(Ordering::Relaxed);
    let cluster_rate = n_created as f64 / create_secs;
    cluster.wait_synced(n_created, Duration::from_secs(600))?;

    // Sync to a fresh node: join a third node and time until it holds every key.
    let t1 = Instant::now();
    cluster.add_node(pki, "bench-node3", 3600)?;
    cluster.wait_synced(n_created, Duration::from_secs(600))?;
    let sync_secs = t1.elapsed().as_secs_f64();

    // The limit of a sync: the same keys moved TEE to TEE over the sockets alone.
    let key = dir.join("fresh.sealing-key");
    custos_tee_host::sealed::generate_key_file(&key)?;
    let fresh = TeeProcess::start(
        &exe,
        &dir.join("fresh.sock"),
        &dir.join("fresh-store"),
        KeyArg::File(key),
    )?;
    provision(&mut fresh.client()?, pki, CLUSTER, "fresh")?;
    let (direct, moved) = tee_alone_sync(&cluster.nodes[0].tee, &fresh)?;

    println!();
    println!("wallet creation ({n_created} wallets, {concurrency} concurrent requests, 2-node cluster, SQLite history):");
    println!("  cluster (link -> bridge -> node server -> TEE, history, sync): {cluster_rate:.0} wallets/s");
    println!("  one TEE process alone ({limit_n} wallets, {limit_threads} connections):   {limit_rate:.0} wallets/s");
    println!(
        "  ratio cluster / TEE alone: {:.2}   goal: >= 2000 wallets/s per cluster",
        cluster_rate / limit_rate
    );
    println!("sync of {n_created} root seeds to a fresh node:");
    println!("  join -> every key held (bridge key list, peer export, import):  {sync_secs:.2} s");
    println!(
        "  TEE to TEE over sockets alone ({moved} keys):                     {:.2} s",
        direct.as_secs_f64()
    );
    println!(
        "  ratio: {:.2}   goal: <= 10 s",
        sync_secs / direct.as_secs_f64()
    );
    drop(cluster);
    Ok(())
}
