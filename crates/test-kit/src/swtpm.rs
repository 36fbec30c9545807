//! A software TPM 2.0 (Debian's `swtpm`) of the test's own, on loopback ports, in a temporary
//! folder, stopped when dropped. Its state folder is the TPM: copying it copies the TPM,
//! counter included. The launcher itself is `custos_tee_host::swtpm` (the demo uses it too);
//! this adds the temporary folder, the skip and panics instead of errors.
//!
//! [`Swtpm::start_manufactured`] gives a TPM as it leaves a factory
//! (`custos_tee_host::swtpm::manufacture`, with a local CA of the test's own in the temp
//! dir): its RSA-2048 EK (persistent at 0x81010001, the certificate in NV 0x01C00002) signed
//! by that CA's intermediate ([`Swtpm::ek_ca_issuer_der`]) under its root
//! ([`Swtpm::ek_ca_root_der`]).
//!
//! Without `swtpm` installed, [`Swtpm::start`] returns `None` and the test skips, unless
//! `CUSTOS_TEST_REQUIRE_SWTPM` is set (as `.ci/run` does): then it fails.

use std::path::{Path, PathBuf};

use custos_tee_host::swtpm as launcher;

/// Set to make a missing `swtpm` a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CUSTOS_TEST_REQUIRE_SWTPM";

/// A running software TPM.
pub struct Swtpm {
    // Dropped first: the process stops before its folder goes.
    tpm: launcher::Swtpm,
    _dir: tempfile::TempDir,
    /// The local CA's folder, for a manufactured TPM.
    ca: Option<PathBuf>,
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

/// The DER of the (first) certificate in the PEM file `path`.
fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).expect("read a PEM certificate");
    pem::parse(text).expect("PEM certificate").into_contents()
}

impl Swtpm {
    /// A fresh TPM, or `None` (the test skips) where `swtpm` is not installed.
    pub fn start() -> Option<Swtpm> {
        Self::start_with(false)
    }

    /// A fresh TPM manufactured with an EK, its certificate and a local CA of its own (about
    /// 2 s), or `None` (the test skips) where `swtpm` is not installed.
    pub fn start_manufactured() -> Option<Swtpm> {
        Self::start_with(true)
    }

    fn start_with(manufactured: bool) -> Option<Swtpm> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let ca = manufactured.then(|| dir.path().join("ca"));
        let tpm = match &ca {
            Some(ca) => launcher::Swtpm::start_manufactured(&state, ca),
            None => launcher::Swtpm::start(&state),
        }
        .expect("start swtpm");
        Some(Swtpm { tpm, _dir: dir, ca })
    }

    fn ca_file(&self, name: &str) -> PathBuf {
        self.ca
            .as_ref()
            .expect("a TPM from Swtpm::start_manufactured")
            .join(name)
    }

    /// The local CA's root certificate (PEM file) of a manufactured TPM.
    pub fn ek_ca_root(&self) -> PathBuf {
        self.ca_file(launcher::EK_CA_ROOT)
    }

    /// The local CA's intermediate (the EK certificate's issuer, PEM file) of a manufactured
    /// TPM. The TPM does not carry it: a verifier gets it from elsewhere.
    pub fn ek_ca_issuer(&self) -> PathBuf {
        self.ca_file(launcher::EK_CA_ISSUER)
    }

    /// [`Swtpm::ek_ca_root`] as DER.
    pub fn ek_ca_root_der(&self) -> Vec<u8> {
        pem_der(&self.ek_ca_root())
    }

    /// [`Swtpm::ek_ca_issuer`] as DER.
    pub fn ek_ca_issuer_der(&self) -> Vec<u8> {
        pem_der(&self.ek_ca_issuer())
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
