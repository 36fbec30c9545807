//! The cloud server's integration tests, one binary (each module was a test binary of its
//! own): set-up comes from `custos-test-kit`.

mod access;
mod api;
mod dkg;
mod foreign_logs;
mod governance;
mod groups;
mod key_policy;
mod openapi;
mod passkeys;
mod rejection;
mod replicas;
mod scripted;
mod service;
mod store;
mod threshold;
mod threshold_policy;
mod webhooks;
