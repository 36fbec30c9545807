//! Typed errors of the link.

use serde::{Deserialize, Serialize};

/// Why a link operation failed. Every refusal names its cause so an operator can tell a
/// tampered envelope from a misconfigured peer or a dead transport.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The authentication tag does not verify under the pinned peer key.
    #[error("envelope signature does not verify under the pinned peer key")]
    BadSignature,
    /// The envelope is authentic but addressed to another cluster.
    #[error("envelope is for cluster {found:?}, this link serves {expected:?}")]
    WrongCluster {
        /// The cluster this side serves.
        expected: String,
        /// The cluster named in the envelope.
        found: String,
    },
    /// A frame, file, envelope or payload exceeds its hard limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// What was too large (frame, envelope, payload, ...).
        what: &'static str,
        /// Its announced or actual size.
        size: u64,
        /// The limit it broke.
        limit: u64,
    },
    /// Bytes that do not decode as a well-formed envelope, or a field out of range.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A frame of the QR channel that does not carry a part of the envelope expected.
    #[error("QR frame refused ({what:?}): {detail}")]
    Frame {
        /// What was wrong with it.
        what: FrameFault,
        /// Details for the operator.
        detail: String,
    },
    /// An envelope version this build does not speak.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u16),
    /// An authentic request sealed longer ago than any approval lives
    /// ([`crate::MAX_ENVELOPE_AGE`]): a captured envelope replayed after its stored reply
    /// was pruned would otherwise run again.
    #[error("envelope sealed at {created_at_ms} ms is older than the {max_age_secs} s an envelope lives (now {now_ms} ms)")]
    Expired {
        /// When the sender sealed it (Unix ms).
        created_at_ms: u64,
        /// This side's clock (Unix ms).
        now_ms: u64,
        /// The longest an envelope lives, seconds.
        max_age_secs: u64,
    },
    /// An authentic request dated further ahead of this side's clock than
    /// [`crate::MAX_CLOCK_AHEAD`]: it would outlive the age check by as much.
    #[error("envelope sealed at {created_at_ms} ms is ahead of this side's clock ({now_ms} ms) by more than {max_ahead_secs} s")]
    FromTheFuture {
        /// When the sender sealed it (Unix ms).
        created_at_ms: u64,
        /// This side's clock (Unix ms).
        now_ms: u64,
        /// The most a sender's clock may be ahead, seconds.
        max_ahead_secs: u64,
    },
    /// A response that does not answer the request it was waited for.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    /// The request id was already used for a different payload; the first request's
    /// result stands and the new payload was not executed.
    #[error("request id was already used with a different payload")]
    RequestIdReused,
    /// The internal side ran the request and its handler reported a failure.
    #[error("request handler failed: {0}")]
    Handler(String),
    /// The peer refused the request before running it.
    #[error("peer refused the request ({code:?}): {message}")]
    Refused {
        /// The peer's classification of the refusal.
        code: FailureCode,
        /// The peer's explanation.
        message: String,
    },
    /// Key material that cannot be used.
    #[error("bad link key: {0}")]
    Key(String),
    /// The transport failed (connection, file system).
    #[error("link transport I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No answer within the bounded waiting time.
    #[error("link timed out")]
    Timeout,
    /// The durable dedup store failed.
    #[error("dedup store: {0}")]
    Store(String),
    /// An internal failure (task panicked, encoding failed).
    #[error("internal link failure: {0}")]
    Internal(String),
}

impl LinkError {
    /// Whether trying the same envelope again over the transport may succeed. Only
    /// transport trouble qualifies: a verdict of the peer or a verification failure would
    /// only repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LinkError::Io(_) | LinkError::Timeout)
    }

    /// Whether this refusal was made of an envelope whose signature verified (addressed to
    /// another cluster, out of its time window): only then may its sender be answered
    /// where an answer to that request id would go.
    pub fn of_authentic_envelope(&self) -> bool {
        matches!(
            self,
            LinkError::WrongCluster { .. }
                | LinkError::Expired { .. }
                | LinkError::FromTheFuture { .. }
        )
    }

    /// The code under which this error is reported to the peer in a failure envelope.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            LinkError::BadSignature => FailureCode::BadSignature,
            LinkError::WrongCluster { .. } => FailureCode::WrongCluster,
            LinkError::Oversize { .. } => FailureCode::Oversize,
            LinkError::Malformed(_) | LinkError::UnexpectedResponse(_) => FailureCode::Malformed,
            LinkError::UnsupportedVersion(_) => FailureCode::UnsupportedVersion,
            LinkError::Expired { .. } => FailureCode::Expired,
            LinkError::FromTheFuture { .. } => FailureCode::FromTheFuture,
            LinkError::RequestIdReused => FailureCode::RequestIdReused,
            LinkError::Handler(_) => FailureCode::HandlerFailed,
            _ => FailureCode::Internal,
        }
    }
}

/// Why a QR frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFault {
    /// No QR code in the image.
    NoCode,
    /// A QR code too damaged for its error correction.
    Unreadable,
    /// Text that is not a multipart UR.
    NotAPart,
    /// A UR of another type than a Custos envelope.
    WrongType,
    /// A part claiming more fragments than an envelope may have.
    TooManyParts,
    /// A part of another message than the parts before it.
    Inconsistent,
    /// The parts rebuilt a message whose CRC-32 or padding is wrong.
    Checksum,
}

/// Classification carried in a failure envelope from the internal side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureCode {
    /// The handler ran and failed; this answer is final for the request id.
    HandlerFailed,
    /// The request id was seen before with a different payload.
    RequestIdReused,
    /// The request's signature did not verify.
    BadSignature,
    /// The request named another cluster.
    WrongCluster,
    /// The request was not a well-formed envelope.
    Malformed,
    /// The request exceeded a size limit.
    Oversize,
    /// The request's envelope version is not supported.
    UnsupportedVersion,
    /// The internal side failed for reasons of its own.
    Internal,
    /// The request was sealed longer ago than an envelope lives.
    Expired,
    /// The request was dated too far ahead of the internal side's clock.
    FromTheFuture,
}
