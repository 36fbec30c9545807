//! The way to a cluster: one `ExternalRelay.Forward` call per link request.
//!
//! [`Gateway`] is the seam between the cloud server's logic and the network: the server
//! uses [`RelayGateway`] (gRPC over TLS to each cluster's external relay), tests use an
//! in-memory cluster. Relays are untrusted: whatever comes back is verified by the caller
//! (TEE responses against the serving node's certified device key).

use std::future::Future;
use std::pin::Pin;

use custos_proto::cluster::{LinkReply, LinkRequest};

mod relay;

pub use relay::RelayGateway;

/// A boxed future, so that [`Gateway`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a link request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No gateway for this cluster.
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    /// Transport failure (relay down, timeout, link broken): worth retrying with the same
    /// request id, which the link executes at most once.
    #[error("relay unavailable: {0}")]
    Unavailable(String),
    /// The relay refused the call (authentication, malformed call): retrying won't help.
    #[error("relay rejected the call: {0}")]
    Rejected(String),
    /// The relay answered something undecodable.
    #[error("relay protocol error: {0}")]
    Protocol(String),
}

impl GatewayError {
    /// Whether retrying the same request id may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Unavailable(_))
    }
}

/// Carries one [`LinkRequest`] to a cluster's bridge and returns its [`LinkReply`].
///
/// Exactly-once per `request_id`: sending the same id again returns the first reply
/// without executing the request again.
pub trait Gateway: Send + Sync + 'static {
    /// Forwards `request` to `cluster`.
    fn forward<'a>(
        &'a self,
        cluster: &'a str,
        request_id: [u8; 16],
        request: LinkRequest,
    ) -> BoxFuture<'a, Result<LinkReply, GatewayError>>;
}
