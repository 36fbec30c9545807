//! The `custos` command-line tool's building blocks, shared by the binary, the demo and the
//! integration tests: operator actions that span the PKI and the TEE process.

pub mod admin;
pub mod admission;
pub mod approve;
pub mod bitcoin_signer;
pub mod cluster;
pub mod dealer;
pub mod deployment;
pub mod eth_signer;
pub mod foundry;
pub mod governance;
pub mod link_channel;
pub mod ops;
pub mod passkey;
pub mod pkcs11;
pub mod renewal;
pub mod rogue;
pub mod tee_plan;
pub mod tee_process;
pub mod wallet;
