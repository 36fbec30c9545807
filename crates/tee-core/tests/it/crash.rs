//! A TEE killed right after its commit is durable, before any answer exists: the answer is
//! lost, what was committed survives. A child process of the test binary
//! ([`child_killed_after_commit`]) opens a core over the records it is given, handles one
//! request and aborts in the commit ([`MemPlatform::crash_after_commit`]); the parent then
//! reopens the core over the records the child left, as a restarted TEE.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use custos_test_kit::MemPlatform;

use custos_tee_core::TeeCore;
use custos_wire::protocol::{encode_request, Request};

/// Environment of [`child_killed_after_commit`]: the records file and the request file.
const CHILD_STATE: &str = "CUSTOS_TEST_CRASH_STATE";
const CHILD_REQUEST: &str = "CUSTOS_TEST_CRASH_REQUEST";
/// What the child prints if the core ever answers.
const ANSWERED: &str = "CRASHED-TEE-ANSWERED";

/// Runs `request` in a TEE holding `core`'s committed records, killed right after its
/// commit; returns `core` reopened over what that TEE left. `dir` holds the exchange files.
pub fn killed_after_commit(
    core: TeeCore<MemPlatform>,
    request: &Request,
    dir: &Path,
) -> TeeCore<MemPlatform> {
    let state = dir.join("crash.records");
    let request_file = dir.join("crash.request");
    core.platform().save(&state);
    drop(core);
    std::fs::write(&request_file, encode_request(request)).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::child_killed_after_commit",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, &state)
        .env(CHILD_REQUEST, &request_file)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        child.status.signal(),
        Some(6),
        "the child was not killed in the commit: {child:?}"
    );
    assert!(
        !String::from_utf8_lossy(&child.stdout).contains(ANSWERED),
        "the killed TEE answered"
    );
    TeeCore::open(MemPlatform::load(&state), "memory").unwrap()
}

/// The TEE process of [`killed_after_commit`]: opens the core over the records it was given,
/// handles the request and is killed (abort) in the first commit, right after it is durable.
#[test]
#[ignore = "child process of killed_after_commit"]
fn child_killed_after_commit() {
    let (Some(state), Some(request)) = (
        std::env::var_os(CHILD_STATE),
        std::env::var_os(CHILD_REQUEST),
    ) else {
        panic!("run by killed_after_commit only");
    };
    let mut platform = MemPlatform::load(Path::new(&state));
    platform.persist_to = Some(PathBuf::from(&state));
    let mut core = TeeCore::open(platform, "memory").unwrap();
    core.platform()
        .crash_after_commit
        .store(true, Ordering::SeqCst);
    let answer = core.handle_bytes(&std::fs::read(&request).unwrap());
    println!("{ANSWERED}: {} bytes", answer.len());
}
