//! Custos cloud server (patent FIG. 1): the REST API on the Internet side.
//!
//! API clients create wallets and signing requests; admins approve them with signatures
//! over the exact request (checked here early, and by the TEE in the end); at quorum the
//! request goes through the cluster's external relay, the link and the bridge to a vault
//! node's TEE core, and the answer comes back signed by that node's device key D, which is
//! verified here against the node's certificate chain before anything is acted on.
//! Threshold keys span clusters: the server picks t of them and relays the signing
//! protocol's messages between their TEEs (patent FIG. 12–15), which it cannot read.
//!
//! * [`config`]: the TOML configuration, API token generation;
//! * [`terms`]: what each kind of request asks for, typed (one variant per kind);
//! * [`db`]: wallets, requests and their lifecycle events (SQLite or PostgreSQL);
//! * [`gateway`]: the way to a cluster (gRPC to its external relay, or a test double);
//! * [`cluster`]: retries and verification of cluster answers;
//! * [`service`]: the request lifecycle, threshold keys and the signing sessions run
//!   across clusters (the cloud server relays their protocol messages);
//! * [`access`]: API tokens: their tenant, scopes (one per route, from the OpenAPI
//!   document) and rate limits;
//! * [`http`]: REST routes and the generated OpenAPI document;
//! * [`server`]: [`run`] and TLS serving;
//! * [`console`]: the approvers' console (passkey sign-in, pending requests as intents,
//!   approvals made with passkeys), when configured;
//! * [`approval`]: approvals as received, decoded before they are checked.
//!
//! The REST contract (request and response types, the typed client, the approval message
//! recomputed from a view) is the crate `custos-cloud-api`, shared with every client.
#![warn(missing_docs)]

pub mod access;
pub mod approval;
pub mod cluster;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod replica;
pub mod server;
pub mod service;
pub mod terms;
pub mod webhooks;

use std::sync::Arc;

pub use config::{generate_api_token, token_hash, CloudConfig};
pub use server::{run, run_with, serve, RunError};
pub use service::Cloud;

/// Source of the current time, Unix milliseconds (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;
