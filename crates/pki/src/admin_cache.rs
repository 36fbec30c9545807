//! Admin certificate chains already verified, so that each approval costs one signature
//! check rather than a chain walk (the TEE core's verification unit and the cloud server
//! both check every approval).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::{PkiError, TrustRoot, VerifiedAdmin};

/// Verified admin chains by (certificate, CA certificate). Entries are re-checked against
/// their validity window on every use; the Root they were verified against never changes for
/// one cache, so nothing else can invalidate them.
#[derive(Default)]
pub struct AdminCache {
    verified: HashMap<[u8; 32], VerifiedAdmin>,
}

impl AdminCache {
    /// Most cached chains; the cache is emptied when full (admins are few).
    pub const CAPACITY: usize = 4096;

    /// The admin certificate `cert` issued by `ca`, verified against `root` (once) and valid
    /// at `now`.
    pub fn verify(
        &mut self,
        root: &TrustRoot,
        cert: &[u8],
        ca: &[u8],
        now: u64,
    ) -> Result<&VerifiedAdmin, PkiError> {
        let mut h = Sha256::new();
        h.update((cert.len() as u32).to_be_bytes());
        h.update(cert);
        h.update(ca);
        let key: [u8; 32] = h.finalize().into();
        if !self.verified.contains_key(&key) {
            let v = root.verify_admin(cert, ca, now)?;
            if self.verified.len() >= Self::CAPACITY {
                self.verified.clear();
            }
            self.verified.insert(key, v);
        }
        let v = &self.verified[&key];
        if !v.valid_at(now) {
            return Err(PkiError::NotValidNow {
                what: "admin",
                reason: format!("not valid at {now}"),
            });
        }
        Ok(v)
    }
}
