//! Runs the Custos TEE core as its own process (software backend) and the thin client the
//! vault node server uses to reach it.
//!
//! * [`sealed`]: the software platform — sealed records on disk, OS randomness and clock;
//! * [`primes`]: pregenerated Paillier primes sealed at start-up for distributed key
//!   generation;
//! * [`hardening`]: no core dumps, not ptrace-able, memory locked;
//! * [`frame`]: the versioned, size-limited frame protocol on the Unix socket;
//! * [`server`]: the socket server (peer credentials checked) around the core;
//! * [`client`]: the client library.
#![forbid(unsafe_code)]

pub mod client;
pub mod frame;
pub mod hardening;
pub mod primes;
pub mod sealed;
pub mod server;

pub use client::{ClientError, TeeClient};
pub use sealed::{SealingKeySource, SoftwarePlatform, StoreError};
