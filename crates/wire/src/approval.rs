//! Admin approvals: what is attached to a request, the exact bytes an admin signs, and how
//! approvals are counted ([`verify_approvals`]).
//!
//! An approval is an admin's ECDSA P-256 signature over the canonical encoding of the exact
//! action (cluster, request id, expiry, and what is done with which key). The TEE core's
//! verification unit checks approvals against this encoder, and the admin tooling and the
//! cloud server produce them with it, so every side agrees byte for byte.
//!
//! An admin whose certified key is a WebAuthn passkey signs through the browser instead: the
//! approval is then an assertion whose challenge is the message's SHA-256
//! ([`custos_pki::webauthn`]); [`check_signature`] tells the two apart by the certificate.

use serde::{Deserialize, Serialize};

use crate::governance::GovChange;
use crate::policy::KeyPolicy;
use crate::protocol::RequestMeta;

mod count;

pub use count::{check_signature, verify_approvals, ApprovalTime, Approvers, Counted, PasskeyUse};

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
    /// ECDSA P-256 signature (DER): over [`Action::message`] for a key-file admin; over
    /// `authenticatorData || SHA-256(clientDataJSON)` of [`Approval::webauthn`] for a passkey.
    pub signature: Vec<u8>,
    /// The signed parts of a passkey's assertion; present exactly when the admin certificate
    /// certifies a passkey.
    pub webauthn: Option<PasskeyAssertion>,
}

impl Approval {
    /// `signer`'s approval of `message` with its key file (or HSM key): a plain signature.
    pub fn by_key_file(
        signer: &custos_pki::AdminSigner,
        message: &[u8],
    ) -> Result<Self, custos_pki::PkiError> {
        Ok(Approval {
            admin_cert: signer.cert_der.clone(),
            admin_ca: signer.admin_ca_der.clone(),
            signature: signer.sign(message)?,
            webauthn: None,
        })
    }
}

/// What a browser returns for `navigator.credentials.get` besides the signature
/// (`AuthenticatorAssertionResponse`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PasskeyAssertion {
    /// `authenticatorData`: RP id hash, flags, signature counter (at most
    /// [`custos_pki::webauthn::MAX_AUTHENTICATOR_DATA`] bytes).
    pub authenticator_data: Vec<u8>,
    /// `clientDataJSON` (at most [`custos_pki::webauthn::MAX_CLIENT_DATA`] bytes).
    pub client_data_json: Vec<u8>,
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
    /// Apply `change` as entry `version` of the cluster's governance log, after the entry
    /// whose hash is `prev`. Its tag names the kind of change (`gov-genesis`, `gov-admit`,
    /// `gov-remove`, `gov-revoke`, `gov-set-governors`).
    Governance {
        /// Position in the log.
        version: u64,
        /// Hash of the entry before it (zero for the genesis).
        prev: &'a [u8; 32],
        /// The change.
        change: &'a GovChange,
    },
    /// Generate a new wallet whose approver group and quorum are `policy`, on the node whose
    /// device key fingerprint is `executor` only: failover to another node can never make a
    /// second wallet from the same approvals. The creating quorum is `policy`'s own.
    CreateGroupWallet {
        /// Approver group, quorum and rules of the new key.
        policy: &'a KeyPolicy,
        /// SHA-256 of the executing node's certified device key (its member id).
        executor: &'a [u8; 32],
    },
    /// Replace the policy of `key_id`, whose current policy hashes to `prev`, by `policy`.
    /// Scoped to the cluster, or [`THRESHOLD_SCOPE`] for threshold keys.
    SetKeyPolicy {
        /// The key (wallet root public key, or joint public key).
        key_id: &'a [u8],
        /// [`KeyPolicy::hash`] of the policy replaced.
        prev: &'a [u8; 32],
        /// The new policy.
        policy: &'a KeyPolicy,
    },
    /// Create a `threshold`-of-n key by distributed key generation between `clusters`
    /// (cluster i holds share i), approved by and for the approver group of `policy`, run by
    /// the node whose device key fingerprint is `executors[i]` for share i and by no other:
    /// a retry on another node of a cluster can never make a second key from the same
    /// approvals. Spans clusters like [`Action::ThresholdSign`]: its message is made with
    /// [`THRESHOLD_SCOPE`] as cluster.
    CreateGroupThresholdKey {
        /// Approver group, quorum and rules of the new key.
        policy: &'a KeyPolicy,
        /// Signers the key needs (t).
        threshold: u16,
        /// Whether the key has a chain code (HD derivation).
        hd: bool,
        /// Cluster of each share, by share index.
        clusters: &'a [String],
        /// SHA-256 of the certified device key of the node executing each share, by share
        /// index.
        executors: &'a [[u8; 32]],
    },
    /// Import the existing wallet `key_id` under the approver group and quorum of `policy`,
    /// approved by that group (the successor of [`Action::ImportWallet`], whose wallet had no
    /// group). The seed is sealed to one node's device key, so one node makes it.
    ImportGroupWallet {
        /// Approver group, quorum and rules of the imported key.
        policy: &'a KeyPolicy,
        /// Root public key of the wallet.
        key_id: &'a [u8],
    },
    /// Sign the transaction whose intent (`custos-tx`: what it pays, to whom, the fee) hashes
    /// to `intent_hash`, with the keys of `key_id` its inputs name.
    SignTransaction {
        /// Root public key of the wallet.
        key_id: &'a [u8],
        /// `custos_tx::Intent::hash` of the transaction.
        intent_hash: &'a [u8; 32],
    },
}

use crate::field::put;
use crate::policy::put_fingerprints;

/// Appends a cluster list: its length (u32 BE), then each name.
fn put_clusters(out: &mut Vec<u8>, clusters: &[String]) {
    put(out, &(clusters.len() as u32).to_be_bytes());
    for c in clusters {
        put(out, c.as_bytes());
    }
}

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
            Action::Governance { change, .. } => change.tag(),
            Action::SetKeyPolicy { .. } => b"set-key-policy",
            Action::CreateGroupWallet { .. } => b"create-wallet-v2",
            Action::CreateGroupThresholdKey { .. } => b"create-threshold-key-v2",
            Action::ImportGroupWallet { .. } => b"import-wallet-v2",
            Action::SignTransaction { .. } => b"sign-transaction",
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
                put_clusters(&mut out, clusters);
            }
            Action::CreateGroupThresholdKey {
                policy,
                threshold,
                hd,
                clusters,
                executors,
            } => {
                put(&mut out, &policy.encode());
                put(&mut out, &threshold.to_be_bytes());
                put(&mut out, &[u8::from(*hd)]);
                put_clusters(&mut out, clusters);
                // Counted on its own (not zipped with the clusters), so lists of different
                // lengths still encode unambiguously; the TEE refuses them anyway.
                put_fingerprints(&mut out, executors);
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
            Action::CreateGroupWallet { policy, executor } => {
                put(&mut out, &policy.encode());
                put(&mut out, &executor[..]);
            }
            Action::ImportGroupWallet { policy, key_id } => {
                put(&mut out, &policy.encode());
                put(&mut out, key_id);
            }
            Action::SignTransaction {
                key_id,
                intent_hash,
            } => {
                put(&mut out, key_id);
                put(&mut out, &intent_hash[..]);
            }
            Action::Governance {
                version,
                prev,
                change,
            } => {
                put(&mut out, &version.to_be_bytes());
                put(&mut out, &prev[..]);
                out.extend_from_slice(&change.encode());
            }
            Action::SetKeyPolicy {
                key_id,
                prev,
                policy,
            } => {
                put(&mut out, key_id);
                put(&mut out, &prev[..]);
                put(&mut out, &policy.encode());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::GovChange;
    use crate::policy::{KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};

    #[test]
    fn governance_and_policy_messages_bind_every_term() {
        let meta = RequestMeta {
            request_id: [7; 16],
            expires_at: 1000,
        };
        let gov = |version, prev: &[u8; 32], change: &GovChange, cluster: &str| {
            Action::Governance {
                version,
                prev,
                change,
            }
            .message(cluster, &meta)
        };
        let set = |governors: Vec<[u8; 32]>, quorum| GovChange::SetGovernors { governors, quorum };
        let base_change = set(vec![[1; 32], [2; 32]], 1);
        let revoke = GovChange::Revoke {
            admins: vec![[1; 32], [2; 32]],
            devices: vec![],
            reason: String::new(),
        };
        let base = gov(3, &[9; 32], &base_change, "dc1");
        let mut seen = vec![base.clone()];
        for other in [
            gov(4, &[9; 32], &base_change, "dc1"),
            gov(3, &[8; 32], &base_change, "dc1"),
            gov(3, &[9; 32], &base_change, "dc2"),
            gov(3, &[9; 32], &set(vec![[1; 32], [2; 32]], 2), "dc1"),
            gov(3, &[9; 32], &set(vec![[1; 32]], 1), "dc1"),
            gov(3, &[9; 32], &set(vec![[1; 32], [3; 32]], 1), "dc1"),
            // Same fingerprints under another kind of change: the tag tells them apart.
            gov(3, &[9; 32], &revoke, "dc1"),
        ] {
            assert!(!seen.contains(&other));
            seen.push(other);
        }

        let policy = KeyPolicy {
            version: 2,
            group: vec![[1; 32], [2; 32]],
            quorum: 1,
            rules: vec![Rule {
                tag: RULE_CLUSTER_ANCHORS,
                body: vec![5; 32],
            }],
        };
        let msg = |key_id: &[u8], prev: &[u8; 32], policy: &KeyPolicy| {
            Action::SetKeyPolicy {
                key_id,
                prev,
                policy,
            }
            .message("dc1", &meta)
        };
        let with = |f: &dyn Fn(&mut KeyPolicy)| {
            let mut p = policy.clone();
            f(&mut p);
            p
        };
        let base = msg(&[3; 33], &[4; 32], &policy);
        let mut seen = vec![base];
        for other in [
            msg(&[3; 32], &[4; 32], &policy),
            msg(&[3; 33], &[5; 32], &policy),
            msg(&[3; 33], &[4; 32], &with(&|p| p.version = 3)),
            msg(&[3; 33], &[4; 32], &with(&|p| p.quorum = 2)),
            msg(&[3; 33], &[4; 32], &with(&|p| p.group[1] = [6; 32])),
            msg(
                &[3; 33],
                &[4; 32],
                &with(&|p| p.rules[0].body = vec![6; 32]),
            ),
            msg(&[3; 33], &[4; 32], &with(&|p| p.rules.clear())),
        ] {
            assert!(!seen.contains(&other));
            seen.push(other);
        }
    }

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

    #[test]
    fn group_key_generation_messages_bind_every_term() {
        let meta = RequestMeta {
            request_id: [7; 16],
            expires_at: 1000,
        };
        let three: Vec<String> = ["dc1", "dc2", "dc3"].map(String::from).to_vec();
        let executors = [[0xe1; 32], [0xe2; 32], [0xe3; 32]];
        let policy = KeyPolicy {
            version: 1,
            group: vec![[1; 32], [2; 32]],
            quorum: 2,
            rules: vec![],
        };
        let message = |policy: &KeyPolicy, threshold, hd, clusters: &[String], executors| {
            Action::CreateGroupThresholdKey {
                policy,
                threshold,
                hd,
                clusters,
                executors,
            }
            .message(THRESHOLD_SCOPE, &meta)
        };
        let with = |f: &dyn Fn(&mut KeyPolicy)| {
            let mut p = policy.clone();
            f(&mut p);
            p
        };
        let base = message(&policy, 2, true, &three, &executors);
        let swapped: Vec<String> = ["dc2", "dc1", "dc3"].map(String::from).to_vec();
        let mut executors_swapped = executors;
        executors_swapped.swap(0, 1);
        let mut substituted = executors;
        substituted[2] = [0xe4; 32];
        let mut seen = vec![base];
        for other in [
            message(&with(&|p| p.quorum = 1), 2, true, &three, &executors),
            message(
                &with(&|p| p.group[1] = [3; 32]),
                2,
                true,
                &three,
                &executors,
            ),
            message(&with(&|p| p.version = 2), 2, true, &three, &executors),
            message(
                &with(&|p| {
                    p.rules.push(Rule {
                        tag: RULE_CLUSTER_ANCHORS,
                        body: vec![5; 96],
                    })
                }),
                2,
                true,
                &three,
                &executors,
            ),
            message(&policy, 3, true, &three, &executors),
            message(&policy, 2, false, &three, &executors),
            message(&policy, 2, true, &swapped, &executors),
            message(&policy, 2, true, &three, &executors_swapped),
            message(&policy, 2, true, &three, &substituted),
            message(&policy, 2, true, &three, &executors[..2]),
            message(&policy, 2, true, &three[..2], &executors[..2]),
            // The legacy action over the same terms: its tag tells them apart.
            Action::CreateThresholdKey {
                quorum: 2,
                threshold: 2,
                hd: true,
                clusters: &three,
            }
            .message(THRESHOLD_SCOPE, &meta),
            Action::CreateGroupThresholdKey {
                policy: &policy,
                threshold: 2,
                hd: true,
                clusters: &three,
                executors: &executors,
            }
            .message("dc1", &meta),
        ] {
            assert!(!seen.contains(&other));
            seen.push(other);
        }
    }
}
