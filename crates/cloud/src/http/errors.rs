//! Errors over HTTP: the status of each API error code (the only place it is decided) and
//! the body `{"error":{"code":"...","message":"...","request_id":"..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_cloud_api::{ApiErrorBody, ApiErrorDetail, ErrorCode};

use crate::error::ApiError;

/// The HTTP status of `code`.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    let status: u16 = match code {
        ErrorCode::Unauthorized => 401,
        ErrorCode::MalformedJson => 400,
        ErrorCode::UnsupportedMediaType => 415,
        ErrorCode::BodyTooLarge => 413,
        ErrorCode::InvalidQuery => 400,
        ErrorCode::InvalidDigest => 400,
        ErrorCode::InvalidPath => 400,
        ErrorCode::HardenedPath => 400,
        ErrorCode::InvalidRange => 400,
        ErrorCode::InvalidRootId => 400,
        ErrorCode::InvalidRequestId => 400,
        ErrorCode::InvalidQuorum => 400,
        ErrorCode::InvalidExpiry => 400,
        ErrorCode::InvalidSecret => 400,
        ErrorCode::TooManyApprovals => 400,
        ErrorCode::InvalidBundle => 400,
        ErrorCode::InvalidKeyId => 400,
        ErrorCode::InvalidClusters => 400,
        ErrorCode::InvalidThreshold => 400,
        ErrorCode::InvalidMessage => 400,
        ErrorCode::InvalidCount => 400,
        ErrorCode::HdThresholdKey => 409,
        ErrorCode::UnknownThresholdKey => 404,
        ErrorCode::NoThresholdAudit => 404,
        ErrorCode::BundleRecipientUnknown => 422,
        ErrorCode::ThresholdKeyMismatch => 409,
        ErrorCode::UnknownWallet => 404,
        ErrorCode::UnknownRequest => 404,
        ErrorCode::UnknownCluster => 404,
        ErrorCode::NotFound => 404,
        ErrorCode::MethodNotAllowed => 405,
        ErrorCode::ApprovalInvalid => 422,
        ErrorCode::DuplicateApproval => 409,
        ErrorCode::NotPending => 409,
        ErrorCode::RequestExpired => 409,
        ErrorCode::RequestExists => 409,
        ErrorCode::WalletExists => 409,
        ErrorCode::Conflict => 409,
        ErrorCode::ClusterUnavailable => 503,
        ErrorCode::RelayRejected => 502,
        ErrorCode::BridgeRefused => 502,
        ErrorCode::UnverifiedResponse => 502,
        ErrorCode::Internal => 500,
        ErrorCode::ScopeMissing => 403,
        ErrorCode::RateLimited => 429,
        ErrorCode::InvalidFingerprint => 400,
        ErrorCode::InvalidGovernance => 400,
        ErrorCode::InvalidChain => 400,
        ErrorCode::UnknownMember => 404,
        ErrorCode::AlreadyGoverned => 409,
        ErrorCode::NotGoverned => 409,
        ErrorCode::ApproverNotAGovernor => 422,
        ErrorCode::AdminRevoked => 422,
        ErrorCode::InvalidGroup => 400,
        ErrorCode::UnknownExecutor => 422,
        ErrorCode::ApproverNotInGroup => 422,
        ErrorCode::ApprovalFormatChanged => 409,
        ErrorCode::ExecutorKeyMismatch => 502,
        ErrorCode::InvalidNetwork => 400,
        ErrorCode::InvalidPsbt => 400,
        ErrorCode::TransactionRejected => 422,
        ErrorCode::InvalidRules => 400,
        ErrorCode::InvalidEthereum => 400,
        ErrorCode::ReplicaUnavailable => 503,
    };
    StatusCode::from_u16(status).expect("a valid HTTP status")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
                request_id: self.request_id,
            },
        };
        (status_of(self.code), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published statuses, pinned: changing one is an API change and must show here.
    #[test]
    fn statuses_are_the_published_ones() {
        let published: [(ErrorCode, u16); 64] = [
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::MalformedJson, 400),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::BodyTooLarge, 413),
            (ErrorCode::InvalidQuery, 400),
            (ErrorCode::InvalidDigest, 400),
            (ErrorCode::InvalidPath, 400),
            (ErrorCode::HardenedPath, 400),
            (ErrorCode::InvalidRange, 400),
            (ErrorCode::InvalidRootId, 400),
            (ErrorCode::InvalidRequestId, 400),
            (ErrorCode::InvalidQuorum, 400),
            (ErrorCode::InvalidExpiry, 400),
            (ErrorCode::InvalidSecret, 400),
            (ErrorCode::TooManyApprovals, 400),
            (ErrorCode::InvalidBundle, 400),
            (ErrorCode::InvalidKeyId, 400),
            (ErrorCode::InvalidClusters, 400),
            (ErrorCode::InvalidThreshold, 400),
            (ErrorCode::InvalidMessage, 400),
            (ErrorCode::InvalidCount, 400),
            (ErrorCode::HdThresholdKey, 409),
            (ErrorCode::UnknownThresholdKey, 404),
            (ErrorCode::NoThresholdAudit, 404),
            (ErrorCode::BundleRecipientUnknown, 422),
            (ErrorCode::ThresholdKeyMismatch, 409),
            (ErrorCode::UnknownWallet, 404),
            (ErrorCode::UnknownRequest, 404),
            (ErrorCode::UnknownCluster, 404),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::ApprovalInvalid, 422),
            (ErrorCode::DuplicateApproval, 409),
            (ErrorCode::NotPending, 409),
            (ErrorCode::RequestExpired, 409),
            (ErrorCode::RequestExists, 409),
            (ErrorCode::WalletExists, 409),
            (ErrorCode::Conflict, 409),
            (ErrorCode::ClusterUnavailable, 503),
            (ErrorCode::RelayRejected, 502),
            (ErrorCode::BridgeRefused, 502),
            (ErrorCode::UnverifiedResponse, 502),
            (ErrorCode::Internal, 500),
            (ErrorCode::ScopeMissing, 403),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::InvalidFingerprint, 400),
            (ErrorCode::InvalidGovernance, 400),
            (ErrorCode::InvalidChain, 400),
            (ErrorCode::UnknownMember, 404),
            (ErrorCode::AlreadyGoverned, 409),
            (ErrorCode::NotGoverned, 409),
            (ErrorCode::ApproverNotAGovernor, 422),
            (ErrorCode::AdminRevoked, 422),
            (ErrorCode::InvalidGroup, 400),
            (ErrorCode::UnknownExecutor, 422),
            (ErrorCode::ApproverNotInGroup, 422),
            (ErrorCode::ApprovalFormatChanged, 409),
            (ErrorCode::ExecutorKeyMismatch, 502),
            (ErrorCode::InvalidNetwork, 400),
            (ErrorCode::InvalidPsbt, 400),
            (ErrorCode::TransactionRejected, 422),
            (ErrorCode::InvalidRules, 400),
            (ErrorCode::InvalidEthereum, 400),
            (ErrorCode::ReplicaUnavailable, 503),
        ];
        assert_eq!(published.len(), ErrorCode::ALL.len());
        for (code, status) in published {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn every_code_has_an_error_status_and_only_internal_is_5xx_from_the_server_itself() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
        }
        assert_eq!(
            status_of(ErrorCode::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status_of(ErrorCode::ClusterUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
