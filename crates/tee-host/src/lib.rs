//! Runs the Custos TEE core as its own process (software backend). The frame protocol on its
//! socket and the client the vault node server uses are the wire contract's
//! ([`custos_wire::frame`], [`custos_wire::client`]).
//!
//! * [`sealed`]: the software platform — sealed records on disk, OS randomness and clock;
//! * `tpm` (feature `tpm`): the TPM 2.0 platform — the same store, its key sealed by a TPM
//!   and its epoch bound to the TPM's monotonic counter (rollback refused);
//! * [`primes`]: pregenerated Paillier primes sealed at start-up for distributed key
//!   generation;
//! * [`hardening`]: no core dumps, not ptrace-able, memory locked;
//! * [`server`]: the socket server (peer credentials checked) around the core;
//! * [`swtpm`]: a software TPM on loopback for development (the demo, tests), and folder
//!   copies put back (a store rolled back).

pub mod hardening;
pub mod primes;
pub mod sealed;
pub mod server;
pub mod swtpm;
#[cfg(feature = "tpm")]
pub mod tpm;

pub use sealed::{SealingKeySource, SoftwarePlatform, StoreError};
