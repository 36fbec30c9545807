//! `tpm.bin`: the TPM's blobs of a store, the only TPM material written to disk: the sealed
//! store key and (from version 2) the attestation key. Both load in their own TPM only.
//! Version 1 (the sealed key alone) is still read; the store then gets its attestation key
//! and the file is rewritten, atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::device::{AkBlobs, SealedKeyBlobs};
use crate::sealed::write_atomic;
use crate::StoreError;

const VERSION: u8 = 2;

/// Version 1: the sealed store key.
#[derive(Serialize, Deserialize)]
struct FileV1 {
    version: u8,
    public: Vec<u8>,
    private: Vec<u8>,
}

/// Version 2: the sealed store key and the attestation key.
#[derive(Serialize, Deserialize)]
struct FileV2 {
    version: u8,
    public: Vec<u8>,
    private: Vec<u8>,
    ak_public: Vec<u8>,
    ak_private: Vec<u8>,
}

/// The blobs read back; `ak` is `None` for a version 1 file.
pub(super) struct Blobs {
    pub(super) key: SealedKeyBlobs,
    pub(super) ak: Option<AkBlobs>,
}

fn not_ours(path: &Path) -> StoreError {
    StoreError::Meta {
        path: path.display().to_string(),
        reason: "not a Custos TPM blob file".into(),
    }
}

/// Reads `tpm.bin` (version 1 or 2).
pub(super) fn read(path: &Path) -> Result<Blobs, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // postcard writes a u8 as one byte: the version leads either layout.
    match bytes.first() {
        Some(1) => {
            let f: FileV1 = postcard::from_bytes(&bytes).map_err(|_| not_ours(path))?;
            Ok(Blobs {
                key: SealedKeyBlobs {
                    public: f.public,
                    private: f.private,
                },
                ak: None,
            })
        }
        Some(2) => {
            let f: FileV2 = postcard::from_bytes(&bytes).map_err(|_| not_ours(path))?;
            Ok(Blobs {
                key: SealedKeyBlobs {
                    public: f.public,
                    private: f.private,
                },
                ak: Some(AkBlobs {
                    public: f.ak_public,
                    private: f.ak_private,
                }),
            })
        }
        _ => Err(not_ours(path)),
    }
}

/// Writes `tpm.bin` (version 2) atomically, readable by the owner only.
pub(super) fn write(path: &Path, key: &SealedKeyBlobs, ak: &AkBlobs) -> Result<(), StoreError> {
    let file = FileV2 {
        version: VERSION,
        public: key.public.clone(),
        private: key.private.clone(),
        ak_public: ak.public.clone(),
        ak_private: ak.private.clone(),
    };
    let io = |reason: String| StoreError::Io {
        path: path.display().to_string(),
        reason,
    };
    let bytes = postcard::to_allocvec(&file).map_err(|e| io(e.to_string()))?;
    write_atomic(path, &bytes, 0o600).map_err(|e| io(e.to_string()))
}

/// Writes a version 1 file: how a store made before attestation keys looks (tests).
#[cfg(test)]
pub(super) fn write_v1(path: &Path, key: &SealedKeyBlobs) {
    let file = FileV1 {
        version: 1,
        public: key.public.clone(),
        private: key.private.clone(),
    };
    write_atomic(path, &postcard::to_allocvec(&file).unwrap(), 0o600).unwrap();
}
