//! Custos threshold ECDSA: t-of-n signing keys on secp256k1 with the CGGMP24 protocol
//! (`cggmp24` 0.7.0-alpha.3, vendored with a security fix under `vendor/cggmp24`).
//!
//! This crate is a **synchronous protocol engine** meant to run inside the TEE core: it has no
//! networking and no async runtime. Every protocol message goes in and out as plain bytes; the
//! caller (the session layer) authenticates, seals and relays them.
//!
//! * [`share`]: key shares ([`ThresholdShare`]) and the two halves a DKG produces
//!   ([`IncompleteShare`], [`AuxInfo`]); sealed serialization, public keys, BIP-32/SLIP-10
//!   child public keys.
//! * [`primes`]: the Paillier / ring-Pedersen primes every party needs ([`Primes`]).
//! * [`dealer`]: the trusted dealer (the operating company) that creates all shares of a key.
//! * [`session`]: one protocol execution ([`Session`]): signing, presigning, DKG, aux info.
//! * [`pool`]: [`SessionHost`], a worker thread that owns sessions and is `Send + Sync`.
//! * [`presign`]: stored presignatures and the partial signatures they issue; the public side
//!   (public data, [`combine`], [`Signature`]) is `custos-threshold-public`, re-exported here.
//! * [`phase`]: the patent's phase names for protocol messages and message classification.
//!
//! Curve and security level are fixed: secp256k1, [`SecurityLevel128`](cggmp24::security_level::SecurityLevel128).
//! Signatures are low-s and come with a recovery id `v` checked against the signing key.
//!
//! Secrets: key shares, aux info (Paillier primes), primes and presignatures serialize into
//! [`zeroize::Zeroizing`] buffers, and none of their `Debug` implementations prints secret data.

mod blame;
pub mod dealer;
mod error;
pub mod phase;
pub mod pool;
pub mod presign;
pub mod primes;
pub mod provenance;
pub mod session;
pub mod share;
mod signature;
mod util;

pub use custos_threshold_public::{
    combine, PartialSig, PresignaturePublic, PublicError, Signature,
};
pub use dealer::{deal, DealerProgress};
pub use error::{SessionError, ThresholdError};
pub use phase::{inspect, MsgInfo, MsgType, Phase, ProtocolKind};
pub use pool::{Pending, SessionHost, SessionId, DEFAULT_MAX_SESSIONS};
pub use presign::{issue_partial, StoredPresignature};
pub use primes::Primes;
pub use provenance::TestPrimes;
pub use session::{Outgoing, Output, Session, SessionKind, Step};
pub use share::{AuxInfo, IncompleteShare, ThresholdShare};

/// The curve of every Custos threshold key.
pub(crate) type E = cggmp24::supported_curves::Secp256k1;
/// The one security level Custos uses.
pub(crate) type L = cggmp24::security_level::SecurityLevel128;

/// Largest accepted serialized key share, aux info or primes input (256 KiB).
pub const MAX_SHARE_BYTES: usize = 256 * 1024;
/// Largest accepted protocol message (1 MiB; aux-info messages are about 220 KB for n = 3).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Deepest accepted derivation path (BIP-32 depth is one byte).
pub const MAX_PATH_DEPTH: usize = 255;

/// Compile-time guard: the build fails if anything in the dependency graph enables cggmp24's
/// `insecure-assume-preimage-known` feature. With the feature, the inherent method
/// `PrehashedDataToSign::insecure_assume_preimage_known` (returning `DataToSign`) exists and takes
/// precedence over this trait's method, so [`_no_insecure_preimage_feature`] stops type-checking.
mod preimage_guard {
    /// Marker type only this trait returns.
    pub struct FeatureIsOff;
    pub trait Guard {
        fn insecure_assume_preimage_known(self) -> FeatureIsOff;
    }
    impl Guard for cggmp24::signing::PrehashedDataToSign<crate::E> {
        fn insecure_assume_preimage_known(self) -> FeatureIsOff {
            FeatureIsOff
        }
    }
}

#[allow(dead_code)]
fn _no_insecure_preimage_feature(
    p: cggmp24::signing::PrehashedDataToSign<E>,
) -> preimage_guard::FeatureIsOff {
    use preimage_guard::Guard;
    // If this fails to compile with "expected `FeatureIsOff`, found `DataToSign<..>`", the
    // `insecure-assume-preimage-known` feature of cggmp24 got enabled: remove it.
    p.insecure_assume_preimage_known()
}

/// TEST ONLY fixtures (cargo feature `test-fixtures`, off by default).
///
/// Never enable this feature in a production build: the primes below are public and are not
/// safe primes.
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures {
    use crate::primes::Primes;

    /// The committed fixture file (`fixtures/TEST-ONLY-blum-primes-sl128.json`).
    const TEST_PRIMES_JSON: &str = include_str!("../fixtures/TEST-ONLY-blum-primes-sl128.json");

    /// TEST ONLY, INSECURE: six party sets of full-size (1536-bit) Blum primes (p ≡ 3 mod 4,
    /// **not** safe primes), generated once by `examples/gen-test-primes.rs` and committed.
    /// They make dealing and aux-info generation fast in tests; everybody can read them.
    pub fn test_primes() -> Vec<Primes> {
        serde_json::from_str(TEST_PRIMES_JSON).expect("committed test primes fixture parses")
    }
}
