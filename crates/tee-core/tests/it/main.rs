//! The TEE core's integration tests, one binary: wallet creation, sealed imports, dealt
//! threshold keys (2-of-3, and the patent's 3-of-6) and their signing and presignatures,
//! distributed key generation, and each way of making a key repeated after a TEE killed
//! right after its commit (`crash`). Sealed storage in memory comes from `custos-test-kit`
//! (writes staged until commit).

mod crash;
mod create_wallet;
mod dkg;
mod ethereum;
mod foreign_logs;
mod governance;
mod key_policy;
mod passkeys;
mod renewal;
mod sealed_import;
mod six_clusters;
mod threshold;
mod threshold_psbt;
mod tier_groups;
mod transaction;
