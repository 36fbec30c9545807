//! A pregenerated Paillier primes set sealed to one TEE by the operating company's dealer:
//! the only form in which a TEE accepts primes it did not generate itself.
//!
//! A party's four primes are its Paillier secret: whoever reads them can decrypt what the
//! other parties encrypt to it during signing and so learn its share. A set therefore
//! travels HPKE-sealed (the suite of [`crate::seal`]) to the certified device key D of one
//! node, under a context naming that node ([`primes_context`]), and signed by an enrolled
//! dealer (dealer certificate under the pinned Root, as a dealer bundle): the file opens in
//! that TEE only, holds one party's set only, leaves no clear copy on disk, and cannot come
//! from whoever merely controls the TEE's host. `custos dealer primes --for <chain>` writes
//! one such file per node; the TEE process imports it at start-up (`CUSTOS_TEE_PRIMES_FILE`)
//! and empties it.
//!
//! The file is JSON ([`SealedPrimes`], hex fields); a plaintext list of sets, as earlier
//! versions wrote, is refused by name.

use custos_pki::{DealerSigner, DeviceIdentity, TrustRoot};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::field::put;
use crate::protocol::TeeError;
use crate::seal::{open_with, seal_with, sealed_transcript};

/// Domain tag of sealed primes contexts (distinct from imports, transfers and bundles).
pub const PRIMES_DOMAIN: &[u8] = b"CUSTOS-SEALED-PRIMES-V1\0";
/// Domain tag of the dealer's signature over a sealed set.
pub const PRIMES_SIGNATURE_DOMAIN: &[u8] = b"CUSTOS-SEALED-PRIMES-SIG-V1\0";
/// Largest sealed primes file accepted: one set is about 1.7 KB of JSON, 7 KB as hex, plus
/// two certificates.
pub const MAX_SEALED_PRIMES_FILE: usize = 64 * 1024;

/// One primes set sealed to one node's D key and signed by a dealer (the file `custos dealer
/// primes` writes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealedPrimes {
    /// The recipient's cluster.
    pub cluster: String,
    /// The recipient node's name.
    pub node: String,
    /// SHA-256 of the recipient's device certificate, hex.
    pub recipient_fingerprint: String,
    /// The dealer's certificate (DER, hex).
    pub dealer_cert: String,
    /// The Admin CA certificate that issued it (DER, hex).
    pub dealer_ca: String,
    /// HPKE encapsulated key, hex.
    pub enc: String,
    /// HPKE ciphertext of the set (its sealed JSON), hex.
    pub ciphertext: String,
    /// The dealer's signature over [`primes_transcript`], hex.
    pub signature: String,
}

/// The HPKE `info` of a set sealed to `node` of `cluster` with certificate `fingerprint`.
pub fn primes_context(cluster: &str, node: &str, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PRIMES_DOMAIN.len() + 48 + cluster.len() + node.len());
    out.extend_from_slice(PRIMES_DOMAIN);
    put(&mut out, cluster.as_bytes());
    put(&mut out, node.as_bytes());
    put(&mut out, fingerprint);
    out
}

/// What the dealer signs: the context (recipient) and the digests of the sealed set.
pub fn primes_transcript(context: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    sealed_transcript(PRIMES_SIGNATURE_DOMAIN, context, enc, ciphertext)
}

/// Seals one set (`set_json`, as `Primes::to_sealed_bytes` writes it) to `recipient` and
/// signs it as `dealer`. `recipient` comes from verifying the node's certificate chain.
pub fn seal_primes(
    recipient: &DeviceIdentity,
    set_json: &[u8],
    dealer: &DealerSigner,
) -> Result<SealedPrimes, TeeError> {
    let context = primes_context(&recipient.cluster, &recipient.node, &recipient.fingerprint);
    let (enc, ciphertext) = seal_with(
        &mut rand_core::OsRng,
        &recipient.public_key,
        &context,
        set_json,
        TeeError::SealedImportRejected,
    )?;
    let signature = dealer.sign(&primes_transcript(&context, &enc, &ciphertext));
    Ok(SealedPrimes {
        cluster: recipient.cluster.clone(),
        node: recipient.node.clone(),
        recipient_fingerprint: hex::encode(recipient.fingerprint),
        dealer_cert: hex::encode(&dealer.cert_der),
        dealer_ca: hex::encode(&dealer.admin_ca_der),
        enc: hex::encode(enc),
        ciphertext: hex::encode(ciphertext),
        signature: hex::encode(signature),
    })
}

/// Decodes a sealed primes file (size-limited; a plaintext list of sets is refused by name).
pub fn decode_sealed_primes(file: &[u8]) -> Result<SealedPrimes, TeeError> {
    if file.len() > MAX_SEALED_PRIMES_FILE {
        return Err(TeeError::SealedImportRejected(format!(
            "primes file of {} bytes, at most {MAX_SEALED_PRIMES_FILE}",
            file.len()
        )));
    }
    if file.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(TeeError::SealedImportRejected(
            "a plaintext list of primes sets: a TEE takes one set sealed to it by a dealer \
             (custos dealer primes --for <its certificate chain>)"
                .into(),
        ));
    }
    serde_json::from_slice(file)
        .map_err(|e| TeeError::SealedImportRejected(format!("sealed primes file: {e}")))
}

/// Opens a sealed set inside the TEE whose identity is `own` with D's private scalar: the
/// set must be addressed to `own` and signed by a dealer certified under `root` at `now`.
/// A set sealed to another node, signed by anyone else, or altered is refused; the set is
/// returned unparsed, in a buffer erased on drop.
pub fn open_primes(
    root: &TrustRoot,
    now: u64,
    own: &DeviceIdentity,
    private_scalar: &[u8],
    sealed: &SealedPrimes,
) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    let reject = TeeError::SealedImportRejected;
    if sealed.cluster != own.cluster
        || sealed.node != own.node
        || sealed.recipient_fingerprint != hex::encode(own.fingerprint)
    {
        return Err(reject(format!(
            "primes sealed to node {:?} of cluster {:?} (certificate {}), not to this one",
            sealed.node, sealed.cluster, sealed.recipient_fingerprint
        )));
    }
    let unhex = |what: &str, v: &str| hex::decode(v).map_err(|e| reject(format!("{what}: {e}")));
    let (enc, ciphertext) = (
        unhex("enc", &sealed.enc)?,
        unhex("ciphertext", &sealed.ciphertext)?,
    );
    let context = primes_context(&own.cluster, &own.node, &own.fingerprint);
    let dealer = root
        .verify_dealer(
            &unhex("dealer_cert", &sealed.dealer_cert)?,
            &unhex("dealer_ca", &sealed.dealer_ca)?,
            now,
        )
        .map_err(|e| reject(format!("dealer certificate: {e}")))?;
    dealer
        .verify_signature(
            &primes_transcript(&context, &enc, &ciphertext),
            &unhex("signature", &sealed.signature)?,
        )
        .map_err(|e| reject(format!("dealer signature: {e}")))?;
    open_with(private_scalar, &enc, &ciphertext, &context, reject)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sealing, opening and the dealer's signature are exercised with real TEE cores in
    // custos-tee-core's tests (`dkg`); here, what is refused before any key is touched.
    #[test]
    fn plaintext_lists_oversized_and_malformed_files_are_refused_by_name() {
        assert!(matches!(
            decode_sealed_primes(b"  [{\"primes\": []}]"),
            Err(TeeError::SealedImportRejected(m)) if m.contains("plaintext list")
        ));
        assert!(matches!(
            decode_sealed_primes(&vec![b' '; MAX_SEALED_PRIMES_FILE + 1]),
            Err(TeeError::SealedImportRejected(m)) if m.contains("at most")
        ));
        assert!(matches!(
            decode_sealed_primes(b"{\"cluster\": \"dc1\", \"extra\": 1}"),
            Err(TeeError::SealedImportRejected(m)) if m.contains("sealed primes file")
        ));
    }
}
