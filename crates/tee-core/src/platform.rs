//! The platform interface: everything the TEE core needs from the world outside it.
//!
//! The core has no clock, randomness, storage or networking of its own. A backend provides
//! these: the software backend (`custos-tee-host`) for development and tests, and later AWS
//! Nitro Enclaves (NSM random/attestation, KMS-bound sealing), SGX via Gramine (encrypted
//! files sealed to MRENCLAVE), OP-TEE (GlobalPlatform trusted storage) or a confidential VM.

use custos_attest::{TpmCredential, TpmIdentity};
use custos_wire::protocol::Attestation;
use zeroize::Zeroizing;

/// Name of a sealed record, e.g. `root`, `device-key`, `wallet/<hex>`.
///
/// Restricted to `[a-z0-9/_-]`, at most [`RecordId::MAX_LEN`] bytes, so that a backend can
/// map it to a file name and bind it into the sealing associated data without escaping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(String);

impl RecordId {
    /// Longest record name.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a record name.
    pub fn new(name: impl Into<String>) -> Result<Self, PlatformError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/_-".contains(&b));
        if ok {
            Ok(RecordId(name))
        } else {
            Err(PlatformError::InvalidRecordId(name))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Failures of the platform. A corrupt record is reported, never silently skipped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// A record name outside the allowed alphabet or length.
    #[error("invalid record id {0:?}")]
    InvalidRecordId(String),
    /// A sealed record failed authentication (tampered, truncated, or sealed elsewhere).
    #[error("sealed record {id} is corrupt or foreign: {reason}")]
    RecordCorrupt {
        /// The record.
        id: String,
        /// What failed.
        reason: String,
    },
    /// The storage medium failed.
    #[error("sealed storage I/O error: {0}")]
    Io(String),
    /// The random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// The platform cannot do this.
    #[error("platform does not support {0}")]
    Unsupported(&'static str),
    /// The platform's attestation hardware refused or failed (a TPM that will not activate a
    /// credential made for another key, a quote that failed): what and why.
    #[error("attestation failed: {0}")]
    Attestation(String),
}

/// The services a TEE backend provides to the core.
pub trait Platform {
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError>;

    /// Current time, seconds since the Unix epoch, as trusted by the platform. Used for
    /// certificate validity and approval expiry.
    fn now_unix(&self) -> u64;

    /// Seals `plaintext` under record `id`. The write is pending until [`Platform::commit`]
    /// and visible to `unseal`/`list` meanwhile.
    fn seal(&mut self, id: &RecordId, plaintext: &[u8]) -> Result<(), PlatformError>;

    /// Makes every pending write durable, atomically (all or nothing). On failure every
    /// pending write is discarded. Batching many writes per commit is what lets a TEE
    /// acknowledge thousands of keys per second with one storage flush (group commit).
    fn commit(&mut self) -> Result<(), PlatformError>;

    /// Unseals record `id`; `Ok(None)` if it does not exist.
    fn unseal(&mut self, id: &RecordId) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError>;

    /// Lists the records whose name starts with `prefix`.
    fn list(&mut self, prefix: &str) -> Result<Vec<RecordId>, PlatformError>;

    /// Deletes record `id` (no error if absent); pending until commit like `seal`.
    fn remove(&mut self, id: &RecordId) -> Result<(), PlatformError>;

    /// Produces an attestation document over `user_data`.
    fn attest(&mut self, user_data: &[u8]) -> Result<Attestation, PlatformError>;

    /// Increments and returns a counter that never goes backwards, even across restarts.
    fn counter_increment(&mut self) -> Result<u64, PlatformError>;

    /// The platform's TPM identity (EK certificate and chain, attestation key), for a
    /// verifier to make a credential for; `None` on a platform without a TPM.
    fn attestation_identity(&mut self) -> Result<Option<TpmIdentity>, PlatformError> {
        Ok(None)
    }

    /// Activates a credential made for [`Platform::attestation_identity`]: the TPM returns its
    /// secret only if the credential was made for its own EK and attestation key, which is
    /// what proves to the verifier that the key quoting is in that TPM.
    fn activate_credential(
        &mut self,
        _credential: &TpmCredential,
    ) -> Result<Zeroizing<[u8; 32]>, PlatformError> {
        Err(PlatformError::Unsupported("credential activation"))
    }
}
