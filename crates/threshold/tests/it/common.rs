//! Test helpers: dealing with the TEST-ONLY fixture primes, an in-process relay that moves
//! only serialized bytes between separate `Session`s, and verification that does not use
//! cggmp24 (the `bitcoin` crate's BIP-32 and libsecp256k1).

use std::collections::VecDeque;

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos_threshold::{
    deal, fixtures, MsgType, Outgoing, Output, Session, SessionError, Signature, Step,
    ThresholdShare,
};
use rand_core::{OsRng, RngCore};

/// Deals a 2-of-3 key from the fixture primes.
pub fn deal_2_of_3(hd: bool) -> Vec<ThresholdShare> {
    let primes = fixtures::test_primes();
    deal(2, 3, hd, Some(primes[..3].to_vec()), &mut |_| {}).expect("deal")
}

/// A fresh random execution id.
pub fn eid() -> [u8; 32] {
    let mut e = [0u8; 32];
    OsRng.fill_bytes(&mut e);
    e
}

/// A message in flight: sender position, receiver position, declared type, bytes, and the
/// sender's outgoing record (phase, round).
#[derive(Clone)]
pub struct Envelope {
    pub from: u16,
    pub to: u16,
    pub declared: MsgType,
    pub round: u16,
    pub bytes: Vec<u8>,
}

/// Turns one party's outgoing messages into envelopes for each receiver.
pub fn envelopes(from: u16, parties: u16, out: Vec<Outgoing>) -> Vec<Envelope> {
    let mut v = Vec::new();
    for o in out {
        let declared = o.msg_type();
        match o.to {
            None => {
                for to in (0..parties).filter(|&j| j != from) {
                    v.push(Envelope {
                        from,
                        to,
                        declared,
                        round: o.round,
                        bytes: o.bytes.to_vec(),
                    });
                }
            }
            Some(to) => v.push(Envelope {
                from,
                to,
                declared,
                round: o.round,
                bytes: o.bytes.to_vec(),
            }),
        }
    }
    v
}

/// Hook to change (or drop: return false) a message in flight.
pub type Tamper<'a> = dyn FnMut(&mut Envelope) -> bool + 'a;

/// What happened to each party.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Done(Output),
    Failed(SessionError),
    /// Still waiting when nothing was left to deliver (a peer aborted).
    Stalled,
}

impl Outcome {
    pub fn unwrap_err(self) -> SessionError {
        match self {
            Outcome::Failed(e) => e,
            Outcome::Done(o) => panic!("expected an error, got {o:?}"),
            Outcome::Stalled => panic!("expected an error, party stalled"),
        }
    }
    pub fn unwrap(self) -> Output {
        match self {
            Outcome::Done(o) => o,
            Outcome::Failed(e) => panic!("party failed: {e}"),
            Outcome::Stalled => panic!("party stalled"),
        }
    }
}

/// Relays messages FIFO between separately created sessions (index = position) until nobody
/// can progress. Every message is fed as bytes, exactly as separate TEEs would receive them.
pub fn relay(
    sessions: Vec<(Session, Vec<Outgoing>)>,
    tamper: Option<&mut Tamper<'_>>,
) -> Vec<Outcome> {
    relay_with(sessions, tamper, false).0
}

/// [`relay`]; with `duplicate`, every message that does not finish its receiver is fed a second
/// time, which must be ignored. Returns the outcomes and the number of duplicates ignored.
pub fn relay_with(
    sessions: Vec<(Session, Vec<Outgoing>)>,
    mut tamper: Option<&mut Tamper<'_>>,
    duplicate: bool,
) -> (Vec<Outcome>, usize) {
    let mut duplicates = 0;
    let n = sessions.len() as u16;
    let mut queue: VecDeque<Envelope> = VecDeque::new();
    let mut parties: Vec<Option<Session>> = Vec::new();
    for (i, (s, out)) in sessions.into_iter().enumerate() {
        queue.extend(envelopes(i as u16, n, out));
        parties.push(Some(s));
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    while let Some(mut env) = queue.pop_front() {
        if let Some(t) = tamper.as_mut() {
            if !t(&mut env) {
                continue;
            }
        }
        let to = usize::from(env.to);
        let Some(session) = parties[to].as_mut() else {
            continue;
        };
        match session.feed(env.from, env.declared, &env.bytes) {
            Ok(Step::Continue(out)) => {
                queue.extend(envelopes(env.to, n, out));
                if duplicate {
                    match session.feed(env.from, env.declared, &env.bytes) {
                        Ok(Step::Duplicate) => duplicates += 1,
                        other => panic!("duplicate not ignored: {other:?}"),
                    }
                }
            }
            Ok(Step::Duplicate) => {}
            Ok(Step::Done { output, outgoing }) => {
                queue.extend(envelopes(env.to, n, outgoing));
                outcomes[to] = Some(Outcome::Done(output));
                parties[to] = None;
            }
            Err(e) => {
                outcomes[to] = Some(Outcome::Failed(e));
                parties[to] = None;
            }
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Stalled))
        .collect();
    (outcomes, duplicates)
}

/// The child public key at `path`, derived with the `bitcoin` crate's BIP-32 from the joint key
/// and chain code only (independent of cggmp24's SLIP-10).
pub fn bip32_child(public_key: [u8; 33], chain_code: [u8; 32], path: &[u32]) -> PublicKey {
    let ctx = Secp256k1::verification_only();
    let xpub = Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::from_normal_idx(0).unwrap(),
        public_key: PublicKey::from_slice(&public_key).unwrap(),
        chain_code: ChainCode::from(chain_code),
    };
    let path: Vec<ChildNumber> = path
        .iter()
        .map(|&i| ChildNumber::from_normal_idx(i).unwrap())
        .collect();
    xpub.derive_pub(&ctx, &path).unwrap().public_key
}

/// Verifies with libsecp256k1: low-s, signature valid for `pk`, and `v` recovers `pk`.
pub fn verify_independently(sig: &Signature, pk: &PublicKey, digest: &[u8; 32]) {
    let ctx = Secp256k1::new();
    assert_eq!(
        sig.public_key,
        pk.serialize(),
        "signature names another key"
    );
    let compact = sig.to_compact();
    let s = ecdsa::Signature::from_compact(&compact).unwrap();
    let mut normalized = s;
    normalized.normalize_s();
    assert_eq!(normalized, s, "high-s signature");
    let msg = Message::from_digest(*digest);
    ctx.verify_ecdsa(&msg, &s, pk)
        .expect("libsecp256k1 verifies");
    let rec = ecdsa::RecoverableSignature::from_compact(
        &compact,
        ecdsa::RecoveryId::from_i32(i32::from(sig.v)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        &ctx.recover_ecdsa(&msg, &rec).unwrap(),
        pk,
        "v does not recover the key"
    );
}
