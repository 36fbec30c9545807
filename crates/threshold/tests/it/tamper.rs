//! Misbehaving peers: every case must abort the honest party's session naming the sender.
//! None of these runs a full signing (they abort in round 1 or 2).

use std::time::Instant;

use crate::common::*;
use custos_threshold::{
    inspect, MsgType, Phase, ProtocolKind, Session, SessionError, SessionKind, Step, ThresholdShare,
};
use sha2::Sha256;

const ROUND_1A: u16 = 0;
const ROUND_1B: u16 = 1;

fn start(
    share: &ThresholdShare,
    pos: u16,
    eid: [u8; 32],
) -> (Session, Vec<custos_threshold::Outgoing>) {
    Session::new(
        SessionKind::Sign {
            share: share.clone(),
            parties: vec![0, 1],
            my_position: pos,
            path: Some(vec![3, 4]),
            digest: [0x42; 32],
        },
        eid,
    )
    .expect("start")
}

fn pair(
    shares: &[ThresholdShare],
    e0: [u8; 32],
    e1: [u8; 32],
) -> Vec<(Session, Vec<custos_threshold::Outgoing>)> {
    vec![start(&shares[0], 0, e0), start(&shares[1], 1, e1)]
}

/// Replaces one hex digit of the first big integer inside `field` of the JSON message.
fn flip_hex_digit_after(bytes: &mut [u8], field: &str) {
    let text = std::str::from_utf8(bytes).unwrap();
    let f = text.find(&format!("\"{field}\"")).expect("field");
    let v = f + text[f..].find("\"value\":\"").expect("integer value") + "\"value\":\"".len() + 20;
    bytes[v] = if bytes[v] == b'0' { b'1' } else { b'0' };
}

#[test]
fn flipped_byte_in_round1b_aborts_naming_the_sender() {
    let t = Instant::now();
    let shares = deal_2_of_3(true);
    let e = eid();
    let mut flipped = 0;
    let mut tamper = |env: &mut Envelope| {
        if env.from == 1 && env.round == ROUND_1B {
            assert_eq!(env.declared, MsgType::P2P);
            flip_hex_digit_after(&mut env.bytes, "psi0");
            flipped += 1;
        }
        true
    };
    let mut outcomes = relay(pair(&shares, e, e), Some(&mut tamper));
    assert_eq!(flipped, 1);
    match outcomes.remove(0).unwrap_err() {
        SessionError::Aborted {
            blamed,
            phase,
            detail,
        } => {
            assert_eq!(blamed, vec![1], "{detail}");
            assert_eq!(phase, Phase::GetAb);
            eprintln!("party 0: aborted, blamed {blamed:?}, phase {phase}: {detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    eprintln!("[{:.2} s]", t.elapsed().as_secs_f64());
}

/// Regression test for the vendored fix (vendor/cggmp24/CUSTOS-PATCH.md): upstream accepted a
/// Round1b whose ψ⁰ was invalid as long as ψ¹ was valid.
#[test]
fn round1b_with_one_invalid_psi_proof_aborts() {
    let t = Instant::now();
    let shares = deal_2_of_3(true);
    let e = eid();
    let mut tamper = |env: &mut Envelope| {
        if env.from == 1 && env.round == ROUND_1B {
            let mut msg: cggmp24::signing::msg::Msg<cggmp24::supported_curves::Secp256k1, Sha256> =
                serde_json::from_slice(&env.bytes).unwrap();
            match &mut msg {
                cggmp24::signing::msg::Msg::Round1b(r) => r.psi0 = r.psi1.clone(),
                _ => panic!("round 1 is Round1b"),
            }
            env.bytes = serde_json::to_vec(&msg).unwrap();
        }
        true
    };
    let mut outcomes = relay(pair(&shares, e, e), Some(&mut tamper));
    match outcomes.remove(0).unwrap_err() {
        SessionError::Aborted { blamed, detail, .. } => {
            assert_eq!(blamed, vec![1], "{detail}");
            assert!(detail.contains("pi_enc::verify(K) failed"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    eprintln!("[{:.2} s]", t.elapsed().as_secs_f64());
}

#[test]
fn messages_of_another_session_abort_naming_the_sender() {
    let t = Instant::now();
    let shares = deal_2_of_3(true);
    // party 1 runs with another execution id (a relay splicing two sessions together)
    let mut outcomes = relay(pair(&shares, eid(), eid()), None);
    for (me, other) in [(0usize, 1u16), (1, 0)] {
        match outcomes.remove(0).unwrap_err() {
            SessionError::Aborted { blamed, detail, .. } => {
                assert_eq!(blamed, vec![other], "party {me}: {detail}");
                eprintln!("party {me}: blamed {blamed:?}: {detail}");
            }
            e => panic!("party {me}: unexpected {e:?}"),
        }
    }
    eprintln!("[{:.2} s]", t.elapsed().as_secs_f64());
}

#[test]
fn duplicate_is_ignored_and_equivocation_aborts() {
    let t = Instant::now();
    let shares = deal_2_of_3(true);
    let e = eid();
    let (mut s0, _) = start(&shares[0], 0, e);
    let (_s1, out1) = start(&shares[1], 1, e);
    // the same party, same session, restarted: a second, different Round1a
    let (_s1b, out1b) = start(&shares[1], 1, e);
    let round1a = |out: &[custos_threshold::Outgoing]| {
        out.iter()
            .find(|o| o.round == ROUND_1A)
            .unwrap()
            .bytes
            .clone()
    };
    let (a, b) = (round1a(&out1), round1a(&out1b));
    assert_ne!(a, b);
    let info = inspect(ProtocolKind::Sign, &a).unwrap();
    assert_eq!(
        (info.phase, info.round, info.msg_type),
        (Phase::GetAb, ROUND_1A, MsgType::Broadcast)
    );

    assert!(matches!(
        s0.feed(1, MsgType::Broadcast, &a),
        Ok(Step::Continue(_))
    ));
    assert!(matches!(
        s0.feed(1, MsgType::Broadcast, &a),
        Ok(Step::Duplicate)
    ));
    match s0.feed(1, MsgType::Broadcast, &b) {
        Err(SessionError::Aborted {
            blamed,
            phase,
            detail,
        }) => {
            assert_eq!(blamed, vec![1]);
            assert_eq!(phase, Phase::GetAb);
            assert!(detail.contains("equivocation"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!s0.is_running());
    assert_eq!(
        s0.feed(1, MsgType::Broadcast, &a).unwrap_err(),
        SessionError::AlreadyAborted
    );
    eprintln!("[{:.2} s]", t.elapsed().as_secs_f64());
}

#[test]
fn wrong_declared_type_garbage_and_bad_senders_are_refused() {
    let shares = deal_2_of_3(true);
    let e = eid();
    let (_s1, out1) = start(&shares[1], 1, e);
    let round1a = out1
        .iter()
        .find(|o| o.round == ROUND_1A)
        .unwrap()
        .bytes
        .clone();

    // a sender that is not another party: refused, session unchanged
    let (mut s0, _) = start(&shares[0], 0, e);
    assert!(matches!(
        s0.feed(0, MsgType::Broadcast, &round1a),
        Err(SessionError::InvalidParameters(_))
    ));
    assert!(matches!(
        s0.feed(2, MsgType::Broadcast, &round1a),
        Err(SessionError::InvalidParameters(_))
    ));
    assert!(s0.is_running());
    // broadcast content declared p2p: bad message from the sender, session over
    match s0.feed(1, MsgType::P2P, &round1a) {
        Err(SessionError::BadMessage { from: 1, reason }) => eprintln!("{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!s0.is_running());

    // undecodable and oversized messages
    let (mut s0, _) = start(&shares[0], 0, e);
    assert!(matches!(
        s0.feed(1, MsgType::Broadcast, b"{\"Round1a\":"),
        Err(SessionError::BadMessage { from: 1, .. })
    ));
    let (mut s0, _) = start(&shares[0], 0, e);
    let big = vec![b' '; custos_threshold::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        s0.feed(1, MsgType::Broadcast, &big),
        Err(SessionError::BadMessage { from: 1, .. })
    ));
    // a keygen message in a signing session
    let keygen_out = Session::new(
        SessionKind::Keygen {
            my_index: 1,
            n: 3,
            t: 2,
            hd: true,
        },
        e,
    )
    .unwrap()
    .1;
    let (mut s0, _) = start(&shares[0], 0, e);
    assert!(matches!(
        s0.feed(1, MsgType::Broadcast, &keygen_out[0].bytes),
        Err(SessionError::BadMessage { from: 1, .. })
    ));
}
