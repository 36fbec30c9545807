//! Custos external relay (patent FIG. 1): one per cluster, on the Internet side of the
//! link. It serves the cloud server (gRPC `ExternalRelay.Forward` over TLS with the relay's
//! certificate of the cluster's CA, callers authenticated by a bearer token) and carries
//! each request over the link to the cluster's bridge server (internal relay), then the
//! answer back.
//!
//! The relay holds no key material of the cluster and cannot forge anything: link
//! envelopes are signed with its own certified link key and checked by the bridge, answers
//! are signed by the bridge (checked here against the pinned bridge certificate), and TEE
//! responses inside them are signed by the serving node's device key (checked by the cloud
//! server end to end).

// tonic::Status is the idiomatic error of gRPC handlers; boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod config;
mod service;

pub use config::{RelayConfig, TransportConfig};
pub use service::{connect_relay, run, RelayError, RELAY_TOKEN_HEADER};

/// Largest gRPC message the relay accepts or sends (a link payload and its framing).
pub const MAX_MESSAGE: usize = custos_link::MAX_PAYLOAD + 64 * 1024;
