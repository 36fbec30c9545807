//! The TPM 2.0 platform: the sealed store of the software platform, with its key sealed by a
//! TPM and its epoch bound to the TPM's monotonic counter, so that a copy of the store put
//! back later is refused instead of silently used.
//!
//! * **Store key**: 32 random bytes (the OS's XOR the TPM's), sealed by the TPM under its
//!   storage key with a policy of PCR values plus an auth value derived from the operator's
//!   key file or passphrase. Only the TPM's blobs are written (`tpm.bin`); another TPM cannot
//!   load them, changed PCRs or another operator key cannot unseal them.
//! * **Rollback**: every durable commit writes the store at epoch e+1 (with the digest of its
//!   whole record set), *then* increments an NV counter, *then* returns: no answer leaves the
//!   TEE before both. At open, epoch == counter is the normal case, epoch == counter + 1 a
//!   commit interrupted between the two steps (the increment is finished then), epoch <
//!   counter a store put back from a copy (`store_rolled_back`), epoch > counter + 1 a TPM
//!   whose own state went back (`tpm_counter_behind`). With one commit at a time every crash
//!   leaves one of the first two, so there is no false alarm.
//! * **Randomness**: the OS's bytes XOR a ChaCha20 stream keyed by TPM randomness, refreshed
//!   at every commit: never weaker than either source.
//!
//! What it does not protect against: a software TPM's state folder copied with the store
//! rolls back both together (a physical TPM or a confidential VM's vTPM keeps its counter in
//! its own NV); root on the host while the TEE runs.

mod device;

use std::path::{Path, PathBuf};

use chacha20::cipher::{KeyIvInit, StreamCipher};
use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_wire::protocol::Attestation;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use device::PcrSelection;
use device::{SealedKeyBlobs, TpmDevice, TpmFailure};

use crate::sealed::db::SealedDb;
use crate::sealed::{check_canary, open_meta, operator_key, write_atomic, SealingKeySource};
use crate::StoreError;

/// The default NV index of the store's counter (owner range of the TCG handle registry).
pub const DEFAULT_NV_INDEX: u32 = 0x0100_C057;
const BLOBS_FILE: &str = "tpm.bin";
const DB_FILE: &str = "sealed.redb";
const COUNTER: &str = "counter";
const SEAL_AUTH_DOMAIN: &[u8] = b"CUSTOS-TPM-SEAL-AUTH-V1\0";
const NV_AUTH_DOMAIN: &[u8] = b"CUSTOS-TPM-NV-AUTH-V1\0";

/// How to reach the TPM and what to bind a new store to.
#[derive(Clone, Debug)]
pub struct TpmOptions {
    /// TCTI of the TPM: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// PCRs a new store's key is sealed to (an existing store keeps its own).
    pub pcrs: PcrSelection,
    /// NV index of a new store's counter (an existing store keeps its own).
    pub nv_index: u32,
}

/// `tpm.bin`: the TPM's blobs of the sealed store key.
#[derive(Serialize, Deserialize)]
struct BlobsFile {
    version: u8,
    public: Vec<u8>,
    private: Vec<u8>,
}

/// The TPM platform over a sealed store directory.
pub struct TpmPlatform {
    dir: PathBuf,
    db: SealedDb,
    device: TpmDevice,
    nv_index: u32,
    nv_auth: Zeroizing<[u8; 32]>,
    os: SystemRandom,
    pool: Zeroizing<[u8; 32]>,
    draws: u64,
    counter: u64,
    /// Set when a commit reached the store but not the counter: nothing more is committed
    /// until a restart finishes it.
    poisoned: Option<String>,
}

fn tpm_err(dir: &Path, f: TpmFailure) -> StoreError {
    StoreError::Tpm {
        path: dir.display().to_string(),
        what: f.what,
        reason: f.reason,
    }
}

fn domain_hash(domain: &[u8], secret: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(secret);
    Zeroizing::new(h.finalize().into())
}

/// Parses the platform line of a TPM store's `store.meta`: `tpm nv=0x... pcrs=sha256:...`.
fn parse_root(dir: &Path, line: &str) -> Result<(u32, PcrSelection), StoreError> {
    let bad = |reason: String| StoreError::Meta {
        path: dir.display().to_string(),
        reason,
    };
    let mut nv = None;
    let mut pcrs = None;
    for part in line.split(' ').skip(1) {
        if let Some(v) = part.strip_prefix("nv=") {
            let hex = v.strip_prefix("0x").unwrap_or(v);
            nv = Some(u32::from_str_radix(hex, 16).map_err(|_| bad(format!("bad nv {v:?}")))?);
        } else if let Some(v) = part.strip_prefix("pcrs=") {
            pcrs = Some(PcrSelection::parse(v).map_err(bad)?);
        }
    }
    match (nv, pcrs) {
        (Some(nv), Some(pcrs)) => Ok((nv, pcrs)),
        _ => Err(bad(format!("TPM line {line:?} lacks nv= or pcrs="))),
    }
}

impl TpmPlatform {
    /// Opens the store at `dir` on the TPM `options.tcti`, creating it (and its counter) when
    /// `create` is set and none exists. Refuses, by name, a store older than the counter, a
    /// counter behind the store, a store whose records are not the set its epoch names, and
    /// a key the TPM will not unseal.
    pub fn open(
        dir: &Path,
        source: &SealingKeySource,
        options: &TpmOptions,
        create: bool,
    ) -> Result<Self, StoreError> {
        let mut platform = Self::open_store(dir, source, options, create)?;
        crate::primes::import_primes_from_env(&mut platform)?;
        Ok(platform)
    }

    fn open_store(
        dir: &Path,
        source: &SealingKeySource,
        options: &TpmOptions,
        create: bool,
    ) -> Result<Self, StoreError> {
        let line = format!("tpm nv={:#010x} pcrs={}", options.nv_index, options.pcrs);
        let (meta, fresh) = open_meta(dir, source, create, "tpm", Some(&line))?;
        let (nv_index, pcrs) = parse_root(dir, meta.root.as_deref().unwrap_or(&line))?;
        let operator = operator_key(dir, source, &meta.kdf)?;
        let auth = domain_hash(SEAL_AUTH_DOMAIN, &operator[..]);
        let mut device = TpmDevice::connect(&options.tcti).map_err(|f| tpm_err(dir, f))?;
        let blobs_path = dir.join(BLOBS_FILE);
        let os = SystemRandom::new();
        let key = if fresh || !blobs_path.exists() {
            let mut key = Zeroizing::new([0u8; 32]);
            os.fill(&mut key[..]).map_err(|_| StoreError::Io {
                path: dir.display().to_string(),
                reason: "OS random source failed".into(),
            })?;
            let tpm = device.random(32).map_err(|f| tpm_err(dir, f))?;
            for (k, t) in key.iter_mut().zip(tpm.iter()) {
                *k ^= t;
            }
            let blobs = device
                .seal_key(&key, &auth, &pcrs)
                .map_err(|f| tpm_err(dir, f))?;
            let file = BlobsFile {
                version: 1,
                public: blobs.public,
                private: blobs.private,
            };
            let bytes = postcard::to_allocvec(&file).map_err(|e| StoreError::Io {
                path: blobs_path.display().to_string(),
                reason: e.to_string(),
            })?;
            write_atomic(&blobs_path, &bytes, 0o600).map_err(|e| StoreError::Io {
                path: blobs_path.display().to_string(),
                reason: e.to_string(),
            })?;
            key
        } else {
            let bytes = std::fs::read(&blobs_path).map_err(|e| StoreError::Io {
                path: blobs_path.display().to_string(),
                reason: e.to_string(),
            })?;
            let file: BlobsFile = postcard::from_bytes(&bytes)
                .ok()
                .filter(|f: &BlobsFile| f.version == 1)
                .ok_or_else(|| StoreError::Meta {
                    path: blobs_path.display().to_string(),
                    reason: "not a Custos TPM blob file".into(),
                })?;
            let blobs = SealedKeyBlobs {
                public: file.public,
                private: file.private,
            };
            device
                .unseal_key(&blobs, &auth, &pcrs)
                .map_err(|f| match f.kind {
                    device::FailureKind::WrongAuth => {
                        StoreError::WrongSealingKey(dir.display().to_string())
                    }
                    device::FailureKind::Policy => StoreError::Tpm {
                        path: dir.display().to_string(),
                        what: "unseal store key",
                        reason: format!(
                            "the values of PCRs {pcrs} differ from those the store was sealed \
                             to ({})",
                            f.reason
                        ),
                    },
                    device::FailureKind::Other if f.what == "load sealed key" => StoreError::Tpm {
                        path: dir.display().to_string(),
                        what: "load sealed key",
                        reason: format!(
                            "this TPM cannot load the store's key: it was sealed by \
                                 another TPM ({})",
                            f.reason
                        ),
                    },
                    device::FailureKind::Other => tpm_err(dir, f),
                })?
        };
        let nv_auth = domain_hash(NV_AUTH_DOMAIN, &key[..]);
        let mut db = SealedDb::open(&dir.join(DB_FILE), meta.store_id, &key, false)?;
        let never_committed = db.epoch() == 0;
        let counter = if fresh || (never_committed && create) {
            // A new store (or one whose creation stopped before its first commit) starts at
            // the counter's value.
            let c = match device.define_counter(nv_index, &nv_auth) {
                Ok(c) => c,
                Err(f) if !fresh => {
                    // Defined by the interrupted creation: it is this store's.
                    device
                        .counter(nv_index, &nv_auth)
                        .map_err(|_| tpm_err(dir, f))?
                }
                Err(f) => return Err(tpm_err(dir, f)),
            };
            db.start_epoch_at(c);
            c
        } else {
            device
                .counter(nv_index, &nv_auth)
                .map_err(|f| tpm_err(dir, f))?
        };
        let epoch = db.epoch();
        if epoch == counter + 1 {
            // The last commit reached the store, not the counter: finish it.
            tracing::warn!(
                epoch,
                counter,
                "finishing a commit interrupted before the TPM counter"
            );
            device
                .increment(nv_index, &nv_auth)
                .map_err(|f| tpm_err(dir, f))?;
        } else if epoch < counter {
            return Err(StoreError::RolledBack {
                path: dir.display().to_string(),
                store_epoch: epoch,
                counter,
            });
        } else if epoch > counter + 1 {
            return Err(StoreError::CounterBehind {
                path: dir.display().to_string(),
                store_epoch: epoch,
                counter,
            });
        }
        let pool = {
            let t = device.random(32).map_err(|f| tpm_err(dir, f))?;
            let mut p = Zeroizing::new([0u8; 32]);
            p.copy_from_slice(&t);
            p
        };
        let mut platform = TpmPlatform {
            dir: dir.to_path_buf(),
            db,
            device,
            nv_index,
            nv_auth,
            os,
            pool,
            draws: 0,
            counter: 0,
            poisoned: None,
        };
        check_canary(&mut platform, dir, fresh || never_committed)?;
        let counter_id = RecordId::new(COUNTER).expect("valid");
        platform.counter = match platform.db.unseal(&counter_id) {
            Ok(Some(b)) if b.len() == 8 => u64::from_be_bytes(b[..].try_into().expect("8")),
            Ok(None) => 0,
            _ => {
                return Err(StoreError::Meta {
                    path: dir.display().to_string(),
                    reason: "counter record is corrupt".into(),
                })
            }
        };
        Ok(platform)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The epoch of the last commit (equal to the TPM counter).
    pub fn epoch(&self) -> u64 {
        self.db.epoch()
    }
}

impl Platform for TpmPlatform {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.os
            .fill(buf)
            .map_err(|_| PlatformError::Random("OS random source failed".into()))?;
        self.draws += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.draws.to_be_bytes());
        let mut stream = chacha20::ChaCha20::new((&*self.pool).into(), (&nonce).into());
        stream.apply_keystream(buf);
        Ok(())
    }

    fn now_unix(&self) -> u64 {
        custos_pki::clock::now_unix()
    }

    fn seal(&mut self, id: &RecordId, plaintext: &[u8]) -> Result<(), PlatformError> {
        // Every record written by a commit carries that commit's epoch.
        let version = self.db.epoch() + 1;
        self.db.seal(id, plaintext, version)
    }

    fn commit(&mut self) -> Result<(), PlatformError> {
        if let Some(why) = &self.poisoned {
            return Err(PlatformError::Io(why.clone()));
        }
        if self.db.commit()?.is_none() {
            return Ok(());
        }
        if let Err(f) = self.device.increment(self.nv_index, &self.nv_auth) {
            let why = format!(
                "the store reached epoch {} but the TPM counter did not advance ({}: {}); \
                 restart the TEE to finish the commit",
                self.db.epoch(),
                f.what,
                f.reason
            );
            tracing::error!(%why, "TPM counter not advanced");
            self.poisoned = Some(why.clone());
            return Err(PlatformError::Io(why));
        }
        if let Ok(t) = self.device.random(32) {
            self.pool.copy_from_slice(&t);
            self.draws = 0;
        }
        Ok(())
    }

    fn unseal(&mut self, id: &RecordId) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError> {
        self.db.unseal(id)
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<RecordId>, PlatformError> {
        self.db.list(prefix)
    }

    fn remove(&mut self, id: &RecordId) -> Result<(), PlatformError> {
        self.db.remove(id);
        Ok(())
    }

    fn attest(&mut self, _user_data: &[u8]) -> Result<Attestation, PlatformError> {
        // Quotes need an attestation key certified through the endorsement key; until that
        // lands the TPM platform answers no document rather than an unverifiable one.
        Err(PlatformError::Unsupported(
            "attestation on the TPM platform (quotes come with the attestation key)",
        ))
    }

    fn counter_increment(&mut self) -> Result<u64, PlatformError> {
        // A record of the store, protected by the store's epoch; the TPM's own counter moves
        // only with commits, or it would run ahead of the store.
        let next = self.counter + 1;
        let id = RecordId::new(COUNTER).expect("valid");
        self.seal(&id, &next.to_be_bytes())?;
        self.counter = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
