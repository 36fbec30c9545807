//! The link's integration tests: one binary.

mod channel_attacks;
mod hardening;
mod link;
mod qr;
mod serial;
