//! Mutual TLS between Custos components (vault node servers, the bridge server) for tonic
//! gRPC, with Custos device certificates whose private key may live inside a TEE.
//!
//! What this crate does and why it is shaped this way:
//!
//! * **TLS 1.3 only.** A TEE that holds a device key D must be able to refuse to sign
//!   anything but a TLS handshake. In TLS 1.3 what a peer signs is a fixed, recognisable
//!   byte string (RFC 8446 §4.4.3), checked by [`is_tls13_certificate_verify_message`]; in
//!   TLS 1.2 the signed data would be attacker-influenced nonces and key shares with no such
//!   structure. So neither side ever negotiates TLS 1.2.
//! * **Identities with local or remote keys.** [`TlsIdentity`] pairs a certificate chain with
//!   either a local ECDSA P-256 key (the bridge) or a closure that forwards the signing input
//!   to the TEE core (vault node servers).
//! * **The server proves possession, the application decides.** [`server_config`] demands a
//!   client certificate and checks the handshake signature made with its key, but deliberately
//!   does not judge the chain: the application reads the presented chain ([`peer_info`],
//!   [`PeerInfo::device_chain`]) and runs the Custos checks
//!   ([`custos_pki::TrustRoot::verify_device`]) itself, so that every refusal (foreign CA,
//!   another cluster, self-signed) is refused with a reason the application can log and
//!   return, instead of an anonymous TLS alert.
//! * **A server every caller of which is in the PKI anchors the chain in the handshake**
//!   ([`server_config_anchored`], the bridge): rustls' webpki verifier refuses a chain that
//!   does not reach the pinned Root before the application reads a byte, and tells an
//!   observer why ([`TlsRefusal`]), so the server counts refusals instead of serving or
//!   logging each one. The application still applies the Custos role and cluster rules.
//! * **The client authenticates the server fully at TLS level** ([`client_config`]): webpki
//!   against the pinned Custos Root CA for the expected name `<node>.<cluster>.custos`, plus
//!   the Custos role rules of `verify_device`.
//! * **tonic without its TLS feature.** [`serve_tls`] turns a `TcpListener` into a stream of
//!   authenticated connections for `Server::serve_with_incoming`; [`connect`] and
//!   [`connect_lazy`] build a `Channel` over the same TLS stack on the client side.
//!
//! ```no_run
//! # async fn example(
//! #     identity: custos_net::TlsIdentity,
//! #     root_der: Vec<u8>,
//! #     router: tonic::transport::server::Router,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! // Server
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let incoming = custos_net::serve_tls(listener, custos_net::server_config(&identity, &root_der)?).await;
//! tokio::spawn(router.serve_with_incoming(incoming));
//! // In a handler: custos_net::peer_info(&request)?.device_chain() → TrustRoot::verify_device.
//!
//! // Client
//! let config = custos_net::client_config(&identity, &root_der)?;
//! let addr = "127.0.0.1:7000".parse()?;
//! let channel = custos_net::connect(addr, "node1.dc1.custos", config).await?;
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```

mod anchored;
mod client;
mod config;
mod identity;
pub mod metrics;
mod server;

pub use anchored::{server_config_anchored, RefusalObserver, TlsRefusal, TlsRefusalReason};
pub use client::{connect, connect_lazy, TlsConnector};
pub use config::{
    client_config, client_config_without_identity, server_config, server_config_without_client_auth,
};
pub use identity::{
    is_tls13_certificate_verify_message, RemoteSignFn, TlsIdentity, TLS13_CLIENT_CONTEXT,
    TLS13_SERVER_CONTEXT,
};
pub use server::{
    peer_info, serve_tls, serve_tls_with, PeerCache, PeerInfo, ServeOptions, TlsConn, TlsIncoming,
};

/// Largest certificate (DER) this crate accepts from a peer or in an identity. Custos
/// certificates are well under 2 KiB; the bound keeps a hostile peer from making the server
/// copy megabytes into every request's connection info.
pub const MAX_CERT_LEN: usize = 8 * 1024;

/// Most certificates accepted in a presented chain. A Custos party presents exactly three
/// (device, Cluster CA, Device CA); a little slack lets the application report a wrong chain
/// with a precise reason rather than a TLS alert.
pub const MAX_CHAIN_LEN: usize = 5;

/// Everything that can go wrong setting up or using Custos mutual TLS.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The certificate chain of a [`TlsIdentity`] is unusable.
    #[error("invalid TLS identity: {0}")]
    InvalidIdentity(String),
    /// The local private key could not be loaded (not an ECDSA P-256 PKCS#8 key).
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// The local private key is not the one certified by the leaf certificate.
    #[error("the private key does not match the public key of the leaf certificate")]
    KeyMismatch,
    /// The Root CA certificate given to a config is not a Custos Root CA.
    #[error("invalid Root CA certificate: {0}")]
    InvalidRootCa(String),
    /// rustls refused to build a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The name the server must prove is not a valid DNS name.
    #[error("invalid server name {0:?}: expected <node>.<cluster>.custos")]
    InvalidServerName(String),
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        /// Address dialled.
        addr: std::net::SocketAddr,
        /// Socket error.
        source: std::io::Error,
    },
    /// The TLS handshake with a server failed (server not trusted, wrong name, refused us).
    #[error("TLS handshake with {addr} ({server_name}) failed: {source}")]
    Handshake {
        /// Address dialled.
        addr: std::net::SocketAddr,
        /// Name the server had to prove.
        server_name: String,
        /// TLS error as reported by rustls.
        source: std::io::Error,
    },
    /// The gRPC channel could not be established (the message carries the whole cause chain).
    #[error("gRPC connection to {addr} failed: {reason}")]
    Connect {
        /// Address dialled.
        addr: std::net::SocketAddr,
        /// The transport error and its causes.
        reason: String,
    },
    /// The peer did not present the three-certificate Custos device chain.
    #[error("peer presented {0} certificate(s); a Custos device presents exactly 3 (device, Cluster CA, Device CA)")]
    NotADeviceChain(usize),
    /// The peer's chain failed the Custos checks (foreign CA, other cluster, expired, ...).
    #[error("peer certificate refused: {0}")]
    PeerRejected(#[from] custos_pki::PkiError),
}

/// Renders an error with all its causes, because tonic's transport error prints only
/// "transport error" at top level and hides the TLS reason in its source chain.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    // Bounded walk: cause chains are short, but a cyclic custom error must not hang us.
    for _ in 0..16 {
        let Some(s) = cur else { break };
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// The crypto provider used everywhere in this crate: rustls' ring provider (the workspace
/// builds rustls without aws-lc), passed explicitly so that no process-wide default is needed.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
