//! The one HPKE suite of Custos (RFC 9180: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, base mode, `info` = the caller's context, empty AAD), shared by key
//! transfers between nodes, sealed wallet imports, dealer bundles and the point-to-point
//! content of threshold messages.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use sha2::{Digest, Sha256};

use crate::field::put;
use crate::protocol::TeeError;

type Kem = DhP256HkdfSha256;

/// What a sender signs over a sealed payload: `domain`, the HPKE `context` (the recipient and
/// the public facts) and the digests of the HPKE output (dealer bundles, sealed primes).
pub fn sealed_transcript(domain: &[u8], context: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(domain.len() + context.len() + 72);
    t.extend_from_slice(domain);
    put(&mut t, context);
    put(&mut t, &Sha256::digest(enc));
    put(&mut t, &Sha256::digest(ciphertext));
    t
}

/// Seals `plaintext` to `recipient_public_key` (SEC1 P-256) under `info`; returns the
/// encapsulated key and the ciphertext. The random source is the caller's: the TEE's platform
/// inside, the OS outside (a cloud server sealing an import). Failures are reported through
/// `reject`, so each protocol keeps its own typed refusal.
pub fn seal_with<R: rand_core::RngCore + rand_core::CryptoRng>(
    rng: &mut R,
    recipient_public_key: &[u8],
    info: &[u8],
    plaintext: &[u8],
    reject: fn(String) -> TeeError,
) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_public_key)
        .map_err(|e| reject(format!("recipient key: {e}")))?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        &[],
        rng,
    )
    .map_err(|e| reject(format!("HPKE seal: {e}")))?;
    Ok((enc.to_bytes().to_vec(), ct))
}

/// The HPKE open matching [`seal_with`]. The plaintext is secret (wallet seeds), so it is
/// returned in a buffer erased on drop. Any failure, whatever its cause, is reported the
/// same way through `reject`: the caller learns only that the ciphertext is not for it.
pub fn open_with(
    private_scalar: &[u8],
    enc: &[u8],
    ciphertext: &[u8],
    info: &[u8],
    reject: fn(String) -> TeeError,
) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(private_scalar)
        .map_err(|e| reject(format!("own key: {e}")))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|e| reject(format!("encapsulated key: {e}")))?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ciphertext,
        &[],
    )
    .map(Zeroizing::new)
    .map_err(|_| reject("HPKE open failed: not for this node or altered".into()))
}
