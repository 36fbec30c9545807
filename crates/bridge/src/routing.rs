//! What a TEE request is, for routing and for the history.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use custos_wire::approval::Approval;
use custos_wire::protocol::{format_path, RelayClass, Request, SessionRef, TeeError};

/// Facts about a request that the bridge logs and routes by.
pub struct Described {
    /// History kind.
    pub kind: &'static str,
    /// Key the request uses, if any.
    pub key_id: Option<Vec<u8>>,
    /// BIP-32 path (display form), if any.
    pub path: Option<String>,
    /// Request id (hex), if any.
    pub request_id: Option<String>,
    /// Names of the admins whose approvals are attached.
    pub approvers: Vec<String>,
    /// Whether any node may serve it (a new key) rather than only the key's holders.
    pub any_node: bool,
    /// Whether executing it twice would make a second key: once sent to a node, it never
    /// fails over; an answer lost after sending makes it outcome-unknown on that node.
    pub one_effect: bool,
}

/// gRPC metadata naming the node of an outcome-unknown refusal (see
/// [`custos_proto::cluster::LinkRefusal::node`]).
pub const NODE_HEADER: &str = "custos-node";

fn admin_name(cert: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| "<unparsable certificate>".into())
        .replace(',', "_")
}

/// Admin names already read, by certificate (DER): the name is a function of the bytes,
/// and the same few admins approve request after request, so each certificate is parsed
/// once instead of once per request.
static NAMES: LazyLock<Mutex<HashMap<Vec<u8>, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Most certificates [`NAMES`] remembers; it is emptied when full.
const MAX_NAMES: usize = 1024;

fn cached_admin_name(cert: &[u8]) -> String {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = names.get(cert) {
        return name.clone();
    }
    let name = admin_name(cert);
    if names.len() >= MAX_NAMES {
        names.clear();
    }
    names.insert(cert.to_vec(), name.clone());
    name
}

/// The admin names of a request's approvals.
pub(crate) fn names(approvals: &[Approval]) -> Vec<String> {
    approvals
        .iter()
        .map(|a| cached_admin_name(&a.admin_cert))
        .collect()
}

/// A threshold session's request id in the history: `<request id>/<attempt>`.
fn session_id(session: &SessionRef) -> String {
    format!("{}/{}", hex::encode(session.request_id), session.attempt)
}

/// Describes a request the bridge may route; `None` for the requests that stay on the node
/// ([`custos_wire::protocol::RelayClass::NodeOnly`]: provisioning, TLS signing, key
/// transfers, plaintext imports).
pub fn describe(r: &Request) -> Option<Described> {
    let d = |kind, key_id: Option<&Vec<u8>>, any_node| Described {
        kind,
        key_id: key_id.cloned(),
        path: None,
        request_id: None,
        approvers: Vec::new(),
        any_node,
        one_effect: false,
    };
    if r.relay_class() == RelayClass::NodeOnly {
        return None;
    }
    Some(match r {
        Request::Status => d("status", None, true),
        Request::ListKeys => d("list-keys", None, true),
        Request::Attest { .. } => d("attest", None, true),
        Request::DeviceChain => d("device-chain", None, true),
        Request::GetXpub { key_id, path } => Described {
            path: Some(format_path(path)),
            ..d("get-xpub", Some(key_id), false)
        },
        Request::AuditSign { key_id, .. } => d("audit", Some(key_id), false),
        Request::CreateWallet {
            meta, approvals, ..
        }
        | Request::CreateGroupWallet {
            meta, approvals, ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            approvers: names(approvals),
            one_effect: true,
            ..d("create-wallet", None, true)
        },
        Request::Sign {
            meta,
            key_id,
            path,
            approvals,
            ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            path: Some(format_path(path)),
            approvers: names(approvals),
            ..d("sign", Some(key_id), false)
        },
        // Like a digest: a PSBT signs again on a repeat, so it may fail over to another
        // holder of the key.
        Request::SignPsbt {
            meta,
            key_id,
            approvals,
            ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            approvers: names(approvals),
            ..d("sign-psbt", Some(key_id), false)
        },
        Request::PreviewPsbt { key_id, .. } => d("preview-psbt", Some(key_id), false),
        // As a PSBT: a repeat signs the same payload again.
        Request::SignEthereum {
            meta,
            key_id,
            path,
            approvals,
            ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            path: Some(format_path(path)),
            approvers: names(approvals),
            ..d("sign-ethereum", Some(key_id), false)
        },
        Request::PreviewEthereum { key_id, .. } => d("preview-ethereum", Some(key_id), false),
        // Sealed to one node's device key: the caller pins that node (no failover).
        Request::ImportWalletSealed {
            meta,
            key_id,
            approvals,
            ..
        }
        | Request::ImportGroupWalletSealed {
            meta,
            key_id,
            approvals,
            ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            approvers: names(approvals),
            ..d("import-wallet", Some(key_id), true)
        },
        // Threshold requests name their node: a bundle is sealed to it, and a session's
        // participants (with their certificates) are fixed before it starts.
        Request::ImportThresholdBundle {
            meta,
            bundle,
            approvals,
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            approvers: names(approvals),
            ..d("import-threshold-key", Some(&bundle.key.key_id), true)
        },
        Request::ListThresholdKeys => d("list-threshold-keys", None, true),
        Request::ThresholdStart {
            meta,
            attempt,
            params,
            approvals,
        } => Described {
            request_id: Some(format!("{}/{attempt}", hex::encode(meta.request_id))),
            path: Some(format_path(&params.path)),
            approvers: names(approvals),
            ..d("threshold-start", Some(&params.key_id), true)
        },
        Request::ThresholdPsbtStart {
            meta,
            attempt,
            input,
            params,
            approvals,
        } => Described {
            request_id: Some(format!(
                "{}/input {input}/{attempt}",
                hex::encode(meta.request_id)
            )),
            approvers: names(approvals),
            ..d("threshold-psbt", Some(&params.key_id), true)
        },
        // Pinned to the node the cloud server chose (like every session request).
        Request::ThresholdAuditStart {
            session, key_id, ..
        } => Described {
            request_id: Some(session_id(session)),
            path: Some(format_path(&[])),
            ..d("threshold-audit", Some(key_id), true)
        },
        // Presignatures live in one node only: every presignature request is pinned.
        Request::ThresholdPresignStart {
            session, key_id, ..
        } => Described {
            request_id: Some(session_id(session)),
            path: Some(format_path(&[])),
            ..d("threshold-presign", Some(key_id), true)
        },
        Request::ThresholdPresignSign {
            meta,
            attempt,
            params,
            approvals,
        } => Described {
            request_id: Some(format!("{}/{attempt}", hex::encode(meta.request_id))),
            path: Some(format_path(&[])),
            approvers: names(approvals),
            ..d("threshold-presign-sign", Some(&params.key_id), true)
        },
        Request::ListPresignatures { key_id } => d("list-presignatures", Some(key_id), true),
        // Every member applies the log; the fan-out to all of them is issue 12 step F2.
        Request::ApplyGovernance { .. } => d("governance-apply", None, true),
        Request::Governance { .. } => d("governance", None, true),
        // Any member signs a ticket; it stores nothing, so a resend is harmless.
        Request::IssueAdmissionTicket { .. } => d("admission-ticket", None, true),
        // Sent to every node, not routed to one (`route_key_policy`): each TEE applies the
        // change once and answers a repeat with the same policy, so a resend is harmless and
        // needs no pinning to the first node.
        Request::SetKeyPolicy {
            meta,
            key_id,
            approvals,
            ..
        } => Described {
            request_id: Some(hex::encode(meta.request_id)),
            approvers: names(approvals),
            ..d("set-key-policy", Some(key_id), false)
        },
        Request::GetKeyPolicy { key_id } => d("get-key-policy", Some(key_id), false),
        Request::ThresholdKeygenStart {
            meta,
            attempt,
            approvals,
            ..
        }
        | Request::ThresholdGroupKeygenStart {
            meta,
            attempt,
            approvals,
            ..
        } => Described {
            request_id: Some(format!("{}/{attempt}", hex::encode(meta.request_id))),
            approvers: names(approvals),
            ..d("threshold-keygen-start", None, true)
        },
        Request::ThresholdFeed { session, .. } => Described {
            request_id: Some(session_id(session)),
            ..d("threshold-round", None, true)
        },
        Request::ThresholdAbort { session, .. } => Described {
            request_id: Some(session_id(session)),
            ..d("threshold-abort", None, true)
        },
        Request::PinRoot { .. }
        | Request::GenerateDeviceKey { .. }
        | Request::InstallDeviceCert { .. }
        | Request::DeviceCsr
        | Request::PinGenesis { .. }
        | Request::ImportWallet { .. }
        | Request::SignTls { .. }
        | Request::ExportKeys { .. }
        | Request::ImportKeys { .. }
        | Request::AttestationIdentity
        | Request::AdmissionEvidence { .. } => return None,
    })
}

/// Refusals that mean "this node lacks the key": another holder may serve it.
pub fn node_lacks_key(e: &TeeError) -> bool {
    matches!(
        e,
        TeeError::UnknownKey(_) | TeeError::KeyRecordCorrupt { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_names_are_read_once_and_stay_exact() {
        let garbage = vec![0x30, 0x03, 0x01, 0x02, 0x03];
        assert_eq!(cached_admin_name(&garbage), admin_name(&garbage));
        assert_eq!(cached_admin_name(&garbage), "<unparsable certificate>");
        assert!(NAMES.lock().unwrap().contains_key(&garbage));
    }

    #[test]
    fn keygen_starts_are_described() {
        use custos_wire::protocol::{RequestMeta, ThresholdKeygenParams};
        let r = Request::ThresholdKeygenStart {
            meta: RequestMeta {
                request_id: [0xab; 16],
                expires_at: 1,
            },
            attempt: 2,
            params: ThresholdKeygenParams {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 1,
                participants: Vec::new(),
            },
            approvals: Vec::new(),
        };
        let d = describe(&r).unwrap();
        assert_eq!(d.kind, "threshold-keygen-start");
        assert_eq!(d.request_id.unwrap(), format!("{}/2", "ab".repeat(16)));
        assert!(d.any_node && d.key_id.is_none());
    }

    /// A policy change names its key and request and goes to the key's nodes, never to "any
    /// node" (which would let a node without the key answer for it).
    #[test]
    fn policy_changes_are_described() {
        use custos_wire::policy::KeyPolicy;
        use custos_wire::protocol::RequestMeta;
        let r = Request::SetKeyPolicy {
            meta: RequestMeta {
                request_id: [0xcd; 16],
                expires_at: 1,
            },
            key_id: vec![3; 33],
            prev: [0; 32],
            policy: KeyPolicy::legacy(1),
            approvals: Vec::new(),
        };
        let d = describe(&r).unwrap();
        assert_eq!(d.kind, "set-key-policy");
        assert_eq!(d.request_id.unwrap(), "cd".repeat(16));
        assert_eq!(d.key_id, Some(vec![3; 33]));
        assert!(!d.any_node && !d.one_effect);
        let read = describe(&Request::GetKeyPolicy {
            key_id: vec![3; 33],
        })
        .unwrap();
        assert_eq!(
            (read.kind, read.key_id),
            ("get-key-policy", Some(vec![3; 33]))
        );
    }
}
