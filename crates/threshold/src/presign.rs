//! Presignatures (non-HD keys only) and the online signing they allow.
//!
//! A presignature session ([`SessionKind::Presign`](crate::SessionKind::Presign)) leaves every
//! signer with a [`StoredPresignature`]: its secret part plus the public data everybody shares
//! ([`PresignaturePublic`]). Later, each signer turns its presignature into a [`PartialSig`] for
//! the **full message** with [`issue_partial`] (hashing with SHA-256 inside: a prehash from
//! outside is never accepted, see the library's `PrehashedDataToSign` docs), and anyone combines
//! the t partials with [`combine`].
//!
//! **Never use a presignature twice**: two partial signatures from one presignature reveal the
//! key share. [`issue_partial`] consumes the value, but a serialized copy can be decoded again;
//! the caller must delete (tombstone) the stored bytes durably *before* issuing the partial.

use std::fmt;

use cggmp24::generic_ec::{coords::AlwaysHasAffineX, NonZero, Point, Scalar};
use cggmp24::signing::{
    DataToSign, PartialSignature, Presignature, PresignatureCommitment, PresignaturePublicData,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::signature::{finish, Signature};
use crate::util::{from_json_bounded, nz_point_bytes, to_json_zeroizing};
use crate::{ThresholdError, E, MAX_SHARE_BYTES};

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
    pub(crate) fn new(
        public_key: NonZero<Point<E>>,
        parties: Vec<u16>,
        data: &PresignaturePublicData<E>,
    ) -> Self {
        Self {
            public_key,
            parties,
            gamma: data.Gamma,
            commitments: data
                .commitments
                .iter()
                .map(|c| (c.tilde_Delta, c.tilde_S))
                .collect(),
        }
    }

    fn to_lib(&self) -> PresignaturePublicData<E> {
        PresignaturePublicData {
            Gamma: self.gamma,
            commitments: self
                .commitments
                .iter()
                .map(|&(delta, s)| PresignatureCommitment {
                    tilde_Delta: delta,
                    tilde_S: s,
                })
                .collect(),
        }
    }

    /// Serializes it (public data, for the combiner).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("presignature public data serializes")
    }

    /// Decodes and checks public data from [`PresignaturePublic::to_bytes`] (size-limited).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded(bytes, MAX_SHARE_BYTES, "presignature public data")
    }

    /// The (non-HD) joint public key the presignature signs for (compressed SEC1).
    pub fn public_key(&self) -> [u8; 33] {
        nz_point_bytes(&self.public_key)
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

/// One signer's presignature as it is sealed between generation and use: the secret part, the
/// signer's position and the shared public data. `Debug` prints public information only.
/// Deliberately not `Clone`.
#[derive(Serialize, Deserialize)]
#[serde(try_from = "StoredRepr")]
pub struct StoredPresignature {
    public: PresignaturePublic,
    my_position: u16,
    secret: Presignature<E>,
}

#[derive(Deserialize)]
struct StoredRepr {
    public: PresignaturePublic,
    my_position: u16,
    secret: Presignature<E>,
}

impl TryFrom<StoredRepr> for StoredPresignature {
    type Error = String;
    fn try_from(r: StoredRepr) -> Result<Self, String> {
        if usize::from(r.my_position) >= r.public.parties.len() {
            return Err("position outside the party list".into());
        }
        if r.secret.Gamma != r.public.gamma {
            return Err("secret and public data belong to different presignatures".into());
        }
        Ok(Self {
            public: r.public,
            my_position: r.my_position,
            secret: r.secret,
        })
    }
}

impl StoredPresignature {
    pub(crate) fn new(
        public: PresignaturePublic,
        my_position: u16,
        secret: Presignature<E>,
    ) -> Self {
        Self {
            public,
            my_position,
            secret,
        }
    }

    /// Serializes it (secret) for sealed storage.
    pub fn to_sealed_bytes(&self) -> Zeroizing<Vec<u8>> {
        to_json_zeroizing(self)
    }

    /// Decodes and checks a stored presignature (size-limited).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded(bytes, MAX_SHARE_BYTES, "stored presignature")
    }

    /// The public data (for the combiner).
    pub fn public(&self) -> &PresignaturePublic {
        &self.public
    }

    /// This signer's position in [`PresignaturePublic::parties`].
    pub fn my_position(&self) -> u16 {
        self.my_position
    }
}

impl fmt::Debug for StoredPresignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPresignature")
            .field("public_key", &hex::encode(self.public.public_key()))
            .field("parties", &self.public.parties)
            .field("my_position", &self.my_position)
            .finish_non_exhaustive()
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

/// Issues this signer's partial signature for `message`, consuming the presignature.
///
/// The message is hashed here with SHA-256 (`DataToSign::digest::<Sha256>`): the full message
/// must be known, a digest from outside is never signed with a presignature.
pub fn issue_partial(presig: StoredPresignature, message: &[u8]) -> PartialSig {
    let data = DataToSign::<E>::digest::<Sha256>(message);
    let position = presig.my_position;
    let partial = presig.secret.issue_partial_signature(data);
    let mut sigma = [0u8; 32];
    sigma.copy_from_slice(partial.sigma.to_be_bytes().as_bytes());
    PartialSig { position, sigma }
}

/// Combines the partial signatures (one per signer, **in party order**: `partials[j].position ==
/// j`) into a signature of `message` under the presignature's public key.
///
/// Each partial is checked against its signer's commitments (σⱼ·Γ = m·Δ̃ⱼ + r·S̃ⱼ) first, so a
/// bad one is named: [`ThresholdError::BadPartial`] with its position. The result is verified
/// with libsecp256k1 and carries its recovery id.
pub fn combine(
    partials: &[PartialSig],
    public: &PresignaturePublic,
    message: &[u8],
) -> Result<Signature, ThresholdError> {
    if partials.len() != public.parties.len() {
        return Err(ThresholdError::InvalidParameters(format!(
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
        return Err(ThresholdError::InvalidParameters(format!(
            "partial signature {j} is not in party order"
        )));
    }
    let digest: [u8; 32] = Sha256::digest(message).into();
    let data = DataToSign::<E>::digest::<Sha256>(message);
    let m = data.to_scalar();
    let r = public.gamma.x().to_scalar();
    let mut lib_partials = Vec::with_capacity(partials.len());
    for (p, &(tilde_delta, tilde_s)) in partials.iter().zip(&public.commitments) {
        let bad = ThresholdError::BadPartial {
            position: p.position,
        };
        let sigma = Scalar::<E>::from_be_bytes(p.sigma).map_err(|_| bad.clone())?;
        if sigma * public.gamma != m * tilde_delta + r * tilde_s {
            return Err(bad);
        }
        lib_partials.push(PartialSignature { sigma });
    }
    let sig =
        PartialSignature::combine(&lib_partials, &public.to_lib(), data).ok_or_else(|| {
            ThresholdError::InvalidSignature("partial signatures do not combine".into())
        })?;
    finish(&sig, &public.public_key, &digest)
}
