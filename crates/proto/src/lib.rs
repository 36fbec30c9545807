//! Generated gRPC types and services of the Custos cluster protocol
//! (`proto/custos/cluster/v1/cluster.proto`).
#![allow(missing_docs, clippy::all)]

/// `custos.cluster.v1`.
pub mod cluster {
    tonic::include_proto!("custos.cluster.v1");
}

/// The prefix of the `FAILED_PRECONDITION` message with which the bridge answers a member's
/// sync call when that node is not in its registry (the bridge restarted since the node
/// registered): the node registers again.
pub const NOT_REGISTERED: &str = "not_registered";

/// The stable codes of a [`cluster::LinkRefusal`]: one list for the bridge that writes them
/// and the cloud server that reads them, with whether a refusal may be retried.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The link payload was not a decodable request.
    MalformedRequest,
    /// The request was refused as invalid.
    InvalidRequest,
    /// What it names does not exist.
    NotFound,
    /// The caller may not do this.
    PermissionDenied,
    /// No node could serve it now; nothing was executed and the answer was not stored.
    Unavailable,
    /// A node was asked but its answer was lost: the outcome is unknown. Not stored either:
    /// the same request id is sent again to that node ([`cluster::LinkRefusal::node`]),
    /// whose TEE answers its first outcome.
    OutcomeUnknown,
    /// The cluster's state does not allow it.
    FailedPrecondition,
    /// A limit was reached.
    ResourceExhausted,
    /// The bridge failed.
    Internal,
    /// A code this build does not know (a newer bridge).
    Other(String),
}

impl RefusalCode {
    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            RefusalCode::MalformedRequest => "malformed_request",
            RefusalCode::InvalidRequest => "invalid_request",
            RefusalCode::NotFound => "not_found",
            RefusalCode::PermissionDenied => "permission_denied",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::OutcomeUnknown => "outcome_unknown",
            RefusalCode::FailedPrecondition => "failed_precondition",
            RefusalCode::ResourceExhausted => "resource_exhausted",
            RefusalCode::Internal => "internal",
            RefusalCode::Other(code) => code,
        }
    }

    /// Reads a code from the wire.
    pub fn parse(code: &str) -> RefusalCode {
        [
            RefusalCode::MalformedRequest,
            RefusalCode::InvalidRequest,
            RefusalCode::NotFound,
            RefusalCode::PermissionDenied,
            RefusalCode::Unavailable,
            RefusalCode::OutcomeUnknown,
            RefusalCode::FailedPrecondition,
            RefusalCode::ResourceExhausted,
            RefusalCode::Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
        .unwrap_or_else(|| RefusalCode::Other(code.to_string()))
    }

    /// Whether the bridge did not store the refusal as the request id's answer, so that the
    /// same request id may be sent again: nothing was executed (`Unavailable`), or the
    /// outcome is unknown and the retry goes to the node the refusal names.
    pub fn may_retry(&self) -> bool {
        matches!(self, RefusalCode::Unavailable | RefusalCode::OutcomeUnknown)
    }
}

impl cluster::LinkRefusal {
    /// A refusal with `code`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        cluster::LinkRefusal {
            code: code.as_str().to_string(),
            message: message.into(),
            node: String::new(),
        }
    }

    /// Its code, typed.
    pub fn refusal_code(&self) -> RefusalCode {
        RefusalCode::parse(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalCode;

    #[test]
    fn codes_round_trip_and_only_unstored_refusals_may_be_retried() {
        for code in [
            "malformed_request",
            "invalid_request",
            "not_found",
            "permission_denied",
            "unavailable",
            "outcome_unknown",
            "failed_precondition",
            "resource_exhausted",
            "internal",
            "from_a_newer_bridge",
        ] {
            let typed = RefusalCode::parse(code);
            assert_eq!(typed.as_str(), code);
            assert_eq!(
                typed.may_retry(),
                code == "unavailable" || code == "outcome_unknown",
                "{code}"
            );
        }
        assert_eq!(RefusalCode::parse("x"), RefusalCode::Other("x".to_string()));
    }
}
