//! The Bitcoin Core external signer (issue 14): `custos bitcoin-signer` called exactly as
//! Bitcoin Core calls it (argument order, `--stdin` with `signtx <psbt>` and no newline, the
//! first line of standard output read as JSON), against a real deployment. An independent
//! wallet (embit, from the Python package index) checks the descriptors' checksums and
//! addresses and builds the PSBT; the signed PSBT is finalized by miniscript and every
//! input's script run by Bitcoin Core's own interpreter (libbitcoinconsensus, taproot
//! included). Attacker first: a wrong fingerprint, a key that is not the wallet's, and a
//! transaction over the wallet's limit with the full quorum present are refused by name.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use custos::deployment::Deployment;
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;
use miniscript::psbt::PsbtExt;
use serde_json::Value;

use crate::common::{dc1_alice_and_bob, exe, ruled_wallet};

/// The Python with embit, or `None` to skip, unless `CUSTOS_TEST_REQUIRE_EMBIT` is set.
fn python() -> Option<PathBuf> {
    crate::common::python_with("embit", "CUSTOS_TEST_REQUIRE_EMBIT")
}

/// Runs the independent wallet's `command` on the signer's `answer`.
fn embit(py: &PathBuf, command: &[&str], answer: &Value) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/embit_wallet.py");
    let out = crate::common::output_with_stdin(
        Command::new(py).arg(script).args(command),
        answer.to_string().as_bytes(),
    );
    assert!(out.status.success(), "embit_wallet.py {command:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The external signer of the wallet `root`, run as Bitcoin Core runs it: `args`, and
/// `stdin` written without a newline; its exit code and its first line of output as JSON.
fn signer(d: &Deployment, root: &str, args: &[&str], stdin: Option<&str>) -> (i32, Value) {
    let mut child = Command::new(exe())
        .arg("bitcoin-signer")
        .args(args)
        .env("CUSTOS_API_URL", &d.api_url)
        .env("CUSTOS_API_TOKEN", &d.api_token)
        .env("CUSTOS_SIGNER_ROOT", root)
        .env("CUSTOS_SIGNER_WAIT", "120")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap_or_default();
    let json = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("first line {first:?} is not JSON: {e}"));
    (out.status.code().unwrap_or(-1), json)
}

/// Approves, as `admin`, the first pending PSBT request that appears within a minute, after
/// checking its intent: returns its view (`None` when none appeared).
async fn approve_next_psbt(client: &CloudClient, admin: &AdminSigner) -> Option<RequestView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = client
            .requests(&RequestQuery {
                status: Some(RequestStatus::PendingApproval),
                kind: Some(RequestKind::SignPsbt),
                limit: None,
            })
            .await
            .unwrap();
        if let Some(view) = pending.requests.first() {
            let view = client.request(&view.id).await.unwrap();
            let message = approval_message(&view).expect("the intent hashes to its hash");
            client
                .approve(&view.id, &sign_approval(admin, &message).unwrap())
                .await
                .unwrap();
            return Some(view);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Signs, through the signer with `--stdin`, the independent wallet's PSBT paying `pay`
/// sat, approved by `admin`: the signer's answer and the request approved.
fn signtx(
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
    root: &str,
    fp: &str,
    psbt: &str,
    admin: &AdminSigner,
) -> (Value, RequestView) {
    let client = d.client().unwrap();
    let (code, answer, approved) = std::thread::scope(|scope| {
        let call = scope.spawn(|| {
            signer(
                d,
                root,
                &["--stdin", "--fingerprint", fp, "--chain", "regtest"],
                Some(&format!("signtx {psbt}")),
            )
        });
        let approved = rt.block_on(approve_next_psbt(&client, admin));
        let (code, answer) = call.join().unwrap();
        (code, answer, approved)
    });
    assert_eq!(code, 0, "{answer}");
    let approved = approved.unwrap_or_else(|| panic!("no PSBT request appeared: {answer}"));
    (answer, approved)
}

/// Every input of `tx` run by libbitcoinconsensus against the outputs it spends (all of
/// them passed, as taproot needs): the first error met.
pub(crate) fn verify_scripts(psbt: &Psbt, tx: &bitcoin::Transaction) -> Result<(), String> {
    let spent: Vec<bitcoin::TxOut> = psbt
        .inputs
        .iter()
        .zip(&psbt.unsigned_tx.input)
        .map(|(i, txin)| match (&i.witness_utxo, &i.non_witness_utxo) {
            (Some(o), _) => o.clone(),
            (None, Some(prev)) => prev.output[txin.previous_output.vout as usize].clone(),
            (None, None) => panic!("an input without the output it spends"),
        })
        .collect();
    let utxos: Vec<bitcoinconsensus::Utxo> = spent
        .iter()
        .map(|o| bitcoinconsensus::Utxo {
            script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: o.script_pubkey.len() as u32,
            value: o.value.to_sat() as i64,
        })
        .collect();
    let bytes = bitcoin::consensus::serialize(tx);
    for (i, o) in spent.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            o.script_pubkey.as_bytes(),
            o.value.to_sat(),
            &bytes,
            Some(&utxos),
            i,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        )
        .map_err(|e| format!("input {i} does not verify: {e:?}"))?;
    }
    Ok(())
}

#[test]
fn bitcoin_core_calls_the_signer_and_an_independent_wallet_agrees() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dc1_alice_and_bob(dir.path(), 1);
    let [alice, bob] = ["alice", "bob"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = d.client().unwrap();
    // Transactions only, at most 400 000 sat per transaction (fee included).
    let rules = PolicyRules {
        transactions_only: true,
        spend_limits: vec![SpendLimitView {
            asset: "bitcoin:regtest".into(),
            per_transaction: "400000".into(),
            window_secs: 0,
            per_window: "400000".into(),
            count_per_window: 1,
        }],
        ..PolicyRules::default()
    };
    let root = rt
        .block_on(ruled_wallet(&client, [&alice, &bob], Some(rules), None))
        .root_id
        .unwrap();

    // enumerate: this wallet, by an 8-hex-digit fingerprint.
    let (code, answer) = signer(&d, &root, &["enumerate"], None);
    assert_eq!(code, 0);
    let fp = answer[0]["fingerprint"].as_str().unwrap().to_string();
    assert!(
        fp.len() == 8 && fp.bytes().all(|b| b.is_ascii_hexdigit()),
        "{answer}"
    );

    // getdescriptors: BIP-49, 84 and 86 of account 0, each checksum the one embit computes.
    let (code, descs) = signer(
        &d,
        &root,
        &[
            "--fingerprint",
            &fp,
            "--chain",
            "regtest",
            "getdescriptors",
            "--account",
            "0",
        ],
        None,
    );
    assert_eq!(code, 0, "{descs}");
    assert_eq!(descs["receive"].as_array().unwrap().len(), 3, "{descs}");
    assert_eq!(descs["internal"].as_array().unwrap().len(), 3, "{descs}");
    let checked: Vec<Value> = serde_json::from_str(&embit(&py, &["descriptors"], &descs)).unwrap();
    assert_eq!(checked.len(), 6);
    for c in &checked {
        assert_eq!(c["checksum_ok"], true, "{c}");
        assert!(
            c["desc"].as_str().unwrap().contains(&format!("[{fp}/")),
            "{c}"
        );
        // displayaddress of the key Bitcoin Core would show: embit's address, echoed.
        let (code, shown) = signer(
            &d,
            &root,
            &[
                "--fingerprint",
                &fp,
                "--chain",
                "regtest",
                "displayaddress",
                "--desc",
                c["single0"].as_str().unwrap(),
            ],
            None,
        );
        assert_eq!(code, 0);
        assert_eq!(shown["address"], c["address0"], "{c}");
    }

    // Refused by name, exit code 0 and one line of JSON as HWI: another fingerprint, and
    // a key that is not the wallet's at the origin it claims.
    let (code, e) = signer(
        &d,
        &root,
        &[
            "--fingerprint",
            "00000001",
            "--chain",
            "regtest",
            "getdescriptors",
            "--account",
            "0",
        ],
        None,
    );
    assert_eq!((code, e["code"].as_i64()), (0, Some(-3)), "{e}");
    let single = checked[1]["single0"]
        .as_str()
        .unwrap()
        .split('#')
        .next()
        .unwrap();
    let other_key = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    let forged = format!("{}{other_key})", &single[..single.rfind(']').unwrap() + 1]);
    let (code, e) = signer(
        &d,
        &root,
        &[
            "--fingerprint",
            &fp,
            "--chain",
            "regtest",
            "displayaddress",
            "--desc",
            &forged,
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(
        e["error"].as_str().unwrap().contains("not the wallet's"),
        "{e}"
    );
    // A call it does not know: clap's refusal as JSON, exit code 2.
    let (code, e) = signer(&d, &root, &["signmessage", "hello"], None);
    assert_eq!(code, 2);
    assert!(e["error"].is_string(), "{e}");

    // signtx: embit's PSBT (P2WPKH, P2TR key path, P2SH-P2WPKH) signed once approved.
    let psbt = embit(&py, &["psbt", "250000"], &descs);
    let (answer, approved) = signtx(&d, &rt, &root, &fp, &psbt, &alice);
    let signed: Psbt = answer["psbt"].as_str().expect("a PSBT").parse().unwrap();
    let intent = &approved.transaction.as_ref().unwrap().intent;
    assert_eq!(intent["fee_sat"], 1000, "{intent}");
    assert_eq!(
        intent["outputs"][1]["change_path"],
        serde_json::json!([0x8000_0054u32, 0x8000_0001u32, 0x8000_0000u32, 1, 0]),
        "the change is recognised by the wallet's own derivation: {intent}"
    );
    let mut finalized = signed.clone();
    finalized
        .finalize_mut(&Secp256k1::verification_only())
        .unwrap_or_else(|e| panic!("not finalizable: {e:?}"));
    let tx = finalized.clone().extract_tx().unwrap();
    verify_scripts(&finalized, &tx).unwrap();
    // The interpreter does judge: the taproot signature with one bit flipped fails.
    let mut forged = tx.clone();
    let mut witness = forged.input[1].witness.to_vec();
    witness[0][10] ^= 1;
    forged.input[1].witness = bitcoin::Witness::from_slice(&witness);
    assert!(verify_scripts(&finalized, &forged).is_err());

    // Over the wallet's limit with the full quorum: the TEE's policy refuses, by name.
    let psbt = embit(&py, &["psbt", "450000"], &descs);
    let (answer, _) = signtx(&d, &rt, &root, &fp, &psbt, &alice);
    assert_eq!(answer["code"], -14, "{answer}");
    let e = answer["error"].as_str().unwrap();
    assert!(
        e.contains("tee_policy_refused") && e.contains("transaction_limit"),
        "{e}"
    );
}
