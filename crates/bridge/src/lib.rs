//! The bridge server (patent FIG. 2, the internal relay of a cluster).
//!
//! A gRPC server over mutual TLS that manages the cluster's vault nodes: registry and
//! health checks, the cluster key list with the nodes holding each key, routing of each
//! request to a healthy node holding the key with failover to the next one, and a
//! hash-chained history of every request and result in the metadata DB ([0029]). If the
//! history cannot be written the request is refused (fail closed). Callers whose chain does
//! not reach the pinned Root are refused in the TLS handshake; refused callers are counted
//! and recorded as aggregated history rows, never one row per attempt.
// tonic::Status is the idiomatic error of gRPC handlers; boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod audit;
mod config;
mod link;
pub mod metrics;
mod refusals;
mod routing;
mod service;

pub use config::BridgeConfig;
pub use link::LinkConfig;
pub use service::{run, GovernanceLoadError};

/// Largest gRPC message accepted or sent (key lists of a large cluster).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Failures that stop a bridge server.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] custos_config::ConfigError),
    /// TLS / network setup failed.
    #[error(transparent)]
    Net(#[from] custos_net::NetError),
    /// PKI material is unusable.
    #[error(transparent)]
    Pki(#[from] custos_pki::PkiError),
    /// The metadata DB is unusable.
    #[error(transparent)]
    Metadata(#[from] custos_metadata::MetadataError),
    /// The governance log stored in the metadata DB cannot be trusted.
    #[error(transparent)]
    Governance(#[from] GovernanceLoadError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(String),
}
