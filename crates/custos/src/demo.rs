//! `custos demo`: the whole patent path on one machine, on loopback, as real processes.
//!
//! It creates the operating company's PKI, three clusters of three vault nodes (each node a
//! node server plus a separate TEE core process), their bridges, one external relay per
//! cluster linked to its bridge by a real link transport (TCP frames for `dc1`, spool
//! files for `dc2`), and the cloud server; then it runs every flow through the REST API:
//! provisioning, each cluster's governance log (genesis through the REST routes; an
//! impostor node with a genuine certificate refused; a revoked admin's approval refused),
//! wallet creation under an approver group and import, sync, admin approvals under quorum,
//! signing through the full path, an audit, a 2-of-3 threshold key dealt over the three clusters and
//! used by pairs of them, and a node killed while requests are still served. Last, a fourth
//! cluster `dc4` reached only by animated QR codes through a damaged camera (issue 15): a
//! wallet, a signature and an audit cross it, each envelope's frames in the report. All
//! along, the cloud server notifies a webhook receiver of the demo's own of every request
//! event; at the end every request must have had the event of its state, each delivery
//! HMAC-verified (the report's `webhooks`). Every service's `/metrics` is kept as the demo
//! starts and as it ends (`<dir>/metrics/`, the report's `metrics`) to show its counters move.
//! Every signature is checked with nothing but public data. It exits 0 only if every step
//! verified, and writes a machine-readable JSON report.
//!
//! `--platform tpm` runs each TEE on a software TPM of its own (started and stopped by the
//! demo, each manufactured with an endorsement certificate from its cluster's local CA) and
//! adds what only the TPM platform passes: each cluster's genesis names one founder under a
//! measurement policy admitting TPMs only, its other nodes are admitted by TPM quote (checked
//! by every TEE of the cluster), and a TEE's store copied after start-up, put back at the end,
//! is refused at start (`store_rolled_back`). The report names each TEE's platform as its
//! `Status` reports it and its attestation verdict (`tees`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1};
use custos::cluster::LinkTransport;
use custos::dealer::{generate_primes, read_primes, PrimeSource};
use custos::deployment::{
    approve, create_threshold_key, import_threshold, wait_healthy, Deployment, DeploymentOptions,
};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{
    CreateWalletBody, DeriveQuery, ImportWalletBody, MakePresignaturesBody, RequestResult,
    RequestStatus, RequestView, SecretText, SignRequestBody, SignResult, ThresholdSignBody,
};
use custos_pki::AdminSigner;
use serde_json::json;

mod admission;
mod air_gap;
mod governance;
mod metrics;
mod platform;
mod threshold;
mod tier_groups;
mod transactions;
mod wallets;
mod webhooks;

type AnyError = Box<dyn std::error::Error>;

/// BIP-39 reference mnemonic (all-zero entropy), used only by this demo.
const DEMO_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

struct Steps {
    log: Vec<serde_json::Value>,
}

impl Steps {
    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        let detail = detail.into();
        println!("  ok  {name}: {detail}");
        self.log
            .push(json!({"step": name, "ok": true, "detail": detail}));
    }
}

fn fail(what: &str) -> AnyError {
    format!("demo step failed: {what}").into()
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], AnyError> {
    let v = hex::decode(s)?;
    v.try_into()
        .map_err(|_| fail(&format!("{what} is not 32 bytes")))
}

/// Verifies a signature the way a relying party would, with nothing but public data:
/// ECDSA verification, low-s, and public key recovery from (r, s, v).
pub fn verify_signature(
    sig: &SignResult,
    digest: &[u8; 32],
    expected: &PublicKey,
) -> Result<(), AnyError> {
    let secp = Secp256k1::verification_only();
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&hex32(&sig.r, "r")?);
    compact[32..].copy_from_slice(&hex32(&sig.s, "s")?);
    let recid = RecoveryId::from_i32(sig.v as i32)?;
    let rsig = RecoverableSignature::from_compact(&compact, recid)?;
    let msg = Message::from_digest(*digest);
    let recovered = secp.recover_ecdsa(&msg, &rsig)?;
    if &recovered != expected {
        return Err(fail(
            "recovered public key differs from the expected child key",
        ));
    }
    let mut plain = rsig.to_standard();
    secp.verify_ecdsa(&msg, &plain, expected)?;
    plain.normalize_s();
    if plain.serialize_compact() != compact {
        return Err(fail("signature is not low-s"));
    }
    if hex::decode(&sig.public_key)? != expected.serialize() {
        return Err(fail("the TEE reports another signer key"));
    }
    Ok(())
}

fn status_is(view: &RequestView, want: RequestStatus, what: &str) -> Result<(), AnyError> {
    if view.status != want {
        return Err(fail(&format!(
            "{what}: request {} is {:?}, expected {want:?} ({:?})",
            view.id, view.status, view.error
        )));
    }
    Ok(())
}

struct Wallet {
    cluster: String,
    root_id: String,
    xpub: String,
    quorum: u8,
    origin: &'static str,
}

fn wallet_of(view: &RequestView) -> Result<(String, String), AnyError> {
    match &view.result {
        Some(RequestResult::Wallet(w)) => Ok((w.root_id.clone(), w.xpub.clone())),
        _ => Err(fail(&format!("request {} produced no wallet", view.id))),
    }
}

fn signature_of(view: &RequestView) -> Result<SignResult, AnyError> {
    match &view.result {
        Some(RequestResult::Signature(s)) => Ok(s.clone()),
        _ => Err(fail(&format!(
            "request {} produced no signature ({:?})",
            view.id, view.error
        ))),
    }
}

/// Asks for `digest` signed by `root_id`'s child at `path`, approved by `signers`, and
/// returns the completed request and its signature (not yet verified).
async fn sign_approved(
    client: &CloudClient,
    root_id: &str,
    path: &str,
    digest: [u8; 32],
    signers: &[&AdminSigner],
) -> Result<(RequestView, SignResult), AnyError> {
    let view = client
        .sign(&SignRequestBody {
            root_id: root_id.to_string(),
            path: path.into(),
            digest: hex::encode(digest),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await?;
    let view = approve_all(client, view, signers).await?;
    status_is(&view, RequestStatus::Completed, "signing")?;
    let sig = signature_of(&view)?;
    Ok((view, sig))
}

/// Whether an audit found a node's keys exactly as listed, none hidden, without error.
fn audit_clean(n: &custos_cloud_api::NodeAuditView) -> bool {
    n.missing.is_empty() && n.wrong.is_empty() && n.hidden == 0 && n.error.is_none()
}

/// Approves `view` by each signer in turn (as `custos approve` does) and returns the last
/// state; checks it stays pending until the last approval.
async fn approve_all(
    client: &CloudClient,
    view: RequestView,
    signers: &[&AdminSigner],
) -> Result<RequestView, AnyError> {
    let mut view = view;
    for (i, s) in signers.iter().enumerate() {
        if i + 1 < signers.len() || view.status == RequestStatus::PendingApproval {
            status_is(&view, RequestStatus::PendingApproval, "before an approval")?;
        }
        view = approve(client, s, &view.id).await?;
    }
    Ok(view)
}

/// The child public key at `path` of an xpub (non-hardened steps only).
fn public_child(xpub: &str, path: &DerivationPath) -> Result<PublicKey, AnyError> {
    let secp = Secp256k1::verification_only();
    Ok(Xpub::from_str(xpub)?.derive_pub(&secp, path)?.public_key)
}

struct Signed {
    cluster: String,
    root_id: String,
    path: String,
    digest: [u8; 32],
    sig: SignResult,
    request_id: String,
    note: &'static str,
}

/// The Paillier primes of the demo's threshold keys: the committed TEST-ONLY fixture of the
/// threshold crate (Blum primes, not safe primes, published), so that the demo does not spend
/// minutes generating safe primes — only in a build with the feature `insecure-test-primes`,
/// whose TEEs accept it (any other build's TEEs refuse it, `primes_refused`); otherwise, or
/// with `--real-primes`, real safe primes generated now by the demo process.
fn demo_primes(real_primes: bool) -> (PrimeSource, &'static str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json");
    if !real_primes && cfg!(feature = "insecure-test-primes") && fixture.exists() {
        (
            PrimeSource::File(fixture),
            "the TEST-ONLY committed Blum primes, whose secrets are published, so anyone can \
             decrypt this key's Paillier ciphertexts: a demo key only",
        )
    } else {
        (
            PrimeSource::Generate,
            "real safe primes generated now by the demo process, which therefore knew every \
             party's Paillier secret (production: each TEE generates its own)",
        )
    }
}

/// A running demo: the deployment, the API client and admins, and what the steps verified.
struct Demo {
    dep: Deployment,
    dir: PathBuf,
    real_primes: bool,
    /// Where the TEEs run (`--platform`).
    platform: custos::tee_plan::PlatformName,
    /// Each TEE's platform as its Status reports it (the report's `tees`).
    tees: Vec<serde_json::Value>,
    client: CloudClient,
    alice: AdminSigner,
    bob: AdminSigner,
    carol: AdminSigner,
    /// The risk officer: an approval tier's own group, apart from every key's group.
    risk: AdminSigner,
    steps: Steps,
    wallets: Vec<Wallet>,
    signed: Vec<Signed>,
    audits: Vec<serde_json::Value>,
    /// Each cluster's governance log as the demo started it.
    governance: Vec<serde_json::Value>,
    /// The impostor node's calls and how each was refused.
    rogue_refused: Vec<serde_json::Value>,
    /// The revoked admin and how its approval was refused.
    revoked_refused: serde_json::Value,
    /// The wallet whose approver group was changed, and how an outsider was refused.
    group_changed: serde_json::Value,
    /// Transactions the TEE understood: the PSBT signed, the policy refusals, Ethereum.
    transactions: serde_json::Value,
}

impl Demo {
    /// Starts the deployment: PKI, three clusters of three nodes, bridges, relays, links and
    /// the cloud server, as real processes.
    fn start(
        exe: &Path,
        dir: &Path,
        real_primes: bool,
        platform: custos::tee_plan::PlatformName,
        hook: custos_cloud::config::WebhookConfig,
    ) -> Result<Demo, AnyError> {
        let mut steps = Steps { log: Vec::new() };
        let t0 = Instant::now();
        let plan = platform::plan(platform)?;
        let dep = Deployment::start_on(
            exe,
            dir,
            &DeploymentOptions {
                clusters: vec![
                    ("dc1".into(), LinkTransport::Tcp),
                    ("dc2".into(), LinkTransport::Spool),
                    ("dc3".into(), LinkTransport::Tcp),
                ],
                nodes: 3,
                // risk approves above an approval tier of its own, never a governor.
                admins: ["alice", "bob", "carol", "risk"].map(String::from).to_vec(),
                sync_interval_secs: 2,
                audit_interval_secs: 3600,
                cloud_db_url: None,
                webhooks: vec![hook],
            },
            &plan,
        )?;
        steps.ok(
            "deployment",
            format!(
                "PKI (Root, Admin CA, Device CA, Cluster CAs dc1/dc2/dc3, admins alice/bob/carol \
                 and the risk officer risk), \
                 3 clusters x 3 nodes (node server + TEE process each{}), bridges, external \
                 relays (dc1, dc3: TCP link, dc2: spool-directory link), cloud server at {} in \
                 {:.1} s",
                match platform {
                    custos::tee_plan::PlatformName::Tpm => ", each TEE on a swtpm of its own",
                    custos::tee_plan::PlatformName::Software => "",
                },
                dep.api_url,
                t0.elapsed().as_secs_f64()
            ),
        );
        Ok(Demo {
            alice: dep.admin("alice")?,
            bob: dep.admin("bob")?,
            carol: dep.admin("carol")?,
            risk: dep.admin("risk")?,
            client: dep.client()?,
            dep,
            dir: dir.to_path_buf(),
            real_primes,
            platform,
            tees: Vec::new(),
            steps,
            wallets: Vec::new(),
            signed: Vec::new(),
            audits: Vec::new(),
            governance: Vec::new(),
            rogue_refused: Vec::new(),
            revoked_refused: serde_json::Value::Null,
            group_changed: serde_json::Value::Null,
            transactions: serde_json::Value::Null,
        })
    }

    /// The machine-readable report of every step.
    fn report(
        &self,
        threshold: serde_json::Value,
        rollback: serde_json::Value,
        air_gap: serde_json::Value,
    ) -> serde_json::Value {
        json!({
            "custos_demo": 3,
            "api": self.dep.api_url,
            "platform": {
                "requested": platform::name(self.platform),
                "note": match self.platform {
                    custos::tee_plan::PlatformName::Tpm =>
                        "each TEE's store key sealed by a TPM 2.0 and its epoch bound to the \
                         TPM's counter; the TPMs are software TPMs (swtpm), for development",
                    custos::tee_plan::PlatformName::Software =>
                        "the development stand-in: keys sealed at rest under the operator's \
                         key, no protection against root on the host or a store copy put back",
                },
                "rollback": rollback,
            },
            "tees": self.tees,
            "clusters": [
                {"name": "dc1", "nodes": 3, "link": "tcp"},
                {"name": "dc2", "nodes": 3, "link": "spool"},
                {"name": "dc3", "nodes": 3, "link": "tcp"},
                {"name": "dc4", "nodes": 1, "link": "qr"},
            ],
            "air_gap": air_gap,
            "threshold": threshold,
            "wallets": self.wallets.iter().map(|w| json!({
                "cluster": w.cluster, "root_id": w.root_id, "root_xpub": w.xpub,
                "quorum": w.quorum, "origin": w.origin,
            })).collect::<Vec<_>>(),
            "signatures": self.signed.iter().map(|s| json!({
                "cluster": s.cluster, "root_id": s.root_id, "path": s.path,
                "digest": hex::encode(s.digest), "child_public_key": s.sig.public_key,
                "r": s.sig.r, "s": s.sig.s, "v": s.sig.v, "request_id": s.request_id,
                "note": s.note, "verified": true,
            })).collect::<Vec<_>>(),
            "audits": self.audits,
            "transactions": self.transactions,
            "governance": {
                "clusters": self.governance,
                "rogue_refused": self.rogue_refused,
                "revoked_refused": self.revoked_refused,
                "group_changed": self.group_changed,
            },
            "steps": self.steps.log,
            "all_verified": true,
        })
    }
}

/// Runs the demo; see the module documentation.
pub fn run(
    dir: Option<PathBuf>,
    report: &Path,
    keep_running: bool,
    real_primes: bool,
    platform: custos::tee_plan::PlatformName,
) -> Result<(), AnyError> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::Builder::new().prefix("custos-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe()?;
    println!("Custos demo in {}", dir.display());
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (receiver, hook) = webhooks::Receiver::start(&rt, &dir)?;
    let mut demo = Demo::start(&exe, &dir, real_primes, platform, hook)?;
    let metrics_at_start = demo.scrape_metrics(&rt, "start")?;
    demo.tee_platforms()?;
    demo.copy_early_store()?;
    // The steps, in order; each records what it verified, and the first failure ends the
    // demo with a non-zero exit.
    rt.block_on(async {
        demo.provisioning().await?;
        demo.governance().await?;
        demo.rogue_node().await?;
        demo.create_wallets().await?;
        demo.import_wallet().await?;
        demo.sync().await?;
        demo.derive().await?;
        demo.sign().await?;
        demo.quorum().await?;
        demo.approver_group().await?;
        demo.revoked_admin().await?;
        demo.transactions = demo.transactions().await?;
        demo.audit().await
    })?;
    let mut threshold = demo.threshold_dealt(&rt)?;
    threshold["presignatures"] = demo.presignatures(&rt)?;
    threshold["dkg"] = demo.dkg(&rt)?;
    demo.node_killed(&rt)?;
    let rollback = demo.rollback_refused()?;
    let air_gap = demo.qr_cluster(&rt)?;
    let webhooks = demo.webhooks(&rt, &receiver)?;
    let metrics_at_end = demo.scrape_metrics(&rt, "end")?;

    let mut doc = demo.report(threshold, rollback, air_gap);
    doc["webhooks"] = webhooks;
    doc["metrics"] = json!({"start": metrics_at_start, "end": metrics_at_end});
    std::fs::write(report, serde_json::to_vec_pretty(&doc)?)?;
    println!(
        "all {} steps verified in {:.1} s; report written to {}",
        doc["steps"].as_array().map(|a| a.len()).unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        report.display()
    );
    if keep_running {
        if let Some(c) = demo.dep.cluster_mut("dc1") {
            c.restart_node(0)?;
        }
        println!();
        println!(
            "The deployment stays up (Ctrl-C to stop). REST API: {}",
            demo.dep.api_url
        );
        println!("  export CUSTOS_API_TOKEN={}", demo.dep.api_token);
        println!(
            "  curl -H \"Authorization: Bearer $CUSTOS_API_TOKEN\" {}/v1/clusters",
            demo.dep.api_url
        );
        println!("  curl {}/openapi.json", demo.dep.api_url);
        println!(
            "  custos approve --api {} --cert {} --key {} --list",
            demo.dep.api_url,
            demo.dep.admin_folder("alice")?.chain().display(),
            demo.dep.admin_folder("alice")?.key().display()
        );
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    drop(demo);
    Ok(())
}
