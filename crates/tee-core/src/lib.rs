//! Custos TEE core (patent FIG. 3, "TEE core 302"): the only code that ever sees key
//! material.
//!
//! It is a pure request handler, [`TeeCore::handle_bytes`]: bytes in, signed bytes out.
//! Randomness, time and sealed storage come through the [`platform::Platform`] interface, so
//! the same core runs on the software backend (its own process, `custos-tee-host`) and on a
//! real TEE. This crate depends on no networking or async runtime crate.
//!
//! Units, as in the patent: the key management unit ([`wallet`], [`device`], [`threshold`]),
//! the verification unit ([`approval`]), and secure storage (sealed records via the platform).
//!
//! Threshold sessions run on worker threads the core owns ([`custos_threshold::SessionHost`]):
//! the protocol's state machines cannot move between threads, and the core is moved into its
//! host's serving thread. Distributed key generation has a worker of its own (its aux-info
//! steps compute for seconds), and safe primes are generated on another when needed.

pub mod approval;
pub mod device;
pub mod platform;
pub mod sync;
pub mod threshold;
pub mod wallet;

// The core's request handling, by what it does; each file adds methods to `TeeCore`: `open`
// (loading the sealed store), `batch` (group commit and its undo journal), `dispatch` (a
// request to its handler), `provision` (root, device key and certificate), `wallet_requests`
// and `transfer` (key sync between nodes). The approval checks and request-id consumption
// that every handler shares stay here.
mod batch;
mod dispatch;
mod open;
mod provision;
mod transfer;
mod wallet_requests;

pub use open::OpenError;

use std::collections::BTreeMap;

use bitcoin::secp256k1::{All, Secp256k1};
use custos_pki::{DeviceChain, DeviceIdentity, TrustRoot};

use approval::check_quorum;
use batch::Undo;
use custos_pki::AdminCache;
use custos_wire::approval::{Action, Approval};
use custos_wire::protocol::*;
use device::DeviceKey;
use platform::{Platform, PlatformError, RecordId};
use threshold::engine::ThresholdState;
use wallet::Wallet;

const REC_ROOT: &str = "root";
const REC_DEVICE_KEY: &str = "device-key";
const REC_DEVICE_CERT: &str = "device-cert";
const WALLET_PREFIX: &str = "wallet/";
const CONSUMED_PREFIX: &str = "consumed/";

fn rec(name: &str) -> RecordId {
    RecordId::new(name).expect("static record names are valid")
}

fn storage(e: PlatformError) -> TeeError {
    TeeError::Storage(e.to_string())
}

/// The TEE core state machine.
pub struct TeeCore<P: Platform> {
    platform: P,
    secp: Secp256k1<All>,
    root: Option<TrustRoot>,
    device: Option<DeviceKey>,
    identity: Option<(DeviceIdentity, DeviceChain)>,
    wallets: BTreeMap<Vec<u8>, Wallet>,
    corrupt: BTreeMap<String, String>,
    platform_name: String,
    /// Request index within the current batch.
    current: usize,
    /// Verified admin certificate chains.
    admins: AdminCache,
    /// What the current batch changed in memory before its commit, with the request that
    /// did it: undone if the commit fails, so memory never holds what storage lost.
    journal: Vec<(usize, Undo)>,
    /// Requests of the current batch whose writes a failed commit discarded.
    failed: Vec<(usize, PlatformError)>,
    /// Create-wallet request ids already used, with their expiry: an approval creates one
    /// wallet, never more (sealed, so this survives restarts).
    consumed: BTreeMap<[u8; 16], u64>,
    /// Threshold shares, started sessions and the session worker.
    threshold: ThresholdState,
}

impl<P: Platform> TeeCore<P> {
    /// The platform (for the host's own bookkeeping).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Whether this TEE may generate the safe primes of its Paillier key itself, in the
    /// background, when a distributed key generation finds no pregenerated set left (the
    /// default; see [`threshold::primes`]). Off, such a start is refused until the host
    /// provides sets.
    pub fn set_prime_generation(&mut self, allowed: bool) {
        self.threshold.generate_primes = allowed;
    }

    /// D's public key, once generated.
    pub fn device_public_key(&self) -> Option<Vec<u8>> {
        self.device.as_ref().map(|d| d.public_key())
    }

    /// Checks `required` distinct admins approved `action` for this node's cluster.
    fn approve(
        &mut self,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        required: u8,
    ) -> Result<(), TeeError> {
        let cluster = self.cluster()?;
        self.approve_in(&cluster, meta, action, approvals, required)
    }

    /// As [`Self::approve`], for approval messages made with `cluster` as scope (e.g.
    /// [`approval::THRESHOLD_SCOPE`] for actions that span clusters).
    fn approve_in(
        &mut self,
        cluster: &str,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        required: u8,
    ) -> Result<(), TeeError> {
        self.cluster()?;
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no Root CA pinned".into()))?;
        check_quorum(
            &mut self.admins,
            root,
            cluster,
            self.platform.now_unix(),
            meta,
            &action,
            approvals,
            required,
        )?;
        Ok(())
    }

    fn check_quorum_value(quorum: u8) -> Result<(), TeeError> {
        if quorum == 0 || quorum > MAX_QUORUM {
            return Err(TeeError::InvalidRequest(format!(
                "quorum {quorum} outside 1..={MAX_QUORUM}"
            )));
        }
        Ok(())
    }

    /// Marks a request id as used (pending until the batch commits): an approval of a
    /// one-off action works once. Refuses an id already used.
    fn consume_request(&mut self, meta: &RequestMeta) -> Result<(), TeeError> {
        if self.consumed.contains_key(&meta.request_id) {
            return Err(TeeError::RequestReplayed(hex::encode(meta.request_id)));
        }
        let rid = RecordId::new(format!("{CONSUMED_PREFIX}{}", hex::encode(meta.request_id)))
            .map_err(storage)?;
        self.platform
            .seal(&rid, &meta.expires_at.to_be_bytes())
            .map_err(storage)?;
        self.consumed.insert(meta.request_id, meta.expires_at);
        self.journal
            .push((self.current, Undo::Consumed(meta.request_id)));
        Ok(())
    }
}
