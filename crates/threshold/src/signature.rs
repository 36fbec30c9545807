//! From the library's signature to a verified [`Signature`] (libsecp256k1, recovery id).

use cggmp24::generic_ec::{NonZero, Point};
use custos_threshold_public::{verify_compact, Signature};

use crate::util::nz_point_bytes;
use crate::{ThresholdError, E};

/// Checks a library signature against `public_key` and `digest` independently (libsecp256k1,
/// which also rejects high-s) and finds its recovery id by trial.
pub(crate) fn finish(
    sig: &cggmp24::Signature<E>,
    public_key: &NonZero<Point<E>>,
    digest: &[u8; 32],
) -> Result<Signature, ThresholdError> {
    let mut rs = [0u8; 64];
    sig.write_to_slice(&mut rs);
    Ok(verify_compact(&rs, &nz_point_bytes(public_key), digest)?)
}
