//! Webhook notifications: what the cloud server POSTs to an operator's receivers when a
//! request changes state, and how a receiver checks that the server sent it.
//!
//! Each notification is one JSON [`WebhookEvent`] (at most [`MAX_EVENT_BYTES`]) with the
//! headers
//!
//! * `Custos-Event-Id`: the event's id, `<request id>.<seq>` (the request's lifecycle log
//!   position), the same at every retry. Deliveries are at least once: a receiver keeps the
//!   ids it processed and answers 2xx to one it already has, doing nothing;
//! * `Custos-Event`: its type ([`EventType`]);
//! * `Custos-Timestamp`: Unix seconds when this attempt was signed;
//! * `Custos-Signature`: `v1=` hex HMAC-SHA256(secret, timestamp `.` body).
//!
//! A receiver checks a delivery with [`verify`]: the signature over the raw body first (in
//! constant time), then the timestamp within a tolerance (an old delivery sent again by
//! someone who captured it is refused), then the body, which must name the same id and
//! type as the headers (a receiver may deduplicate on the header alone). A delivery whose
//! signature held but whose body this version cannot read (`Malformed`: an event type or
//! request kind added later) is genuine: answer it 2xx and read it once upgraded, or the
//! server retries it until it gives up.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{RequestKind, RequestStatus};

/// Header: the event's id.
pub const EVENT_ID_HEADER: &str = "custos-event-id";
/// Header: the event's type.
pub const EVENT_HEADER: &str = "custos-event";
/// Header: when this attempt was signed (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "custos-timestamp";
/// Header: `v1=<hex HMAC-SHA256>` (a receiver accepts up to [`MAX_SIGNATURES`]
/// comma-separated, for signatures of other versions to come).
pub const SIGNATURE_HEADER: &str = "custos-signature";
/// Most signatures [`verify`] looks at in one header.
pub const MAX_SIGNATURES: usize = 4;
/// Largest event body the server sends and [`verify`] reads.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Shortest secret the server accepts (bytes).
pub const MIN_SECRET_BYTES: usize = 32;
/// Default [`verify`] tolerance between the timestamp and the receiver's clock (seconds).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// Created without its quorum: it waits for admins' approvals.
    #[serde(rename = "request.pending")]
    Pending,
    /// Its quorum was reached (on arrival or by the last approval): it is being executed.
    #[serde(rename = "request.approved")]
    Approved,
    /// The TEE executed it (signed, created, imported ...); the result is in the request.
    #[serde(rename = "request.completed")]
    Completed,
    /// A TEE refused it, or an admin rejected it (`rejected_by_admin`).
    #[serde(rename = "request.refused")]
    Refused,
    /// Its approval window passed before its quorum.
    #[serde(rename = "request.expired")]
    Expired,
    /// It could not be executed (a cluster unreachable, a protocol failure). Not final: a
    /// resubmission sends no event of its own, and `request.completed` may follow.
    #[serde(rename = "request.failed")]
    Failed,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 6] = [
        EventType::Pending,
        EventType::Approved,
        EventType::Completed,
        EventType::Refused,
        EventType::Expired,
        EventType::Failed,
    ];

    /// Its name (`request.pending`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Pending => "request.pending",
            EventType::Approved => "request.approved",
            EventType::Completed => "request.completed",
            EventType::Refused => "request.refused",
            EventType::Expired => "request.expired",
            EventType::Failed => "request.failed",
        }
    }

    /// The type named `s`.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The request's state right after this event.
    pub fn status(self) -> RequestStatus {
        match self {
            EventType::Pending => RequestStatus::PendingApproval,
            EventType::Approved => RequestStatus::Submitting,
            EventType::Completed => RequestStatus::Completed,
            EventType::Refused => RequestStatus::Refused,
            EventType::Expired => RequestStatus::Expired,
            EventType::Failed => RequestStatus::Failed,
        }
    }
}

/// One notification's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// `<request id>.<seq>`: unique, the same at every retry.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event: EventType,
    /// When it happened (Unix ms).
    pub occurred_at: u64,
    /// The request it happened to.
    pub request: EventRequest,
    /// Why it was refused, failed or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// The request's page in the approvers' console, when the server serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
}

/// The request an event is about (read the rest with `GET /v1/requests/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRequest {
    /// Request id (hex).
    pub id: String,
    /// What it asks for.
    pub kind: RequestKind,
    /// Its cluster (or the threshold scope).
    pub cluster: String,
    /// The tenant whose token created it.
    pub tenant: String,
    /// Its state right after the event.
    pub status: RequestStatus,
    /// Approvals it needs.
    pub quorum: u8,
}

/// A refusal's or failure's code and message, as the request records them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    /// Stable code (see [`crate::ErrorCode`] and the TEE's refusal codes).
    pub code: String,
    /// For people.
    pub message: String,
}

/// The headers of one delivery, as the receiver got them.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// `Custos-Event-Id`.
    pub event_id: Option<&'a str>,
    /// `Custos-Event`.
    pub event: Option<&'a str>,
    /// `Custos-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `Custos-Signature`.
    pub signature: Option<&'a str>,
}

/// Why [`verify`] refused a delivery.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookError {
    /// A header is missing.
    #[error("webhook delivery without its {0} header")]
    MissingHeader(&'static str),
    /// The timestamp header is not Unix seconds.
    #[error("webhook timestamp {0:?} is not Unix seconds")]
    BadTimestamp(String),
    /// No `v1` signature matches the body under the secret.
    #[error("webhook signature does not match the body")]
    BadSignature,
    /// Signed too long ago (or ahead of the receiver's clock): a replay, or clocks apart.
    #[error("webhook signed at {timestamp}, {skew} s from now: outside the tolerance")]
    Stale {
        /// The header's time.
        timestamp: u64,
        /// Seconds between it and now.
        skew: u64,
    },
    /// Larger than [`MAX_EVENT_BYTES`].
    #[error("webhook body of {0} bytes exceeds {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    /// The body is not an event.
    #[error("webhook body is not an event: {0}")]
    Malformed(String),
    /// The headers name another event than the body.
    #[error("webhook headers name event {header:?}, the body {body:?}")]
    HeaderMismatch {
        /// What the headers say.
        header: String,
        /// What the signed body says.
        body: String,
    },
}

/// The MAC over `timestamp` exactly as written in the header, `.`, and `body`.
fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Custos-Signature` value of `body` signed at `timestamp` (Unix seconds, written in
/// decimal without sign or leading zeros, as in the `Custos-Timestamp` header).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, &timestamp.to_string(), body).finalize();
    format!("v1={}", hex::encode(tag.into_bytes()))
}

/// Checks a delivery received at `now` (Unix seconds) and returns its event: size, then
/// signature, then time (within `tolerance_secs` either way), then body and headers.
pub fn verify(
    secret: &[u8],
    headers: Delivery<'_>,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<WebhookEvent, WebhookError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(WebhookError::TooLarge(body.len()));
    }
    let stamp = headers
        .timestamp
        .ok_or(WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
    let signatures = headers
        .signature
        .ok_or(WebhookError::MissingHeader(SIGNATURE_HEADER))?;
    let timestamp: u64 =
        (!stamp.is_empty() && stamp.len() <= 20 && stamp.bytes().all(|b| b.is_ascii_digit()))
            .then(|| stamp.parse().ok())
            .flatten()
            .ok_or_else(|| WebhookError::BadTimestamp(stamp.chars().take(32).collect()))?;
    // One MAC over the body whatever the number of candidates; each compared in constant
    // time.
    let expected = mac(secret, stamp, body);
    let signed = signatures
        .split(',')
        .take(MAX_SIGNATURES)
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .filter(|h| h.len() == 64)
        .filter_map(|h| hex::decode(h).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    if !signed {
        return Err(WebhookError::BadSignature);
    }
    let skew = now.abs_diff(timestamp);
    if skew > tolerance_secs {
        return Err(WebhookError::Stale { timestamp, skew });
    }
    let event: WebhookEvent =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    let id = headers
        .event_id
        .ok_or(WebhookError::MissingHeader(EVENT_ID_HEADER))?;
    let kind = headers
        .event
        .ok_or(WebhookError::MissingHeader(EVENT_HEADER))?;
    for (header, body) in [(id, event.id.as_str()), (kind, event.event.as_str())] {
        if header != body {
            return Err(WebhookError::HeaderMismatch {
                header: header.chars().take(64).collect(),
                body: body.to_string(),
            });
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn event() -> WebhookEvent {
        WebhookEvent {
            id: "00ff.3".into(),
            event: EventType::Completed,
            occurred_at: 1_700_000_000_000,
            request: EventRequest {
                id: "00ff".into(),
                kind: RequestKind::Sign,
                cluster: "dc1".into(),
                tenant: "default".into(),
                status: RequestStatus::Completed,
                quorum: 2,
            },
            error: None,
            console_url: None,
        }
    }

    fn headers<'a>(signature: &'a str, stamp: &'a str) -> Delivery<'a> {
        Delivery {
            event_id: Some("00ff.3"),
            event: Some("request.completed"),
            timestamp: Some(stamp),
            signature: Some(signature),
        }
    }

    /// The signature binds secret, time and every body byte; a late copy is refused.
    #[test]
    fn only_a_fresh_delivery_signed_with_the_secret_over_this_body_passes() {
        let body = serde_json::to_vec(&event()).unwrap();
        let sig = sign(SECRET, 1000, &body);
        let ok = verify(SECRET, headers(&sig, "1000"), &body, 1100, 300).unwrap();
        assert_eq!(ok, event());
        let rotating = format!("v1=00,{sig}");
        assert!(verify(SECRET, headers(&rotating, "1000"), &body, 1000, 300).is_ok());

        let mut tampered = body.clone();
        tampered[10] ^= 1;
        let refused = |r: Result<WebhookEvent, WebhookError>| r.unwrap_err();
        assert_eq!(
            refused(verify(SECRET, headers(&sig, "1000"), &tampered, 1000, 300)),
            WebhookError::BadSignature
        );
        assert_eq!(
            refused(verify(
                b"another secret",
                headers(&sig, "1000"),
                &body,
                1000,
                300
            )),
            WebhookError::BadSignature
        );
        // The timestamp is signed: moving it forward breaks the signature.
        assert_eq!(
            refused(verify(SECRET, headers(&sig, "1400"), &body, 1400, 300)),
            WebhookError::BadSignature
        );
        assert_eq!(
            refused(verify(SECRET, headers(&sig, "1000"), &body, 1301, 300)),
            WebhookError::Stale {
                timestamp: 1000,
                skew: 301
            }
        );
        let mut other = headers(&sig, "1000");
        other.event_id = Some("00ff.4");
        assert!(matches!(
            refused(verify(SECRET, other, &body, 1000, 300)),
            WebhookError::HeaderMismatch { .. }
        ));
        other = headers(&sig, "1000");
        other.signature = None;
        assert_eq!(
            refused(verify(SECRET, other, &body, 1000, 300)),
            WebhookError::MissingHeader(SIGNATURE_HEADER)
        );
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            refused(verify(SECRET, headers(&sig, "1000"), &big, 1000, 300)),
            WebhookError::TooLarge(MAX_EVENT_BYTES + 1)
        );
    }

    /// A fixed vector, computed apart from this code (Python's `hmac`, the same in
    /// `openssl dgst -sha256 -hmac`): what is signed is `timestamp "." body`, nothing else.
    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        let sig = sign(SECRET, 1700000000, br#"{"id":"00ff.3"}"#);
        assert_eq!(
            sig,
            "v1=38a81785366e8418f61bcb151619c9318e6b2b5d7129654df4297b77ed9e77a8"
        );
        // A timestamp written otherwise is refused, not read as the same number.
        for stamp in ["+1700000000", "01700000000", " 1700000000", "1.7e9", ""] {
            let e = verify(SECRET, headers(&sig, stamp), b"{}", 1700000000, 300).unwrap_err();
            assert!(
                matches!(
                    e,
                    WebhookError::BadTimestamp(_) | WebhookError::BadSignature
                ),
                "{stamp:?}: {e:?}"
            );
        }
    }

    #[test]
    fn event_types_round_trip_by_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::parse("request.created"), None);
    }
}
