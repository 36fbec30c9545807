//! Presignatures (non-HD keys only) and the online signing they allow.
//!
//! A presignature session ([`SessionKind::Presign`](crate::SessionKind::Presign)) leaves every
//! signer with a [`StoredPresignature`]: its secret part plus the public data everybody shares
//! ([`PresignaturePublic`]). Later, each signer turns its presignature into a [`PartialSig`] for
//! the **full message** with [`issue_partial`] (hashing with SHA-256 inside: a prehash from
//! outside is never accepted, see the library's `PrehashedDataToSign` docs), and anyone combines
//! the t partials with [`combine`](custos_threshold_public::combine) (`custos-threshold-public`,
//! which the combiner needs alone).
//!
//! **Never use a presignature twice**: two partial signatures from one presignature reveal the
//! key share. [`issue_partial`] consumes the value, but a serialized copy can be decoded again;
//! the caller must delete (tombstone) the stored bytes durably *before* issuing the partial.

use std::fmt;

use cggmp24::generic_ec::{NonZero, Point};
use cggmp24::signing::{DataToSign, Presignature, PresignaturePublicData};
use custos_threshold_public::{PartialSig, PresignaturePublic};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::util::{from_json_bounded, to_json_zeroizing};
use crate::{ThresholdError, E, MAX_SHARE_BYTES};

/// The public data of a presignature the library just made.
pub(crate) fn presignature_public(
    public_key: NonZero<Point<E>>,
    parties: Vec<u16>,
    data: &PresignaturePublicData<E>,
) -> Result<PresignaturePublic, ThresholdError> {
    let commitments = data
        .commitments
        .iter()
        .map(|c| (c.tilde_Delta, c.tilde_S))
        .collect();
    Ok(PresignaturePublic::from_parts(
        public_key,
        parties,
        data.Gamma,
        commitments,
    )?)
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
        if usize::from(r.my_position) >= r.public.parties().len() {
            return Err("position outside the party list".into());
        }
        if r.secret.Gamma != *r.public.gamma() {
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
            .field("parties", &self.public.parties())
            .field("my_position", &self.my_position)
            .finish_non_exhaustive()
    }
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
