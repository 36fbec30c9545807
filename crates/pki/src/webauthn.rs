//! Passkey approvals (issue 17, step P2 of `docs/console-plan.md`): an admin whose
//! certified key is a WebAuthn passkey approves with an **assertion**, the authenticator's
//! ES256 signature over `authenticatorData || SHA-256(clientDataJSON)`, where the client data
//! names the console's origin and, as its challenge, the SHA-256 of the approval message.
//!
//! The Admin CA binds a passkey to one console: its certificate carries the console's origin
//! as a SubjectAltName URI ([`PasskeyBinding`]); the RP id is the origin's host. A verifier
//! (the TEE core, the cloud server) then needs no console configuration of its own, and an
//! assertion made for any other site, or for any other request, never counts.
//!
//! Checked, in order, each refusal named ([`AssertionFault`]): sizes; the client data's
//! `type` (`webauthn.get`), `challenge`, `origin` and `crossOrigin`; the authenticator data's
//! RP id hash and its user-present and user-verified flags; the signature with the certified
//! key. The signature counter is returned for the caller to keep (a counter that does not
//! grow shows a cloned authenticator or a replay).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::VerifiedAdmin;

/// Longest client data JSON accepted (browsers send 130 to 250 bytes; sixteen approvals with
/// their certificates still fit in one API request body).
pub const MAX_CLIENT_DATA: usize = 512;
/// Longest authenticator data accepted (37 bytes, more with extensions, which assertions
/// rarely carry).
pub const MAX_AUTHENTICATOR_DATA: usize = 256;
/// Longest ES256 signature (DER).
const MAX_SIGNATURE: usize = 80;
/// The flag bits of the authenticator data (WebAuthn §6.1).
const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;

/// The console an admin's passkey was certified for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyBinding {
    /// The console's origin, as browsers write it in client data (`https://host[:port]`).
    pub origin: String,
    /// The WebAuthn relying party id: the origin's host.
    pub rp_id: String,
}

impl PasskeyBinding {
    /// The binding a certificate's SubjectAltName URI states: an `https` origin with a host,
    /// nothing after it.
    pub fn from_uri(uri: &str) -> Result<Self, String> {
        let url = url::Url::parse(uri).map_err(|e| format!("passkey origin {uri:?}: {e}"))?;
        let host = url.host_str().filter(|h| !h.is_empty());
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
        match (url.scheme(), host) {
            ("https", Some(host)) if bare && url.username().is_empty() => Ok(PasskeyBinding {
                origin: url.origin().ascii_serialization(),
                rp_id: host.to_string(),
            }),
            _ => Err(format!(
                "passkey origin {uri:?} is not an https origin (scheme, host and port only)"
            )),
        }
    }
}

/// A WebAuthn assertion as the browser returns it (`AuthenticatorAssertionResponse`).
#[derive(Clone, Copy, Debug)]
pub struct Assertion<'a> {
    /// `authenticatorData`.
    pub authenticator_data: &'a [u8],
    /// `clientDataJSON`.
    pub client_data_json: &'a [u8],
    /// `signature` (ES256, DER).
    pub signature: &'a [u8],
}

/// Why an assertion does not approve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssertionFault {
    /// The certificate certifies no passkey (a key-file admin signs approvals directly).
    NotAPasskey,
    /// A part is over its size limit or does not parse.
    Malformed,
    /// The client data is not of an authentication (`webauthn.get`).
    WrongType,
    /// The challenge is not this approval message's hash (an assertion for another request).
    WrongChallenge,
    /// Made on another site than the console the passkey was certified for.
    WrongOrigin,
    /// Made in a frame of another origin.
    CrossOrigin,
    /// The authenticator data names another relying party.
    WrongRpId,
    /// The user was not present (no touch, no click).
    UserNotPresent,
    /// The authenticator did not verify the user (no PIN, no biometric).
    UserNotVerified,
    /// The signature does not verify with the certified key.
    BadSignature,
}

impl AssertionFault {
    /// The stable name of the fault.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionFault::NotAPasskey => "not_a_passkey",
            AssertionFault::Malformed => "malformed_assertion",
            AssertionFault::WrongType => "wrong_type",
            AssertionFault::WrongChallenge => "wrong_challenge",
            AssertionFault::WrongOrigin => "wrong_origin",
            AssertionFault::CrossOrigin => "cross_origin",
            AssertionFault::WrongRpId => "wrong_rp_id",
            AssertionFault::UserNotPresent => "user_not_present",
            AssertionFault::UserNotVerified => "user_not_verified",
            AssertionFault::BadSignature => "bad_signature",
        }
    }
}

/// An assertion refused: the fault and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", fault.as_str())]
pub struct AssertionError {
    /// What was wrong.
    pub fault: AssertionFault,
    /// Details for the log and the refusal message.
    pub detail: String,
}

fn refuse(fault: AssertionFault, detail: impl Into<String>) -> AssertionError {
    AssertionError {
        fault,
        detail: detail.into(),
    }
}

/// The client data fields checked (others, such as `tokenBinding`, are ignored).
#[derive(serde::Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: bool,
}

/// The challenge an assertion approving `message` carries: base64url (no padding) of its
/// SHA-256.
pub fn approval_challenge(message: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(message))
}

impl VerifiedAdmin {
    /// Checks `assertion` as this admin's approval of `message` (module documentation);
    /// returns the authenticator's signature counter.
    pub fn verify_assertion(
        &self,
        message: &[u8],
        assertion: &Assertion<'_>,
    ) -> Result<u32, AssertionError> {
        let Some(binding) = &self.passkey else {
            return Err(refuse(
                AssertionFault::NotAPasskey,
                format!("admin {:?} has no passkey certificate", self.identity.name),
            ));
        };
        let a = assertion;
        if a.client_data_json.len() > MAX_CLIENT_DATA
            || a.authenticator_data.len() > MAX_AUTHENTICATOR_DATA
            || a.signature.len() > MAX_SIGNATURE
        {
            return Err(refuse(
                AssertionFault::Malformed,
                "a part is over its limit",
            ));
        }
        let client: ClientData = serde_json::from_slice(a.client_data_json)
            .map_err(|e| refuse(AssertionFault::Malformed, format!("client data: {e}")))?;
        if client.kind != "webauthn.get" {
            return Err(refuse(
                AssertionFault::WrongType,
                format!("client data of type {:?}", client.kind),
            ));
        }
        if client.challenge != approval_challenge(message) {
            return Err(refuse(
                AssertionFault::WrongChallenge,
                "the challenge is not this request's approval message",
            ));
        }
        if client.origin != binding.origin {
            return Err(refuse(
                AssertionFault::WrongOrigin,
                format!(
                    "made on {:?}, certified for {:?}",
                    client.origin, binding.origin
                ),
            ));
        }
        if client.cross_origin {
            return Err(refuse(
                AssertionFault::CrossOrigin,
                "made in a frame of another origin",
            ));
        }
        let data = a.authenticator_data;
        if data.len() < 37 {
            return Err(refuse(
                AssertionFault::Malformed,
                format!("authenticator data of {} bytes", data.len()),
            ));
        }
        if data[..32] != Sha256::digest(binding.rp_id.as_bytes())[..] {
            return Err(refuse(
                AssertionFault::WrongRpId,
                format!("the authenticator data is not for {:?}", binding.rp_id),
            ));
        }
        let flags = data[32];
        if flags & USER_PRESENT == 0 {
            return Err(refuse(AssertionFault::UserNotPresent, "UP flag not set"));
        }
        if flags & USER_VERIFIED == 0 {
            return Err(refuse(AssertionFault::UserNotVerified, "UV flag not set"));
        }
        let mut signed = Vec::with_capacity(data.len() + 32);
        signed.extend_from_slice(data);
        signed.extend_from_slice(&Sha256::digest(a.client_data_json));
        self.verify_signature(&signed, a.signature).map_err(|_| {
            refuse(
                AssertionFault::BadSignature,
                format!("not signed by the passkey of {:?}", self.identity.name),
            )
        })?;
        Ok(u32::from_be_bytes(
            data[33..37].try_into().expect("4 bytes"),
        ))
    }
}
