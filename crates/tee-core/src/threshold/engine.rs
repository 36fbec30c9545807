//! The TEE core's threshold requests: bundle import, key list, and the sessions' shared
//! state, signer checks and lifecycle. Signing sessions open in `super::sign`; every session's
//! messages are wrapped, checked and fed in `super::messages` (distributed key generation
//! sessions: `super::dkg`, over the same envelopes).
//!
//! Sessions run on the core's [`SessionHost`] worker threads (the protocol state machines
//! are `!Send`); the core keeps, per [`SessionRef`], everything needed to check and produce
//! envelopes: the execution id, the participants' verified device identities, this node's
//! position, a deadline, and what the session works on (for signing, the expected child key
//! and digest).
//!
//! Nothing of a running session is persisted but the fact that it was started (sealed
//! record `tsession/<request id>-<attempt>`, committed before the first message leaves), so a
//! replayed start is refused even after a restart; a session lost in a crash is retried by
//! the cloud server under the next attempt number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use custos_pki::{validity_window, DeviceChain, DeviceIdentity};
use custos_threshold::{Phase, SessionError, SessionHost, TestPrimes};
use sha2::{Digest, Sha256};

use super::bundle::open_bundle;
use super::dkg::Dkg;
use super::presign::HeldPresignature;
use super::primes::{primes_refused, PrimePool};
use super::{check_key_info, check_share, HeldKey, SESSION_PREFIX, SHARE_PREFIX};
use crate::platform::{Platform, PlatformError, RecordId};
use crate::wallet::key_hex;
use crate::{replayed, storage, TeeCore};
use custos_wire::approval::{Action, Approval};
use custos_wire::protocol::*;
use custos_wire::threshold::{bundle_context, bundle_transcript};

/// Longest a session may run (the approvals' expiry may cut it shorter).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(600);
/// Most sessions open at once in one TEE.
pub const MAX_LIVE_SESSIONS: usize = custos_threshold::DEFAULT_MAX_SESSIONS;
/// Verified signer chains kept (emptied when full).
const SIGNER_CACHE_CAPACITY: usize = 1024;

/// A signer chain that verified, with the window its certificates are valid in.
struct CachedDevice {
    identity: DeviceIdentity,
    not_before: u64,
    not_after: u64,
}

/// One participant of a live session (index = its position).
pub(super) struct Signer {
    pub(super) share_index: u16,
    pub(super) identity: DeviceIdentity,
}

/// What the core keeps about a running session.
pub(super) struct Live {
    /// The execution id the session's envelopes are signed and sealed under.
    pub(super) eid: [u8; 32],
    pub(super) my_position: u16,
    pub(super) signers: Vec<Signer>,
    pub(super) phase: Phase,
    pub(super) deadline: Instant,
    pub(super) work: Work,
}

/// What a live session works on.
pub(super) enum Work {
    /// Signing, on the signing host.
    Sign {
        /// Session id in the host (the execution id).
        host_id: [u8; 32],
        /// The child public key the signature must verify under.
        child_key: [u8; 33],
        digest: [u8; 32],
    },
    /// Distributed key generation, on the key generation host.
    Keygen(Box<Dkg>),
    /// Presignature generation, on the signing host.
    Presign {
        /// Session id in the host (the execution id, also the presignature's id).
        host_id: [u8; 32],
        /// The key (without chain code).
        key_id: Vec<u8>,
    },
}

/// The core's threshold state.
pub(crate) struct ThresholdState {
    /// Shares held, by key id.
    pub(crate) keys: BTreeMap<Vec<u8>, HeldKey>,
    /// Sessions already started, with the expiry of their approvals.
    pub(crate) used_sessions: BTreeMap<SessionRef, u64>,
    pub(super) host: SessionHost,
    /// Key generation sessions, on a worker thread of their own (started at first use): their
    /// aux-info steps compute for seconds, which must delay neither signing sessions nor the
    /// core's request loop.
    pub(super) dkg_host: Option<SessionHost>,
    /// The last answer's messages of recently finished key generations, so that a repeat
    /// of that answer (it was lost on the way back) carries them again (`super::dkg`).
    pub(super) finished_keygens: VecDeque<(SessionRef, Vec<ThresholdMessage>)>,
    pub(super) live: HashMap<SessionRef, Live>,
    signer_cache: HashMap<[u8; 32], CachedDevice>,
    /// Safe primes generated inside the TEE.
    pub(crate) primes: PrimePool,
    /// Presignatures held, by id (each used once, see `super::presign`).
    pub(crate) presigs: BTreeMap<[u8; 32], HeldPresignature>,
    /// Whether this TEE may generate primes itself when no pregenerated set is left.
    pub(crate) generate_primes: bool,
    /// Whether the committed TEST-ONLY primes are accepted (see
    /// [`super::primes::test_primes_policy`]).
    pub(crate) test_primes: TestPrimes,
}

impl ThresholdState {
    /// Starts the session worker thread.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(ThresholdState {
            keys: BTreeMap::new(),
            used_sessions: BTreeMap::new(),
            host: SessionHost::new(MAX_LIVE_SESSIONS)?,
            dkg_host: None,
            finished_keygens: VecDeque::new(),
            live: HashMap::new(),
            signer_cache: HashMap::new(),
            primes: PrimePool::default(),
            presigs: BTreeMap::new(),
            generate_primes: true,
            // A test build accepts them unless told otherwise; a production build never.
            test_primes: super::primes::test_primes_policy(true),
        })
    }
}

/// `<request id hex>/<attempt>`, as sessions are named in errors and logs.
pub(crate) fn session_name(s: &SessionRef) -> String {
    format!("{}/{}", hex::encode(s.request_id), s.attempt)
}

/// Record name of a started session.
pub(crate) fn session_record(s: &SessionRef) -> Result<RecordId, PlatformError> {
    RecordId::new(format!(
        "{SESSION_PREFIX}{}-{}",
        hex::encode(s.request_id),
        s.attempt
    ))
}

/// Parses [`session_record`] names back.
pub(crate) fn parse_session_record(name: &str) -> Option<SessionRef> {
    let rest = name.strip_prefix(SESSION_PREFIX)?;
    let (id, attempt) = rest.split_once('-')?;
    let request_id = <[u8; 16]>::try_from(hex::decode(id).ok()?).ok()?;
    Some(SessionRef {
        request_id,
        attempt: attempt.parse().ok()?,
    })
}

/// Why a received message ends the session.
pub(super) enum Fault {
    /// The sender (a position) is at fault.
    Blame(u16, String),
    /// The engine refused or failed.
    Session(SessionError),
}

/// A threshold key's facts as named in refusals.
pub(super) fn key_facts(k: &ThresholdKeyInfo) -> String {
    format!(
        "share {} of {:?} key {} ({}-of-{} over {:?}, HD: {}, quorum {})",
        k.share_index,
        k.origin,
        key_hex(&k.key_id),
        k.threshold,
        k.clusters.len(),
        k.clusters,
        k.chain_code.is_some(),
        k.quorum
    )
}

pub(super) fn reject(m: impl Into<String>) -> TeeError {
    TeeError::ThresholdRejected(m.into())
}

/// A participant's refusal with the participant named: a certificate refusal gains the
/// context, a typed refusal (not a member, revoked, log missing) keeps its kind.
pub(super) fn in_context(e: TeeError, who: String) -> TeeError {
    match e {
        TeeError::ThresholdRejected(m) => reject(format!("{who}: {m}")),
        typed => typed,
    }
}

impl<P: Platform> TeeCore<P> {
    /// A held share, or why there is none.
    pub(crate) fn threshold_key(&self, key_id: &[u8]) -> Result<&HeldKey, TeeError> {
        if let Some(k) = self.threshold.keys.get(key_id) {
            return Ok(k);
        }
        let hex = key_hex(key_id);
        match self.corrupt.get(&format!("{SHARE_PREFIX}{hex}")) {
            Some(reason) => Err(TeeError::KeyRecordCorrupt {
                key: hex,
                reason: reason.clone(),
            }),
            None => Err(TeeError::UnknownKey(hex)),
        }
    }

    pub(crate) fn list_threshold_keys(&self) -> Outcome {
        Ok(Response::ThresholdKeys(
            self.threshold
                .keys
                .values()
                .map(|k| k.info.clone())
                .collect(),
        ))
    }

    /// Seals a share (pending until the batch commits) and holds it.
    pub(crate) fn store_threshold_key(
        &mut self,
        held: HeldKey,
    ) -> Result<ThresholdKeyInfo, TeeError> {
        let hex = key_hex(&held.info.key_id);
        if self.threshold.keys.contains_key(&held.info.key_id)
            || self.wallets.contains_key(&held.info.key_id)
        {
            return Err(TeeError::KeyExists(hex));
        }
        let id = RecordId::new(format!("{SHARE_PREFIX}{hex}")).map_err(storage)?;
        self.platform
            .seal(&id, &held.to_record())
            .map_err(storage)?;
        let info = held.info.clone();
        self.journal
            .push((self.current, crate::Undo::Share(info.key_id.clone())));
        self.threshold.keys.insert(info.key_id.clone(), held);
        Ok(info)
    }

    /// [`Request::ImportThresholdBundle`]: checks in order the key facts, that the share is
    /// this node's cluster's and the bundle addressed to this node's certificate, the dealer's
    /// certificate (dealer role under the pinned Root) and signature, the admin approvals,
    /// that the request id is unused (a repeat answers its first import, see
    /// `first_bundle`) and the key new; only then opens the share, checks it against the
    /// signed facts, and stores it, consuming the request id with the key it made.
    pub(crate) fn import_threshold_bundle(
        &mut self,
        meta: &RequestMeta,
        bundle: &ThresholdBundle,
        approvals: &[Approval],
    ) -> Outcome {
        let (own, _) = self.identity()?.clone();
        let key = &bundle.key;
        check_key_info(key).map_err(reject)?;
        if key.origin != ThresholdOrigin::Dealer {
            return Err(reject("a dealer bundle must carry a dealt key"));
        }
        let cluster = &key.clusters[usize::from(key.share_index)];
        if *cluster != own.cluster {
            return Err(reject(format!(
                "share {} belongs to cluster {cluster:?}, this node is in {:?}",
                key.share_index, own.cluster
            )));
        }
        if bundle.recipient_fingerprint != own.fingerprint {
            return Err(reject("the bundle is sealed to another node"));
        }
        let now = self.platform.now_unix();
        let dealer = self
            .root()?
            .verify_dealer(&bundle.dealer_cert, &bundle.dealer_ca, now)
            .map_err(|e| reject(format!("dealer certificate: {e}")))?;
        let context = bundle_context(cluster, &own.fingerprint, key);
        dealer
            .verify_signature(
                &bundle_transcript(&context, &bundle.enc, &bundle.ciphertext),
                &bundle.signature,
            )
            .map_err(|e| reject(format!("dealer signature: {e}")))?;
        self.approve(
            meta,
            Action::ImportThresholdKey {
                quorum: key.quorum,
                key_id: &key.key_id,
                share_index: key.share_index,
            },
            approvals,
            key.quorum,
        )?;
        if let Some(made) = self.first_made(meta)? {
            return self.first_bundle(meta, &made, key);
        }
        if self.threshold.keys.contains_key(&key.key_id) || self.wallets.contains_key(&key.key_id) {
            return Err(TeeError::KeyExists(key_hex(&key.key_id)));
        }
        let d = self.device.as_ref().expect("identity implies a device key");
        let share = open_bundle(&d.private_scalar()?[..], &context, bundle)?;
        check_share(key, &share).map_err(|e| reject(format!("bundle share: {e}")))?;
        // The dealer knew these primes anyway; what is refused is a key whose Paillier
        // secrets others know too (the published fixture) or share (a repeated modulus).
        share
            .check_paillier(self.threshold.test_primes)
            .map_err(primes_refused)?;
        self.consume_request(meta, Some(&key.key_id))?;
        let info = self.store_threshold_key(HeldKey {
            info: key.clone(),
            share,
            policy: None,
        })?;
        Ok(Response::ThresholdKey(info))
    }

    /// The answer to an approved bundle import whose id was used already: the share it
    /// imported, never opened again. The repeat must carry the same signed key facts (key,
    /// share index, clusters, quorum); its ciphertext is not compared, since the approvals
    /// and the dealer's signature cover those facts and the share they name is held.
    fn first_bundle(&self, meta: &RequestMeta, made: &[u8], key: &ThresholdKeyInfo) -> Outcome {
        if self.wallets.contains_key(made) {
            return Err(replayed(meta, format!("it made wallet {}", key_hex(made))));
        }
        let held = &self.threshold_key(made)?.info;
        if held != key {
            return Err(replayed(
                meta,
                format!(
                    "it imported {}, this repeat carries {}",
                    key_facts(held),
                    key_facts(key)
                ),
            ));
        }
        Ok(Response::ThresholdKey(held.clone()))
    }

    /// Verifies a signer's chain as a vault device of `cluster` (cached by chain digest,
    /// validity re-checked on every use) and, once governed, as a current member: of this
    /// cluster's log, or of the log `anchor` names for another cluster. A chain that does not
    /// verify is `ThresholdRejected` (the caller says which signer); a device that is no
    /// member keeps its own typed refusal.
    pub(super) fn verify_signer(
        &mut self,
        chain: &CertChain,
        cluster: &str,
        anchor: Option<&[u8; 32]>,
        now: u64,
    ) -> Result<DeviceIdentity, TeeError> {
        let mut h = Sha256::new();
        for part in [&chain.device, &chain.cluster_ca, &chain.device_ca] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();
        if let Some(c) = self.threshold.signer_cache.get(&digest) {
            if c.identity.cluster == cluster && c.not_before <= now && now <= c.not_after {
                let identity = c.identity.clone();
                return self.member_signer(identity, anchor);
            }
        }
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| reject("no Root CA pinned"))?;
        let identity = root
            .verify_device(&DeviceChain::from(chain.clone()), Some(cluster), now)
            .map_err(|e| reject(e.to_string()))?;
        let (not_before, not_after) =
            validity_window(&[&chain.device, &chain.cluster_ca, &chain.device_ca])
                .map_err(|e| reject(e.to_string()))?;
        if self.threshold.signer_cache.len() >= SIGNER_CACHE_CAPACITY {
            self.threshold.signer_cache.clear();
        }
        self.threshold.signer_cache.insert(
            digest,
            CachedDevice {
                identity: identity.clone(),
                not_before,
                not_after,
            },
        );
        self.member_signer(identity, anchor)
    }

    /// A participant of this node's own cluster must be a current member of its governed
    /// log; one of another cluster, of the log the key anchors that cluster at (plan step
    /// D5). Checked on every use, cached certificate or not, so a removal or a revocation
    /// takes effect at once (also when a presignature made with the device is used, see
    /// `super::presign`). A key without anchors keeps the certificate rule for other clusters
    /// (legacy and dealt keys).
    pub(super) fn member_signer(
        &self,
        identity: DeviceIdentity,
        anchor: Option<&[u8; 32]>,
    ) -> Result<DeviceIdentity, TeeError> {
        if self.cluster().ok().as_deref() == Some(identity.cluster.as_str()) {
            self.check_member(&identity)?;
        } else if let Some(anchor) = anchor {
            self.check_foreign_member(&identity, anchor)?;
        }
        Ok(identity)
    }

    /// The genesis each share's cluster is anchored at by `key_id`'s policy, if it has one.
    pub(super) fn key_anchors(&self, key_id: &[u8]) -> Option<Vec<[u8; 32]>> {
        self.threshold
            .keys
            .get(key_id)?
            .policy
            .as_ref()?
            .cluster_anchors()
    }

    /// The anchors [`Self::member_signer`] checks the participants of `info`'s key against,
    /// one per share. Fails closed on a record whose anchors do not name every share's
    /// cluster: a missing anchor would quietly mean "certificate only" for that cluster.
    pub(super) fn signer_anchors(
        &self,
        info: &ThresholdKeyInfo,
    ) -> Result<Option<Vec<[u8; 32]>>, TeeError> {
        let anchors = self.key_anchors(&info.key_id);
        let n = info.clusters.len();
        if let Some(a) = &anchors {
            if a.len() != n {
                return Err(TeeError::PolicyRejected(format!(
                    "key {}: {} cluster anchors for {n} clusters",
                    key_hex(&info.key_id),
                    a.len()
                )));
            }
        }
        Ok(anchors)
    }

    /// Drops sessions past their deadline (the hosts drop their side themselves).
    pub(super) fn purge_expired_sessions(&mut self) {
        let now = Instant::now();
        let expired: Vec<SessionRef> = self
            .threshold
            .live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            if let Some(live) = self.threshold.live.remove(&s) {
                self.release(live);
            }
        }
    }

    /// Ends what a session holds in its host; a key generation also returns a primes set
    /// that aux-info generation has not used yet.
    pub(super) fn release(&mut self, live: Live) {
        match live.work {
            Work::Sign { host_id, .. } | Work::Presign { host_id, .. } => {
                let _ = self.threshold.host.abort(host_id);
            }
            Work::Keygen(dkg) => self.release_dkg(*dkg),
        }
    }

    /// Checks a session's signer list against the key (exactly t distinct shares, this
    /// node's share among them under this node's own certificate) and verifies every
    /// signer's chain as a device of the cluster holding its share. Returns this node's
    /// position and the signers.
    pub(super) fn session_signers(
        &mut self,
        info: &ThresholdKeyInfo,
        signer_list: &[ThresholdSigner],
        now: u64,
    ) -> Result<(usize, Vec<Signer>), TeeError> {
        let (_, own_chain) = self.identity()?.clone();
        let n = info.clusters.len();
        if signer_list.len() != usize::from(info.threshold) {
            return Err(reject(format!(
                "{} signers, the key needs exactly {}",
                signer_list.len(),
                info.threshold
            )));
        }
        for (pos, s) in signer_list.iter().enumerate() {
            if usize::from(s.share_index) >= n {
                return Err(reject(format!(
                    "signer {pos}: share index {} outside 0..{n}",
                    s.share_index
                )));
            }
            if signer_list[..pos]
                .iter()
                .any(|o| o.share_index == s.share_index)
            {
                return Err(reject(format!("share {} signs twice", s.share_index)));
            }
        }
        let my_position = signer_list
            .iter()
            .position(|s| s.share_index == info.share_index)
            .ok_or_else(|| {
                reject(format!(
                    "this node's share {} is not among the signers",
                    info.share_index
                ))
            })?;
        if DeviceChain::from(signer_list[my_position].chain.clone()) != own_chain {
            return Err(reject(format!(
                "signer {my_position} (this node's share) names another node's certificate"
            )));
        }
        let anchors = self.signer_anchors(info)?;
        let mut signers = Vec::with_capacity(signer_list.len());
        for (pos, s) in signer_list.iter().enumerate() {
            let index = usize::from(s.share_index);
            let cluster = info.clusters[index].clone();
            let anchor = anchors.as_ref().and_then(|a| a.get(index));
            let identity = self
                .verify_signer(&s.chain, &cluster, anchor, now)
                .map_err(|e| {
                    in_context(
                        e,
                        format!("signer {pos} (share {}, cluster {cluster})", s.share_index),
                    )
                })?;
            signers.push(Signer {
                share_index: s.share_index,
                identity,
            });
        }
        Ok((my_position, signers))
    }

    /// Records a session as started, durably, before anything of it exists: a replay is
    /// refused even after a crash. The commit also makes this batch's earlier writes
    /// durable (group commit).
    pub(super) fn record_session_start(
        &mut self,
        session: &SessionRef,
        expires_at: u64,
    ) -> Result<(), TeeError> {
        let record = session_record(session).map_err(storage)?;
        self.platform
            .seal(&record, &expires_at.to_be_bytes())
            .map_err(storage)?;
        self.threshold.used_sessions.insert(*session, expires_at);
        if let Err(e) = self.commit_pending() {
            self.threshold.used_sessions.remove(session);
            return Err(storage(e));
        }
        Ok(())
    }

    /// Ends a live session because of `fault` and names the clusters at fault.
    pub(super) fn abort_for(&mut self, session: &SessionRef, live: Live, fault: Fault) -> TeeError {
        let (blamed, phase, detail) = match fault {
            Fault::Blame(p, d) => (vec![p], live.phase, d),
            Fault::Session(SessionError::BadMessage { from, reason }) => {
                (vec![from], live.phase, reason)
            }
            Fault::Session(SessionError::Aborted {
                blamed,
                phase,
                detail,
            }) => (blamed, phase, detail),
            Fault::Session(
                SessionError::Expired
                | SessionError::UnknownSession
                | SessionError::Finished
                | SessionError::AlreadyAborted,
            ) => {
                self.release(live);
                return TeeError::UnknownSession(session_name(session));
            }
            Fault::Session(e) => (vec![], live.phase, e.to_string()),
        };
        self.abort_live(session, live, &blamed, phase, detail)
    }

    /// Ends a live session and names the clusters at fault.
    pub(super) fn abort_live(
        &mut self,
        session: &SessionRef,
        live: Live,
        blamed: &[u16],
        phase: Phase,
        detail: String,
    ) -> TeeError {
        let mut clusters: Vec<String> = Vec::new();
        for &p in blamed {
            if let Some(s) = live.signers.get(usize::from(p)) {
                if !clusters.contains(&s.identity.cluster) {
                    clusters.push(s.identity.cluster.clone());
                }
            }
        }
        self.release(live);
        TeeError::ThresholdAborted {
            session: session_name(session),
            blamed: clusters,
            phase: phase.as_str().into(),
            detail,
        }
    }

    /// [`Request::ThresholdAbort`]: drops the session if it runs.
    pub(crate) fn threshold_abort(&mut self, session: SessionRef) -> Outcome {
        if let Some(live) = self.threshold.live.remove(&session) {
            self.release(live);
        }
        Ok(Response::ThresholdAborted(session))
    }
}
