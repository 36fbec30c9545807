//! The approval message of a request, computed from its fields with the TEE core's own
//! encoder ([`Action::message`]): the server shows it, approvers recompute it (never
//! trusting the server's bytes), and the TEE checks the same bytes.

use custos_pki::AdminSigner;
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::RequestMeta;

use crate::path::parse_path;
use crate::{ApprovalBody, KeyId, RequestKind, RequestView};

/// Parses 16 bytes of hex (a request id).
pub fn parse_request_id(s: &str) -> Result<[u8; 16], String> {
    parse_hex_array(s, "request id")
}

/// Parses 32 bytes of hex (a digest).
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    parse_hex_array(s, "digest")
}

/// Parses a key fingerprint: 32 bytes of hex (SHA-256 of a certified key's
/// SubjectPublicKeyInfo, or a log hash).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    parse_hex_array(s, "fingerprint")
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
        RequestKind::CreateWallet => Action::CreateWallet {
            quorum: view.quorum,
        }
        .message(&view.cluster, &meta),
        RequestKind::ImportWallet => Action::ImportWallet {
            quorum: view.quorum,
            key_id: &key_id()?,
        }
        .message(&view.cluster, &meta),
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
            Action::CreateThresholdKey {
                quorum: view.quorum,
                threshold: view.threshold.ok_or("request has no threshold")?,
                hd: view
                    .hd
                    .ok_or("request does not say whether the key is HD")?,
                clusters: view.clusters.as_deref().ok_or("request has no clusters")?,
            }
            .message(THRESHOLD_SCOPE, &meta)
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
    })
}

/// An approval of `message` by `signer`, in the API's form. Fails only when the admin's key
/// does not sign (a token removed or locked, for instance).
pub fn sign_approval(
    signer: &AdminSigner,
    message: &[u8],
) -> Result<ApprovalBody, custos_pki::PkiError> {
    Ok(ApprovalBody {
        admin_cert_pem: custos_pki::der_to_pem(&signer.cert_der, "CERTIFICATE"),
        admin_ca_pem: custos_pki::der_to_pem(&signer.admin_ca_der, "CERTIFICATE"),
        signature_hex: hex::encode(signer.sign(message)?),
    })
}
