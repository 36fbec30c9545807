//! `SessionHost`: sessions on a worker thread, bounded, with deadlines. Uses keygen sessions
//! (milliseconds); a host-driven signing is in sign.rs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::common::*;
use custos_threshold::{MsgType, Output, SessionError, SessionHost, SessionKind, Step};

fn keygen(i: u16) -> SessionKind {
    SessionKind::Keygen {
        my_index: i,
        n: 3,
        t: 2,
        hd: true,
    }
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn host_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SessionHost>();
}

#[test]
fn keygen_through_three_hosts() {
    let hosts: Vec<SessionHost> = (0..3).map(|_| SessionHost::new(8).unwrap()).collect();
    let id = [1u8; 32];
    let e = eid();
    let mut queue = VecDeque::new();
    for i in 0..3u16 {
        queue.extend(envelopes(
            i,
            3,
            hosts[usize::from(i)]
                .start(id, keygen(i), e, later())
                .unwrap(),
        ));
    }
    // a wrong sender position is refused without harming the session
    let first = queue[0].clone();
    assert!(matches!(
        hosts[usize::from(first.to)].feed(id, first.to, first.declared, &first.bytes),
        Err(SessionError::InvalidParameters(_))
    ));
    assert_eq!(hosts[usize::from(first.to)].len().unwrap(), 1);
    let mut keys = vec![];
    while let Some(env) = queue.pop_front() {
        match hosts[usize::from(env.to)]
            .feed(id, env.from, env.declared, &env.bytes)
            .unwrap()
        {
            Step::Continue(out) => queue.extend(envelopes(env.to, 3, out)),
            Step::Duplicate => panic!("duplicate"),
            Step::Done {
                output: Output::Incomplete(s),
                outgoing,
            } => {
                assert!(outgoing.is_empty());
                keys.push(s.public_key());
            }
            Step::Done { output, .. } => panic!("unexpected {output:?}"),
        }
    }
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| *k == keys[0]));
    for h in &hosts {
        assert!(h.is_empty().unwrap());
        // ids are not reused
        assert_eq!(
            h.start(id, keygen(0), eid(), later()).unwrap_err(),
            SessionError::SessionExists
        );
    }
}

#[test]
fn bound_duplicate_ids_abort_and_unknown() {
    let host = SessionHost::new(2).unwrap();
    host.start([1; 32], keygen(0), eid(), later()).unwrap();
    assert_eq!(
        host.start([1; 32], keygen(0), eid(), later()).unwrap_err(),
        SessionError::SessionExists
    );
    host.start([2; 32], keygen(1), eid(), later()).unwrap();
    assert_eq!(
        host.start([3; 32], keygen(2), eid(), later()).unwrap_err(),
        SessionError::TooManySessions { limit: 2 }
    );
    assert_eq!(host.len().unwrap(), 2);
    assert!(host.abort([1; 32]).unwrap());
    assert!(!host.abort([1; 32]).unwrap());
    assert_eq!(
        host.feed([1; 32], 1, MsgType::Broadcast, b"{}")
            .unwrap_err(),
        SessionError::AlreadyAborted
    );
    assert_eq!(
        host.feed([9; 32], 1, MsgType::Broadcast, b"{}")
            .unwrap_err(),
        SessionError::UnknownSession
    );
    // a bad message ends the session
    assert!(matches!(
        host.feed([2; 32], 0, MsgType::Broadcast, b"not json"),
        Err(SessionError::BadMessage { from: 0, .. })
    ));
    assert!(host.is_empty().unwrap());
    // a start with invalid parameters leaves the id usable
    let bad = SessionKind::Keygen {
        my_index: 5,
        n: 3,
        t: 2,
        hd: true,
    };
    assert!(matches!(
        host.start([4; 32], bad, eid(), later()),
        Err(SessionError::InvalidParameters(_))
    ));
    host.start([4; 32], keygen(0), eid(), later()).unwrap();
    assert!(matches!(
        host.start([5; 32], keygen(0), eid(), Instant::now()),
        Err(SessionError::InvalidParameters(_))
    ));
}

#[test]
fn sessions_expire() {
    let host = SessionHost::new(4).unwrap();
    host.start(
        [1; 32],
        keygen(0),
        eid(),
        Instant::now() + Duration::from_millis(100),
    )
    .unwrap();
    host.start([2; 32], keygen(0), eid(), later()).unwrap();
    assert_eq!(host.len().unwrap(), 2);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(host.len().unwrap(), 1);
    assert_eq!(
        host.feed([1; 32], 1, MsgType::Broadcast, b"{}")
            .unwrap_err(),
        SessionError::Expired
    );
    assert_eq!(
        host.start([1; 32], keygen(0), eid(), later()).unwrap_err(),
        SessionError::SessionExists
    );
}

/// Deferred calls queue in order and are collected later: a keygen relayed entirely through
/// deferred feeds (several queued back to back before any answer is read), and an aux-info
/// start (over a second of work) that is not ready at once and can be aborted meanwhile.
#[test]
fn deferred_calls_run_in_order_and_are_collected_later() {
    let hosts: Vec<SessionHost> = (0..3).map(|_| SessionHost::new(8).unwrap()).collect();
    let id = [7u8; 32];
    let e = eid();
    let mut queue = VecDeque::new();
    let starts: Vec<_> = (0..3u16)
        .map(|i| hosts[usize::from(i)].start_deferred(id, keygen(i), e, later()))
        .collect();
    for (i, p) in starts.into_iter().enumerate() {
        let out = p.wait(Duration::from_secs(30)).unwrap().unwrap();
        queue.extend(envelopes(i as u16, 3, out));
    }
    let mut keys = vec![];
    while !queue.is_empty() {
        // Queue every message in flight before collecting any answer.
        let pending: Vec<_> = queue
            .drain(..)
            .map(|env| {
                let to = env.to;
                (
                    to,
                    hosts[usize::from(to)].feed_deferred(id, env.from, env.declared, &env.bytes),
                )
            })
            .collect();
        for (to, p) in pending {
            match p.wait(Duration::from_secs(30)).unwrap().unwrap() {
                Step::Continue(out) => queue.extend(envelopes(to, 3, out)),
                Step::Duplicate => panic!("duplicate"),
                Step::Done {
                    output: Output::Incomplete(s),
                    ..
                } => keys.push(s.public_key()),
                Step::Done { output, .. } => panic!("unexpected {output:?}"),
            }
        }
    }
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| *k == keys[0]));

    let host = &hosts[0];
    let aux = SessionKind::AuxInfo {
        my_index: 0,
        n: 3,
        primes: custos_threshold::fixtures::test_primes().remove(0),
    };
    let started = host.start_deferred([8; 32], aux, eid(), later());
    assert!(
        started.wait(Duration::ZERO).is_none(),
        "aux info is not instant"
    );
    host.abort_deferred([8; 32]);
    // The start completes first, then the abort, in queue order.
    assert!(!started
        .wait(Duration::from_secs(60))
        .unwrap()
        .unwrap()
        .is_empty());
    assert!(host.is_empty().unwrap());
    drop(hosts);
}

#[test]
fn primes_files_are_lists_of_checked_sets() {
    let sets = custos_threshold::fixtures::test_primes();
    let json = serde_json::to_vec(&sets).unwrap();
    let back = custos_threshold::Primes::list_from_bytes(&json).unwrap();
    assert_eq!(back.len(), sets.len());
    assert!(custos_threshold::Primes::list_from_bytes(b"[{}]").is_err());
    assert!(custos_threshold::Primes::list_from_bytes(b"nope").is_err());
    assert_eq!(
        custos_threshold::Primes::list_from_bytes(b"[]")
            .unwrap()
            .len(),
        0
    );
}

/// Found by the `dealer_bundle` fuzz target: fast-paillier passed an integer's radix to
/// num-bigint, which panics outside 2..=36, so one edited primes file (or share, bundle or
/// peer message: every serialized Paillier integer names its radix) stopped the TEE process.
/// Now a named decoding refusal (vendor/fast-paillier/CUSTOS-PATCH.md), in both of serde's
/// forms of the integer (`{"radix": r, "value": v}` and `[r, v]`).
#[test]
fn an_integer_in_another_radix_is_refused_not_a_panic() {
    let sets = custos_threshold::fixtures::test_primes();
    let json = String::from_utf8(serde_json::to_vec(&sets).unwrap()).unwrap();
    assert!(json.contains("{\"radix\":16,\"value\":\""));
    let refused = |bytes: &[u8]| match custos_threshold::Primes::list_from_bytes(bytes) {
        Err(custos_threshold::ThresholdError::Decode { what, reason }) => {
            assert_eq!(what, "primes file");
            reason
        }
        other => panic!("{other:?}"),
    };
    for radix in ["99", "0", "1", "37", "65535"] {
        let bad = json.replacen("\"radix\":16", &format!("\"radix\":{radix}"), 1);
        assert!(refused(bad.as_bytes()).contains("Invalid hex number"));
        // The same integer as a sequence.
        let bad = json.replacen("{\"radix\":16,\"value\":", &format!("[{radix},"), 1);
        let bad = bad.replacen("\"}", "\"]", 1);
        assert!(
            refused(bad.as_bytes()).contains("Invalid hex number"),
            "{radix}"
        );
    }
    // The sequence form with radix 16 is read: the refusals above are the radix's.
    let seq = json
        .replacen("{\"radix\":16,\"value\":", "[16,", 1)
        .replacen("\"}", "\"]", 1);
    assert_eq!(
        custos_threshold::Primes::list_from_bytes(seq.as_bytes())
            .unwrap()
            .len(),
        sets.len()
    );
}
