//! What the TEE signs (issue 14): transactions parsed and hashed by the TEE itself, never
//! opaque digests, and the canonical **intent** built from them — the facts an approver must
//! see (for Bitcoin: each input's value, each output's address and amount, which outputs
//! return to the wallet, the fee). Approvals sign the intent's hash ([`Intent::hash`]); the
//! TEE computes the intent again from the transaction it is asked to sign and refuses
//! approvals made for another.
//!
//! The same code runs in the TEE core (which signs), in the cloud server (which shows the
//! intent) and in the approvers' tools (which compute it themselves before they approve), so
//! all three agree byte for byte. Parsing is the `bitcoin` crate's; this crate adds the
//! checks a custody signer needs (every input the wallet's own, its value proven, only
//! `SIGHASH_ALL`, change recognised by derivation) and nothing keeps a secret: the caller
//! derives keys and hands each [`btc::SignJob`] its key.

pub mod btc;
mod error;
pub mod eth;
pub mod intent;
pub mod policy;
pub mod synthetic;

pub use error::TxError;
pub use intent::{BitcoinInput, BitcoinIntent, BitcoinOutput, InputKind, Intent};
