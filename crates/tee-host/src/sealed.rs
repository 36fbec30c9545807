//! The software platform: sealed storage on disk, OS randomness and clock.
//!
//! Honest about what it is: a development and test stand-in for a TEE. It protects keys at
//! rest with an operator-provided sealing key, not against root on the running host.
//!
//! Layout of a store directory:
//! * `store.meta` — plaintext: format, random store id, how the sealing key is derived;
//! * `sealed.redb` — an embedded ACID store (redb) mapping record names to sealed records.
//!
//! A sealed record is `"CSR1" | version u64 | nonce (24) | XChaCha20-Poly1305 ciphertext`, with
//! associated data binding the store id, the record name and the version, so a record copied
//! from another store, moved under another name, or edited fails to open. Writes are pending
//! until `commit`, which writes them all in one durable redb transaction (copy-on-write
//! pages, fsync before the commit is acknowledged): crash-safe, and one flush per batch.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_wire::protocol::Attestation;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const META_FILE: &str = "store.meta";
const META_MAGIC: &str = "CUSTOS-SEALED-STORE-V1";
const RECORD_MAGIC: &[u8; 4] = b"CSR1";
const AAD_DOMAIN: &[u8] = b"CUSTOS-SEALED-RECORD-V1\0";
const CANARY: &str = "canary";
const CANARY_BODY: &[u8] = b"custos sealed store canary";
const COUNTER: &str = "counter";
const DB_FILE: &str = "sealed.redb";
const RECORDS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");
/// Largest sealed record accepted from disk.
pub const MAX_RECORD_LEN: u64 = 64 * 1024 * 1024;

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

/// The software platform over a sealed store directory.
pub struct SoftwarePlatform {
    dir: PathBuf,
    db: redb::Database,
    store_id: [u8; 16],
    cipher: XChaCha20Poly1305,
    rng: SystemRandom,
    counter: u64,
    /// Sealed writes not yet committed (`None` = delete).
    pending: BTreeMap<String, Option<Vec<u8>>>,
}

fn db_err(e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Io(format!("sealed store: {e}"))
}

impl SoftwarePlatform {
    /// Opens the store at `dir`, creating it when `create` is set and none exists. If the
    /// environment variable [`crate::primes::PRIMES_FILE_ENV`] names a primes file, its sets
    /// are sealed into the store and the file emptied ([`crate::primes`]).
    pub fn open(dir: &Path, source: &SealingKeySource, create: bool) -> Result<Self, StoreError> {
        let mut platform = Self::open_store(dir, source, create)?;
        crate::primes::import_primes_from_env(&mut platform)?;
        Ok(platform)
    }

    fn open_store(dir: &Path, source: &SealingKeySource, create: bool) -> Result<Self, StoreError> {
        let meta_path = dir.join(META_FILE);
        let rng = SystemRandom::new();
        let fresh = !meta_path.exists();
        if fresh && !create {
            return Err(StoreError::Missing(dir.display().to_string()));
        }
        let (store_id, kdf) = if fresh {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(dir, e))?;
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
            let text = format!(
                "{META_MAGIC}\nstore-id={}\nkdf={kdf}\n",
                hex::encode(store_id)
            );
            write_atomic(&meta_path, text.as_bytes(), 0o600).map_err(|e| io_err(&meta_path, e))?;
            (store_id, kdf)
        } else {
            Self::read_meta(&meta_path)?
        };
        let key = Self::derive_key(dir, source, &kdf)?;
        let db_path = dir.join(DB_FILE);
        let db = redb::Database::create(&db_path).map_err(|e| StoreError::Io {
            path: db_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut platform = SoftwarePlatform {
            dir: dir.to_path_buf(),
            db,
            store_id,
            cipher: XChaCha20Poly1305::new((&*key).into()),
            rng,
            counter: 0,
            pending: BTreeMap::new(),
        };
        let canary = RecordId::new(CANARY).expect("valid");
        if fresh {
            platform
                .seal(&canary, CANARY_BODY)
                .and_then(|_| platform.commit())
                .map_err(|e| io_err(dir, std::io::Error::other(e.to_string())))?;
        }
        match platform.unseal(&canary) {
            Ok(Some(body)) if body.as_slice() == CANARY_BODY => {}
            Ok(None) => {
                return Err(StoreError::Meta {
                    path: dir.display().to_string(),
                    reason: "canary record missing".into(),
                })
            }
            _ => return Err(StoreError::WrongSealingKey(dir.display().to_string())),
        }
        let counter = RecordId::new(COUNTER).expect("valid");
        platform.counter = match platform.unseal(&counter) {
            Ok(Some(b)) if b.len() == 8 => u64::from_be_bytes(b[..].try_into().expect("8")),
            Ok(None) => 0,
            _ => {
                return Err(StoreError::Meta {
                    path: dir.display().to_string(),
                    reason: "monotonic counter record is corrupt".into(),
                })
            }
        };
        Ok(platform)
    }

    fn read_meta(path: &Path) -> Result<([u8; 16], String), StoreError> {
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
        Ok((store_id, kdf.to_string()))
    }

    fn derive_key(
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
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
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

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_committed(&self, name: &str) -> Result<Option<Vec<u8>>, PlatformError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let table = match rtx.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table.get(name).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn aad(&self, id: &RecordId, version: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 16 + 4 + id.as_str().len() + 8);
        aad.extend_from_slice(AAD_DOMAIN);
        aad.extend_from_slice(&self.store_id);
        aad.extend_from_slice(&(id.as_str().len() as u32).to_be_bytes());
        aad.extend_from_slice(id.as_str().as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    fn next_version(&mut self) -> Result<u64, PlatformError> {
        self.counter_increment()
    }

    fn seal_with_version(
        &mut self,
        id: &RecordId,
        plaintext: &[u8],
        version: u64,
    ) -> Result<(), PlatformError> {
        let mut nonce = [0u8; 24];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| PlatformError::Random("OS random source failed".into()))?;
        let aad = self.aad(id, version);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| PlatformError::Io("AEAD encryption failed".into()))?;
        let mut sealed = Vec::with_capacity(4 + 8 + 24 + ct.len());
        sealed.extend_from_slice(RECORD_MAGIC);
        sealed.extend_from_slice(&version.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ct);
        self.pending.insert(id.as_str().to_string(), Some(sealed));
        Ok(())
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
            self.next_version()?
        };
        self.seal_with_version(id, plaintext, version)
    }

    fn commit(&mut self) -> Result<(), PlatformError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let write = || -> Result<(), PlatformError> {
            let wtx = self.db.begin_write().map_err(db_err)?;
            {
                let mut table = wtx.open_table(RECORDS).map_err(db_err)?;
                for (name, value) in &pending {
                    match value {
                        Some(v) => {
                            table.insert(name.as_str(), v.as_slice()).map_err(db_err)?;
                        }
                        None => {
                            table.remove(name.as_str()).map_err(db_err)?;
                        }
                    }
                }
            }
            wtx.commit().map_err(db_err)
        };
        // On failure the pending writes are gone (taken above): nothing half-written stays.
        write()
    }

    fn unseal(&mut self, id: &RecordId) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError> {
        let corrupt = |reason: &str| PlatformError::RecordCorrupt {
            id: id.as_str().to_string(),
            reason: reason.to_string(),
        };
        let sealed = match self.pending.get(id.as_str()) {
            Some(Some(v)) => v.clone(),
            Some(None) => return Ok(None),
            None => match self.read_committed(id.as_str())? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        if sealed.len() as u64 > MAX_RECORD_LEN {
            return Err(corrupt("record larger than the limit"));
        }
        if sealed.len() < 4 + 8 + 24 + 16 || &sealed[..4] != RECORD_MAGIC {
            return Err(corrupt("not a sealed record (bad magic or truncated)"));
        }
        let version = u64::from_be_bytes(sealed[4..12].try_into().expect("8 bytes"));
        let nonce = XNonce::from_slice(&sealed[12..36]);
        let aad = self.aad(id, version);
        let pt = self
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[36..],
                    aad: &aad,
                },
            )
            .map_err(|_| {
                corrupt("authentication failed (tampered, moved, or from another store)")
            })?;
        Ok(Some(Zeroizing::new(pt)))
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<RecordId>, PlatformError> {
        let mut names = std::collections::BTreeSet::new();
        let rtx = self.db.begin_read().map_err(db_err)?;
        match rtx.open_table(RECORDS) {
            Ok(table) => {
                for item in table.range(prefix..).map_err(db_err)? {
                    let (k, _) = item.map_err(db_err)?;
                    let name = k.value();
                    if !name.starts_with(prefix) {
                        break;
                    }
                    names.insert(name.to_string());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(e)),
        }
        for (name, value) in self.pending.range(prefix.to_string()..) {
            if !name.starts_with(prefix) {
                break;
            }
            match value {
                Some(_) => names.insert(name.clone()),
                None => names.remove(name),
            };
        }
        names.into_iter().map(RecordId::new).collect()
    }

    fn remove(&mut self, id: &RecordId) -> Result<(), PlatformError> {
        self.pending.insert(id.as_str().to_string(), None);
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
        self.seal_with_version(&id, &next.to_be_bytes(), 0)?;
        self.counter = next;
        Ok(next)
    }
}
