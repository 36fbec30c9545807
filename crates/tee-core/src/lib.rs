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
// request to its handler), `provision` (root, device key and certificate), `wallet_requests`,
// `policy_requests` (a wallet's approver group changed) and `transfer` (key sync between
// nodes). The approval checks and request-id consumption
// that every handler shares stay here.
mod admission;
mod batch;
mod dispatch;
mod governance;
mod open;
mod passkey;
mod policy_requests;
mod provision;
mod transaction;
mod transfer;
mod wallet_requests;

pub use open::OpenError;

use std::collections::BTreeMap;

use bitcoin::secp256k1::{All, Secp256k1};
use custos_pki::{DeviceChain, DeviceIdentity, TrustRoot};

use approval::{check_quorum, Who};
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
/// A key's spend-window record (`custos_tx::policy::encode_record`), by key hex.
const VELOCITY_PREFIX: &str = "velocity/";

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
    /// Request ids of one-off actions already used: an approval creates one wallet, never
    /// more (sealed, so this survives restarts).
    consumed: BTreeMap<[u8; 16], Consumed>,
    /// Threshold shares, started sessions and the session worker.
    threshold: ThresholdState,
    /// The cluster's governance log (members, revocations), once adopted.
    gov: Option<governance::Governed>,
    /// The genesis this node was provisioned to accept.
    gov_pin: Option<[u8; 32]>,
    /// Other clusters' logs, for the threshold keys that anchor them.
    foreign: governance::ForeignLogs,
    /// Each key's transactions within its longest spend window (sealed under
    /// [`VELOCITY_PREFIX`]; committed before any signature it counts leaves).
    velocity: BTreeMap<Vec<u8>, Vec<custos_tx::policy::Spent>>,
    /// Each passkey's signature counter, by key fingerprint (sealed under
    /// [`passkey::PASSKEY_PREFIX`]; committed before any answer it let through).
    passkeys: BTreeMap<[u8; 32], passkey::CounterRecord>,
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

    /// Whether this TEE accepts the committed TEST-ONLY primes (sets, dealt shares, other
    /// parties' moduli). Only a build with the cargo feature `insecure-test-primes` can;
    /// there they are accepted unless this says otherwise (the TEE process asks its host's
    /// `CUSTOS_TEE_INSECURE_TEST_PRIMES`).
    pub fn set_test_primes(&mut self, allow: bool) {
        self.threshold.test_primes = threshold::primes::test_primes_policy(allow);
    }

    /// TEST ONLY (feature `insecure-test-primes`): this TEE's background prime generation
    /// hands out `sets`, in order, instead of generating (minutes each).
    #[cfg(feature = "insecure-test-primes")]
    pub fn script_prime_generation(&mut self, sets: Vec<custos_threshold::Primes>) {
        self.threshold.primes.script(sets);
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
        self.approve_by(meta, action, approvals, Who::AnyAdmin { quorum: required })
    }

    /// Checks that `who` approved `action` for this node's cluster.
    fn approve_by(
        &mut self,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        who: Who,
    ) -> Result<(), TeeError> {
        let cluster = self.cluster()?;
        self.approve_in_by(&cluster, meta, action, approvals, who)
    }

    /// As [`Self::approve_by`], for approval messages made with `cluster` as scope (e.g.
    /// [`approval::THRESHOLD_SCOPE`] for actions that span clusters).
    fn approve_in_by(
        &mut self,
        cluster: &str,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        who: Who,
    ) -> Result<(), TeeError> {
        self.cluster()?;
        // Once governed, "any admin" means any of the cluster's governors: a certificate the
        // Admin CA issued is never enough on its own (threshold keys, legacy requests).
        let who = match (who, &self.gov) {
            (Who::AnyAdmin { quorum }, Some(g)) => Who::Group {
                group: g.state.governors.clone(),
                quorum,
            },
            (who, _) => who,
        };
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no Root CA pinned".into()))?;
        // The cluster's revocation list (empty until governed) applies to every approval.
        let revoked = |fp: &[u8; 32]| {
            self.gov
                .as_ref()
                .is_some_and(|g| g.state.revoked_admins.contains_key(fp))
        };
        let passkeys = check_quorum(
            &mut self.admins,
            root,
            cluster,
            self.platform.now_unix(),
            meta,
            &action,
            approvals,
            &who.approvers(),
            &revoked,
        )?;
        self.keep_passkey_counters(&passkeys)
    }

    /// Whose approvals count for a wallet: its own group when it has one; a wallet sealed
    /// before groups existed is approved by `quorum` admins, which [`Self::approve_in_by`]
    /// narrows to the cluster's governors once the cluster is governed (a group fixed by a
    /// quorum-approved log, never "any certificate the Admin CA issued").
    fn approvers_for(wallet: &Wallet) -> Who {
        Who::of(wallet.policy.as_ref(), wallet.info.quorum)
    }

    /// Whose approvals count for a threshold key: as [`Self::approvers_for`] a wallet, by its
    /// own group when it was created with one.
    fn approvers_for_share(key: &threshold::HeldKey) -> Who {
        Who::of(key.policy.as_ref(), key.info.quorum)
    }

    /// Refuses a raw digest (or an opaque message) for a key whose policy signs transactions
    /// only ([`custos_wire::policy::RULE_TRANSACTIONS_ONLY`]).
    fn raw_signing(
        policy: Option<&custos_wire::policy::KeyPolicy>,
        key_id: &[u8],
    ) -> Result<(), TeeError> {
        match policy {
            Some(p) if !p.raw_digest_allowed() => Err(TeeError::RawSigningOff {
                key: hex::encode(key_id),
            }),
            _ => Ok(()),
        }
    }

    fn check_quorum_value(quorum: u8) -> Result<(), TeeError> {
        if quorum == 0 || quorum > MAX_QUORUM {
            return Err(TeeError::InvalidRequest(format!(
                "quorum {quorum} outside 1..={MAX_QUORUM}"
            )));
        }
        Ok(())
    }

    /// Marks a request id as used (pending until the batch commits), with the key it made
    /// if any: an approval of a one-off action works once. Refuses an id already used.
    fn consume_request(&mut self, meta: &RequestMeta, made: Option<&[u8]>) -> Result<(), TeeError> {
        if self.consumed.contains_key(&meta.request_id) {
            return Err(TeeError::RequestReplayed(hex::encode(meta.request_id)));
        }
        let consumed = Consumed {
            expires_at: meta.expires_at,
            made: made.map(<[u8]>::to_vec),
        };
        let rid = RecordId::new(format!("{CONSUMED_PREFIX}{}", hex::encode(meta.request_id)))
            .map_err(storage)?;
        self.platform
            .seal(&rid, &consumed.to_record())
            .map_err(storage)?;
        self.consumed.insert(meta.request_id, consumed);
        self.journal
            .push((self.current, Undo::Consumed(meta.request_id)));
        Ok(())
    }

    /// Whether `request_id` was consumed in the current batch (not durable before its commit).
    fn consumed_pending(&self, request_id: &[u8; 16]) -> bool {
        self.journal
            .iter()
            .any(|(_, u)| matches!(u, Undo::Consumed(rid) if rid == request_id))
    }

    /// The key an approved request made the first time its id was used, so that its repeat
    /// (the first answer was lost on the way back, the caller asks again with the same id)
    /// answers that key instead of making a second one. `None`: the id is unused. Refused
    /// when the first execution is not durable yet (made in this batch: no answer may vouch
    /// for a key before its commit), when the repeat was approved until another time (another
    /// request under the same id), or when the first made no key. The caller still checks
    /// that the key is what the repeat asks for.
    fn first_made(&self, meta: &RequestMeta) -> Result<Option<Vec<u8>>, TeeError> {
        let Some(first) = self.consumed.get(&meta.request_id) else {
            return Ok(None);
        };
        if self.consumed_pending(&meta.request_id) {
            return Err(replayed(meta, "its first execution is not durable yet"));
        }
        if first.expires_at != meta.expires_at {
            return Err(replayed(
                meta,
                format!(
                    "first approved until {}, this repeat until {}",
                    first.expires_at, meta.expires_at
                ),
            ));
        }
        first
            .made
            .clone()
            .map(Some)
            .ok_or_else(|| TeeError::RequestReplayed(hex::encode(meta.request_id)))
    }
}

/// [`TeeError::RequestReplayed`] naming the request id and why its repeat does not get the
/// first outcome (its terms differ from the first's, or that outcome is not durable yet).
fn replayed(meta: &RequestMeta, why: impl std::fmt::Display) -> TeeError {
    TeeError::RequestReplayed(format!("{} ({why})", hex::encode(meta.request_id)))
}

/// A used request id (sealed as `consumed/<id>`): until when its approvals are live, and the
/// key its action made, so that the same request arriving again (its answer was lost on the
/// way back) gets that first outcome instead of a second key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Consumed {
    /// Unix seconds; the record is forgotten after this (the approvals are void).
    pub(crate) expires_at: u64,
    /// Key id of the wallet the request created.
    pub(crate) made: Option<Vec<u8>>,
}

impl Consumed {
    /// Longest key id kept (a compressed secp256k1 key is 33 bytes).
    const MAX_MADE: usize = 64;

    /// `expires_at` (8 bytes, big-endian) followed by the key id made, if any. A record
    /// written before outcomes were kept is the expiry alone, read as "no key made".
    fn to_record(&self) -> Vec<u8> {
        let mut body = self.expires_at.to_be_bytes().to_vec();
        if let Some(k) = &self.made {
            body.extend_from_slice(k);
        }
        body
    }

    fn from_record(body: &[u8]) -> Result<Self, String> {
        if body.len() < 8 || body.len() > 8 + Self::MAX_MADE {
            return Err(format!("consumed record of {} bytes", body.len()));
        }
        let (exp, made) = body.split_at(8);
        Ok(Consumed {
            expires_at: u64::from_be_bytes(exp.try_into().expect("8 bytes")),
            made: (!made.is_empty()).then(|| made.to_vec()),
        })
    }
}

#[cfg(test)]
mod consumed_tests {
    use super::Consumed;

    #[test]
    fn consumed_records_round_trip_and_old_ones_read_as_nothing_made() {
        let made = Consumed {
            expires_at: 1_900_000_000,
            made: Some(vec![2; 33]),
        };
        assert_eq!(Consumed::from_record(&made.to_record()).unwrap(), made);
        let old = 1_900_000_000u64.to_be_bytes();
        assert_eq!(
            Consumed::from_record(&old).unwrap(),
            Consumed {
                expires_at: 1_900_000_000,
                made: None
            }
        );
        assert!(Consumed::from_record(&[0; 7]).is_err());
        assert!(Consumed::from_record(&[0; 8 + 65]).is_err());
    }
}
