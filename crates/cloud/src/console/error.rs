//! The console's one error type: what refused a sign-in, a page or an approval.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::ApiError;

/// Why the console refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// No valid session cookie (signed out, expired, or the admin's files were removed).
    #[error("not signed in")]
    NotSignedIn,
    /// No admin of this name may sign in (no `<name>.pem` and `<name>.credential` in the
    /// console's admins folder, or they do not hold a passkey certificate for this console).
    #[error("admin {name:?} may not sign in here: {reason}")]
    UnknownAdmin {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// A POST without the console's `Origin` (another site's page, or no browser).
    #[error("origin {0:?} is not the console's")]
    ForeignOrigin(String),
    /// The sign-in challenge is unknown, used, expired or handed to another admin.
    #[error("sign-in challenge unknown, used or expired; begin again")]
    ChallengeInvalid,
    /// Too many sign-in calls from this address (seconds until the next one).
    #[error("too many sign-in attempts from this address; try again in {0} s")]
    TooManySignIns(u64),
    /// The assertion did not verify (names the check that failed).
    #[error("assertion refused: {0}")]
    AssertionRefused(String),
    /// A malformed body (names the field).
    #[error("{0}")]
    Malformed(String),
    /// The request API refused (approval recorded or not, by its code).
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Api(ApiError),
}

impl ConsoleError {
    /// Stable code, as the console's script shows it.
    pub fn code(&self) -> &'static str {
        match self {
            ConsoleError::NotSignedIn => "not_signed_in",
            ConsoleError::UnknownAdmin { .. } => "unknown_admin",
            ConsoleError::ForeignOrigin(_) => "foreign_origin",
            ConsoleError::ChallengeInvalid => "challenge_invalid",
            ConsoleError::AssertionRefused(_) => "assertion_refused",
            ConsoleError::TooManySignIns(_) => "too_many_sign_ins",
            ConsoleError::Malformed(_) => "malformed",
            ConsoleError::Api(e) => e.code.as_str(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotSignedIn
            | ConsoleError::ChallengeInvalid
            | ConsoleError::AssertionRefused(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::UnknownAdmin { .. } | ConsoleError::ForeignOrigin(_) => {
                StatusCode::FORBIDDEN
            }
            ConsoleError::Malformed(_) => StatusCode::BAD_REQUEST,
            ConsoleError::TooManySignIns(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Api(e) => crate::http::status_of(e.code),
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<crate::db::StoreError> for ConsoleError {
    fn from(e: crate::db::StoreError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        (self.status(), Json(body)).into_response()
    }
}
