//! The threshold engine's integration tests, one binary (each module was a test binary of its
//! own): dealt shares, signing, presignatures, key generation, the session host and misbehaving
//! peers, each party a separate `Session` fed only serialized bytes. Relaying, dealing from the
//! TEST-ONLY fixture primes and verification without cggmp24 are in [`common`].

mod common;

mod dkg;
mod host;
mod presign;
mod share;
mod sign;
mod tamper;
