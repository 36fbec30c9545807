//! The Paillier primes a distributed key generation consumes.
//!
//! In aux-info generation every party makes its own Paillier key and ring-Pedersen modulus
//! from four fresh 1536-bit primes ([`Primes`]); they become this cluster's Paillier secret
//! (P). Real safe primes take one to three minutes of one core per party (with large
//! variance), far longer than a request may take, so they are made ahead of use:
//!
//! * **Pregenerated sets in the sealed store** (records [`PRIMES_PREFIX`]`<id>`). A set made
//!   ahead of time comes sealed to this node's device key, one set per file
//!   ([`custos_wire::primes`], `custos dealer primes --for`); the host hands the file to
//!   [`TeeCore::import_sealed_primes`] at start-up and then empties it (`custos-tee-host`:
//!   environment variable `CUSTOS_TEE_PRIMES_FILE`). Every set is checked before it is sealed
//!   ([`Primes::check`]: four distinct safe primes, not the published TEST-ONLY fixture,
//!   which only a build with the cargo feature `insecure-test-primes` accepts,
//!   [`test_primes_policy`]). Whoever generated the set knows that Paillier secret, so the
//!   pool below is the default.
//! * **The background pool** ([`PrimePool`]): otherwise the TEE generates safe primes itself,
//!   on a thread of its own, so no one outside ever sees them. Generation starts when a key
//!   generation finds no set ready (that start is refused with
//!   [`TeeError::PrimesNotReady`](custos_wire::protocol::TeeError::PrimesNotReady), and the cloud
//!   server's caller retries a few minutes later), and once a generated set was used, the
//!   pool makes the next one, so one set stays ready. A finished set is sealed (records
//!   [`GENERATED_PREFIX`]`<id>`) with the next batch's commit, so it survives a restart; a
//!   restart loses at most the generation under way.
//!
//! A set serves one session: a sealed set's record is removed, and a mark of it
//! ([`USED_PREFIX`]) written, in the same durable commit that marks the session started, so a
//! crash never lets a set serve twice, and the same set handed over again is refused (and
//! skipped if it reappears in the store). A set whose session ends before aux-info used it
//! goes back where it came from, unmarked.

use std::sync::{Arc, Mutex};

pub use custos_threshold::TestPrimes;
use custos_threshold::{Primes, ThresholdError};
use custos_wire::protocol::{PrimesFault, TeeError};
use sha2::{Digest, Sha256};

use crate::platform::{Platform, RecordId};
use crate::{storage, TeeCore};
use custos_wire::primes::{decode_sealed_primes, open_primes};

/// What this build does with the committed TEST-ONLY primes when `allow` asks for them: only a
/// build with the cargo feature `insecure-test-primes` (tests, the local demo) can accept
/// them; any other build refuses them whatever it is told.
pub fn test_primes_policy(allow: bool) -> TestPrimes {
    if cfg!(feature = "insecure-test-primes") && allow {
        TestPrimes::Allowed
    } else {
        TestPrimes::Refused
    }
}

/// A provenance refusal ([`custos_threshold::provenance`]) as the TEE's typed refusal; any
/// other error of a primes check as a threshold refusal.
pub fn primes_refused(e: ThresholdError) -> TeeError {
    let fault = match &e {
        ThresholdError::TestFixturePrimes { .. } => PrimesFault::TestFixture,
        ThresholdError::NotSafePrime { .. } => PrimesFault::NotSafePrime,
        ThresholdError::DuplicateModulus { .. } => PrimesFault::DuplicateModulus,
        _ => return TeeError::ThresholdRejected(e.to_string()),
    };
    TeeError::PrimesRefused {
        fault,
        detail: e.to_string(),
    }
}

/// Record name prefix of pregenerated primes sets.
pub const PRIMES_PREFIX: &str = "primes/";
/// Domain tag of primes record names.
const RECORD_DOMAIN: &[u8] = b"CUSTOS-PRIMES-RECORD-V1\0";

/// Record name prefix of the marks of sets a key generation used (`primes-used/<id>`), so a
/// set handed over again is refused rather than serving a second key.
pub const USED_PREFIX: &str = "primes-used/";

/// The mark of the set sealed under `set` (a [`PRIMES_PREFIX`] record) once it was used.
pub fn used_record(set: &RecordId) -> RecordId {
    let id = set
        .as_str()
        .strip_prefix(PRIMES_PREFIX)
        .unwrap_or(set.as_str());
    RecordId::new(format!("{USED_PREFIX}{id}")).expect("derived from a valid record id")
}

/// Record name prefix of the sets this TEE generated itself (within [`PRIMES_PREFIX`]).
pub const GENERATED_PREFIX: &str = "primes/own-";

/// The record a set is sealed under: named by a domain-separated hash of the set (public;
/// the 6144 secret bits behind it cannot be recovered from it), so sealing the same file
/// twice (a crash before the host emptied it) stores each set once.
pub fn primes_record(sealed_bytes: &[u8]) -> RecordId {
    named_record(PRIMES_PREFIX, sealed_bytes)
}

/// The record of a set this TEE generated ([`GENERATED_PREFIX`]).
pub fn generated_record(sealed_bytes: &[u8]) -> RecordId {
    named_record(GENERATED_PREFIX, sealed_bytes)
}

fn named_record(prefix: &str, sealed_bytes: &[u8]) -> RecordId {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(sealed_bytes);
    let digest = h.finalize();
    RecordId::new(format!("{prefix}{}", hex::encode(&digest[..16])))
        .expect("hex names are valid record ids")
}

impl<P: Platform> TeeCore<P> {
    /// Imports one pregenerated primes set sealed to this node
    /// ([`custos_wire::primes::SealedPrimes`], as `custos dealer primes --for` writes it): the
    /// file must be sealed to this node's certified device key, signed by a dealer certified
    /// under the pinned Root, and hold one set never used here before ([`used_record`]); the
    /// set must pass [`Primes::check`] (four distinct safe primes of the required size, not
    /// the TEST-ONLY fixture unless this build and TEE accept it, [`test_primes_policy`]). It
    /// is then sealed under [`primes_record`] and committed before this returns. Nothing is
    /// sealed on a refusal; importing the same unused set twice stores it once.
    pub fn import_sealed_primes(&mut self, file: &[u8]) -> Result<(), TeeError> {
        let sealed = decode_sealed_primes(file)?;
        let (own, _) = self.identity()?.clone();
        let scalar = self
            .device
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device key".into()))?
            .private_scalar()?;
        let now = self.platform.now_unix();
        let plaintext = open_primes(self.root()?, now, &own, &scalar[..], &sealed)?;
        let set = Primes::from_bytes(&plaintext)
            .map_err(|e| TeeError::SealedImportRejected(format!("sealed primes set: {e}")))?;
        set.check(self.threshold.test_primes)
            .map_err(primes_refused)?;
        let bytes = set.to_sealed_bytes();
        let record = primes_record(&bytes);
        if self
            .platform
            .unseal(&used_record(&record))
            .map_err(storage)?
            .is_some()
        {
            return Err(TeeError::PrimesRefused {
                fault: PrimesFault::AlreadyUsed,
                detail: format!(
                    "this set ({}) already served a key generation here",
                    record.as_str()
                ),
            });
        }
        self.platform.seal(&record, &bytes).map_err(storage)?;
        self.commit_pending().map_err(storage)
    }
}

#[derive(Default)]
struct PoolState {
    /// Sets ready (usually at most one; a set given back while a new one was made joins it).
    ready: Vec<Primes>,
    generating: bool,
    /// TEST ONLY: sets the "generation" hands out instead of generating (minutes each).
    #[cfg(feature = "insecure-test-primes")]
    scripted: std::collections::VecDeque<Primes>,
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
        self.lock().ready.pop()
    }

    /// Puts back a set no session used.
    pub(crate) fn give_back(&self, primes: Primes) {
        self.lock().ready.push(primes);
    }

    /// TEST ONLY: the next generations hand out `sets` instead of generating.
    #[cfg(feature = "insecure-test-primes")]
    pub(crate) fn script(&self, sets: Vec<Primes>) {
        self.lock().scripted.extend(sets);
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
            if !s.ready.is_empty() || s.generating {
                return true;
            }
            s.generating = true;
        }
        let pool = self.clone();
        #[cfg(feature = "insecure-test-primes")]
        let scripted = self.lock().scripted.pop_front();
        #[cfg(not(feature = "insecure-test-primes"))]
        let scripted: Option<Primes> = None;
        let spawned = std::thread::Builder::new()
            .name("custos-primes".into())
            .spawn(move || {
                let primes = scripted.unwrap_or_else(|| Primes::generate(&mut rand_core::OsRng));
                let mut s = pool.lock();
                s.ready.push(primes);
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

    /// Without the feature nothing grants the TEST-ONLY primes; with it, only asking does.
    #[test]
    fn only_a_build_with_the_feature_can_accept_test_primes() {
        assert_eq!(test_primes_policy(false), TestPrimes::Refused);
        let asked = if cfg!(feature = "insecure-test-primes") {
            TestPrimes::Allowed
        } else {
            TestPrimes::Refused
        };
        assert_eq!(test_primes_policy(true), asked);
    }

    #[test]
    fn used_marks_follow_their_set() {
        let set = primes_record(b"set a");
        assert_eq!(
            used_record(&set).as_str(),
            format!("{USED_PREFIX}{}", &set.as_str()[PRIMES_PREFIX.len()..])
        );
        assert!(used_record(&generated_record(b"x"))
            .as_str()
            .starts_with("primes-used/own-"));
    }

    #[test]
    fn record_names_are_per_set_and_valid() {
        let a = primes_record(b"set a");
        assert!(a.as_str().starts_with(PRIMES_PREFIX));
        assert_eq!(a, primes_record(b"set a"));
        assert_ne!(a, primes_record(b"set b"));
    }
}
