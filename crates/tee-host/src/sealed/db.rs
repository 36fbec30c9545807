//! The sealed record database both platforms keep their records in: one redb file, each
//! record sealed with XChaCha20-Poly1305 under the store key, pending writes committed in one
//! durable transaction, and an epoch record that names the whole record set.
//!
//! A sealed record is `"CSR1" | version u64 | nonce (24) | ciphertext`, with associated data
//! binding the store id, the record name and the version. The `epoch` record (body: epoch
//! `u64 BE` ‖ set digest, sealed with the epoch as version) is rewritten by every commit; its
//! digest ([`super::digest`]) covers every other record, so a record put back from an old
//! copy of the store, or one taken out, is refused when the store opens.

use std::collections::BTreeMap;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use custos_tee_core::platform::{PlatformError, RecordId};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::digest::SetDigest;
use super::StoreError;

const RECORD_MAGIC: &[u8; 4] = b"CSR1";
const AAD_DOMAIN: &[u8] = b"CUSTOS-SEALED-RECORD-V1\0";
const RECORDS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");
/// The record every store begins with; the store key must open it.
pub(crate) const CANARY: &str = "canary";
/// The canary of a store made before epoch records.
pub(crate) const CANARY_BODY_V1: &[u8] = b"custos sealed store canary";
/// The canary of a store that has an epoch record: without it, such a store is refused.
pub(crate) const CANARY_BODY: &[u8] = b"custos sealed store canary v2: epochs";
/// The record naming the store's epoch and record set.
pub(crate) const EPOCH: &str = "epoch";
/// Largest sealed record accepted from disk.
pub const MAX_RECORD_LEN: u64 = 64 * 1024 * 1024;

pub(crate) fn db_err(e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Io(format!("sealed store: {e}"))
}

/// The records of one store.
pub(crate) struct SealedDb {
    db: redb::Database,
    store_id: [u8; 16],
    cipher: XChaCha20Poly1305,
    rng: SystemRandom,
    /// Sealed writes not yet committed (`None` = delete).
    pending: BTreeMap<String, Option<Vec<u8>>>,
    set: SetDigest,
    /// The committed epoch (0: no epoch record yet, a store made before epochs).
    epoch: u64,
    /// Why no commit is possible any more (the set digest could not be restored).
    broken: Option<String>,
    /// What a lenient open found wrong with the record set (see [`SealedDb::open`]).
    mismatch: Option<String>,
}

impl SealedDb {
    /// Opens (or creates) the database at `path` under `key`, reads every record to rebuild
    /// the set digest and checks it against the epoch record.
    ///
    /// `strict` (the TPM platform, whose epoch is bound to a counter): a record set that is
    /// not the one the epoch record names, or a missing epoch record, is refused
    /// (`store_tampered`). Lenient (the software platform, which cannot refuse a rollback
    /// anyway): the difference is reported ([`SealedDb::mismatch`], logged) and the store
    /// opens, so that one damaged or removed record is refused on use and repaired by sync
    /// rather than stopping the node; a store made before epochs opens and its first commit
    /// writes one.
    pub(crate) fn open(
        path: &Path,
        store_id: [u8; 16],
        key: &Zeroizing<[u8; 32]>,
        strict: bool,
    ) -> Result<Self, StoreError> {
        let db = redb::Database::create(path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut store = SealedDb {
            db,
            store_id,
            cipher: XChaCha20Poly1305::new((&**key).into()),
            rng: SystemRandom::new(),
            pending: BTreeMap::new(),
            set: SetDigest::new(),
            epoch: 0,
            broken: None,
            mismatch: None,
        };
        let io = |e: PlatformError| StoreError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut epoch_blob = None;
        let mut canary_blob = None;
        let mut records = 0usize;
        {
            let rtx = store.db.begin_read().map_err(|e| io(db_err(e)))?;
            match rtx.open_table(RECORDS) {
                Ok(table) => {
                    for item in table.range::<&str>(..).map_err(|e| io(db_err(e)))? {
                        let (k, v) = item.map_err(|e| io(db_err(e)))?;
                        if k.value() == EPOCH {
                            epoch_blob = Some(v.value().to_vec());
                        } else {
                            if k.value() == CANARY {
                                canary_blob = Some(v.value().to_vec());
                            }
                            records += 1;
                            store.set.set(k.value(), Some(v.value()));
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(io(db_err(e))),
            }
        }
        store.set.refresh_all();
        // A key that does not open the canary is the wrong key, whatever else is wrong.
        let mut has_epochs = false;
        if let Some(blob) = canary_blob {
            let id = RecordId::new(CANARY).expect("valid");
            match store.open_blob(&id, &blob) {
                Ok(body) => has_epochs = body.as_slice() == CANARY_BODY,
                Err(_) => {
                    let dir = path.parent().unwrap_or(path);
                    return Err(StoreError::WrongSealingKey(dir.display().to_string()));
                }
            }
        }
        let tampered = |reason: String| StoreError::Tampered {
            path: path.display().to_string(),
            reason,
        };
        // The epoch a lenient open continues from (software epochs guard nothing).
        let header_epoch = epoch_blob
            .as_ref()
            .filter(|b| b.len() >= 12)
            .map(|b| u64::from_be_bytes(b[4..12].try_into().expect("8 bytes")));
        let checked = match &epoch_blob {
            None if records == 0 || (!strict && !has_epochs) => return Ok(store),
            None => Err("its epoch record is missing".to_string()),
            Some(blob) => store.check_epoch(blob),
        };
        match checked {
            Ok(epoch) => store.epoch = epoch,
            Err(reason) if strict => return Err(tampered(reason)),
            Err(reason) => {
                tracing::error!(
                    store = %path.display(),
                    %reason,
                    "sealed store: the record set is not the one its epoch record names; \
                     opened anyway (software platform), damaged records are refused on use"
                );
                store.epoch = header_epoch.unwrap_or(0);
                store.mismatch = Some(reason);
            }
        }
        Ok(store)
    }

    /// The epoch the epoch record names, if its record set digest matches the records.
    fn check_epoch(&self, blob: &[u8]) -> Result<u64, String> {
        let id = RecordId::new(EPOCH).expect("valid");
        let body = self.open_blob(&id, blob).map_err(|e| e.to_string())?;
        let sealed_at = u64::from_be_bytes(blob[4..12].try_into().expect("checked by open_blob"));
        let (epoch, digest) = parse_epoch(&body)
            .filter(|(e, _)| *e == sealed_at)
            .ok_or_else(|| "its epoch record is malformed".to_string())?;
        if digest != self.set.digest() {
            return Err(
                "its records are not the set its epoch record names (a record was put \
                        back from an older copy, or taken out, or damaged)"
                    .into(),
            );
        }
        Ok(epoch)
    }

    /// What a lenient open found wrong with the record set, if anything.
    pub(crate) fn mismatch(&self) -> Option<&str> {
        self.mismatch.as_deref()
    }

    /// The committed epoch.
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))] // the TPM platform binds it
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sets the epoch of a new store before its first commit (the TPM platform starts it at
    /// its counter's value).
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    pub(crate) fn start_epoch_at(&mut self, epoch: u64) {
        self.epoch = epoch;
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

    fn sealed_blob(
        &self,
        id: &RecordId,
        plaintext: &[u8],
        version: u64,
    ) -> Result<Vec<u8>, PlatformError> {
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
        Ok(sealed)
    }

    /// Seals `plaintext` as record `id` at `version`, pending until [`SealedDb::commit`].
    pub(crate) fn seal(
        &mut self,
        id: &RecordId,
        plaintext: &[u8],
        version: u64,
    ) -> Result<(), PlatformError> {
        if id.as_str() == EPOCH {
            return Err(PlatformError::InvalidRecordId(format!(
                "{EPOCH} is the store's own record"
            )));
        }
        let sealed = self.sealed_blob(id, plaintext, version)?;
        self.pending.insert(id.as_str().to_string(), Some(sealed));
        Ok(())
    }

    /// Drops every pending write.
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    pub(crate) fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Deletes record `id`, pending until commit.
    pub(crate) fn remove(&mut self, id: &RecordId) {
        self.pending.insert(id.as_str().to_string(), None);
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

    fn open_blob(&self, id: &RecordId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
        let corrupt = |reason: &str| PlatformError::RecordCorrupt {
            id: id.as_str().to_string(),
            reason: reason.to_string(),
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
        Ok(Zeroizing::new(pt))
    }

    /// Unseals record `id` (pending writes first); `Ok(None)` if it does not exist.
    pub(crate) fn unseal(
        &self,
        id: &RecordId,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError> {
        let sealed = match self.pending.get(id.as_str()) {
            Some(Some(v)) => v.clone(),
            Some(None) => return Ok(None),
            None => match self.read_committed(id.as_str())? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        self.open_blob(id, &sealed).map(Some)
    }

    /// The records whose name starts with `prefix`, pending writes included.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<RecordId>, PlatformError> {
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
                    if name != EPOCH {
                        names.insert(name.to_string());
                    }
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

    /// Writes every pending change and a new epoch record (epoch + 1, the new set digest) in
    /// one durable transaction, and returns the new epoch; nothing when nothing is pending.
    /// On failure every pending write is discarded and the store is as before.
    pub(crate) fn commit(&mut self) -> Result<Option<u64>, PlatformError> {
        if let Some(why) = &self.broken {
            self.pending.clear();
            return Err(PlatformError::Io(why.clone()));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.pending);
        let next = self
            .epoch
            .checked_add(1)
            .ok_or_else(|| PlatformError::Io("store epoch exhausted".into()))?;
        let mut touched = Vec::with_capacity(pending.len());
        for (name, value) in &pending {
            touched.push(self.set.set(name, value.as_deref()));
        }
        self.set.refresh(touched.iter().copied());
        let mut body = Vec::with_capacity(40);
        body.extend_from_slice(&next.to_be_bytes());
        body.extend_from_slice(&self.set.digest());
        let epoch_id = RecordId::new(EPOCH).expect("valid");
        let written = self
            .sealed_blob(&epoch_id, &body, next)
            .and_then(|epoch_blob| {
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
                    table.insert(EPOCH, epoch_blob.as_slice()).map_err(db_err)?;
                }
                wtx.commit().map_err(db_err)
            });
        if let Err(e) = written {
            // Back to the committed set: the digest follows what is on disk. A record that
            // cannot be read back leaves the digest unknown, and the next commit would seal
            // a wrong one: refuse commits then rather than make a false alarm.
            let mut touched = Vec::with_capacity(pending.len());
            for name in pending.keys() {
                match self.read_committed(name) {
                    Ok(before) => touched.push(self.set.set(name, before.as_deref())),
                    Err(read) => {
                        self.broken =
                            Some(format!("record set unknown after a failed commit: {read}"));
                    }
                }
            }
            self.set.refresh(touched);
            return Err(e);
        }
        self.epoch = next;
        Ok(Some(next))
    }
}

fn parse_epoch(body: &[u8]) -> Option<(u64, [u8; 32])> {
    if body.len() != 40 {
        return None;
    }
    let epoch = u64::from_be_bytes(body[..8].try_into().ok()?);
    Some((epoch, body[8..].try_into().ok()?))
}
