//! The TEE core's threshold requests: bundle import, key list, and signing sessions
//! (distributed key generation sessions: `super::dkg`, over the same envelopes).
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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature as SecpSignature};
use bitcoin::secp256k1::{Message, PublicKey};
use custos_pki::{validity_window, DeviceChain, DeviceIdentity, TrustRoot};
use custos_threshold::{
    MsgType, Outgoing, Output, Phase, ProtocolKind, SessionError, SessionHost, SessionKind, Step,
    StoredPresignature,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::bundle::open_bundle;
use super::dkg::Dkg;
use super::primes::PrimePool;
use super::wire::{audit_execution_id, execution_id, message_transcript, p2p_context};
use super::{check_key_info, check_share, HeldKey, SESSION_PREFIX, SHARE_PREFIX};
use crate::platform::{Platform, PlatformError, RecordId};
use crate::wallet::key_hex;
use crate::{storage, sync, TeeCore};
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::protocol::*;
use custos_wire::threshold::{bundle_context, bundle_transcript};

/// Longest a session may run (the approvals' expiry may cut it shorter).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(600);
/// Most sessions open at once in one TEE.
pub const MAX_LIVE_SESSIONS: usize = custos_threshold::DEFAULT_MAX_SESSIONS;
/// Verified signer chains kept (emptied when full).
const SIGNER_CACHE_CAPACITY: usize = 1024;
/// Longest HPKE `enc` accepted in a message (a P-256 point is 65 bytes).
const MAX_ENC_LEN: usize = 133;
/// Longest D signature accepted in a message (DER ECDSA P-256 is at most 72 bytes).
const MAX_SIGNATURE_LEN: usize = 80;

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

/// Who allows a signing session.
#[derive(Clone, Copy)]
enum SignPolicy<'a> {
    /// Admin approvals of the request (any digest, any non-hardened path).
    Approved {
        meta: &'a RequestMeta,
        approvals: &'a [Approval],
    },
    /// An audit (patent [0086]): the root key over an audit digest, no approvals.
    Audit,
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
    pub(super) live: HashMap<SessionRef, Live>,
    signer_cache: HashMap<[u8; 32], CachedDevice>,
    /// Safe primes generated inside the TEE.
    pub(super) primes: PrimePool,
    /// Presignatures held, by id (each used once, see `super::presign`).
    pub(crate) presigs: BTreeMap<[u8; 32], StoredPresignature>,
    /// Whether this TEE may generate primes itself when no pregenerated set is left.
    pub(crate) generate_primes: bool,
}

impl ThresholdState {
    /// Starts the session worker thread.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(ThresholdState {
            keys: BTreeMap::new(),
            used_sessions: BTreeMap::new(),
            host: SessionHost::new(MAX_LIVE_SESSIONS)?,
            dkg_host: None,
            live: HashMap::new(),
            signer_cache: HashMap::new(),
            primes: PrimePool::default(),
            presigs: BTreeMap::new(),
            generate_primes: true,
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

pub(super) fn reject(m: impl Into<String>) -> TeeError {
    TeeError::ThresholdRejected(m.into())
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
    /// that the key is new and the request id unused; only then opens the share, checks it
    /// against the signed facts, and stores it. The request id is consumed.
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
        if self.threshold.keys.contains_key(&key.key_id) || self.wallets.contains_key(&key.key_id) {
            return Err(TeeError::KeyExists(key_hex(&key.key_id)));
        }
        if self.consumed.contains_key(&meta.request_id) {
            return Err(TeeError::RequestReplayed(hex::encode(meta.request_id)));
        }
        let d = self.device.as_ref().expect("identity implies a device key");
        let share = open_bundle(&d.private_scalar()?[..], &context, bundle)?;
        check_share(key, &share).map_err(|e| reject(format!("bundle share: {e}")))?;
        let info = self.store_threshold_key(HeldKey {
            info: key.clone(),
            share,
        })?;
        self.consume_request(meta)?;
        Ok(Response::ThresholdKey(info))
    }

    /// Verifies a signer's chain as a vault device of `cluster` (cached by chain digest,
    /// validity re-checked on every use).
    pub(super) fn verify_signer(
        &mut self,
        chain: &CertChain,
        cluster: &str,
        now: u64,
    ) -> Result<DeviceIdentity, String> {
        let mut h = Sha256::new();
        for part in [&chain.device, &chain.cluster_ca, &chain.device_ca] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();
        if let Some(c) = self.threshold.signer_cache.get(&digest) {
            if c.identity.cluster == cluster && c.not_before <= now && now <= c.not_after {
                return Ok(c.identity.clone());
            }
        }
        let root = self.root.as_ref().ok_or("no Root CA pinned")?;
        let identity = root
            .verify_device(&DeviceChain::from(chain.clone()), Some(cluster), now)
            .map_err(|e| e.to_string())?;
        let (not_before, not_after) =
            validity_window(&[&chain.device, &chain.cluster_ca, &chain.device_ca])
                .map_err(|e| e.to_string())?;
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
        Ok(identity)
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

    /// [`Request::ThresholdStart`].
    pub(crate) fn threshold_start(
        &mut self,
        meta: &RequestMeta,
        attempt: u8,
        params: &ThresholdSignParams,
        approvals: &[Approval],
    ) -> Outcome {
        self.start_sign_session(
            SessionRef {
                request_id: meta.request_id,
                attempt,
            },
            &params.key_id,
            &params.path,
            &params.digest,
            &params.signers,
            SignPolicy::Approved { meta, approvals },
        )
    }

    /// [`Request::ThresholdAuditStart`]: a session over `audit_digest(message)` with the
    /// root of the key, without approvals.
    pub(crate) fn threshold_audit_start(
        &mut self,
        session: SessionRef,
        key_id: &[u8],
        message: &[u8],
        signers: &[ThresholdSigner],
    ) -> Outcome {
        if message.len() > MAX_AUDIT_MESSAGE {
            return Err(TeeError::AuditMessageTooLong {
                len: message.len().min(u32::MAX as usize) as u32,
                max: MAX_AUDIT_MESSAGE as u32,
            });
        }
        self.start_sign_session(
            session,
            key_id,
            &[],
            &audit_digest(message),
            signers,
            SignPolicy::Audit,
        )
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
        let mut signers = Vec::with_capacity(signer_list.len());
        for (pos, s) in signer_list.iter().enumerate() {
            let cluster = info.clusters[usize::from(s.share_index)].clone();
            let identity = self.verify_signer(&s.chain, &cluster, now).map_err(|e| {
                reject(format!(
                    "signer {pos} (share {}, cluster {cluster}): {e}",
                    s.share_index
                ))
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

    /// Opens a signing session (approved signing or audit, per `policy`) and returns its
    /// first messages.
    fn start_sign_session(
        &mut self,
        session: SessionRef,
        key_id: &[u8],
        path: &[u32],
        digest: &[u8; 32],
        signer_list: &[ThresholdSigner],
        policy: SignPolicy<'_>,
    ) -> Outcome {
        self.identity()?;
        let attempt = session.attempt;
        if attempt >= MAX_THRESHOLD_ATTEMPTS {
            return Err(TeeError::InvalidRequest(format!(
                "attempt {attempt}, at most {} attempts",
                MAX_THRESHOLD_ATTEMPTS
            )));
        }
        let info = self.threshold_key(key_id)?.info.clone();
        if path.len() > MAX_PATH_DEPTH {
            return Err(TeeError::InvalidPath(format!(
                "{} levels, at most {MAX_PATH_DEPTH}",
                path.len()
            )));
        }
        if let Some(i) = path.iter().find(|&&i| i >= 0x8000_0000) {
            return Err(TeeError::InvalidPath(format!(
                "hardened index {i:#010x}: a threshold key derives non-hardened children only"
            )));
        }
        if !path.is_empty() && info.chain_code.is_none() {
            return Err(TeeError::InvalidPath(
                "the key has no chain code: only the root key signs".into(),
            ));
        }
        let now = self.platform.now_unix();
        let expires_at = match policy {
            SignPolicy::Approved { meta, approvals } => {
                self.approve_in(
                    THRESHOLD_SCOPE,
                    meta,
                    Action::ThresholdSign {
                        key_id,
                        path,
                        digest,
                    },
                    approvals,
                    info.quorum,
                )?;
                meta.expires_at
            }
            // No approvals: the digest is domain-separated (never a transaction digest) and
            // the path empty. The record of the session outlives the session itself.
            SignPolicy::Audit => now.saturating_add(SESSION_TIMEOUT.as_secs()),
        };
        let (my_position, signers) = self.session_signers(&info, signer_list, now)?;
        if self.threshold.used_sessions.contains_key(&session) {
            return Err(TeeError::RequestReplayed(session_name(&session)));
        }
        self.purge_expired_sessions();
        if self.threshold.live.len() >= MAX_LIVE_SESSIONS {
            return Err(reject(format!(
                "{MAX_LIVE_SESSIONS} sessions are open, retry later"
            )));
        }
        let remaining = expires_at.saturating_sub(now);
        if remaining == 0 {
            return Err(TeeError::RequestExpired { expires_at, now });
        }
        let deadline = Instant::now() + SESSION_TIMEOUT.min(Duration::from_secs(remaining));
        let fingerprints: Vec<(u16, [u8; 32])> = signers
            .iter()
            .map(|s| (s.share_index, s.identity.fingerprint))
            .collect();
        let eid = match policy {
            SignPolicy::Approved { .. } => {
                execution_id(&session, key_id, &fingerprints, digest, path)
            }
            SignPolicy::Audit => audit_execution_id(&session, key_id, &fingerprints, digest),
        };
        let held = self.threshold_key(key_id)?;
        let child_key = held
            .share
            .derive_child_public_key(path)
            .map_err(|e| TeeError::InvalidPath(e.to_string()))?;
        let share = held.share.clone();

        self.record_session_start(&session, expires_at)?;

        let kind = SessionKind::Sign {
            share,
            parties: signers.iter().map(|s| s.share_index).collect(),
            my_position: my_position as u16,
            path: Some(path.to_vec()),
            digest: *digest,
        };
        let out = self
            .threshold
            .host
            .start(eid, kind, eid, deadline)
            .map_err(|e| reject(format!("the session did not start: {e}")))?;
        let live = Live {
            eid,
            my_position: my_position as u16,
            signers,
            phase: Phase::GetAb,
            deadline,
            work: Work::Sign {
                host_id: eid,
                child_key,
                digest: *digest,
            },
        };
        let outgoing = self.go_live(session, live, out)?;
        Ok(Response::ThresholdRound {
            session,
            phase: Phase::GetAb.as_str().into(),
            outgoing,
            signature: None,
        })
    }

    /// Wraps a started session's first messages and keeps it live (or ends it if they
    /// cannot be wrapped).
    pub(super) fn go_live(
        &mut self,
        session: SessionRef,
        live: Live,
        out: Vec<Outgoing>,
    ) -> Result<Vec<ThresholdMessage>, TeeError> {
        match self.emit(&session, &live, out) {
            Ok(outgoing) => {
                self.threshold.live.insert(session, live);
                Ok(outgoing)
            }
            Err(e) => {
                self.release(live);
                Err(e)
            }
        }
    }

    /// Wraps the engine's outgoing messages into signed envelopes, sealing p2p content to
    /// the recipient's D key.
    pub(super) fn emit(
        &mut self,
        session: &SessionRef,
        live: &Live,
        out: Vec<Outgoing>,
    ) -> Result<Vec<ThresholdMessage>, TeeError> {
        let mut messages = Vec::with_capacity(out.len());
        for o in out {
            let phase = o.phase.as_str();
            let (enc, payload) = match o.to {
                None => (Vec::new(), o.bytes.to_vec()),
                Some(j) => {
                    let Some(to) = live
                        .signers
                        .get(usize::from(j))
                        .filter(|_| j != live.my_position)
                    else {
                        return Err(TeeError::ThresholdRejected(format!(
                            "the engine addressed position {j}"
                        )));
                    };
                    let ctx = p2p_context(&live.eid, session, live.my_position, j, phase, o.round);
                    sync::seal_in_tee(
                        &mut self.platform,
                        &to.identity.public_key,
                        &ctx,
                        &o.bytes,
                        TeeError::ThresholdRejected,
                    )?
                }
            };
            let mut m = ThresholdMessage {
                session: *session,
                sender: live.my_position,
                recipient: o.to,
                phase: phase.into(),
                round: o.round,
                enc,
                payload,
                signature: Vec::new(),
            };
            let d = self.device.as_ref().expect("identity implies a device key");
            m.signature = d.sign(&message_transcript(&live.eid, &m));
            messages.push(m);
        }
        Ok(messages)
    }

    /// Checks one received message (signature, envelope against content, p2p opening) and
    /// returns its phase, its declared type and the protocol message it carries.
    pub(super) fn open_message(
        &mut self,
        session: &SessionRef,
        live: &Live,
        own_scalar: &[u8],
        m: &ThresholdMessage,
    ) -> Result<(Phase, MsgType, Zeroizing<Vec<u8>>), Fault> {
        let sender = &live.signers[usize::from(m.sender)];
        TrustRoot::verify_device_signature(
            &sender.identity,
            &message_transcript(&live.eid, m),
            &m.signature,
        )
        .map_err(|_| {
            Fault::Blame(
                m.sender,
                format!(
                    "the {} message of round {} does not carry a valid signature of position {} \
                     for this session",
                    m.phase, m.round, m.sender
                ),
            )
        })?;
        let protocol = match (&live.work, Phase::parse(&m.phase)) {
            (
                Work::Sign { .. },
                Some(p @ (Phase::GetAb | Phase::GetAbAndR | Phase::GetR | Phase::GetSig)),
            ) => (p, ProtocolKind::Sign),
            (Work::Presign { .. }, Some(p @ Phase::Presign)) => (p, ProtocolKind::Presign),
            (Work::Keygen(_), Some(p @ Phase::Keygen)) => (p, ProtocolKind::Keygen),
            (Work::Keygen(_), Some(p @ Phase::AuxInfo)) => (p, ProtocolKind::AuxInfo),
            _ => {
                return Err(Fault::Blame(
                    m.sender,
                    format!("phase {:?} is not part of this session", m.phase),
                ))
            }
        };
        let (phase, protocol) = protocol;
        let declared = match (m.recipient, m.enc.is_empty()) {
            (None, true) => MsgType::Broadcast,
            (Some(_), false) => MsgType::P2P,
            (None, false) => {
                return Err(Fault::Blame(
                    m.sender,
                    "a broadcast carries an HPKE key".into(),
                ))
            }
            (Some(_), true) => {
                return Err(Fault::Blame(m.sender, "a p2p message is not sealed".into()))
            }
        };
        let bytes: Zeroizing<Vec<u8>> = match declared {
            MsgType::Broadcast => Zeroizing::new(m.payload.clone()),
            MsgType::P2P => {
                let ctx = p2p_context(
                    &live.eid,
                    session,
                    m.sender,
                    live.my_position,
                    &m.phase,
                    m.round,
                );
                custos_wire::seal::open_with(
                    own_scalar,
                    &m.enc,
                    &m.payload,
                    &ctx,
                    TeeError::ThresholdRejected,
                )
                .map_err(|e| Fault::Blame(m.sender, e.to_string()))?
            }
        };
        let info = custos_threshold::inspect(protocol, &bytes)
            .map_err(|e| Fault::Blame(m.sender, e.to_string()))?;
        if info.phase != phase || info.round != m.round || info.msg_type != declared {
            return Err(Fault::Blame(
                m.sender,
                format!(
                    "envelope says {} round {} {declared:?}, content is {} ({} round {}, {:?})",
                    m.phase, m.round, info.name, info.phase, info.round, info.msg_type
                ),
            ));
        }
        Ok((phase, declared, bytes))
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

    /// [`Request::ThresholdFeed`].
    ///
    /// First, without touching the session, every message must belong to it, come from
    /// another participant, be addressed to this node (or broadcast) and respect the size
    /// limits; otherwise the request is refused ([`TeeError::ThresholdRejected`]) and the
    /// session goes on. Then each message in turn: a bad signature, an envelope that does not
    /// match the content, a p2p payload that does not open, or the engine's refusal aborts
    /// the session ([`TeeError::ThresholdAborted`], naming the sender's cluster or those
    /// the protocol blamed). Identical repeats are ignored. A key generation's messages are
    /// checked the same way and then queued on its own worker (`super::dkg`).
    pub(crate) fn threshold_feed(
        &mut self,
        session: SessionRef,
        messages: &[ThresholdMessage],
    ) -> Outcome {
        self.identity()?;
        if messages.len() > MAX_THRESHOLD_MESSAGES {
            return Err(TeeError::InvalidRequest(format!(
                "{} messages, at most {MAX_THRESHOLD_MESSAGES} per feed",
                messages.len()
            )));
        }
        self.purge_expired_sessions();
        let Some(live) = self.threshold.live.remove(&session) else {
            return Err(TeeError::UnknownSession(session_name(&session)));
        };
        let t = live.signers.len();
        for (i, m) in messages.iter().enumerate() {
            let problem = if m.session != session {
                Some(format!(
                    "message {i} belongs to session {}",
                    session_name(&m.session)
                ))
            } else if usize::from(m.sender) >= t || m.sender == live.my_position {
                Some(format!(
                    "message {i} claims sender position {} (this node is {} of {t})",
                    m.sender, live.my_position
                ))
            } else if m.recipient.is_some_and(|r| r != live.my_position) {
                Some(format!(
                    "message {i} is addressed to position {:?}, this node is {}",
                    m.recipient, live.my_position
                ))
            } else if m.payload.len() > MAX_THRESHOLD_PAYLOAD
                || m.enc.len() > MAX_ENC_LEN
                || m.signature.len() > MAX_SIGNATURE_LEN
                || m.phase.len() > 32
            {
                Some(format!("message {i} exceeds a size limit"))
            } else {
                None
            };
            if let Some(p) = problem {
                self.threshold.live.insert(session, live);
                return Err(reject(p));
            }
        }
        let own_scalar = match self.device.as_ref().map(|d| d.private_scalar()) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.threshold.live.insert(session, live);
                return Err(e);
            }
            None => unreachable!("identity implies a device key"),
        };
        if matches!(live.work, Work::Keygen(_)) {
            return self.dkg_feed(session, live, &own_scalar[..], messages);
        }
        let mut live = live;
        let mut outgoing = Vec::new();
        for m in messages {
            let host_id = match &live.work {
                Work::Sign { host_id, .. } | Work::Presign { host_id, .. } => *host_id,
                Work::Keygen(_) => unreachable!("key generations are fed above"),
            };
            let step = self
                .open_message(&session, &live, &own_scalar[..], m)
                .and_then(|(_, declared, bytes)| {
                    self.threshold
                        .host
                        .feed(host_id, m.sender, declared, &bytes)
                        .map_err(Fault::Session)
                });
            let step = match step {
                Ok(step) => step,
                Err(fault) => return Err(self.abort_for(&session, live, fault)),
            };
            match step {
                Step::Duplicate => {}
                Step::Continue(out) => {
                    if let Some(p) = out.iter().map(|o| o.phase).max() {
                        live.phase = live.phase.max(p);
                    }
                    match self.emit(&session, &live, out) {
                        Ok(msgs) => outgoing.extend(msgs),
                        Err(e) => {
                            let phase = live.phase;
                            return Err(self.abort_live(&session, live, &[], phase, e.to_string()));
                        }
                    }
                }
                Step::Done {
                    output,
                    outgoing: last,
                } => {
                    // The engine already dropped the session.
                    return match output {
                        Output::Presignature(p) => {
                            let stored = match self.store_presignature(&live, p) {
                                Ok(info) => info,
                                Err(d) => {
                                    let phase = live.phase;
                                    return Err(self.abort_live(&session, live, &[], phase, d));
                                }
                            };
                            outgoing.extend(self.emit(&session, &live, last)?);
                            Ok(Response::ThresholdPresignRound {
                                session,
                                phase: Phase::Presign.as_str().into(),
                                outgoing,
                                presignature: Some(stored),
                            })
                        }
                        output => {
                            live.phase = Phase::GetSig;
                            let result = match output {
                                Output::Signature(sig) => self.check_signature(&live, &sig),
                                other => Err(format!("the session produced {other:?}")),
                            };
                            let signature = match result {
                                Ok(s) => s,
                                Err(d) => {
                                    return Err(self.abort_live(
                                        &session,
                                        live,
                                        &[],
                                        Phase::GetSig,
                                        d,
                                    ))
                                }
                            };
                            outgoing.extend(self.emit(&session, &live, last)?);
                            Ok(Response::ThresholdRound {
                                session,
                                phase: Phase::GetSig.as_str().into(),
                                outgoing,
                                signature: Some(signature),
                            })
                        }
                    };
                }
            }
        }
        let phase = live.phase.as_str().into();
        let presign = matches!(live.work, Work::Presign { .. });
        self.threshold.live.insert(session, live);
        Ok(if presign {
            Response::ThresholdPresignRound {
                session,
                phase,
                outgoing,
                presignature: None,
            }
        } else {
            Response::ThresholdRound {
                session,
                phase,
                outgoing,
                signature: None,
            }
        })
    }

    /// Checks the engine's signature independently: the key is the approved child key, and
    /// libsecp256k1 verifies it, low-s, with `v` recovering the key.
    fn check_signature(
        &self,
        live: &Live,
        sig: &custos_threshold::Signature,
    ) -> Result<EcdsaSignature, String> {
        let Work::Sign {
            child_key, digest, ..
        } = &live.work
        else {
            return Err("not a signing session".into());
        };
        if sig.public_key != *child_key {
            return Err(format!(
                "signature is under key {}, the approved child key is {}",
                hex::encode(sig.public_key),
                hex::encode(child_key)
            ));
        }
        let pk = PublicKey::from_slice(child_key).map_err(|e| e.to_string())?;
        let msg = Message::from_digest(*digest);
        let compact = sig.to_compact();
        let plain = SecpSignature::from_compact(&compact).map_err(|e| e.to_string())?;
        let mut normalized = plain;
        normalized.normalize_s();
        if normalized != plain {
            return Err("signature is not low-s".into());
        }
        self.secp
            .verify_ecdsa(&msg, &plain, &pk)
            .map_err(|e| format!("signature does not verify: {e}"))?;
        let recovered = RecoveryId::from_i32(i32::from(sig.v))
            .and_then(|id| RecoverableSignature::from_compact(&compact, id))
            .and_then(|r| self.secp.recover_ecdsa(&msg, &r))
            .map_err(|e| format!("recovery id {}: {e}", sig.v))?;
        if recovered != pk {
            return Err(format!("recovery id {} recovers another key", sig.v));
        }
        Ok(EcdsaSignature {
            r: sig.r,
            s: sig.s,
            v: sig.v,
            public_key: child_key.to_vec(),
        })
    }

    /// [`Request::ThresholdAbort`]: drops the session if it runs.
    pub(crate) fn threshold_abort(&mut self, session: SessionRef) -> Outcome {
        if let Some(live) = self.threshold.live.remove(&session) {
            self.release(live);
        }
        Ok(Response::ThresholdAborted(session))
    }
}
