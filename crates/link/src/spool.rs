//! Spool-directory transport: envelopes as files on a removable medium (sneakernet).
//!
//! Each side owns an `outbound` directory it writes to and an `inbound` directory it reads
//! from; the external side's outbound is the internal side's inbound and vice versa. Files
//! are named `<request-id-hex>.<request|response>.env` and appear atomically (temp file,
//! fsync, rename, fsync directory), so a reader never sees half a file. Temp files start
//! with a dot and are ignored by readers.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::client::ClientTransport;
use crate::envelope::{Envelope, EnvelopeKind, RequestId, MAX_ENVELOPE};
use crate::error::LinkError;
use crate::server::LinkServer;

/// Name of the subdirectory of `inbound` that holds refused files and their reasons.
pub const REJECTED_DIR: &str = "rejected";
const REQUEST_SUFFIX: &str = ".request.env";
const RESPONSE_SUFFIX: &str = ".response.env";

/// The two directories one side of a spool link uses.
#[derive(Debug, Clone)]
pub struct SpoolDirs {
    /// Where this side writes envelopes for the peer.
    pub outbound: PathBuf,
    /// Where this side reads envelopes from the peer.
    pub inbound: PathBuf,
}

impl SpoolDirs {
    fn create(&self) -> Result<(), LinkError> {
        fs::create_dir_all(&self.outbound)?;
        fs::create_dir_all(&self.inbound)?;
        Ok(())
    }
}

/// The file name an envelope of `kind` for `request_id` travels under. Failures travel as
/// responses: they answer the request just the same.
pub fn envelope_file_name(request_id: &RequestId, kind: EnvelopeKind) -> String {
    let suffix = match kind {
        EnvelopeKind::Request => REQUEST_SUFFIX,
        EnvelopeKind::Response | EnvelopeKind::Failure => RESPONSE_SUFFIX,
    };
    format!("{}{suffix}", hex::encode(request_id))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // The rename is only durable once the directory entry is; this matters on a medium
    // that is unplugged right after the write.
    fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to the temporary file of `dir/name`, owner-only (0600: envelopes are
/// signed requests and answers, readable by nobody else on the host), never through a file
/// or link already there.
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, LinkError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    // A temporary file left by a crash (or planted) is removed, not followed.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Writes `bytes` to `dir/name` atomically and durably (replacing a file of that name).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LinkError> {
    let tmp = write_temp(dir, name, bytes)?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// As [`write_atomic`], but never over a file already there: `Ok(false)` leaves it.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<bool, LinkError> {
    let tmp = write_temp(dir, name, bytes)?;
    // A hard link appears atomically and fails if the name is taken. A medium without hard
    // links (FAT) gets a check then a rename: only this process writes answers there.
    let target = dir.join(name);
    let placed = match fs::hard_link(&tmp, &target) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported && !target.exists() => {
            fs::rename(&tmp, &target)?;
            sync_dir(dir)?;
            return Ok(true);
        }
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => false,
        Err(e) => return Err(e.into()),
    };
    fs::remove_file(&tmp)?;
    sync_dir(dir)?;
    Ok(placed)
}

/// Reads a spool file, refusing one larger than an envelope may be before reading it.
fn read_bounded(path: &Path) -> Result<Vec<u8>, LinkError> {
    let len = fs::metadata(path)?.len();
    if len > MAX_ENVELOPE as u64 {
        return Err(LinkError::Oversize {
            what: "spool file",
            size: len,
            limit: MAX_ENVELOPE as u64,
        });
    }
    Ok(fs::read(path)?)
}

pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, LinkError> + Send + 'static,
) -> Result<R, LinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LinkError::Internal(format!("file task failed: {e}")))?
}

/// Client side of the spool transport.
#[derive(Debug)]
pub struct SpoolTransport {
    dirs: SpoolDirs,
    poll_interval: Duration,
}

impl SpoolTransport {
    /// Creates the directories if needed. `poll_interval` is how often the inbound
    /// directory is checked for the answer.
    pub fn new(dirs: SpoolDirs, poll_interval: Duration) -> Result<Self, LinkError> {
        dirs.create()?;
        Ok(Self {
            dirs,
            poll_interval,
        })
    }
}

impl ClientTransport for SpoolTransport {
    async fn exchange(
        &self,
        request_id: RequestId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        let outbound = self.dirs.outbound.clone();
        let name = envelope_file_name(&request_id, EnvelopeKind::Request);
        blocking(move || write_atomic(&outbound, &name, &request)).await?;
        let answer = self
            .dirs
            .inbound
            .join(envelope_file_name(&request_id, EnvelopeKind::Response));
        // Unbounded here on purpose: LinkClient bounds each attempt with its timeout.
        loop {
            let path = answer.clone();
            let found = blocking(move || match read_bounded(&path) {
                Ok(bytes) => {
                    fs::remove_file(&path)?;
                    Ok(Some(bytes))
                }
                Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
            if let Some(bytes) = found {
                return Ok(bytes);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

/// What one pass over the inbound directory did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolPass {
    /// Requests answered (including replays of stored answers).
    pub answered: usize,
    /// Files moved to `rejected/` (or, with it full, removed).
    pub rejected: usize,
}

/// Most files `rejected/` keeps (refused files and their reasons); beyond, a refused file is
/// removed with its reason logged, so a peer flooding the medium cannot fill the disk.
pub const MAX_REJECTED_FILES: usize = 1000;
/// Requests processed at once by [`SpoolServer::run`]: a slow one never holds the others.
pub const MAX_IN_FLIGHT: usize = 32;

/// Server side of the spool transport.
#[derive(Debug, Clone)]
pub struct SpoolServer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dirs: SpoolDirs,
    server: LinkServer,
    poll_interval: Duration,
    /// Files being processed, so a later pass does not take them up again.
    in_progress: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
}

/// One file taken up: released from the in-progress set when dropped.
struct Taken {
    shared: Arc<Shared>,
    name: String,
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut set = self
            .shared
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.name);
    }
}

impl SpoolServer {
    /// Creates the directories (and `inbound/rejected`) if needed.
    pub fn new(
        dirs: SpoolDirs,
        server: LinkServer,
        poll_interval: Duration,
    ) -> Result<Self, LinkError> {
        dirs.create()?;
        fs::create_dir_all(dirs.inbound.join(REJECTED_DIR))?;
        Ok(Self {
            shared: Arc::new(Shared {
                dirs,
                server,
                poll_interval,
                in_progress: Mutex::new(HashSet::new()),
                slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            }),
        })
    }

    /// The directory refused files are moved to.
    pub fn rejected_dir(&self) -> PathBuf {
        self.shared.dirs.inbound.join(REJECTED_DIR)
    }

    /// Polls forever: each new file is processed in a task of its own (at most
    /// [`MAX_IN_FLIGHT`] at once), so one slow request never stalls the others. A failing
    /// pass is logged, not fatal: one bad file or a transient file-system error must not
    /// stop the link.
    pub async fn run(&self) -> Result<(), LinkError> {
        loop {
            match self.take_new().await {
                Ok(taken) => {
                    for t in taken {
                        let slot = Arc::clone(&self.shared.slots)
                            .acquire_owned()
                            .await
                            .map_err(|_| LinkError::Internal("spool slots closed".into()))?;
                        tokio::spawn(async move {
                            let _slot = slot;
                            let _ = t.shared.clone().settle(&t.name).await;
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "link: spool pass failed"),
            }
            tokio::time::sleep(self.shared.poll_interval).await;
        }
    }

    /// Processes every complete file now in the inbound directory (oldest name first, at
    /// once) and waits for all of them: answers requests, rejects everything else.
    pub async fn poll_once(&self) -> Result<SpoolPass, LinkError> {
        let mut tasks = tokio::task::JoinSet::new();
        for t in self.take_new().await? {
            tasks.spawn(async move { t.shared.clone().settle(&t.name).await });
        }
        let mut pass = SpoolPass::default();
        while let Some(done) = tasks.join_next().await {
            match done.map_err(|e| LinkError::Internal(format!("spool task failed: {e}")))?? {
                true => pass.answered += 1,
                false => pass.rejected += 1,
            }
        }
        Ok(pass)
    }

    /// The inbound files not yet taken up, each now marked in progress.
    async fn take_new(&self) -> Result<Vec<Taken>, LinkError> {
        let inbound = self.shared.dirs.inbound.clone();
        let mut names = blocking(move || {
            let mut names = Vec::new();
            for entry in fs::read_dir(&inbound)? {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot files are writes in progress (ours or the peer's).
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
            Ok(names)
        })
        .await?;
        names.sort();
        let mut set = self
            .shared
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(names
            .into_iter()
            .filter(|n| set.insert(n.clone()))
            .map(|name| Taken {
                shared: Arc::clone(&self.shared),
                name,
            })
            .collect())
    }
}

impl Shared {
    /// Answers file `name` (`Ok(true)`) or rejects it (`Ok(false)`).
    async fn settle(self: Arc<Self>, name: &str) -> Result<bool, LinkError> {
        match self.process_file(name).await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "link: spool file rejected");
                self.reject(name, &e).await?;
                Ok(false)
            }
        }
    }

    async fn process_file(&self, name: &str) -> Result<(), LinkError> {
        let id_hex = name.strip_suffix(REQUEST_SUFFIX).ok_or_else(|| {
            LinkError::Malformed(format!(
                "not a request file name (<id-hex>{REQUEST_SUFFIX})"
            ))
        })?;
        let path = self.dirs.inbound.join(name);
        let bytes = blocking(move || read_bounded(&path)).await?;
        let env = Envelope::decode(&bytes)?;
        // The name is what the client waits on; a mismatch would send the answer where
        // nobody looks, so such a file is refused rather than guessed at.
        if hex::encode(env.request_id) != id_hex {
            return Err(LinkError::Malformed(format!(
                "file name id {id_hex} does not match envelope id {}",
                hex::encode(env.request_id)
            )));
        }
        let answer_name = envelope_file_name(&env.request_id, EnvelopeKind::Response);
        let answer = match self.server.handle_request(&bytes).await {
            Ok(answer) => answer,
            Err(e) => {
                // Only the sender of an authentic envelope is told why (fast, typed), and
                // never over an answer already waiting: a forged file naming someone's
                // request id must not speak for it.
                if e.of_authentic_envelope() {
                    if let Some(refusal) = self.server.refusal_reply(&bytes, &e) {
                        let outbound = self.dirs.outbound.clone();
                        blocking(move || write_new(&outbound, &answer_name, &refusal)).await?;
                    }
                }
                return Err(e);
            }
        };
        let outbound = self.dirs.outbound.clone();
        let inbound = self.dirs.inbound.clone();
        let request_name = name.to_owned();
        // Delete the request only after the answer is durable: a crash in between leaves
        // the request to be processed again, which the dedup store turns into a replay.
        blocking(move || {
            write_atomic(&outbound, &answer_name, &answer)?;
            fs::remove_file(inbound.join(&request_name))?;
            sync_dir(&inbound)?;
            Ok(())
        })
        .await
    }

    async fn reject(&self, name: &str, error: &LinkError) -> Result<(), LinkError> {
        let inbound = self.dirs.inbound.clone();
        let rejected = inbound.join(REJECTED_DIR);
        let name = name.to_owned();
        let reason = format!("{error}\n");
        blocking(move || {
            if fs::read_dir(&rejected)?.count() >= MAX_REJECTED_FILES {
                tracing::warn!(file = %name, reason = %reason.trim_end(), max = MAX_REJECTED_FILES,
                    "link: rejected/ is full; refused file removed");
                fs::remove_file(inbound.join(&name))?;
                sync_dir(&inbound)?;
                return Ok(());
            }
            // Never overwrite an earlier rejected file of the same name: both are evidence.
            let mut target = name.clone();
            let mut n = 0u32;
            while rejected.join(&target).exists()
                || rejected.join(format!("{target}.reason")).exists()
            {
                n += 1;
                if n > 10_000 {
                    return Err(LinkError::Internal(format!(
                        "too many rejected copies of {name}"
                    )));
                }
                target = format!("{name}.{n}");
            }
            fs::rename(inbound.join(&name), rejected.join(&target))?;
            write_atomic(&rejected, &format!("{target}.reason"), reason.as_bytes())?;
            sync_dir(&inbound)?;
            Ok(())
        })
        .await
    }
}
