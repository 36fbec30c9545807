//! TPM2_MakeCredential in software, for a verifier without a TPM of its own.
//!
//! This is not a scheme of ours: it is the TPM 2.0 specification's composition (Part 1 §24
//! "Credential Protection", §11.4.10.2 KDFa, Part 3 TPM2_MakeCredential) of vetted primitives
//! from maintained crates: RSA-OAEP-SHA256 (`rsa`), KDFa = SP 800-108 counter mode over
//! HMAC-SHA256 (`hmac`), AES-128-CFB (`aes` + `cfb-mode`). The tests check it against the
//! reference TPM (libtpms, in swtpm): its TPM2_ActivateCredential accepts what this makes and
//! returns the secret, and refuses it for another key.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{ak_name, ek, limit_identity, quote, TpmCredential, TpmIdentity, TpmPolicy};
use crate::error::AttestError;

/// The OAEP label of a credential's seed, with its terminating zero (Part 1 §24.4).
const IDENTITY_LABEL: &str = "IDENTITY\0";

/// KDFa (TPM 2.0 Part 1 §11.4.10.2, SP 800-108 counter mode with HMAC-SHA256): `bits` bits
/// from `key`, `label` (a zero byte is appended), `context_u`, `context_v`.
fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// Makes a credential that only the TPM holding `identity`'s EK releases, and only while the
/// key named by `identity.ak_public` is loaded in it: `secret` comes back from
/// TPM2_ActivateCredential. First checks, at `now_unix`, that the EK certificate chains to a
/// root of `policy` and that the AK is a TPM-resident restricted signing key (a credential
/// for anything else proves nothing). All randomness (the seed, OAEP's) comes from `entropy`
/// through ChaCha20: the TEE core has no OS randomness of its own, its platform gives it.
pub fn make_credential(
    identity: &TpmIdentity,
    policy: &TpmPolicy,
    secret: &[u8; 32],
    entropy: [u8; 32],
    now_unix: u64,
) -> Result<TpmCredential, AttestError> {
    limit_identity(identity)?;
    let ek = ek::verify_ek(identity, policy, now_unix)?;
    quote::parse_ak(&identity.ak_public)?;
    let name = ak_name(&identity.ak_public);

    let mut rng = ChaCha20Rng::from_seed(entropy);
    // The seed's size is the EK name algorithm's digest size (SHA-256 in the TCG template).
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut seed[..]);
    let ek_key = RsaPublicKey::new(
        BigUint::from_bytes_be(&ek.modulus),
        BigUint::from_bytes_be(&ek.exponent),
    )
    .map_err(|e| AttestError::EkChainInvalid(format!("EK public key: {e}")))?;
    let encrypted_secret = ek_key
        .encrypt(
            &mut rng,
            Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
            &seed[..],
        )
        .map_err(|e| AttestError::EkChainInvalid(format!("RSA-OAEP to the EK: {e}")))?;

    // The EK's symmetric algorithm in the TCG template is AES-128-CFB: a 128-bit key, IV 0.
    let sym_key = kdfa(&seed[..], b"STORAGE", &name, &[], 128);
    // The credential is a TPM2B_DIGEST: u16 size ‖ secret.
    let mut enc_identity = Zeroizing::new(Vec::with_capacity(34));
    enc_identity.extend_from_slice(&32u16.to_be_bytes());
    enc_identity.extend_from_slice(secret);
    let key: [u8; 16] = sym_key[..].try_into().expect("KDFa gave 16 bytes");
    cfb_mode::Encryptor::<Aes128>::new(&key.into(), &[0u8; 16].into())
        .encrypt(&mut enc_identity[..]);

    let hmac_key = kdfa(&seed[..], b"INTEGRITY", &[], &[], 256);
    let mut mac = Hmac::<Sha256>::new_from_slice(&hmac_key).expect("HMAC takes any key length");
    mac.update(&enc_identity);
    mac.update(&name);
    let outer_hmac = mac.finalize().into_bytes();

    // TPM2B_ID_OBJECT content: TPM2B_DIGEST outer HMAC ‖ encrypted identity.
    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    id_object.extend_from_slice(&32u16.to_be_bytes());
    id_object.extend_from_slice(&outer_hmac);
    id_object.extend_from_slice(&enc_identity);
    Ok(TpmCredential {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::kdfa;

    #[test]
    fn kdfa_gives_the_requested_length_and_depends_on_every_input() {
        let a = kdfa(b"seed", b"STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(kdfa(b"seed", b"STORAGE", b"name", &[], 520).len(), 65);
        // The first block of a longer output differs: the length is part of the input.
        assert_ne!(&kdfa(b"seed", b"STORAGE", b"name", &[], 256)[..16], &a[..]);
        assert_ne!(kdfa(b"seed", b"INTEGRITY", b"name", &[], 128), a);
        assert_ne!(kdfa(b"seed", b"STORAGE", b"other", &[], 128), a);
        assert_ne!(kdfa(b"seeD", b"STORAGE", b"name", &[], 128), a);
    }
}
