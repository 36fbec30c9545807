//! Presignature public data, partial signatures and their combination.

use generic_ec::coords::AlwaysHasAffineX;
use generic_ec::{NonZero, Point, Scalar};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signature::{verify_compact, Signature};
use crate::{PublicError, E, MAX_PUBLIC_BYTES};

/// Compressed SEC1 encoding (33 bytes) of a non-zero point.
fn point_bytes(p: &NonZero<Point<E>>) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(p.to_bytes(true).as_bytes());
    out
}

/// Public data of one presignature, identical at every signer: the signing key, the ordered
/// signer list, Γ and each signer's commitments (Δ̃ⱼ, S̃ⱼ) used to check its partial signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PublicRepr")]
pub struct PresignaturePublic {
    public_key: NonZero<Point<E>>,
    parties: Vec<u16>,
    gamma: NonZero<Point<E>>,
    /// (Δ̃ⱼ, S̃ⱼ) for position j.
    commitments: Vec<(Point<E>, Point<E>)>,
}

#[derive(Deserialize)]
struct PublicRepr {
    public_key: NonZero<Point<E>>,
    parties: Vec<u16>,
    gamma: NonZero<Point<E>>,
    commitments: Vec<(Point<E>, Point<E>)>,
}

impl TryFrom<PublicRepr> for PresignaturePublic {
    type Error = String;
    fn try_from(r: PublicRepr) -> Result<Self, String> {
        if r.parties.len() < 2 || r.commitments.len() != r.parties.len() {
            return Err("commitments do not match the party list".into());
        }
        let mut sorted = r.parties.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != r.parties.len() {
            return Err("duplicate party".into());
        }
        Ok(Self {
            public_key: r.public_key,
            parties: r.parties,
            gamma: r.gamma,
            commitments: r.commitments,
        })
    }
}

impl PresignaturePublic {
    /// Public data from its parts: the joint public key, the signers' keygen indexes in
    /// signing order, Γ and each signer's commitments (Δ̃ⱼ, S̃ⱼ), checked like decoded data.
    pub fn from_parts(
        public_key: NonZero<Point<E>>,
        parties: Vec<u16>,
        gamma: NonZero<Point<E>>,
        commitments: Vec<(Point<E>, Point<E>)>,
    ) -> Result<Self, PublicError> {
        PublicRepr {
            public_key,
            parties,
            gamma,
            commitments,
        }
        .try_into()
        .map_err(PublicError::InvalidParameters)
    }

    /// Γ, the presignature's nonce point.
    pub fn gamma(&self) -> &NonZero<Point<E>> {
        &self.gamma
    }

    /// Serializes it (public data, for the combiner).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("presignature public data serializes")
    }

    /// Decodes and checks public data from [`PresignaturePublic::to_bytes`] (size-limited).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicError> {
        if bytes.len() > MAX_PUBLIC_BYTES {
            return Err(PublicError::TooLarge {
                len: bytes.len(),
                limit: MAX_PUBLIC_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| PublicError::Decode {
            what: "presignature public data",
            reason: e.to_string(),
        })
    }

    /// The (non-HD) joint public key the presignature signs for (compressed SEC1).
    pub fn public_key(&self) -> [u8; 33] {
        point_bytes(&self.public_key)
    }

    /// The signers' keygen indexes, in signing order (partials are combined in this order).
    pub fn parties(&self) -> &[u16] {
        &self.parties
    }

    /// The signature's r (x coordinate of Γ, mod n), known before the message is.
    pub fn r(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.gamma.x().to_scalar().to_be_bytes().as_bytes());
        out
    }
}

/// A partial signature: what one signer contributes to an online signature. Not secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialSig {
    /// Position of the signer in the presignature's party list.
    pub position: u16,
    /// σⱼ, big-endian.
    pub sigma: [u8; 32],
}

/// Combines the partial signatures (one per signer, **in party order**: `partials[j].position ==
/// j`) into a signature of `message` under the presignature's public key.
///
/// The message is hashed here (m = SHA-256 of it, reduced mod n, as `cggmp24`'s
/// `DataToSign::digest::<Sha256>`). Each partial is checked against its signer's commitments
/// (σⱼ·Γ = m·Δ̃ⱼ + r·S̃ⱼ) first, so a bad one is named: [`PublicError::BadPartial`] with its
/// position. The result is verified with libsecp256k1 and carries its recovery id.
pub fn combine(
    partials: &[PartialSig],
    public: &PresignaturePublic,
    message: &[u8],
) -> Result<Signature, PublicError> {
    if partials.len() != public.parties.len() {
        return Err(PublicError::InvalidParameters(format!(
            "{} partial signatures for {} signers",
            partials.len(),
            public.parties.len()
        )));
    }
    if let Some((j, _)) = partials
        .iter()
        .enumerate()
        .find(|(j, p)| usize::from(p.position) != *j)
    {
        return Err(PublicError::InvalidParameters(format!(
            "partial signature {j} is not in party order"
        )));
    }
    let digest: [u8; 32] = Sha256::digest(message).into();
    let m = Scalar::<E>::from_be_bytes_mod_order(digest);
    let r = public.gamma.x().to_scalar();
    let mut sigmas = Vec::with_capacity(partials.len());
    for (p, &(tilde_delta, tilde_s)) in partials.iter().zip(&public.commitments) {
        let bad = PublicError::BadPartial {
            position: p.position,
        };
        let sigma = Scalar::<E>::from_be_bytes(p.sigma).map_err(|_| bad.clone())?;
        if sigma * public.gamma != m * tilde_delta + r * tilde_s {
            return Err(bad);
        }
        sigmas.push(sigma);
    }
    let s: Scalar<E> = sigmas.iter().sum();
    if r.is_zero() || s.is_zero() {
        return Err(PublicError::InvalidSignature(
            "partial signatures do not combine (zero r or s)".into(),
        ));
    }
    let mut rs = [0u8; 64];
    rs[..32].copy_from_slice(r.to_be_bytes().as_bytes());
    rs[32..].copy_from_slice(s.to_be_bytes().as_bytes());
    // Low s, as the library's combine normalizes it.
    let mut sig = bitcoin::secp256k1::ecdsa::Signature::from_compact(&rs)
        .map_err(|e| PublicError::InvalidSignature(format!("encoding: {e}")))?;
    sig.normalize_s();
    verify_compact(&sig.serialize_compact(), &public.public_key(), &digest)
}
