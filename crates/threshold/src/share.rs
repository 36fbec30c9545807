//! Key shares: a complete [`ThresholdShare`] (what signing needs) and the two halves a
//! distributed key generation produces, [`IncompleteShare`] (keygen) and [`AuxInfo`] (aux-info
//! generation: Paillier keys and ring-Pedersen parameters).
//!
//! Serialization is JSON (`serde_json`): `KeyShare` does not round-trip through postcard or
//! bincode (its serde relies on field names / `deserialize_any`). Decoding validates the share
//! (the library's `Valid<T>` checks it on deserialize) and is size-limited to
//! [`MAX_SHARE_BYTES`].

use std::fmt;

use cggmp24::key_share::{AnyKeyShare, AuxInfo as LibAuxInfo, IncompleteKeyShare, KeyShare};
use zeroize::Zeroizing;

use crate::util::{check_path, from_json_bounded, nz_point_bytes, to_json_zeroizing};
use crate::{ThresholdError, E, L, MAX_SHARE_BYTES};

/// One party's share of a threshold key (secp256k1, `SecurityLevel128`): the secret share, the
/// public key information and the party's aux info (its Paillier secret key and everybody's
/// public Paillier / ring-Pedersen parameters).
///
/// `Debug` prints public information only.
#[derive(Clone)]
pub struct ThresholdShare(pub(crate) KeyShare<E, L>);

impl ThresholdShare {
    /// Serializes the share (including its secrets) for sealed storage. The buffer is
    /// zeroized on drop.
    pub fn to_sealed_bytes(&self) -> Zeroizing<Vec<u8>> {
        to_json_zeroizing(&self.0)
    }

    /// Decodes and validates a share written by [`to_sealed_bytes`](Self::to_sealed_bytes)
    /// (at most [`MAX_SHARE_BYTES`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded::<KeyShare<E, L>>(bytes, MAX_SHARE_BYTES, "key share").map(Self)
    }

    /// Joins the keygen output and the aux info of one party into a complete share; checks
    /// that they belong together (same party index and number of parties, matching Paillier
    /// key).
    pub fn from_parts(core: IncompleteShare, aux: AuxInfo) -> Result<Self, ThresholdError> {
        KeyShare::from_parts((core.0, aux.0))
            .map(Self)
            .map_err(|e| ThresholdError::InvalidShare(e.error().to_string()))
    }

    /// The joint public key (compressed SEC1, 33 bytes).
    pub fn public_key(&self) -> [u8; 33] {
        nz_point_bytes(&self.0.core.shared_public_key)
    }

    /// The chain code, if the key is an HD key.
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.0.core.chain_code
    }

    /// Whether the key is an HD key (has a chain code).
    pub fn is_hd(&self) -> bool {
        self.0.core.chain_code.is_some()
    }

    /// Threshold t: how many parties must sign.
    pub fn threshold(&self) -> u16 {
        self.0.min_signers()
    }

    /// Number of parties n holding shares of the key.
    pub fn n(&self) -> u16 {
        AnyKeyShare::n(&self.0)
    }

    /// This party's index at key generation (`0..n`).
    pub fn index(&self) -> u16 {
        self.0.core.i
    }

    /// The public key of the child at `path` (compressed SEC1). Non-hardened indexes only
    /// (< 2³¹); the derivation is SLIP-10, which is BIP-32 for secp256k1. An empty path gives
    /// the root (joint) key.
    pub fn derive_child_public_key(&self, path: &[u32]) -> Result<[u8; 33], ThresholdError> {
        derive_child(&self.0.core, path)
    }

    /// The root extended public key (BIP-32 `xpub`, depth 0, mainnet version bytes), if the
    /// key is an HD key.
    pub fn xpub(&self) -> Option<bitcoin::bip32::Xpub> {
        let chain_code = self.chain_code()?;
        let public_key = bitcoin::secp256k1::PublicKey::from_slice(&self.public_key()).ok()?;
        Some(bitcoin::bip32::Xpub {
            network: bitcoin::NetworkKind::Main,
            depth: 0,
            parent_fingerprint: Default::default(),
            child_number: bitcoin::bip32::ChildNumber::Normal { index: 0 },
            public_key,
            chain_code: bitcoin::bip32::ChainCode::from(chain_code),
        })
    }
}

/// Derives a child public key of a key with chain code (shared by shares of both kinds).
fn derive_child(
    core: &cggmp24::key_share::DirtyIncompleteKeyShare<E>,
    path: &[u32],
) -> Result<[u8; 33], ThresholdError> {
    check_path(path)?;
    if core.chain_code.is_none() {
        return if path.is_empty() {
            Ok(nz_point_bytes(&core.shared_public_key))
        } else {
            Err(ThresholdError::NotHd)
        };
    }
    let child_public_key = child_point(core, path)?;
    Ok(nz_point_bytes(&child_public_key))
}

/// The child public key at `path` as a point (root key for an empty path).
pub(crate) fn child_point(
    core: &cggmp24::key_share::DirtyIncompleteKeyShare<E>,
    path: &[u32],
) -> Result<cggmp24::generic_ec::NonZero<cggmp24::generic_ec::Point<E>>, ThresholdError> {
    check_path(path)?;
    if path.is_empty() {
        return Ok(core.shared_public_key);
    }
    let epub = core
        .derive_child_public_key::<cggmp24::hd_wallet::Slip10, _>(path.iter().copied())
        .map_err(|e| match e {
            cggmp24::key_share::HdError::DisabledHd => ThresholdError::NotHd,
            cggmp24::key_share::HdError::InvalidPath(_) => {
                ThresholdError::InvalidParameters("invalid derivation path".into())
            }
        })?;
    cggmp24::generic_ec::NonZero::from_point(epub.public_key)
        .ok_or_else(|| ThresholdError::InvalidShare("derived child key is zero".into()))
}

impl fmt::Debug for ThresholdShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThresholdShare")
            .field("index", &self.index())
            .field("threshold", &self.threshold())
            .field("n", &self.n())
            .field("public_key", &hex::encode(self.public_key()))
            .field("hd", &self.is_hd())
            .finish_non_exhaustive()
    }
}

/// One party's output of distributed key generation: secret share and public key info, without
/// aux info. Combine it with an [`AuxInfo`] through [`ThresholdShare::from_parts`].
///
/// `Debug` prints public information only.
#[derive(Clone)]
pub struct IncompleteShare(pub(crate) IncompleteKeyShare<E>);

impl IncompleteShare {
    /// Serializes the share (including the secret share) for sealed storage.
    pub fn to_sealed_bytes(&self) -> Zeroizing<Vec<u8>> {
        to_json_zeroizing(&self.0)
    }

    /// Decodes and validates an incomplete share (at most [`MAX_SHARE_BYTES`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded::<IncompleteKeyShare<E>>(bytes, MAX_SHARE_BYTES, "incomplete key share")
            .map(Self)
    }

    /// The joint public key (compressed SEC1).
    pub fn public_key(&self) -> [u8; 33] {
        nz_point_bytes(&self.0.shared_public_key)
    }

    /// The chain code, if the key is an HD key.
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.0.chain_code
    }

    /// Whether the key is an HD key.
    pub fn is_hd(&self) -> bool {
        self.0.chain_code.is_some()
    }

    /// Threshold t.
    pub fn threshold(&self) -> u16 {
        self.0.min_signers()
    }

    /// Number of parties n.
    pub fn n(&self) -> u16 {
        self.0.n()
    }

    /// This party's keygen index.
    pub fn index(&self) -> u16 {
        self.0.i
    }

    /// The child public key at a non-hardened `path` (see
    /// [`ThresholdShare::derive_child_public_key`]).
    pub fn derive_child_public_key(&self, path: &[u32]) -> Result<[u8; 33], ThresholdError> {
        derive_child(&self.0, path)
    }
}

impl fmt::Debug for IncompleteShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncompleteShare")
            .field("index", &self.index())
            .field("threshold", &self.threshold())
            .field("n", &self.n())
            .field("public_key", &hex::encode(self.public_key()))
            .field("hd", &self.is_hd())
            .finish_non_exhaustive()
    }
}

/// One party's output of aux-info generation: its Paillier secret key (p, q) and the public
/// Paillier moduli and ring-Pedersen parameters of all n parties. It is secret (p, q).
///
/// One aux info can serve many keys of the same party group (same n, same index).
/// `Debug` prints public information only.
#[derive(Clone)]
pub struct AuxInfo(pub(crate) LibAuxInfo<L>);

impl AuxInfo {
    /// Serializes the aux info (including the Paillier secret key) for sealed storage.
    pub fn to_sealed_bytes(&self) -> Zeroizing<Vec<u8>> {
        to_json_zeroizing(&self.0)
    }

    /// Decodes and validates aux info (at most [`MAX_SHARE_BYTES`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        from_json_bounded::<LibAuxInfo<L>>(bytes, MAX_SHARE_BYTES, "aux info").map(Self)
    }

    /// Number of parties the aux info was generated for.
    pub fn n(&self) -> usize {
        self.0.N.len()
    }
}

impl fmt::Debug for AuxInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuxInfo")
            .field("n", &self.n())
            .finish_non_exhaustive()
    }
}
