//! The approval message of a request, computed from its fields with the TEE core's own
//! encoder ([`Action::message`]): the server shows it, approvers recompute it (never
//! trusting the server's bytes), and the TEE checks the same bytes.

use custos_pki::AdminSigner;
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::policy::{KeyPolicy, Rule, MAX_GROUP, RULE_CLUSTER_ANCHORS};
use custos_wire::protocol::RequestMeta;

use crate::path::parse_path;
use crate::{ApprovalBody, KeyId, RequestKind, RequestView, WebAuthnBody};

/// Parses 16 bytes of hex (a request id).
pub fn parse_request_id(s: &str) -> Result<[u8; 16], String> {
    parse_hex_array(s, "request id")
}

/// Parses 32 bytes of hex (a digest).
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    parse_hex_array(s, "digest")
}

/// Parses a root id: 33 bytes of hex, a compressed public key prefix (02/03).
pub fn parse_root_id(s: &str) -> Result<KeyId, String> {
    parse_compressed(s, "root id")
}

/// Parses a threshold key id: 33 bytes of hex in the compressed form (02/03). Whether it
/// is a point is not checked here: an id that is not one names no recorded key, so the
/// lookup answers it (every recorded id was checked when the key was recorded).
pub fn parse_key_id(s: &str) -> Result<KeyId, String> {
    parse_compressed(s, "key id")
}

/// Parses a key fingerprint: 32 bytes of hex (an admin's or a device's certified key).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    parse_hex_array(s, "key fingerprint")
}

/// Parses an approver group (admin key fingerprints, hex) into the sorted, distinct set a
/// [`KeyPolicy`] holds: at most [`MAX_GROUP`] entries, none twice, none malformed (each
/// named by its position).
pub fn parse_group(group: &[String]) -> Result<Vec<[u8; 32]>, String> {
    if group.is_empty() {
        return Err("the approver group is empty: name at least one admin".into());
    }
    if group.len() > MAX_GROUP {
        return Err(format!(
            "the approver group has {} admins, at most {MAX_GROUP}",
            group.len()
        ));
    }
    let mut out = group
        .iter()
        .enumerate()
        .map(|(i, g)| parse_fingerprint(g).map_err(|e| format!("group entry #{i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "admin {} appears twice in the group",
            hex::encode(w[0])
        ));
    }
    Ok(out)
}

/// The policy a new wallet (or threshold key) is created with: version 1, `group` (sorted, distinct) and
/// `quorum`, no rules. The cloud server and approvers build it the same way, so the
/// approval message they compute is the one the TEE checks.
pub fn new_wallet_policy(group: Vec<[u8; 32]>, quorum: u8) -> KeyPolicy {
    KeyPolicy {
        version: 1,
        group,
        quorum,
        rules: Vec::new(),
    }
}

/// The policy a new group threshold key is created with: [`new_wallet_policy`], plus a
/// [`RULE_CLUSTER_ANCHORS`] rule naming the genesis id of each share's cluster (by share
/// index) when `anchors` is not empty. The TEE of each cluster then counts a co-signer of
/// another cluster only as a current member of that cluster's log. The cloud server and
/// approvers build it the same way, so the message is the one the TEE checks.
pub fn new_threshold_policy(group: Vec<[u8; 32]>, quorum: u8, anchors: &[[u8; 32]]) -> KeyPolicy {
    let mut policy = new_wallet_policy(group, quorum);
    if !anchors.is_empty() {
        policy.rules.push(Rule {
            tag: RULE_CLUSTER_ANCHORS,
            body: anchors.concat(),
        });
    }
    policy
}

/// Parses a key creation's cluster anchors: one genesis id (64 hex digits) per share, by
/// share index, each named by its position when malformed.
pub fn parse_anchors(anchors: &[String]) -> Result<Vec<[u8; 32]>, String> {
    anchors
        .iter()
        .enumerate()
        .map(|(i, a)| {
            parse_hex_array(a, "genesis id").map_err(|m| format!("anchor of share {i}: {m}"))
        })
        .collect()
}

fn parse_compressed(s: &str, what: &str) -> Result<KeyId, String> {
    let b: KeyId = parse_hex_array(s, what)?;
    if b[0] != 2 && b[0] != 3 {
        return Err(format!("{what} is not a compressed public key"));
    }
    Ok(b)
}

fn parse_hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(format!("{what} must be {} hex characters", 2 * N));
    }
    let v = hex::decode(s).map_err(|_| format!("{what} is not hex"))?;
    v.try_into()
        .map_err(|_| format!("{what} has the wrong length"))
}

/// Domain of a rejection message.
pub const REJECTION_DOMAIN: &[u8] = b"CUSTOS-REJECTION-V1\0";

/// What an admin signs to reject the request whose approval message is `approval_message`
/// (`POST /v1/requests/{id}/rejections`): the domain, then that message, so a rejection is
/// never an approval and names exactly the request it refuses.
pub fn rejection_message(approval_message: &[u8]) -> Vec<u8> {
    let mut m = REJECTION_DOMAIN.to_vec();
    m.extend_from_slice(approval_message);
    m
}

/// The exact bytes an admin signs to approve `view`, recomputed from its fields.
pub fn approval_message(view: &RequestView) -> Result<Vec<u8>, String> {
    let meta = RequestMeta {
        request_id: parse_request_id(&view.id)?,
        expires_at: view.expires_at,
    };
    let key_id = || -> Result<KeyId, String> {
        parse_root_id(view.root_id.as_deref().ok_or("request has no root id")?)
    };
    Ok(match view.kind {
        RequestKind::CreateWallet => create_wallet_message(view, &meta)?,
        RequestKind::ImportWallet => match &view.group {
            // An import under an approver group (`import-wallet-v2`).
            Some(group) => Action::ImportGroupWallet {
                policy: &crate::rules::with_rules(
                    new_wallet_policy(parse_group(group)?, view.quorum),
                    view.rules.as_ref(),
                )?,
                key_id: &key_id()?,
            }
            .message(&view.cluster, &meta),
            None => Action::ImportWallet {
                quorum: view.quorum,
                key_id: &key_id()?,
            }
            .message(&view.cluster, &meta),
        },
        RequestKind::Sign => {
            let path = parse_path(view.path.as_deref().ok_or("request has no path")?)
                .map_err(|e| e.to_string())?;
            let digest = parse_digest(view.digest.as_deref().ok_or("request has no digest")?)?;
            Action::Sign {
                key_id: &key_id()?,
                path: &path,
                digest: &digest,
            }
            .message(&view.cluster, &meta)
        }
        RequestKind::ImportThresholdKey => Action::ImportThresholdKey {
            quorum: view.quorum,
            key_id: &key_id()?,
            share_index: view.share_index.ok_or("request has no share index")?,
        }
        .message(&view.cluster, &meta),
        RequestKind::ThresholdSign => {
            if view.cluster != THRESHOLD_SCOPE {
                return Err(format!(
                    "a threshold sign request spans clusters ({THRESHOLD_SCOPE}), not {:?}",
                    view.cluster
                ));
            }
            let path = parse_path(view.path.as_deref().ok_or("request has no path")?)
                .map_err(|e| e.to_string())?;
            let digest = parse_digest(view.digest.as_deref().ok_or("request has no digest")?)?;
            Action::ThresholdSign {
                key_id: &key_id()?,
                path: &path,
                digest: &digest,
            }
            .message(THRESHOLD_SCOPE, &meta)
        }
        RequestKind::CreateThresholdKey => {
            if view.cluster != THRESHOLD_SCOPE {
                return Err(format!(
                    "a threshold key creation spans clusters ({THRESHOLD_SCOPE}), not {:?}",
                    view.cluster
                ));
            }
            let threshold = view.threshold.ok_or("request has no threshold")?;
            let hd = view
                .hd
                .ok_or("request does not say whether the key is HD")?;
            let clusters = view.clusters.as_deref().ok_or("request has no clusters")?;
            match (&view.group, &view.executors) {
                (None, None) => Action::CreateThresholdKey {
                    quorum: view.quorum,
                    threshold,
                    hd,
                    clusters,
                }
                .message(THRESHOLD_SCOPE, &meta),
                (Some(group), Some(executors)) => {
                    let anchors = parse_anchors(view.anchors.as_deref().unwrap_or_default())?;
                    if !anchors.is_empty() && anchors.len() != clusters.len() {
                        return Err(format!(
                            "request {} names {} cluster anchors for {} clusters",
                            view.id,
                            anchors.len(),
                            clusters.len()
                        ));
                    }
                    let policy = crate::rules::with_rules(
                        new_threshold_policy(parse_group(group)?, view.quorum, &anchors),
                        view.rules.as_ref(),
                    )?;
                    let executors = executors
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            parse_fingerprint(e).map_err(|m| format!("executor of share {i}: {m}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Action::CreateGroupThresholdKey {
                        policy: &policy,
                        threshold,
                        hd,
                        clusters,
                        executors: &executors,
                    }
                    .message(THRESHOLD_SCOPE, &meta)
                }
                // Half of the terms would be a message the TEE never checks.
                _ => {
                    return Err(format!(
                        "request {} names an approver group without executors, or executors \
                         without a group",
                        view.id
                    ))
                }
            }
        }
        RequestKind::Governance => {
            let terms = view
                .governance
                .as_ref()
                .ok_or("request has no governance terms")?;
            let (version, prev, change) = crate::governance::parse_terms(terms)?;
            Action::Governance {
                version,
                prev: &prev,
                change: &change,
            }
            .message(&view.cluster, &meta)
        }
        RequestKind::SetKeyPolicy => {
            let change = view
                .key_policy
                .as_ref()
                .ok_or("request has no approver group change")?;
            // A threshold key's change is one message for every cluster of the key (the
            // scope), naming them; a wallet's is scoped to its cluster and names none.
            let threshold = view.cluster == THRESHOLD_SCOPE;
            let clusters = view.clusters.as_deref();
            if threshold != clusters.is_some() {
                return Err(format!(
                    "request {} changes a threshold key's group only in scope \
                     {THRESHOLD_SCOPE} with the key's clusters named (scope {:?})",
                    view.id, view.cluster
                ));
            }
            let anchors = parse_anchors(view.anchors.as_deref().unwrap_or_default())?;
            if !anchors.is_empty() && Some(anchors.len()) != clusters.map(<[String]>::len) {
                return Err(format!(
                    "request {} names {} cluster anchors for {} clusters",
                    view.id,
                    anchors.len(),
                    clusters.map_or(0, <[String]>::len)
                ));
            }
            let (current, new) = crate::key_policy::policies(change, view.quorum, &anchors)?;
            Action::SetKeyPolicy {
                key_id: &key_id()?,
                prev: &current.hash(),
                policy: &new,
            }
            .message(&view.cluster, &meta)
        }
        RequestKind::SignPsbt | RequestKind::SignEthereum => {
            let tx = view
                .transaction
                .as_ref()
                .ok_or("request has no transaction")?;
            let (_, intent_hash) = crate::transaction::checked_intent(tx)?;
            Action::SignTransaction {
                key_id: &key_id()?,
                intent_hash: &intent_hash,
            }
            .message(&view.cluster, &meta)
        }
    })
}

/// A wallet creation names its approver group and the one node that executes it
/// ([`Action::CreateGroupWallet`]). A view without them is a creation made before approver
/// groups existed: never signed, since the TEE would count any Admin-CA admin for it.
fn create_wallet_message(view: &RequestView, meta: &RequestMeta) -> Result<Vec<u8>, String> {
    let (Some(group), Some(executor)) = (&view.group, &view.executor) else {
        return Err(format!(
            "request {} creates a wallet without an approver group and executor (made before \
             groups existed); the server refuses it (approval_format_changed): create a new \
             request",
            view.id
        ));
    };
    let policy = crate::rules::with_rules(
        new_wallet_policy(parse_group(group)?, view.quorum),
        view.rules.as_ref(),
    )?;
    let executor = parse_fingerprint(executor).map_err(|e| format!("executor: {e}"))?;
    Ok(Action::CreateGroupWallet {
        policy: &policy,
        executor: &executor,
    }
    .message(&view.cluster, meta))
}

/// An approval of `message` by `signer`, in the API's form. Fails only when the admin's key
/// does not sign (a token removed or locked, for instance).
pub fn sign_approval(
    signer: &AdminSigner,
    message: &[u8],
) -> Result<ApprovalBody, custos_pki::PkiError> {
    Approval::by_key_file(signer, message).map(|a| ApprovalBody::from(&a))
}

impl From<&Approval> for ApprovalBody {
    fn from(a: &Approval) -> Self {
        ApprovalBody {
            admin_cert_pem: custos_pki::der_to_pem(&a.admin_cert, "CERTIFICATE"),
            admin_ca_pem: custos_pki::der_to_pem(&a.admin_ca, "CERTIFICATE"),
            signature_hex: hex::encode(&a.signature),
            webauthn: a.webauthn.as_ref().map(|w| WebAuthnBody {
                authenticator_data_hex: hex::encode(&w.authenticator_data),
                client_data_json_hex: hex::encode(&w.client_data_json),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending wallet creation's view, as the server shows it.
    fn creation(group: Option<Vec<String>>, executor: Option<&str>) -> RequestView {
        let mut v = serde_json::json!({
            "id": "ab".repeat(16),
            "kind": "create_wallet",
            "cluster": "dc1",
            "status": "pending_approval",
            "quorum": 2,
            "approvals": [],
            "expires_at": 1000,
            "created_at_ms": 1,
            "updated_at_ms": 1,
            "created_by": "t",
            "target_node": "node2",
            "attempts": 0,
            "approval_message": "",
            "summary": "",
        });
        if let Some(g) = group {
            v["group"] = serde_json::json!(g);
        }
        if let Some(e) = executor {
            v["executor"] = serde_json::json!(e);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_wallet_creation_binds_its_group_and_executor() {
        let (a, b, c) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
        let view = creation(Some(vec![b.clone(), a.clone()]), Some(&"77".repeat(32)));
        let message = approval_message(&view).unwrap();
        let meta = RequestMeta {
            request_id: [0xab; 16],
            expires_at: 1000,
        };
        let policy = new_wallet_policy(vec![[0x11; 32], [0x22; 32]], 2);
        assert_eq!(
            message,
            Action::CreateGroupWallet {
                policy: &policy,
                executor: &[0x77; 32]
            }
            .message("dc1", &meta),
            "the group is the sorted set, whatever the order shown"
        );
        // Another executor, another group or another quorum: another message.
        let moved = creation(Some(vec![a.clone(), b.clone()]), Some(&"78".repeat(32)));
        assert_ne!(approval_message(&moved).unwrap(), message);
        let wider = creation(Some(vec![a.clone(), b.clone(), c]), Some(&"77".repeat(32)));
        assert_ne!(approval_message(&wider).unwrap(), message);
        let mut lower = view.clone();
        lower.quorum = 1;
        assert_ne!(approval_message(&lower).unwrap(), message);
        // A creation without group or executor (made before groups) is never signed.
        let e = approval_message(&creation(None, None)).unwrap_err();
        assert!(e.contains("approval_format_changed"), "{e}");
        let e = approval_message(&creation(Some(vec![a.clone()]), None)).unwrap_err();
        assert!(e.contains("approval_format_changed"), "{e}");
        // A malformed or repeated fingerprint is named.
        let e =
            approval_message(&creation(Some(vec![a.clone(), a.clone()]), Some(&b))).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = approval_message(&creation(Some(vec!["zz".into()]), Some(&b))).unwrap_err();
        assert!(e.contains("group entry #0"), "{e}");
        let too_many: Vec<String> = std::iter::repeat_n(a, MAX_GROUP + 1).collect();
        assert!(parse_group(&too_many).unwrap_err().contains("at most"));
    }

    /// A group key creation's view, as the server shows it, with `anchors` if any.
    fn key_creation(anchors: Option<Vec<String>>) -> RequestView {
        let mut v = serde_json::json!({
            "id": "cd".repeat(16),
            "kind": "create_threshold_key",
            "cluster": THRESHOLD_SCOPE,
            "status": "pending_approval",
            "threshold": 2,
            "hd": true,
            "clusters": ["dc1", "dc2"],
            "quorum": 1,
            "group": ["11".repeat(32)],
            "executors": ["77".repeat(32), "78".repeat(32)],
            "approvals": [],
            "expires_at": 1000,
            "created_at_ms": 1,
            "updated_at_ms": 1,
            "created_by": "t",
            "target_node": "node1,node2",
            "attempts": 0,
            "approval_message": "",
            "summary": "",
        });
        if let Some(a) = anchors {
            v["anchors"] = serde_json::json!(a);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_group_key_creation_binds_its_cluster_anchors() {
        let meta = RequestMeta {
            request_id: [0xcd; 16],
            expires_at: 1000,
        };
        let message = |anchors: &[[u8; 32]]| {
            let policy = new_threshold_policy(vec![[0x11; 32]], 1, anchors);
            policy.validate().unwrap();
            Action::CreateGroupThresholdKey {
                policy: &policy,
                threshold: 2,
                hd: true,
                clusters: &["dc1".to_string(), "dc2".to_string()],
                executors: &[[0x77; 32], [0x78; 32]],
            }
            .message(THRESHOLD_SCOPE, &meta)
        };
        let unanchored = approval_message(&key_creation(None)).unwrap();
        assert_eq!(unanchored, message(&[]));
        let anchors = vec!["a1".repeat(32), "a2".repeat(32)];
        let anchored = approval_message(&key_creation(Some(anchors.clone()))).unwrap();
        assert_eq!(anchored, message(&[[0xa1; 32], [0xa2; 32]]));
        assert_ne!(anchored, unanchored);
        let policy = new_threshold_policy(vec![[0x11; 32]], 1, &[[0xa1; 32], [0xa2; 32]]);
        assert_eq!(policy.cluster_anchors(), Some(vec![[0xa1; 32], [0xa2; 32]]));
        // Swapped anchors are another message; one per cluster, each 32 bytes of hex.
        let swapped = vec![anchors[1].clone(), anchors[0].clone()];
        assert_ne!(
            approval_message(&key_creation(Some(swapped))).unwrap(),
            anchored
        );
        let e = approval_message(&key_creation(Some(vec![anchors[0].clone()]))).unwrap_err();
        assert!(e.contains("1 cluster anchors for 2 clusters"), "{e}");
        let e = approval_message(&key_creation(Some(vec![anchors[0].clone(), "zz".into()])))
            .unwrap_err();
        assert!(e.contains("anchor of share 1"), "{e}");
    }
}
