//! Error types.

use crate::phase::Phase;

/// Errors of key shares, primes, the dealer and presignatures (everything but sessions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// Input larger than the accepted limit.
    #[error("input too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Bytes that do not decode (or do not validate) as the expected object.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The key share (or its parts) is not valid or not consistent.
    #[error("invalid key share: {0}")]
    InvalidShare(String),
    /// The key has no chain code, so it cannot derive child keys.
    #[error("the key is not an HD key (no chain code)")]
    NotHd,
    /// A hardened index in a derivation path: a threshold key has no single private key to
    /// derive it from, only non-hardened (public) derivation is possible.
    #[error("hardened derivation index {0:#010x} is not supported (non-hardened only)")]
    HardenedIndex(u32),
    /// The derivation path is longer than [`MAX_PATH_DEPTH`](crate::MAX_PATH_DEPTH).
    #[error("derivation path too long: {0} indexes")]
    PathTooLong(usize),
    /// Presignatures are refused for HD keys (RUSTSEC-2025-0127: with presignatures, a
    /// signature for one child key can be turned into a signature under another).
    #[error("presignatures are refused for HD keys (RUSTSEC-2025-0127)")]
    HdPresignature,
    /// A partial signature does not match its signer's presignature commitment.
    #[error("partial signature of position {position} is invalid")]
    BadPartial {
        /// Position (in the signing party list) of the party that issued it.
        position: u16,
    },
    /// The resulting signature does not verify (or no recovery id recovers the key).
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// The trusted dealer failed.
    #[error("dealer: {0}")]
    Dealer(String),
    /// Primes or a modulus of the committed TEST-ONLY fixture, whose factors everybody can
    /// read: refused unless test primes are allowed ([`TestPrimes`](crate::TestPrimes)).
    #[error(
        "{what} is from the public TEST-ONLY primes fixture: its secret factors are published"
    )]
    TestFixturePrimes {
        /// Which set or modulus (e.g. "the Paillier modulus of party 2").
        what: String,
    },
    /// A prime of this party's own set is not a safe prime ((p - 1) / 2 not prime) of the
    /// security level's exact size.
    #[error("{what} is not a safe prime")]
    NotSafePrime {
        /// Which prime (e.g. "prime 3 of the set").
        what: String,
    },
    /// Two moduli that must be coprime share a prime factor (or are equal): two parties (or
    /// one party's two moduli) share primes, so each can read the other's Paillier
    /// ciphertexts.
    #[error("{first} and {second} share a prime factor")]
    DuplicateModulus {
        /// The first modulus (e.g. "the Paillier modulus of party 0").
        first: String,
        /// The second.
        second: String,
    },
}

impl From<custos_threshold_public::PublicError> for ThresholdError {
    fn from(e: custos_threshold_public::PublicError) -> Self {
        use custos_threshold_public::PublicError as P;
        match e {
            P::TooLarge { len, limit } => ThresholdError::TooLarge { len, limit },
            P::Decode { what, reason } => ThresholdError::Decode { what, reason },
            P::BadPartial { position } => ThresholdError::BadPartial { position },
            P::InvalidSignature(m) => ThresholdError::InvalidSignature(m),
            other => ThresholdError::InvalidParameters(other.to_string()),
        }
    }
}

/// Errors of protocol sessions ([`Session`](crate::Session), [`SessionHost`](crate::SessionHost)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session parameters are invalid (nothing was started or fed; a session that existed
    /// is unchanged).
    #[error("invalid session parameters: {0}")]
    InvalidParameters(String),
    /// A share, path or presignature problem detected while starting a session.
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    /// A message that is too large, does not decode, belongs to no round of this protocol, or
    /// whose content does not match its declared broadcast/p2p type. The session is aborted:
    /// the caller authenticated the sender, so the sender is at fault.
    #[error("bad message from position {from}: {reason}")]
    BadMessage {
        /// Sender position (in the session's party list).
        from: u16,
        /// What was wrong.
        reason: String,
    },
    /// The protocol aborted. `blamed` lists the positions the library (or the session's own
    /// equivocation check) identified as faulty; it can be empty (e.g. `MismatchedDelta` and
    /// an invalid final signature name nobody, identifiable abort is not implemented upstream).
    #[error("session aborted in phase {phase} (blamed positions {blamed:?}): {detail}")]
    Aborted {
        /// Positions (in the session's party list) blamed for the abort.
        blamed: Vec<u16>,
        /// Phase of the message that triggered the abort.
        phase: Phase,
        /// Human-readable detail (library error chain).
        detail: String,
    },
    /// The session has already produced its output.
    #[error("session already finished")]
    Finished,
    /// The session was aborted before; it accepts nothing more.
    #[error("session already aborted")]
    AlreadyAborted,
    /// The session passed its deadline and was dropped.
    #[error("session expired")]
    Expired,
    /// No session with this id.
    #[error("unknown session")]
    UnknownSession,
    /// A session with this id exists or existed recently (ids are never reused).
    #[error("session id already used")]
    SessionExists,
    /// The host holds its maximum number of sessions.
    #[error("too many open sessions (limit {limit})")]
    TooManySessions {
        /// The limit.
        limit: usize,
    },
    /// The host's worker thread is gone.
    #[error("session host stopped")]
    HostStopped,
    /// Unexpected internal failure (state machine misuse or a library bug).
    #[error("internal error: {0}")]
    Internal(String),
}
