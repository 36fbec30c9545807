//! `custos demo`: the whole patent path on one machine, on loopback, as real processes.
//!
//! It creates the operating company's PKI, three clusters of three vault nodes (each node a
//! node server plus a separate TEE core process), their bridges, one external relay per
//! cluster linked to its bridge by a real link transport (TCP frames for `dc1`, spool
//! files for `dc2`), and the cloud server; then it runs every flow through the REST API:
//! provisioning, wallet creation and import, sync, admin approvals under quorum, signing
//! through the full path, an audit, a 2-of-3 threshold key dealt over the three clusters and
//! used by pairs of them, and a node killed while requests are still served.
//! Every signature is checked with nothing but public data. It exits 0 only if every step
//! verified, and writes a machine-readable JSON report.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1};
use custos::cluster::LinkTransport;
use custos::dealer::{generate_primes_file, read_primes, PrimeSource};
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
use zeroize::Zeroizing;

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

/// Runs the walk-through; with `keep_running` the deployment stays up afterwards.
/// The committed TEST-ONLY Paillier primes of the threshold crate (Blum primes, not safe
/// primes), used by the demo so that it does not spend minutes generating safe primes.
fn demo_primes(real_primes: bool) -> (PrimeSource, &'static str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json");
    if !real_primes && fixture.exists() {
        (
            PrimeSource::File(fixture),
            "TEST-ONLY committed Blum primes (demo only; production: `custos dealer primes`)",
        )
    } else {
        (
            PrimeSource::Generate,
            "real safe primes generated now (minutes)",
        )
    }
}

/// Runs the demo; see the module documentation.
pub fn run(
    dir: Option<PathBuf>,
    report: &Path,
    keep_running: bool,
    real_primes: bool,
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
    let mut steps = Steps { log: Vec::new() };
    println!("Custos demo in {}", dir.display());
    let t0 = Instant::now();
    let mut dep = Deployment::start(
        &exe,
        &dir,
        &DeploymentOptions {
            clusters: vec![
                ("dc1".into(), LinkTransport::Tcp),
                ("dc2".into(), LinkTransport::Spool),
                ("dc3".into(), LinkTransport::Tcp),
            ],
            nodes: 3,
            admins: vec!["alice".into(), "bob".into(), "carol".into()],
            sync_interval_secs: 2,
            audit_interval_secs: 3600,
            cloud_db_url: None,
        },
    )?;
    steps.ok(
        "deployment",
        format!(
            "PKI (Root, Admin CA, Device CA, Cluster CAs dc1/dc2/dc3, admins alice/bob/carol), \
             3 clusters x 3 nodes (node server + TEE process each), bridges, external relays \
             (dc1, dc3: TCP link, dc2: spool-directory link), cloud server at {} in {:.1} s",
            dep.api_url,
            t0.elapsed().as_secs_f64()
        ),
    );
    let alice = dep.admin("alice")?;
    let bob = dep.admin("bob")?;
    let client = dep.client()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut wallets: Vec<Wallet> = Vec::new();
    let mut signed: Vec<Signed> = Vec::new();
    let mut audits = Vec::new();

    rt.block_on(async {
        // Provisioning: every node of every cluster registered, healthy, certified.
        for c in ["dc1", "dc2", "dc3"] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let st = client.cluster(c).await?;
                if st.nodes.len() == 3 && st.nodes.iter().all(|n| n.healthy) {
                    let names: Vec<_> = st.nodes.iter().map(|n| n.node.clone()).collect();
                    steps.ok(
                        "provisioning",
                        format!("{c}: {} healthy, device keys certified by the Cluster CA", names.join(", ")),
                    );
                    break;
                }
                if Instant::now() > deadline {
                    return Err(fail(&format!("{c} nodes not all healthy: {st:?}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        // Wallet creation under quorum: dc1 needs alice and bob, dc2 alice alone.
        for (cluster, quorum, signers) in [
            ("dc1", 2u8, vec![&alice, &bob]),
            ("dc2", 1u8, vec![&alice]),
        ] {
            let view = client
                .create_wallet(&CreateWalletBody {
                    cluster: cluster.into(),
                    quorum,
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let view = approve_all(&client, view, &signers).await?;
            status_is(&view, RequestStatus::Completed, "wallet creation")?;
            let (root_id, xpub) = wallet_of(&view)?;
            steps.ok(
                "create-wallet",
                format!("{cluster}: quorum {quorum}, root {}…, {}…", &root_id[..16], &xpub[..20]),
            );
            wallets.push(Wallet {
                cluster: cluster.into(),
                root_id,
                xpub,
                quorum,
                origin: "created",
            });
        }

        // Import from a BIP-39 mnemonic: sealed by the cloud server to one node's device
        // key; the root xpub must be the one the mnemonic yields.
        let view = client
            .import_wallet(&ImportWalletBody {
                cluster: "dc1".into(),
                quorum: 1,
                mnemonic: Some(SecretText::new(DEMO_MNEMONIC)),
                passphrase: None,
                seed_hex: None,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let target = view.target_node.clone().unwrap_or_default();
        let view = approve_all(&client, view, &[&alice]).await?;
        status_is(&view, RequestStatus::Completed, "wallet import")?;
        let (root_id, xpub) = wallet_of(&view)?;
        let seed = bip39::Mnemonic::parse_normalized(DEMO_MNEMONIC)?.to_seed("");
        let secp = Secp256k1::new();
        let expected = Xpub::from_priv(&secp, &Xpriv::new_master(bitcoin::Network::Bitcoin, &seed)?);
        if xpub != expected.to_string() {
            return Err(fail("imported wallet's xpub differs from the mnemonic's"));
        }
        steps.ok(
            "import-wallet",
            format!("dc1: BIP-39 mnemonic sealed (HPKE) to {target}'s device key; root xpub matches the mnemonic"),
        );
        wallets.push(Wallet {
            cluster: "dc1".into(),
            root_id,
            xpub,
            quorum: 1,
            origin: "imported",
        });

        // Sync: every node of each cluster holds every wallet of its cluster.
        for c in ["dc1", "dc2"] {
            let want = wallets.iter().filter(|w| w.cluster == c).count() as u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = client.cluster(c).await?;
                if st.nodes.iter().all(|n| n.keys_held >= want) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(fail(&format!("{c} not synced to {want} keys: {st:?}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            steps.ok("sync", format!("{c}: all 3 nodes hold its {want} wallet(s)"));
        }

        // Public derivation without any TEE.
        let w = &wallets[0];
        let d = client
            .derive(
                &w.root_id,
                &DeriveQuery {
                    path: Some("m/0".into()),
                    start: Some(0),
                    count: Some(3),
                },
            )
            .await?;
        let local = public_child(&w.xpub, &DerivationPath::from_str("m/0/2")?)?;
        let listed = d.addresses.as_ref().and_then(|a| a.get(2)).ok_or_else(|| fail("no address list"))?;
        if listed.public_key != hex::encode(local.serialize()) {
            return Err(fail("derived public key differs from local derivation"));
        }
        steps.ok(
            "derive",
            format!("dc1 wallet m/0/0..2 from the xpub, no TEE: {}", listed.address),
        );

        // Signing through the full path, with approvals.
        let jobs: Vec<(usize, &str, [u8; 32], &'static str)> = vec![
            (0, "m/0/7", [0x11; 32], "quorum 2 (alice, bob), non-hardened path"),
            (0, "m/44'/0'/0'/0/0", [0x12; 32], "quorum 2, hardened BIP-44 path"),
            (1, "m/0/0", [0x21; 32], "dc2 via the spool link"),
            (2, "m/84'/0'/0'/0/0", [0x31; 32], "imported wallet, BIP-84 path"),
        ];
        for (wi, path, digest, note) in jobs {
            let w = &wallets[wi];
            let view = client
                .sign(&SignRequestBody {
                    root_id: w.root_id.clone(),
                    path: path.into(),
                    digest: hex::encode(digest),
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let signers: Vec<&AdminSigner> = [&alice, &bob][..w.quorum as usize].to_vec();
            let view = approve_all(&client, view, &signers).await?;
            status_is(&view, RequestStatus::Completed, "signing")?;
            let sig = signature_of(&view)?;
            let dpath = DerivationPath::from_str(path)?;
            let expected = if w.origin == "imported" {
                // The demo knows this seed: check even hardened paths independently.
                let xprv = Xpriv::new_master(bitcoin::Network::Bitcoin, &seed)?.derive_priv(&secp, &dpath)?;
                PublicKey::from_secret_key(&secp, &xprv.private_key)
            } else if dpath.into_iter().any(|c| c.is_hardened()) {
                // Hardened: only the signer's own answer names the key; the signature must
                // still verify and recover to it.
                PublicKey::from_slice(&hex::decode(&sig.public_key)?)?
            } else {
                public_child(&w.xpub, &dpath)?
            };
            verify_signature(&sig, &digest, &expected)?;
            steps.ok(
                "sign",
                format!("{} {path}: {note}; verified (ECDSA, low-s, key recovery)", w.cluster),
            );
            signed.push(Signed {
                cluster: w.cluster.clone(),
                root_id: w.root_id.clone(),
                path: path.into(),
                digest,
                sig,
                request_id: view.id.clone(),
                note,
            });
        }

        // Quorum: one approval of two leaves the request pending; it is never signed.
        let w = &wallets[0];
        let pending = client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: "m/0/8".into(),
                digest: hex::encode([0x13; 32]),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let pending = approve(&client, &alice, &pending.id).await?;
        status_is(&pending, RequestStatus::PendingApproval, "one of two approvals")?;
        if pending.result.is_some() || pending.attempts != 0 {
            return Err(fail("a request without quorum reached a TEE"));
        }
        steps.ok("quorum", "1 of 2 approvals: request stays pending, never submitted");

        // Audit through the cloud server: every key on every node signs a fresh message.
        for c in ["dc1", "dc2"] {
            let a = client.run_audit(c).await?;
            let bad: Vec<_> = a
                .nodes
                .iter()
                .filter(|n| !n.missing.is_empty() || !n.wrong.is_empty() || n.error.is_some())
                .collect();
            if !bad.is_empty() || a.nodes.len() != 3 {
                return Err(fail(&format!("audit of {c} flagged nodes: {a:?}")));
            }
            let checked: u64 = a.nodes.iter().map(|n| n.checked).sum();
            steps.ok("audit", format!("{c}: {checked} key checks on 3 nodes, all verified against the key list"));
            audits.push(serde_json::to_value(&a)?);
        }
        Ok::<(), AnyError>(())
    })?;

    // Threshold ECDSA across clusters (patent FIG. 12-15, 17): the dealer program deals a
    // 2-of-3 HD key, one share per cluster sealed to its first node; each import is
    // approved; then pairs of clusters sign through the cloud server, which only relays
    // D-signed messages whose point-to-point content is sealed to the receiving node.
    let (primes, primes_note) = demo_primes(real_primes);
    let t_deal = Instant::now();
    let dealt = dep.deal_threshold("acme", 2, &["dc1", "dc2", "dc3"], 2, true, primes)?;
    let threshold_key = hex::encode(&dealt.key.key_id);
    steps.ok(
        "threshold-deal",
        format!(
            "dealer acme: 2-of-3 HD key {}… in {:.1} s with {primes_note}; bundles sealed to \
             dc1-node1, dc2-node1, dc3-node1 and signed by the dealer certificate",
            &threshold_key[..16],
            t_deal.elapsed().as_secs_f64()
        ),
    );
    let mut threshold_sigs = Vec::new();
    let mut threshold_audit = None;
    let threshold_xpub = rt.block_on(async {
        let imports = import_threshold(&client, &dealt, &[&alice, &bob]).await?;
        for v in &imports {
            status_is(v, RequestStatus::Completed, "threshold share import")?;
        }
        let key = client.threshold_key(&threshold_key).await?;
        if !key.missing_shares.is_empty() {
            return Err(fail("threshold shares missing after import"));
        }
        let xpub = key
            .xpub
            .clone()
            .ok_or_else(|| fail("threshold key has no xpub"))?;
        steps.ok(
            "threshold-import",
            "each cluster's share imported by its first node's TEE (dealer signature, sealing \
             and alice+bob's approvals checked there)",
        );
        for (i, pair) in [Some(["dc1", "dc2"]), Some(["dc2", "dc3"]), None]
            .into_iter()
            .enumerate()
        {
            let digest: [u8; 32] = rand::random();
            let path = format!("m/0/{i}");
            let t = Instant::now();
            let view = client
                .threshold_sign(&ThresholdSignBody {
                    key_id: threshold_key.clone(),
                    path: path.clone(),
                    digest: hex::encode(digest),
                    message: None,
                    clusters: pair.map(|p| p.iter().map(|c| c.to_string()).collect()),
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let view = approve_all(&client, view, &[&alice, &bob]).await?;
            status_is(&view, RequestStatus::Completed, "threshold signing")?;
            let sig = signature_of(&view)?;
            verify_signature(
                &sig,
                &digest,
                &public_child(&xpub, &DerivationPath::from_str(&path)?)?,
            )?;
            let used = sig.clusters.clone().unwrap_or_default();
            steps.ok(
                "threshold-sign",
                format!(
                    "{} signed {path} in {:.1} s (getAB, getAB_and_R, getR, getSig relayed by \
                     the cloud server); verified against the xpub's child",
                    used.join(" + "),
                    t.elapsed().as_secs_f64()
                ),
            );
            threshold_sigs.push(json!({
                "clusters": used, "path": path, "digest": hex::encode(digest),
                "child_public_key": sig.public_key, "r": sig.r, "s": sig.s, "v": sig.v,
                "request_id": view.id, "verified": true,
            }));
        }
        // Threshold audit ([0086]): every share-holding cluster signs a fresh 8-byte
        // message's audit digest with the joint root key, in groups of t.
        let audit = client.threshold_audit(&threshold_key).await?;
        let bad: Vec<_> = audit.clusters.iter().filter(|c| !c.ok).collect();
        if !bad.is_empty() || audit.sessions.iter().any(|s| !s.verified) {
            return Err(fail(&format!("threshold audit flagged: {audit:?}")));
        }
        steps.ok(
            "threshold-audit",
            format!(
                "{} session(s) over {}: each signed a fresh 8-byte audit message with the joint \
                 root key; all verified",
                audit.sessions.len(),
                audit
                    .clusters
                    .iter()
                    .map(|c| c.cluster.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        threshold_audit = Some(serde_json::to_value(&audit)?);
        Ok::<String, AnyError>(xpub)
    })?;

    // Presignatures (online getSig): a 2-of-3 key without chain code (presignatures never
    // serve HD derivation); pairs of clusters make presignatures ahead of time, each held
    // only inside their TEEs; a full message is then signed in one short exchange, each TEE
    // hashing the message itself and deleting its presignature durably before answering.
    let (primes, _) = demo_primes(real_primes);
    let plain = dep.deal_threshold("acme", 2, &["dc1", "dc2", "dc3"], 2, false, primes)?;
    let plain_key = hex::encode(&plain.key.key_id);
    let mut online_sigs = Vec::new();
    let presign_report = rt.block_on(async {
        for v in import_threshold(&client, &plain, &[&alice, &bob]).await? {
            status_is(&v, RequestStatus::Completed, "threshold share import")?;
        }
        let t = Instant::now();
        let pool = client
            .make_presignatures(
                &plain_key,
                &MakePresignaturesBody {
                    count: 3,
                    clusters: None,
                },
            )
            .await?;
        if pool.made.len() != 3 || !pool.failed.is_empty() {
            return Err(fail(&format!("presignatures not made: {pool:?}")));
        }
        steps.ok(
            "threshold-presign",
            format!(
                "2-of-3 key {}… without chain code dealt and imported; 3 presignatures made by \
                 {} in {:.1} s, each sealed inside both TEEs",
                &plain_key[..16],
                pool.made[0].clusters.join(" + "),
                t.elapsed().as_secs_f64()
            ),
        );
        let key = PublicKey::from_slice(&plain.key.key_id)?;
        for i in 0..2 {
            let message = format!("custos demo: pay invoice {i} of 0.0{i}5 BTC to bc1qdemo");
            let digest = sha256::Hash::hash(message.as_bytes()).to_byte_array();
            let t = Instant::now();
            let view = client
                .threshold_sign(&ThresholdSignBody {
                    key_id: plain_key.clone(),
                    path: "m".into(),
                    digest: String::new(),
                    message: Some(hex::encode(message.as_bytes())),
                    clusters: None,
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let view = approve_all(&client, view, &[&alice, &bob]).await?;
            status_is(&view, RequestStatus::Completed, "online threshold signing")?;
            let sig = signature_of(&view)?;
            verify_signature(&sig, &digest, &key)?;
            let presignature = sig
                .presignature
                .clone()
                .ok_or_else(|| fail("online signing used no presignature"))?;
            steps.ok(
                "threshold-online",
                format!(
                    "{:?} signed by {} from presignature {}… in {:.0} ms (request, alice's \
                     and bob's approvals, getSig only); verified against the joint key",
                    message,
                    sig.clusters.clone().unwrap_or_default().join(" + "),
                    &presignature[..16],
                    t.elapsed().as_secs_f64() * 1e3
                ),
            );
            online_sigs.push(json!({
                "message": message, "digest": hex::encode(digest),
                "presignature": presignature, "clusters": sig.clusters,
                "r": sig.r, "s": sig.s, "v": sig.v, "request_id": view.id, "verified": true,
            }));
        }
        let left = client.presignatures(&plain_key).await?;
        Ok::<_, AnyError>(json!({
            "key_id": plain_key,
            "threshold": 2,
            "clusters": ["dc1", "dc2", "dc3"],
            "presignatures_made": pool.made,
            "presignatures_left": left.ready.len(),
            "online_signatures": online_sigs,
        }))
    })?;

    // Distributed key generation: the three clusters' TEEs make a 2-of-3 HD key together
    // through the cloud server (key generation, then each TEE's Paillier aux info); no dealer
    // and no single process ever holds the key. Each TEE gets one primes set first (the
    // TEST-ONLY fixture, or real safe primes generated now with --real-primes).
    let t_primes = Instant::now();
    let sets = match demo_primes(real_primes).0 {
        PrimeSource::File(f) => read_primes(&f)?,
        PrimeSource::Generate => {
            let f = dir.join("dkg-primes.json");
            generate_primes_file(3, &f, true)?;
            let sets = read_primes(&f)?;
            std::fs::remove_file(&f)?;
            sets
        }
    };
    for (i, c) in ["dc1", "dc2", "dc3"].iter().enumerate() {
        let one = Zeroizing::new(serde_json::to_vec(&[&sets[i]])?);
        dep.provide_tee_primes(c, 0, &one)?;
    }
    drop(sets);
    let dkg_report = rt.block_on(async {
        wait_healthy(&client, &["dc1", "dc2", "dc3"], Duration::from_secs(30)).await?;
        steps.ok(
            "threshold-dkg-primes",
            format!(
                "one Paillier primes set sealed into dc1-node1, dc2-node1 and dc3-node1's TEEs \
                 ({primes_note}) in {:.1} s",
                t_primes.elapsed().as_secs_f64()
            ),
        );
        let t = Instant::now();
        let view =
            create_threshold_key(&client, &["dc1", "dc2", "dc3"], 2, 2, true, &[&alice, &bob])
                .await?;
        status_is(
            &view,
            RequestStatus::Completed,
            "distributed key generation",
        )?;
        let Some(RequestResult::ThresholdKey(made)) = &view.result else {
            return Err(fail("distributed key generation returned no key"));
        };
        let xpub = made
            .xpub
            .clone()
            .ok_or_else(|| fail("the new HD key has no xpub"))?;
        steps.ok(
            "threshold-dkg",
            format!(
                "2-of-3 HD key {}… made by dc1, dc2 and dc3 in {:.1} s (keygen, auxInfo relayed \
                 by the cloud server; alice+bob approved); no dealer, no process held the key",
                &made.key_id[..16],
                t.elapsed().as_secs_f64()
            ),
        );
        let digest: [u8; 32] = rand::random();
        let path = "m/1/5";
        let t = Instant::now();
        let view = client
            .threshold_sign(&ThresholdSignBody {
                key_id: made.key_id.clone(),
                path: path.into(),
                digest: hex::encode(digest),
                message: None,
                clusters: Some(vec!["dc3".into(), "dc1".into()]),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let view = approve_all(&client, view, &[&alice, &bob]).await?;
        status_is(&view, RequestStatus::Completed, "signing with the DKG key")?;
        let sig = signature_of(&view)?;
        verify_signature(
            &sig,
            &digest,
            &public_child(&xpub, &DerivationPath::from_str(path)?)?,
        )?;
        steps.ok(
            "threshold-dkg-sign",
            format!(
                "dc3 + dc1 signed {path} with the DKG key in {:.1} s; verified against the xpub's \
                 child",
                t.elapsed().as_secs_f64()
            ),
        );
        Ok::<_, AnyError>(json!({
            "key_id": made.key_id, "xpub": xpub, "threshold": 2,
            "clusters": ["dc1", "dc2", "dc3"], "origin": "dkg", "request_id": view.id,
            "signature": {
                "clusters": sig.clusters, "path": path, "digest": hex::encode(digest),
                "child_public_key": sig.public_key, "r": sig.r, "s": sig.s, "v": sig.v,
                "verified": true,
            },
        }))
    })?;

    // A node killed (server and TEE): the cluster still serves.
    {
        let c = dep.cluster_mut("dc1").ok_or_else(|| fail("no dc1"))?;
        c.kill_node_server(0);
        c.kill_tee(0);
    }
    rt.block_on(async {
        let w = &wallets[0];
        let digest = [0x14u8; 32];
        let view = client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: "m/0/9".into(),
                digest: hex::encode(digest),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let view = approve_all(&client, view, &[&alice, &bob]).await?;
        status_is(&view, RequestStatus::Completed, "signing with a node down")?;
        let sig = signature_of(&view)?;
        verify_signature(
            &sig,
            &digest,
            &public_child(&w.xpub, &DerivationPath::from_str("m/0/9")?)?,
        )?;
        steps.ok(
            "node-killed",
            "dc1-node1 (server and TEE) killed; request served by another node, verified",
        );
        signed.push(Signed {
            cluster: w.cluster.clone(),
            root_id: w.root_id.clone(),
            path: "m/0/9".into(),
            digest,
            sig,
            request_id: view.id.clone(),
            note: "served with dc1-node1 down",
        });
        Ok::<(), AnyError>(())
    })?;

    let doc = json!({
        "custos_demo": 2,
        "api": dep.api_url,
        "clusters": [
            {"name": "dc1", "nodes": 3, "link": "tcp"},
            {"name": "dc2", "nodes": 3, "link": "spool"},
            {"name": "dc3", "nodes": 3, "link": "tcp"},
        ],
        "threshold": {
            "key_id": threshold_key,
            "xpub": threshold_xpub,
            "threshold": 2,
            "clusters": ["dc1", "dc2", "dc3"],
            "origin": "dealer",
            "primes": primes_note,
            "signatures": threshold_sigs,
            "audit": threshold_audit,
            "presignatures": presign_report,
            "dkg": dkg_report,
        },
        "wallets": wallets.iter().map(|w| json!({
            "cluster": w.cluster, "root_id": w.root_id, "root_xpub": w.xpub,
            "quorum": w.quorum, "origin": w.origin,
        })).collect::<Vec<_>>(),
        "signatures": signed.iter().map(|s| json!({
            "cluster": s.cluster, "root_id": s.root_id, "path": s.path,
            "digest": hex::encode(s.digest), "child_public_key": s.sig.public_key,
            "r": s.sig.r, "s": s.sig.s, "v": s.sig.v, "request_id": s.request_id,
            "note": s.note, "verified": true,
        })).collect::<Vec<_>>(),
        "audits": audits,
        "steps": steps.log,
        "all_verified": true,
    });
    std::fs::write(report, serde_json::to_vec_pretty(&doc)?)?;
    println!(
        "all {} steps verified in {:.1} s; report written to {}",
        doc["steps"].as_array().map(|a| a.len()).unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        report.display()
    );
    if keep_running {
        if let Some(c) = dep.cluster_mut("dc1") {
            c.restart_node(0)?;
        }
        println!();
        println!(
            "The deployment stays up (Ctrl-C to stop). REST API: {}",
            dep.api_url
        );
        println!("  export CUSTOS_API_TOKEN={}", dep.api_token);
        println!(
            "  curl -H \"Authorization: Bearer $CUSTOS_API_TOKEN\" {}/v1/clusters",
            dep.api_url
        );
        println!("  curl {}/openapi.json", dep.api_url);
        println!(
            "  custos approve --api {} --pki {} --admin alice --list",
            dep.api_url,
            dep.pki.path().display()
        );
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    drop(dep);
    Ok(())
}
