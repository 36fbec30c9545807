//! The link between a cluster's external relay (Internet side) and its internal relay
//! (the bridge server, intranet side), after patent US 2020/0259646 A1: an on-demand,
//! message-oriented channel that is not the Internet (QR printing, Bluetooth, a serial
//! line). A request crosses it as one framed, authenticated [`Envelope`].
//!
//! * [`Envelope`]: versioned, cluster-bound, signed with ECDSA P-256 by the sending relay
//!   and checked against the peer's pinned key ([`LinkKeys`]); size limits are enforced
//!   before anything is allocated or decoded.
//! * Transports: [`tcp`] (length-prefixed frames), [`serial`] (CRC frames with
//!   retransmission over RS-232 / USB serial), [`qr`] (animated QR codes through a screen
//!   and a camera) and [`spool`] (atomic files in two directories, for a removable medium).
//! * [`LinkServer`] (internal side) runs each request id exactly once, with a durable redb
//!   dedup store, and refuses a request sealed longer ago than an approval lives
//!   ([`MAX_ENVELOPE_AGE`]), so a captured envelope never runs again once its stored reply
//!   is pruned; [`LinkClient`] (external side) retries with the same request id.
//!
//! ```
//! use custos_link::{serve_tcp, ClientConfig, LinkClient, LinkKeys, LinkServer, TcpTransport};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), custos_link::LinkError> {
//! # let dir = tempfile::tempdir()?;
//! // Provisioning: each relay has its own key and pins the other's public key.
//! let (ext_pkcs8, int_pkcs8) = (LinkKeys::generate_pkcs8()?, LinkKeys::generate_pkcs8()?);
//! let ext_keys = LinkKeys::from_pkcs8(&ext_pkcs8, LinkKeys::public_key_of_pkcs8(&int_pkcs8)?)?;
//! let int_keys = LinkKeys::from_pkcs8(&int_pkcs8, LinkKeys::public_key_of_pkcs8(&ext_pkcs8)?)?;
//!
//! // Internal relay: a handler (here an echo; in Custos, the bridge) behind the link.
//! let server = LinkServer::open(dir.path().join("link-dedup.redb"), "dc1", int_keys,
//!     |payload: Vec<u8>| async move { Ok::<_, String>(payload) })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let serving = tokio::spawn(serve_tcp(listener, server));
//!
//! // External relay.
//! let client = LinkClient::new(TcpTransport::new(addr), ext_keys, ClientConfig::new("dc1"));
//! assert_eq!(client.request(b"tee request".to_vec()).await?, b"tee request");
//! # serving.abort();
//! # Ok(())
//! # }
//! ```

mod client;
mod envelope;
mod error;
mod keys;
pub mod qr;
pub mod serial;
mod server;
pub mod spool;
pub mod tcp;

pub use client::{AnswerCheck, ClientConfig, ClientTransport, LinkClient, LinkStats};
pub use envelope::{
    Envelope, EnvelopeKind, Failure, RequestId, ENVELOPE_VERSION, MAX_CLUSTER_NAME, MAX_ENVELOPE,
    MAX_PAYLOAD, MAX_SIGNATURE, SIGNING_DOMAIN,
};
pub use error::{FailureCode, FrameFault, LinkError};
pub use keys::{LinkKeys, PUBLIC_KEY_LEN};
pub use serial::{serve_serial, SerialLine, SerialTransport};
pub use server::{LinkServer, Reply, MAX_CLOCK_AHEAD, MAX_ENVELOPE_AGE, REPLY_RETENTION};
pub use spool::{SpoolDirs, SpoolServer, SpoolTransport};
pub use tcp::{serve_tcp, serve_tcp_limited, TcpTransport, MAX_CONNECTIONS, MAX_FRAME};
