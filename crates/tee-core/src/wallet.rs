//! Key management unit for B keys (BIP-32 root seeds, patent FIG. 5): sealed record format,
//! derivation and secp256k1 signing through libsecp256k1.

use std::sync::{Mutex, PoisonError};

use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::secp256k1::{All, Message, Secp256k1};
use zeroize::Zeroizing;

use custos_wire::import::master_key;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{EcdsaSignature, KeyInfo, Origin, TeeError, MAX_PATH_DEPTH};

/// A wallet sealed before keys carried their approver group: `[1, quorum, origin,
/// created_at (8), seed_len, seed]`.
const RECORD_V1: u8 = 1;
/// A wallet with its approver group: `[2, origin, created_at (8), policy_len (u32),
/// KeyPolicy::encode, seed_len, seed]`. Key transfers carry the same record, so the group
/// travels with the key.
const RECORD_V2: u8 = 2;

/// A wallet held by the TEE. The seed and master private key are erased on drop.
pub struct Wallet {
    seed: Zeroizing<Vec<u8>>,
    master: Xpriv,
    /// Public facts.
    pub info: KeyInfo,
    /// Platform time of creation (Unix seconds).
    pub created_at: u64,
    /// Who approves its use, fixed at creation (`None`: a key sealed before groups existed,
    /// approved by any `quorum` admins, or by the cluster's governors once governed).
    pub policy: Option<KeyPolicy>,
    /// The parent of the last signed path and its extended private key: requests of one
    /// account differ only in the last step, so the next sign request derives one step.
    parent: Mutex<Option<(Vec<u32>, Xpriv)>>,
}

impl Drop for Wallet {
    fn drop(&mut self) {
        self.master.private_key.non_secure_erase();
        let parent = self
            .parent
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, parent)) = parent {
            parent.private_key.non_secure_erase();
        }
    }
}

fn path_of(path: &[u32]) -> Result<Vec<ChildNumber>, TeeError> {
    if path.len() > MAX_PATH_DEPTH {
        return Err(TeeError::InvalidPath(format!(
            "{} levels, at most {MAX_PATH_DEPTH}",
            path.len()
        )));
    }
    Ok(path.iter().map(|&i| ChildNumber::from(i)).collect())
}

/// Hex of a key id, as used in record names and messages.
pub fn key_hex(key_id: &[u8]) -> String {
    hex::encode(key_id)
}

impl Wallet {
    /// Builds a wallet from a BIP-32 seed (16 to 64 bytes).
    pub fn from_seed(
        secp: &Secp256k1<All>,
        seed: Zeroizing<Vec<u8>>,
        quorum: u8,
        origin: Origin,
        created_at: u64,
    ) -> Result<Self, TeeError> {
        let master = master_key(&seed)?;
        let xpub = Xpub::from_priv(secp, &master);
        let info = KeyInfo {
            key_id: xpub.public_key.serialize().to_vec(),
            xpub: xpub.to_string(),
            quorum,
            origin,
        };
        Ok(Wallet {
            seed,
            master,
            info,
            created_at,
            policy: None,
            parent: Mutex::new(None),
        })
    }

    /// The same wallet governed by `policy` (its quorum becomes the policy's).
    pub fn with_policy(mut self, policy: KeyPolicy) -> Self {
        self.set_policy(policy);
        self
    }

    /// Puts `policy` in force (its quorum becomes the wallet's): only once its record is
    /// durable.
    pub fn set_policy(&mut self, policy: KeyPolicy) {
        self.info.quorum = policy.quorum;
        self.policy = Some(policy);
    }

    /// Sealed record body (the version-2 format when the wallet has a policy).
    pub fn to_record(&self) -> Zeroizing<Vec<u8>> {
        self.record_under(self.policy.as_ref())
    }

    /// The record of this wallet under `policy` instead of its own (a policy change is sealed
    /// before the wallet in memory takes it, so memory never holds what storage may lose).
    pub fn record_with(&self, policy: &KeyPolicy) -> Zeroizing<Vec<u8>> {
        self.record_under(Some(policy))
    }

    /// The policy in force: the wallet's own, or [`KeyPolicy::legacy`] of its quorum for a
    /// wallet sealed before policies existed (what a first change names as `prev`).
    pub fn current_policy(&self) -> KeyPolicy {
        self.policy
            .clone()
            .unwrap_or_else(|| KeyPolicy::legacy(self.info.quorum))
    }

    fn record_under(&self, policy: Option<&KeyPolicy>) -> Zeroizing<Vec<u8>> {
        let quorum = policy.map_or(self.info.quorum, |p| p.quorum);
        let policy = policy.map(KeyPolicy::encode);
        let extra = policy.as_ref().map_or(0, |p| 4 + p.len());
        let mut out = Zeroizing::new(Vec::with_capacity(12 + extra + self.seed.len()));
        let origin = match self.info.origin {
            Origin::Generated => 0,
            Origin::Imported => 1,
        };
        match &policy {
            None => out.extend_from_slice(&[RECORD_V1, quorum, origin]),
            Some(_) => out.extend_from_slice(&[RECORD_V2, origin]),
        }
        out.extend_from_slice(&self.created_at.to_be_bytes());
        if let Some(p) = &policy {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        out.push(self.seed.len() as u8);
        out.extend_from_slice(&self.seed);
        out
    }

    /// Parses a sealed record body and checks it matches the key id it is filed under.
    pub fn from_record(
        secp: &Secp256k1<All>,
        record: &[u8],
        expected_key: &[u8],
    ) -> Result<Self, String> {
        let truncated = || "unknown record version or truncated record".to_string();
        match record {
            [RECORD_V1, quorum, origin, rest @ ..] => {
                let (created, tail) = rest.split_at_checked(8).ok_or_else(truncated)?;
                Self::finish_record(secp, *quorum, *origin, created, tail, expected_key)
            }
            [RECORD_V2, origin, rest @ ..] => {
                let (created, after) = rest.split_at_checked(8).ok_or_else(truncated)?;
                let (len, after) = after.split_at_checked(4).ok_or_else(truncated)?;
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                let (p, tail) = after.split_at_checked(len).ok_or("truncated policy")?;
                let policy = KeyPolicy::decode(p).map_err(|e| format!("policy: {e}"))?;
                policy.validate().map_err(|e| format!("policy: {e}"))?;
                Self::finish_record(secp, policy.quorum, *origin, created, tail, expected_key)
                    .map(|w| w.with_policy(policy))
            }
            _ => Err(truncated()),
        }
    }

    /// The common part of both record versions: creation time (8 bytes) and `seed_len, seed`.
    fn finish_record(
        secp: &Secp256k1<All>,
        quorum: u8,
        origin: u8,
        created: &[u8],
        tail: &[u8],
        expected_key: &[u8],
    ) -> Result<Self, String> {
        let origin = match origin {
            0 => Origin::Generated,
            1 => Origin::Imported,
            o => return Err(format!("unknown origin {o}")),
        };
        let created_at = u64::from_be_bytes(created.try_into().expect("8 bytes"));
        let Some((&len, seed)) = tail.split_first() else {
            return Err("truncated record".into());
        };
        if seed.len() != usize::from(len) {
            return Err("seed length does not match record".into());
        }
        let seed = Zeroizing::new(seed.to_vec());
        let w =
            Wallet::from_seed(secp, seed, quorum, origin, created_at).map_err(|e| e.to_string())?;
        if w.info.key_id != expected_key {
            return Err("record holds a different key than its name".into());
        }
        Ok(w)
    }

    /// Extended public key at `path`.
    pub fn xpub_at(&self, secp: &Secp256k1<All>, path: &[u32]) -> Result<Xpub, TeeError> {
        let mut child = self
            .master
            .derive_priv(secp, &path_of(path)?)
            .map_err(|e| TeeError::InvalidPath(e.to_string()))?;
        let xpub = Xpub::from_priv(secp, &child);
        child.private_key.non_secure_erase();
        Ok(xpub)
    }

    /// Signs `digest` with the child key at `path`: RFC 6979 nonce, low-s, recovery id.
    pub fn sign(
        &self,
        secp: &Secp256k1<All>,
        path: &[u32],
        digest: &[u8; 32],
    ) -> Result<EcdsaSignature, TeeError> {
        self.with_child(secp, path, |key| sign_with(secp, key, digest))
    }

    /// The master key's BIP-32 fingerprint (what PSBT key origins name).
    pub fn fingerprint(&self, secp: &Secp256k1<All>) -> [u8; 4] {
        self.master.fingerprint(secp).to_bytes()
    }

    /// Runs `f` with the private key at `path`, erased afterwards.
    pub fn with_child<R>(
        &self,
        secp: &Secp256k1<All>,
        path: &[u32],
        f: impl FnOnce(&bitcoin::secp256k1::SecretKey) -> R,
    ) -> Result<R, TeeError> {
        let steps = path_of(path)?;
        let Some((last, parent_steps)) = steps.split_last() else {
            return Ok(f(&self.master.private_key));
        };
        let parent_path = &path[..parent_steps.len()];
        // The child is derived from the parent where it is kept, so that the only copies
        // of parent keys are the kept one and the one being replaced (both erased).
        let mut kept = self.parent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, old)) = kept.as_mut() {
            if p != parent_path {
                old.private_key.non_secure_erase();
                *kept = None;
            }
        }
        let (_, parent) = match &mut *kept {
            Some(k) => k,
            slot @ None => {
                let mut fresh = self
                    .master
                    .derive_priv(secp, &parent_steps)
                    .map_err(|e| TeeError::InvalidPath(e.to_string()))?;
                let k = slot.insert((parent_path.to_vec(), fresh));
                fresh.private_key.non_secure_erase();
                k
            }
        };
        let child = parent.derive_priv(secp, &[*last]);
        drop(kept);
        let mut child = child.map_err(|e| TeeError::InvalidPath(e.to_string()))?;
        let out = f(&child.private_key);
        child.private_key.non_secure_erase();
        Ok(out)
    }

    /// Signs `digest` with the root key m itself (audits).
    pub fn sign_root(&self, secp: &Secp256k1<All>, digest: &[u8; 32]) -> EcdsaSignature {
        sign_with(secp, &self.master.private_key, digest)
    }
}

fn sign_with(
    secp: &Secp256k1<All>,
    key: &bitcoin::secp256k1::SecretKey,
    digest: &[u8; 32],
) -> EcdsaSignature {
    let msg = Message::from_digest(*digest);
    let rsig = secp.sign_ecdsa_recoverable(&msg, key);
    let (recid, compact) = rsig.serialize_compact();
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&compact[..32]);
    s.copy_from_slice(&compact[32..]);
    EcdsaSignature {
        r,
        s,
        v: recid.to_i32() as u8,
        public_key: bitcoin::secp256k1::PublicKey::from_secret_key(secp, key)
            .serialize()
            .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept parent changes the cost of a signature, never the signature: RFC 6979
    /// makes them deterministic, so each must equal the one made with the child derived
    /// from the master along the whole path.
    #[test]
    fn signatures_with_a_kept_parent_are_those_of_the_full_derivation() {
        let secp = Secp256k1::new();
        let seed = Zeroizing::new(vec![9u8; 32]);
        let w = Wallet::from_seed(&secp, seed, 1, Origin::Generated, 0).unwrap();
        let digest = [0x42u8; 32];
        let h = 1u32 << 31;
        for path in [
            vec![0, 1],
            vec![0, 2],
            vec![1, 2],
            vec![0, 1],
            vec![],
            vec![7],
            vec![84 | h, h, h, 0, 5],
            vec![84 | h, h, h, 0, 6],
            vec![84 | h, h, h, 1, 6 | h],
        ] {
            let steps = path_of(&path).unwrap();
            let child = w.master.derive_priv(&secp, &steps).unwrap();
            let want = sign_with(&secp, &child.private_key, &digest);
            let got = w.sign(&secp, &path, &digest).unwrap();
            assert_eq!((got.r, got.s, got.v), (want.r, want.s, want.v), "{path:?}");
            assert_eq!(got.public_key, want.public_key, "{path:?}");
        }
        let too_deep = vec![0u32; MAX_PATH_DEPTH + 1];
        assert!(matches!(
            w.sign(&secp, &too_deep, &digest),
            Err(TeeError::InvalidPath(_))
        ));
    }
}
