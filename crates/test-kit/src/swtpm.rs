//! A software TPM 2.0 (Debian's `swtpm`) of the test's own, on loopback ports, stopped when
//! dropped. Its state folder is the TPM: copying it copies the TPM, counter included.
//!
//! Without `swtpm` installed, [`Swtpm::start`] returns `None` and the test skips, unless
//! `CUSTOS_TEST_REQUIRE_SWTPM` is set (as `.ci/run` does): then it fails.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to make a missing `swtpm` a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CUSTOS_TEST_REQUIRE_SWTPM";

/// A running software TPM.
pub struct Swtpm {
    _dir: tempfile::TempDir,
    state: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn installed() -> bool {
    Command::new("swtpm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Two free consecutive loopback ports (the swtpm TCTI finds the control port at +1).
fn port_pair() -> u16 {
    for _ in 0..64 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = a.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports");
}

impl Swtpm {
    /// A fresh TPM, or `None` (the test skips) where `swtpm` is not installed.
    pub fn start() -> Option<Swtpm> {
        if !installed() {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but swtpm is not installed (apt-get install swtpm)"
            );
            eprintln!("swtpm is not installed: skipping this TPM test");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let mut tpm = Swtpm {
            _dir: dir,
            state,
            port: 0,
            child: None,
        };
        tpm.run();
        Some(tpm)
    }

    /// Starts the TPM process on its state (a fresh TPM the first time; after
    /// [`Swtpm::stop`], the same TPM as if rebooted: PCRs reset, NV kept).
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "swtpm already running");
        for _ in 0..5 {
            let port = port_pair();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn swtpm");
            self.child = Some(child);
            self.port = port;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                    return;
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break; // exited: the port was taken meanwhile; try others
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
        }
        panic!("swtpm did not start");
    }

    /// Stops the TPM process (its state stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The TCTI naming this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM's state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the folder `from` (recursively) to `to`: how a test takes a copy of a store or a
/// TPM's state, as someone with the disk could.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's folder");
    for e in std::fs::read_dir(from).expect("read the folder") {
        let e = e.expect("folder entry");
        if e.file_type().expect("entry type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy a file");
        }
    }
}

/// Puts the copy `with` back in place of the folder `dir`.
pub fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).expect("remove the folder");
    copy_dir(with, dir);
}
