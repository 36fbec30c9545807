//! `custos bench link`: what the separate channel costs a BIP-32 sign request and its
//! reply, as the link carries them (a `LinkRequest` with one approval, a `LinkReply` with
//! the TEE's signed response and the node's chain, each in a signed envelope; made by a
//! real TEE process).
//!
//! * QR: frames shown at 5 frames/s to a camera across a desk (30 % missed, the rest
//!   shuffled, noisy, blurred, tilted 3°) until the envelope is rebuilt from the pixels,
//!   beside the information-theoretic minimum of the same run: the fewest frames whose
//!   70 % that survive still hold the envelope's bytes at one fragment per frame.
//! * Serial: one message over a pseudo-terminal pair at the line rate, throughput beside
//!   that line rate; then the request and its reply as an exchange.

use std::time::{Duration, Instant};

use custos::ops::{approvals, new_meta, provision};
use custos_link::qr::damage::{carry_envelope, Carried, Damage, DamagedChannel};
use custos_link::qr::FRAGMENT_LEN;
use custos_link::{Envelope, EnvelopeKind, LinkKeys, SerialLine};
use custos_proto::cluster::link_reply::Result as Answer;
use custos_proto::cluster::link_request::Op;
use custos_proto::cluster::{DeviceChain, LinkReply, LinkRequest, TeeCall, TeeReply};
use custos_wire::approval::Action;
use custos_wire::protocol::{encode_request, Request, Response};
use prost::Message;
use serialport::TTYPort;

use crate::bench::CLUSTER;

type AnyError = Box<dyn std::error::Error>;

/// Frames a second on the screen.
const FRAMES_PER_SECOND: f64 = 5.0;
/// Goals of issue 15.
const GOAL_FRAMES: usize = 20;
const GOAL_LINE_SHARE: f64 = 0.75;

/// A sign request and its reply as encoded envelopes, made by a TEE process.
fn sign_envelopes(dir: Option<&std::path::Path>) -> Result<(Vec<u8>, Vec<u8>), AnyError> {
    let setup = crate::bench::BenchSetup::new(dir)?;
    let admin = &setup.admin;
    let tee = setup.tee("node1")?;
    let mut client = tee.client()?;
    provision(&mut client, &setup.pki, CLUSTER, "node1")?;
    let meta = new_meta(3600);
    let wallet = match client.call(&Request::CreateWallet {
        approvals: approvals(
            &[admin],
            CLUSTER,
            &meta,
            &Action::CreateWallet { quorum: 1 },
        )?,
        meta,
        quorum: 1,
    })? {
        Response::Wallet(w) => w,
        other => return Err(format!("no wallet: {other:?}").into()),
    };
    let chain = match client.call(&Request::DeviceChain)? {
        Response::DeviceChain(c) => c,
        other => return Err(format!("no device chain: {other:?}").into()),
    };
    let (path, digest) = (vec![0u32, 7], rand::random::<[u8; 32]>());
    let meta = new_meta(3600);
    let action = Action::Sign {
        key_id: &wallet.key_id,
        path: &path,
        digest: &digest,
    };
    let sign = encode_request(&Request::Sign {
        approvals: approvals(&[admin], CLUSTER, &meta, &action)?,
        meta,
        key_id: wallet.key_id.clone(),
        path,
        digest,
    });
    let response = client.call_raw(&sign)?;
    let request = LinkRequest {
        op: Some(Op::Submit(TeeCall {
            request: sign,
            ..Default::default()
        })),
    };
    let reply = LinkReply {
        result: Some(Answer::Submitted(TeeReply {
            response,
            node: "node1".into(),
            chain: Some(DeviceChain {
                device: chain.device,
                cluster_ca: chain.cluster_ca,
                device_ca: chain.device_ca,
            }),
        })),
    };
    let (relay, bridge) = (LinkKeys::generate_pkcs8()?, LinkKeys::generate_pkcs8()?);
    let relay_keys = LinkKeys::from_pkcs8(&relay, LinkKeys::public_key_of_pkcs8(&bridge)?)?;
    let bridge_keys = LinkKeys::from_pkcs8(&bridge, LinkKeys::public_key_of_pkcs8(&relay)?)?;
    let id = rand::random();
    let seal = |keys: &LinkKeys, kind, payload: Vec<u8>| {
        Envelope::seal(keys, CLUSTER, id, kind, 1, payload).and_then(|e| e.encode())
    };
    Ok((
        seal(&relay_keys, EnvelopeKind::Request, request.encode_to_vec())?,
        seal(&bridge_keys, EnvelopeKind::Response, reply.encode_to_vec())?,
    ))
}

/// The fewest frames that can carry `bytes` when a share `drop` of them is lost: the
/// fragments, over the share that survives.
fn minimum_frames(bytes: usize, drop: f64) -> usize {
    (bytes.div_ceil(FRAGMENT_LEN) as f64 / (1.0 - drop)).ceil() as usize
}

/// Carries `envelope` `trials` times, each through a fresh channel.
fn qr_trials(envelope: &[u8], trials: usize, seed: u64) -> Result<Vec<Carried>, AnyError> {
    (0..trials as u64)
        .map(|t| {
            let mut channel = DamagedChannel::new(Damage::across_a_desk(seed + t));
            let (got, carried) = carry_envelope(envelope, &mut channel, 400)?;
            if got != envelope {
                return Err("a different envelope came out of the pixels".into());
            }
            Ok(carried)
        })
        .collect()
}

fn report_qr(what: &str, envelope: &[u8], runs: &[Carried]) -> bool {
    let mut shown: Vec<usize> = runs.iter().map(|c| c.shown).collect();
    shown.sort_unstable();
    let (median, worst) = (shown[shown.len() / 2], shown[shown.len() - 1]);
    let read: usize = runs.iter().map(|c| c.read).sum();
    let minimum = minimum_frames(envelope.len(), Damage::across_a_desk(0).drop);
    println!(
        "qr {what}: {} bytes, {} fragments; frames shown median {median} ({:.1} s at {FRAMES_PER_SECOND} frames/s), \
         worst {worst} ({:.1} s), {:.1} frames read on average; minimum at 30 % loss {minimum} \
         (ratio {:.2}); goal <= {GOAL_FRAMES} frames: {}",
        envelope.len(),
        runs[0].minimum,
        median as f64 / FRAMES_PER_SECOND,
        worst as f64 / FRAMES_PER_SECOND,
        read as f64 / runs.len() as f64,
        median as f64 / minimum as f64,
        if median <= GOAL_FRAMES { "met" } else { "NOT met" },
    );
    median <= GOAL_FRAMES
}

/// Two lines over a pseudo-terminal pair at `baud`.
fn line_pair(baud: u32) -> Result<(SerialLine, SerialLine), AnyError> {
    let (a, b) = TTYPort::pair()?;
    Ok((
        SerialLine::over_tty(a, baud)?,
        SerialLine::over_tty(b, baud)?,
    ))
}

/// Runs the benchmark: `trials` QR transfers each way, `serial_kib` KiB over the line.
pub fn run(
    trials: usize,
    baud: u32,
    serial_kib: usize,
    dir: Option<&std::path::Path>,
) -> Result<(), AnyError> {
    let (trials, serial_kib) = (trials.clamp(1, 100), serial_kib.clamp(1, 256));
    let (request, reply) = sign_envelopes(dir)?;
    println!("carrying a BIP-32 sign request and its reply as QR frames, {trials} times each...");
    let request_ok = report_qr("request", &request, &qr_trials(&request, trials, 1_000)?);
    let reply_ok = report_qr("reply", &reply, &qr_trials(&reply, trials, 2_000)?);

    let rt = tokio::runtime::Runtime::new()?;
    let (sender, receiver) = line_pair(baud)?;
    let message: Vec<u8> = (0..serial_kib * 1024).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    sender.send(&message)?;
    let elapsed = t0.elapsed();
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await
    })??;
    if got != message {
        return Err("the line delivered other bytes".into());
    }
    let line_rate = f64::from(baud) / 10.0;
    let rate = message.len() as f64 / elapsed.as_secs_f64();
    let share = rate / line_rate;
    println!(
        "serial: {} KiB in {:.2} s at {baud} baud: {rate:.0} B/s against the line's {line_rate:.0} B/s \
         (ratio {share:.3}); goal >= {GOAL_LINE_SHARE}: {}",
        serial_kib,
        elapsed.as_secs_f64(),
        if share >= GOAL_LINE_SHARE { "met" } else { "NOT met" },
    );
    let t0 = Instant::now();
    sender.send(&request)?;
    rt.block_on(receiver.recv())?;
    receiver.send(&reply)?;
    rt.block_on(sender.recv())?;
    let exchange = t0.elapsed();
    let ideal = (request.len() + reply.len()) as f64 / line_rate;
    println!(
        "serial: the sign request and reply ({} bytes) crossed in {:.3} s; the line's bytes alone take {ideal:.3} s (ratio {:.2})",
        request.len() + reply.len(),
        exchange.as_secs_f64(),
        ideal / exchange.as_secs_f64(),
    );
    if !(request_ok && reply_ok && share >= GOAL_LINE_SHARE) {
        println!("a goal was not met");
    }
    Ok(())
}
