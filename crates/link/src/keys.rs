//! Signing keys of the two relays.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::envelope::RequestId;
use crate::error::LinkError;

/// Length of an uncompressed SEC1 P-256 public key (0x04 || X || Y).
pub const PUBLIC_KEY_LEN: usize = 65;

/// One relay's view of the link's keys: its own P-256 signing key and the peer relay's
/// pinned public key. Pinning (rather than a certificate chain) keeps the air-gapped link
/// independent of any online PKI check.
pub struct LinkKeys {
    own: EcdsaKeyPair,
    peer_public: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material; the public halves identify the pair well enough.
        f.debug_struct("LinkKeys")
            .field("own_public", &hex::encode(self.public_key()))
            .field("peer_public", &hex::encode(&self.peer_public))
            .finish()
    }
}

impl LinkKeys {
    /// Builds the keys from this relay's PKCS#8 P-256 private key and the peer's
    /// uncompressed SEC1 public key.
    pub fn from_pkcs8(own_pkcs8: &[u8], peer_public: Vec<u8>) -> Result<Self, LinkError> {
        let rng = SystemRandom::new();
        let own = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, own_pkcs8, &rng)
            .map_err(|e| LinkError::Key(format!("own PKCS#8 P-256 key rejected: {e}")))?;
        // ring only checks the point when verifying; catching a wrong-format pin at
        // start-up beats refusing every envelope later with BadSignature.
        if peer_public.len() != PUBLIC_KEY_LEN || peer_public[0] != 0x04 {
            return Err(LinkError::Key(format!(
                "peer public key must be a {PUBLIC_KEY_LEN}-byte uncompressed SEC1 P-256 point, got {} bytes",
                peer_public.len()
            )));
        }
        Ok(Self {
            own,
            peer_public,
            rng,
        })
    }

    /// Generates a fresh PKCS#8 P-256 private key (for provisioning a relay and for tests).
    pub fn generate_pkcs8() -> Result<Vec<u8>, LinkError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|e| LinkError::Key(format!("key generation failed: {e}")))
    }

    /// The uncompressed SEC1 public key of a PKCS#8 P-256 private key, to pin on the peer.
    pub fn public_key_of_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, LinkError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| LinkError::Key(format!("PKCS#8 P-256 key rejected: {e}")))
    }

    /// This relay's public key (uncompressed SEC1).
    pub fn public_key(&self) -> &[u8] {
        self.own.public_key().as_ref()
    }

    /// The pinned public key of the peer relay (uncompressed SEC1).
    pub fn peer_public(&self) -> &[u8] {
        &self.peer_public
    }

    /// Signs `message` with this relay's key (fixed-size r || s).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.own
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| LinkError::Internal(format!("signing failed: {e}")))
    }

    /// A fresh random request id.
    pub fn new_request_id(&self) -> Result<RequestId, LinkError> {
        let mut id = [0u8; 16];
        self.rng
            .fill(&mut id)
            .map_err(|e| LinkError::Internal(format!("random source failed: {e}")))?;
        Ok(id)
    }
}
