//! The link's integration tests: one binary.

mod hardening;
mod link;
mod qr;
mod serial;
