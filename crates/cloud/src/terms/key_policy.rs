//! The terms of a `set_key_policy` request: replace a wallet's approver group (issue 12,
//! item 3). The request's quorum is the quorum of the group **in force**, whose admins
//! approve; the new group counts only afterwards.
//!
//! Stored as `{"kind":"set_key_policy","root_id":"<33 bytes hex>","current_version":N,
//! "current_group":["<32 bytes hex>",…],"prev":"<32 bytes hex>","version":N+1,
//! "group":["<32 bytes hex>",…],"quorum":M}`: the policy in force when the request was made
//! (named by its hash `prev` in the approval message) and the new one.

use custos_cloud_api::key_policy::{change_view, policies};
use custos_cloud_api::KeyPolicyChange;
use custos_wire::policy::KeyPolicy;
use serde::{Deserialize, Serialize};

use super::KeyId;

/// A wallet's approver group change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTerms {
    /// The wallet.
    #[serde(with = "super::hex_bytes")]
    pub root_id: KeyId,
    /// Version of the policy in force when the request was made (0: a legacy wallet).
    pub current_version: u32,
    /// Its group (empty for a legacy wallet), sorted.
    #[serde(with = "super::hex_list")]
    pub current_group: Vec<[u8; 32]>,
    /// Its hash: what the TEE compares with the policy it holds.
    #[serde(with = "super::hex_bytes")]
    pub prev: [u8; 32],
    /// The new policy's version (`current_version + 1`).
    pub version: u32,
    /// The new group, sorted and distinct.
    #[serde(with = "super::hex_list")]
    pub group: Vec<[u8; 32]>,
    /// The new quorum.
    pub quorum: u8,
}

impl PolicyTerms {
    /// The terms replacing `current` (of wallet `root_id`) by `new`.
    pub fn new(root_id: KeyId, current: &KeyPolicy, new: &KeyPolicy) -> Self {
        PolicyTerms {
            root_id,
            current_version: current.version,
            current_group: current.group.clone(),
            prev: current.hash(),
            version: new.version,
            group: new.group.clone(),
            quorum: new.quorum,
        }
    }

    /// The new policy, as approved and sent.
    pub fn policy(&self) -> KeyPolicy {
        KeyPolicy {
            version: self.version,
            group: self.group.clone(),
            quorum: self.quorum,
            rules: Vec::new(),
        }
    }

    /// The change as the API shows it, for a request needing `current_quorum` approvals.
    pub fn view(&self, current_quorum: u8) -> KeyPolicyChange {
        let current = if self.current_version == 0 {
            KeyPolicy::legacy(current_quorum)
        } else {
            KeyPolicy {
                version: self.current_version,
                group: self.current_group.clone(),
                quorum: current_quorum,
                rules: Vec::new(),
            }
        };
        let mut view = change_view(&current, &self.policy());
        // The stored hash, not the recomputed one: a row whose hash disagrees with its group
        // is refused by `check` (the same rebuild approvers run).
        view.prev = hex::encode(self.prev);
        view
    }

    /// Checks with the approvers' own rebuild: the group in force hashes to `prev`, the new
    /// policy is valid and one version later.
    pub fn check(&self, current_quorum: u8) -> Result<(), String> {
        policies(&self.view(current_quorum), current_quorum).map(|_| ())
    }
}
