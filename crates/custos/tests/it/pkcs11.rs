//! An admin whose key lives on a PKCS#11 token (SoftHSM2, Debian's `softhsm2`) approves
//! through real processes: `custos admin keygen --pkcs11-…` makes the key on a fresh token,
//! `custos pki sign-admin-csr` certifies it from the CSR, and `custos approve --pkcs11-…`
//! approves a wallet creation and a signature end to end (cloud → relay → link → bridge →
//! node → TEE). Without the module the test skips, unless `CUSTOS_TEST_REQUIRE_SOFTHSM` is
//! set (CI), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use custos_cloud_api::{CreateWalletBody, RequestResult, RequestStatus, SignRequestBody};

use crate::common::{exe, CLUSTER};
use crate::e2e::verify_against_xpub;

/// Where Debian installs SoftHSM2's PKCS#11 module.
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "custos-admin-token";
const KEY_LABEL: &str = "tokenadmin";
const PIN: &str = "246810";

fn softhsm_module() -> Option<PathBuf> {
    let found = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CUSTOS_TEST_REQUIRE_SOFTHSM").is_none(),
            "CUSTOS_TEST_REQUIRE_SOFTHSM is set but no SoftHSM2 module is installed \
             (apt-get install softhsm2)"
        );
        eprintln!("skipping: SoftHSM2 is not installed (apt-get install softhsm2)");
    }
    found
}

/// A fresh SoftHSM2 token store in `dir` with one initialised token; returns its config file.
fn fresh_token(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN])
        .args(["--so-pin", "13579135", "--pin", PIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

/// Runs the `custos` binary with the token's configuration and `pin` in the environment.
fn custos(conf: &Path, pin: &str, args: &[&str]) -> Output {
    Command::new(exe())
        .env("SOFTHSM2_CONF", conf)
        .env("CUSTOS_PKCS11_PIN", pin)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_admin_approves_wallet_creation_and_signing_end_to_end() {
    let Some(module) = softhsm_module() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = fresh_token(dir.path());
    let d = Deployment::start(
        &exe(),
        &dir.path().join("deployment"),
        &DeploymentOptions {
            clusters: vec![(CLUSTER.into(), LinkTransport::Tcp)],
            nodes: 1,
            admins: Vec::new(),
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let module = module.to_str().unwrap();
    let admin_dir = dir.path().join("tokenadmin");
    let admin = admin_dir.to_str().unwrap();
    let token_args = [
        "--pkcs11-module",
        module,
        "--pkcs11-token",
        TOKEN,
        "--pkcs11-key",
        KEY_LABEL,
    ];

    // The key is made on the token: the admin's folder gets a CSR and no key file.
    let mut keygen = vec!["admin", "keygen", "--name", "tokenadmin", "--dir", admin];
    keygen.extend(token_args);
    ok(custos(&conf, PIN, &keygen));
    let files: Vec<_> = std::fs::read_dir(&admin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, vec!["admin.csr".to_string()]);
    // A second keygen under the same label is refused, the first key kept.
    let again = custos(&conf, PIN, &keygen);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a key"));

    let chain = admin_dir.join("admin.crt");
    ok(custos(
        &conf,
        PIN,
        &[
            "pki",
            "--dir",
            d.pki.path().to_str().unwrap(),
            "sign-admin-csr",
            "--csr",
            admin_dir.join("admin.csr").to_str().unwrap(),
            "--out",
            chain.to_str().unwrap(),
        ],
    ));

    let client = d.client().unwrap();
    let approve = |pin: &str, id: &str| {
        let mut args = vec![
            "approve",
            "--api",
            &d.api_url,
            "--cert",
            chain.to_str().unwrap(),
            "--request",
            id,
            "--yes",
        ];
        args.extend(token_args);
        let mut cmd = Command::new(exe());
        cmd.env("SOFTHSM2_CONF", &conf)
            .env("CUSTOS_PKCS11_PIN", pin)
            .env("CUSTOS_API_TOKEN", &d.api_token)
            .args(&args);
        cmd.output().unwrap()
    };

    let view = client
        .create_wallet(&CreateWalletBody {
            rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            cluster: CLUSTER.into(),
            quorum: 1,
            group: vec![hex::encode(
                custos_pki::chain_key_fingerprint(&std::fs::read_to_string(&chain).unwrap())
                    .unwrap(),
            )],
            executor: None,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap();
    // A wrong PIN signs nothing and says why.
    let refused = approve("999999", &view.id);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("login to token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(client.request(&view.id).await.unwrap().approvals.is_empty());

    ok(approve(PIN, &view.id));
    let view = client.request(&view.id).await.unwrap();
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    assert_eq!(view.approvals[0].admin, "tokenadmin");
    let Some(RequestResult::Wallet(w)) = view.result else {
        panic!("no wallet: {view:?}")
    };

    let digest = [0x42u8; 32];
    let sign = client
        .sign(&SignRequestBody {
            root_id: w.root_id.clone(),
            path: "m/0/7".into(),
            digest: hex::encode(digest),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap();
    ok(approve(PIN, &sign.id));
    let sign = client.request(&sign.id).await.unwrap();
    assert_eq!(sign.status, RequestStatus::Completed, "{sign:?}");
    let Some(RequestResult::Signature(sig)) = &sign.result else {
        panic!("no signature: {sign:?}")
    };
    verify_against_xpub(sig, &digest, &w.xpub, "m/0/7");
    drop(d);
}
