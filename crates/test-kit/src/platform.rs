//! Sealed storage in memory for TEE cores under test. Writes are staged and become durable
//! on `commit` only, like the real platforms, so a core that answers before committing loses
//! its writes here too and commit-ordering bugs show in every crate's tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_wire::protocol::Attestation;
use rand::RngCore;
use zeroize::Zeroizing;

/// Sealed storage in memory: pending writes become durable on `commit` only.
#[derive(Default)]
pub struct MemPlatform {
    pub committed: BTreeMap<String, Vec<u8>>,
    pub staged: BTreeMap<String, Vec<u8>>,
    pub counter: u64,
    /// Where committed records are written (so another process can open them).
    pub persist_to: Option<PathBuf>,
    /// When set, every commit is made durable (written to `persist_to`) and then the
    /// process aborts: killed before any response exists.
    pub crash_after_commit: AtomicBool,
    /// When set, the next commit fails and discards every staged write, as a full disk or a
    /// lost sealing device would.
    pub fail_next_commit: AtomicBool,
    /// Seconds the platform's clock runs ahead of the system's (a test moves time on).
    pub clock_ahead: AtomicU64,
}

impl MemPlatform {
    /// What survives a crash: the committed records only.
    pub fn after_restart(&self) -> Self {
        MemPlatform {
            committed: self.committed.clone(),
            staged: self.committed.clone(),
            counter: self.counter,
            persist_to: None,
            crash_after_commit: AtomicBool::new(false),
            fail_next_commit: AtomicBool::new(false),
            clock_ahead: AtomicU64::new(self.clock_ahead.load(Ordering::SeqCst)),
        }
    }

    /// Writes the committed records to `path`.
    pub fn save(&self, path: &std::path::Path) {
        let bytes = postcard::to_allocvec(&(&self.committed, self.counter)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// What [`MemPlatform::save`] wrote, as after a restart.
    pub fn load(path: &std::path::Path) -> Self {
        let (committed, counter): (BTreeMap<String, Vec<u8>>, u64) =
            postcard::from_bytes(&std::fs::read(path).unwrap()).unwrap();
        MemPlatform {
            staged: committed.clone(),
            committed,
            counter,
            ..MemPlatform::default()
        }
    }
}

impl Platform for MemPlatform {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        rand::rngs::OsRng.fill_bytes(buf);
        Ok(())
    }
    fn now_unix(&self) -> u64 {
        now() + self.clock_ahead.load(Ordering::SeqCst)
    }
    fn seal(&mut self, id: &RecordId, plaintext: &[u8]) -> Result<(), PlatformError> {
        self.staged.insert(id.as_str().into(), plaintext.to_vec());
        Ok(())
    }
    fn commit(&mut self) -> Result<(), PlatformError> {
        if self.fail_next_commit.swap(false, Ordering::SeqCst) {
            self.staged = self.committed.clone();
            return Err(PlatformError::Io("injected commit failure".into()));
        }
        self.committed = self.staged.clone();
        if let Some(path) = &self.persist_to {
            self.save(path);
        }
        if self.crash_after_commit.load(Ordering::SeqCst) {
            std::process::abort();
        }
        Ok(())
    }
    fn unseal(&mut self, id: &RecordId) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError> {
        Ok(self.staged.get(id.as_str()).cloned().map(Zeroizing::new))
    }
    fn list(&mut self, prefix: &str) -> Result<Vec<RecordId>, PlatformError> {
        self.staged
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| RecordId::new(k.clone()))
            .collect()
    }
    fn remove(&mut self, id: &RecordId) -> Result<(), PlatformError> {
        self.staged.remove(id.as_str());
        Ok(())
    }
    fn attest(&mut self, _: &[u8]) -> Result<Attestation, PlatformError> {
        Err(PlatformError::Unsupported("attestation"))
    }
    fn counter_increment(&mut self) -> Result<u64, PlatformError> {
        self.counter += 1;
        Ok(self.counter)
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
