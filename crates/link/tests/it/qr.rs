//! The QR channel (issue 15): envelopes as multipart URs drawn as QR codes and read back
//! from pixels. A 1 KiB sign request and its reply cross with 30 % of frames missed, the
//! rest shuffled, noisy, blurred and rotated 3°; a tampered frame never yields a wrong
//! envelope; independent tools (zbarimg, the bc-ur npm package) read what Custos draws and
//! Custos reads what bc-ur writes.

use std::path::PathBuf;
use std::process::Command;

use custos_link::qr::damage::{carry_envelope, Damage, DamagedChannel};
use custos_link::qr::{draw, read, FrameReceiver, FrameSender, MAX_PARTS};
use custos_link::{Envelope, EnvelopeKind, FrameFault, LinkError};

use crate::link::{counting_server, open_answer, Pair, CLUSTER};

/// A camera across a desk: 30 % of frames missed, the rest shuffled, noise of ±40 grey
/// levels, a blur and a 3° tilt.
fn desk(seed: u64) -> DamagedChannel {
    DamagedChannel::new(Damage::across_a_desk(seed))
}

fn sign_request(pair: &Pair) -> Vec<u8> {
    // A BIP-32 sign request with its approvals is about a kilobyte.
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    Envelope::seal(
        &pair.external(),
        CLUSTER,
        [0x51; 16],
        EnvelopeKind::Request,
        1,
        payload,
    )
    .unwrap()
    .encode()
    .unwrap()
}

#[tokio::test]
async fn a_sign_request_and_its_reply_cross_damaged_frames() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::new();
    let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
    let request = sign_request(&pair);
    let (arrived, there) = carry_envelope(&request, &mut desk(1), 400).unwrap();
    assert_eq!(
        arrived, request,
        "the envelope read from the pixels is the one sent"
    );
    assert!(there.read < there.shown, "frames were lost: {there:?}");
    eprintln!("request: {} bytes, {there:?}", request.len());
    let reply = server.handle_request(&arrived).await.unwrap();
    let (back, returned) = carry_envelope(&reply, &mut desk(2), 400).unwrap();
    eprintln!("reply: {} bytes, {returned:?}", reply.len());
    let answer = open_answer(&pair, &back);
    assert_eq!(&answer.payload[..3], b"ok:");
    assert_eq!(answer.payload.len(), 3 + 1024);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

fn parts_of(envelope: &[u8], n: usize) -> Vec<String> {
    let mut sender = FrameSender::new(envelope).unwrap();
    (0..n).map(|_| sender.next_part().unwrap()).collect()
}

fn refusal(r: Result<Option<Vec<u8>>, LinkError>) -> FrameFault {
    match r {
        Err(LinkError::Frame { what, .. }) => what,
        other => panic!("expected a refused frame, got {other:?}"),
    }
}

#[test]
fn a_tampered_frame_never_yields_a_wrong_envelope() {
    let pair = Pair::new();
    let request = sign_request(&pair);
    let parts = parts_of(&request, 40);
    // One character of a part changed: its bytewords CRC-32 refuses it.
    let mut receiver = FrameReceiver::new();
    let mut bad = parts[0].clone().into_bytes();
    let last = bad.len() - 10;
    bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    assert_eq!(refusal(receiver.receive(&bad)), FrameFault::NotAPart);
    // A part of another message among this one's: refused, what was taken kept.
    let other = parts_of(&sign_request(&Pair::new()), 1);
    receiver.receive(&parts[1]).unwrap();
    assert_eq!(
        refusal(receiver.receive(&other[0])),
        FrameFault::Inconsistent
    );
    // Another UR type, and a part claiming more fragments than an envelope has.
    assert_eq!(
        refusal(receiver.receive("ur:crypto-psbt/1-3/lpadaxcfaxhhcyhemkwnbs")),
        FrameFault::WrongType
    );
    let mut fields: Vec<&str> = parts[2].splitn(3, '/').collect();
    let claim = format!("3-{}", MAX_PARTS * 1000);
    fields[1] = &claim;
    let huge = fields.join("/");
    assert_eq!(refusal(receiver.receive(&huge)), FrameFault::TooManyParts);
    // The rest rebuild the envelope exactly.
    let mut whole = None;
    for p in &parts[1..] {
        if let Some(e) = receiver.receive(p).unwrap() {
            whole = Some(e);
            break;
        }
    }
    assert_eq!(whole.as_deref(), Some(&request[..]));
    // Whole, well-formed parts of an envelope whose bytes were changed (its CRC made to
    // match): the envelope's signature refuses it.
    let mut forged = Envelope::decode(&request).unwrap();
    forged.payload[0] ^= 1;
    let forged = forged.encode().unwrap();
    let mut receiver = FrameReceiver::new();
    let rebuilt = parts_of(&forged, 40)
        .iter()
        .find_map(|p| receiver.receive(p).unwrap())
        .unwrap();
    let keys = pair.internal();
    assert!(matches!(
        Envelope::open(&rebuilt, keys.peer_public(), CLUSTER),
        Err(LinkError::BadSignature)
    ));
}

/// Frames without a code, or with a code wrecked past its error correction, are refused by
/// name (a scanner skips them).
#[test]
fn unreadable_frames_are_named() {
    let blank = image::GrayImage::from_pixel(200, 200, image::Luma([255]));
    assert!(matches!(
        read(&blank),
        Err(LinkError::Frame {
            what: FrameFault::NoCode,
            ..
        })
    ));
    let part = parts_of(&sign_request(&Pair::new()), 1).remove(0);
    let frame = draw(&part).unwrap();
    assert_eq!(read(&frame).unwrap(), vec![part.to_ascii_uppercase()]);
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// zbarimg (zbar-tools) reads each frame Custos draws as the part it carries.
#[test]
fn zbarimg_reads_the_frames_custos_draws() {
    if Command::new("zbarimg").arg("--version").output().is_err() {
        assert!(
            !required("CUSTOS_TEST_REQUIRE_ZBAR"),
            "zbarimg missing: bash scripts/test-deps.sh"
        );
        eprintln!("zbarimg not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, part) in parts_of(&sign_request(&Pair::new()), 3).iter().enumerate() {
        let file = dir.path().join(format!("frame-{i}.png"));
        draw(part).unwrap().save(&file).unwrap();
        let out = Command::new("zbarimg")
            .args(["--raw", "-q"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.trim().to_ascii_lowercase(), *part);
    }
}

fn bc_ur() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let node = PathBuf::from(home).join(".cache/custos/node");
    if node.join("node_modules/@ngraveio/bc-ur").is_dir() {
        return Some(node);
    }
    assert!(
        !required("CUSTOS_TEST_REQUIRE_BCUR"),
        "@ngraveio/bc-ur missing: bash scripts/test-deps.sh"
    );
    None
}

fn node(modules: &std::path::Path, script: &str, input: &str) -> String {
    let out = Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(input)
        .env("NODE_PATH", modules.join("node_modules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The independent implementation reassembles Custos's parts into the same envelope, and
/// Custos reassembles the parts it makes.
#[test]
fn bc_ur_and_custos_read_each_others_parts() {
    let Some(modules) = bc_ur() else {
        eprintln!("@ngraveio/bc-ur not installed: skipped");
        return;
    };
    let request = sign_request(&Pair::new());
    // Custos -> bc-ur, every other part missing past the first few.
    let parts: Vec<String> = parts_of(&request, 60)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, p)| p)
        .collect();
    let read_back = node(
        &modules,
        r#"const { URDecoder } = require('@ngraveio/bc-ur');
           const d = new URDecoder();
           for (const p of process.argv[1].split(' ')) { if (!d.isComplete()) d.receivePart(p); }
           if (!d.isSuccess()) { console.error(d.resultError()); process.exit(1); }
           const ur = d.resultUR();
           console.log(ur.type + ' ' + ur.decodeCBOR().toString('hex'));"#,
        &parts.join(" "),
    );
    assert_eq!(
        read_back.trim(),
        format!("custos-envelope {}", hex::encode(&request))
    );
    // bc-ur -> Custos.
    let theirs = node(
        &modules,
        r#"const { UR, UREncoder } = require('@ngraveio/bc-ur');
           const bytes = UR.fromBuffer(Buffer.from(process.argv[1], 'hex'));
           const ur = new UR(bytes.cbor, 'custos-envelope');
           const e = new UREncoder(ur, 100, 0);
           const out = [];
           for (let i = 0; i < e.fragmentsLength * 5; i++) out.push(e.nextPart());
           console.log(out.join(' '));"#,
        &hex::encode(&request),
    );
    let mut receiver = FrameReceiver::new();
    let rebuilt = theirs
        .split_whitespace()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .find_map(|(_, p)| receiver.receive(p).unwrap());
    assert_eq!(rebuilt.as_deref(), Some(&request[..]));
}

/// The link over screen folders: the relay's [`QrTransport`] draws a request, a damaged
/// camera films it into the bridge's captured folder, the bridge's [`QrServer`] runs it
/// once and draws the reply, which a second camera films back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_crosses_screen_folders_and_a_damaged_camera() {
    use custos_link::qr::damage::DamagedCamera;
    use custos_link::qr::{QrDirs, QrServer, QrTransport};
    use custos_link::LinkClient;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let side = |name: &str| QrDirs {
        screen: dir.path().join(name).join("screen"),
        captured: dir.path().join(name).join("captured"),
    };
    let (relay, bridge) = (side("relay"), side("bridge"));
    let pair = Pair::new();
    let (server, calls) = counting_server(&dir.path().join("dedup.redb"), pair.internal());
    let poll = std::time::Duration::from_millis(10);
    let qr_server = Arc::new(QrServer::new(bridge.clone(), server, poll).unwrap());
    let serving = tokio::spawn({
        let qr_server = Arc::clone(&qr_server);
        async move { qr_server.run().await }
    });
    let check = custos_link::AnswerCheck::new(pair.external().peer_public(), CLUSTER);
    let transport = QrTransport::new(relay.clone(), poll, check).unwrap();
    let client = LinkClient::new(transport, pair.external(), crate::link::config(CLUSTER));

    let stop = Arc::new(AtomicBool::new(false));
    let filming = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let (mut there, mut back) = (
                DamagedCamera::new(Damage::across_a_desk(3)),
                DamagedCamera::new(Damage::across_a_desk(4)),
            );
            let mut filmed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                filmed.extend(
                    there
                        .film(&relay.screen, &bridge.captured)
                        .unwrap_or_default(),
                );
                filmed.extend(
                    back.film(&bridge.screen, &relay.captured)
                        .unwrap_or_default(),
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            filmed
        }
    });
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let answer = tokio::time::timeout(crate::link::TEST_BOUND, client.request(payload.clone()))
        .await
        .expect("bounded")
        .expect("the request crosses");
    assert_eq!(&answer[3..], &payload[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop.store(true, Ordering::Relaxed);
    let filmed = filming.join().unwrap();
    eprintln!("filmed: {filmed:?}");
    assert!(filmed.len() >= 2, "a request and its reply were filmed");
    let stats = qr_server.capture_stats();
    assert_eq!(
        stats.envelopes, 1,
        "the bridge rebuilt the request once: {stats:?}"
    );
    let shown: usize = filmed.iter().map(|f| f.shown).sum();
    let caught: usize = filmed.iter().map(|f| f.caught).sum();
    assert!(caught < shown, "the camera missed frames: {filmed:?}");
    serving.abort();
}

/// Two envelopes' parts interleaved, with a foreign code among them: each envelope comes
/// back once, whole.
#[test]
fn a_reassembler_sorts_interleaved_envelopes() {
    use custos_link::qr::Reassembler;
    let pair = Pair::new();
    let one = sign_request(&pair);
    let two = Envelope::seal(
        &pair.external(),
        CLUSTER,
        [0x52; 16],
        EnvelopeKind::Request,
        2,
        vec![9; 700],
    )
    .unwrap()
    .encode()
    .unwrap();
    let (a, b) = (parts_of(&one, 30), parts_of(&two, 30));
    let mut reassembler = Reassembler::new();
    let mut out = Vec::new();
    for (x, y) in a.iter().zip(&b) {
        for part in [x, y] {
            if let Some(envelope) = reassembler.receive(part).unwrap() {
                out.push(envelope);
            }
        }
    }
    assert_eq!(out.len(), 2, "each envelope once, leftovers ignored");
    assert!(out.contains(&one) && out.contains(&two));
    let foreign = "ur:crypto-psbt/1-3/lpadaxcfaxhlcywdhkwzta";
    assert!(matches!(
        reassembler.receive(foreign),
        Err(LinkError::Frame {
            what: FrameFault::WrongType,
            ..
        })
    ));
}
