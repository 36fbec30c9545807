//! A software TPM 2.0 (Debian's `swtpm`) on loopback ports, for development: the demo's
//! `--platform tpm` and `custos cluster up --swtpm` start one per TEE, and the tests start
//! their own (`custos_test_kit::swtpm`, which wraps this one). It is stopped when dropped.
//!
//! Its state folder *is* the TPM: a copy of it put back rolls the TPM back, counter
//! included, which is why `swtpm` is for development and tests, never for keys of value.
//!
//! [`Swtpm::start_manufactured`] gives a TPM as it leaves a factory, with an endorsement
//! certificate from a local CA standing in for the TPM maker's ([`manufacture`]).
//!
//! Also here: [`copy_dir`] and [`replace_dir`], how a store (or a TPM's state) is copied and
//! put back, as someone with the disk could (tests and the demo's rollback step).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `swtpm` that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// `swtpm` is not on the `PATH`.
    #[error("swtpm is not installed (Debian: apt-get install swtpm)")]
    NotInstalled,
    /// It was found but did not start.
    #[error("swtpm did not start: {0}")]
    Start(String),
    /// `swtpm_setup` could not manufacture the TPM.
    #[error("the TPM could not be manufactured: {0}")]
    Manufacture(String),
}

/// Whether `swtpm` and `swtpm_setup` (Debian `swtpm-tools`, which manufactures a TPM with
/// its endorsement certificate) are installed: on the `PATH` and answering `--version`
/// (`swtpm_setup` 0.7 exits 1 after printing it, so only its start counts).
pub fn installed() -> bool {
    let answers = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    answers("swtpm").is_ok_and(|s| s.success()) && answers("swtpm_setup").is_ok()
}

/// The local CA's root certificate (PEM) in a CA folder of [`manufacture`].
pub const EK_CA_ROOT: &str = "swtpm-localca-rootca-cert.pem";
/// The local CA's intermediate (PEM), the issuer of the endorsement certificates it makes.
pub const EK_CA_ISSUER: &str = "issuercert.pem";

/// Manufactures a TPM on the state folder `state`, as a factory would: `swtpm_setup` makes
/// its RSA-2048 endorsement key (persistent at 0x81010001) and puts the EK certificate in NV
/// 0x01C00002, signed by the local CA in the folder `ca` (created, root and intermediate
/// made, on first use; [`EK_CA_ROOT`], [`EK_CA_ISSUER`]). TPMs manufactured with one `ca`
/// share its root, as a maker's TPMs share theirs. Its configuration files go in
/// `ca/setup/`.
pub fn manufacture(state: &Path, ca: &Path) -> Result<(), SwtpmError> {
    let fail = |e: std::io::Error| SwtpmError::Manufacture(e.to_string());
    let setup = ca.join("setup");
    std::fs::create_dir_all(&setup).map_err(fail)?;
    std::fs::create_dir_all(state).map_err(fail)?;
    let write = |name: &str, text: String| std::fs::write(setup.join(name), text).map_err(fail);
    write(
        "swtpm-localca.conf",
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/{EK_CA_ISSUER}\n\
             certserial = {ca}/certserial\n",
            ca = ca.display()
        ),
    )?;
    write(
        "swtpm-localca.options",
        "--platform-manufacturer Custos\n--platform-version 2.1\n--platform-model swtpm\n".into(),
    )?;
    write(
        "swtpm_setup.conf",
        format!(
            "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {d}/swtpm-localca.conf\n\
             create_certs_tool_options = {d}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
            d = setup.display()
        ),
    )?;
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
        .arg(state)
        .arg("--config")
        .arg(setup.join("swtpm_setup.conf"))
        .env("TMPDIR", &setup)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            SwtpmError::Manufacture(format!(
                "swtpm_setup (Debian: apt-get install swtpm-tools): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(SwtpmError::Manufacture(format!(
            "swtpm_setup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Whether the state folder `state` holds a TPM already (swtpm's permanent state file).
fn holds_tpm(state: &Path) -> bool {
    state.join("tpm2-00.permall").exists()
}

/// Two free consecutive loopback ports (the swtpm TCTI finds the control port at +1).
fn port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..64 {
        let a = TcpListener::bind("127.0.0.1:0").map_err(|e| SwtpmError::Start(e.to_string()))?;
        let port = a
            .local_addr()
            .map_err(|e| SwtpmError::Start(e.to_string()))?
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(SwtpmError::Start(
        "no two consecutive free loopback ports".into(),
    ))
}

/// A running software TPM: its server port on 127.0.0.1 and its control port next to it.
pub struct Swtpm {
    state: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Starts a TPM on the state folder `state` (created if missing): a fresh TPM on an empty
    /// folder, the same TPM as if rebooted (PCRs reset, NV kept) on an existing one.
    pub fn start(state: &Path) -> Result<Swtpm, SwtpmError> {
        if !installed() {
            return Err(SwtpmError::NotInstalled);
        }
        std::fs::create_dir_all(state).map_err(|e| SwtpmError::Start(e.to_string()))?;
        let mut tpm = Swtpm {
            state: state.to_path_buf(),
            port: 0,
            child: None,
        };
        tpm.run()?;
        Ok(tpm)
    }

    /// Starts the TPM on the state folder `state`, manufactured first ([`manufacture`], with
    /// the local CA in `ca`) when the folder holds no TPM yet: a TPM with an endorsement
    /// certificate, as admission by TPM quote needs.
    pub fn start_manufactured(state: &Path, ca: &Path) -> Result<Swtpm, SwtpmError> {
        if !installed() {
            return Err(SwtpmError::NotInstalled);
        }
        if !holds_tpm(state) {
            manufacture(state, ca)?;
        }
        Self::start(state)
    }

    /// Starts the TPM process on its state again after [`Swtpm::stop`] (new ports: ask
    /// [`Swtpm::tcti`] again).
    pub fn run(&mut self) -> Result<(), SwtpmError> {
        if self.child.is_some() {
            return Err(SwtpmError::Start("already running".into()));
        }
        for _ in 0..5 {
            let port = port_pair()?;
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
                .map_err(|e| SwtpmError::Start(e.to_string()))?;
            self.child = Some(child);
            self.port = port;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                    return Ok(());
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break; // exited: the port was taken meanwhile; try others
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
        }
        Err(SwtpmError::Start(format!(
            "no start on {} after 5 attempts",
            self.state.display()
        )))
    }

    /// Stops the TPM process (its state stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The TCTI naming this TPM (`custos tee serve --tpm`).
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

/// Copies the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Puts the copy `with` back in place of the folder `dir`.
pub fn replace_dir(dir: &Path, with: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(dir)?;
    copy_dir(with, dir)
}
