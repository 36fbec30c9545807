//! Custos threshold ECDSA, public side (patent phase getSig of FIG. 12–15, done by whoever
//! combines): the public data of a presignature, the partial signatures its signers issue for
//! a message, their combination, and the verified signature; and the names of the patent's
//! phases ([`Phase`]), shared by the protocol engine and the cloud server.
//!
//! Nothing here is secret and nothing here runs the protocol: the cloud server combines
//! partials with this crate alone, so it links neither the TEE core nor the protocol engine
//! (`custos-threshold`, which builds these values from `cggmp24`'s own types).
//!
//! The checks are those of `cggmp24`'s `PartialSignature::combine` (0.7.0-alpha.3), over the
//! same curve arithmetic (`generic-ec`): each partial σⱼ must satisfy σⱼ·Γ = m·Δ̃ⱼ + r·S̃ⱼ, the
//! signature is (r, Σσⱼ) with low s, and it is verified with libsecp256k1 before it is returned.

mod phase;
mod presign;
mod signature;

pub use phase::Phase;
pub use presign::{combine, PartialSig, PresignaturePublic};
pub use signature::{verify_compact, Signature};

/// The curve of every Custos threshold key.
pub type E = generic_ec::curves::Secp256k1;

/// Largest accepted serialized public data (bytes).
pub const MAX_PUBLIC_BYTES: usize = 256 * 1024;

/// Why public threshold data was refused or did not combine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublicError {
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// Input larger than the accepted limit.
    #[error("input too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Bytes that do not decode (or do not validate) as the expected object.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A partial signature does not match its signer's presignature commitment.
    #[error("partial signature of position {position} is invalid")]
    BadPartial {
        /// Position (in the signing party list) of the party that issued it.
        position: u16,
    },
    /// The resulting signature does not verify (or no recovery id recovers the key).
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
}
