//! The Ethereum JSON-RPC signer with clients that already exist (issue 14): `anvil` (npm
//! `@foundry-rs/anvil`) on loopback behind `custos eth-signer`; `cast send --unlocked` (npm
//! `@foundry-rs/cast`) sends an EIP-1559 and a legacy (EIP-155) transfer, each mined, each
//! sender recovered by ethers (npm) from the raw transaction equal to the wallet's address;
//! ethers' `JsonRpcSigner.signTypedData` through the signer is checked with
//! `ethers.verifyTypedData`. Attacker first: a transfer over the wallet's limit, with the
//! full quorum approving, ends in a JSON-RPC error naming the rule, and nothing is mined.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos::deployment::Deployment;
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use serde_json::{json, Value};

use crate::common::{dc1_alice_and_bob, exe, ruled_wallet};

const BOB: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/// anvil's and cast's binaries and ethers, as `scripts/test-deps.sh` installs them.
struct Tools {
    anvil: PathBuf,
    cast: PathBuf,
    node_path: PathBuf,
}

fn tools() -> Option<Tools> {
    let dir = std::env::var_os("CUSTOS_TEST_NODE_DIR")
        .map(PathBuf::from)
        .or_else(custos::foundry::dir)?;
    let found = (
        custos::foundry::tool(&dir, "anvil"),
        custos::foundry::tool(&dir, "cast"),
        dir.join("node_modules/ethers").exists(),
    );
    let (Some(anvil), Some(cast), true) = found else {
        assert!(
            std::env::var_os("CUSTOS_TEST_REQUIRE_ANVIL").is_none(),
            "CUSTOS_TEST_REQUIRE_ANVIL is set but anvil, cast or ethers is missing under {} \
             (run scripts/test-deps.sh)",
            dir.display()
        );
        eprintln!("skipped: no anvil, cast and ethers (run scripts/test-deps.sh)");
        return None;
    };
    Some(Tools {
        anvil,
        cast,
        node_path: dir.join("node_modules"),
    })
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (the OS's choice, released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// anvil on a loopback port, answering.
async fn start_anvil(tools: &Tools) -> (Running, String) {
    let port = free_port();
    let child = custos::foundry::start_anvil(&tools.anvil, port).unwrap();
    let running = Running(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = reqwest::Client::new()
            .post(&url)
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] }))
            .send()
            .await
            .is_ok();
        if up {
            return (running, url);
        }
        assert!(Instant::now() < deadline, "anvil did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `custos eth-signer` for wallet `root` in front of `downstream`: the process and its URL.
fn start_signer(d: &Deployment, root: &str, downstream: &str) -> (Running, String) {
    let mut child = Command::new(exe())
        .args([
            "eth-signer",
            "--listen",
            "127.0.0.1:0",
            "--downstream",
            downstream,
            "--wait",
            "120",
        ])
        .env("CUSTOS_API_URL", &d.api_url)
        .env("CUSTOS_API_TOKEN", &d.api_token)
        .env("CUSTOS_SIGNER_ROOT", root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the signer said {line:?}"))
        .to_string();
    (Running(child), url)
}

/// Approves, as `admin`, every Ethereum request that appears (after checking its intent),
/// until `stop`.
async fn approve_all(client: CloudClient, admin: AdminSigner, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let pending = client
            .requests(&RequestQuery {
                status: Some(RequestStatus::PendingApproval),
                kind: Some(RequestKind::SignEthereum),
                limit: None,
            })
            .await
            .unwrap();
        for v in pending.requests {
            let view = client.request(&v.id).await.unwrap();
            let message = approval_message(&view).expect("the intent hashes to its hash");
            let _ = client
                .approve(&view.id, &sign_approval(&admin, &message).unwrap())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cast` with `args`: its exit status success, stdout and stderr.
fn cast(tools: &Tools, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&tools.cast).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ethers' answer to `eth_check.cjs args`.
fn ethers(tools: &Tools, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/js/eth_check.cjs");
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .env("NODE_PATH", &tools.node_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eth_check.cjs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends 1 ether to bob with `cast send --unlocked` (`legacy`: a legacy transaction) and
/// returns the raw transaction mined, as anvil keeps it.
async fn send_one_ether(
    tools: &Tools,
    signer: &str,
    anvil: &str,
    from: &str,
    legacy: bool,
) -> String {
    let mut args = vec![
        "send",
        "--json",
        "--unlocked",
        "--from",
        from,
        "--rpc-url",
        signer,
        "--value",
        "1ether",
        BOB,
    ];
    if legacy {
        args.push("--legacy");
    }
    let (ok, out, err) = tokio::task::block_in_place(|| cast(tools, &args));
    assert!(ok, "cast send failed: {err}");
    let receipt: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let hash = receipt["transactionHash"].as_str().unwrap().to_string();
    let raw = rpc(anvil, "eth_getRawTransactionByHash", json!([hash])).await;
    raw["result"].as_str().unwrap().to_string()
}

#[test]
fn stock_clients_send_and_sign_through_the_signer_under_the_wallets_rules() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dc1_alice_and_bob(dir.path(), 1);
    let [alice, bob] = ["alice", "bob"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = d.client().unwrap();
    // Transactions only; at most 2 ether per transaction on anvil's chain (31337), and
    // messages and typed data allowed (a limit on ethereum:message).
    let limit = |asset: &str, max: &str| SpendLimitView {
        asset: asset.into(),
        per_transaction: max.into(),
        window_secs: 0,
        per_window: max.into(),
        count_per_window: 1,
    };
    let rules = PolicyRules {
        transactions_only: true,
        spend_limits: vec![
            limit("ethereum:31337", "2000000000000000000"),
            limit("ethereum:message", "0"),
        ],
        ..PolicyRules::default()
    };
    let root = rt
        .block_on(ruled_wallet(&client, [&alice, &bob], Some(rules), None))
        .root_id
        .unwrap();
    let (_anvil, anvil) = rt.block_on(start_anvil(&tools));
    let (_signer, signer) = start_signer(&d, &root, &anvil);
    let stop = Arc::new(AtomicBool::new(false));
    let approver = rt.spawn(approve_all(d.client().unwrap(), alice, stop.clone()));

    rt.block_on(async {
        let accounts = rpc(&signer, "eth_accounts", json!([])).await;
        let from = accounts["result"][0].as_str().unwrap().to_string();
        // 100 ether for the wallet's address, on anvil directly.
        let funded = rpc(
            &anvil,
            "anvil_setBalance",
            json!([from, "0x56bc75e2d63100000"]),
        )
        .await;
        assert!(funded.get("error").is_none(), "{funded}");

        // EIP-1559 and legacy (EIP-155), each mined; ethers recovers the wallet's address.
        for legacy in [false, true] {
            let raw = send_one_ether(&tools, &signer, &anvil, &from, legacy).await;
            let tx = ethers(&tools, &["recover", &raw]);
            assert_eq!(tx["from"], from.as_str(), "{tx}");
            assert_eq!(tx["chainId"], "31337", "{tx}");
            assert_eq!(tx["type"], if legacy { 0 } else { 2 }, "{tx}");
        }

        // EIP-712 through ethers' JsonRpcSigner, checked by ethers.verifyTypedData.
        let typed = tokio::task::block_in_place(|| ethers(&tools, &["typed", &signer, &from]));
        assert_eq!(typed["recovered"], from.as_str(), "{typed}");

        // Over the limit: the full quorum approves, the TEE refuses by name, nothing is mined.
        let nonce = rpc(&anvil, "eth_getTransactionCount", json!([from, "latest"])).await;
        // cast 1.7 prints the JSON-RPC error and exits 0: the error and the nonce tell.
        let (_, _, err) = tokio::task::block_in_place(|| {
            cast(
                &tools,
                &[
                    "send",
                    "--unlocked",
                    "--from",
                    &from,
                    "--rpc-url",
                    &signer,
                    "--value",
                    "3ether",
                    BOB,
                ],
            )
        });
        assert!(
            err.contains("policy_refused") && err.contains("transaction_limit"),
            "{err}"
        );
        let after = rpc(&anvil, "eth_getTransactionCount", json!([from, "latest"])).await;
        assert_eq!(after["result"], nonce["result"]);
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(approver).unwrap();
}
