//! The TEE core's integration tests, one binary: sealed imports, dealt threshold keys and
//! their signing and presignatures, distributed key generation, and each of them repeated
//! after a TEE killed right after its commit (`crash`). Sealed storage in memory comes from
//! `custos-test-kit` (writes staged until commit).

mod crash;
mod dkg;
mod sealed_import;
mod threshold;
