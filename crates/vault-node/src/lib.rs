//! The vault node server (patent FIG. 2–3, the REE side of a vault node).
//!
//! It owns no key material: it reaches its TEE core process over the local socket, presents
//! the TEE-held device key D in mutual TLS (the TEE signs the handshake), relays the
//! bridge's requests to the TEE, and keeps the node in sync with the cluster (patent
//! [0068]): on start, periodically, and when the bridge says a key was created, it asks the
//! bridge for the key list and fetches every key it lacks from a peer that holds it, as one
//! HPKE-sealed, D-signed transfer per batch that only its own TEE can open.
//!
//! Once its TEE holds the cluster's governance log, the server also turns away peers that
//! are not current members (`members`), ahead of the TEE's own check, which is the authority.
// tonic::Status is the idiomatic error of gRPC handlers; boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod cert_age;
mod config;
#[cfg(test)]
mod fake_tee;
mod members;
mod service;
mod sync;
mod tee_pool;
#[cfg(test)]
mod test_pki;

pub use config::{NodeConfig, TeeSection};
pub use service::run;
pub use tee_pool::TeePool;

/// Largest gRPC message accepted or sent (key lists of a large cluster).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Failures that stop a node server.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] custos_config::ConfigError),
    /// The TEE core is unreachable or refused.
    #[error("TEE core: {0}")]
    Tee(#[from] custos_wire::client::ClientError),
    /// The TEE is not provisioned yet.
    #[error("TEE core is not provisioned: {0}")]
    NotProvisioned(String),
    /// TLS / network setup failed.
    #[error(transparent)]
    Net(#[from] custos_net::NetError),
    /// PKI material is unusable.
    #[error(transparent)]
    Pki(#[from] custos_pki::PkiError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(String),
}
