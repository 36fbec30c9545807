//! The approvers' console in a real browser (issue 17, step P3): headless Chromium, driven
//! by playwright-core with a virtual WebAuthn authenticator, against the cloud server's
//! console over TLS. An admin registers a passkey through the console's page while the
//! operator runs the ceremony (`custos::passkey`), confirms the key's fingerprint the page
//! shows, signs in, sees a pending Bitcoin transaction as its intent, approves it with the
//! passkey, and the TEE signs it (verified here with the `bitcoin` crate's own sighash).
//! Attacker first: a foreign origin, no session, an unknown admin and a replayed sign-in
//! are refused by name; axe-core finds no serious violation on any page. Screenshots of
//! the pending and the signed request are kept under `target/console-artifacts`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::sighash::SighashCache;
use bitcoin::ScriptBuf;
use custos::passkey::{begin, certify, enroll_in_console, prove, registered_key};
use custos_cloud::config::ConsoleConfig;
use custos_cloud_api::*;
use custos_pki::Validity;
use custos_test_kit::db::TestDb;
use custos_test_kit::gateway::FakeGateway;
use custos_test_kit::{tls_files, Pki, TestServer};
use custos_tx::synthetic::Spend;
use custos_tx::InputKind;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const HOST: &str = "console.custos.test";

/// Chromium and the npm packages, or `None` (skipped unless required).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let modules = std::env::var_os("CUSTOS_TEST_NODE_DIR")
        .map(PathBuf::from)
        .or_else(custos::foundry::dir)
        .map(|d| d.join("node_modules"))
        .filter(|m| m.join("playwright-core").exists() && m.join("axe-core").exists());
    match (chromium, modules) {
        (Some(c), Some(m)) => Some((c, m)),
        _ => {
            assert!(
                std::env::var_os("CUSTOS_TEST_REQUIRE_BROWSER").is_none(),
                "CUSTOS_TEST_REQUIRE_BROWSER is set but chromium, playwright-core or axe-core \
                 is missing (run scripts/test-deps.sh)"
            );
            eprintln!(
                "skipped: no chromium, playwright-core and axe-core (run scripts/test-deps.sh)"
            );
            None
        }
    }
}

/// The browser, commanded one JSON line at a time (`js/console_driver.cjs`).
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    fn start(chromium: &Path, modules: &Path, origin: &str, artifacts: &Path) -> Driver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/js/console_driver.cjs"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .env("NODE_PATH", modules)
            .env("CHROMIUM", chromium)
            .env("CONSOLE_ORIGIN", origin)
            .env("ARTIFACTS", artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Driver {
            child,
            stdin,
            lines,
        }
    }

    /// Runs `command`; its answer (panics on the driver's error).
    async fn run(&mut self, command: Value) -> Value {
        let answer = self.try_run(command.clone()).await;
        assert_eq!(
            answer["ok"], true,
            "{command}: {} at {}: {}",
            answer["error"], answer["url"], answer["page"]
        );
        answer
    }

    async fn try_run(&mut self, command: Value) -> Value {
        let line = command.to_string() + "\n";
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .expect("the browser answers within 90 s")
            .unwrap()
            .expect("the driver is running");
        serde_json::from_str(&answer).unwrap()
    }

    async fn quit(mut self) {
        let _ = self.try_run(json!({"op": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A loopback port free now (the console's origin names its port before the server binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client of the console as an attacker's script outside the browser would be.
fn raw_client(s: &TestServer) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(s.tls_root.as_ref().unwrap().as_bytes()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve(HOST, s.addr)
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, url: &str, origin: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = c.post(url).json(&body);
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn no_serious_violations(page: &str, axe: &Value) {
    let serious: Vec<&Value> = axe["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(serious.is_empty(), "axe on {page}: {serious:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_registers_a_passkey_signs_in_and_approves_a_transaction_in_chromium() {
    let Some((chromium, modules)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let artifacts =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let port = free_port();
    let origin = format!("https://{HOST}:{port}");
    let admins = dir.path().join("console-admins");
    let (chain, key) = tls_files(dir.path(), &[HOST, "127.0.0.1"]);

    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 2), ("dc2", 1)]);
    let s = TestServer::start_configured(pki, gateway, TestDb::sqlite(), |c| {
        c.listen = SocketAddr::from(([127, 0, 0, 1], port));
        c.tls_cert = Some(chain.clone());
        c.tls_key = Some(key.clone());
        c.console = Some(ConsoleConfig::new(origin.clone(), admins.clone()));
    })
    .await;
    let mut browser = Driver::start(&chromium, &modules, &origin, &artifacts);

    // The ceremony: the operator's steps here, the admin's in the console's page.
    let (ceremony, create) = begin("dave", &origin).unwrap();
    let made = browser
        .run(json!({"op": "register", "options": create}))
        .await;
    let (ceremony, get) = prove(ceremony, made["registration"].to_string().as_bytes()).unwrap();
    // The fingerprint the admin reads from the page is the key the operator certifies.
    assert_eq!(
        made["fingerprint"].as_str(),
        registered_key(&ceremony).as_deref(),
        "the page shows the registered key"
    );
    let proof = browser.run(json!({"op": "prove", "options": get})).await;
    let issued = certify(
        &s.pki.pki,
        &ceremony,
        proof["assertion"].to_string().as_bytes(),
        Validity::days(30),
    )
    .unwrap();
    s.pki.pki.record_admin(&issued).unwrap();
    // The registration page proves possession only for the passkey it has just created:
    // options naming a certified passkey (a challenge someone chose, maybe an approval
    // message's hash) are refused.
    browser.run(json!({"op": "open_register"})).await;
    let lured = browser.run(json!({"op": "prove", "options": get})).await;
    assert_eq!(lured["assertion"], Value::Null, "{lured}");
    assert!(
        lured["status"]
            .as_str()
            .unwrap()
            .contains("create the passkey on this page first"),
        "{lured}"
    );

    // Attacker first. Not yet in the console's folder: dave cannot sign in.
    let refused = browser.run(json!({"op": "sign_in", "name": "dave"})).await;
    assert_eq!(refused["signed_in"], false);
    assert!(
        refused["status"]
            .as_str()
            .unwrap()
            .starts_with("unknown_admin"),
        "{refused}"
    );
    enroll_in_console(&admins, &ceremony, &issued).unwrap();
    let raw = raw_client(&s);
    let api = |p: &str| format!("https://{HOST}:{port}{p}");
    // Another site's page (or no browser) cannot begin a sign-in or approve.
    for o in [Some("https://evil.example"), None] {
        let (status, body) = post(
            &raw,
            &api("/console/api/sign-in/begin"),
            o,
            json!({"name": "dave"}),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("foreign_origin"))
        );
    }
    let (status, body) = post(
        &raw,
        &api(&format!("/console/api/requests/{}/approve", "00".repeat(16))),
        Some(&origin),
        json!({"authenticator_data_hex": "00", "client_data_json_hex": "00", "signature_hex": "00"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("not_signed_in"))
    );
    let (status, body) = post(
        &raw,
        &api("/console/api/sign-in/begin"),
        Some(&origin),
        json!({"name": "mallory"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("unknown_admin"))
    );
    // The refusal names no file and no reason.
    assert!(!body.to_string().contains(".pem"), "{body}");
    // An answer from a browser that was handed no challenge (no sign-in cookie).
    let (status, body) = post(
        &raw,
        &api("/console/api/sign-in/finish"),
        Some(&origin),
        json!({"name": "dave", "nonce": "00".repeat(32), "answer": {"authenticator_data_hex": "00",
               "client_data_json_hex": "00", "signature_hex": "00"}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("challenge_invalid"))
    );
    // A page that is not signed in shows the sign-in form, nothing else.
    let page = raw.get(api("/console/history")).send().await.unwrap();
    assert_eq!(page.url().path(), "/console");
    let text = page.text().await.unwrap();
    assert!(
        text.contains("Sign in with passkey") && !text.contains("History</h1>"),
        "{text}"
    );

    // A sign-in answer sent twice: the second is refused, its challenge is gone.
    let replay = browser
        .run(json!({"op": "replay_sign_in", "name": "dave"}))
        .await;
    assert_eq!(replay["first"]["http"], 200, "{replay}");
    assert_eq!(replay["second"]["http"], 401, "{replay}");
    assert!(
        replay["second"]["body"]
            .as_str()
            .unwrap()
            .contains("challenge_invalid"),
        "{replay}"
    );

    // The first answer signed the browser in: sign out, then in through the page's form.
    browser.run(json!({"op": "goto", "path": "/console"})).await;
    browser.run(json!({"op": "sign_out"})).await;
    let signed_in = browser.run(json!({"op": "sign_in", "name": "dave"})).await;
    assert_eq!(signed_in["signed_in"], true, "{signed_in}");

    // A wallet of alice (key file) and dave (passkey), one approval needed; alice creates it.
    let c = &s.client;
    let mut body = s.wallet_body("dc1", 1, 1);
    body.rules = Some(PolicyRules::per_transaction_limit(
        "bitcoin:regtest",
        "100000",
    ));
    body.group.push(registered_key(&ceremony).unwrap());
    body.group.sort();
    let root_id = s.created_wallet(&body, 1).await;
    let xpub = c.wallet(&root_id).await.unwrap().xpub;

    // A transaction paying 50 000 sat out of an 80 000 sat input, 29 000 back as change.
    let out = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([7; 32]),
    ));
    let to = bitcoin::Address::from_script(&out, bitcoin::Network::Regtest)
        .unwrap()
        .to_string();
    let psbt = Spend::from(xpub.as_str())
        .input(InputKind::P2wpkh, &[0, 1], 80_000)
        .pay(out, 50_000)
        .change(&[1, 0], 29_000)
        .psbt();
    use bitcoin::base64::Engine as _;
    let request = c
        .sign_psbt(&SignPsbtBody::new(&root_id, "regtest", &psbt.serialize()))
        .await
        .unwrap();
    assert_eq!(request.status, RequestStatus::PendingApproval);

    // Dave sees it waiting, then its intent.
    let home = browser.run(json!({"op": "goto", "path": "/console"})).await;
    assert!(
        home["main"].as_str().unwrap().contains(&request.id),
        "{home}"
    );
    let path = format!("/console/requests/{}", request.id);
    let pending = browser
        .run(json!({"op": "goto", "path": path, "screenshot": "pending-request.png"}))
        .await;
    let text = pending["main"].as_str().unwrap();
    for shown in [
        &to,
        "0.00050000 BTC",
        "0.00001000 BTC",
        "change, m/1/0",
        "0/1 approvals",
    ] {
        assert!(
            text.contains(shown),
            "the pending page shows {shown:?}: {text}"
        );
    }
    no_serious_violations("pending request", &browser.run(json!({"op": "axe"})).await);

    let approved = browser.run(json!({"op": "approve", "path": path})).await;
    let status = approved["status"].as_str().unwrap_or_default();
    assert!(
        !status.starts_with("tee_") && !status.contains(':'),
        "{approved}"
    );
    let done = browser
        .run(json!({"op": "goto", "path": path, "screenshot": "signed-request.png"}))
        .await;
    assert!(
        done["main"].as_str().unwrap().contains("completed"),
        "{done}"
    );
    no_serious_violations("signed request", &browser.run(json!({"op": "axe"})).await);

    // Signed end to end: the TEE's signature verifies over the sighash `bitcoin` computes.
    let view = c.request(&request.id).await.unwrap();
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    assert_eq!(view.approvals.len(), 1);
    assert_eq!(view.approvals[0].admin, "dave");
    let Some(RequestResult::Psbt(result)) = &view.result else {
        panic!("{view:?}")
    };
    let signed = Psbt::deserialize(
        &bitcoin::base64::engine::general_purpose::STANDARD
            .decode(&result.psbt)
            .unwrap(),
    )
    .unwrap();
    let (msg, _) = signed
        .sighash_ecdsa(0, &mut SighashCache::new(&signed.unsigned_tx))
        .unwrap();
    let (key, sig) = signed.inputs[0].partial_sigs.iter().next().unwrap();
    assert_eq!(key.inner, Spend::from(xpub.as_str()).key(&[0, 1]));
    Secp256k1::verification_only()
        .verify_ecdsa(&msg, &sig.signature, &key.inner)
        .unwrap();

    // A second transaction, which dave rejects: refused by name, nothing signed.
    let second = c
        .sign_psbt(&SignPsbtBody::new(
            &root_id,
            "regtest",
            &Spend::from(xpub.as_str())
                .input(InputKind::P2wpkh, &[0, 3], 90_000)
                .pay(
                    ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
                        bitcoin::hashes::Hash::from_byte_array([9; 32]),
                    )),
                    89_000,
                )
                .psbt()
                .serialize(),
        ))
        .await
        .unwrap();
    let signings = s.gateway.executed("SignPsbt").len();
    let rejected = browser
        .run(json!({"op": "reject", "path": format!("/console/requests/{}", second.id)}))
        .await;
    assert!(
        rejected["main"]
            .as_str()
            .unwrap()
            .contains("rejected_by_admin"),
        "{rejected}"
    );
    let second = c.request(&second.id).await.unwrap();
    assert_eq!(second.status, RequestStatus::Refused);
    assert_eq!(second.error.as_ref().unwrap().code, "rejected_by_admin");
    assert!(second.approvals.is_empty());
    assert_eq!(
        s.gateway.executed("SignPsbt").len(),
        signings,
        "nothing was signed"
    );

    // Every other page passes the accessibility check too.
    for page in ["/console/history", "/console/health", "/console"] {
        no_serious_violations(page, &browser.run(json!({"op": "axe", "path": page})).await);
    }
    let health = browser
        .run(json!({"op": "goto", "path": "/console/health"}))
        .await;
    assert!(
        health["main"].as_str().unwrap().contains("Cluster dc1"),
        "{health}"
    );
    browser.run(json!({"op": "sign_out"})).await;
    let out = browser
        .run(json!({"op": "goto", "path": "/console/history"}))
        .await;
    assert!(out["url"].as_str().unwrap().ends_with("/console"), "{out}");
    no_serious_violations("sign-in", &browser.run(json!({"op": "axe"})).await);
    no_serious_violations(
        "register",
        &browser
            .run(json!({"op": "axe", "path": "/console/register"}))
            .await,
    );
    browser.quit().await;
    // Sign-in calls from one address are limited (a burst, then one a second).
    let mut limited = None;
    for _ in 0..40 {
        let (status, body) = post(
            &raw,
            &api("/console/api/sign-in/begin"),
            Some(&origin),
            json!({"name": "dave"}),
        )
        .await;
        if status == 429 {
            limited = Some(body);
            break;
        }
    }
    let limited = limited.expect("sign-in calls are limited");
    assert_eq!(limited["error"]["code"], "too_many_sign_ins", "{limited}");
    s.stop().await;
}
