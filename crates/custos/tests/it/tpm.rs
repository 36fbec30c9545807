//! `custos tee serve --platform tpm` as real processes on a software TPM of each test's own
//! (`swtpm`, skipped where it is not installed unless `CUSTOS_TEST_REQUIRE_SWTPM` is set): a
//! store copy put back is refused at start by name, while the software platform opens it and
//! accepts a used request again (its documented limit); kill -9 during a burst of commits
//! never raises a false alarm and loses no acknowledged wallet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use custos::tee_process::{KeyArg, SpawnError, TeePlatform, TeeProcess};
use custos_tee_host::tpm::{PcrSelection, TpmOptions, TpmPlatform, DEFAULT_NV_INDEX};
use custos_tee_host::{SealingKeySource, StoreError};
use custos_test_kit::swtpm::{copy_dir, replace_dir, Swtpm};
use custos_wire::client::TeeClient;
use custos_wire::protocol::{KeyInfo, Request, Response};

/// What a store copy put back leaves: the fixture (its TEE stopped, the older copy in place
/// of its store), the request executed after the copy was taken and the wallet it made, the
/// restart's outcome, and the latest store (copied before the older one was put back).
struct PutBack {
    fx: Fixture,
    after_copy: Request,
    made: KeyInfo,
    restart: Result<(), SpawnError>,
    latest: std::path::PathBuf,
}

fn wallet(r: Response) -> KeyInfo {
    match r {
        Response::Wallet(k) => k,
        r => panic!("unexpected {r:?}"),
    }
}

/// A wallet made and signed with, the TEE stopped and its store copied; restarted, a second
/// wallet made by request R2 (its id is then used: a repeat of R2 answers the same wallet,
/// never a second one), stopped again; the copy put back in place of the store, and a start.
fn create_copy_create_put_back(platform: TeePlatform) -> PutBack {
    let mut fx = Fixture::on(platform);
    let w = fx.create_wallet(1, &["alice"]);
    assert!(matches!(
        fx.sign(&w.key_id, &[0], [1; 32], &["alice"]).unwrap(),
        Response::Signature(_)
    ));
    fx.tee.process.kill();
    let store = fx.tee.process.store.clone();
    let copy = fx.pki.path().join("store-copy");
    copy_dir(&store, &copy);

    fx.tee.crash_and_restart();
    let r2 = fx.create_wallet_request(1, &["alice"]);
    let made = wallet(fx.tee.call(&r2).unwrap());
    assert_eq!(wallet(fx.tee.call(&r2).unwrap()), made, "R2 has one effect");
    assert_eq!(fx.tee.keys().len(), 2);
    fx.tee.process.kill();
    let latest = fx.pki.path().join("store-latest");
    copy_dir(&store, &latest);

    replace_dir(&store, &copy);
    let restart = fx.tee.process.restart();
    PutBack {
        fx,
        after_copy: r2,
        made,
        restart,
        latest,
    }
}

#[test]
fn tpm_tee_process_refuses_a_store_copy_put_back() {
    let Some(tpm) = Swtpm::start() else { return };
    let PutBack {
        mut fx,
        after_copy,
        made,
        restart,
        latest,
    } = create_copy_create_put_back(TeePlatform::tpm(tpm.tcti()));
    let err = restart.expect_err("a store copy put back must not open");
    let SpawnError::Exited { stderr, .. } = &err else {
        panic!("{err}")
    };
    // The verdict the operator (or the node's supervisor) reads, by name and with numbers.
    assert!(stderr.starts_with("error: store_rolled_back: "), "{stderr}");
    assert!(stderr.contains("was rolled back"), "{stderr}");

    // The latest store put back opens; R2 still answers the wallet it made.
    replace_dir(&fx.tee.process.store, &latest);
    fx.tee.crash_and_restart();
    assert_eq!(fx.tee.status().platform, "tpm");
    assert_eq!(wallet(fx.tee.call(&after_copy).unwrap()), made);
    assert_eq!(fx.tee.keys().len(), 2);
}

/// The software platform's documented limit, with real processes: its counter lives in the
/// store, so the same copy put back opens, R2's id is unused again, and R2's approvals make
/// a second, different wallet. (`custos-tee-host`'s
/// `the_software_platform_cannot_refuse_a_whole_folder_put_back` shows it on the platform.)
#[test]
fn software_tee_process_opens_a_store_copy_put_back_and_repeats_a_used_request() {
    let PutBack {
        mut fx,
        after_copy,
        made,
        restart,
        ..
    } = create_copy_create_put_back(TeePlatform::Software);
    restart.expect("the software platform cannot tell a copy put back");
    fx.tee.client = fx.tee.process.client().unwrap();
    fx.tee
        .client
        .expect_device_key(fx.tee.device_key.clone().unwrap());
    assert_eq!(fx.tee.status().platform, "software");
    assert_eq!(fx.tee.keys().len(), 1, "the wallet R2 made is gone");
    let again = wallet(fx.tee.call(&after_copy).unwrap());
    assert_ne!(again, made, "R2 executed a second time");
}

/// Wallet creations from `clients` connections at once, the process killed (-9) once
/// `kill_at` of them are acknowledged (at the latest after 30 s) and `then` later, so that
/// the kill lands while requests are in flight whatever the machine's speed. Each client
/// stops at its first failed request; returns the acknowledged wallets and whether a
/// request failed (the kill landed during the burst).
fn burst(
    fx: &Fixture,
    clients: usize,
    per_client: usize,
    kill_at: usize,
    then: Duration,
) -> (Vec<KeyInfo>, bool) {
    let batches: Vec<Vec<Request>> = (0..clients)
        .map(|_| {
            (0..per_client)
                .map(|_| fx.create_wallet_request(1, &["alice"]))
                .collect()
        })
        .collect();
    let device_key = fx.tee.device_key.clone().unwrap();
    let pid = fx.tee.process.pid().unwrap();
    let socket = fx.tee.process.socket.clone();
    let acks = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let socket = socket.clone();
                let device_key = device_key.clone();
                let acks = &acks;
                s.spawn(move || {
                    let mut client = TeeClient::connect(&socket).unwrap();
                    client.expect_device_key(device_key);
                    let mut acked = Vec::new();
                    for req in &batch {
                        match client.call(req) {
                            Ok(Response::Wallet(k)) => {
                                acked.push(k);
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => panic!("unexpected {r:?}"),
                            Err(_) => return (acked, true),
                        }
                    }
                    (acked, false)
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.load(Ordering::SeqCst) < kill_at && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(then);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut acked = Vec::new();
        let mut interrupted = false;
        for w in workers {
            let (a, i) = w.join().unwrap();
            acked.extend(a);
            interrupted |= i;
        }
        (acked, interrupted)
    })
}

fn tpm_options(tpm: &Swtpm) -> TpmOptions {
    TpmOptions {
        tcti: tpm.tcti(),
        pcrs: PcrSelection::parse("sha256:7").unwrap(),
        nv_index: DEFAULT_NV_INDEX,
    }
}

#[test]
fn tpm_tee_process_killed_during_a_burst_restarts_with_every_acknowledged_wallet() {
    let Some(tpm) = Swtpm::start() else { return };
    let mut fx = Fixture::on(TeePlatform::tpm(tpm.tcti()));
    let store = fx.tee.process.store.clone();
    // A copy from before the bursts: put back at the end, its refusal names the counter.
    fx.tee.process.kill();
    let early = fx.pki.path().join("store-early");
    copy_dir(&store, &early);
    fx.tee.crash_and_restart();

    let t0 = Instant::now();
    let mut acknowledged: Vec<KeyInfo> = Vec::new();
    let mut in_flight = 0;
    // Kills at a few points of a burst, a few hundred microseconds after an answer: between
    // the store's write and the counter's increment some of the time.
    for (round, kill_at) in [10u64, 40, 90].into_iter().enumerate() {
        let then = Duration::from_micros(300 * round as u64);
        let (acked, interrupted) = burst(&fx, 2, 200, kill_at as usize, then);
        assert!(
            interrupted,
            "the kill landed after the burst ({} wallets)",
            acked.len()
        );
        assert!(
            acked.len() as u64 >= kill_at,
            "{} wallets before the kill",
            acked.len()
        );
        acknowledged.extend(acked);
        in_flight += 2;
        // No false alarm: the store at the counter, or one commit ahead (finished now).
        fx.tee.process.kill();
        if let Err(e) = fx.tee.process.restart() {
            panic!("restart after kill -9 refused: {e}");
        }
        fx.tee.client = fx.tee.process.client().unwrap();
        fx.tee
            .client
            .expect_device_key(fx.tee.device_key.clone().unwrap());
        let keys = fx.tee.keys();
        for k in &acknowledged {
            assert!(keys.contains(k), "acknowledged wallet lost: {k:?}");
        }
        // At most the requests in flight at each kill were committed without an answer.
        assert!(
            keys.len() <= acknowledged.len() + in_flight,
            "{} keys",
            keys.len()
        );
        assert!(fx.tee.status().corrupt_records.is_empty());
    }
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(fx.tee.status().platform, "tpm");

    // The store's epoch against the TPM's counter, with the TEE stopped (swtpm serves one
    // client at a time): the store opens from the test, then the early copy put back is
    // refused naming the counter, which equals that epoch.
    fx.tee.process.kill();
    let source = SealingKeySource::KeyFile(fx.tee.key_file.clone());
    let platform = TpmPlatform::open(&store, &source, &tpm_options(&tpm), false).unwrap();
    let epoch = platform.epoch();
    drop(platform);
    let latest = fx.pki.path().join("store-latest");
    copy_dir(&store, &latest);
    replace_dir(&store, &early);
    match TpmPlatform::open(&store, &source, &tpm_options(&tpm), false) {
        Err(StoreError::RolledBack {
            store_epoch,
            counter,
            ..
        }) => {
            assert_eq!(counter, epoch, "TPM counter and the store's epoch");
            assert!(store_epoch < counter);
        }
        Err(e) => panic!("expected store_rolled_back, got {}: {e}", e.code()),
        Ok(_) => panic!("the early copy opened"),
    }
    replace_dir(&store, &latest);
    fx.tee.crash_and_restart();
    assert!(fx.tee.keys().len() >= acknowledged.len());
}

/// A store made by the software platform is not taken over by `--platform tpm` (nor the
/// reverse): the start is refused by name, and the store still opens where it belongs.
#[test]
fn a_store_of_one_platform_is_refused_by_the_other() {
    let Some(tpm) = Swtpm::start() else { return };
    let mut fx = Fixture::new();
    let w = fx.create_wallet(1, &["alice"]);
    fx.tee.process.kill();
    let start_on = |platform: TeePlatform, name: &str| {
        TeeProcess::start_on(
            &exe(),
            &fx.pki.path().join(format!("{name}.sock")),
            &fx.tee.process.store,
            KeyArg::File(fx.tee.key_file.clone()),
            platform,
        )
    };
    let err = start_on(TeePlatform::tpm(tpm.tcti()), "as-tpm")
        .err()
        .expect("a software store opened on the TPM platform");
    assert!(
        err.to_string().contains("error: platform_mismatch: "),
        "{err}"
    );
    fx.tee.crash_and_restart();
    assert_eq!(fx.tee.keys(), vec![w]);

    let mut on_tpm = Tee::start_on(fx.pki.path(), "t", TeePlatform::tpm(tpm.tcti()));
    on_tpm.process.kill();
    let err = TeeProcess::start(
        &exe(),
        &fx.pki.path().join("as-software.sock"),
        &on_tpm.process.store,
        KeyArg::File(on_tpm.key_file.clone()),
    )
    .err()
    .expect("a TPM store opened on the software platform");
    assert!(
        err.to_string().contains("error: platform_mismatch: "),
        "{err}"
    );
    on_tpm.crash_and_restart();
    assert_eq!(on_tpm.status().platform, "tpm");
}
