//! The TEE core's integration tests, one binary: sealed imports, dealt threshold keys and
//! their signing and presignatures, distributed key generation. Sealed storage in memory
//! comes from `custos-test-kit` (writes staged until commit).

mod dkg;
mod renewal;
mod sealed_import;
mod threshold;
