//! Refusals: [`TeeError`] with its stable codes, and why an approval was not accepted.

use serde::{Deserialize, Serialize};

/// Why an approval was not accepted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ApprovalFault {
    /// The certificate does not chain to the pinned Root through the Admin CA.
    UntrustedCertificate,
    /// The certificate is expired or not yet valid.
    CertificateNotValidNow,
    /// The signature does not cover this exact request.
    BadSignature,
    /// Unparsable certificate or signature, or an assertion part over its limit.
    Malformed,
    /// An assertion under a certificate that certifies no passkey (a key-file admin signs
    /// the message itself).
    NotAPasskey,
    /// A plain signature under a passkey certificate: a passkey approves only through an
    /// assertion made on its console.
    AssertionMissing,
    /// The assertion's client data is not of an authentication (`webauthn.get`).
    WrongType,
    /// The assertion's challenge is another message's (an assertion for another request).
    WrongChallenge,
    /// The assertion was made on another site than the console the passkey was certified for.
    WrongOrigin,
    /// The assertion was made in a frame of another origin.
    CrossOrigin,
    /// The assertion's authenticator data names another relying party.
    WrongRpId,
    /// The authenticator did not see the user (no touch).
    UserNotPresent,
    /// The authenticator did not verify the user (no PIN, no biometric).
    UserNotVerified,
    /// The authenticator's signature counter did not grow since the last assertion this TEE
    /// accepted from the passkey: a replayed assertion or a cloned authenticator.
    CounterReplayed,
}

impl ApprovalFault {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalFault::UntrustedCertificate => "untrusted_certificate",
            ApprovalFault::CertificateNotValidNow => "certificate_not_valid_now",
            ApprovalFault::BadSignature => "bad_signature",
            ApprovalFault::Malformed => "malformed",
            ApprovalFault::NotAPasskey => "not_a_passkey",
            ApprovalFault::AssertionMissing => "assertion_missing",
            ApprovalFault::WrongType => "wrong_type",
            ApprovalFault::WrongChallenge => "wrong_challenge",
            ApprovalFault::WrongOrigin => "wrong_origin",
            ApprovalFault::CrossOrigin => "cross_origin",
            ApprovalFault::WrongRpId => "wrong_rp_id",
            ApprovalFault::UserNotPresent => "user_not_present",
            ApprovalFault::UserNotVerified => "user_not_verified",
            ApprovalFault::CounterReplayed => "counter_replayed",
        }
    }
}

/// Why Paillier primes (a set given to a TEE, or a key's moduli) were refused
/// (`custos_threshold::provenance`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrimesFault {
    /// A prime or modulus of the committed TEST-ONLY fixture, whose factors are published.
    TestFixture,
    /// One of this TEE's own primes is not a safe prime.
    NotSafePrime,
    /// Two moduli of the key share a prime factor (equal or overlapping).
    DuplicateModulus,
    /// A pregenerated set offered again after a key generation used it here.
    AlreadyUsed,
}

impl PrimesFault {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrimesFault::TestFixture => "test_fixture",
            PrimesFault::NotSafePrime => "not_safe_prime",
            PrimesFault::DuplicateModulus => "duplicate_modulus",
            PrimesFault::AlreadyUsed => "already_used",
        }
    }
}

/// A refusal: typed, and specific about what was wrong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum TeeError {
    /// The request could not be decoded or violates a limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A provisioning step is missing.
    #[error("not provisioned: {0}")]
    NotProvisioned(String),
    /// The Root CA is already pinned and can never be replaced.
    #[error("a Root CA is already pinned and cannot be replaced")]
    RootAlreadyPinned,
    /// The offered Root CA certificate is not acceptable.
    #[error("root certificate rejected: {0}")]
    RootRejected(String),
    /// A device key D already exists.
    #[error("the device key already exists")]
    DeviceKeyExists,
    /// The device certificate chain did not verify.
    #[error("device certificate rejected: {0}")]
    DeviceCertRejected(String),
    /// The device certificate is for another cluster.
    #[error("device certificate is for cluster {found:?}, this node belongs to {expected:?}")]
    DeviceCertWrongCluster {
        /// Cluster of this node.
        expected: String,
        /// Cluster of the certificate.
        found: String,
    },
    /// The device certificate certifies another key than D.
    #[error("device certificate does not carry this node's device key")]
    DeviceCertWrongKey,
    /// No approval was attached.
    #[error("the request carries no admin approval")]
    ApprovalMissing,
    /// One approval failed.
    #[error("approval #{index} rejected ({}): {detail}", fault.as_str())]
    ApprovalRejected {
        /// Position in the request's approval list.
        index: u32,
        /// Category.
        fault: ApprovalFault,
        /// Verifier message.
        detail: String,
    },
    /// Fewer distinct admins approved than the key requires.
    #[error("quorum not met: {required} distinct admins required, {approved} approved")]
    QuorumNotMet {
        /// Required.
        required: u8,
        /// Distinct valid approvers.
        approved: u8,
    },
    /// The approvals' validity window has passed.
    #[error("request expired at {expires_at} (now {now})")]
    RequestExpired {
        /// Expiry.
        expires_at: u64,
        /// Platform time.
        now: u64,
    },
    /// This create request id was already used: one approval creates one wallet.
    #[error("request {0} was already executed; a new request needs new approvals")]
    RequestReplayed(String),
    /// No such wallet.
    #[error("unknown key {0}")]
    UnknownKey(String),
    /// The wallet exists already.
    #[error("key {0} already exists")]
    KeyExists(String),
    /// The wallet's sealed record failed to open; it is never used.
    #[error("sealed record of key {key} is corrupt: {reason}")]
    KeyRecordCorrupt {
        /// Key id (hex).
        key: String,
        /// What failed.
        reason: String,
    },
    /// Imported secret does not match the approved key id, or is malformed.
    #[error("import rejected: {0}")]
    ImportRejected(String),
    /// Audit message over the limit.
    #[error("audit message is {len} bytes, at most {max} allowed")]
    AuditMessageTooLong {
        /// Length offered.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// A BIP-32 path that cannot be used.
    #[error("invalid BIP-32 path: {0}")]
    InvalidPath(String),
    /// A key transfer (export or import) was refused.
    #[error("key transfer rejected: {0}")]
    TransferRejected(String),
    /// The requester's certificate does not entitle it to this cluster's keys.
    #[error("requester certificate rejected: {0}")]
    RequesterRejected(String),
    /// Only TLS 1.3 CertificateVerify messages are signed for TLS.
    #[error("refused to sign: not a TLS 1.3 CertificateVerify message")]
    TlsSignRefused,
    /// The sealed storage failed; this request's writes were discarded.
    #[error("sealed storage failure: {0}")]
    Storage(String),
    /// A sealed import does not open here: sealed to another node, for another request
    /// context, altered, or oversized.
    #[error("sealed import rejected: {0}")]
    SealedImportRejected(String),
    /// A dealer bundle or threshold request was refused.
    #[error("threshold request rejected: {0}")]
    ThresholdRejected(String),
    /// No such session (never started here, finished, aborted or expired).
    #[error("unknown threshold session {0}")]
    UnknownSession(String),
    /// The session was aborted; `blamed` names the clusters at fault when known.
    #[error("threshold session {session} aborted in {phase}: {detail} (blamed: {blamed:?})")]
    ThresholdAborted {
        /// Session (hex request id / attempt).
        session: String,
        /// Clusters at fault, if identified.
        blamed: Vec<String>,
        /// Phase reached.
        phase: String,
        /// What happened.
        detail: String,
    },
    /// No Paillier primes are ready for a distributed key generation in this TEE. Nothing
    /// was started or consumed; retry later (safe-prime generation takes minutes).
    #[error("no Paillier primes ready: {0}")]
    PrimesNotReady(String),
    /// This TEE holds no such presignature: never made here, or already used (each is used
    /// once, and deleted before its partial signature leaves).
    #[error("no presignature {0} here (never made here, or already used)")]
    UnknownPresignature(String),
    /// The request was encoded for another version of this protocol.
    #[error("request of protocol version {found}, this TEE speaks version {supported}")]
    UnsupportedProtocol {
        /// Version the request carries.
        found: u8,
        /// Version this side speaks.
        supported: u8,
    },
    /// An approval is by an admin whose key the cluster revoked: the whole request is refused.
    #[error("approval #{index} is by admin {admin:?} (key {}), whose key is revoked", hex::encode(.key_fingerprint))]
    AdminRevoked {
        /// Position in the request's approval list.
        index: u32,
        /// The admin's certificate name (shown; the key is what identifies it).
        admin: String,
        /// SHA-256 of the admin's certified public key.
        key_fingerprint: [u8; 32],
    },
    /// An approval is by a valid admin outside the approver group: the whole request is
    /// refused, so an outsider is named rather than silently counted or ignored.
    #[error("approval #{index} is by admin {admin:?} (key {}), who is not in the approver group", hex::encode(.key_fingerprint))]
    ApproverNotInGroup {
        /// Position in the request's approval list.
        index: u32,
        /// The admin's certificate name (shown; the key is what identifies it).
        admin: String,
        /// SHA-256 of the admin's certified public key.
        key_fingerprint: [u8; 32],
    },
    /// The peer device is not a current member of this governed cluster (never admitted,
    /// removed, or certified under another member's name): it gets nothing and gives nothing.
    #[error("device {node:?} (key {}) is not a member of this cluster", hex::encode(.key_fingerprint))]
    NotAMember {
        /// Node name in its certificate.
        node: String,
        /// SHA-256 of its certified device key.
        key_fingerprint: [u8; 32],
    },
    /// The peer device's key is on this cluster's revocation list.
    #[error("device {node:?} (key {}) is revoked", hex::encode(.key_fingerprint))]
    DeviceRevoked {
        /// Node name in its certificate.
        node: String,
        /// SHA-256 of its certified device key.
        key_fingerprint: [u8; 32],
    },
    /// A governance log entry was refused (bad approvals, fork, wrong genesis, broken rule).
    #[error("governance entry rejected: {0}")]
    GovernanceRejected(String),
    /// Governance entries that do not follow the log this TEE holds: the missing ones first.
    #[error("governance entries start at version {first}, this node holds up to {head}")]
    GovernanceGap {
        /// Last version held.
        head: u64,
        /// First version offered.
        first: u64,
    },
    /// The TEE holds no governance log yet.
    #[error("this node holds no governance log")]
    NotGoverned,
    /// The approved request names another node as the one that executes it.
    #[error("the request is approved for executor {}, this node is {}", hex::encode(.executor), hex::encode(.this_node))]
    NotExecutor {
        /// Device key fingerprint the approvals name.
        executor: [u8; 32],
        /// This node's device key fingerprint.
        this_node: [u8; 32],
    },
    /// A key policy that is not acceptable (its group, quorum or rules).
    #[error("key policy rejected: {0}")]
    PolicyRejected(String),
    /// A policy change names as `prev` another policy than the key's current one: it was
    /// approved against a policy that has changed since (or never was the key's).
    #[error("key {key}: the change replaces policy {}, the current policy is {}", hex::encode(.found), hex::encode(.expected))]
    PolicyConflict {
        /// Key id (hex).
        key: String,
        /// Hash of the key's current policy.
        expected: [u8; 32],
        /// Hash the request names as `prev`.
        found: [u8; 32],
    },
    /// A key generation's participant for `share_index` is certified for another device key
    /// than the node the approvals name as that share's executor: the session would run
    /// with a substituted node.
    #[error("participant {share_index} has device key {}, the approvals name {} as its executor", hex::encode(.found), hex::encode(.executor))]
    ParticipantNotExecutor {
        /// Share index of the participant.
        share_index: u16,
        /// Device key fingerprint the approvals name for that share.
        executor: [u8; 32],
        /// Device key fingerprint of the participant's certificate.
        found: [u8; 32],
    },
    /// A request form a governed cluster no longer executes: it names no approver group and
    /// no executing node, so one approval could make a key on two nodes and any governor
    /// would count for the key. The text names the request and its replacement.
    #[error("{0}")]
    LegacyRequest(String),
    /// A threshold key anchors a share's cluster at a governance genesis whose log this TEE
    /// does not hold, so it cannot tell a member of that cluster from any device its Cluster
    /// CA certified: the coordinator pushes that log (`ApplyGovernance` for that cluster)
    /// and starts again.
    #[error("cluster {cluster:?}: this node holds no log of genesis {}", hex::encode(.genesis_id))]
    ForeignLogMissing {
        /// The share's cluster.
        cluster: String,
        /// The genesis the key's policy anchors that cluster at.
        genesis_id: [u8; 32],
    },
    /// An admission ticket cannot be issued or answered (the message names why: no
    /// measurement policy, a platform it does not admit, a TPM that refused the credential,
    /// a ticket for another key).
    #[error("admission refused: {0}")]
    AdmissionRefused(String),
    /// The transaction is not one this TEE signs (`code` names the rule of `custos-tx`:
    /// `input_not_ours`, `sighash_type_refused`, `input_value_unproven`, ...).
    #[error("transaction refused ({code}): {reason}")]
    TransactionRejected {
        /// The refusal's name.
        code: String,
        /// What was wrong, naming the input or output.
        reason: String,
    },
    /// The approvals were made for another intent than the transaction's.
    #[error("the approvals are for intent {}, this transaction's intent is {}", hex::encode(.claimed), hex::encode(.computed))]
    IntentMismatch {
        /// The intent hash the request says was approved (its approvals verified for it).
        claimed: [u8; 32],
        /// The intent hash of the transaction, as this TEE computes it.
        computed: [u8; 32],
    },
    /// The key's policy refuses the transaction (`rule`: `no_spend_limit`,
    /// `transaction_limit`, `window_amount`, `window_count`, `not_allowlisted`,
    /// `allowlist_time_lock`, `not_velocity_holder`). Approvals never override it; only a
    /// policy change approved by the key's group does.
    #[error("refused by the key's policy ({rule}): {reason}")]
    TransactionPolicyRefused {
        /// The rule.
        rule: String,
        /// What it found.
        reason: String,
    },
    /// The key signs transactions only: signing a raw digest is off for it (its policy's
    /// transactions-only rule, taken away only by its approver group's policy change).
    #[error("key {key} does not sign raw digests (its policy signs transactions only)")]
    RawSigningOff {
        /// The key, hex.
        key: String,
    },
    /// Paillier primes refused: a primes set given to this TEE (nothing is sealed), a
    /// dealer's share (nothing is stored, the request id stays unused) or a distributed key
    /// generation's aux info (the key is not stored; the session and its primes set are
    /// spent).
    #[error("Paillier primes refused ({}): {detail}", .fault.as_str())]
    PrimesRefused {
        /// What was wrong.
        fault: PrimesFault,
        /// Which set, prime or modulus.
        detail: String,
    },
}

impl TeeError {
    /// Stable snake_case code of the refusal (its kind, independent of the message): what the
    /// history records and, prefixed with `tee_`, what the REST API reports.
    pub fn code(&self) -> &'static str {
        match self {
            TeeError::InvalidRequest(_) => "invalid_request",
            TeeError::NotProvisioned(_) => "not_provisioned",
            TeeError::RootAlreadyPinned => "root_already_pinned",
            TeeError::RootRejected(_) => "root_rejected",
            TeeError::DeviceKeyExists => "device_key_exists",
            TeeError::DeviceCertRejected(_) => "device_cert_rejected",
            TeeError::DeviceCertWrongCluster { .. } => "device_cert_wrong_cluster",
            TeeError::DeviceCertWrongKey => "device_cert_wrong_key",
            TeeError::ApprovalMissing => "approval_missing",
            TeeError::ApprovalRejected { .. } => "approval_rejected",
            TeeError::QuorumNotMet { .. } => "quorum_not_met",
            TeeError::RequestExpired { .. } => "request_expired",
            TeeError::RequestReplayed(_) => "request_replayed",
            TeeError::UnknownKey(_) => "unknown_key",
            TeeError::KeyExists(_) => "key_exists",
            TeeError::KeyRecordCorrupt { .. } => "key_record_corrupt",
            TeeError::ImportRejected(_) => "import_rejected",
            TeeError::AuditMessageTooLong { .. } => "audit_message_too_long",
            TeeError::InvalidPath(_) => "invalid_path",
            TeeError::TransferRejected(_) => "transfer_rejected",
            TeeError::RequesterRejected(_) => "requester_rejected",
            TeeError::TlsSignRefused => "tls_sign_refused",
            TeeError::Storage(_) => "storage",
            TeeError::SealedImportRejected(_) => "sealed_import_rejected",
            TeeError::ThresholdRejected(_) => "threshold_rejected",
            TeeError::UnknownSession(_) => "unknown_session",
            TeeError::ThresholdAborted { .. } => "threshold_aborted",
            TeeError::PrimesNotReady(_) => "primes_not_ready",
            TeeError::UnknownPresignature(_) => "unknown_presignature",
            TeeError::UnsupportedProtocol { .. } => "unsupported_protocol",
            TeeError::AdminRevoked { .. } => "admin_revoked",
            TeeError::ApproverNotInGroup { .. } => "approver_not_in_group",
            TeeError::NotAMember { .. } => "not_a_member",
            TeeError::DeviceRevoked { .. } => "device_revoked",
            TeeError::GovernanceRejected(_) => "governance_rejected",
            TeeError::GovernanceGap { .. } => "governance_gap",
            TeeError::NotGoverned => "not_governed",
            TeeError::AdmissionRefused(_) => "admission_refused",
            TeeError::NotExecutor { .. } => "not_executor",
            TeeError::PolicyRejected(_) => "policy_rejected",
            TeeError::PolicyConflict { .. } => "policy_conflict",
            TeeError::ParticipantNotExecutor { .. } => "participant_not_executor",
            TeeError::LegacyRequest(_) => "legacy_request",
            TeeError::ForeignLogMissing { .. } => "foreign_log_missing",
            TeeError::TransactionRejected { .. } => "transaction_rejected",
            TeeError::IntentMismatch { .. } => "intent_mismatch",
            TeeError::RawSigningOff { .. } => "raw_signing_off",
            TeeError::TransactionPolicyRefused { .. } => "policy_refused",
            TeeError::PrimesRefused { .. } => "primes_refused",
        }
    }
}
