//! The `custos` crate's integration tests, one binary (each module was a test binary of its
//! own): real processes on loopback — TEE core processes, clusters, links and deployments
//! started from the `custos` binary (`CARGO_BIN_EXE_custos`) — and the `custos approve`
//! command against the test kit's cloud server. Set-up that needs the `custos` binary or its
//! library is in [`common`]; what every crate's tests share comes from `custos-test-kit`.
//!
//! Tests run in parallel in this one process: each works in a temporary directory of its
//! own, on loopback ports chosen by the OS, in a PostgreSQL schema of its own, and sets no
//! environment variable of this process.

mod common;

mod admin_keys;
mod approve;
mod bench_psbt;
mod bip32;
mod bitcoin_signer;
mod bridge_flood;
mod cloud_listen;
mod cluster;
mod console;
#[cfg(feature = "tpm")]
mod demo_tpm;
mod dkg;
mod e2e;
mod eth_signer;
mod governance;
mod link;
mod logs;
mod metrics;
mod one_effect;
mod passkey_ceremony;
mod pkcs11;
mod psbt_rest;
mod refusals;
mod renewal;
mod replicas;
mod restart;
mod six_clusters;
mod tee_core_deps;
mod tee_sync;
mod threshold;
mod threshold_psbt;
mod tier_groups;
#[cfg(feature = "tpm")]
mod tpm;
#[cfg(feature = "tpm")]
mod tpm_presign;
mod wallet_policy;
