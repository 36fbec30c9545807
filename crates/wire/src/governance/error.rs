//! Why a governance entry or a device was refused: typed, and naming what was wrong.

use crate::policy::PolicyError;
use crate::protocol::TeeError;

fn hex32(fp: &[u8; 32]) -> String {
    hex::encode(fp)
}

/// Why a governance log, or one entry of it, was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GovError {
    /// The log has no entries.
    #[error("the governance log is empty")]
    EmptyLog,
    /// A list is over its limit.
    #[error("{what}: {len} entries, at most {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text is over its limit.
    #[error("{what}: {len} bytes, at most {max}")]
    TooLong {
        /// Which text.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A fingerprint list is empty, unsorted, repeats itself or is too long.
    #[error("{what}: {error}")]
    BadSet {
        /// Which list.
        what: &'static str,
        /// What is wrong with it.
        error: PolicyError,
    },
    /// The governors' quorum is 0, above their number or above the largest quorum.
    #[error("quorum {quorum} is outside 1..={max} for {governors} governors")]
    QuorumOutOfRange {
        /// Quorum offered.
        quorum: u8,
        /// Number of governors.
        governors: usize,
        /// Largest quorum allowed.
        max: usize,
    },
    /// A cluster rule is refused (none are defined yet).
    #[error("cluster rule refused: {0}")]
    Rule(PolicyError),
    /// A member's node name is not a valid name.
    #[error("invalid node name {0:?}")]
    InvalidName(String),
    /// A revocation names nothing.
    #[error("a revocation names no admin and no device")]
    EmptyRevocation,
    /// A reason holds a control character (line breaks and terminal escape sequences could
    /// rewrite what an approver's terminal shows around it).
    #[error("the reason holds control character {0:?}")]
    ControlCharacter(char),
    /// The first entry is not a genesis.
    #[error("entry {version} is not a genesis, so it cannot start a log")]
    NotGenesis {
        /// Its version.
        version: u64,
    },
    /// A genesis after the start of the log.
    #[error("entry {version} is a genesis; a log has one, at version 0")]
    UnexpectedGenesis {
        /// Its version.
        version: u64,
    },
    /// The genesis does not have version 0 and a zero `prev`.
    #[error("a genesis has version 0 and prev zero, found version {version}")]
    GenesisPosition {
        /// Its version.
        version: u64,
    },
    /// An entry is not the next version.
    #[error("entry version {found} where {expected} comes next")]
    WrongVersion {
        /// The next version.
        expected: u64,
        /// The entry's version.
        found: u64,
    },
    /// An entry does not name the hash of the entry before it.
    #[error("entry {version} names prev {}, the log's head is {}", hex32(.found), hex32(.expected))]
    WrongPrev {
        /// The entry's version.
        version: u64,
        /// The head of the log.
        expected: [u8; 32],
        /// What the entry names.
        found: [u8; 32],
    },
    /// The genesis is not the pinned one.
    #[error("genesis id {} is not the pinned {}", hex32(.found), hex32(.expected))]
    WrongPin {
        /// The pinned id.
        expected: [u8; 32],
        /// The genesis' id.
        found: [u8; 32],
    },
    /// The approvals of an entry do not meet the governors' quorum, or one of them does not
    /// count (outsider, revoked, bad signature).
    #[error("entry {version}: {error}")]
    Approvals {
        /// The entry's version.
        version: u64,
        /// The refusal [`crate::approval::verify_approvals`] gave.
        error: TeeError,
    },
    /// A member's chain does not verify as a device of the cluster at its admission time.
    #[error("member {node:?}: device chain refused at {admitted_at}: {reason}")]
    MemberChain {
        /// Node name.
        node: String,
        /// Admission time.
        admitted_at: u64,
        /// Verifier message.
        reason: String,
    },
    /// A member record's fingerprint is not that of its certified key.
    #[error("member {node:?}: key fingerprint {} is not the certified key's {}", hex32(.found), hex32(.certified))]
    MemberKey {
        /// Node name.
        node: String,
        /// Fingerprint of the key the certificate certifies.
        certified: [u8; 32],
        /// Fingerprint the record names.
        found: [u8; 32],
    },
    /// A member record's name is not the one its certificate carries.
    #[error("member {node:?}: the certificate names node {certified:?}")]
    MemberName {
        /// Name in the record.
        node: String,
        /// Name in the certificate.
        certified: String,
    },
    /// A member's admission time lies outside the entry's approval window.
    #[error("member {node:?}: admitted_at {admitted_at} outside the approval window ending {expires_at}")]
    AdmittedOutsideWindow {
        /// Node name.
        node: String,
        /// Admission time.
        admitted_at: u64,
        /// End of the approval window.
        expires_at: u64,
    },
    /// Another current member has the name.
    #[error("node name {0:?} is taken by a current member")]
    NameTaken(String),
    /// The key is already a member.
    #[error("key {} is already a member", hex32(.0))]
    AlreadyMember([u8; 32]),
    /// The device key is revoked and can never be admitted.
    #[error("device key {} is revoked", hex32(.0))]
    DeviceRevoked([u8; 32]),
    /// The key is not a current member.
    #[error("key {} is not a member", hex32(.0))]
    NotAMember([u8; 32]),
    /// The key is already revoked.
    #[error("key {} is already revoked", hex32(.0))]
    AlreadyRevoked([u8; 32]),
    /// New governors include a revoked admin.
    #[error("governor {} is revoked", hex32(.0))]
    RevokedGovernor([u8; 32]),
    /// A revocation would leave fewer unrevoked governors than the quorum, so no later entry
    /// (not even new governors) could ever be approved.
    #[error("the revocation leaves {left} unrevoked governors, the quorum is {quorum}; set new governors first")]
    GovernorsBelowQuorum {
        /// Unrevoked governors after the revocation.
        left: usize,
        /// The governors' quorum.
        quorum: u8,
    },
    /// A measurement policy is malformed.
    #[error("measurement_policy_invalid: {0}")]
    MeasurementPolicy(String),
    /// A node is to be admitted, but the cluster has no measurement policy yet.
    #[error("no_measurement_policy: the cluster has no measurement policy, so node {node:?} cannot be admitted; the governors set one first")]
    NoMeasurementPolicy {
        /// Node name.
        node: String,
    },
    /// The policy does not admit the node's platform (the software platform without
    /// evidence included).
    #[error("platform_not_admitted: node {node:?} runs on platform {platform:?}, which the cluster's measurement policy does not admit")]
    PlatformNotAdmitted {
        /// Node name.
        node: String,
        /// Its platform.
        platform: String,
    },
    /// The admission ticket is malformed, foreign, or not for this node.
    #[error("admission_ticket_invalid: node {node:?}: {reason}")]
    Ticket {
        /// Node name.
        node: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The ticket is not signed by the current member it names.
    #[error("admission_ticket_signature: node {node:?}: the ticket is not signed by member {}", hex32(.issuer))]
    TicketSignature {
        /// Node name.
        node: String,
        /// The issuer the ticket names.
        issuer: [u8; 32],
    },
    /// The admission time is outside the ticket's validity.
    #[error("admission_ticket_expired: node {node:?} admitted at {admitted_at}, the ticket covers {issued_at}..={expires_at}")]
    TicketExpired {
        /// Node name.
        node: String,
        /// Admission time.
        admitted_at: u64,
        /// Ticket issue time.
        issued_at: u64,
        /// Ticket expiry.
        expires_at: u64,
    },
    /// The revealed nonce is not the one the ticket committed to.
    #[error("admission_nonce_mismatch: node {node:?}: the evidence reveals another nonce than the ticket's")]
    NonceMismatch {
        /// Node name.
        node: String,
    },
    /// The nonce was used by an earlier admission of this log.
    #[error("admission_nonce_reused: node {node:?}: the ticket's nonce was already used by an earlier admission")]
    NonceReused {
        /// Node name.
        node: String,
    },
    /// The platform's evidence does not verify, or does not show what the policy requires
    /// (checked by the TEE core).
    #[error("evidence_refused: node {node:?}: {code}: {reason}")]
    Evidence {
        /// Node name.
        node: String,
        /// The verifier's name for the refusal (`tpm_pcr_mismatch`, `binding_mismatch`, ...).
        code: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Why a device is not accepted as a member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceRefusal {
    /// The device key is not a current member of the cluster (never admitted, removed, or of
    /// another cluster).
    #[error("node {node:?} (key {}) is not a member", hex32(.key_fingerprint))]
    NotAMember {
        /// Name the certificate carries.
        node: String,
        /// SHA-256 of its certified key.
        key_fingerprint: [u8; 32],
    },
    /// The device key is revoked.
    #[error("node {node:?} (key {}) is revoked", hex32(.key_fingerprint))]
    Revoked {
        /// Name the certificate carries.
        node: String,
        /// SHA-256 of its certified key.
        key_fingerprint: [u8; 32],
    },
    /// The key is a member under another name (a renewed certificate may not rename a node).
    #[error("key {} is member {member:?}, its certificate names {node:?}", hex32(.key_fingerprint))]
    WrongName {
        /// Name the certificate carries.
        node: String,
        /// Name the member was admitted with.
        member: String,
        /// SHA-256 of its certified key.
        key_fingerprint: [u8; 32],
    },
}
