//! TEST-ONLY set-up shared by the tests of every crate, so that each piece exists once:
//!
//! * [`platform`]: sealed storage in memory that stages writes until commit;
//! * [`pki`]: a real PKI in a temporary directory and TEE cores provisioned into it;
//! * [`governance`]: a cluster's governance log with real approvals by the test admins;
//! * [`passkey`]: a software WebAuthn authenticator and admins whose key is a passkey;
//! * [`db`]: SQLite and PostgreSQL databases of their own per test;
//! * [`gateway`]: relay + link + bridge of several clusters faked in process, in front of
//!   real or scripted TEEs;
//! * [`server`]: the cloud server on 127.0.0.1 with a typed client;
//! * [`swtpm`]: a software TPM 2.0 of the test's own on loopback ports.
//!
//! Only ever a dev-dependency.

#![allow(missing_docs)]

pub mod db;
pub mod gateway;
pub mod governance;
pub mod passkey;
pub mod pki;
pub mod platform;
pub mod server;
pub mod swtpm;

pub use db::{databases, Ctx, TestDb, DEFAULT_PG_URL};
pub use gateway::{
    call_core, Call, FakeCluster, FakeGateway, FakeNode, Impostor, Script, ScriptedTee,
};
pub use pki::{Pki, ADMINS};
pub use platform::{now, MemPlatform};
pub use server::{code, message_of, tls_files, TestServer};
