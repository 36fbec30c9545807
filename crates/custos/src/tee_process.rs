//! Starting and stopping a TEE core process (`custos tee serve`) from an orchestrator.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custos_wire::client::TeeClient;

/// Line the server prints on stdout once it accepts connections.
pub const READY_LINE: &str = "custos-tee ready";

/// How a TEE process gets its sealing key.
#[derive(Clone, Debug)]
pub enum KeyArg {
    /// `--sealing-key-file`.
    File(PathBuf),
    /// `--passphrase-env VAR` with this value placed in VAR.
    Passphrase(String),
}

/// What a TEE process runs on (`custos tee serve --platform`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TeePlatform {
    /// `--platform software`: the development stand-in.
    #[default]
    Software,
    /// `--platform tpm`: a TPM 2.0 (the `custos` binary built with the feature `tpm`).
    Tpm(TpmArgs),
}

/// The TPM of a [`TeePlatform::Tpm`] process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmArgs {
    /// `--tpm`: the TPM's TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
    pub tcti: String,
    /// `--tpm-pcrs` (`sha256:7` when `None`).
    pub pcrs: Option<String>,
    /// `--tpm-nv-index` (the platform's default when `None`).
    pub nv_index: Option<u32>,
}

impl TeePlatform {
    /// A TPM reached through `tcti`, with the default PCRs and NV index.
    pub fn tpm(tcti: impl Into<String>) -> Self {
        TeePlatform::Tpm(TpmArgs {
            tcti: tcti.into(),
            pcrs: None,
            nv_index: None,
        })
    }

    /// The `custos tee serve` arguments choosing this platform.
    fn add_args(&self, cmd: &mut Command) {
        match self {
            TeePlatform::Software => {
                cmd.args(["--platform", "software"]);
            }
            TeePlatform::Tpm(t) => {
                cmd.args(["--platform", "tpm", "--tpm", &t.tcti]);
                if let Some(p) = &t.pcrs {
                    cmd.args(["--tpm-pcrs", p]);
                }
                if let Some(i) = t.nv_index {
                    cmd.arg("--tpm-nv-index").arg(format!("{i:#010x}"));
                }
            }
        }
    }
}

/// A running TEE core process; killed when dropped.
pub struct TeeProcess {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its sealed store.
    pub store: PathBuf,
    exe: PathBuf,
    key: KeyArg,
    /// Pregenerated primes file given to the process (see [`TeeProcess::restart_with_primes`]).
    primes_file: Option<PathBuf>,
    /// The platform it runs on, the same at every restart.
    platform: TeePlatform,
    /// Whether the process is asked to accept the committed TEST-ONLY primes (only a build
    /// with the feature `insecure-test-primes` asks, and only such a build's TEE accepts).
    test_primes: bool,
}

/// Why a TEE process did not come up.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started.
    #[error("cannot start {exe}: {reason}")]
    Start {
        /// Executable.
        exe: String,
        /// Reason.
        reason: String,
    },
    /// The process exited before becoming ready; its stderr says why.
    #[error("TEE process exited with {status}: {stderr}")]
    Exited {
        /// Exit status.
        status: String,
        /// Its error output.
        stderr: String,
    },
}

/// Spawns `cmd` with piped output and waits for its first stdout line, which must start
/// with `ready_prefix`; returns the child and that line. Output is drained afterwards so
/// the child never blocks on a full pipe (set `CUSTOS_CHILD_LOG` to see its stderr).
pub fn spawn_ready(cmd: Command, ready_prefix: &str) -> Result<(Child, String), SpawnError> {
    spawn_ready_logging(cmd, ready_prefix, None)
}

/// [`spawn_ready`] for a service of a local deployment: it logs JSON lines
/// (`CUSTOS_LOG_FORMAT=json`) straight into `log`, opened for appending as its standard
/// error (a restart appends to the same file); when it fails to start, its last line there is
/// the error returned.
pub fn spawn_service(
    mut cmd: Command,
    ready_prefix: &str,
    log: &Path,
) -> Result<(Child, String), SpawnError> {
    cmd.env(LOG_FORMAT_ENV, "json");
    spawn_ready_logging(cmd, ready_prefix, Some(log))
}

/// The variable (and `--log-format`) choosing the log format: `text` (default) or `json`.
pub const LOG_FORMAT_ENV: &str = "CUSTOS_LOG_FORMAT";

fn spawn_ready_logging(
    mut cmd: Command,
    ready_prefix: &str,
    log: Option<&Path>,
) -> Result<(Child, String), SpawnError> {
    let exe = format!("{:?}", cmd.get_program());
    let echo = std::env::var_os("CUSTOS_CHILD_LOG").is_some();
    // A service writes its log lines straight into its file, as it would under a service
    // manager: nothing in this process copies them (unless they are to be echoed here too).
    let mut log_file = None;
    let mut log_from = 0;
    if let Some(path) = log {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            })
            .map_err(|e| SpawnError::Start {
                exe: exe.clone(),
                reason: format!("log file {}: {e}", path.display()),
            })?;
        log_from = opened.metadata().map(|m| m.len()).unwrap_or(0);
        if echo {
            log_file = Some(opened);
            cmd.stderr(Stdio::piped());
        } else {
            cmd.stderr(Stdio::from(opened));
        }
    } else {
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| SpawnError::Start {
            exe: exe.clone(),
            reason: e.to_string(),
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = match lines.next() {
        Some(Ok(l)) if l.trim().starts_with(ready_prefix) => l.trim().to_string(),
        _ => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::{Read, Write};
                let _ = e.read_to_string(&mut stderr);
                if let Some(f) = log_file.as_mut() {
                    // Echoed: the file still gets every line, as without echo.
                    let _ = f.write_all(stderr.as_bytes());
                }
            } else if let Some(path) = log {
                stderr = written_since(path, log_from);
            }
            // The last line is the process's own "error: ..." verdict; log lines precede it.
            let verdict = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(SpawnError::Exited {
                status,
                stderr: verdict.trim().to_string(),
            });
        }
    };
    std::thread::spawn(move || for _ in lines {});
    if let Some(err) = child.stderr.take() {
        let tag = exe;
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(f) = log_file.as_mut() {
                    use std::io::Write;
                    // A full disk loses log lines, never the service: the pipe is drained.
                    let _ = writeln!(f, "{line}");
                }
                if echo {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
    }
    Ok((child, first))
}

/// What was appended to the file at `path` after its first `from` bytes (at most its last
/// 64 KiB: enough for a process's last words).
fn written_since(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut text = Vec::new();
    if f.seek(SeekFrom::Start(from.max(len.saturating_sub(TAIL))))
        .and_then(|_| f.take(TAIL).read_to_end(&mut text))
        .is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&text).into_owned()
}

impl TeeProcess {
    /// Starts `exe tee serve` on `socket` over `store` and waits until it is ready.
    pub fn start(exe: &Path, socket: &Path, store: &Path, key: KeyArg) -> Result<Self, SpawnError> {
        Self::start_on(exe, socket, store, key, TeePlatform::Software)
    }

    /// [`TeeProcess::start`] on `platform`, which every restart keeps.
    pub fn start_on(
        exe: &Path,
        socket: &Path,
        store: &Path,
        key: KeyArg,
        platform: TeePlatform,
    ) -> Result<Self, SpawnError> {
        let mut p = TeeProcess {
            child: None,
            socket: socket.to_path_buf(),
            store: store.to_path_buf(),
            exe: exe.to_path_buf(),
            key,
            primes_file: None,
            platform,
            test_primes: cfg!(feature = "insecure-test-primes"),
        };
        p.restart()?;
        Ok(p)
    }

    /// (Re)starts the process with the same arguments.
    pub fn restart(&mut self) -> Result<(), SpawnError> {
        self.kill();
        let mut cmd = Command::new(&self.exe);
        cmd.args(["tee", "serve", "--init", "--socket"])
            .arg(&self.socket)
            .arg("--store")
            .arg(&self.store);
        self.platform.add_args(&mut cmd);
        // Only an explicitly given primes file, never one inherited from this process.
        match &self.primes_file {
            Some(f) => cmd.env(custos_tee_host::primes::PRIMES_FILE_ENV, f),
            None => cmd.env_remove(custos_tee_host::primes::PRIMES_FILE_ENV),
        };
        if self.test_primes {
            cmd.env(custos_tee_host::primes::TEST_PRIMES_ENV, "1");
        } else {
            cmd.env_remove(custos_tee_host::primes::TEST_PRIMES_ENV);
        }
        match &self.key {
            KeyArg::File(f) => {
                cmd.arg("--sealing-key-file").arg(f);
            }
            KeyArg::Passphrase(p) => {
                cmd.args(["--passphrase-env", "CUSTOS_TEE_PASSPHRASE"])
                    .env("CUSTOS_TEE_PASSPHRASE", p);
            }
        }
        let (child, _) = spawn_ready(cmd, READY_LINE)?;
        self.child = Some(child);
        Ok(())
    }

    /// Restarts the process with `CUSTOS_TEE_PRIMES_FILE` naming `file`: one pregenerated
    /// Paillier primes set sealed to this node (as `custos dealer primes --for` writes it),
    /// which the TEE imports for distributed key generation before it serves, emptying the
    /// file ([`custos_tee_host::primes`]). Later restarts keep the variable; the emptied file
    /// adds nothing.
    pub fn restart_with_primes(&mut self, file: &Path) -> Result<(), SpawnError> {
        self.primes_file = Some(file.to_path_buf());
        self.restart()
    }

    /// TEST ONLY: restarts the process without asking it to accept the TEST-ONLY primes, as
    /// a production TEE runs (tests of the refusal).
    #[cfg(feature = "insecure-test-primes")]
    pub fn restart_refusing_test_primes(&mut self) -> Result<(), SpawnError> {
        self.test_primes = false;
        self.restart()
    }

    /// Connects a client.
    pub fn client(&self) -> Result<TeeClient, custos_wire::client::ClientError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TeeClient::connect(&self.socket) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The platform it runs on.
    pub fn platform(&self) -> &TeePlatform {
        &self.platform
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the process (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TeeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    /// A service writes its log lines into its file itself, after what earlier runs left;
    /// when it fails to start, its last line there is the error, not an older run's.
    #[test]
    fn a_service_logs_into_its_file_and_its_last_words_are_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/svc.log");
        let (mut child, line) = spawn_service(
            sh("echo 'svc ready'; echo first-run >&2; exec sleep 5"),
            "svc ready",
            &log,
        )
        .unwrap();
        assert_eq!(line, "svc ready");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log).unwrap().contains("first-run") {
            assert!(
                Instant::now() < deadline,
                "the service's line never reached its log"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let err = spawn_service(
            sh("echo noise >&2; echo 'error: no config' >&2; exit 3"),
            "svc ready",
            &log,
        )
        .unwrap_err();
        match err {
            SpawnError::Exited { stderr, .. } => assert_eq!(stderr, "error: no config"),
            other => panic!("expected Exited, got {other}"),
        }
        let err = spawn_service(sh("exit 4"), "svc ready", &log).unwrap_err();
        match err {
            // Nothing said this time: not the previous run's words.
            SpawnError::Exited { stderr, .. } => assert_eq!(stderr, ""),
            other => panic!("expected Exited, got {other}"),
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("first-run\nnoise\nerror: no config\n"),
            "{text}"
        );
    }
}
