//! Pregenerated Paillier primes for distributed key generation, handed to the TEE core when
//! its process starts.
//!
//! If the environment variable [`PRIMES_FILE_ENV`] names a file when the sealed store is
//! opened ([`crate::SoftwarePlatform::open`]), the file's sets (a JSON array, as `custos dealer
//! primes` writes it; owner-only, mode 0600) are sealed into the store under the TEE core's
//! `primes/` records and committed, and the file is then rewritten as an empty list `[]`, so
//! every set reaches the TEE once and the secrets do not stay on disk in clear. The TEE core
//! consumes one set per key generation and deletes it with the session's start
//! (`custos_tee_core::threshold::primes`). Without the variable, the TEE generates its own
//! safe primes in the background when a key generation needs them.
//!
//! Whoever made the file knows those Paillier secrets: make it on the machine itself, as its
//! operator. Tests point the variable at per-node copies of the TEST-ONLY fixture of
//! `custos-threshold`; that fixture is not compiled into any production binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use custos_tee_core::threshold::primes::seal_primes_file;
use zeroize::Zeroizing;

use custos_tee_core::platform::Platform;

use crate::sealed::{write_atomic, StoreError};

/// Environment variable naming a file of pregenerated primes sets to seal at start-up.
pub const PRIMES_FILE_ENV: &str = "CUSTOS_TEE_PRIMES_FILE";
/// Largest primes file read (a set is about 1.7 KB of JSON).
pub const MAX_PRIMES_FILE: u64 = 1024 * 1024;

/// Seals the primes sets of the file at `path` into the store and empties the file; returns
/// how many sets it held. A file that group or others may read, or that does not parse, is
/// refused and left as it is, and nothing is sealed.
pub fn import_primes_file(platform: &mut impl Platform, path: &Path) -> Result<usize, StoreError> {
    let bad = |reason: String| StoreError::Primes {
        path: path.display().to_string(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets group/others read these secrets; chmod 600",
            meta.permissions().mode() & 0o777
        )));
    }
    if meta.len() > MAX_PRIMES_FILE {
        return Err(bad(format!("larger than {MAX_PRIMES_FILE} bytes")));
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| bad(e.to_string()))?);
    let sets = seal_primes_file(platform, &bytes).map_err(bad)?;
    // Sealed and committed: the clear copy goes.
    write_atomic(path, b"[]\n", 0o600).map_err(|e| bad(format!("emptying it: {e}")))?;
    Ok(sets)
}

/// [`import_primes_file`] of the file [`PRIMES_FILE_ENV`] names, if it is set; returns how
/// many sets were sealed.
pub fn import_primes_from_env(platform: &mut impl Platform) -> Result<usize, StoreError> {
    match std::env::var_os(PRIMES_FILE_ENV) {
        Some(path) if !path.is_empty() => {
            let n = import_primes_file(platform, Path::new(&path))?;
            tracing::info!(
                file = %Path::new(&path).display(),
                sets = n,
                "pregenerated primes sealed for distributed key generation"
            );
            Ok(n)
        }
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::{SealingKeySource, SoftwarePlatform};
    use custos_tee_core::platform::Platform;
    use custos_tee_core::threshold::primes::PRIMES_PREFIX;

    /// TEST ONLY data: the threshold crate's public Blum-prime fixture (four sets).
    const FIXTURE: &str = include_str!("../../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json");

    fn store(dir: &Path) -> SoftwarePlatform {
        let key = dir.join("key");
        crate::sealed::generate_key_file(&key).unwrap();
        SoftwarePlatform::open(&dir.join("store"), &SealingKeySource::KeyFile(key), true).unwrap()
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_primes_file_is_sealed_once_and_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let mut platform = store(dir.path());
        let file = dir.path().join("primes.json");

        write(&file, FIXTURE, 0o644);
        let err = import_primes_file(&mut platform, &file).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        write(&file, "[{\"not\": \"primes\"}]", 0o600);
        assert!(import_primes_file(&mut platform, &file).is_err());
        assert!(
            fs::read_to_string(&file).unwrap().contains("not"),
            "left as it was"
        );
        assert!(platform.list(PRIMES_PREFIX).unwrap().is_empty());

        write(&file, FIXTURE, 0o600);
        assert_eq!(import_primes_file(&mut platform, &file).unwrap(), 4);
        assert_eq!(platform.list(PRIMES_PREFIX).unwrap().len(), 4);
        assert_eq!(fs::read_to_string(&file).unwrap().trim(), "[]");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Emptied: a restart seals nothing more; the same sets again are stored once.
        assert_eq!(import_primes_file(&mut platform, &file).unwrap(), 0);
        write(&file, FIXTURE, 0o600);
        assert_eq!(import_primes_file(&mut platform, &file).unwrap(), 4);
        assert_eq!(platform.list(PRIMES_PREFIX).unwrap().len(), 4);
        assert!(import_primes_file(&mut platform, &dir.path().join("missing")).is_err());
    }
}
