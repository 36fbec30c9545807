//! The cloud server's REST contract, shared by the server (`custos-cloud`) and every client
//! (one definition, so the two cannot disagree):
//!
//! * the request and response types with their OpenAPI schemas (re-exported at the root);
//! * [`ErrorCode`]: every error code the API answers with;
//! * [`Scope`]: what an API token may do, one scope per route;
//! * [`approval`]: the exact bytes an admin signs, recomputed from a request's view with the
//!   TEE's own encoder (an approver never trusts the server's bytes), and the parsers of the
//!   ids the API writes in hex;
//! * [`path`]: BIP-32 paths as the API writes them and public derivation from an xpub;
//! * [`governance`]: governance log entries between their wire form and the API's views;
//! * [`key_policy`]: a wallet's approver group change between its wire form and the views;
//! * [`transaction`]: a transaction's intent as a request shows it, checked against the
//!   hash approvals sign;
//! * [`review`]: what an approver checks and reads before signing;
//! * [`rules`]: a key's transaction rules between the API and the policy;
//! * [`client`]: a typed client of every route;
//! * [`webhook`]: the events the server notifies, and how a receiver verifies them.

pub mod admission;
pub mod approval;
pub mod client;
mod errors;
pub mod governance;
pub mod key_policy;
pub mod measurement;
pub mod path;
pub mod review;
pub mod rules;
pub mod scope;
pub mod transaction;
mod types;
pub mod webhook;

pub use client::{ClientError, CloudClient};
pub use errors::{ErrorCode, REQUEST_ERROR_CODES};
pub use scope::Scope;
pub use types::*;
