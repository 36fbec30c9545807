//! Pregenerated Paillier primes for distributed key generation, handed to the TEE core when
//! its process starts.
//!
//! If the environment variable [`PRIMES_FILE_ENV`] (or `custos tee serve --primes-file`)
//! names a file, the TEE process hands it to the TEE core once the core is open
//! ([`import_primes_file`]): one primes set sealed to this node's device key, as `custos
//! dealer primes --for` writes it (`custos_wire::primes`). The core opens it, checks the set
//! (safe primes, not the published TEST-ONLY fixture: `custos_threshold::provenance`), seals
//! and commits it, and the file is then emptied, so the set reaches the TEE once. The TEE core
//! consumes one set per key generation and deletes it with the session's start
//! (`custos_tee_core::threshold::primes`). Without a file, the TEE generates its own safe
//! primes in the background when a key generation needs them — the default, since whoever
//! generated a set knows that Paillier secret.
//!
//! Tests and the local demo use sets of the TEST-ONLY fixture of `custos-threshold`, which only
//! a build with the cargo feature `insecure-test-primes` accepts, and only when
//! [`TEST_PRIMES_ENV`] asks for it.

use std::fs;
use std::path::{Path, PathBuf};

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_wire::primes::MAX_SEALED_PRIMES_FILE;
use custos_wire::protocol::{PrimesFault, TeeError};

use crate::sealed::{write_atomic, StoreError};

/// Environment variable naming a sealed primes file to import at start-up.
pub const PRIMES_FILE_ENV: &str = "CUSTOS_TEE_PRIMES_FILE";
/// Environment variable that, set to `1`, lets the TEE accept the committed TEST-ONLY primes:
/// honoured only by a build with the cargo feature `insecure-test-primes` (tests, the local
/// demo); a production build refuses those primes whatever it says.
pub const TEST_PRIMES_ENV: &str = "CUSTOS_TEE_INSECURE_TEST_PRIMES";

/// Whether this process was asked to accept the TEST-ONLY primes ([`TEST_PRIMES_ENV`] is
/// `1`); the TEE core grants it only in a build that can
/// (`custos_tee_core::threshold::primes::test_primes_policy`).
pub fn test_primes_requested() -> bool {
    std::env::var_os(TEST_PRIMES_ENV).is_some_and(|v| v == "1")
}

/// The file [`PRIMES_FILE_ENV`] names, if any.
pub fn primes_file_from_env() -> Option<PathBuf> {
    std::env::var_os(PRIMES_FILE_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Imports the sealed primes set of the file at `path` into `core` and empties the file;
/// returns whether it held a new set (an emptied file holds none; a set that already served
/// a key generation here is logged, not imported, and the file emptied). A file sealed to another node,
/// altered, oversized, a plaintext list of sets, or a set the TEE refuses (not safe primes;
/// the TEST-ONLY fixture where it is not accepted) is refused by name and left as it is, and
/// nothing is sealed.
pub fn import_primes_file<P: Platform>(
    core: &mut TeeCore<P>,
    path: &Path,
) -> Result<bool, StoreError> {
    let bad = |reason: String| StoreError::Primes {
        path: path.display().to_string(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_SEALED_PRIMES_FILE as u64 {
        return Err(bad(format!("larger than {MAX_SEALED_PRIMES_FILE} bytes")));
    }
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let imported = match core.import_sealed_primes(&bytes) {
        Ok(()) => true,
        // A file that already served (restored from a backup, or kept by a crash before it
        // was emptied) adds nothing, and must not keep the TEE from starting.
        Err(
            e @ TeeError::PrimesRefused {
                fault: PrimesFault::AlreadyUsed,
                ..
            },
        ) => {
            tracing::warn!(file = %path.display(), error = %e, "primes file not imported");
            false
        }
        Err(e) => return Err(bad(format!("{}: {e}", e.code()))),
    };
    // Sealed and committed, or spent: the file has served.
    write_atomic(path, b"", 0o600).map_err(|e| bad(format!("emptying it: {e}")))?;
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_tee_core::threshold::primes::PRIMES_PREFIX;
    use custos_test_kit::{MemPlatform, Pki};

    /// TEST ONLY data: the threshold crate's public Blum-prime fixture (six sets).
    const FIXTURE: &str = include_str!("../../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json");

    /// The fixture's first set, alone, as its sealed JSON.
    fn first_set() -> Vec<u8> {
        let sets: Vec<serde_json::Value> = serde_json::from_str(FIXTURE).unwrap();
        serde_json::to_vec(&sets[0]).unwrap()
    }

    #[test]
    fn a_sealed_set_is_imported_once_and_the_file_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let (chain, _) = pki.provision(&mut core, "dc1", "node1");
        let mut other = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let (other_chain, _) = pki.provision(&mut other, "dc1", "node2");
        let file = dir.path().join("primes.json");
        let stored = |core: &TeeCore<MemPlatform>| {
            core.platform()
                .committed
                .keys()
                .filter(|k| k.starts_with(PRIMES_PREFIX))
                .count()
        };

        // The plaintext list earlier versions wrote, and a set sealed to another node: refused
        // by name, the file left as it is, nothing sealed.
        fs::write(&file, FIXTURE).unwrap();
        let err = import_primes_file(&mut core, &file).unwrap_err();
        assert!(err.to_string().contains("plaintext list"), "{err}");
        fs::write(&file, pki.sealed_primes(&other_chain, "dc1", &first_set())).unwrap();
        let err = import_primes_file(&mut core, &file).unwrap_err();
        assert!(err.to_string().contains("sealed_import_rejected"), "{err}");
        assert_eq!(stored(&core), 0);

        // Sealed to this node, but the published fixture where test primes are not accepted
        // (as in every production build).
        let sealed = pki.sealed_primes(&chain, "dc1", &first_set());
        fs::write(&file, &sealed).unwrap();
        core.set_test_primes(false);
        let err = import_primes_file(&mut core, &file).unwrap_err();
        assert!(err.to_string().contains("primes_refused"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), sealed, "left as it was");
        assert_eq!(stored(&core), 0);

        core.set_test_primes(true);
        assert!(import_primes_file(&mut core, &file).unwrap());
        assert_eq!(stored(&core), 1);
        assert!(fs::read(&file).unwrap().is_empty());
        // Emptied: a restart imports nothing more; the same set again is stored once.
        assert!(!import_primes_file(&mut core, &file).unwrap());
        fs::write(&file, &sealed).unwrap();
        assert!(import_primes_file(&mut core, &file).unwrap());
        assert_eq!(stored(&core), 1);
        assert!(import_primes_file(&mut core, &dir.path().join("missing")).is_err());
    }
}
