//! The verified ECDSA signature a threshold session or [`combine`](crate::combine) outputs.

use std::sync::OnceLock;

use bitcoin::secp256k1::{
    ecdsa::{RecoverableSignature, RecoveryId},
    Message, PublicKey, Secp256k1, VerifyOnly,
};
use serde::{Deserialize, Serialize};

use crate::PublicError;

/// A verified secp256k1 ECDSA signature with its recovery id.
///
/// `s` is low-s (≤ n/2), as the library produces it; `v` ∈ {0, 1} recovers `public_key` from
/// (digest, r, s); `public_key` is the key that signed (the derived child key for a path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// r, big-endian.
    pub r: [u8; 32],
    /// s, big-endian, low-s.
    pub s: [u8; 32],
    /// Recovery id (0 or 1).
    pub v: u8,
    /// The signing public key, compressed SEC1 (33 bytes; serialized as hex).
    #[serde(with = "hex33")]
    pub public_key: [u8; 33],
}

impl Signature {
    /// r ‖ s (64 bytes, "compact").
    pub fn to_compact(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

fn secp() -> &'static Secp256k1<VerifyOnly> {
    static CTX: OnceLock<Secp256k1<VerifyOnly>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::verification_only)
}

/// Checks r ‖ s (`rs`) against `public_key` (compressed SEC1) and `digest` with libsecp256k1
/// (which also rejects high-s) and finds the recovery id by trial.
pub fn verify_compact(
    rs: &[u8; 64],
    public_key: &[u8; 33],
    digest: &[u8; 32],
) -> Result<Signature, PublicError> {
    let invalid = PublicError::InvalidSignature;
    let pk = PublicKey::from_slice(public_key).map_err(|e| invalid(format!("public key: {e}")))?;
    let msg = Message::from_digest(*digest);
    let plain = bitcoin::secp256k1::ecdsa::Signature::from_compact(rs)
        .map_err(|e| invalid(format!("encoding: {e}")))?;
    secp()
        .verify_ecdsa(&msg, &plain, &pk)
        .map_err(|e| invalid(format!("verification: {e}")))?;
    for v in 0..2 {
        let id = RecoveryId::from_i32(v).expect("0 and 1 are recovery ids");
        let Ok(rsig) = RecoverableSignature::from_compact(rs, id) else {
            continue;
        };
        if secp().recover_ecdsa(&msg, &rsig).ok() == Some(pk) {
            let mut r = [0u8; 32];
            let mut s = [0u8; 32];
            r.copy_from_slice(&rs[..32]);
            s.copy_from_slice(&rs[32..]);
            return Ok(Signature {
                r,
                s,
                v: v as u8,
                public_key: *public_key,
            });
        }
    }
    Err(invalid("no recovery id recovers the public key".into()))
}

mod hex33 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 33], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 33], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 33];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
