//! Small helpers: JSON into zeroizing buffers, bounded decoding, path checks, key bytes.

use std::io::Write;

use cggmp24::generic_ec::{NonZero, Point};
use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::Zeroizing;

use crate::{ThresholdError, E, MAX_PATH_DEPTH};

/// Counts the bytes a serializer writes, so the output buffer can be allocated once.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serializes secret-bearing data as JSON into a buffer that is zeroized on drop.
///
/// Two passes: the first counts the bytes, the second writes into a buffer of exactly that
/// capacity, so no reallocation leaves a copy of the secret in freed memory.
pub(crate) fn to_json_zeroizing<T: Serialize>(value: &T) -> Zeroizing<Vec<u8>> {
    let mut counter = Counter(0);
    // Serializing these library types to JSON cannot fail: they have no non-string map keys
    // and their Serialize implementations do not return custom errors.
    serde_json::to_writer(&mut counter, value).expect("JSON serialization of key material");
    let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *out, value).expect("JSON serialization of key material");
    out
}

/// Decodes JSON of at most `limit` bytes.
pub(crate) fn from_json_bounded<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<T, ThresholdError> {
    if bytes.len() > limit {
        return Err(ThresholdError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let refused = |e: serde_json::Error| ThresholdError::Decode {
        what,
        reason: e.to_string(),
    };
    serde_json::from_slice::<RadixCheck>(bytes).map_err(refused)?;
    serde_json::from_slice(bytes).map_err(refused)
}

/// The only radix fast-paillier writes its integers in (`{"radix": 16, "value": digits}`).
const INTEGER_RADIX: u64 = 16;

/// A walk over a JSON document that refuses any `radix` but [`INTEGER_RADIX`]:
/// fast-paillier hands an integer's radix to num-bigint, which panics outside 2..=36 (found
/// by the `dealer_bundle` fuzz target), so a primes file or a share with `"radix": 99`
/// would stop the TEE process. The walk copies nothing: strings (secret digits included)
/// are only looked at, never kept.
struct RadixCheck;

impl<'de> Deserialize<'de> for RadixCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RadixVisitor)
    }
}

/// Whether a map key is `radix`.
struct IsRadix(bool);

impl<'de> Deserialize<'de> for IsRadix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsRadix;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsRadix, E> {
                Ok(IsRadix(key == "radix"))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct RadixVisitor;

impl<'de> Visitor<'de> for RadixVisitor {
    type Value = RadixCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_unit<E>(self) -> Result<RadixCheck, E> {
        Ok(RadixCheck)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RadixCheck, A::Error> {
        while seq.next_element::<RadixCheck>()?.is_some() {}
        Ok(RadixCheck)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RadixCheck, A::Error> {
        while let Some(IsRadix(radix)) = map.next_key()? {
            if !radix {
                map.next_value::<RadixCheck>()?;
                continue;
            }
            match map.next_value::<serde_json::Value>()? {
                serde_json::Value::Number(n) if n.as_u64() == Some(INTEGER_RADIX) => {}
                other => {
                    return Err(A::Error::custom(format!(
                        "an integer in radix {other}: only radix {INTEGER_RADIX} is read"
                    )))
                }
            }
        }
        Ok(RadixCheck)
    }
}

/// Checks a derivation path: non-hardened indexes only, at most [`MAX_PATH_DEPTH`] long.
pub(crate) fn check_path(path: &[u32]) -> Result<(), ThresholdError> {
    if path.len() > MAX_PATH_DEPTH {
        return Err(ThresholdError::PathTooLong(path.len()));
    }
    if let Some(&h) = path.iter().find(|&&i| i >= 0x8000_0000) {
        return Err(ThresholdError::HardenedIndex(h));
    }
    Ok(())
}

/// Compressed SEC1 encoding (33 bytes) of a non-zero point.
pub(crate) fn nz_point_bytes(p: &NonZero<Point<E>>) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(p.to_bytes(true).as_bytes());
    out
}
