//! Small helpers: JSON into zeroizing buffers, bounded decoding, path checks, key bytes.

use std::io::Write;

use cggmp24::generic_ec::{NonZero, Point};
use serde::{de::DeserializeOwned, Serialize};
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
    serde_json::from_slice(bytes).map_err(|e| ThresholdError::Decode {
        what,
        reason: e.to_string(),
    })
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
