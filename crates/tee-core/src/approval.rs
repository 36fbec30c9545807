//! Verification unit (patent FIG. 3): admin approvals and quorum.
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action (cluster, request id, expiry, and what is done with which key). The same encoder is
//! used by the admin tooling to produce approvals, so both sides always agree byte for byte.

use std::collections::HashMap;

use custos_pki::{PkiError, TrustRoot, VerifiedAdmin};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::{ApprovalFault, RequestMeta, TeeError, MAX_APPROVALS};

/// Domain separation tag of approval messages.
pub const APPROVAL_DOMAIN: &[u8] = b"CUSTOS-APPROVAL-V1\0";

/// The "cluster" of approval messages for actions that span clusters.
pub const THRESHOLD_SCOPE: &str = "*threshold*";

/// Longest validity window an approval may ask for.
pub const MAX_APPROVAL_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// One admin's approval, as attached to a request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    /// The admin certificate, DER.
    pub admin_cert: Vec<u8>,
    /// The Admin CA certificate that issued it, DER.
    pub admin_ca: Vec<u8>,
    /// ECDSA P-256 signature (DER) over [`Action::message`].
    pub signature: Vec<u8>,
}

/// The action an approval authorizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Generate a new wallet with this quorum.
    CreateWallet {
        /// Quorum of the new key.
        quorum: u8,
    },
    /// Import the wallet whose root public key is `key_id`.
    ImportWallet {
        /// Quorum of the new key.
        quorum: u8,
        /// Root public key of the imported seed.
        key_id: &'a [u8],
    },
    /// Import share `share_index` of the dealt threshold key `key_id`.
    ImportThresholdKey {
        /// Quorum of the key.
        quorum: u8,
        /// Joint public key.
        key_id: &'a [u8],
        /// Share index.
        share_index: u16,
    },
    /// Sign `digest` with the child at `path` of the threshold key `key_id`, by any t of its
    /// clusters (the cloud server picks them; every attempt needs all of them to agree).
    /// The action spans clusters: its message is made with [`THRESHOLD_SCOPE`] as cluster.
    ThresholdSign {
        /// Joint public key.
        key_id: &'a [u8],
        /// BIP-32 path (non-hardened).
        path: &'a [u32],
        /// 32-byte digest.
        digest: &'a [u8; 32],
    },
    /// Create a `threshold`-of-n key by distributed key generation between `clusters`
    /// (cluster i holds share i), with this quorum for its use. Every participating TEE
    /// checks it. Spans clusters like [`Action::ThresholdSign`]: its message is made with
    /// [`THRESHOLD_SCOPE`] as cluster.
    CreateThresholdKey {
        /// Quorum of the new key.
        quorum: u8,
        /// Signers the key needs (t).
        threshold: u16,
        /// Whether the key has a chain code (HD derivation).
        hd: bool,
        /// Cluster of each share, by share index.
        clusters: &'a [String],
    },
    /// Sign `digest` with the child of `key_id` at `path`.
    Sign {
        /// Root public key.
        key_id: &'a [u8],
        /// BIP-32 path.
        path: &'a [u32],
        /// 32-byte digest.
        digest: &'a [u8; 32],
    },
}

use crate::put_field as put;

impl Action<'_> {
    /// Canonical bytes an admin signs: domain, action tag, then length-prefixed fields in a
    /// fixed order. Distinct actions can never encode to the same bytes.
    pub fn message(&self, cluster: &str, meta: &RequestMeta) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(APPROVAL_DOMAIN);
        let tag: &[u8] = match self {
            Action::CreateWallet { .. } => b"create-wallet",
            Action::ImportWallet { .. } => b"import-wallet",
            Action::Sign { .. } => b"sign",
            Action::ImportThresholdKey { .. } => b"import-threshold-key",
            Action::ThresholdSign { .. } => b"threshold-sign",
            Action::CreateThresholdKey { .. } => b"create-threshold-key",
        };
        put(&mut out, tag);
        put(&mut out, cluster.as_bytes());
        put(&mut out, &meta.request_id);
        put(&mut out, &meta.expires_at.to_be_bytes());
        match self {
            Action::CreateWallet { quorum } => put(&mut out, &[*quorum]),
            Action::ImportWallet { quorum, key_id } => {
                put(&mut out, &[*quorum]);
                put(&mut out, key_id);
            }
            Action::ImportThresholdKey {
                quorum,
                key_id,
                share_index,
            } => {
                put(&mut out, &[*quorum]);
                put(&mut out, key_id);
                put(&mut out, &share_index.to_be_bytes());
            }
            Action::CreateThresholdKey {
                quorum,
                threshold,
                hd,
                clusters,
            } => {
                put(&mut out, &[*quorum]);
                put(&mut out, &threshold.to_be_bytes());
                put(&mut out, &[u8::from(*hd)]);
                put(&mut out, &(clusters.len() as u32).to_be_bytes());
                for c in *clusters {
                    put(&mut out, c.as_bytes());
                }
            }
            Action::Sign {
                key_id,
                path,
                digest,
            }
            | Action::ThresholdSign {
                key_id,
                path,
                digest,
            } => {
                put(&mut out, key_id);
                let p: Vec<u8> = path.iter().flat_map(|i| i.to_be_bytes()).collect();
                put(&mut out, &p);
                put(&mut out, &digest[..]);
            }
        }
        out
    }
}

fn fault_of(e: &PkiError) -> ApprovalFault {
    match e {
        PkiError::NotValidNow { .. } => ApprovalFault::CertificateNotValidNow,
        PkiError::BadSignature(_) => ApprovalFault::BadSignature,
        PkiError::Malformed { .. } => ApprovalFault::Malformed,
        _ => ApprovalFault::UntrustedCertificate,
    }
}

/// Admin certificate chains already verified, so that each approval costs one signature
/// check rather than a chain walk. Entries are re-checked against their validity window on
/// every use; the pinned Root never changes, so nothing else can invalidate them.
#[derive(Default)]
pub struct AdminCache {
    verified: HashMap<[u8; 32], VerifiedAdmin>,
}

impl AdminCache {
    /// Most cached chains; the cache is emptied when full (admins are few).
    pub const CAPACITY: usize = 4096;

    fn verify(
        &mut self,
        root: &TrustRoot,
        a: &Approval,
        now: u64,
    ) -> Result<&VerifiedAdmin, PkiError> {
        let mut h = Sha256::new();
        h.update((a.admin_cert.len() as u32).to_be_bytes());
        h.update(&a.admin_cert);
        h.update(&a.admin_ca);
        let key: [u8; 32] = h.finalize().into();
        if !self.verified.contains_key(&key) {
            let v = root.verify_admin(&a.admin_cert, &a.admin_ca, now)?;
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

/// Checks expiry, every approval, and that at least `required` distinct admins approved.
/// Any invalid approval refuses the whole request, so a mistake is never silently outvoted.
#[allow(clippy::too_many_arguments)]
pub fn check_quorum(
    cache: &mut AdminCache,
    root: &TrustRoot,
    cluster: &str,
    now: u64,
    meta: &RequestMeta,
    action: &Action<'_>,
    approvals: &[Approval],
    required: u8,
) -> Result<Vec<String>, TeeError> {
    if now > meta.expires_at {
        return Err(TeeError::RequestExpired {
            expires_at: meta.expires_at,
            now,
        });
    }
    if meta.expires_at > now.saturating_add(MAX_APPROVAL_LIFETIME_SECS) {
        return Err(TeeError::InvalidRequest(format!(
            "expiry {} is more than {MAX_APPROVAL_LIFETIME_SECS} s ahead",
            meta.expires_at
        )));
    }
    if approvals.is_empty() {
        return Err(TeeError::ApprovalMissing);
    }
    if approvals.len() > MAX_APPROVALS {
        return Err(TeeError::InvalidRequest(format!(
            "{} approvals, at most {MAX_APPROVALS}",
            approvals.len()
        )));
    }
    let message = action.message(cluster, meta);
    let mut admins: Vec<(Vec<u8>, String)> = Vec::new();
    for (index, a) in approvals.iter().enumerate() {
        let id = cache
            .verify(root, a, now)
            .and_then(|v| {
                v.verify_signature(&message, &a.signature)
                    .map(|_| v.identity.clone())
            })
            .map_err(|e| TeeError::ApprovalRejected {
                index: index as u32,
                fault: fault_of(&e),
                detail: e.to_string(),
            })?;
        if !admins.iter().any(|(s, _)| *s == id.subject) {
            admins.push((id.subject, id.name));
        }
    }
    let approved = admins.len().min(u8::MAX as usize) as u8;
    if approved < required.max(1) {
        return Err(TeeError::QuorumNotMet { required, approved });
    }
    Ok(admins.into_iter().map(|(_, n)| n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_creation_messages_bind_every_term() {
        let meta = RequestMeta {
            request_id: [7; 16],
            expires_at: 1000,
        };
        let three: Vec<String> = ["dc1", "dc2", "dc3"].map(String::from).to_vec();
        let message = |quorum, threshold, hd, clusters: &[String]| {
            Action::CreateThresholdKey {
                quorum,
                threshold,
                hd,
                clusters,
            }
            .message(THRESHOLD_SCOPE, &meta)
        };
        let base = message(2, 2, true, &three);
        let swapped: Vec<String> = ["dc2", "dc1", "dc3"].map(String::from).to_vec();
        let joined: Vec<String> = ["dc1", "dc2dc3"].map(String::from).to_vec();
        for other in [
            message(1, 2, true, &three),
            message(2, 3, true, &three),
            message(2, 2, false, &three),
            message(2, 2, true, &swapped),
            message(2, 2, true, &joined),
            message(2, 2, true, &three[..2]),
            Action::CreateWallet { quorum: 2 }.message(THRESHOLD_SCOPE, &meta),
            Action::CreateThresholdKey {
                quorum: 2,
                threshold: 2,
                hd: true,
                clusters: &three,
            }
            .message("dc1", &meta),
        ] {
            assert_ne!(other, base);
        }
    }
}
