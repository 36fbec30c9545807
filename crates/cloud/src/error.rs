//! API errors: an HTTP status and a stable snake_case code, rendered as
//! `{"error":{"code":"...","message":"..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::db::StoreError;
use custos_cloud_api::{ApiErrorBody, ApiErrorDetail};

/// Every error code the API returns, with its HTTP status (also listed in the OpenAPI
/// description). Request-level codes (a request's `error.code`) are listed in
/// [`REQUEST_ERROR_CODES`].
pub const API_ERROR_CODES: &[(&str, u16, &str)] = &[
    ("unauthorized", 401, "missing or unknown bearer token"),
    (
        "malformed_json",
        400,
        "body is not valid JSON of the expected shape",
    ),
    (
        "unsupported_media_type",
        415,
        "body is not application/json",
    ),
    (
        "body_too_large",
        413,
        "body over the limit (64 KiB; 576 KiB for threshold key imports)",
    ),
    (
        "invalid_query",
        400,
        "query string not understood or out of range",
    ),
    ("invalid_digest", 400, "digest is not 32 bytes of hex"),
    (
        "invalid_path",
        400,
        "BIP-32 path syntax, index range or depth",
    ),
    (
        "hardened_path",
        400,
        "hardened step where only public derivation is possible",
    ),
    (
        "invalid_range",
        400,
        "derivation range (count at most 1000, indices below 2^31)",
    ),
    ("invalid_root_id", 400, "root id is not 33 bytes of hex"),
    (
        "invalid_request_id",
        400,
        "request id is not 16 bytes of hex",
    ),
    ("invalid_quorum", 400, "quorum outside 1..=16"),
    (
        "invalid_expiry",
        400,
        "expiry in the past or more than 7 days ahead",
    ),
    (
        "invalid_secret",
        400,
        "import needs exactly one valid mnemonic or seed",
    ),
    ("too_many_approvals", 400, "more than 16 approvals"),
    (
        "invalid_bundle",
        400,
        "threshold bundle is not hex of a consistent dealer bundle of at most 256 KiB",
    ),
    (
        "invalid_key_id",
        400,
        "threshold key id is not 33 bytes of hex of a compressed point",
    ),
    (
        "invalid_clusters",
        400,
        "cluster list has duplicates, clusters without a share of the key, or fewer than t \
         (a new key: 2 to 64 distinct clusters)",
    ),
    (
        "invalid_threshold",
        400,
        "threshold outside 2..=n (the number of clusters)",
    ),
    (
        "invalid_message",
        400,
        "message is not hex of at most 64 KiB, or the digest given is not its SHA-256",
    ),
    ("invalid_count", 400, "presignature count outside 1..=64"),
    (
        "hd_threshold_key",
        409,
        "presignatures are only made for threshold keys without chain code",
    ),
    ("unknown_threshold_key", 404, "no such threshold key"),
    (
        "no_threshold_audit",
        404,
        "no audit of the threshold key was run since the server started",
    ),
    (
        "bundle_recipient_unknown",
        422,
        "no node of the share's cluster has the device certificate the bundle is sealed to",
    ),
    (
        "threshold_key_mismatch",
        409,
        "the bundle's key facts differ from the recorded threshold key",
    ),
    ("unknown_wallet", 404, "no such wallet"),
    ("unknown_request", 404, "no such request"),
    ("unknown_cluster", 404, "no such cluster configured"),
    ("not_found", 404, "no such route"),
    ("method_not_allowed", 405, "route does not take this method"),
    (
        "approval_invalid",
        422,
        "approval certificate or signature does not verify",
    ),
    ("duplicate_approval", 409, "this admin already approved"),
    (
        "not_pending",
        409,
        "request is not in a state that allows this",
    ),
    ("request_expired", 409, "approval window has passed"),
    ("request_exists", 409, "a request with this id exists"),
    ("wallet_exists", 409, "this wallet is already known"),
    ("conflict", 409, "request changed concurrently; retry"),
    (
        "cluster_unavailable",
        503,
        "the cluster's relay could not be reached (request retryable)",
    ),
    (
        "relay_rejected",
        502,
        "the relay refused the cloud server's call",
    ),
    (
        "bridge_refused",
        502,
        "the cluster's bridge refused the operation",
    ),
    (
        "unverified_response",
        502,
        "a cluster answer failed verification",
    ),
    ("internal", 500, "server-side failure (logged)"),
];

/// Codes a request's `error.code` can carry besides `cluster_unavailable`,
/// `relay_rejected` and `unverified_response`.
pub const REQUEST_ERROR_CODES: &[(&str, &str)] = &[
    (
        "tee_*",
        "the TEE refused: tee_ + snake_case of its error (e.g. tee_approval_rejected)",
    ),
    ("bridge_*", "the bridge refused: bridge_ + its refusal code"),
    (
        "bad_signature",
        "the returned signature does not verify or is for the wrong key",
    ),
    (
        "bad_result",
        "the returned wallet does not match the request",
    ),
    (
        "relay_protocol",
        "the relay's answer was undecodable or of the wrong kind",
    ),
    (
        "unknown_cluster",
        "the request's cluster is no longer configured",
    ),
    (
        "threshold_aborted",
        "a threshold session was aborted: a participant was unreachable, stalled, timed out \
         or misbehaved; the message names the cluster(s) and the phase (getAB, getAB_and_R, \
         getR, getSig; keygen, auxInfo for a key generation). Retrying makes a new attempt",
    ),
    (
        "threshold_attempts_exhausted",
        "every attempt an approved threshold request may make was used",
    ),
    (
        "threshold_key_mismatch",
        "the imported share's key facts differ from the recorded threshold key, or the TEEs \
         of a key generation reported different keys",
    ),
    (
        "unknown_threshold_key",
        "the threshold key is not recorded (any more)",
    ),
];

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (one of [`API_ERROR_CODES`]).
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// Request concerned, if one was recorded.
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error with the status registered for `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let status = API_ERROR_CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .and_then(|(_, s, _)| StatusCode::from_u16(*s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            code,
            message: message.into(),
            request_id: None,
        }
    }

    /// Names the request concerned.
    pub fn with_request(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_string());
        self
    }

    /// A server-side failure: the details are logged, not shown.
    pub fn internal(context: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(context, error = %e, "internal error");
        ApiError::new("internal", format!("{context} failed; see the server log"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(id) => ApiError::new(
                "conflict",
                format!("request {id} changed concurrently; retry"),
            ),
            StoreError::Duplicate(what) => {
                ApiError::new("request_exists", format!("{what} already exists"))
            }
            StoreError::Inconsistent(why) => ApiError::new("threshold_key_mismatch", why),
            other => ApiError::internal("database", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                request_id: self.request_id,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_with_statuses() {
        let mut seen = std::collections::HashSet::new();
        for (code, status, _) in API_ERROR_CODES {
            assert!(seen.insert(code), "{code} twice");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(StatusCode::from_u16(*status).is_ok());
            assert_eq!(ApiError::new(code, "").status.as_u16(), *status);
        }
    }
}
