//! The primes one party needs for its aux info: p, q for its Paillier key and p̂, q̂ for its
//! ring-Pedersen modulus, 1536 bits each at `SecurityLevel128`.
//!
//! Production uses [`Primes::generate`], which finds four **safe** primes (minutes per party:
//! 183 s measured for one party, with large variance). Tests use the committed, insecure
//! fixture behind the `test-fixtures` feature (`crate::fixtures::test_primes`).

use std::fmt;

use cggmp24::PregeneratedPrimes;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::util::{from_json_bounded, to_json_zeroizing};
use crate::{ThresholdError, L, MAX_SHARE_BYTES};

/// Largest primes file [`Primes::list_from_bytes`] reads (a set is about 1.7 KB of JSON).
pub const MAX_PRIMES_FILE_BYTES: usize = 1024 * 1024;

/// Four pregenerated primes of one party (secret: they become its Paillier secret key).
///
/// Serializes as the library's `PregeneratedPrimes<SecurityLevel128>`; deserializing checks the
/// prime sizes again. `Debug` prints nothing secret.
#[derive(Clone)]
pub struct Primes(pub(crate) PregeneratedPrimes<L>);

impl Primes {
    /// Generates four safe primes of 1536 bits (slow: minutes; run it off the hot path, one
    /// thread per party).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self(PregeneratedPrimes::<L>::generate(rng))
    }

    /// Serializes the primes (secret) into a zeroizing buffer.
    pub fn to_sealed_bytes(&self) -> Zeroizing<Vec<u8>> {
        to_json_zeroizing(self)
    }

    /// Decodes primes written by [`to_sealed_bytes`](Self::to_sealed_bytes) (size-checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded(bytes, MAX_SHARE_BYTES, "primes")
    }

    /// Decodes a dealer's primes file: a JSON array of sets, such as the TEST-ONLY fixture
    /// (at most [`MAX_PRIMES_FILE_BYTES`]; every set's prime sizes are checked).
    pub fn list_from_bytes(bytes: &[u8]) -> Result<Vec<Self>, ThresholdError> {
        from_json_bounded(bytes, MAX_PRIMES_FILE_BYTES, "primes file")
    }
}

impl Serialize for Primes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Primes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The library's derived Deserialize does not check the sizes; its TryFrom does.
        let raw = PregeneratedPrimes::<L>::deserialize(deserializer)?;
        PregeneratedPrimes::<L>::try_from(raw.into_primes())
            .map(Self)
            .map_err(|_| serde::de::Error::custom("prime smaller than the security level needs"))
    }
}

impl fmt::Debug for Primes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Primes { .. }")
    }
}
