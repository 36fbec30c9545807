//! The software platform: sealed storage on disk, OS randomness and clock.
//!
//! Honest about what it is: a development and test stand-in for a TEE. It protects keys at
//! rest with an operator-provided sealing key, not against root on the running host.
//!
//! Layout of a store directory:
//! * `store.meta` — plaintext: format, random store id, how the sealing key is derived, and
//!   for a TPM store (`root=tpm`) the TPM's counter index and PCR selection;
//! * `sealed.redb` — an embedded ACID store (redb) mapping record names to sealed records
//!   ([`db`]), with an epoch record naming the whole record set ([`digest`]).
//!
//! A sealed record is `"CSR1" | version u64 | nonce (24) | XChaCha20-Poly1305 ciphertext`, with
//! associated data binding the store id, the record name and the version, so a record copied
//! from another store, moved under another name, or edited fails to open. Writes are pending
//! until `commit`, which writes them all in one durable redb transaction (copy-on-write
//! pages, fsync before the commit is acknowledged): crash-safe, and one flush per batch.
//!
//! The software platform keeps its sealing key with the operator and its counter in the
//! store itself, so a copy of the whole folder put back later opens as it was: it cannot
//! refuse a rollback. The TPM platform ([`crate::tpm`], feature `tpm`) can.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_wire::protocol::Attestation;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub(crate) mod db;
pub(crate) mod digest;

use db::SealedDb;
pub use db::MAX_RECORD_LEN;

const META_FILE: &str = "store.meta";
const META_MAGIC: &str = "CUSTOS-SEALED-STORE-V1";
use db::{CANARY, CANARY_BODY, CANARY_BODY_V1};
pub(crate) const COUNTER: &str = "counter";
const DB_FILE: &str = "sealed.redb";

/// Argon2id parameters for passphrase-derived sealing keys (OWASP's first recommendation).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;

/// Where the 256-bit sealing key comes from.
pub enum SealingKeySource {
    /// A key file the operator provides: 32 raw bytes or 64 hex characters, mode 0600.
    KeyFile(PathBuf),
    /// A passphrase stretched with Argon2id and the store's salt.
    Passphrase(SecretBox<String>),
}

/// Why a store could not be opened. Each names what the operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key file is unreadable, of the wrong size, or readable by others.
    #[error("sealing key file {path}: {reason}")]
    KeyFile {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The sealing key does not open this store.
    #[error("wrong sealing key: it does not open the sealed store at {0} (canary record failed authentication)")]
    WrongSealingKey(String),
    /// The store was created with another kind of sealing key.
    #[error("store at {path} was sealed with a {expected}, not a {given}")]
    KeySourceMismatch {
        /// Store path.
        path: String,
        /// What the store was made with.
        expected: String,
        /// What was offered.
        given: String,
    },
    /// The store metadata is unreadable or malformed.
    #[error("sealed store metadata {path}: {reason}")]
    Meta {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// I/O failure.
    #[error("sealed store I/O at {path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// No store exists and creation was not requested.
    #[error("no sealed store at {0}; pass --init to create one")]
    Missing(String),
    /// The pregenerated primes file (`CUSTOS_TEE_PRIMES_FILE`) cannot be used.
    #[error("primes file {path}: {reason}")]
    Primes {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The store's records are not the set its epoch record names.
    #[error("sealed store at {path} was tampered with: {reason}; it is not opened")]
    Tampered {
        /// Store path.
        path: String,
        /// What differs.
        reason: String,
    },
    /// The store is older than the TPM's counter: a copy of an earlier state was put back.
    #[error(
        "sealed store at {path} was rolled back: it is at epoch {store_epoch} but the TPM \
         counter is at {counter}; it is not opened (restore the latest store, never an older copy)"
    )]
    RolledBack {
        /// Store path.
        path: String,
        /// Epoch the store holds.
        store_epoch: u64,
        /// Value of the TPM's monotonic counter.
        counter: u64,
    },
    /// The TPM's counter is behind the store by more than one interrupted commit: the TPM's
    /// own state was rolled back, or this is another TPM.
    #[error(
        "sealed store at {path} is at epoch {store_epoch} but the TPM counter is only at \
         {counter}: the TPM state was rolled back or replaced; it is not opened"
    )]
    CounterBehind {
        /// Store path.
        path: String,
        /// Epoch the store holds.
        store_epoch: u64,
        /// Value of the TPM's monotonic counter.
        counter: u64,
    },
    /// The TPM refused or failed an operation the store needs.
    #[error("TPM ({what}) for the store at {path}: {reason}")]
    Tpm {
        /// Store path.
        path: String,
        /// The operation.
        what: &'static str,
        /// What the TPM answered.
        reason: String,
    },
    /// The store was made for another platform.
    #[error("store at {path} belongs to the {store} platform, not the {given} platform")]
    PlatformMismatch {
        /// Store path.
        path: String,
        /// Platform the store was made for.
        store: String,
        /// Platform asked to open it.
        given: String,
    },
}

impl StoreError {
    /// A short, stable name of the refusal (for logs and tests).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::KeyFile { .. } => "sealing_key_file",
            StoreError::WrongSealingKey(_) => "wrong_sealing_key",
            StoreError::KeySourceMismatch { .. } => "key_source_mismatch",
            StoreError::Meta { .. } => "store_meta",
            StoreError::Io { .. } => "store_io",
            StoreError::Missing(_) => "store_missing",
            StoreError::Primes { .. } => "primes_file",
            StoreError::Tampered { .. } => "store_tampered",
            StoreError::RolledBack { .. } => "store_rolled_back",
            StoreError::CounterBehind { .. } => "tpm_counter_behind",
            StoreError::Tpm { .. } => "tpm_error",
            StoreError::PlatformMismatch { .. } => "platform_mismatch",
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads a key file, refusing one that group or others can access.
fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let bad = |reason: String| StoreError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets group/others read it; chmod 600",
            meta.permissions().mode() & 0o777
        )));
    }
    if meta.len() > 256 {
        return Err(bad("longer than a 32-byte key".into()));
    }
    let raw = Zeroizing::new(fs::read(path).map_err(|e| bad(e.to_string()))?);
    let mut key = Zeroizing::new([0u8; 32]);
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    if raw.len() == 32 {
        key.copy_from_slice(&raw);
    } else if text.len() == 64 && hex::decode_to_slice(text, &mut key[..]).is_ok() {
    } else {
        return Err(bad(
            "expected 32 raw bytes or 64 hex characters (custos tee keygen makes one)".into(),
        ));
    }
    Ok(key)
}

/// Writes `bytes` to `path` crash-safely with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Creates a new random sealing key file (mode 0600), refusing to overwrite one.
pub fn generate_key_file(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Err(StoreError::KeyFile {
            path: path.display().to_string(),
            reason: "already exists; refusing to overwrite a sealing key".into(),
        });
    }
    let mut key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut key[..])
        .map_err(|_| StoreError::KeyFile {
            path: path.display().to_string(),
            reason: "OS random source failed".into(),
        })?;
    let text = Zeroizing::new(hex::encode(&key[..]) + "\n");
    write_atomic(path, text.as_bytes(), 0o600).map_err(|e| io_err(path, e))
}

/// What `store.meta` says of a store.
pub(crate) struct StoreMeta {
    /// Random store id, bound into every record's associated data.
    pub(crate) store_id: [u8; 16],
    /// How the operator's key is derived (`keyfile`, or Argon2id with its salt).
    pub(crate) kdf: String,
    /// The platform's own line (`root=...`), absent for the software platform.
    pub(crate) root: Option<String>,
}

/// Reads `store.meta` of `dir`, or writes a new one (with `root` as its platform line) when
/// `create` is set and none exists; returns it and whether the store is new. A store made for
/// another platform than `platform` is refused by name.
pub(crate) fn open_meta(
    dir: &Path,
    source: &SealingKeySource,
    create: bool,
    platform: &str,
    root: Option<&str>,
) -> Result<(StoreMeta, bool), StoreError> {
    let meta_path = dir.join(META_FILE);
    let fresh = !meta_path.exists();
    if fresh && !create {
        return Err(StoreError::Missing(dir.display().to_string()));
    }
    if fresh {
        // Never a new store over an old one's records: they would be lost under a new key.
        for file in [DB_FILE, "tpm.bin"] {
            if dir.join(file).exists() {
                return Err(StoreError::Meta {
                    path: meta_path.display().to_string(),
                    reason: format!(
                        "missing while the store's {file} exists; restore it (a new store is \
                         made only in an empty folder)"
                    ),
                });
            }
        }
    }
    let meta = if fresh {
        let rng = SystemRandom::new();
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
        let mut store_id = [0u8; 16];
        let mut salt = [0u8; 16];
        rng.fill(&mut store_id)
            .and_then(|_| rng.fill(&mut salt))
            .map_err(|_| io_err(dir, std::io::Error::other("random source failed")))?;
        let kdf = match source {
            SealingKeySource::KeyFile(_) => "keyfile".to_string(),
            SealingKeySource::Passphrase(_) => format!(
                "argon2id m={ARGON2_M_KIB} t={ARGON2_T} p={ARGON2_P} salt={}",
                hex::encode(salt)
            ),
        };
        let mut text = format!(
            "{META_MAGIC}\nstore-id={}\nkdf={kdf}\n",
            hex::encode(store_id)
        );
        if let Some(root) = root {
            text.push_str(&format!("root={root}\n"));
        }
        write_atomic(&meta_path, text.as_bytes(), 0o600).map_err(|e| io_err(&meta_path, e))?;
        StoreMeta {
            store_id,
            kdf,
            root: root.map(str::to_string),
        }
    } else {
        read_meta(&meta_path)?
    };
    let store_platform = meta
        .root
        .as_deref()
        .and_then(|r| r.split(' ').next())
        .unwrap_or("software");
    if store_platform != platform {
        return Err(StoreError::PlatformMismatch {
            path: dir.display().to_string(),
            store: store_platform.to_string(),
            given: platform.to_string(),
        });
    }
    Ok((meta, fresh))
}

fn read_meta(path: &Path) -> Result<StoreMeta, StoreError> {
    let bad = |reason: &str| StoreError::Meta {
        path: path.display().to_string(),
        reason: reason.into(),
    };
    let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut lines = text.lines();
    if lines.next() != Some(META_MAGIC) {
        return Err(bad("not a Custos sealed store"));
    }
    let id_hex = lines
        .next()
        .and_then(|l| l.strip_prefix("store-id="))
        .ok_or_else(|| bad("missing store-id"))?;
    let mut store_id = [0u8; 16];
    hex::decode_to_slice(id_hex, &mut store_id).map_err(|_| bad("bad store-id"))?;
    let kdf = lines
        .next()
        .and_then(|l| l.strip_prefix("kdf="))
        .ok_or_else(|| bad("missing kdf"))?;
    let root = match lines.next() {
        None | Some("") => None,
        Some(l) => Some(
            l.strip_prefix("root=")
                .ok_or_else(|| bad("unexpected line after kdf"))?
                .to_string(),
        ),
    };
    Ok(StoreMeta {
        store_id,
        kdf: kdf.to_string(),
        root,
    })
}

/// The operator's 256-bit key for a store: the key file's bytes, or the passphrase
/// stretched with Argon2id and the store's salt.
pub(crate) fn operator_key(
    dir: &Path,
    source: &SealingKeySource,
    kdf: &str,
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let mismatch = |expected: &str, given: &str| StoreError::KeySourceMismatch {
        path: dir.display().to_string(),
        expected: expected.into(),
        given: given.into(),
    };
    match source {
        SealingKeySource::KeyFile(path) => {
            if kdf != "keyfile" {
                return Err(mismatch("passphrase", "key file"));
            }
            read_key_file(path)
        }
        SealingKeySource::Passphrase(pass) => {
            let salt_hex = kdf
                .strip_prefix("argon2id ")
                .and_then(|rest| rest.split(' ').find_map(|kv| kv.strip_prefix("salt=")))
                .ok_or_else(|| mismatch("key file", "passphrase"))?;
            let salt = hex::decode(salt_hex).map_err(|_| StoreError::Meta {
                path: dir.display().to_string(),
                reason: "bad salt".into(),
            })?;
            let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
                .expect("static Argon2 parameters are valid");
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut key = Zeroizing::new([0u8; 32]);
            argon
                .hash_password_into(pass.expose_secret().as_bytes(), &salt, &mut key[..])
                .map_err(|e| StoreError::Meta {
                    path: dir.display().to_string(),
                    reason: format!("Argon2id: {e}"),
                })?;
            Ok(key)
        }
    }
}

/// Seals the canary of a new store, or checks it: a store key that does not open it is the
/// wrong one. A store made before epoch records gets the canary that says it has them (and,
/// with that commit, its first epoch record), so its epoch record cannot be taken out later.
pub(crate) fn check_canary(
    platform: &mut impl Platform,
    dir: &Path,
    fresh: bool,
) -> Result<(), StoreError> {
    let canary = RecordId::new(CANARY).expect("valid");
    let seal_canary = |platform: &mut dyn Platform| {
        platform
            .seal(&canary, CANARY_BODY)
            .and_then(|_| platform.commit())
            .map_err(|e| io_err(dir, std::io::Error::other(e.to_string())))
    };
    if fresh {
        seal_canary(platform)?;
    }
    match platform.unseal(&canary) {
        Ok(Some(body)) if body.as_slice() == CANARY_BODY => Ok(()),
        Ok(Some(body)) if body.as_slice() == CANARY_BODY_V1 => seal_canary(platform),
        Ok(None) => Err(StoreError::Meta {
            path: dir.display().to_string(),
            reason: "canary record missing".into(),
        }),
        _ => Err(StoreError::WrongSealingKey(dir.display().to_string())),
    }
}

/// The value of the store's `counter` record ([`Platform::counter_increment`]; 0 before the
/// first increment).
pub(crate) fn read_counter(platform: &mut impl Platform, dir: &Path) -> Result<u64, StoreError> {
    let counter = RecordId::new(COUNTER).expect("valid");
    match platform.unseal(&counter) {
        Ok(Some(b)) if b.len() == 8 => Ok(u64::from_be_bytes(b[..].try_into().expect("8"))),
        Ok(None) => Ok(0),
        _ => Err(StoreError::Meta {
            path: dir.display().to_string(),
            reason: "monotonic counter record is corrupt".into(),
        }),
    }
}

/// The software platform over a sealed store directory.
pub struct SoftwarePlatform {
    dir: PathBuf,
    db: SealedDb,
    rng: SystemRandom,
    counter: u64,
}

impl SoftwarePlatform {
    /// Opens the store at `dir`, creating it when `create` is set and none exists.
    pub fn open(dir: &Path, source: &SealingKeySource, create: bool) -> Result<Self, StoreError> {
        Self::open_store(dir, source, create)
    }

    fn open_store(dir: &Path, source: &SealingKeySource, create: bool) -> Result<Self, StoreError> {
        let (meta, fresh) = open_meta(dir, source, create, "software", None)?;
        let key = operator_key(dir, source, &meta.kdf)?;
        // Lenient: a damaged or removed record is refused on use and repaired by sync; a
        // store made before epoch records opens and its next commit writes one.
        let db = SealedDb::open(&dir.join(DB_FILE), meta.store_id, &key, false)?;
        let mut platform = SoftwarePlatform {
            dir: dir.to_path_buf(),
            db,
            rng: SystemRandom::new(),
            counter: 0,
        };
        check_canary(&mut platform, dir, fresh)?;
        platform.counter = read_counter(&mut platform, dir)?;
        Ok(platform)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found wrong with the record set (a record put back from an older copy,
    /// taken out or damaged), if anything: the software platform opens anyway and says so
    /// (logged at open); the TPM platform refuses such a store.
    pub fn record_set_mismatch(&self) -> Option<&str> {
        self.db.mismatch()
    }
}

impl Platform for SoftwarePlatform {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.rng
            .fill(buf)
            .map_err(|_| PlatformError::Random("OS random source failed".into()))
    }

    fn now_unix(&self) -> u64 {
        custos_pki::clock::now_unix()
    }

    fn seal(&mut self, id: &RecordId, plaintext: &[u8]) -> Result<(), PlatformError> {
        let version = if id.as_str() == COUNTER || id.as_str() == CANARY {
            0
        } else {
            self.counter_increment()?
        };
        self.db.seal(id, plaintext, version)
    }

    fn commit(&mut self) -> Result<(), PlatformError> {
        self.db.commit().map(|_| ())
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
        // No hardware root of trust exists here; the document says so instead of faking one.
        let doc = format!(
            "CUSTOS-SOFTWARE-ATTESTATION-V1\nThis is the software development backend, not a \
             hardware TEE; nothing here is attested.\nuser-data-sha256={}\n",
            hex::encode(Sha256::digest(user_data))
        );
        Ok(Attestation {
            platform: "software".into(),
            document: doc.into_bytes(),
        })
    }

    fn counter_increment(&mut self) -> Result<u64, PlatformError> {
        let next = self.counter + 1;
        let id = RecordId::new(COUNTER).expect("valid");
        self.db.seal(&id, &next.to_be_bytes(), 0)?;
        self.counter = next;
        Ok(next)
    }
}
