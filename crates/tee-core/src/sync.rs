//! Key sync between nodes of a cluster (patent [0068], DESIGN flow 3).
//!
//! The holder's TEE checks the requester's device certificate (same cluster, valid chain to
//! the pinned Root), seals a batch of wallet records to the requester's certified D public
//! key with HPKE (RFC 9180: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), and
//! signs the transfer with its own D over the transfer context. The requester's TEE checks
//! the sender's certificate and signature, that the transfer is addressed to its own
//! certificate, then opens it and stores every key. Relays see only ciphertext.
//!
//! A transfer carries wallets (B keys) and threshold shares (T with P, patent [0073]-[0074])
//! alike: each record says what it is ([`crate::threshold::HeldKey::is_record`]).

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::platform::Platform;
use custos_wire::protocol::{KeyTransfer, TeeError};

/// Domain tag of transfer contexts.
pub const TRANSFER_DOMAIN: &[u8] = b"CUSTOS-KEY-TRANSFER-V1\0";
use custos_wire::field::put;
use custos_wire::seal::{open_with, seal_with};

/// The context both the HPKE `info` and the sender's signature bind: cluster, sender and
/// recipient certificate fingerprints, and the exact key ids carried.
pub fn transfer_context(
    cluster: &str,
    sender_fingerprint: &[u8; 32],
    recipient_fingerprint: &[u8; 32],
    key_ids: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + key_ids.len() * 37);
    out.extend_from_slice(TRANSFER_DOMAIN);
    put(&mut out, cluster.as_bytes());
    put(&mut out, sender_fingerprint);
    put(&mut out, recipient_fingerprint);
    out.extend_from_slice(&(key_ids.len() as u32).to_be_bytes());
    for k in key_ids {
        put(&mut out, k);
    }
    out
}

/// What the sender's D signs: the context and digests of the HPKE output.
pub fn transfer_transcript(context: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(context.len() + 64);
    t.extend_from_slice(context);
    t.extend_from_slice(&Sha256::digest(enc));
    t.extend_from_slice(&Sha256::digest(ciphertext));
    t
}

/// Adapts the platform's random source to the `rand_core` interface HPKE expects.
struct PlatformRng<'a>(&'a mut dyn Platform);

impl rand_core::RngCore for PlatformRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0
            .random(dest)
            .expect("platform random source failed during HPKE encapsulation");
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for PlatformRng<'_> {}

/// HPKE-seals `plaintext` to the recipient's SEC1 P-256 public key with the TEE's own
/// random source; returns (enc, ct).
pub fn seal(
    platform: &mut dyn Platform,
    recipient_public_key: &[u8],
    info: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
    seal_with(
        &mut PlatformRng(platform),
        recipient_public_key,
        info,
        plaintext,
        TeeError::TransferRejected,
    )
}

/// HPKE-seals `plaintext` to a recipient with the TEE's own random source, reporting failures
/// through `reject` (threshold messages use their own refusal).
pub(crate) fn seal_in_tee(
    platform: &mut dyn Platform,
    recipient_public_key: &[u8],
    info: &[u8],
    plaintext: &[u8],
    reject: fn(String) -> TeeError,
) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
    seal_with(
        &mut PlatformRng(platform),
        recipient_public_key,
        info,
        plaintext,
        reject,
    )
}

/// Opens a key transfer's HPKE ciphertext with the recipient's raw P-256 private scalar.
pub fn open(
    private_scalar: &[u8],
    transfer: &KeyTransfer,
    info: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TeeError> {
    open_with(
        private_scalar,
        &transfer.enc,
        &transfer.ciphertext,
        info,
        TeeError::TransferRejected,
    )
}

/// Concatenates length-prefixed records (the transfer plaintext).
pub fn pack(records: &[Zeroizing<Vec<u8>>]) -> Zeroizing<Vec<u8>> {
    let total: usize = records.iter().map(|r| r.len() + 4).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(total));
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Splits a transfer plaintext back into records; exactly `expected` of them.
pub fn unpack(plaintext: &[u8], expected: usize) -> Result<Vec<&[u8]>, TeeError> {
    let mut out = Vec::with_capacity(expected);
    let mut rest = plaintext;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(TeeError::TransferRejected("truncated record".into()));
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() < 4 + len || out.len() >= expected {
            return Err(TeeError::TransferRejected("malformed record list".into()));
        }
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    if out.len() != expected {
        return Err(TeeError::TransferRejected(format!(
            "{} records for {expected} key ids",
            out.len()
        )));
    }
    Ok(out)
}
