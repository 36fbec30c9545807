//! The stable error codes of the API: what an error body's `error.code` can be. Clients
//! match on [`ErrorCode`]; the HTTP status of each is the server's concern (its HTTP layer).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error code the API answers with (a request's own `error.code` may also carry the
/// codes of [`REQUEST_ERROR_CODES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing or unknown bearer token.
    Unauthorized,
    /// Body is not valid JSON of the expected shape.
    MalformedJson,
    /// Body is not application/json.
    UnsupportedMediaType,
    /// Body over the limit (160 KiB; 288 KiB for threshold signing, 672 KiB for threshold key
    /// imports, about 1.5 MiB for PSBT signing, 928 KiB for Ethereum signing).
    BodyTooLarge,
    /// Query string not understood or out of range.
    InvalidQuery,
    /// Digest is not 32 bytes of hex.
    InvalidDigest,
    /// BIP-32 path syntax, index range or depth.
    InvalidPath,
    /// Hardened step where only public derivation is possible.
    HardenedPath,
    /// Derivation range (count at most 1000, indices below 2^31).
    InvalidRange,
    /// Root id is not 33 bytes of hex.
    InvalidRootId,
    /// Request id is not 16 bytes of hex.
    InvalidRequestId,
    /// Quorum outside 1..=16.
    InvalidQuorum,
    /// Expiry in the past or more than 7 days ahead.
    InvalidExpiry,
    /// Import needs exactly one valid mnemonic or seed.
    InvalidSecret,
    /// More than 16 approvals.
    TooManyApprovals,
    /// Threshold bundle is not hex of a consistent dealer bundle of at most 256 KiB.
    InvalidBundle,
    /// Threshold key id is not 33 bytes of hex in the compressed form (02 or 03 first).
    InvalidKeyId,
    /// Cluster list has duplicates, clusters without a share of the key, or fewer than t (a new key: 2 to 64 distinct clusters).
    InvalidClusters,
    /// Threshold outside 2..=n (the number of clusters).
    InvalidThreshold,
    /// Message is not hex of at most 64 KiB, or the digest given is not its SHA-256.
    InvalidMessage,
    /// Presignature count outside 1..=64.
    InvalidCount,
    /// Presignatures are only made for threshold keys without chain code.
    HdThresholdKey,
    /// No such threshold key.
    UnknownThresholdKey,
    /// The threshold key was never audited (reports are stored, whichever replica ran one).
    NoThresholdAudit,
    /// No node of the share's cluster has the device certificate the bundle is sealed to.
    BundleRecipientUnknown,
    /// The bundle's key facts differ from the recorded threshold key.
    ThresholdKeyMismatch,
    /// No such wallet.
    UnknownWallet,
    /// No such request.
    UnknownRequest,
    /// No such cluster configured.
    UnknownCluster,
    /// No such route.
    NotFound,
    /// Route does not take this method.
    MethodNotAllowed,
    /// Approval certificate or signature does not verify.
    ApprovalInvalid,
    /// This admin already approved.
    DuplicateApproval,
    /// Request is not in a state that allows this.
    NotPending,
    /// Approval window has passed.
    RequestExpired,
    /// A request with this id exists.
    RequestExists,
    /// This wallet is already known.
    WalletExists,
    /// Request changed concurrently; retry.
    Conflict,
    /// The cluster's relay could not be reached (request retryable).
    ClusterUnavailable,
    /// The relay refused the cloud server's call.
    RelayRejected,
    /// The cluster's bridge refused the operation.
    BridgeRefused,
    /// A cluster answer failed verification.
    UnverifiedResponse,
    /// Server-side failure (logged).
    Internal,
    /// The token lacks the scope the route needs (the message names it).
    ScopeMissing,
    /// The token is over its rate limit (`Retry-After` tells when to try again).
    RateLimited,
    /// A key fingerprint is not 32 bytes (64 characters) of hex.
    InvalidFingerprint,
    /// The proposed governance entry breaks a rule of the log (quorum outside 1..=governors, an empty revocation, a reason over 1024 bytes, a list over its limit, a member or governor that cannot be named, a revoked governor).
    InvalidGovernance,
    /// The device chain is not PEM of a device certificate of this cluster for the named node, or the bridge has none for it.
    InvalidChain,
    /// No current member of the cluster has this name.
    UnknownMember,
    /// The cluster already has a governance log.
    AlreadyGoverned,
    /// The cluster has no governance log yet (propose its genesis first).
    NotGoverned,
    /// The approving admin is not a current governor of the cluster.
    ApproverNotAGovernor,
    /// The approving admin's key is revoked in the cluster's governance log.
    AdminRevoked,
    /// The approver group is empty, over 32 admins, has a repeated or malformed fingerprint, or is smaller than the quorum.
    InvalidGroup,
    /// No serving node of the cluster has the executor's device key fingerprint.
    UnknownExecutor,
    /// The approving admin is not in the key's approver group (the message names its key fingerprint).
    ApproverNotInGroup,
    /// The request was made under an approval message this server no longer executes (a wallet creation without approver group); create a new request.
    ApprovalFormatChanged,
    /// A wallet creation was answered by a device key other than the executor's key its approvals name (the message names both key fingerprints); nothing was recorded.
    ExecutorKeyMismatch,
    /// The network is not one of `bitcoin`, `testnet`, `signet`, `regtest`.
    InvalidNetwork,
    /// The PSBT is not base64 of at most 1 MiB.
    InvalidPsbt,
    /// A TEE of the wallet's cluster refused the transaction before any approval: it is not one the TEE signs (the message names the check, e.g. an input that is not the wallet's, a value not proven, a sighash type other than ALL).
    TransactionRejected,
    /// The transaction rules do not make a valid policy (the message names the rule: an amount that is not decimal, a rule without `transactions_only`, tiers asking fewer approvals for more, a window without velocity holder, ...).
    InvalidRules,
    /// An Ethereum request names none or more than one of `transaction`, `message` and `typed_data`, or one that is not hex or over its limit.
    InvalidEthereum,
    /// This cloud server could not renew its heartbeat in the database lately, so another
    /// replica may be taking its work over: it starts no submission (nothing was done; send
    /// the call to another address).
    ReplicaUnavailable,
}

impl ErrorCode {
    /// Every code, in the order the API description lists them.
    pub const ALL: [ErrorCode; 64] = [
        ErrorCode::Unauthorized,
        ErrorCode::MalformedJson,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BodyTooLarge,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidDigest,
        ErrorCode::InvalidPath,
        ErrorCode::HardenedPath,
        ErrorCode::InvalidRange,
        ErrorCode::InvalidRootId,
        ErrorCode::InvalidRequestId,
        ErrorCode::InvalidQuorum,
        ErrorCode::InvalidExpiry,
        ErrorCode::InvalidSecret,
        ErrorCode::TooManyApprovals,
        ErrorCode::InvalidBundle,
        ErrorCode::InvalidKeyId,
        ErrorCode::InvalidClusters,
        ErrorCode::InvalidThreshold,
        ErrorCode::InvalidMessage,
        ErrorCode::InvalidCount,
        ErrorCode::HdThresholdKey,
        ErrorCode::UnknownThresholdKey,
        ErrorCode::NoThresholdAudit,
        ErrorCode::BundleRecipientUnknown,
        ErrorCode::ThresholdKeyMismatch,
        ErrorCode::UnknownWallet,
        ErrorCode::UnknownRequest,
        ErrorCode::UnknownCluster,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::ApprovalInvalid,
        ErrorCode::DuplicateApproval,
        ErrorCode::NotPending,
        ErrorCode::RequestExpired,
        ErrorCode::RequestExists,
        ErrorCode::WalletExists,
        ErrorCode::Conflict,
        ErrorCode::ClusterUnavailable,
        ErrorCode::RelayRejected,
        ErrorCode::BridgeRefused,
        ErrorCode::UnverifiedResponse,
        ErrorCode::Internal,
        ErrorCode::ScopeMissing,
        ErrorCode::RateLimited,
        ErrorCode::InvalidFingerprint,
        ErrorCode::InvalidGovernance,
        ErrorCode::InvalidChain,
        ErrorCode::UnknownMember,
        ErrorCode::AlreadyGoverned,
        ErrorCode::NotGoverned,
        ErrorCode::ApproverNotAGovernor,
        ErrorCode::AdminRevoked,
        ErrorCode::InvalidGroup,
        ErrorCode::UnknownExecutor,
        ErrorCode::ApproverNotInGroup,
        ErrorCode::ApprovalFormatChanged,
        ErrorCode::ExecutorKeyMismatch,
        ErrorCode::InvalidNetwork,
        ErrorCode::InvalidPsbt,
        ErrorCode::TransactionRejected,
        ErrorCode::InvalidRules,
        ErrorCode::InvalidEthereum,
        ErrorCode::ReplicaUnavailable,
    ];

    /// The snake_case name written in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidDigest => "invalid_digest",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::HardenedPath => "hardened_path",
            ErrorCode::InvalidRange => "invalid_range",
            ErrorCode::InvalidRootId => "invalid_root_id",
            ErrorCode::InvalidRequestId => "invalid_request_id",
            ErrorCode::InvalidQuorum => "invalid_quorum",
            ErrorCode::InvalidExpiry => "invalid_expiry",
            ErrorCode::InvalidSecret => "invalid_secret",
            ErrorCode::TooManyApprovals => "too_many_approvals",
            ErrorCode::InvalidBundle => "invalid_bundle",
            ErrorCode::InvalidKeyId => "invalid_key_id",
            ErrorCode::InvalidClusters => "invalid_clusters",
            ErrorCode::InvalidThreshold => "invalid_threshold",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidCount => "invalid_count",
            ErrorCode::HdThresholdKey => "hd_threshold_key",
            ErrorCode::UnknownThresholdKey => "unknown_threshold_key",
            ErrorCode::NoThresholdAudit => "no_threshold_audit",
            ErrorCode::BundleRecipientUnknown => "bundle_recipient_unknown",
            ErrorCode::ThresholdKeyMismatch => "threshold_key_mismatch",
            ErrorCode::UnknownWallet => "unknown_wallet",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::UnknownCluster => "unknown_cluster",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ApprovalInvalid => "approval_invalid",
            ErrorCode::DuplicateApproval => "duplicate_approval",
            ErrorCode::NotPending => "not_pending",
            ErrorCode::RequestExpired => "request_expired",
            ErrorCode::RequestExists => "request_exists",
            ErrorCode::WalletExists => "wallet_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::RelayRejected => "relay_rejected",
            ErrorCode::BridgeRefused => "bridge_refused",
            ErrorCode::UnverifiedResponse => "unverified_response",
            ErrorCode::Internal => "internal",
            ErrorCode::ScopeMissing => "scope_missing",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidFingerprint => "invalid_fingerprint",
            ErrorCode::InvalidGovernance => "invalid_governance",
            ErrorCode::InvalidChain => "invalid_chain",
            ErrorCode::UnknownMember => "unknown_member",
            ErrorCode::AlreadyGoverned => "already_governed",
            ErrorCode::NotGoverned => "not_governed",
            ErrorCode::ApproverNotAGovernor => "approver_not_a_governor",
            ErrorCode::AdminRevoked => "admin_revoked",
            ErrorCode::InvalidGroup => "invalid_group",
            ErrorCode::UnknownExecutor => "unknown_executor",
            ErrorCode::ApproverNotInGroup => "approver_not_in_group",
            ErrorCode::ApprovalFormatChanged => "approval_format_changed",
            ErrorCode::ExecutorKeyMismatch => "executor_key_mismatch",
            ErrorCode::InvalidNetwork => "invalid_network",
            ErrorCode::InvalidPsbt => "invalid_psbt",
            ErrorCode::TransactionRejected => "transaction_rejected",
            ErrorCode::InvalidRules => "invalid_rules",
            ErrorCode::InvalidEthereum => "invalid_ethereum",
            ErrorCode::ReplicaUnavailable => "replica_unavailable",
        }
    }

    /// What it means, for the API description.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "missing or unknown bearer token",
            ErrorCode::MalformedJson => "body is not valid JSON of the expected shape",
            ErrorCode::UnsupportedMediaType => "body is not application/json",
            ErrorCode::BodyTooLarge => "body over the limit (160 KiB; 288 KiB for threshold signing, 672 KiB for threshold key imports, about 1.5 MiB for PSBT signing, 928 KiB for Ethereum signing)",
            ErrorCode::InvalidQuery => "query string not understood or out of range",
            ErrorCode::InvalidDigest => "digest is not 32 bytes of hex",
            ErrorCode::InvalidPath => "BIP-32 path syntax, index range or depth",
            ErrorCode::HardenedPath => "hardened step where only public derivation is possible",
            ErrorCode::InvalidRange => "derivation range (count at most 1000, indices below 2^31)",
            ErrorCode::InvalidRootId => "root id is not 33 bytes of hex",
            ErrorCode::InvalidRequestId => "request id is not 16 bytes of hex",
            ErrorCode::InvalidQuorum => "quorum outside 1..=16",
            ErrorCode::InvalidExpiry => "expiry in the past or more than 7 days ahead",
            ErrorCode::InvalidSecret => "import needs exactly one valid mnemonic or seed",
            ErrorCode::TooManyApprovals => "more than 16 approvals",
            ErrorCode::InvalidBundle => "threshold bundle is not hex of a consistent dealer bundle of at most 256 KiB",
            ErrorCode::InvalidKeyId => "threshold key id is not 33 bytes of hex in the compressed form (02 or 03 first)",
            ErrorCode::InvalidClusters => "cluster list has duplicates, clusters without a share of the key, or fewer than t (a new key: 2 to 64 distinct clusters)",
            ErrorCode::InvalidThreshold => "threshold outside 2..=n (the number of clusters)",
            ErrorCode::InvalidMessage => "message is not hex of at most 64 KiB, or the digest given is not its SHA-256",
            ErrorCode::InvalidCount => "presignature count outside 1..=64",
            ErrorCode::HdThresholdKey => "presignatures are only made for threshold keys without chain code",
            ErrorCode::UnknownThresholdKey => "no such threshold key",
            ErrorCode::NoThresholdAudit => "the threshold key was never audited",
            ErrorCode::BundleRecipientUnknown => "no node of the share's cluster has the device certificate the bundle is sealed to",
            ErrorCode::ThresholdKeyMismatch => "the bundle's key facts differ from the recorded threshold key",
            ErrorCode::UnknownWallet => "no such wallet",
            ErrorCode::UnknownRequest => "no such request",
            ErrorCode::UnknownCluster => "no such cluster configured",
            ErrorCode::NotFound => "no such route",
            ErrorCode::MethodNotAllowed => "route does not take this method",
            ErrorCode::ApprovalInvalid => "approval certificate or signature does not verify",
            ErrorCode::DuplicateApproval => "this admin already approved",
            ErrorCode::NotPending => "request is not in a state that allows this",
            ErrorCode::RequestExpired => "approval window has passed",
            ErrorCode::RequestExists => "a request with this id exists",
            ErrorCode::WalletExists => "this wallet is already known",
            ErrorCode::Conflict => "request changed concurrently; retry",
            ErrorCode::ClusterUnavailable => "the cluster's relay could not be reached (request retryable)",
            ErrorCode::RelayRejected => "the relay refused the cloud server's call",
            ErrorCode::BridgeRefused => "the cluster's bridge refused the operation",
            ErrorCode::UnverifiedResponse => "a cluster answer failed verification",
            ErrorCode::Internal => "server-side failure (logged)",
            ErrorCode::ScopeMissing => "the token lacks the scope the route needs (named in the message)",
            ErrorCode::RateLimited => "the token is over its rate limit; retry after `Retry-After` seconds",
            ErrorCode::InvalidFingerprint => "a key fingerprint is not 32 bytes (64 characters) of hex",
            ErrorCode::InvalidGovernance => "the proposed governance entry breaks a rule of the log (quorum outside 1..=governors, an empty revocation, a reason over 1024 bytes, a list over its limit, a member or governor that cannot be named, a revoked governor)",
            ErrorCode::InvalidChain => "the device chain is not PEM of a device certificate of this cluster for the named node, or the bridge has none for it",
            ErrorCode::UnknownMember => "no current member of the cluster has this name",
            ErrorCode::AlreadyGoverned => "the cluster already has a governance log",
            ErrorCode::NotGoverned => "the cluster has no governance log yet (propose its genesis first)",
            ErrorCode::ApproverNotAGovernor => "the approving admin is not a current governor of the cluster",
            ErrorCode::AdminRevoked => "the approving admin's key is revoked in the cluster's governance log",
            ErrorCode::InvalidGroup => "the approver group is empty, over 32 admins, has a repeated or malformed fingerprint, or is smaller than the quorum",
            ErrorCode::UnknownExecutor => "no serving node of the cluster has the executor's device key fingerprint",
            ErrorCode::ApproverNotInGroup => "the approving admin is not in the key's approver group (named in the message)",
            ErrorCode::ApprovalFormatChanged => "the request was made under an approval message this server no longer executes; create a new request",
            ErrorCode::ExecutorKeyMismatch => "a wallet creation was answered by a device key other than the executor's key its approvals name (both key fingerprints in the message); nothing was recorded",
            ErrorCode::InvalidNetwork => "the network is not one of bitcoin, testnet, signet, regtest",
            ErrorCode::InvalidPsbt => "the PSBT is not base64 of at most 1 MiB",
            ErrorCode::TransactionRejected => "a TEE of the wallet's cluster refused the transaction before any approval (the message names the check: an input not the wallet's, a value not proven, a sighash type other than ALL, ...)",
            ErrorCode::InvalidRules => "the transaction rules do not make a valid policy (the message names the rule and why)",
            ErrorCode::InvalidEthereum => "an Ethereum request names none or more than one of transaction, message and typed_data, or one that is not hex or over its limit",
            ErrorCode::ReplicaUnavailable => "this cloud server lost its heartbeat in the database and starts no submission; nothing was done, send the call to another address",
        }
    }

    /// The code named `s`, if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Codes a request's `error.code` can carry besides `cluster_unavailable`,
/// `relay_rejected`, `unverified_response` and `executor_key_mismatch`.
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
    (
        "governance_head_moved",
        "the cluster's governance log moved on after the request was made (another entry \
         took its version): the approved entry can never apply; propose it again",
    ),
    (
        "tee_foreign_log_missing",
        "a co-signer's TEE lacks the governance log of another cluster the threshold key \
         anchors, also after the server pushed it: the attempt failed and may be retried",
    ),
    (
        "governance_rejected",
        "the cluster's governance log does not verify, or the approved entry does not extend \
         it (the message says which rule)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_named_as_serialized() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(code
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(!code.description().is_empty());
        }
        assert_eq!(ErrorCode::parse("tee_approval_rejected"), None);
    }

    /// `ALL` is written by hand: this exhaustive match stops compiling when a variant is
    /// added, and the test fails unless `ALL` lists every variant in declaration order.
    #[test]
    fn all_lists_every_variant() {
        fn position(c: ErrorCode) -> usize {
            match c {
                ErrorCode::Unauthorized => 0,
                ErrorCode::MalformedJson => 1,
                ErrorCode::UnsupportedMediaType => 2,
                ErrorCode::BodyTooLarge => 3,
                ErrorCode::InvalidQuery => 4,
                ErrorCode::InvalidDigest => 5,
                ErrorCode::InvalidPath => 6,
                ErrorCode::HardenedPath => 7,
                ErrorCode::InvalidRange => 8,
                ErrorCode::InvalidRootId => 9,
                ErrorCode::InvalidRequestId => 10,
                ErrorCode::InvalidQuorum => 11,
                ErrorCode::InvalidExpiry => 12,
                ErrorCode::InvalidSecret => 13,
                ErrorCode::TooManyApprovals => 14,
                ErrorCode::InvalidBundle => 15,
                ErrorCode::InvalidKeyId => 16,
                ErrorCode::InvalidClusters => 17,
                ErrorCode::InvalidThreshold => 18,
                ErrorCode::InvalidMessage => 19,
                ErrorCode::InvalidCount => 20,
                ErrorCode::HdThresholdKey => 21,
                ErrorCode::UnknownThresholdKey => 22,
                ErrorCode::NoThresholdAudit => 23,
                ErrorCode::BundleRecipientUnknown => 24,
                ErrorCode::ThresholdKeyMismatch => 25,
                ErrorCode::UnknownWallet => 26,
                ErrorCode::UnknownRequest => 27,
                ErrorCode::UnknownCluster => 28,
                ErrorCode::NotFound => 29,
                ErrorCode::MethodNotAllowed => 30,
                ErrorCode::ApprovalInvalid => 31,
                ErrorCode::DuplicateApproval => 32,
                ErrorCode::NotPending => 33,
                ErrorCode::RequestExpired => 34,
                ErrorCode::RequestExists => 35,
                ErrorCode::WalletExists => 36,
                ErrorCode::Conflict => 37,
                ErrorCode::ClusterUnavailable => 38,
                ErrorCode::RelayRejected => 39,
                ErrorCode::BridgeRefused => 40,
                ErrorCode::UnverifiedResponse => 41,
                ErrorCode::Internal => 42,
                ErrorCode::ScopeMissing => 43,
                ErrorCode::RateLimited => 44,
                ErrorCode::InvalidFingerprint => 45,
                ErrorCode::InvalidGovernance => 46,
                ErrorCode::InvalidChain => 47,
                ErrorCode::UnknownMember => 48,
                ErrorCode::AlreadyGoverned => 49,
                ErrorCode::NotGoverned => 50,
                ErrorCode::ApproverNotAGovernor => 51,
                ErrorCode::AdminRevoked => 52,
                ErrorCode::InvalidGroup => 53,
                ErrorCode::UnknownExecutor => 54,
                ErrorCode::ApproverNotInGroup => 55,
                ErrorCode::ApprovalFormatChanged => 56,
                ErrorCode::ExecutorKeyMismatch => 57,
                ErrorCode::InvalidNetwork => 58,
                ErrorCode::InvalidPsbt => 59,
                ErrorCode::TransactionRejected => 60,
                ErrorCode::InvalidRules => 61,
                ErrorCode::InvalidEthereum => 62,
                ErrorCode::ReplicaUnavailable => 63,
            }
        }
        // The number of arms above: a new variant needs an arm, numbered ARMS, and this bumped.
        const ARMS: usize = 64;
        assert_eq!(ErrorCode::ALL.len(), ARMS);
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(position(code), i, "{code}");
        }
    }
}
