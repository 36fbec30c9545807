//! The Paillier primes a distributed key generation consumes.
//!
//! In aux-info generation every party makes its own Paillier key and ring-Pedersen modulus
//! from four fresh 1536-bit primes ([`Primes`]); they become this cluster's Paillier secret
//! (P). Real safe primes take one to three minutes of one core per party (with large
//! variance), far longer than a request may take, so they are made ahead of use:
//!
//! * **Pregenerated sets in the sealed store** (records [`PRIMES_PREFIX`]`<id>`). The host
//!   hands a file of sets (a JSON array, as `custos dealer primes` writes it) to the TEE at
//!   start-up; [`seal_primes_file`] seals every set and commits, and the host then empties
//!   the file (`custos-tee-host`: environment variable `CUSTOS_TEE_PRIMES_FILE`). The sets
//!   are trusted as given: whoever wrote the file knows those Paillier secrets, so only the
//!   machine's operator, on the machine, should make it — or better, nobody: see the pool.
//!   Tests point the variable at a copy of the TEST-ONLY fixture; nothing else in a
//!   production build can reach the fixture.
//! * **The background pool** ([`PrimePool`]): otherwise the TEE generates safe primes itself,
//!   on a thread of its own, so no one outside ever sees them. Generation starts when a key
//!   generation finds no set ready (that start is refused with
//!   [`TeeError::PrimesNotReady`](custos_wire::protocol::TeeError::PrimesNotReady), and the cloud
//!   server's caller retries a few minutes later), and once a generated set was used, the
//!   pool makes the next one, so one set stays ready. A ready set lives in memory only: a
//!   restart loses it (and at most one generation of work).
//!
//! A set serves one session: a sealed set's record is removed in the same durable commit that
//! marks the session started, so a crash never lets a set serve twice. A set whose session
//! ends before aux-info generation used it goes back where it came from.

use std::sync::{Arc, Mutex};

use custos_threshold::Primes;
use sha2::{Digest, Sha256};

use crate::platform::{Platform, RecordId};

/// Record name prefix of pregenerated primes sets.
pub const PRIMES_PREFIX: &str = "primes/";
/// Domain tag of primes record names.
const RECORD_DOMAIN: &[u8] = b"CUSTOS-PRIMES-RECORD-V1\0";

/// The record a set is sealed under: named by a domain-separated hash of the set (public;
/// the 6144 secret bits behind it cannot be recovered from it), so sealing the same file
/// twice (a crash before the host emptied it) stores each set once.
pub fn primes_record(sealed_bytes: &[u8]) -> RecordId {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(sealed_bytes);
    let digest = h.finalize();
    RecordId::new(format!("{PRIMES_PREFIX}{}", hex::encode(&digest[..16])))
        .expect("hex names are valid record ids")
}

/// Seals every set of a primes file (a JSON array of sets, each checked for prime sizes) and
/// commits; returns how many sets the file held. Nothing is sealed if the file does not
/// parse. The caller empties the file afterwards.
pub fn seal_primes_file<P: Platform>(platform: &mut P, file: &[u8]) -> Result<usize, String> {
    let sets = Primes::list_from_bytes(file).map_err(|e| e.to_string())?;
    for set in &sets {
        let bytes = set.to_sealed_bytes();
        platform
            .seal(&primes_record(&bytes), &bytes)
            .map_err(|e| e.to_string())?;
    }
    platform.commit().map_err(|e| e.to_string())?;
    Ok(sets.len())
}

#[derive(Default)]
struct PoolState {
    ready: Option<Primes>,
    generating: bool,
}

/// Safe primes generated inside the TEE on a background thread, one set at a time (see the
/// [module docs](self)). Randomness: the operating system's (as the threshold library's own
/// sessions use).
#[derive(Clone, Default)]
pub(crate) struct PrimePool {
    state: Arc<Mutex<PoolState>>,
}

impl PrimePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ready set, if any.
    pub(crate) fn take(&self) -> Option<Primes> {
        self.lock().ready.take()
    }

    /// Puts back a set no session used.
    pub(crate) fn give_back(&self, primes: Primes) {
        let mut s = self.lock();
        if s.ready.is_none() {
            s.ready = Some(primes);
        }
    }

    /// Whether a generation is running.
    pub(crate) fn generating(&self) -> bool {
        self.lock().generating
    }

    /// Starts generating one set on a thread of its own, unless a set is ready or being
    /// made. Returns whether a set is ready or on its way.
    pub(crate) fn refill(&self) -> bool {
        {
            let mut s = self.lock();
            if s.ready.is_some() || s.generating {
                return true;
            }
            s.generating = true;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("custos-primes".into())
            .spawn(move || {
                let primes = Primes::generate(&mut rand_core::OsRng);
                let mut s = pool.lock();
                s.ready = Some(primes);
                s.generating = false;
            });
        if spawned.is_err() {
            self.lock().generating = false;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_per_set_and_valid() {
        let a = primes_record(b"set a");
        assert!(a.as_str().starts_with(PRIMES_PREFIX));
        assert_eq!(a, primes_record(b"set a"));
        assert_ne!(a, primes_record(b"set b"));
    }
}
