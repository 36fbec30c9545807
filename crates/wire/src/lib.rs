//! The wire contract between the parts of Custos and the TEE core (patent FIG. 3: what crosses
//! the boundary of TEE core 302).
//!
//! Every component that talks to a TEE core — the vault node server, the bridge, the cloud
//! server, the tooling — speaks through this crate, so none of them links the TEE core or the
//! threshold protocol's state machines:
//!
//! * [`protocol`]: the requests and responses (`postcard`, versioned by
//!   [`protocol::PROTOCOL_VERSION`], pinned by golden vectors), the signed-response transcript,
//!   the audit digest, [`protocol::TeeError`] with its stable codes, and which requests may be
//!   relayed from outside the node ([`protocol::Request::relay_class`]);
//! * [`approval`]: what an admin approval is and the exact bytes it signs;
//! * [`import`], [`threshold`] and [`primes`]: client-side sealing of wallet imports, dealer
//!   bundles and pregenerated Paillier primes sets;
//! * [`seal`]: the one HPKE suite every sealed transfer uses;
//! * [`frame`] and [`client`]: the frame protocol on the TEE core's local socket and the thin
//!   client the vault node server uses, which checks every response's device-key signature;
//! * [`governance`]: the cluster governance log (members, governors, revocations) and its
//!   one verifier;
//! * [`policy`]: per-key approver groups and their canonical encoding;
//! * [`field`]: the length-prefixed field of every transcript and context.

pub mod approval;
pub mod client;
pub mod field;
pub mod frame;
pub mod governance;
pub mod import;
pub mod policy;
pub mod primes;
pub mod protocol;
pub mod seal;
pub mod threshold;

#[cfg(test)]
mod test_pki;
