//! `custos bench psbt`: a PSBT of many inputs (50 by default, P2WPKH and P2TR in turn)
//! parsed, checked against its key's policy and signed by one TEE process (its socket, the
//! software platform), beside raw libsecp256k1 signing of the same signature hashes in this
//! process, measured in the same run; the ratio is what the TEE's understanding of the
//! transaction costs.

use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::Network;
use custos::ops::{approvals, new_meta, provision};
use custos_tx::btc::{plan_psbt, XpubKeys};
use custos_tx::synthetic::{script_of, Spend};
use custos_tx::InputKind;
use custos_wire::approval::Action;
use custos_wire::policy::{
    KeyPolicy, Rule, SpendLimit, SpendLimits, RULE_SPEND_LIMITS, RULE_TRANSACTIONS_ONLY,
};
use custos_wire::protocol::{BitcoinNetwork, Request, Response};

type AnyError = Box<dyn std::error::Error>;

use crate::bench::CLUSTER;

/// The median of `times`.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Runs the benchmark: `rounds` signings of one `inputs`-input PSBT.
pub fn run(inputs: usize, rounds: usize, dir: Option<&Path>) -> Result<(), AnyError> {
    let (inputs, rounds) = (inputs.clamp(1, 500), rounds.max(1));
    let setup = crate::bench::BenchSetup::new(dir)?;
    let admin = &setup.admin;
    let tee = setup.tee("node1")?;
    let mut client = tee.client()?;
    provision(&mut client, &setup.pki, CLUSTER, "node1")?;

    // A wallet that signs transactions only, up to 21 million bitcoin each.
    let limits = SpendLimits {
        limits: vec![SpendLimit {
            asset: "bitcoin:regtest".into(),
            per_transaction: 21_000_000 * 100_000_000,
            window_secs: 0,
            per_window: 0,
            count_per_window: 0,
        }],
        velocity_holder: None,
    };
    let policy = KeyPolicy {
        version: 1,
        group: vec![admin.key_fingerprint()],
        quorum: 1,
        rules: vec![
            Rule {
                tag: RULE_TRANSACTIONS_ONLY,
                body: Vec::new(),
            },
            Rule {
                tag: RULE_SPEND_LIMITS,
                body: limits.encode(),
            },
        ],
    };
    let chain = match client.call(&Request::DeviceChain)? {
        Response::DeviceChain(c) => c,
        other => return Err(format!("unexpected answer to DeviceChain: {other:?}").into()),
    };
    let executor = custos_pki::cert_key_fingerprint(&chain.device)?;
    let meta = new_meta(3600);
    let action = Action::CreateGroupWallet {
        policy: &policy,
        executor: &executor,
    };
    let wallet = match client.call(&Request::CreateGroupWallet {
        approvals: approvals(&[admin], CLUSTER, &meta, &action)?,
        meta,
        policy: policy.clone(),
        executor,
    })? {
        Response::Wallet(w) => w,
        other => return Err(format!("no wallet: {other:?}").into()),
    };

    let mut spend = Spend::from(&wallet.xpub);
    let kinds = [InputKind::P2wpkh, InputKind::P2trKeyPath];
    for i in 0..inputs {
        spend = spend.input(kinds[i % 2], &[0, i as u32], 100_000);
    }
    let outside = script_of(InputKind::P2wpkh, &spend.key(&[1, 0]));
    let psbt = spend
        .pay(outside, inputs as u64 * 100_000 - 10_000)
        .psbt()
        .serialize();
    let plan = plan_psbt(&psbt, Network::Regtest, &XpubKeys(wallet.xpub.parse()?))?;
    let intent_hash = plan.intent().hash();
    let digests: Vec<[u8; 32]> = plan.jobs().iter().map(|j| j.sighash).collect();

    println!(
        "signing a {inputs}-input PSBT ({} bytes) {rounds} times in one TEE process...",
        psbt.len()
    );
    let mut tee_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let meta = new_meta(3600);
        let action = Action::SignTransaction {
            key_id: &wallet.key_id,
            intent_hash: &intent_hash,
        };
        let request = Request::SignPsbt {
            approvals: approvals(&[admin], CLUSTER, &meta, &action)?,
            meta,
            key_id: wallet.key_id.clone(),
            network: BitcoinNetwork::Regtest,
            psbt: psbt.clone(),
            intent_hash,
        };
        let t0 = Instant::now();
        let answer = client.call(&request)?;
        tee_times.push(t0.elapsed());
        if !matches!(answer, Response::SignedPsbt { .. }) {
            return Err(format!("the PSBT was not signed: {answer:?}").into());
        }
    }

    // The limit: the same hashes signed by libsecp256k1 here, one key each, no parsing,
    // no policy, no derivation, no socket.
    let secp = Secp256k1::new();
    let keys = (0..digests.len())
        .map(|_| SecretKey::from_slice(&rand::random::<[u8; 32]>()))
        .collect::<Result<Vec<SecretKey>, _>>()?;
    let mut raw_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        for (d, k) in digests.iter().zip(&keys) {
            std::hint::black_box(secp.sign_ecdsa(&Message::from_digest(*d), k));
        }
        raw_times.push(t0.elapsed());
    }
    let (tee, raw) = (median(&mut tee_times), median(&mut raw_times));
    println!("custos bench psbt ({inputs} inputs, {rounds} rounds, medians):");
    println!(
        "  TEE process: parse, intent, policy, derive, sign, verify: {:.2} ms per PSBT",
        tee.as_secs_f64() * 1e3
    );
    println!(
        "  raw libsecp256k1, the same {} hashes:                  {:.2} ms",
        digests.len(),
        raw.as_secs_f64() * 1e3
    );
    println!(
        "  ratio TEE / raw: {:.1}",
        tee.as_secs_f64() / raw.as_secs_f64().max(1e-9)
    );
    Ok(())
}
