//! `custos demo`: a local walk-through on loopback of everything built so far.
//!
//! It creates a PKI, starts one TEE core process per node of a cluster, provisions them,
//! creates and imports wallets under admin quorum, signs through the real TEE processes,
//! shows the refusals, crashes a TEE process and restarts it, and writes a JSON report.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1};
use custos::ops::{approvals, new_meta, provision};
use custos::tee_process::{KeyArg, TeeProcess};
use custos_pki::{AdminSigner, PkiDir};
use custos_tee_core::approval::Action;
use custos_tee_core::protocol::{
    audit_digest, EcdsaSignature, ImportSecret, KeyInfo, Request, Response, SecretString, TeeError,
};
use custos_tee_host::{ClientError, TeeClient};
use serde_json::json;

type AnyError = Box<dyn std::error::Error>;

const CLUSTER: &str = "dc1";
const NODES: [&str; 2] = ["dc1-node1", "dc1-node2"];
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

/// Verifies a signature the way a relying party would, with nothing but public data:
/// ECDSA verification, low-s, and public key recovery from (r, s, v).
pub fn verify_signature(
    sig: &EcdsaSignature,
    digest: &[u8; 32],
    expected: &PublicKey,
) -> Result<(), AnyError> {
    let secp = Secp256k1::verification_only();
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
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
    Ok(())
}

fn expect_refusal(result: Result<Response, ClientError>, what: &str) -> Result<TeeError, AnyError> {
    match result {
        Err(ClientError::Tee(e)) => Ok(e),
        Ok(_) => Err(fail(&format!("{what} was accepted"))),
        Err(e) => Err(fail(&format!("{what}: unexpected failure {e}"))),
    }
}

fn wallet(resp: Response) -> Result<KeyInfo, AnyError> {
    match resp {
        Response::Wallet(k) => Ok(k),
        _ => Err(fail("expected a wallet")),
    }
}

/// Runs the walk-through.
pub fn run(dir: Option<PathBuf>, report: &Path) -> Result<(), AnyError> {
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

    // PKI (flow: operating company).
    let pki = PkiDir::new(dir.join("pki"));
    pki.init()?;
    pki.create_cluster_ca(CLUSTER)?;
    for admin in ["alice", "bob", "carol"] {
        pki.create_admin(admin)?;
    }
    let alice = AdminSigner::load(&pki, "alice")?;
    let bob = AdminSigner::load(&pki, "bob")?;
    steps.ok(
        "pki",
        "Root CA, Admin CA, Device CA, Cluster CA dc1, admins alice/bob/carol",
    );

    // TEE processes, one per node, each with its own sealing key and store.
    let mut tees = Vec::new();
    for node in NODES {
        let key = dir.join(format!("{node}.sealing-key"));
        custos_tee_host::sealed::generate_key_file(&key)?;
        let tee = TeeProcess::start(
            &exe,
            &dir.join(format!("{node}.sock")),
            &dir.join(format!("{node}-store")),
            KeyArg::File(key),
        )?;
        tees.push(tee);
    }
    let mut clients = Vec::new();
    for (tee, node) in tees.iter().zip(NODES) {
        let mut c = tee.client()?;
        let info = provision(&mut c, &pki, CLUSTER, node)?;
        steps.ok(
            "provision",
            format!(
                "{node} (pid {}): D = {}…",
                tee.pid().unwrap_or(0),
                &hex::encode(&info.public_key)[..16]
            ),
        );
        clients.push(c);
    }
    let again = expect_refusal(
        clients[0].call(&Request::PinRoot {
            root_cert: custos_pki::pem_to_der(&pki.root_pem()?, "root")?,
        }),
        "second Root pin",
    )?;
    steps.ok("refusal", format!("second Root pin: {again}"));

    // Wallet creation with a 2-of-3 quorum.
    let meta = new_meta(600);
    let action = Action::CreateWallet { quorum: 2 };
    let created = wallet(clients[0].call(&Request::CreateWallet {
        meta: meta.clone(),
        quorum: 2,
        approvals: approvals(&[&alice, &bob], CLUSTER, &meta, &action),
    })?)?;
    steps.ok("create-wallet", format!("quorum 2, root {}", created.xpub));

    // Import from BIP-39 on node 2 (sync between nodes is the bridge's job, issue 3).
    let secp = Secp256k1::new();
    let seed = bip39_seed(DEMO_MNEMONIC)?;
    let expected_root = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Main, &seed)?;
    let key_id = Xpub::from_priv(&secp, &expected_root)
        .public_key
        .serialize()
        .to_vec();
    let meta = new_meta(600);
    let action = Action::ImportWallet {
        quorum: 1,
        key_id: &key_id,
    };
    let imported = wallet(clients[1].call(&Request::ImportWallet {
        meta: meta.clone(),
        quorum: 1,
        key_id: key_id.clone(),
        secret: ImportSecret::Mnemonic {
            phrase: SecretString(DEMO_MNEMONIC.into()),
            passphrase: SecretString(String::new()),
        },
        approvals: approvals(&[&alice], CLUSTER, &meta, &action),
    })?)?;
    steps.ok(
        "import-wallet",
        format!("BIP-39 mnemonic, root {}", imported.xpub),
    );

    // Signing: m/44'/0'/0'/0/i.
    let mut signatures = Vec::new();
    for i in 0..3u32 {
        let path = vec![44 | 1 << 31, 1 << 31, 1 << 31, 0, i];
        let digest: [u8; 32] =
            ring::digest::digest(&ring::digest::SHA256, format!("demo tx {i}").as_bytes())
                .as_ref()
                .try_into()?;
        let meta = new_meta(600);
        let action = Action::Sign {
            key_id: &created.key_id,
            path: &path,
            digest: &digest,
        };
        let Response::Signature(sig) = clients[0].call(&Request::Sign {
            meta: meta.clone(),
            key_id: created.key_id.clone(),
            path: path.clone(),
            digest,
            approvals: approvals(&[&alice, &bob], CLUSTER, &meta, &action),
        })?
        else {
            return Err(fail("sign"));
        };
        // The expected child key comes from public derivation: hardened part via the TEE's
        // xpub at m/44'/0'/0', the non-hardened rest derived here from that xpub alone.
        let Response::Xpub { xpub, .. } = clients[0].call(&Request::GetXpub {
            key_id: created.key_id.clone(),
            path: path[..3].to_vec(),
        })?
        else {
            return Err(fail("xpub"));
        };
        let account = Xpub::from_str(&xpub)?;
        let child = account.derive_pub(&secp, &[ChildNumber::from(0), ChildNumber::from(i)])?;
        verify_signature(&sig, &digest, &child.public_key)?;
        signatures.push(json!({
            "root_xpub": created.xpub,
            "path": format!("m/44'/0'/0'/0/{i}"),
            "digest": hex::encode(digest),
            "child_public_key": hex::encode(&sig.public_key),
            "r": hex::encode(sig.r), "s": hex::encode(sig.s), "v": sig.v,
        }));
    }
    steps.ok(
        "sign",
        "3 signatures at m/44'/0'/0'/0/i verified (recovery, low-s, xpub-derived key)",
    );

    // Refusals.
    let path = vec![0u32];
    let digest = [7u8; 32];
    let meta = new_meta(600);
    let sign_action = Action::Sign {
        key_id: &created.key_id,
        path: &path,
        digest: &digest,
    };
    let sign_req = |approvals| Request::Sign {
        meta: meta.clone(),
        key_id: created.key_id.clone(),
        path: path.clone(),
        digest,
        approvals,
    };
    let e = expect_refusal(clients[0].call(&sign_req(vec![])), "unapproved sign")?;
    steps.ok("refusal", format!("no approval: {e}"));
    let e = expect_refusal(
        clients[0].call(&sign_req(approvals(
            &[&alice],
            CLUSTER,
            &meta,
            &sign_action,
        ))),
        "1-of-2 sign",
    )?;
    steps.ok("refusal", format!("one admin for a 2-admin key: {e}"));
    let other_digest = [8u8; 32];
    let wrong = Action::Sign {
        key_id: &created.key_id,
        path: &path,
        digest: &other_digest,
    };
    let e = expect_refusal(
        clients[0].call(&sign_req(approvals(
            &[&alice, &bob],
            CLUSTER,
            &meta,
            &wrong,
        ))),
        "approval over another digest",
    )?;
    steps.ok("refusal", format!("approval over another digest: {e}"));
    let e = expect_refusal(
        clients[0].call(&Request::AuditSign {
            key_id: created.key_id.clone(),
            message: vec![0; 9],
        }),
        "9-byte audit",
    )?;
    steps.ok("refusal", format!("9-byte audit message: {e}"));

    // Audit with the root key m.
    let msg = b"audit-01".to_vec();
    let Response::AuditSignature(audit) = clients[0].call(&Request::AuditSign {
        key_id: created.key_id.clone(),
        message: msg.clone(),
    })?
    else {
        return Err(fail("audit"));
    };
    verify_signature(
        &audit,
        &audit_digest(&msg),
        &PublicKey::from_slice(&created.key_id)?,
    )?;
    steps.ok(
        "audit",
        "8-byte audit message signed with root key m, verified against key id",
    );

    // Crash and restart: every acknowledged key is back.
    let before = list_keys(&mut clients[0])?;
    tees[0].kill();
    tees[0].restart()?;
    let mut c = tees[0].client()?;
    provision(&mut c, &pki, CLUSTER, NODES[0])?;
    let after = list_keys(&mut c)?;
    if before != after {
        return Err(fail("keys after restart differ"));
    }
    steps.ok(
        "restart",
        format!("kill -9 and restart: {} key(s) restored", after.len()),
    );
    drop(c);

    // A wrong sealing key is refused at start (the store is free: its TEE is stopped).
    tees[0].kill();
    let wrong_key = dir.join("wrong.sealing-key");
    custos_tee_host::sealed::generate_key_file(&wrong_key)?;
    match TeeProcess::start(
        &exe,
        &dir.join("wrong.sock"),
        &tees[0].store,
        KeyArg::File(wrong_key),
    ) {
        Err(e) if e.to_string().contains("wrong sealing key") => {
            steps.ok("refusal", format!("wrong sealing key: {e}"))
        }
        Err(e) => return Err(fail(&format!("wrong sealing key: unexpected failure {e}"))),
        Ok(_) => return Err(fail("TEE started with a wrong sealing key")),
    }

    let doc = json!({
        "ok": true,
        "cluster": CLUSTER,
        "nodes": NODES,
        "wallets": [
            {"key_id": hex::encode(&created.key_id), "root_xpub": created.xpub, "quorum": created.quorum, "origin": "generated"},
            {"key_id": hex::encode(&imported.key_id), "root_xpub": imported.xpub, "quorum": imported.quorum, "origin": "imported"},
        ],
        "signatures": signatures,
        "steps": steps.log,
    });
    std::fs::write(report, serde_json::to_vec_pretty(&doc)?)?;
    println!("all steps verified; report written to {}", report.display());
    Ok(())
}

fn list_keys(c: &mut TeeClient) -> Result<Vec<KeyInfo>, AnyError> {
    match c.call(&Request::ListKeys)? {
        Response::Keys(k) => Ok(k),
        _ => Err(fail("list keys")),
    }
}

fn bip39_seed(phrase: &str) -> Result<Vec<u8>, AnyError> {
    Ok(bip39::Mnemonic::parse_in(bip39::Language::English, phrase)?
        .to_seed("")
        .to_vec())
}
