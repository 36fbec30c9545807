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
//! * **Attestation** (`attestation.rs`): an attestation key made under the endorsement key at
//!   creation (kept in `tpm.bin`), credential activation, and quotes of the sealing PCRs
//!   over the caller's user data (`custos_attest::TpmQuote`).
//!
//! What it does not protect against: a software TPM's state folder copied with the store
//! rolls back both together (a physical TPM or a confidential VM's vTPM keeps its counter in
//! its own NV); root on the host while the TEE runs.

mod attestation;
mod blobs;
mod device;

use std::path::{Path, PathBuf};

use chacha20::cipher::{KeyIvInit, StreamCipher};
use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_wire::protocol::Attestation;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use device::PcrSelection;
use device::{AkBlobs, TpmDevice, TpmFailure};

use crate::sealed::db::SealedDb;
use crate::sealed::{
    check_canary, open_meta, operator_key, read_counter, SealingKeySource, COUNTER,
};
use crate::StoreError;

/// The default NV index of the store's counter (owner range of the TCG handle registry).
pub const DEFAULT_NV_INDEX: u32 = 0x0100_C057;
const BLOBS_FILE: &str = "tpm.bin";
const DB_FILE: &str = "sealed.redb";
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

/// The TPM platform over a sealed store directory.
pub struct TpmPlatform {
    dir: PathBuf,
    db: SealedDb,
    device: TpmDevice,
    nv_index: u32,
    nv_auth: Zeroizing<[u8; 32]>,
    /// The PCRs the store key is sealed to, which quotes cover.
    pcrs: PcrSelection,
    /// The attestation key; `None` only for a store made before attestation keys whose key
    /// could not be made at open (the reason was logged; the next open tries again).
    ak: Option<AkBlobs>,
    /// The TPM's identity, read once.
    identity: Option<custos_attest::TpmIdentity>,
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
        Self::open_store(dir, source, options, create)
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
        if !fresh && !blobs_path.exists() {
            return Err(StoreError::Meta {
                path: blobs_path.display().to_string(),
                reason: "missing: without the TPM's blobs of its key the store cannot be opened \
                         (restore the file; a new key is made only for a new store)"
                    .into(),
            });
        }
        let (key, key_blobs, mut ak) = if fresh {
            let mut key = Zeroizing::new([0u8; 32]);
            os.fill(&mut key[..]).map_err(|_| StoreError::Io {
                path: dir.display().to_string(),
                reason: "OS random source failed".into(),
            })?;
            let tpm = device.random(32).map_err(|f| tpm_err(dir, f))?;
            for (k, t) in key.iter_mut().zip(tpm.iter()) {
                *k ^= t;
            }
            let sealed = device
                .seal_key(&key, &auth, &pcrs)
                .map_err(|f| tpm_err(dir, f))?;
            let ak = device.create_ak().map_err(|f| tpm_err(dir, f))?;
            blobs::write(&blobs_path, &sealed, &ak)?;
            (key, sealed, Some(ak))
        } else {
            let file = blobs::read(&blobs_path)?;
            let key = device
                .unseal_key(&file.key, &auth, &pcrs)
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
                                 another TPM, or its blobs were changed ({})",
                            f.reason
                        ),
                    },
                    device::FailureKind::Other => tpm_err(dir, f),
                })?;
            (key, file.key, file.ak)
        };
        let nv_auth = domain_hash(NV_AUTH_DOMAIN, &key[..]);
        let mut db = SealedDb::open(&dir.join(DB_FILE), meta.store_id, &key, true)?;
        let counter = if fresh {
            // A new store starts at its counter's value.
            let c = device
                .define_counter(nv_index, &nv_auth)
                .map_err(|f| tpm_err(dir, f))?;
            db.start_epoch_at(c);
            c
        } else {
            if db.epoch() == 0 {
                // Its creation stopped before the first commit, or its records were wiped:
                // either way nothing says which state is the latest, so it is not adopted.
                return Err(StoreError::Tampered {
                    path: dir.display().to_string(),
                    reason: format!(
                        "it has no epoch record (emptied, or its creation was cut short); \
                         start again with a new store folder and NV index (the counter at \
                         {nv_index:#010x} belongs to this store)"
                    ),
                });
            }
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
        if ak.is_none() {
            // A store made before attestation keys: make its key now, once the store is
            // known to be this TPM's and current. A failure leaves the store usable without
            // attestation (it is tried again at the next open).
            match device.create_ak() {
                Ok(made) => {
                    blobs::write(&blobs_path, &key_blobs, &made)?;
                    ak = Some(made);
                }
                Err(f) => tracing::warn!(
                    what = f.what,
                    reason = %f.reason,
                    "no attestation key for this store: quotes are unavailable until a \
                     restart makes one"
                ),
            }
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
            pcrs,
            ak,
            identity: None,
            os,
            pool,
            draws: 0,
            counter: 0,
            poisoned: None,
        };
        check_canary(&mut platform, dir, fresh)?;
        platform.counter = read_counter(&mut platform, dir)?;
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
            self.db.discard_pending();
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
            // The host exits on this error (nothing more can be committed), so that a
            // restart finishes the commit and the core's memory matches the store again.
            tracing::error!(%why, "TPM counter not advanced");
            self.poisoned = Some(why.clone());
            return Err(PlatformError::Io(why));
        }
        if let Ok(t) = self.device.random(32) {
            if t.len() == 32 {
                self.pool.copy_from_slice(&t);
                self.draws = 0;
            }
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

    fn attest(&mut self, user_data: &[u8]) -> Result<Attestation, PlatformError> {
        self.quote(user_data)
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

    fn attestation_identity(
        &mut self,
    ) -> Result<Option<custos_attest::TpmIdentity>, PlatformError> {
        self.identity().map(Some)
    }

    fn activate_credential(
        &mut self,
        credential: &custos_attest::TpmCredential,
    ) -> Result<Zeroizing<[u8; 32]>, PlatformError> {
        self.activate(credential)
    }
}

#[cfg(test)]
mod attest_tests;
#[cfg(test)]
mod tests;
