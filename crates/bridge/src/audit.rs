//! Key audits (patent [0086], FIG. 18): for every key of the list, on every node, the TEE
//! signs a fresh message of at most 8 bytes with the root key m, and the bridge checks the
//! signature against the key id (m's public key) from the key list. A node that lacks a key
//! is flagged and synced; a node that answers with a wrong signature is flagged.

use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1};
use custos_proto::cluster::NodeAudit;
use custos_wire::protocol::{audit_digest, EcdsaSignature, MAX_AUDIT_MESSAGE};
use ring::rand::{SecureRandom, SystemRandom};

/// A fresh audit message: 8 random bytes (never a transaction digest; the TEE also hashes
/// it under its own domain tag).
pub fn fresh_message() -> Vec<u8> {
    let mut m = vec![0u8; MAX_AUDIT_MESSAGE];
    SystemRandom::new()
        .fill(&mut m)
        .expect("OS random source failed");
    m
}

/// Whether `sig` is m's signature over the audit digest of `message`, m being `key_id`.
pub fn audit_signature_valid(key_id: &[u8], message: &[u8], sig: &EcdsaSignature) -> bool {
    let secp = Secp256k1::verification_only();
    let Ok(expected) = PublicKey::from_slice(key_id) else {
        return false;
    };
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
    let Ok(recid) = RecoveryId::from_i32(sig.v as i32) else {
        return false;
    };
    let Ok(rsig) = RecoverableSignature::from_compact(&compact, recid) else {
        return false;
    };
    let msg = Message::from_digest(audit_digest(message));
    secp.verify_ecdsa(&msg, &rsig.to_standard(), &expected)
        .is_ok()
        && secp.recover_ecdsa(&msg, &rsig).ok() == Some(expected)
}

/// One node's tally, for the history line.
pub fn summary(n: &NodeAudit) -> String {
    if !n.error.is_empty() {
        return format!("not audited: {}", n.error);
    }
    format!(
        "{} checked, {} ok, {} missing, {} wrong",
        n.checked,
        n.ok,
        n.missing.len(),
        n.wrong.len()
    )
}
