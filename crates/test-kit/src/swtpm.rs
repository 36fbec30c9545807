//! A software TPM 2.0 (Debian's `swtpm`) of the test's own, on loopback ports, in a temporary
//! folder, stopped when dropped. Its state folder is the TPM: copying it copies the TPM,
//! counter included. The launcher itself is `custos_tee_host::swtpm` (the demo uses it too);
//! this adds the temporary folder, the skip and panics instead of errors.
//!
//! Without `swtpm` installed, [`Swtpm::start`] returns `None` and the test skips, unless
//! `CUSTOS_TEST_REQUIRE_SWTPM` is set (as `.ci/run` does): then it fails.

use std::path::Path;

use custos_tee_host::swtpm as launcher;

/// Set to make a missing `swtpm` a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CUSTOS_TEST_REQUIRE_SWTPM";

/// A running software TPM.
pub struct Swtpm {
    // Dropped first: the process stops before its folder goes.
    tpm: launcher::Swtpm,
    _dir: tempfile::TempDir,
}

/// Whether a test needing `swtpm` can run: `false` (the test skips, with a note) where it
/// is not installed, a panic instead when [`REQUIRE_ENV`] is set.
pub fn available() -> bool {
    if launcher::installed() {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but swtpm is not installed (apt-get install swtpm)"
    );
    eprintln!("swtpm is not installed: skipping this TPM test");
    false
}

impl Swtpm {
    /// A fresh TPM, or `None` (the test skips) where `swtpm` is not installed.
    pub fn start() -> Option<Swtpm> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tpm = launcher::Swtpm::start(&dir.path().join("state")).expect("start swtpm");
        Some(Swtpm { tpm, _dir: dir })
    }

    /// Starts the TPM process on its state (after [`Swtpm::stop`], the same TPM as if
    /// rebooted: PCRs reset, NV kept).
    pub fn run(&mut self) {
        self.tpm.run().expect("restart swtpm");
    }

    /// Stops the TPM process (its state stays).
    pub fn stop(&mut self) {
        self.tpm.stop();
    }

    /// The TCTI naming this TPM.
    pub fn tcti(&self) -> String {
        self.tpm.tcti()
    }

    /// The TPM's state folder.
    pub fn state_dir(&self) -> &Path {
        self.tpm.state_dir()
    }
}

/// Copies the folder `from` (recursively) to `to`: how a test takes a copy of a store or a
/// TPM's state, as someone with the disk could.
pub fn copy_dir(from: &Path, to: &Path) {
    launcher::copy_dir(from, to).expect("copy the folder");
}

/// Puts the copy `with` back in place of the folder `dir`.
pub fn replace_dir(dir: &Path, with: &Path) {
    launcher::replace_dir(dir, with).expect("put the copy back");
}
