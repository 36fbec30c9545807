//! What the custos tests share: real TEE core processes started from the `custos` binary
//! ([`Tee`], [`Fixture`]), deployments of it, the sealed store of a stopped TEE process as an
//! attacker with disk access sees it, and an independent signature check (k256).
//!
//! This stays here rather than in `custos-test-kit`: it runs the `custos` binary
//! (`CARGO_BIN_EXE_custos`, set only for this crate's tests) and uses its library
//! (`custos::tee_process`, `custos::deployment`, `custos::ops`), which the test kit must not
//! link. What is generic comes from the test kit: the PKI ([`Pki`]) and PostgreSQL schemas.

pub mod bip32_vectors;
pub mod proxy;

use std::path::{Path, PathBuf};

use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use custos::ops::{approvals, new_meta, provision};
use custos::tee_plan::TeePlan;
use custos::tee_process::{KeyArg, TeePlatform, TeeProcess};
use custos_pki::PkiDir;
pub use custos_test_kit::Pki;
use custos_wire::approval::{Action, Approval};
use custos_wire::client::{ClientError, TeeClient};
use custos_wire::protocol::{
    ImportSecret, KeyInfo, Request, RequestMeta, Response, SecretBytes, TeeError,
};

pub const CLUSTER: &str = "dc1";

/// The `custos` binary the tests start: this package's own (built with the feature
/// `insecure-test-primes`), or another build named by `CUSTOS_TEST_EXE`, e.g. a release
/// build without the feature, to show that it refuses what tests let it refuse
/// (`CUSTOS_TEST_EXE=target/release/custos ... dkg::a_tee_process_refuses`).
pub fn exe() -> PathBuf {
    std::env::var_os("CUSTOS_TEST_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_custos")))
}

/// The deployment's admin alice, its API client, and a runtime to drive the client.
pub fn alice_client(
    dep: &Deployment,
) -> (
    custos_pki::AdminSigner,
    custos_cloud_api::client::CloudClient,
    tokio::runtime::Runtime,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (dep.admin("alice").unwrap(), dep.client().unwrap(), rt)
}

/// The threshold tests' clusters.
pub const THRESHOLD_CLUSTERS: [&str; 3] = ["dc1", "dc2", "dc3"];

/// A deployment of [`THRESHOLD_CLUSTERS`] (TCP links) with `nodes` nodes each and admin
/// alice, in `dir`.
pub fn three_clusters(dir: &Path, nodes: usize, sync_interval_secs: u64) -> Deployment {
    three_clusters_on(dir, nodes, sync_interval_secs, &TeePlan::default())
}

/// [`three_clusters`] with each node's TEE where `plan` says (e.g. one on a TPM).
pub fn three_clusters_on(
    dir: &Path,
    nodes: usize,
    sync_interval_secs: u64,
    plan: &TeePlan,
) -> Deployment {
    Deployment::start_on(
        &exe(),
        dir,
        &DeploymentOptions {
            clusters: THRESHOLD_CLUSTERS
                .iter()
                .map(|c| (c.to_string(), LinkTransport::Tcp))
                .collect(),
            nodes,
            admins: vec!["alice".into()],
            sync_interval_secs,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
        plan,
    )
    .unwrap()
}

/// Governs `cluster` through the REST API: a genesis naming `members` and the governors
/// `admins` (any `quorum` of them), approved by the first `quorum` admins.
pub async fn govern(
    client: &custos_cloud_api::client::CloudClient,
    cluster: &str,
    members: &[String],
    admins: &[&custos_pki::AdminSigner],
    quorum: u8,
) {
    let mut view = client
        .propose_genesis(
            cluster,
            &custos_cloud_api::GenesisBody {
                governors: admins
                    .iter()
                    .map(|a| hex::encode(a.key_fingerprint()))
                    .collect(),
                quorum,
                members: members.to_vec(),
                measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
                    allow_software: true,
                    ..Default::default()
                }),
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    for a in &admins[..usize::from(quorum)] {
        view = custos::deployment::approve(client, a, &view.id)
            .await
            .unwrap();
    }
    assert_eq!(
        view.status,
        custos_cloud_api::RequestStatus::Completed,
        "{cluster}: {view:?}"
    );
}

/// One TEE process (unprovisioned until `provision`).
pub struct Tee {
    pub process: TeeProcess,
    pub client: TeeClient,
    pub key_file: PathBuf,
    pub device_key: Option<Vec<u8>>,
}

impl Tee {
    pub fn start(dir: &Path, name: &str) -> Self {
        Self::start_on(dir, name, TeePlatform::Software)
    }

    /// [`Tee::start`] on `platform` (kept at every restart).
    pub fn start_on(dir: &Path, name: &str, platform: TeePlatform) -> Self {
        let key_file = dir.join(format!("{name}.key"));
        if !key_file.exists() {
            custos_tee_host::sealed::generate_key_file(&key_file).unwrap();
        }
        let process = TeeProcess::start_on(
            &exe(),
            &dir.join(format!("{name}.sock")),
            &dir.join(format!("{name}-store")),
            KeyArg::File(key_file.clone()),
            platform,
        )
        .unwrap();
        let client = process.client().unwrap();
        Tee {
            process,
            client,
            key_file,
            device_key: None,
        }
    }

    pub fn provision(&mut self, pki: &PkiDir, cluster: &str, node: &str) {
        let info = provision(&mut self.client, pki, cluster, node).unwrap();
        self.device_key = Some(info.public_key);
    }

    /// Kill -9, restart, reconnect and re-pin the device key.
    pub fn crash_and_restart(&mut self) {
        self.process.kill();
        self.process.restart().unwrap();
        self.client = self.process.client().unwrap();
        if let Some(pk) = self.device_key.clone() {
            self.client.expect_device_key(pk);
        }
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.client.call(req)
    }

    pub fn status(&mut self) -> custos_wire::protocol::Status {
        match self.call(&Request::Status).unwrap() {
            Response::Status(s) => s,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn keys(&mut self) -> Vec<KeyInfo> {
        match self.call(&Request::ListKeys).unwrap() {
            Response::Keys(k) => k,
            r => panic!("unexpected {r:?}"),
        }
    }
}

/// A PKI plus one provisioned TEE of cluster dc1.
pub struct Fixture {
    pub pki: Pki,
    pub tee: Tee,
}

impl Fixture {
    pub fn new() -> Self {
        Self::on(TeePlatform::Software)
    }

    /// [`Fixture::new`] with its TEE on `platform`.
    pub fn on(platform: TeePlatform) -> Self {
        let pki = Pki::new();
        let mut tee = Tee::start_on(pki.path(), "node1", platform);
        tee.provision(&pki.pki, CLUSTER, "node1");
        Fixture { pki, tee }
    }

    pub fn create_wallet(&mut self, quorum: u8, signers: &[&str]) -> KeyInfo {
        match self
            .tee
            .call(&self.create_wallet_request(quorum, signers))
            .unwrap()
        {
            Response::Wallet(k) => k,
            r => panic!("unexpected {r:?}"),
        }
    }

    /// A CreateWallet request of quorum `quorum`, approved by `signers`, under a new id.
    pub fn create_wallet_request(&self, quorum: u8, signers: &[&str]) -> Request {
        let meta = new_meta(600);
        let approvals = approvals(
            &self.pki.admins_named(signers),
            CLUSTER,
            &meta,
            &Action::CreateWallet { quorum },
        )
        .unwrap();
        Request::CreateWallet {
            meta,
            quorum,
            approvals,
        }
    }

    /// A wallet of approver group `signers` (quorum `quorum`, approved by them), executed
    /// by this fixture's node: how a governed cluster creates wallets.
    pub fn create_group_wallet(&mut self, quorum: u8, signers: &[&str]) -> KeyInfo {
        let chain = match self.tee.call(&Request::DeviceChain).unwrap() {
            Response::DeviceChain(c) => c,
            r => panic!("unexpected {r:?}"),
        };
        let executor = custos_test_kit::governance::member(&self.pki, &chain).key_fingerprint;
        let policy = custos_cloud_api::approval::new_wallet_policy(
            custos_test_kit::governance::admin_keys(&self.pki, signers),
            quorum,
        );
        let meta = new_meta(600);
        let action = Action::CreateGroupWallet {
            policy: &policy,
            executor: &executor,
        };
        let approvals =
            approvals(&self.pki.admins_named(signers), CLUSTER, &meta, &action).unwrap();
        match self
            .tee
            .call(&Request::CreateGroupWallet {
                meta,
                policy,
                executor,
                approvals,
            })
            .unwrap()
        {
            Response::Wallet(k) => k,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn import_seed(&mut self, seed: &[u8], quorum: u8) -> Result<KeyInfo, ClientError> {
        let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Main, seed).unwrap();
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let key_id = bitcoin::bip32::Xpub::from_priv(&secp, &master)
            .public_key
            .serialize()
            .to_vec();
        let meta = new_meta(600);
        let action = Action::ImportWallet {
            quorum,
            key_id: &key_id,
        };
        let approvals = approvals(&[self.pki.admin("alice")], CLUSTER, &meta, &action).unwrap();
        self.tee
            .call(&Request::ImportWallet {
                meta,
                quorum,
                key_id,
                secret: ImportSecret::Seed(SecretBytes(seed.to_vec())),
                approvals,
            })
            .map(|r| match r {
                Response::Wallet(k) => k,
                r => panic!("unexpected {r:?}"),
            })
    }

    /// Approvals by `signers` for signing `digest` at `path` with `key`.
    pub fn sign_approvals(
        &self,
        meta: &RequestMeta,
        key: &[u8],
        path: &[u32],
        digest: &[u8; 32],
        signers: &[&str],
    ) -> Vec<Approval> {
        approvals(
            &self.pki.admins_named(signers),
            CLUSTER,
            meta,
            &Action::Sign {
                key_id: key,
                path,
                digest,
            },
        )
        .unwrap()
    }

    pub fn sign(
        &mut self,
        key: &[u8],
        path: &[u32],
        digest: [u8; 32],
        signers: &[&str],
    ) -> Result<Response, ClientError> {
        let request = self.sign_request(key, path, digest, signers);
        self.tee.call(&request)
    }

    /// A Sign request of `digest` at `path` with `key`, approved by `signers`, under a new id.
    pub fn sign_request(
        &self,
        key: &[u8],
        path: &[u32],
        digest: [u8; 32],
        signers: &[&str],
    ) -> Request {
        let meta = new_meta(600);
        let approvals = self.sign_approvals(&meta, key, path, &digest, signers);
        Request::Sign {
            meta,
            key_id: key.to_vec(),
            path: path.to_vec(),
            digest,
            approvals,
        }
    }
}

/// The TEE's child public key of `key` at `path` (compressed).
pub fn child_public_key(tee: &mut Tee, key: &[u8], path: &[u32]) -> Vec<u8> {
    match tee
        .call(&Request::GetXpub {
            key_id: key.to_vec(),
            path: path.to_vec(),
        })
        .unwrap()
    {
        Response::Xpub { public_key, .. } => public_key,
        r => panic!("unexpected {r:?}"),
    }
}

const RECORDS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");

/// Rewrites the stored (sealed) bytes of record `name` in a stopped TEE's store, the way
/// an attacker with disk access could, without going through the TEE.
pub fn tamper_record(store: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    use redb::ReadableTable;
    let db = redb::Database::create(store.join("sealed.redb")).unwrap();
    let wtx = db.begin_write().unwrap();
    {
        let mut t = wtx.open_table(RECORDS).unwrap();
        let mut v = t
            .get(name)
            .unwrap()
            .expect("record exists")
            .value()
            .to_vec();
        f(&mut v);
        t.insert(name, v.as_slice()).unwrap();
    }
    wtx.commit().unwrap();
}

/// Deletes record `name` from a stopped TEE's store, as an attacker or a disk fault could.
pub fn remove_record(store: &Path, name: &str) {
    let db = redb::Database::create(store.join("sealed.redb")).unwrap();
    let wtx = db.begin_write().unwrap();
    {
        let mut t = wtx.open_table(RECORDS).unwrap();
        assert!(t.remove(name).unwrap().is_some(), "record {name} exists");
    }
    wtx.commit().unwrap();
}

/// The stored (sealed) bytes of record `name` in a stopped TEE's store.
pub fn stored_record(store: &Path, name: &str) -> Vec<u8> {
    let db = redb::Database::create(store.join("sealed.redb")).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(RECORDS).unwrap();
    let v = t
        .get(name)
        .unwrap()
        .expect("record exists")
        .value()
        .to_vec();
    v
}

/// Unwraps a typed TEE refusal.
pub fn refusal(r: Result<Response, ClientError>) -> TeeError {
    match r {
        Err(ClientError::Tee(e)) => e,
        other => panic!("expected a TEE refusal, got {other:?}"),
    }
}

/// Independent verification with RustCrypto's k256 (not libsecp256k1): the signature
/// verifies under `public_key`, is low-s, and (r, s, v) recovers `public_key`.
pub fn verify_independently(
    sig: &custos_wire::protocol::EcdsaSignature,
    digest: &[u8; 32],
    public_key: &[u8],
) {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
    let vk = VerifyingKey::from_sec1_bytes(public_key).unwrap();
    let s = Signature::from_scalars(sig.r, sig.s).unwrap();
    assert!(s.normalize_s().is_none(), "signature is not low-s");
    vk.verify_prehash(digest, &s).expect("signature verifies");
    let recid = RecoveryId::from_byte(sig.v).expect("v is 0..3");
    let recovered = VerifyingKey::recover_from_prehash(digest, &s, recid).unwrap();
    assert_eq!(recovered, vk, "public key recovered from (r, s, v) differs");
    assert_eq!(sig.public_key, public_key, "TEE reports another signer key");
}

/// One cluster, dc1, of `nodes` nodes over a TCP link, with admins alice and bob (syncing
/// every second), in `dir`: the deployment of the transaction tests.
pub fn dc1_alice_and_bob(dir: &Path, nodes: usize) -> Deployment {
    Deployment::start(
        &exe(),
        dir,
        &DeploymentOptions {
            clusters: vec![(CLUSTER.into(), LinkTransport::Tcp)],
            nodes,
            admins: ["alice", "bob"].map(String::from).to_vec(),
            sync_interval_secs: 1,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap()
}

/// A wallet of dc1 under `rules`, its group alice and bob (`admins`), quorum 1, made by
/// `executor` (else the server's choice) and approved by alice: the completed request.
pub async fn ruled_wallet(
    client: &custos_cloud_api::CloudClient,
    admins: [&custos_pki::AdminSigner; 2],
    rules: Option<custos_cloud_api::PolicyRules>,
    executor: Option<String>,
) -> custos_cloud_api::RequestView {
    use custos_cloud_api::approval::{approval_message, sign_approval};
    let view = client
        .create_wallet(&custos_cloud_api::CreateWalletBody {
            rules,
            cluster: CLUSTER.into(),
            quorum: 1,
            group: admins.map(|a| hex::encode(a.key_fingerprint())).to_vec(),
            executor,
            request_id: None,
            expires_at: None,
            approvals: vec![],
        })
        .await
        .unwrap();
    let message = approval_message(&view).expect("the view carries its terms");
    let done = client
        .approve(&view.id, &sign_approval(admins[0], &message).unwrap())
        .await
        .unwrap();
    assert_eq!(
        done.status,
        custos_cloud_api::RequestStatus::Completed,
        "{done:?}"
    );
    done
}

/// The Python (`CUSTOS_TEST_PYTHON`, else the virtual environment `scripts/test-deps.sh`
/// makes) that imports `module`, or `None` to skip, unless the variable `require` is set.
pub fn python_with(module: &str, require: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CUSTOS_TEST_PYTHON").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/custos/py/bin/python")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but no Python with {module} was found (run scripts/test-deps.sh)"
        );
        eprintln!("skipped: no Python with {module} (run scripts/test-deps.sh)");
    }
    found
}

/// Runs `command` with `input` on its standard input and its standard output captured.
pub fn output_with_stdin(
    command: &mut std::process::Command,
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
