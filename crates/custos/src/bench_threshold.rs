//! `custos bench threshold`: end-to-end 2-of-3 threshold signing (REST → cloud server →
//! each participating cluster's relay, link, bridge, node and TEE process, every protocol
//! message D-signed and relayed by the cloud server) beside the same library signing with
//! both parties in one process on one thread, measured in the same run; and online signing
//! of a full message from a presignature made ahead (key without chain code).
//!
//! The key's Paillier primes are the committed TEST-ONLY fixture: signing cost depends on
//! the modulus size (the same 1536-bit primes as production), not on how the primes were
//! found, so the figures hold for production keys.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use custos_cloud_api::approval::sign_approval;
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{MakePresignaturesBody, RequestResult, RequestStatus, ThresholdSignBody};
use custos_pki::AdminSigner;
use custos_threshold::{MsgType, Outgoing, Output, Primes, Session, SessionKind, Step};
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::RequestMeta;

use custos::cluster::LinkTransport;
use custos::dealer::{read_primes, Dealt, PrimeSource};
use custos::deployment::{import_threshold, Deployment, DeploymentOptions};

type AnyError = Box<dyn std::error::Error>;

const PATH: [u32; 2] = [0, 7];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json")
}

/// One 2-party signing with both sessions driven on this thread; returns its duration.
fn sign_in_one_thread(
    shares: &[custos_threshold::ThresholdShare],
    digest: [u8; 32],
) -> Result<Duration, AnyError> {
    let t0 = Instant::now();
    let eid: [u8; 32] = rand::random();
    let pair = [0u16, 1];
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut queue: VecDeque<(u16, u16, MsgType, Vec<u8>)> = VecDeque::new();
    let push = |queue: &mut VecDeque<_>, from: u16, out: Vec<Outgoing>| {
        for o in out {
            let (to, ty) = match o.to {
                Some(to) => (to, MsgType::P2P),
                None => (1 - from, MsgType::Broadcast),
            };
            queue.push_back((from, to, ty, o.bytes.to_vec()));
        }
    };
    for pos in 0..2u16 {
        let (s, out) = Session::new(
            SessionKind::Sign {
                share: shares[usize::from(pair[usize::from(pos)])].clone(),
                parties: pair.to_vec(),
                my_position: pos,
                path: Some(PATH.to_vec()),
                digest,
            },
            eid,
        )?;
        push(&mut queue, pos, out);
        sessions.push(Some(s));
    }
    let mut done = 0;
    while let Some((from, to, ty, bytes)) = queue.pop_front() {
        let Some(s) = sessions[usize::from(to)].as_mut() else {
            continue;
        };
        match s.feed(from, ty, &bytes)? {
            Step::Continue(out) => push(&mut queue, to, out),
            Step::Duplicate => {}
            Step::Done { output, outgoing } => {
                push(&mut queue, to, outgoing);
                if !matches!(output, Output::Signature(_)) {
                    return Err("signing produced no signature".into());
                }
                sessions[usize::from(to)] = None;
                done += 1;
            }
        }
    }
    if done != 2 {
        return Err("in-process signing stalled".into());
    }
    Ok(t0.elapsed())
}

/// A `threshold_sign` body with alice's approval, made for the request id and expiry it
/// carries (so the request is submitted at once).
fn approved(
    alice: &custos_pki::AdminSigner,
    key_id: &[u8],
    path: &[u32],
    digest: [u8; 32],
    message: Option<&[u8]>,
    clusters: Option<Vec<String>>,
) -> Result<ThresholdSignBody, custos_pki::PkiError> {
    let request_id: [u8; 16] = rand::random();
    let meta = RequestMeta {
        request_id,
        expires_at: custos_pki::clock::now_unix() + 600,
    };
    let approval = Action::ThresholdSign {
        key_id,
        path,
        digest: &digest,
    }
    .message(THRESHOLD_SCOPE, &meta);
    Ok(ThresholdSignBody {
        key_id: hex::encode(key_id),
        path: custos_wire::protocol::format_path(path),
        digest: hex::encode(digest),
        message: message.map(hex::encode),
        clusters,
        request_id: Some(hex::encode(request_id)),
        expires_at: Some(meta.expires_at),
        approvals: vec![sign_approval(alice, &approval)?],
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The library alone: both parties on this thread, same key size and path; the median of
/// `signings` signings after a warm-up.
fn one_thread_median(primes: &[Primes], signings: usize) -> Result<Duration, AnyError> {
    let shares = custos_threshold::deal(2, 3, true, Some(primes[..3].to_vec()), &mut |_| {})?;
    sign_in_one_thread(&shares, rand::random())?; // warm-up
    let mut local = Vec::new();
    for _ in 0..signings {
        local.push(sign_in_one_thread(&shares, rand::random())?);
    }
    Ok(median(local))
}

/// Imports the dealt HD key, then times `signings` end-to-end signings by pairs of clusters
/// in turn; the median, without the first signing.
async fn e2e_median(
    client: &CloudClient,
    alice: &AdminSigner,
    dealt: &Dealt,
    signings: usize,
) -> Result<Duration, AnyError> {
    for v in import_threshold(client, dealt, &[alice]).await? {
        if v.status != RequestStatus::Completed {
            return Err(format!("import failed: {:?}", v.error).into());
        }
    }
    let pairs = [["dc1", "dc2"], ["dc2", "dc3"], ["dc1", "dc3"]];
    let mut times = Vec::new();
    for i in 0..=signings {
        let pair = pairs[i % pairs.len()];
        let body = approved(
            alice,
            &dealt.key.key_id,
            &PATH,
            rand::random(),
            None,
            Some(pair.iter().map(|c| c.to_string()).collect()),
        )?;
        let t0 = Instant::now();
        let view = client.threshold_sign(&body).await?;
        let took = t0.elapsed();
        if !matches!(view.result, Some(RequestResult::Signature(_))) {
            return Err(format!("signing failed: {:?}", view.error).into());
        }
        // The first signing warms the connections and caches.
        if i > 0 {
            times.push(took);
        }
    }
    Ok(median(times))
}

/// Imports the key without chain code and fills its presignature pool (dc1+dc2), then times
/// each online signing of a full message; returns the time per presignature made and the
/// online signings' times, without the first one.
async fn presigned_online(
    client: &CloudClient,
    alice: &AdminSigner,
    plain: &Dealt,
    signings: usize,
) -> Result<(Duration, Vec<Duration>), AnyError> {
    let plain_id = hex::encode(&plain.key.key_id);
    for v in import_threshold(client, plain, &[alice]).await? {
        if v.status != RequestStatus::Completed {
            return Err(format!("import failed: {:?}", v.error).into());
        }
    }
    let count = signings as u32 + 1;
    let t0 = Instant::now();
    let pool = client
        .make_presignatures(
            &plain_id,
            &MakePresignaturesBody {
                count,
                clusters: Some(vec!["dc1".into(), "dc2".into()]),
            },
        )
        .await?;
    if !pool.failed.is_empty() || pool.made.len() != count as usize {
        return Err(format!("presignatures failed: {:?}", pool.failed).into());
    }
    let made_each = t0.elapsed() / count;
    let mut times = Vec::new();
    for i in 0..=signings {
        let message = format!("custos bench: online signing {i} of a full message").repeat(4);
        let body = approved(
            alice,
            &plain.key.key_id,
            &[],
            sha256::Hash::hash(message.as_bytes()).to_byte_array(),
            Some(message.as_bytes()),
            None,
        )?;
        let t0 = Instant::now();
        let view = client.threshold_sign(&body).await?;
        let took = t0.elapsed();
        match &view.result {
            Some(RequestResult::Signature(s)) if s.presignature.is_some() => {}
            _ => return Err(format!("online signing failed: {view:?}").into()),
        }
        if i > 0 {
            times.push(took);
        }
    }
    Ok((made_each, times))
}

/// Runs `signings` end-to-end signings (pairs of clusters in turn) and as many in-process.
pub fn run(signings: usize, dir: Option<&Path>) -> Result<(), AnyError> {
    let signings = signings.clamp(1, 100);
    if !cfg!(feature = "insecure-test-primes") {
        return Err(
            "the benchmark's keys use the TEST-ONLY Paillier primes, which this build's \
                    TEEs refuse: build with --features insecure-test-primes"
                .into(),
        );
    }
    let primes: Vec<Primes> = read_primes(&fixture())?;
    println!("threshold signing benchmark: 2-of-3 HD key, {signings} signings each way");

    let local = one_thread_median(&primes, signings)?;
    println!(
        "cggmp24, both parties in one thread: median {:.0} ms",
        local.as_secs_f64() * 1e3
    );

    let tmp;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("custos-bench-threshold-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let clusters = ["dc1", "dc2", "dc3"];
    let dep = Deployment::start(
        &std::env::current_exe()?,
        &dir,
        &DeploymentOptions {
            clusters: clusters
                .iter()
                .map(|c| (c.to_string(), LinkTransport::Tcp))
                .collect(),
            nodes: 1,
            admins: vec!["alice".into()],
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )?;
    let alice = dep.admin("alice")?;
    let client = dep.client()?;
    let dealt = dep.deal_threshold("bench", 2, &clusters, 1, true, PrimeSource::File(fixture()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let e2e = rt.block_on(e2e_median(&client, &alice, &dealt, signings))?;
    let ratio = e2e.as_secs_f64() / local.as_secs_f64();
    println!(
        "end to end, two clusters' TEE processes through the cloud server: median {:.0} ms",
        e2e.as_secs_f64() * 1e3
    );
    println!("ratio end-to-end / one-thread: {ratio:.2} (goal <= 0.6)");

    // Online signing from presignatures, with a key without chain code (presignatures never
    // serve HD derivation): the pool is filled first (not timed per signing), then each
    // request of a full message is timed from REST call to verified signature.
    let plain = dep.deal_threshold(
        "bench-plain",
        2,
        &clusters,
        1,
        false,
        PrimeSource::File(fixture()),
    )?;
    let (made_each, online) = rt.block_on(presigned_online(&client, &alice, &plain, signings))?;
    let mut online = online;
    online.sort();
    let p50 = online[online.len() / 2];
    let worst = online[online.len() - 1];
    println!(
        "presignatures made ahead (dc1+dc2, one session each): {:.0} ms each",
        made_each.as_secs_f64() * 1e3
    );
    println!(
        "online signing from a presignature, end to end: p50 {:.1} ms, max {:.1} ms (goal p50 <= 20 ms)",
        p50.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
    println!(
        "{}",
        serde_json::json!({
            "signings": signings,
            "one_thread_median_ms": local.as_secs_f64() * 1e3,
            "e2e_median_ms": e2e.as_secs_f64() * 1e3,
            "ratio": ratio,
            "presignature_made_ms": made_each.as_secs_f64() * 1e3,
            "presignature_online_p50_ms": p50.as_secs_f64() * 1e3,
            "presignature_online_max_ms": worst.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
