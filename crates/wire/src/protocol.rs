//! Messages between the vault node server (REE) and the TEE core, and their encoding.
//!
//! Encoding is `postcard` (compact, deterministic, no self-describing overhead); an encoded
//! request starts with [`PROTOCOL_VERSION`], and the same byte is the version of every frame on
//! the TEE socket, so a peer of another version is refused by name
//! ([`TeeError::UnsupportedProtocol`], [`crate::frame::RefusalCode::UnsupportedVersion`]) rather
//! than misread. Golden vectors (`tests/golden.rs`) pin the encoding of every variant. Every
//! response travels inside a [`SignedResponse`] signed with the device key D once it exists.
//!
//! The types live in files by family, all re-exported here (paths are `protocol::Request`,
//! `protocol::TeeError`, ...): `request.rs` and `response.rs` (the two enums), `wallets.rs`
//! (imported secrets, wallet facts), `sync.rs` (certificate chains, key transfers),
//! `governance.rs` (the governance view),
//! `threshold.rs` (threshold keys, sessions and their messages), `error.rs` (refusals). This
//! file keeps the limits, the encoding and the signed-response transcript.

use serde::{Deserialize, Serialize};

/// Version of the message schema; bumped on any incompatible change (a reordered, removed or
/// changed variant or field). Version 2: requests carry it as their first byte. Version 3:
/// an approval may be a passkey's WebAuthn assertion ([`crate::approval::Approval::webauthn`]).
pub const PROTOCOL_VERSION: u8 = 3;
/// Largest encoded request the core accepts.
pub const MAX_REQUEST_LEN: usize = 4 * 1024 * 1024;
/// Most approvals one request may carry.
pub const MAX_APPROVALS: usize = 16;
/// Deepest BIP-32 path accepted.
pub const MAX_PATH_DEPTH: usize = 32;
/// Largest quorum of a key: distinct admins, each with one approval on the request.
pub const MAX_QUORUM: u8 = MAX_APPROVALS as u8;
/// Bit 31 of a BIP-32 index: a hardened step.
pub const HARDENED: u32 = 1 << 31;
/// Longest audit message (patent [0086]: short enough never to be a transaction digest).
pub const MAX_AUDIT_MESSAGE: usize = 8;
/// Most keys in one key transfer (keeps an import request under the frame limit).
pub const MAX_TRANSFER_KEYS: usize = 20_000;

/// 33-byte compressed secp256k1 public key of a wallet's root key m: the wallet's id.
pub type KeyId = Vec<u8>;

mod error;
mod governance;
mod request;
mod response;
mod sync;
mod threshold;
mod wallets;

pub use error::{ApprovalFault, PrimesFault, TeeError};
pub use governance::{GovView, MemberInfo};
pub use request::{BitcoinNetwork, EthPayload, RelayClass, Request};
pub use response::{Attestation, DeviceInfo, EcdsaSignature, Response, Status};
pub use sync::{CertChain, KeyTransfer};
pub use threshold::{
    PresignSignParams, PresignatureInfo, SessionRef, ThresholdBundle, ThresholdKeyInfo,
    ThresholdKeygenParams, ThresholdMessage, ThresholdOrigin, ThresholdPsbtParams,
    ThresholdSignParams, ThresholdSigner, MAX_PRESIGNATURES_PER_KEY, MAX_PRESIGN_MESSAGE,
    MAX_THRESHOLD_ATTEMPTS, MAX_THRESHOLD_MESSAGES, MAX_THRESHOLD_PAYLOAD,
};
pub use wallets::{ImportSecret, KeyInfo, Origin, SecretBytes, SecretString};

/// Fields every approved request carries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestMeta {
    /// Unique id chosen by the requester (the cloud server).
    pub request_id: [u8; 16],
    /// Unix time after which the approvals are void.
    pub expires_at: u64,
}

/// The body of a response: success or typed refusal.
pub type Outcome = Result<Response, TeeError>;

/// What crosses the boundary back to the node server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedResponse {
    /// `postcard` encoding of an [`Outcome`].
    pub body: Vec<u8>,
    /// D's ECDSA P-256 signature (DER) over [`response_transcript`], once D exists.
    pub signature: Option<Vec<u8>>,
}

/// Domain tag of response signatures.
pub const RESPONSE_DOMAIN: &[u8] = b"CUSTOS-TEE-RESPONSE-V1\0";

/// What D signs for a response: the domain, SHA-256 of the exact request bytes (so a
/// response cannot be replayed for another request) and the response body.
pub fn response_transcript(request: &[u8], body: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut t = Vec::with_capacity(RESPONSE_DOMAIN.len() + 32 + body.len());
    t.extend_from_slice(RESPONSE_DOMAIN);
    t.extend_from_slice(&Sha256::digest(request));
    t.extend_from_slice(body);
    t
}

/// Domain tag of audit messages.
pub const AUDIT_DOMAIN: &[u8] = b"CUSTOS-AUDIT-V1\0";

/// The digest an audit signature covers: domain-separated, so an audit can never produce a
/// signature over a transaction digest.
pub fn audit_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(AUDIT_DOMAIN);
    h.update([message.len() as u8]);
    h.update(message);
    h.finalize().into()
}

/// The canonical text of a BIP-32 path: `m/44'/0'/0'/0/1` (`'` for hardened steps), as logs,
/// the history and the REST API show it.
pub fn format_path(path: &[u32]) -> String {
    let mut s = String::from("m");
    for &i in path {
        if i & HARDENED != 0 {
            s.push_str(&format!("/{}'", i & !HARDENED));
        } else {
            s.push_str(&format!("/{i}"));
        }
    }
    s
}

/// Encodes a request: [`PROTOCOL_VERSION`], then the `postcard` encoding of `req`.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    postcard::to_io(req, &mut out).expect("requests always serialize");
    out
}

/// Decodes a request, enforcing the size limit, the protocol version and that nothing trails
/// it.
pub fn decode_request(bytes: &[u8]) -> Result<Request, TeeError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(TeeError::InvalidRequest(format!(
            "{} bytes exceeds the {MAX_REQUEST_LEN}-byte limit",
            bytes.len()
        )));
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Err(TeeError::InvalidRequest("empty request".into()));
    };
    if version != PROTOCOL_VERSION {
        return Err(TeeError::UnsupportedProtocol {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (req, rest) = postcard::take_from_bytes::<Request>(body)
        .map_err(|e| TeeError::InvalidRequest(format!("undecodable request: {e}")))?;
    if !rest.is_empty() {
        return Err(TeeError::InvalidRequest(format!(
            "{} trailing bytes after request",
            rest.len()
        )));
    }
    Ok(req)
}

pub use custos_pki::tls::is_tls13_certificate_verify_message;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::SealedImport;

    fn relayable(r: &Request) -> bool {
        r.relay_class() == RelayClass::Relayed
    }

    #[test]
    fn sealed_imports_are_relayed_plaintext_imports_are_not() {
        let meta = RequestMeta {
            request_id: [1; 16],
            expires_at: 0,
        };
        assert!(relayable(&Request::ImportWalletSealed {
            meta: meta.clone(),
            quorum: 1,
            key_id: vec![2; 33],
            sealed: SealedImport {
                enc: vec![4; 65],
                ciphertext: vec![0; 64],
            },
            approvals: Vec::new(),
        }));
        assert!(relayable(&Request::ThresholdKeygenStart {
            meta: meta.clone(),
            attempt: 0,
            params: ThresholdKeygenParams {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 1,
                participants: Vec::new(),
            },
            approvals: Vec::new(),
        }));
        assert!(!relayable(&Request::ImportWallet {
            meta,
            quorum: 1,
            key_id: vec![2; 33],
            secret: ImportSecret::Seed(SecretBytes(vec![0; 32])),
            approvals: Vec::new(),
        }));
    }

    #[test]
    fn governance_requests_are_relayed() {
        // Entries carry their approvals and views are signed by D: both are public.
        for r in [
            Request::ApplyGovernance {
                cluster: "dc1".into(),
                entries: Vec::new(),
            },
            Request::Governance {
                cluster: "dc1".into(),
                since: 0,
            },
        ] {
            assert!(relayable(&r), "{r:?}");
        }
    }

    #[test]
    fn provisioning_tls_and_transfers_stay_on_the_node() {
        for r in [
            Request::PinRoot { root_cert: vec![] },
            Request::DeviceCsr,
            Request::PinGenesis {
                genesis_id: [0; 32],
            },
            Request::SignTls { message: vec![] },
            Request::ExportKeys {
                requester: CertChain::default(),
                key_ids: vec![],
            },
        ] {
            assert_eq!(r.relay_class(), RelayClass::NodeOnly, "{r:?}");
        }
    }

    #[test]
    fn error_codes_are_stable_snake_case() {
        let samples = [
            TeeError::InvalidRequest(String::new()),
            TeeError::ApprovalMissing,
            TeeError::QuorumNotMet {
                required: 2,
                approved: 1,
            },
            TeeError::UnknownKey(String::new()),
            TeeError::UnsupportedProtocol {
                found: 1,
                supported: PROTOCOL_VERSION,
            },
        ];
        let codes: Vec<&str> = samples.iter().map(TeeError::code).collect();
        assert_eq!(
            codes,
            [
                "invalid_request",
                "approval_missing",
                "quorum_not_met",
                "unknown_key",
                "unsupported_protocol"
            ]
        );
    }

    #[test]
    fn requests_carry_the_protocol_version_first() {
        let bytes = encode_request(&Request::Status);
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(decode_request(&bytes), Ok(Request::Status));
        assert!(matches!(
            decode_request(&[]),
            Err(TeeError::InvalidRequest(_))
        ));
        let mut other = bytes.clone();
        other[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_request(&other),
            Err(TeeError::UnsupportedProtocol {
                found: PROTOCOL_VERSION + 1,
                supported: PROTOCOL_VERSION
            })
        );
    }
}
