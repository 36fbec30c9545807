//! The async pool against a TEE stand-in: a connection abandoned half-way never hands its
//! late answer to the next caller; a connection the TEE closed is replaced without the
//! request running twice, and a request the TEE took and never answered is not sent again;
//! a hung TEE is given up on at the deadline; a connection holding more than its answer is
//! dropped; answers not signed by the pinned key are refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custos_wire::client::{ClientError, ANSWER_TIMEOUT};
use custos_wire::protocol::{Request, Response};

use crate::fake_tee::{Conduct, FakeTee, Script};
use crate::test_pki::key;
use crate::TeePool;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A stand-in that answers `ListKeys` and `ListThresholdKeys` as `conduct` says, a pool
/// connected to it (waiting `answer_timeout` for an answer), and the count of requests it
/// ran.
fn counting_tee(
    conduct: Conduct,
    answer_timeout: Duration,
) -> (FakeTee, TeePool, Arc<AtomicUsize>) {
    let d = key();
    let runs = Arc::new(AtomicUsize::new(0));
    let runs_c = runs.clone();
    let script: Script = Arc::new(move |r: &Request| {
        runs_c.fetch_add(1, Ordering::SeqCst);
        match r {
            Request::ListKeys => Ok(Response::Keys(vec![])),
            Request::ListThresholdKeys => Ok(Response::ThresholdKeys(vec![])),
            other => panic!("unexpected request {other:?}"),
        }
    });
    let fake = FakeTee::start_with(&d, &d, script, conduct);
    let (pool, _) = TeePool::connect_with(&fake.socket, 4, answer_timeout).unwrap();
    (fake, pool, runs)
}

#[test]
fn an_answer_abandoned_half_way_never_reaches_the_next_caller() {
    let d = key();
    // `ListKeys` answers late (after its caller gave up); `ListThresholdKeys` at once.
    let fake = FakeTee::start(
        &d,
        &d,
        Arc::new(|r: &Request| match r {
            Request::ListKeys => {
                std::thread::sleep(Duration::from_millis(300));
                Ok(Response::Keys(vec![]))
            }
            Request::ListThresholdKeys => Ok(Response::ThresholdKeys(vec![])),
            other => panic!("unexpected request {other:?}"),
        }),
    );
    let (pool, _) = TeePool::connect(&fake.socket, 4).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), pool.call(Request::ListKeys)).await;
        assert!(gave_up.is_err(), "the slow call should have timed out");
        // Had the abandoned connection gone back to the pool, this call would read the
        // late `Keys` answer (signed over another request: refused) instead of its own.
        for _ in 0..3 {
            let answer = pool.call(Request::ListThresholdKeys).await.unwrap();
            assert!(matches!(answer, Response::ThresholdKeys(_)), "{answer:?}");
        }
    });
}

#[test]
fn a_connection_the_tee_closed_is_replaced_and_the_request_runs_once() {
    // Each connection gets one answer, then the stand-in closes it, as a restarted TEE
    // process leaves its clients' idle connections.
    let (fake, pool, runs) = counting_tee(
        Conduct {
            requests: 1,
            ..Conduct::default()
        },
        ANSWER_TIMEOUT,
    );
    let rt = runtime();
    for call in 1..=3 {
        let answer = rt.block_on(pool.call(Request::ListKeys)).unwrap();
        assert!(matches!(answer, Response::Keys(_)), "{answer:?}");
        assert_eq!(runs.load(Ordering::SeqCst), call, "the request ran once");
        // The connection that carried it is closed before the next call takes it.
        let closed_by = std::time::Instant::now() + Duration::from_secs(10);
        while fake.closed.load(Ordering::SeqCst) < call + 1 {
            assert!(
                std::time::Instant::now() < closed_by,
                "stand-in did not close"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn a_response_signed_by_another_key_is_refused() {
    let (d, rogue) = (key(), key());
    let fake = FakeTee::start(
        &d,
        &rogue,
        Arc::new(|r: &Request| match r {
            Request::ListKeys => Ok(Response::Keys(vec![])),
            other => panic!("unexpected request {other:?}"),
        }),
    );
    // The pool pins D from the status (first contact); every later answer must be D's.
    let (pool, pinned) = TeePool::connect(&fake.socket, 4).unwrap();
    assert_eq!(pinned, d.public_key_raw());
    let refused = runtime().block_on(pool.call(Request::ListKeys));
    assert!(
        matches!(refused, Err(ClientError::ResponseSignature(_))),
        "{refused:?}"
    );
}

#[test]
fn a_request_the_tee_took_and_never_answered_is_not_sent_again() {
    // The stand-in runs the request and hangs up without an answer: the request reached
    // the TEE, so sending it again (even on a fresh connection) could run it twice.
    let (_fake, pool, runs) = counting_tee(
        Conduct {
            answers: 0,
            ..Conduct::default()
        },
        ANSWER_TIMEOUT,
    );
    let lost = runtime().block_on(pool.call(Request::ListKeys));
    assert!(matches!(lost, Err(ClientError::Io(_))), "{lost:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the request ran once");
}

#[test]
fn a_connection_holding_a_second_answer_is_not_reused() {
    // A TEE gone wrong answers every request twice (in one write): the copy must not be
    // read as the answer to the next request on that connection (another request each
    // time, so a stray answer would also fail its signature check).
    let (_fake, pool, runs) = counting_tee(
        Conduct {
            copies: 2,
            ..Conduct::default()
        },
        ANSWER_TIMEOUT,
    );
    let rt = runtime();
    for call in 1..=4 {
        if call % 2 == 1 {
            let answer = rt.block_on(pool.call(Request::ListKeys)).unwrap();
            assert!(matches!(answer, Response::Keys(_)), "{answer:?}");
        } else {
            let answer = rt.block_on(pool.call(Request::ListThresholdKeys)).unwrap();
            assert!(matches!(answer, Response::ThresholdKeys(_)), "{answer:?}");
        }
        assert_eq!(runs.load(Ordering::SeqCst), call);
    }
}

#[test]
fn a_pooled_connection_whose_answer_was_lost_is_not_tried_again() {
    // The first request is answered and its connection pooled; the second, sent over it,
    // runs and its answer is lost: it reached the TEE, so no fresh connection carries it.
    let (_fake, pool, runs) = counting_tee(
        Conduct {
            answers: 1,
            ..Conduct::default()
        },
        ANSWER_TIMEOUT,
    );
    let rt = runtime();
    rt.block_on(pool.call(Request::ListKeys)).unwrap();
    let lost = rt.block_on(pool.call(Request::ListKeys));
    assert!(matches!(lost, Err(ClientError::Io(_))), "{lost:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the second request ran once"
    );
}

#[test]
fn a_tee_that_never_answers_is_given_up_on_at_the_deadline() {
    let (_fake, pool, runs) = counting_tee(
        Conduct {
            answers: 0,
            hang: true,
            ..Conduct::default()
        },
        Duration::from_millis(300),
    );
    let hung = runtime().block_on(pool.call(Request::ListKeys));
    assert!(
        matches!(&hung, Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "{hung:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
