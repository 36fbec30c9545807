//! Sealed wallet import: the secret travels HPKE-sealed to one node's device key D.
//!
//! A plaintext [`Request::ImportWallet`](crate::protocol::Request::ImportWallet) is only
//! accepted at the node's own TEE socket, because every relay on the way would see the seed.
//! Instead the cloud server seals the [`ImportSecret`] to the certified D public key of one
//! node (the HPKE suite of [`crate::seal`], as key sync), and sends
//! [`Request::ImportWalletSealed`](crate::protocol::Request::ImportWalletSealed): external
//! relay, link, bridge and node server only carry ciphertext. The HPKE `info` is
//! [`import_context`], so the ciphertext opens only in that node's TEE and only for the exact
//! request (cluster, node, request id, expiry, quorum, key id) the admins approved.
//!
//! The cloud server seals with [`seal_import`] (OS randomness for the encapsulation); the TEE
//! opens with [`open_import`] and derives the wallet's master key with [`master_key`], the
//! same derivation [`import_key_id`] uses, so approvals name the key id the TEE computes.

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::NetworkKind;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::policy::KeyPolicy;
use crate::protocol::{ImportSecret, KeyId, RequestMeta, TeeError};
use crate::seal::{open_with, seal_with};

/// Domain tag of import contexts (distinct from key transfers, so that neither kind of
/// ciphertext can be passed off as the other).
pub const IMPORT_DOMAIN: &[u8] = b"CUSTOS-SEALED-IMPORT-V1\0";
/// Largest sealed-import ciphertext accepted (bytes). An encoded secret is at most two
/// 1 KiB strings plus framing, so anything larger is refused before any work is done.
pub const MAX_SEALED_IMPORT_LEN: usize = 4096;
/// ChaCha20-Poly1305 tag length: what HPKE adds to the plaintext.
const AEAD_TAG_LEN: usize = 16;

/// HPKE ciphertext of an ImportSecret for one node's D key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedImport {
    /// HPKE encapsulated key (SEC1 uncompressed P-256 point).
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the `postcard` encoding of the [`ImportSecret`].
    pub ciphertext: Vec<u8>,
}

use crate::field::put;

/// Context (the HPKE `info`) binding the ciphertext to cluster, node, request id, expiry,
/// quorum and key id.
///
/// Length-prefixed fields after [`IMPORT_DOMAIN`], so distinct contexts never encode alike.
/// It covers everything the admins approve for the import (see
/// [`Action::ImportWallet`](crate::approval::Action::ImportWallet)) plus the recipient node,
/// so a ciphertext cannot be reused under another approval or on another node.
pub fn import_context(
    cluster: &str,
    node: &str,
    meta: &RequestMeta,
    quorum: u8,
    key_id: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(IMPORT_DOMAIN.len() + 96 + cluster.len() + node.len());
    out.extend_from_slice(IMPORT_DOMAIN);
    put(&mut out, cluster.as_bytes());
    put(&mut out, node.as_bytes());
    put(&mut out, &meta.request_id);
    put(&mut out, &meta.expires_at.to_be_bytes());
    put(&mut out, &[quorum]);
    put(&mut out, key_id);
    out
}

/// [`import_context`] of an import under an approver group
/// ([`Action::ImportGroupWallet`](crate::approval::Action::ImportGroupWallet)): the whole
/// policy follows the key id, so a ciphertext sealed for one group never opens under
/// another (nor as a legacy import, whose context has no such field).
pub fn group_import_context(
    cluster: &str,
    node: &str,
    meta: &RequestMeta,
    policy: &KeyPolicy,
    key_id: &[u8],
) -> Vec<u8> {
    let mut out = import_context(cluster, node, meta, policy.quorum, key_id);
    put(&mut out, &policy.encode());
    out
}

/// Longest mnemonic or passphrase accepted (bytes); BIP-39 phrases are far shorter, the
/// bound only stops a huge input from being hashed.
pub const MAX_MNEMONIC_LEN: usize = 1024;

/// The BIP-32 seed an import brings: the raw seed as given, or the BIP-39 seed of an English
/// mnemonic and its passphrase. The seed's length is checked by [`master_key`].
pub fn import_seed(secret: &ImportSecret) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    match secret {
        ImportSecret::Seed(bytes) => Ok(Zeroizing::new(bytes.0.clone())),
        ImportSecret::Mnemonic { phrase, passphrase } => {
            if phrase.0.len() > MAX_MNEMONIC_LEN || passphrase.0.len() > MAX_MNEMONIC_LEN {
                return Err(TeeError::ImportRejected("mnemonic too long".into()));
            }
            let m = bip39::Mnemonic::parse_in(bip39::Language::English, phrase.0.as_str())
                .map_err(|e| TeeError::ImportRejected(format!("BIP-39: {e}")))?;
            Ok(Zeroizing::new(m.to_seed(passphrase.0.as_str()).to_vec()))
        }
    }
}

/// The BIP-32 master key of a seed of 16 to 64 bytes; anything else is refused with
/// [`TeeError::ImportRejected`].
pub fn master_key(seed: &[u8]) -> Result<Xpriv, TeeError> {
    if !(16..=64).contains(&seed.len()) {
        return Err(TeeError::ImportRejected(format!(
            "seed is {} bytes, BIP-32 allows 16 to 64",
            seed.len()
        )));
    }
    Xpriv::new_master(NetworkKind::Main, seed)
        .map_err(|e| TeeError::ImportRejected(format!("seed unusable: {e}")))
}

/// Root key id (33-byte compressed root public key m) of a secret (mnemonic -> BIP-39 seed
/// with passphrase; raw seed 16..=64 bytes). Validates the secret; typed error.
///
/// Derives exactly as the TEE does on import ([`import_seed`], [`master_key`]), so the
/// approvals can be made for the key id the TEE will compute. An invalid secret is refused
/// with [`TeeError::ImportRejected`].
pub fn import_key_id(secret: &ImportSecret) -> Result<KeyId, TeeError> {
    let master = master_key(&import_seed(secret)?)?;
    let xpub = Xpub::from_priv(&Secp256k1::signing_only(), &master);
    Ok(xpub.public_key.serialize().to_vec())
}

/// Seals `secret` to `device_public_key` (SEC1 uncompressed P-256, as in the device
/// certificate) for that node. Uses OS randomness (rand_core OsRng) since it runs outside the
/// TEE (cloud server).
///
/// The secret is checked first: an invalid secret, or one whose key id is not `key_id`, is
/// refused with [`TeeError::ImportRejected`] here rather than after a trip to the node. A
/// device key that is not a P-256 point is refused with [`TeeError::SealedImportRejected`].
/// The caller must have checked the device certificate (chain and node name) itself: this
/// function trusts `device_public_key` to be `node`'s.
pub fn seal_import(
    device_public_key: &[u8],
    cluster: &str,
    node: &str,
    meta: &RequestMeta,
    quorum: u8,
    key_id: &[u8],
    secret: &ImportSecret,
) -> Result<SealedImport, TeeError> {
    check_key_id(secret, key_id)?;
    seal_in(
        device_public_key,
        &import_context(cluster, node, meta, quorum, key_id),
        secret,
    )
}

/// [`seal_import`] for an import under the approver group `policy`
/// ([`group_import_context`]).
pub fn seal_group_import(
    device_public_key: &[u8],
    cluster: &str,
    node: &str,
    meta: &RequestMeta,
    policy: &KeyPolicy,
    key_id: &[u8],
    secret: &ImportSecret,
) -> Result<SealedImport, TeeError> {
    check_key_id(secret, key_id)?;
    seal_in(
        device_public_key,
        &group_import_context(cluster, node, meta, policy, key_id),
        secret,
    )
}

/// The secret must be the approved key's.
fn check_key_id(secret: &ImportSecret, key_id: &[u8]) -> Result<(), TeeError> {
    let actual = import_key_id(secret)?;
    if actual != key_id {
        return Err(TeeError::ImportRejected(format!(
            "secret yields key {}, not {}",
            hex::encode(&actual),
            hex::encode(key_id)
        )));
    }
    Ok(())
}

fn seal_in(
    device_public_key: &[u8],
    context: &[u8],
    secret: &ImportSecret,
) -> Result<SealedImport, TeeError> {
    let plaintext = encode_secret(secret)?;
    let (enc, ciphertext) = seal_with(
        &mut rand_core::OsRng,
        device_public_key,
        context,
        &plaintext,
        TeeError::SealedImportRejected,
    )?;
    Ok(SealedImport { enc, ciphertext })
}

/// `postcard` encoding of the secret into a buffer erased on drop. The buffer is allocated
/// once at the largest size that can be sealed, so no reallocation leaves a copy behind.
fn encode_secret(secret: &ImportSecret) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_SEALED_IMPORT_LEN - AEAD_TAG_LEN]);
    let len = postcard::to_slice(secret, &mut buf[..])
        .map_err(|_| {
            TeeError::ImportRejected(format!(
                "secret too large to seal (at most {MAX_SEALED_IMPORT_LEN} bytes sealed)"
            ))
        })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Opens a sealed import inside the TEE with D's private scalar and this node's `context`.
/// Oversized, undecryptable (other node, other context, altered) and undecodable ciphertexts
/// are all refused with [`TeeError::SealedImportRejected`]. The secret is not validated
/// here: the import path does that as for a plaintext import.
pub fn open_import(
    private_scalar: &[u8],
    context: &[u8],
    sealed: &SealedImport,
) -> Result<ImportSecret, TeeError> {
    if sealed.ciphertext.len() > MAX_SEALED_IMPORT_LEN {
        return Err(TeeError::SealedImportRejected(format!(
            "ciphertext of {} bytes, at most {MAX_SEALED_IMPORT_LEN}",
            sealed.ciphertext.len()
        )));
    }
    let plaintext = open_with(
        private_scalar,
        &sealed.enc,
        &sealed.ciphertext,
        context,
        TeeError::SealedImportRejected,
    )?;
    // The decoded strings and bytes are erased on drop (SecretString, SecretBytes).
    match postcard::take_from_bytes::<ImportSecret>(&plaintext) {
        Ok((secret, [])) => Ok(secret),
        _ => Err(TeeError::SealedImportRejected(
            "sealed plaintext is not one import secret".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{SecretBytes, SecretString};

    fn meta() -> RequestMeta {
        RequestMeta {
            request_id: [7; 16],
            expires_at: 1_000,
        }
    }

    #[test]
    fn contexts_differ_in_every_field() {
        let m = meta();
        let base = import_context("dc1", "node1", &m, 2, &[2; 33]);
        let mut other_id = m.clone();
        other_id.request_id[0] ^= 1;
        let mut other_exp = m.clone();
        other_exp.expires_at += 1;
        for variant in [
            import_context("dc2", "node1", &m, 2, &[2; 33]),
            import_context("dc1", "node2", &m, 2, &[2; 33]),
            import_context("dc1", "node1", &other_id, 2, &[2; 33]),
            import_context("dc1", "node1", &other_exp, 2, &[2; 33]),
            import_context("dc1", "node1", &m, 3, &[2; 33]),
            import_context("dc1", "node1", &m, 2, &[3; 33]),
            // Length prefixes: moving a byte between cluster and node changes the context.
            import_context("dc1n", "ode1", &m, 2, &[2; 33]),
        ] {
            assert_ne!(variant, base);
        }
    }

    #[test]
    fn key_id_refuses_invalid_secrets() {
        let short = ImportSecret::Seed(SecretBytes(vec![1; 15]));
        assert!(matches!(
            import_key_id(&short),
            Err(TeeError::ImportRejected(_))
        ));
        let bad_words = ImportSecret::Mnemonic {
            phrase: SecretString("abandon abandon abandon".into()),
            passphrase: SecretString(String::new()),
        };
        assert!(matches!(
            import_key_id(&bad_words),
            Err(TeeError::ImportRejected(_))
        ));
        let ok = ImportSecret::Seed(SecretBytes(vec![1; 32]));
        assert_eq!(import_key_id(&ok).unwrap().len(), 33);
    }

    #[test]
    fn seal_refuses_a_key_id_that_is_not_the_secrets_and_a_bad_device_key() {
        let secret = ImportSecret::Seed(SecretBytes(vec![9; 32]));
        let key_id = import_key_id(&secret).unwrap();
        let e = seal_import(&[4; 65], "dc1", "node1", &meta(), 1, &[2; 33], &secret).unwrap_err();
        assert!(matches!(e, TeeError::ImportRejected(_)), "{e:?}");
        let e = seal_import(&[4; 65], "dc1", "node1", &meta(), 1, &key_id, &secret).unwrap_err();
        assert!(matches!(e, TeeError::SealedImportRejected(_)), "{e:?}");
    }

    #[test]
    fn oversized_ciphertext_is_refused_before_opening() {
        let sealed = SealedImport {
            enc: vec![4; 65],
            ciphertext: vec![0; MAX_SEALED_IMPORT_LEN + 1],
        };
        let e = open_import(&[1; 32], b"ctx", &sealed).unwrap_err();
        assert!(
            matches!(e, TeeError::SealedImportRejected(ref m) if m.contains("at most")),
            "{e:?}"
        );
    }
}
