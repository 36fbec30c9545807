//! What a request asks for: one [`Terms`] variant per request kind, holding parsed, typed
//! values. The REST handler builds it once; the approval message, the TEE request, the
//! summary and the API view's fields all come from it, and it is stored as one JSON column
//! (`requests.terms`, format below) that is checked again when read back.
//!
//! Stored format (JSON object, `kind` names the variant; byte strings are lower-case hex,
//! paths are BIP-32 text such as `m/44'/0'/0'/0/1`, cluster and node names plain strings):
//!
//! | kind | fields |
//! |---|---|
//! | `create_wallet` | `node` (absent, or the node an attempt's outcome became unknown on); made before approver groups, never executed now |
//! | `create_group_wallet` | `group` (admin key fingerprints, 32 bytes each, sorted), `executor_node`, `executor` (32 bytes), `rules` (postcard of the policy's transaction rules; absent when none) |
//! | `import_wallet` | `root_id` (33 bytes), `node`, `sealed` (postcard of the sealed seed), `group` (as `create_group_wallet`; absent for a legacy import) |
//! | `sign` | `root_id` (33 bytes), `path`, `digest` (32 bytes) |
//! | `import_threshold_key` | `node`, `bundle` (postcard of the dealer bundle) |
//! | `threshold_sign` | `key_id` (33 bytes), `path`, `digest` (32 bytes), `message` (bytes or null), `clusters` (names or null) |
//! | `create_threshold_key` | `threshold`, `hd`, `clusters` (names, share i to the i-th) |
//! | `create_group_threshold_key` | `threshold`, `hd`, `clusters`, `group` (as `create_group_wallet`), `executor_nodes` and `executors` (32 bytes each), by share index; `anchors` (32 bytes each, by share index; absent when not every cluster was governed at proposal) |
//! | `governance` | `version`, `prev` (32 bytes), `change` (postcard of the log change); see [`governance`] |
//! | `set_key_policy` | `root_id`, the group in force and the new one; a threshold key's also `clusters` and `anchors`; see [`key_policy`] |
//! | `sign_psbt` | `root_id` (33 bytes), `network` (`bitcoin`, `testnet`, `signet`, `regtest`), `psbt` (bytes), `intent_hash` (32 bytes), `intent` (the intent's JSON, as a TEE computed it; checked to hash to `intent_hash`), `node` (the velocity holder's node; absent without rolling window), `group` (the wallet's approver group when the request was made, as `create_group_wallet`; absent for a legacy wallet) |
//! | `threshold_sign_psbt` | `key_id` (33 bytes), `network`, `psbt`, `intent_hash`, `intent` (as `sign_psbt`, the intent computed by a TEE holding a share), `clusters` (names or null, as `threshold_sign`), `group` (the key's approver group when the request was made; absent for a legacy key), `velocity_share` and `node` (the share counting the key's window and its holder's node, which take part in every attempt; absent without window) |
//! | `sign_ethereum` | `root_id`, `path`, `payload` (postcard of the Ethereum payload), `intent_hash`, `intent`, `node`, `group` (as `sign_psbt`) |

use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::import::SealedImport;
use custos_wire::policy::{GroupTier, GroupTiers, KeyPolicy, Rule, MAX_GROUP};
use custos_wire::protocol::{format_path, EthPayload, Request, RequestMeta, ThresholdBundle};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use custos_cloud_api::approval::{new_threshold_policy, new_wallet_policy};
use custos_cloud_api::path::parse_path;
use custos_cloud_api::transaction::{checked_intent, wire_network};
pub use custos_cloud_api::KeyId;
use custos_cloud_api::{PolicyRules, RequestKind, RequestView, TransactionView, MAX_PSBT_BYTES};

pub mod governance;
pub mod key_policy;
pub use governance::GovTerms;
pub use key_policy::PolicyTerms;

/// The terms of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Terms {
    /// Generate a new wallet inside a TEE of the request's cluster, approved by any admin
    /// (made before approver groups existed). Only read back: such a request is refused at
    /// submission (`approval_format_changed`), never executed.
    CreateWallet {
        /// Set once an attempt's outcome became unknown on this node (its answer was lost
        /// after the request reached it): every later attempt goes there only, whose TEE
        /// answers the wallet it made, so that no other node makes a second one. Not part of
        /// what the admins approve.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Generate a new wallet whose approver group (and the row's quorum) is sealed with it,
    /// on one node only: the approvals name that node's device key, so no other node can
    /// ever make a wallet from them (`create-wallet-v2`).
    CreateGroupWallet {
        /// Admin key fingerprints, sorted and distinct, 1..=[`MAX_GROUP`].
        #[serde(with = "hex_list")]
        group: Vec<[u8; 32]>,
        /// The node that executes it (every attempt is pinned to it).
        executor_node: String,
        /// SHA-256 of that node's certified device key (SubjectPublicKeyInfo), as approved.
        #[serde(with = "hex_bytes")]
        executor: [u8; 32],
        /// The wallet's transaction rules (issue 14), sealed with it; empty: none.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        rules: Vec<Rule>,
    },
    /// Import a seed, sealed to one node's certified device key.
    ImportWallet {
        /// The seed's root public key.
        #[serde(with = "hex_bytes")]
        root_id: KeyId,
        /// The node the seed is sealed to (the call is pinned to it).
        node: String,
        /// The sealed seed.
        #[serde(with = "postcard_hex")]
        sealed: SealedImport,
        /// The wallet's approver group (as `create_group_wallet`); empty for a legacy
        /// import (no group, any admins approve; refused by a governed TEE).
        #[serde(default, with = "hex_list", skip_serializing_if = "Vec::is_empty")]
        group: Vec<[u8; 32]>,
        /// The wallet's transaction rules, sealed with it (as `create_group_wallet`'s; the
        /// sealed seed is bound to the policy they make). Empty: none (imports made before
        /// rules, or asking for raw digests).
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        rules: Vec<Rule>,
    },
    /// Sign a digest with a wallet's child key.
    Sign {
        /// The wallet.
        #[serde(with = "hex_bytes")]
        root_id: KeyId,
        /// BIP-32 path of the child.
        #[serde(with = "path_text")]
        path: Vec<u32>,
        /// The digest signed.
        #[serde(with = "hex_bytes")]
        digest: [u8; 32],
    },
    /// Import one share of a dealt threshold key; the bundle names the key, the share and
    /// its cluster.
    ImportThresholdKey {
        /// The node the bundle is sealed to (the call is pinned to it).
        node: String,
        /// The dealer's bundle.
        #[serde(with = "postcard_hex")]
        bundle: ThresholdBundle,
    },
    /// Sign with a threshold key's child, by t of its clusters.
    ThresholdSign {
        /// The threshold key.
        #[serde(with = "hex_bytes")]
        key_id: KeyId,
        /// BIP-32 path of the child (non-hardened).
        #[serde(with = "path_text")]
        path: Vec<u32>,
        /// The digest signed (SHA-256 of `message` when there is one).
        #[serde(with = "hex_bytes")]
        digest: [u8; 32],
        /// The full message, for a key without chain code (signed from a presignature).
        #[serde(with = "hex_opt")]
        message: Option<Vec<u8>>,
        /// The clusters the caller named, in order (else the server chooses).
        clusters: Option<Vec<String>>,
    },
    /// Create a threshold key by distributed key generation.
    CreateThresholdKey {
        /// Signers the key needs (t).
        threshold: u16,
        /// Whether the key gets a chain code.
        hd: bool,
        /// Cluster of each share, by share index.
        clusters: Vec<String>,
    },
    /// Create a threshold key by distributed key generation, sealed with its approver group
    /// (the row's quorum is the group's), each share made by one named node only: the
    /// approvals name each node's device key, so no attempt can ever run on another node
    /// and make a second key from them (`create-threshold-key-v2`).
    CreateGroupThresholdKey {
        /// Signers the key needs (t).
        threshold: u16,
        /// Whether the key gets a chain code.
        hd: bool,
        /// Cluster of each share, by share index.
        clusters: Vec<String>,
        /// Admin key fingerprints, sorted and distinct, 1..=[`MAX_GROUP`].
        #[serde(with = "hex_list")]
        group: Vec<[u8; 32]>,
        /// The node executing each share, by share index (every attempt runs on these).
        executor_nodes: Vec<String>,
        /// SHA-256 of each executing node's certified device key, by share index, as
        /// approved.
        #[serde(with = "fingerprint_list")]
        executors: Vec<[u8; 32]>,
        /// The genesis id of each share's cluster's governance log, by share index, sealed
        /// into the key's policy (`RULE_CLUSTER_ANCHORS`): each TEE then counts a co-signer
        /// of another cluster only as a current member of that log. Empty when some cluster
        /// had no log at proposal (and in rows stored before anchors): co-signers of other
        /// clusters are then checked by certificate only.
        #[serde(
            default,
            skip_serializing_if = "Vec::is_empty",
            with = "fingerprint_list"
        )]
        anchors: Vec<[u8; 32]>,
        /// The key's transaction rules, sealed with every share (as `create_group_wallet`'s).
        /// Empty: none (keys made before rules, or asking for raw digests).
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        rules: Vec<Rule>,
    },
    /// Append an entry to the request's cluster's governance log.
    Governance(GovTerms),
    /// Replace a wallet's or threshold key's approver group, approved by the group in force
    /// (the row's quorum is that group's).
    SetKeyPolicy(PolicyTerms),
    /// Sign a Bitcoin PSBT with a wallet: approvals sign the intent a TEE computed from it.
    SignPsbt {
        /// The wallet.
        #[serde(with = "hex_bytes")]
        root_id: KeyId,
        /// The network its addresses are written for (an API network name).
        network: String,
        /// The PSBT, binary.
        #[serde(with = "hex::serde")]
        psbt: Vec<u8>,
        /// What approvals sign.
        #[serde(with = "hex_bytes")]
        intent_hash: [u8; 32],
        /// The intent (`custos_tx::Intent` as JSON) a TEE of the wallet's cluster computed.
        intent: serde_json::Value,
        /// The velocity holder's node, when the wallet's limits have a rolling window: every
        /// attempt goes there (another node's TEE would refuse). Not part of what is approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The wallet's approver group when the request was made (the server counts only its
        /// admins; the TEE decides). Empty for a legacy wallet.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_list")]
        group: Vec<[u8; 32]>,
        /// The tiers of other groups the intent reaches: each group's approvals are needed
        /// besides the quorum of `group`. Not part of what is approved.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        tiers: Vec<GroupTier>,
    },
    /// Sign a Bitcoin PSBT with a threshold key's children, by t of its clusters (segwit v0
    /// inputs, one session per input): approvals sign the intent a TEE holding a share
    /// computed, and every participant checks the PSBT and its share's policy again.
    ThresholdSignPsbt {
        /// The threshold key (with a chain code).
        #[serde(with = "hex_bytes")]
        key_id: KeyId,
        /// As [`Terms::SignPsbt`]'s.
        network: String,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(with = "hex::serde")]
        psbt: Vec<u8>,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(with = "hex_bytes")]
        intent_hash: [u8; 32],
        /// As [`Terms::SignPsbt`]'s.
        intent: serde_json::Value,
        /// The clusters the caller named, in order (else the server chooses).
        clusters: Option<Vec<String>>,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_list")]
        group: Vec<[u8; 32]>,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        tiers: Vec<GroupTier>,
        /// With a rolling window: the key's velocity share, which takes part in every
        /// attempt, on `node` (its velocity holder's node). Not part of what is approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        velocity_share: Option<u16>,
        /// The velocity holder's node (with `velocity_share`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Sign an Ethereum transaction, personal message or typed data with a wallet's key:
    /// approvals sign the intent a TEE computed from it.
    SignEthereum {
        /// The wallet.
        #[serde(with = "hex_bytes")]
        root_id: KeyId,
        /// BIP-32 path of the signing key.
        #[serde(with = "path_text")]
        path: Vec<u32>,
        /// What is signed.
        #[serde(with = "postcard_hex")]
        payload: EthPayload,
        /// What approvals sign.
        #[serde(with = "hex_bytes")]
        intent_hash: [u8; 32],
        /// The intent (`custos_tx::Intent` as JSON) a TEE of the wallet's cluster computed.
        intent: serde_json::Value,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_list")]
        group: Vec<[u8; 32]>,
        /// As [`Terms::SignPsbt`]'s.
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "postcard_hex")]
        tiers: Vec<GroupTier>,
    },
}

impl Terms {
    /// The request kind these terms define.
    pub fn kind(&self) -> RequestKind {
        match self {
            Terms::CreateWallet { .. } | Terms::CreateGroupWallet { .. } => {
                RequestKind::CreateWallet
            }
            Terms::ImportWallet { .. } => RequestKind::ImportWallet,
            Terms::Sign { .. } => RequestKind::Sign,
            Terms::ImportThresholdKey { .. } => RequestKind::ImportThresholdKey,
            Terms::ThresholdSign { .. } => RequestKind::ThresholdSign,
            Terms::CreateThresholdKey { .. } | Terms::CreateGroupThresholdKey { .. } => {
                RequestKind::CreateThresholdKey
            }
            Terms::Governance(_) => RequestKind::Governance,
            Terms::SetKeyPolicy(_) => RequestKind::SetKeyPolicy,
            Terms::SignPsbt { .. } | Terms::ThresholdSignPsbt { .. } => RequestKind::SignPsbt,
            Terms::SignEthereum { .. } => RequestKind::SignEthereum,
        }
    }

    /// The wallet or threshold key the request names (none for the creations).
    pub fn key_id(&self) -> Option<&[u8]> {
        match self {
            Terms::ImportWallet { root_id, .. }
            | Terms::Sign { root_id, .. }
            | Terms::SignPsbt { root_id, .. }
            | Terms::SignEthereum { root_id, .. } => Some(root_id),
            Terms::SetKeyPolicy(p) => Some(&p.root_id),
            Terms::ThresholdSign { key_id, .. } | Terms::ThresholdSignPsbt { key_id, .. } => {
                Some(key_id)
            }
            Terms::ImportThresholdKey { bundle, .. } => Some(&bundle.key.key_id),
            Terms::CreateWallet { .. }
            | Terms::CreateGroupWallet { .. }
            | Terms::CreateThresholdKey { .. }
            | Terms::CreateGroupThresholdKey { .. } => None,
            Terms::Governance(_) => None,
        }
    }

    /// The node the request's TEE call is pinned to (imports: the one sealed to).
    pub fn pinned_node(&self) -> Option<&str> {
        match self {
            Terms::ImportWallet { node, .. } | Terms::ImportThresholdKey { node, .. } => Some(node),
            Terms::CreateWallet { node } => node.as_deref(),
            Terms::CreateGroupWallet { executor_node, .. } => Some(executor_node),
            Terms::SignPsbt { node, .. } | Terms::SignEthereum { node, .. } => node.as_deref(),
            _ => None,
        }
    }

    /// The approver group the request's approvals must come from, when its terms fix one
    /// (a wallet creation: the new wallet's group). Checked early by the cloud server; the
    /// TEE decides.
    pub fn group(&self) -> Option<&[[u8; 32]]> {
        match self {
            Terms::CreateGroupWallet { group, .. }
            | Terms::CreateGroupThresholdKey { group, .. } => Some(group),
            Terms::ImportWallet { group, .. } if !group.is_empty() => Some(group),
            // A group change is approved by the group in force; a legacy wallet's (none
            // named) is left to the TEE, which knows who counts for it.
            Terms::SetKeyPolicy(p) if !p.current_group.is_empty() => Some(&p.current_group),
            Terms::SignPsbt { group, .. }
            | Terms::SignEthereum { group, .. }
            | Terms::ThresholdSignPsbt { group, .. }
                if !group.is_empty() =>
            {
                Some(group)
            }
            _ => None,
        }
    }

    /// The tiers of other groups whose approvals the request needs besides those of
    /// [`Terms::group`] (each counted among its own admins).
    pub fn tier_groups(&self) -> &[GroupTier] {
        match self {
            Terms::SignPsbt { tiers, .. }
            | Terms::SignEthereum { tiers, .. }
            | Terms::ThresholdSignPsbt { tiers, .. } => tiers,
            Terms::SetKeyPolicy(p) => &p.tiers,
            _ => &[],
        }
    }

    /// Whether the TEE counts the approvals by admin key alone: a group the terms name, or
    /// a governance entry (approved by the governors, a group too). Otherwise "any admin"
    /// counts, and a second key under a counted subject adds nothing.
    pub fn counts_keys_only(&self) -> bool {
        self.group().is_some() || matches!(self, Terms::Governance(_))
    }

    /// Whether these terms were approved under a message this server no longer executes
    /// (a wallet creation without approver group): refused at submission.
    pub fn approval_format_changed(&self) -> bool {
        matches!(self, Terms::CreateWallet { .. })
    }

    /// What the admins approve, in the TEE's own encoding. A wallet creation's action names
    /// its policy, built from the terms into `policy` (which the action borrows).
    pub fn action<'a>(&'a self, quorum: u8, policy: &'a mut Option<KeyPolicy>) -> Action<'a> {
        match self {
            Terms::CreateWallet { .. } => Action::CreateWallet { quorum },
            Terms::CreateGroupWallet {
                group,
                executor,
                rules,
                ..
            } => Action::CreateGroupWallet {
                policy: policy.insert(group_policy(group, quorum, rules)),
                executor,
            },
            Terms::ImportWallet {
                root_id,
                group,
                rules,
                ..
            } if !group.is_empty() => Action::ImportGroupWallet {
                policy: policy.insert(group_policy(group, quorum, rules)),
                key_id: root_id,
            },
            Terms::ImportWallet { root_id, .. } => Action::ImportWallet {
                quorum,
                key_id: root_id,
            },
            Terms::Sign {
                root_id,
                path,
                digest,
            } => Action::Sign {
                key_id: root_id,
                path,
                digest,
            },
            Terms::ImportThresholdKey { bundle, .. } => Action::ImportThresholdKey {
                quorum,
                key_id: &bundle.key.key_id,
                share_index: bundle.key.share_index,
            },
            Terms::ThresholdSign {
                key_id,
                path,
                digest,
                ..
            } => Action::ThresholdSign {
                key_id,
                path,
                digest,
            },
            Terms::CreateThresholdKey {
                threshold,
                hd,
                clusters,
            } => Action::CreateThresholdKey {
                quorum,
                threshold: *threshold,
                hd: *hd,
                clusters,
            },
            Terms::CreateGroupThresholdKey {
                threshold,
                hd,
                clusters,
                group,
                executors,
                anchors,
                rules,
                ..
            } => Action::CreateGroupThresholdKey {
                policy: policy.insert(threshold_group_policy(group, quorum, anchors, rules)),
                threshold: *threshold,
                hd: *hd,
                clusters,
                executors,
            },
            Terms::Governance(g) => Action::Governance {
                version: g.version,
                prev: &g.prev,
                change: &g.change,
            },
            Terms::SetKeyPolicy(p) => Action::SetKeyPolicy {
                key_id: &p.root_id,
                prev: &p.prev,
                policy: policy.insert(p.policy()),
            },
            Terms::SignPsbt {
                root_id,
                intent_hash,
                ..
            }
            | Terms::SignEthereum {
                root_id,
                intent_hash,
                ..
            }
            | Terms::ThresholdSignPsbt {
                key_id: root_id,
                intent_hash,
                ..
            } => Action::SignTransaction {
                key_id: root_id,
                intent_hash,
            },
        }
    }

    /// The TEE request that executes these terms (`None` for the threshold kinds, which
    /// run as sessions across clusters, for governance, whose entry goes to every member
    /// through the bridge, and for a wallet creation made before approver groups, which is
    /// not executed).
    pub fn tee_request(
        &self,
        meta: RequestMeta,
        quorum: u8,
        approvals: Vec<Approval>,
    ) -> Option<Request> {
        Some(match self {
            // Never executed: refused before (`approval_format_changed`).
            Terms::CreateWallet { .. } => return None,
            Terms::CreateGroupWallet {
                group,
                executor,
                rules,
                ..
            } => Request::CreateGroupWallet {
                meta,
                policy: group_policy(group, quorum, rules),
                executor: *executor,
                approvals,
            },
            Terms::ImportWallet {
                root_id,
                sealed,
                group,
                rules,
                ..
            } if !group.is_empty() => Request::ImportGroupWalletSealed {
                meta,
                policy: group_policy(group, quorum, rules),
                key_id: root_id.to_vec(),
                sealed: sealed.clone(),
                approvals,
            },
            Terms::ImportWallet {
                root_id, sealed, ..
            } => Request::ImportWalletSealed {
                meta,
                quorum,
                key_id: root_id.to_vec(),
                sealed: sealed.clone(),
                approvals,
            },
            Terms::Sign {
                root_id,
                path,
                digest,
            } => Request::Sign {
                meta,
                key_id: root_id.to_vec(),
                path: path.clone(),
                digest: *digest,
                approvals,
            },
            Terms::ImportThresholdKey { bundle, .. } => Request::ImportThresholdBundle {
                meta,
                bundle: bundle.clone(),
                approvals,
            },
            Terms::ThresholdSign { .. }
            | Terms::ThresholdSignPsbt { .. }
            | Terms::CreateThresholdKey { .. }
            | Terms::CreateGroupThresholdKey { .. } => return None,
            Terms::Governance(_) => return None,
            Terms::SetKeyPolicy(p) => Request::SetKeyPolicy {
                meta,
                key_id: p.root_id.to_vec(),
                prev: p.prev,
                policy: p.policy(),
                approvals,
            },
            Terms::SignPsbt {
                root_id,
                network,
                psbt,
                intent_hash,
                ..
            } => Request::SignPsbt {
                meta,
                key_id: root_id.to_vec(),
                // Checked whenever the terms are read (`check`).
                network: wire_network(network).ok()?,
                psbt: psbt.clone(),
                intent_hash: *intent_hash,
                approvals,
            },
            Terms::SignEthereum {
                root_id,
                path,
                payload,
                intent_hash,
                ..
            } => Request::SignEthereum {
                meta,
                key_id: root_id.to_vec(),
                path: path.clone(),
                payload: payload.clone(),
                intent_hash: *intent_hash,
                approvals,
            },
        })
    }

    /// Whether the request spans clusters: its scope (the row's cluster) is
    /// [`THRESHOLD_SCOPE`], which its approval message names, valid for every cluster's TEE.
    pub fn spans(&self) -> bool {
        match self {
            Terms::ThresholdSign { .. }
            | Terms::ThresholdSignPsbt { .. }
            | Terms::CreateThresholdKey { .. }
            | Terms::CreateGroupThresholdKey { .. } => true,
            Terms::SetKeyPolicy(p) => p.is_threshold(),
            _ => false,
        }
    }

    /// The exact bytes an admin signs to approve these terms in `cluster`.
    pub fn approval_message(&self, cluster: &str, quorum: u8, meta: &RequestMeta) -> Vec<u8> {
        self.action(quorum, &mut None).message(cluster, meta)
    }

    /// Checks what serde cannot, for a request in scope `cluster` with `quorum`: key ids
    /// are compressed keys (threshold keys: points of secp256k1), names are names, the
    /// scope fits the kind, a full message hashes to the digest, a dealer bundle's facts
    /// hold and name this cluster, a key creation's facts hold. Run on every row read back.
    pub fn check(&self, cluster: &str, quorum: u8) -> Result<(), String> {
        if let Some(id) = self.key_id() {
            if id.len() != 33 || (id[0] != 2 && id[0] != 3) {
                return Err("key id is not a compressed public key".into());
            }
        }
        if self.spans() != (cluster == THRESHOLD_SCOPE) {
            return Err(format!(
                "a {} request in scope {cluster:?}",
                self.kind().as_str()
            ));
        }
        self.check_tiers()?;
        let name = |n: &str| custos_pki::check_name(n).map_err(|e| e.to_string());
        match self {
            Terms::CreateWallet { node: None } | Terms::Sign { .. } => Ok(()),
            Terms::CreateWallet { node: Some(node) } => name(node),
            Terms::CreateGroupWallet {
                group,
                executor_node,
                rules,
                ..
            } => {
                name(executor_node)?;
                check_group(group, quorum)?;
                group_policy(group, quorum, rules)
                    .validate()
                    .map_err(|e| e.to_string())
            }
            Terms::ImportWallet {
                node, group, rules, ..
            } => {
                name(node)?;
                match group.is_empty() {
                    true if !rules.is_empty() => Err("rules without an approver group".into()),
                    true => Ok(()),
                    false => {
                        check_group(group, quorum)?;
                        group_policy(group, quorum, rules)
                            .validate()
                            .map_err(|e| e.to_string())
                    }
                }
            }
            Terms::ImportThresholdKey { node, bundle } => {
                name(node)?;
                custos_wire::threshold::check_key_info(&bundle.key)?;
                let holder = &bundle.key.clusters[usize::from(bundle.key.share_index)];
                if holder != cluster {
                    return Err(format!(
                        "share {} belongs to cluster {holder}, not {cluster}",
                        bundle.key.share_index
                    ));
                }
                Ok(())
            }
            Terms::ThresholdSign {
                key_id,
                digest,
                message,
                clusters,
                ..
            } => {
                bitcoin::secp256k1::PublicKey::from_slice(key_id)
                    .map_err(|_| "key id is not a point of secp256k1".to_string())?;
                if let Some(m) = message {
                    let hashed: [u8; 32] = Sha256::digest(m).into();
                    if hashed != *digest {
                        return Err("the digest is not SHA-256 of the message".into());
                    }
                }
                clusters.iter().flatten().try_for_each(|c| name(c))
            }
            Terms::CreateThresholdKey {
                threshold,
                clusters,
                ..
            } => custos_wire::threshold::check_key_facts(*threshold, clusters, quorum),
            Terms::CreateGroupThresholdKey {
                threshold,
                clusters,
                group,
                executor_nodes,
                executors,
                anchors,
                rules,
                ..
            } => {
                custos_wire::threshold::check_key_facts(*threshold, clusters, quorum)?;
                check_group(group, quorum)?;
                threshold_group_policy(group, quorum, anchors, rules)
                    .validate()
                    .map_err(|e| e.to_string())?;
                if executor_nodes.len() != clusters.len() || executors.len() != clusters.len() {
                    return Err(format!(
                        "{} executing nodes and {} executors for {} clusters",
                        executor_nodes.len(),
                        executors.len(),
                        clusters.len()
                    ));
                }
                if !anchors.is_empty() && anchors.len() != clusters.len() {
                    return Err(format!(
                        "{} cluster anchors for {} clusters",
                        anchors.len(),
                        clusters.len()
                    ));
                }
                executor_nodes.iter().try_for_each(|n| name(n))
            }
            Terms::Governance(g) => g.check(),
            Terms::SetKeyPolicy(p) => p.check(quorum),
            Terms::SignPsbt { psbt, .. } | Terms::ThresholdSignPsbt { psbt, .. }
                if psbt.len() > MAX_PSBT_BYTES =>
            {
                Err(format!("a PSBT of {} bytes", psbt.len()))
            }
            Terms::ThresholdSignPsbt {
                key_id,
                network,
                clusters,
                velocity_share,
                node,
                ..
            } => {
                bitcoin::secp256k1::PublicKey::from_slice(key_id)
                    .map_err(|_| "key id is not a point of secp256k1".to_string())?;
                wire_network(network)?;
                clusters.iter().flatten().try_for_each(|c| name(c))?;
                if velocity_share.is_some() != node.is_some() {
                    return Err("a velocity share without its node, or the other way".into());
                }
                node.iter().try_for_each(|n| name(n))?;
                checked_intent(&self.transaction_view().expect("a transaction")).map(|_| ())
            }
            Terms::SignPsbt { network, node, .. } => {
                wire_network(network)?;
                node.iter().try_for_each(|n| name(n))?;
                checked_intent(&self.transaction_view().expect("a transaction")).map(|_| ())
            }
            Terms::SignEthereum { node, .. } => {
                node.iter().try_for_each(|n| name(n))?;
                checked_intent(&self.transaction_view().expect("a transaction")).map(|_| ())
            }
        }
    }

    /// Tiers of other groups are well formed and apart from the key's group.
    fn check_tiers(&self) -> Result<(), String> {
        let tiers = self.tier_groups();
        if tiers.is_empty() {
            return Ok(());
        }
        let group = self
            .group()
            .ok_or("tiers of other groups without the key's group")?;
        let tiers = GroupTiers {
            tiers: tiers.to_vec(),
        };
        GroupTiers::decode(&tiers.encode()).map_err(|e| e.to_string())?;
        if tiers
            .tiers
            .iter()
            .any(|t| t.group.iter().any(|k| group.contains(k)))
        {
            return Err("a tier group shares an admin with the key's group".into());
        }
        Ok(())
    }

    /// One line for humans.
    pub fn summary(&self, cluster: &str, quorum: u8) -> String {
        let id = self.key_id().map(hex::encode).unwrap_or_default();
        match self {
            Terms::CreateWallet { .. } => format!(
                "create a new wallet on cluster {cluster} with quorum {quorum} of any admin \
                 (made before approver groups; not executed)"
            ),
            Terms::CreateGroupWallet {
                group,
                executor_node,
                executor,
                rules,
            } => format!(
                "create a new wallet on cluster {cluster}, node {executor_node} only (device \
                 key {}…), approved by {quorum} of its group of {} admins{}",
                &hex::encode(executor)[..16],
                group.len(),
                if rules.is_empty() {
                    ""
                } else {
                    ", with transaction rules"
                }
            ),
            Terms::ImportWallet { node, .. } => format!(
                "import wallet {id} into cluster {cluster} (sealed to node {node}) with quorum \
                 {quorum}"
            ),
            Terms::Sign { path, digest, .. } => format!(
                "sign digest {} with wallet {id} at path {} on cluster {cluster} (quorum \
                 {quorum})",
                hex::encode(digest),
                format_path(path)
            ),
            Terms::ImportThresholdKey { node, bundle } => format!(
                "import share {} of threshold key {id} into cluster {cluster} (sealed to node \
                 {node}) with quorum {quorum}",
                bundle.key.share_index
            ),
            Terms::ThresholdSign {
                path,
                digest,
                clusters,
                ..
            } => format!(
                "sign digest {} with threshold key {id} at path {} by {} (quorum {quorum})",
                hex::encode(digest),
                format_path(path),
                match clusters {
                    Some(c) => format!("clusters {}", c.join(",")),
                    None => "any t of its clusters".to_string(),
                }
            ),
            Terms::CreateThresholdKey {
                threshold,
                hd,
                clusters,
            } => format!(
                "create a {threshold}-of-{} threshold key {} HD derivation by distributed key \
                 generation between clusters {} (share i to the i-th) with quorum {quorum}",
                clusters.len(),
                if *hd { "with" } else { "without" },
                clusters.join(", ")
            ),
            Terms::CreateGroupThresholdKey {
                threshold,
                hd,
                clusters,
                group,
                executor_nodes,
                anchors,
                ..
            } => format!(
                "create a {threshold}-of-{} threshold key {} HD derivation by distributed key \
                 generation between clusters {} (share i to the i-th), on nodes {} only, \
                 approved by {quorum} of its group of {} admins, {}",
                clusters.len(),
                if *hd { "with" } else { "without" },
                clusters.join(", "),
                executor_nodes.join(", "),
                group.len(),
                if anchors.is_empty() {
                    "co-signers checked by certificate"
                } else {
                    "co-signers checked against each cluster's governance log"
                }
            ),
            Terms::Governance(g) => format!(
                "{} (approved by {quorum} governors)",
                custos_cloud_api::governance::describe_terms(
                    cluster,
                    &custos_cloud_api::governance::terms_view(g.version, &g.prev, &g.change)
                )
            ),
            Terms::SetKeyPolicy(p) => format!(
                "{} on {} (approved by {quorum} of the group in force)",
                custos_cloud_api::key_policy::describe_change(
                    if p.is_threshold() {
                        "threshold key"
                    } else {
                        "wallet"
                    },
                    &id,
                    &p.view(quorum)
                ),
                p.place(cluster)
            ),
            Terms::SignPsbt { intent, .. } | Terms::SignEthereum { intent, .. } => format!(
                "sign with wallet {id} on cluster {cluster} (quorum {quorum}): {}",
                first_line(intent)
            ),
            Terms::ThresholdSignPsbt {
                intent, clusters, ..
            } => format!(
                "sign with threshold key {id} by {} (quorum {quorum}): {}",
                match clusters {
                    Some(c) => format!("clusters {}", c.join(",")),
                    None => "any t of its clusters".to_string(),
                },
                first_line(intent)
            ),
        }
    }

    /// A transaction signing's view: its intent and the hash approvals sign.
    pub fn transaction_view(&self) -> Option<TransactionView> {
        match self {
            Terms::SignPsbt {
                network,
                intent_hash,
                intent,
                ..
            }
            | Terms::ThresholdSignPsbt {
                network,
                intent_hash,
                intent,
                ..
            } => Some(TransactionView {
                network: network.clone(),
                intent_hash: hex::encode(intent_hash),
                intent: intent.clone(),
            }),
            Terms::SignEthereum {
                intent_hash,
                intent,
                ..
            } => Some(TransactionView {
                network: custos_cloud_api::transaction::ETHEREUM.into(),
                intent_hash: hex::encode(intent_hash),
                intent: intent.clone(),
            }),
            _ => None,
        }
    }

    /// Fills the API view's fields that describe the terms.
    pub fn fill_view(&self, view: &mut RequestView) {
        view.root_id = self.key_id().map(hex::encode);
        match self {
            Terms::CreateWallet { node } => view.target_node = node.clone(),
            Terms::CreateGroupWallet {
                group,
                executor_node,
                executor,
                rules,
            } => {
                view.target_node = Some(executor_node.clone());
                view.group = Some(group.iter().map(hex::encode).collect());
                view.executor = Some(hex::encode(executor));
                view.rules = PolicyRules::of(&group_policy(group, view.quorum, rules));
            }
            Terms::ImportWallet {
                node, group, rules, ..
            } => {
                view.target_node = Some(node.clone());
                if !group.is_empty() {
                    view.group = Some(group.iter().map(hex::encode).collect());
                    view.rules = PolicyRules::of(&group_policy(group, view.quorum, rules));
                }
            }
            Terms::Sign { path, digest, .. } => {
                view.path = Some(format_path(path));
                view.digest = Some(hex::encode(digest));
            }
            Terms::ImportThresholdKey { node, bundle } => {
                view.target_node = Some(node.clone());
                view.share_index = Some(bundle.key.share_index);
            }
            Terms::ThresholdSign {
                path,
                digest,
                message,
                clusters,
                ..
            } => {
                view.path = Some(format_path(path));
                view.digest = Some(hex::encode(digest));
                view.message = message.as_ref().map(hex::encode);
                view.target_node = clusters.as_ref().map(|c| c.join(","));
            }
            Terms::CreateThresholdKey {
                threshold,
                hd,
                clusters,
            } => {
                view.threshold = Some(*threshold);
                view.hd = Some(*hd);
                view.clusters = Some(clusters.clone());
            }
            Terms::CreateGroupThresholdKey {
                threshold,
                hd,
                clusters,
                group,
                executor_nodes,
                executors,
                anchors,
                rules,
            } => {
                view.rules =
                    PolicyRules::of(&threshold_group_policy(group, view.quorum, anchors, rules));
                view.threshold = Some(*threshold);
                view.hd = Some(*hd);
                view.clusters = Some(clusters.clone());
                view.group = Some(group.iter().map(hex::encode).collect());
                view.executors = Some(executors.iter().map(hex::encode).collect());
                if !anchors.is_empty() {
                    view.anchors = Some(anchors.iter().map(hex::encode).collect());
                }
                view.target_node = Some(executor_nodes.join(","));
            }
            Terms::Governance(g) => {
                view.governance = Some(custos_cloud_api::governance::terms_view(
                    g.version, &g.prev, &g.change,
                ));
            }
            Terms::SetKeyPolicy(p) => {
                view.key_policy = Some(p.view(view.quorum));
                if p.is_threshold() {
                    view.clusters = Some(p.clusters.clone());
                }
                if !p.anchors.is_empty() {
                    view.anchors = Some(p.anchors.iter().map(hex::encode).collect());
                }
            }
            Terms::SignPsbt { node, .. } => {
                view.transaction = self.transaction_view();
                view.target_node = node.clone();
            }
            Terms::ThresholdSignPsbt { clusters, .. } => {
                view.transaction = self.transaction_view();
                view.target_node = clusters.as_ref().map(|c| c.join(","));
            }
            Terms::SignEthereum { node, path, .. } => {
                view.transaction = self.transaction_view();
                view.target_node = node.clone();
                view.path = Some(format_path(path));
            }
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("terms always serialize")
    }

    /// Reads the stored form back and checks it ([`Terms::check`]).
    pub fn from_json(text: &str, cluster: &str, quorum: u8) -> Result<Terms, String> {
        let terms: Terms = serde_json::from_str(text).map_err(|e| e.to_string())?;
        terms.check(cluster, quorum)?;
        Ok(terms)
    }
}

/// The policy of a new threshold key of `group` and `quorum`, its cluster `anchors` and its
/// transaction `rules` (after the anchors, their tags being higher).
pub(crate) fn threshold_group_policy(
    group: &[[u8; 32]],
    quorum: u8,
    anchors: &[[u8; 32]],
    rules: &[Rule],
) -> KeyPolicy {
    let mut policy = new_threshold_policy(group.to_vec(), quorum, anchors);
    policy.rules.extend_from_slice(rules);
    policy
}

/// The first line of an intent's description, for a summary.
fn first_line(intent: &serde_json::Value) -> String {
    serde_json::from_value::<custos_tx::Intent>(intent.clone())
        .ok()
        .and_then(|i| i.describe().into_iter().next())
        .unwrap_or_else(|| "a transaction".into())
}

/// The policy of a new wallet of `group` and `quorum` with its transaction `rules`.
pub(crate) fn group_policy(group: &[[u8; 32]], quorum: u8, rules: &[Rule]) -> KeyPolicy {
    let mut policy = new_wallet_policy(group.to_vec(), quorum);
    policy.rules.extend_from_slice(rules);
    policy
}

/// The policy of a new wallet must be one the TEE accepts: `group` sorted, distinct,
/// 1..=[`MAX_GROUP`], and `quorum` of it.
fn check_group(group: &[[u8; 32]], quorum: u8) -> Result<(), String> {
    if group.len() > MAX_GROUP {
        return Err(format!(
            "group of {} admins, at most {MAX_GROUP}",
            group.len()
        ));
    }
    new_wallet_policy(group.to_vec(), quorum)
        .validate()
        .map_err(|e| e.to_string())
}

/// Reads a list of lower-case hex 32-byte strings, at most `max` long (`what` names the
/// items in the refusal).
fn read_fingerprints<'de, D: Deserializer<'de>>(
    d: D,
    max: usize,
    what: &str,
) -> Result<Vec<[u8; 32]>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    if texts.len() > max {
        return Err(serde::de::Error::custom(format!("too many {what}")));
    }
    texts
        .iter()
        .map(|t| {
            let b = hex::decode(t).map_err(serde::de::Error::custom)?;
            <[u8; 32]>::try_from(b)
                .map_err(|_| serde::de::Error::custom("a fingerprint is 32 bytes"))
        })
        .collect()
}

/// Writes 32-byte strings as a list of lower-case hex.
fn write_fingerprints<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

/// Lists of 32-byte strings as lists of lower-case hex, at most [`MAX_GROUP`] long.
mod hex_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        write_fingerprints(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        read_fingerprints(d, MAX_GROUP, "fingerprints")
    }
}

/// Device key fingerprints of a key generation's executors (one per cluster) as a list of
/// lower-case hex, at most [`custos_wire::threshold::MAX_THRESHOLD_PARTIES`] long.
mod fingerprint_list {
    use super::*;
    use custos_wire::threshold::MAX_THRESHOLD_PARTIES;

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        write_fingerprints(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        read_fingerprints(d, MAX_THRESHOLD_PARTIES, "executors")
    }
}

/// Byte strings as lower-case hex.
pub(crate) mod hex_bytes {
    use super::*;

    pub fn serialize<S: Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<Vec<u8>>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let n = bytes.len();
        T::try_from(bytes).map_err(|_| serde::de::Error::custom(format!("{n} bytes: wrong length")))
    }
}

/// Optional byte strings as lower-case hex or null.
mod hex_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// BIP-32 paths as text (`m/0/1'`).
mod path_text {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_path(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        parse_path(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Wire structures as hex of their postcard encoding (the TEE's own format), at most
/// [`crate::service::MAX_BUNDLE`] bytes and without trailing bytes.
pub(crate) mod postcard_hex {
    use super::*;
    use serde::de::DeserializeOwned;

    pub fn serialize<S: Serializer, T: Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let bytes = postcard::to_allocvec(v).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() > 2 * crate::service::MAX_BUNDLE {
            return Err(serde::de::Error::custom("sealed value too long"));
        }
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let (v, rest) = postcard::take_from_bytes(&bytes).map_err(serde::de::Error::custom)?;
        if !rest.is_empty() {
            return Err(serde::de::Error::custom("trailing bytes"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_and_is_checked() {
        let sign = Terms::Sign {
            root_id: [2; 33],
            path: vec![0x8000_002c, 1],
            digest: [7; 32],
        };
        let text = sign.to_json();
        assert_eq!(
            text,
            format!(
                "{{\"kind\":\"sign\",\"root_id\":\"{}\",\"path\":\"m/44'/1\",\"digest\":\"{}\"}}",
                "02".repeat(33),
                "07".repeat(32)
            )
        );
        assert_eq!(Terms::from_json(&text, "dc1", 2).unwrap(), sign);
        // A sign request does not span clusters.
        assert!(Terms::from_json(&text, THRESHOLD_SCOPE, 2).is_err());
        // Not a compressed key; unknown field; short digest.
        for bad in [
            text.replace(&"02".repeat(33), &"04".repeat(33)),
            text.replace("}", ",\"extra\":1}"),
            text.replace(&"07".repeat(32), "0707"),
        ] {
            assert!(Terms::from_json(&bad, "dc1", 2).is_err(), "{bad}");
        }
        let keygen = Terms::CreateThresholdKey {
            threshold: 2,
            hd: true,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
        };
        assert_eq!(
            Terms::from_json(&keygen.to_json(), THRESHOLD_SCOPE, 2).unwrap(),
            keygen
        );
        assert_eq!(
            Terms::from_json("{\"kind\":\"create_wallet\"}", "dc1", 2).unwrap(),
            Terms::CreateWallet { node: None }
        );
        let pinned = Terms::CreateWallet {
            node: Some("node2".into()),
        };
        assert_eq!(
            Terms::from_json(&pinned.to_json(), "dc1", 2).unwrap(),
            pinned
        );
        assert_eq!(pinned.pinned_node(), Some("node2"));
        assert!(pinned.approval_format_changed());
    }

    #[test]
    fn a_group_wallet_is_pinned_to_its_executor_and_checked() {
        let terms = Terms::CreateGroupWallet {
            group: vec![[1; 32], [2; 32]],
            executor_node: "node3".into(),
            executor: [7; 32],
            rules: vec![],
        };
        let text = terms.to_json();
        assert_eq!(
            text,
            format!(
                "{{\"kind\":\"create_group_wallet\",\"group\":[\"{}\",\"{}\"],\
                 \"executor_node\":\"node3\",\"executor\":\"{}\"}}",
                "01".repeat(32),
                "02".repeat(32),
                "07".repeat(32)
            )
        );
        assert_eq!(Terms::from_json(&text, "dc1", 2).unwrap(), terms);
        assert_eq!(terms.pinned_node(), Some("node3"));
        assert_eq!(terms.group(), Some(&[[1; 32], [2; 32]][..]));
        assert!(!terms.approval_format_changed());
        let meta = RequestMeta {
            request_id: [5; 16],
            expires_at: 9,
        };
        let Some(Request::CreateGroupWallet {
            policy, executor, ..
        }) = terms.tee_request(meta.clone(), 2, vec![])
        else {
            panic!("not a CreateGroupWallet request")
        };
        assert_eq!((policy.version, policy.quorum, executor), (1, 2, [7; 32]));
        assert_eq!(policy.group, vec![[1; 32], [2; 32]]);
        // The executor is part of what is approved.
        let moved = Terms::CreateGroupWallet {
            group: vec![[1; 32], [2; 32]],
            executor_node: "node3".into(),
            executor: [8; 32],
            rules: vec![],
        };
        assert_ne!(
            terms.approval_message("dc1", 2, &meta),
            moved.approval_message("dc1", 2, &meta)
        );
        // A quorum over the group, an unsorted or repeated group, a bad node name: refused.
        assert!(Terms::from_json(&text, "dc1", 3).is_err());
        for bad in [
            text.replace(&"01".repeat(32), &"03".repeat(32)),
            text.replace(&"02".repeat(32), &"01".repeat(32)),
            text.replace("node3", "No De"),
            text.replace(&format!(",\"{}\"", "02".repeat(32)), ",\"0202\""),
        ] {
            assert!(Terms::from_json(&bad, "dc1", 1).is_err(), "{bad}");
        }
        // A legacy creation is never sent.
        assert!(Terms::CreateWallet { node: None }
            .tee_request(meta, 1, vec![])
            .is_none());
    }

    /// A threshold key's group change is approved once for every cluster of the key
    /// ([`THRESHOLD_SCOPE`]) with its anchors in both policies; rows stored before it (a
    /// wallet's change, without `clusters`) still read, in their cluster's scope only.
    #[test]
    fn a_threshold_keys_group_change_spans_its_clusters_and_old_rows_still_read() {
        use custos_cloud_api::approval::new_threshold_policy;
        let g = bitcoin::secp256k1::PublicKey::from_secret_key(
            &bitcoin::secp256k1::Secp256k1::new(),
            &bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).unwrap(),
        )
        .serialize();
        let anchors = vec![[5; 32], [6; 32]];
        let at = |version, group: Vec<[u8; 32]>| KeyPolicy {
            version,
            ..new_threshold_policy(group, 2, &anchors)
        };
        let (current, new) = (at(1, vec![[1; 32], [2; 32]]), at(2, vec![[1; 32], [3; 32]]));
        let terms = Terms::SetKeyPolicy(PolicyTerms::threshold(
            g,
            vec!["dc1".into(), "dc2".into()],
            anchors.clone(),
            &current,
            &new,
        ));
        assert!(terms.spans());
        let text = terms.to_json();
        assert!(text.contains("\"clusters\":[\"dc1\",\"dc2\"]"), "{text}");
        assert_eq!(Terms::from_json(&text, THRESHOLD_SCOPE, 2).unwrap(), terms);
        // Not in one cluster's scope; not with anchors for another number of clusters.
        assert!(Terms::from_json(&text, "dc1", 2).is_err());
        let one_anchor = text.replace(&format!(",\"{}\"", "06".repeat(32)), "");
        assert!(Terms::from_json(&one_anchor, THRESHOLD_SCOPE, 2).is_err());
        // What is approved and sent: the new policy with the anchors, under one message for
        // every cluster, naming the policy in force (with its anchors) by hash.
        let meta = RequestMeta {
            request_id: [3; 16],
            expires_at: 9,
        };
        let expected = Action::SetKeyPolicy {
            key_id: &g,
            prev: &current.hash(),
            policy: &new,
        }
        .message(THRESHOLD_SCOPE, &meta);
        assert_eq!(terms.approval_message(THRESHOLD_SCOPE, 2, &meta), expected);
        let Some(Request::SetKeyPolicy { policy, prev, .. }) =
            terms.tee_request(meta.clone(), 2, vec![])
        else {
            panic!("not a SetKeyPolicy request")
        };
        assert_eq!((policy, prev), (new.clone(), current.hash()));
        assert!(terms.summary(THRESHOLD_SCOPE, 2).contains("threshold key"));

        // A wallet's change stored before threshold keys' changes reads as one, in its
        // cluster's scope; a wallet's change with anchors is refused.
        let plain = |v, group| KeyPolicy {
            version: v,
            group,
            quorum: 2,
            rules: vec![],
        };
        let wallet = PolicyTerms::new(
            g,
            &plain(1, vec![[1; 32], [2; 32]]),
            &plain(2, vec![[1; 32], [3; 32]]),
        );
        let stored = format!(
            "{{\"kind\":\"set_key_policy\",\"root_id\":\"{}\",\"current_version\":1,\
             \"current_group\":[\"{}\",\"{}\"],\"prev\":\"{}\",\"version\":2,\
             \"group\":[\"{}\",\"{}\"],\"quorum\":2}}",
            hex::encode(g),
            "01".repeat(32),
            "02".repeat(32),
            hex::encode(wallet.prev),
            "01".repeat(32),
            "03".repeat(32)
        );
        let read = Terms::from_json(&stored, "dc1", 2).unwrap();
        assert_eq!(read, Terms::SetKeyPolicy(wallet.clone()));
        assert_eq!(read.to_json(), stored);
        assert!(!read.spans());
        assert!(Terms::from_json(&stored, THRESHOLD_SCOPE, 2).is_err());
        let with_anchors = Terms::SetKeyPolicy(PolicyTerms {
            anchors: anchors.clone(),
            ..wallet
        });
        assert!(Terms::from_json(&with_anchors.to_json(), "dc1", 2).is_err());
    }

    /// A governance request's entry is stored in the TEE's own encoding and read back
    /// exactly; one that breaks the log's rules or sits at a position its kind cannot is
    /// refused when read back.
    #[test]
    fn governance_terms_round_trip_and_are_checked() {
        use custos_wire::governance::GovChange;
        let revoke = Terms::Governance(GovTerms {
            version: 4,
            prev: [0xab; 32],
            change: GovChange::Revoke {
                admins: vec![[1; 32]],
                devices: vec![[2; 32]],
                reason: "compromised".into(),
            },
        });
        let text = revoke.to_json();
        assert!(
            text.starts_with("{\"kind\":\"governance\",\"version\":4,"),
            "{text}"
        );
        assert_eq!(Terms::from_json(&text, "dc1", 2).unwrap(), revoke);
        assert_eq!(revoke.kind(), RequestKind::Governance);
        assert_eq!(revoke.key_id(), None);
        let meta = RequestMeta {
            request_id: [1; 16],
            expires_at: 9,
        };
        assert!(revoke.tee_request(meta, 2, vec![]).is_none());
        // Not across clusters; not a genesis at version 4; not at version 0 either.
        assert!(Terms::from_json(&text, THRESHOLD_SCOPE, 2).is_err());
        let bad = |t: GovTerms| Terms::from_json(&Terms::Governance(t).to_json(), "dc1", 2);
        let genesis = GovChange::Genesis {
            governors: vec![[1; 32]],
            quorum: 1,
            members: vec![],
            rules: vec![],
        };
        assert!(bad(GovTerms {
            version: 4,
            prev: [0; 32],
            change: genesis
        })
        .is_err());
        assert!(bad(GovTerms {
            version: 0,
            prev: [0; 32],
            change: GovChange::SetGovernors {
                governors: vec![[1; 32]],
                quorum: 1
            }
        })
        .is_err());
        // Unsorted governors and a quorum above their number break the log's limits.
        assert!(bad(GovTerms {
            version: 3,
            prev: [1; 32],
            change: GovChange::SetGovernors {
                governors: vec![[2; 32], [1; 32]],
                quorum: 1
            }
        })
        .is_err());
        assert!(bad(GovTerms {
            version: 3,
            prev: [1; 32],
            change: GovChange::SetGovernors {
                governors: vec![[1; 32]],
                quorum: 2
            }
        })
        .is_err());
    }
}
