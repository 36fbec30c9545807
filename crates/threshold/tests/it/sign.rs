//! Interactive signing with a dealt 2-of-3 HD key: every pair of signers, each party a
//! separate `Session` (or `SessionHost`) exchanging only serialized bytes; every signature
//! verified independently (bitcoin BIP-32 child key + libsecp256k1, low-s, v by recovery).
//! Three signings: the only full signings of the suite besides one presignature generation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::common::*;
use custos_threshold::{Output, Session, SessionHost, SessionKind, Signature, Step};
use sha2::{Digest, Sha256};

const PATH: [u32; 3] = [0, 1, 7];

fn sign_kind(
    share: &custos_threshold::ThresholdShare,
    pair: [u16; 2],
    pos: u16,
    digest: [u8; 32],
) -> SessionKind {
    SessionKind::Sign {
        share: share.clone(),
        parties: pair.to_vec(),
        my_position: pos,
        path: Some(PATH.to_vec()),
        digest,
    }
}

/// Signs with `pair` as two separate sessions through the in-process relay (`duplicate`: feed
/// every message twice and check the repeat is ignored).
fn sign_with_sessions(
    shares: &[custos_threshold::ThresholdShare],
    pair: [u16; 2],
    digest: [u8; 32],
    duplicate: bool,
) -> Signature {
    let e = eid();
    let sessions = (0..2u16)
        .map(|pos| {
            let share = &shares[usize::from(pair[usize::from(pos)])];
            Session::new(sign_kind(share, pair, pos, digest), e).expect("start")
        })
        .collect();
    let (outcomes, dups) = relay_with(sessions, None, duplicate);
    if duplicate {
        assert!(dups > 0);
    }
    let sigs: Vec<Signature> = outcomes
        .into_iter()
        .map(|o| match o.unwrap() {
            Output::Signature(s) => s,
            other => panic!("unexpected output {other:?}"),
        })
        .collect();
    assert_eq!(sigs[0], sigs[1], "both signers output the same signature");
    sigs[0]
}

/// Signs with `pair` through two `SessionHost`s (one per party, as two TEE processes would).
fn sign_with_hosts(
    shares: &[custos_threshold::ThresholdShare],
    pair: [u16; 2],
    digest: [u8; 32],
) -> Signature {
    let hosts = [SessionHost::new(4).unwrap(), SessionHost::new(4).unwrap()];
    let id = [7u8; 32];
    let e = eid();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut queue = VecDeque::new();
    for pos in 0..2u16 {
        let share = &shares[usize::from(pair[usize::from(pos)])];
        let out = hosts[usize::from(pos)]
            .start(id, sign_kind(share, pair, pos, digest), e, deadline)
            .expect("start");
        queue.extend(envelopes(pos, 2, out));
    }
    assert_eq!(hosts[0].len().unwrap(), 1);
    let mut sigs = vec![];
    while let Some(env) = queue.pop_front() {
        match hosts[usize::from(env.to)]
            .feed(id, env.from, env.declared, &env.bytes)
            .expect("feed")
        {
            Step::Continue(out) => queue.extend(envelopes(env.to, 2, out)),
            Step::Duplicate => panic!("unexpected duplicate"),
            Step::Done {
                output: Output::Signature(s),
                outgoing,
            } => {
                queue.extend(envelopes(env.to, 2, outgoing));
                sigs.push(s);
            }
            Step::Done { output, .. } => panic!("unexpected output {output:?}"),
        }
    }
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[0], sigs[1]);
    // finished sessions are dropped; their id is not accepted again
    assert_eq!(hosts[0].len().unwrap(), 0);
    assert_eq!(
        hosts[0]
            .feed(id, 1, custos_threshold::MsgType::Broadcast, b"{}")
            .unwrap_err(),
        custos_threshold::SessionError::Finished
    );
    sigs[0]
}

#[test]
fn dealt_hd_key_signs_with_every_pair() {
    let t0 = Instant::now();
    let shares = deal_2_of_3(true);
    let root = shares[0].public_key();
    let chain_code = shares[0].chain_code().expect("HD key");
    for s in &shares {
        assert_eq!(s.public_key(), root);
        assert_eq!(s.chain_code(), Some(chain_code));
        assert_eq!((s.threshold(), s.n()), (2, 3));
    }
    // child key: cggmp24 (SLIP-10) and bitcoin (BIP-32) agree
    let child = bip32_child(root, chain_code, &PATH);
    assert_eq!(
        shares[1].derive_child_public_key(&PATH).unwrap(),
        child.serialize()
    );

    for (k, pair) in [[0u16, 1], [1, 2], [0, 2]].into_iter().enumerate() {
        let digest: [u8; 32] = Sha256::digest(format!("custos test message {pair:?}")).into();
        let t = Instant::now();
        let sig = match k {
            0 => sign_with_sessions(&shares, pair, digest, false),
            1 => sign_with_sessions(&shares, pair, digest, true),
            _ => sign_with_hosts(&shares, pair, digest),
        };
        verify_independently(&sig, &child, &digest);
        eprintln!(
            "signers {pair:?}: verified, v={} [{:.2} s]",
            sig.v,
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("total {:.2} s", t0.elapsed().as_secs_f64());
}
