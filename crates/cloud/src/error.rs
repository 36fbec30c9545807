//! The errors of the server's operations: a stable code of the API ([`ErrorCode`]), a
//! message for humans and the request concerned. Nothing here knows HTTP: the HTTP layer
//! ([`crate::http`]) gives each code its status and renders the body.

pub use custos_cloud_api::ErrorCode;

use crate::db::StoreError;

/// An error of an API operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
    /// Request concerned, if one was recorded.
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
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
        ApiError::new(
            ErrorCode::Internal,
            format!("{context} failed; see the server log"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(id) => ApiError::new(
                ErrorCode::Conflict,
                format!("request {id} changed concurrently; retry"),
            ),
            StoreError::Duplicate(what) => {
                ApiError::new(ErrorCode::RequestExists, format!("{what} already exists"))
            }
            StoreError::Inconsistent(why) => ApiError::new(ErrorCode::ThresholdKeyMismatch, why),
            other => ApiError::internal("database", &other),
        }
    }
}
