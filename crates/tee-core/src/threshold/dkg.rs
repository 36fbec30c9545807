//! Distributed key generation in the TEE core: the second way to create a threshold key,
//! where no dealer and no single TEE ever holds the whole key.
//!
//! Every cluster of the new key runs one session ([`Request::ThresholdKeygenStart`], the
//! same request everywhere), relayed by the cloud server like a signing session: every
//! message is signed by its sender's D key, point-to-point content (keygen's secret shares,
//! aux-info's proofs) is HPKE-sealed to the receiving node. The session runs two protocol
//! executions in turn:
//!
//! 1. **keygen** (phase `keygen`): cggmp24 threshold key generation; this TEE ends with its
//!    secret share of the joint key, which every party computes itself. Milliseconds.
//! 2. **aux-info** (phase `auxInfo`): this TEE's Paillier key and ring-Pedersen parameters
//!    from a set of primes ([`super::primes`]), proven to the others. Seconds per step: a
//!    step of about 9 s of one core for n = 3 at SecurityLevel128.
//!
//! Then the two halves make the share T_i with P, which is sealed (origin
//! [`ThresholdOrigin::Dkg`]) and answered as the key's public facts. The request id is
//! consumed with it, keeping the key's id: one approval makes at most one key, whatever the
//! attempts, and a repeated start or feed answers that key (see `repeat`).
//!
//! Ids: the envelope id and the two execution ids are derived inside the TEE from the
//! approved request and the participants' certificates ([`dkg_execution_id`]).
//!
//! Computation runs on a worker thread of its own, and the core never waits for it longer
//! than [`DKG_COLLECT_WAIT`] per request: each delivered message is queued there and the
//! answer reports `computing` while steps are outstanding; the cloud server then calls again
//! with an empty [`Request::ThresholdFeed`] to collect the messages produced. So no request
//! through the bridge takes seconds, and this TEE keeps serving other requests meanwhile.
//! Aux-info messages that arrive before this TEE has finished keygen (possible since its
//! last keygen step may still be queued) are verified and held until aux-info starts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use custos_pki::{DeviceChain, DeviceIdentity};
use custos_threshold::{
    IncompleteShare, MsgType, Outgoing, Output, Pending, Phase, Primes, SessionError, SessionHost,
    SessionKind, Step, ThresholdShare,
};
use zeroize::Zeroizing;

use super::engine::{
    in_context, reject, session_name, session_record, Fault, Live, Signer, Work, MAX_LIVE_SESSIONS,
    SESSION_TIMEOUT,
};
use super::primes::{primes_refused, used_record, GENERATED_PREFIX, PRIMES_PREFIX};
use super::wire::{dkg_execution_id, DkgStage};
use super::{check_key_facts, key_info, HeldKey, MAX_THRESHOLD_PARTIES};
use crate::approval::Who;
use crate::platform::{Platform, RecordId};
use crate::policy_requests::{check_key_kind, check_new_policy};
use crate::{storage, TeeCore};
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::governance::device_key_fingerprint;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::*;

/// Most key generations open at once in one TEE.
pub const MAX_DKG_SESSIONS: usize = 4;
/// Longest the core waits, in one request, for a key generation's computation; what is not
/// ready by then is collected by a later feed.
pub const DKG_COLLECT_WAIT: Duration = Duration::from_millis(250);
/// Most aux-info messages held that arrived before this TEE finished keygen.
const MAX_EARLY_MESSAGES: usize = 4 * MAX_THRESHOLD_PARTIES;
/// Most bytes of messages in one answer; the rest waits for the next call. An aux-info step
/// sends a message of about 220 KB to every other participant, so with many clusters one
/// step's messages would outgrow the link's payload limit (8 MiB) in a single answer.
pub const MAX_DKG_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// The protocol execution a key generation is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Keygen,
    AuxInfo,
}

impl Stage {
    fn of(phase: Phase) -> Self {
        if phase == Phase::AuxInfo {
            Stage::AuxInfo
        } else {
            Stage::Keygen
        }
    }
}

/// Work queued on the key generation host, answered in order.
enum Job {
    Start(Stage, Pending<Vec<Outgoing>>),
    Feed(Stage, Pending<Step>),
}

impl Job {
    fn stage(&self) -> Stage {
        match self {
            Job::Start(s, _) | Job::Feed(s, _) => *s,
        }
    }

    fn wait(&self, timeout: Duration) -> Option<Result<Step, SessionError>> {
        match self {
            Job::Start(_, p) => p.wait(timeout).map(|r| r.map(Step::Continue)),
            Job::Feed(_, p) => p.wait(timeout),
        }
    }
}

/// Where a session's primes came from (and go back to if aux-info never used them).
enum PrimesFrom {
    /// A pregenerated set sealed under this record (removed when the session started).
    Sealed(RecordId),
    /// The TEE's own background generation.
    Pool,
}

impl PrimesFrom {
    /// Whether this TEE generated the set (in memory still, or sealed since).
    fn generated(&self) -> bool {
        match self {
            PrimesFrom::Pool => true,
            PrimesFrom::Sealed(id) => id.as_str().starts_with(GENERATED_PREFIX),
        }
    }
}

/// What the core keeps about a running key generation.
pub(super) struct Dkg {
    meta: RequestMeta,
    threshold: u16,
    hd: bool,
    quorum: u8,
    clusters: Vec<String>,
    /// The approver group the key is sealed with (`None`: a legacy key generation).
    policy: Option<KeyPolicy>,
    /// Host session ids (the execution ids) of the two stages.
    keygen_id: [u8; 32],
    aux_id: [u8; 32],
    stage: Stage,
    /// The primes, until aux-info starts with them.
    primes: Option<(Primes, PrimesFrom)>,
    /// The primes came from the pool: make the next set once this one is used.
    from_pool: bool,
    /// Keygen's output, until aux-info's completes it.
    core: Option<IncompleteShare>,
    queue: VecDeque<Job>,
    /// Verified aux-info messages that came before keygen finished here.
    early: Vec<(u16, MsgType, Zeroizing<Vec<u8>>)>,
    /// Messages made but not yet answered (beyond [`MAX_DKG_ANSWER_BYTES`]).
    outbox: VecDeque<ThresholdMessage>,
    /// Aux-info's output, held until the outbox is empty.
    aux: Option<custos_threshold::AuxInfo>,
    /// The start's messages, answered again to a repeated start (`repeat`).
    started: Vec<ThresholdMessage>,
}

impl Dkg {
    /// Whether this TEE has work or messages still to give: the caller collects with empty
    /// feeds meanwhile.
    fn computing(&self) -> bool {
        !self.queue.is_empty() || !self.outbox.is_empty() || self.aux.is_some()
    }

    fn host_id(&self, stage: Stage) -> [u8; 32] {
        match stage {
            Stage::Keygen => self.keygen_id,
            Stage::AuxInfo => self.aux_id,
        }
    }
}

/// The first messages of `outbox` up to [`MAX_DKG_ANSWER_BYTES`] (at least one).
fn take_answer(outbox: &mut VecDeque<ThresholdMessage>) -> Vec<ThresholdMessage> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(m) = outbox.front() {
        let size = m.payload.len() + m.enc.len() + m.signature.len() + m.phase.len() + 64;
        if !out.is_empty() && bytes + size > MAX_DKG_ANSWER_BYTES {
            break;
        }
        bytes += size;
        out.extend(outbox.pop_front());
    }
    out
}

fn dkg_of(live: &mut Live) -> &mut Dkg {
    match &mut live.work {
        Work::Keygen(d) => d,
        Work::Sign { .. } | Work::Presign { .. } => {
            unreachable!("only key generation sessions come here")
        }
    }
}

/// Checks a key generation's terms and its participants (one per cluster, in share-index
/// order), and finds this node among them as the participant of its own cluster.
fn keygen_position(
    params: &ThresholdKeygenParams,
    own: &DeviceIdentity,
    own_chain: &DeviceChain,
) -> Result<usize, TeeError> {
    check_key_facts(params.threshold, &params.clusters, params.quorum).map_err(reject)?;
    let n = params.clusters.len();
    if params.participants.len() != n {
        return Err(reject(format!(
            "{} participants for {n} clusters",
            params.participants.len()
        )));
    }
    if let Some((i, p)) = params
        .participants
        .iter()
        .enumerate()
        .find(|(i, p)| usize::from(p.share_index) != *i)
    {
        return Err(reject(format!(
            "participant {i} names share {}: participants come in share-index order",
            p.share_index
        )));
    }
    let my_index = params
        .participants
        .iter()
        .position(|p| DeviceChain::from(p.chain.clone()) == *own_chain)
        .ok_or_else(|| reject("this node is not among the participants"))?;
    if params.clusters[my_index] != own.cluster {
        return Err(reject(format!(
            "participant {my_index} (this node) is to hold the share of cluster {:?}, this \
             node is in {:?}",
            params.clusters[my_index], own.cluster
        )));
    }
    Ok(my_index)
}

/// What a key generation with an approver group ([`Request::ThresholdGroupKeygenStart`])
/// adds to the legacy terms.
#[derive(Clone, Copy)]
pub(crate) struct GroupTerms<'a> {
    /// The new key's approver group, quorum and rules.
    pub(crate) policy: &'a KeyPolicy,
    /// Device key fingerprint of the node executing each share, by share index.
    pub(crate) executors: &'a [[u8; 32]],
}

/// The device key fingerprint (member id) of a verified device; all zero if its key is not a
/// P-256 point, which no executor fingerprint can equal.
fn device_fingerprint(identity: &DeviceIdentity) -> [u8; 32] {
    device_key_fingerprint(&identity.public_key).unwrap_or([0; 32])
}

mod repeat;

impl<P: Platform> TeeCore<P> {
    /// The key generation host, started at first use.
    fn dkg_host(&mut self) -> Result<&SessionHost, TeeError> {
        if self.threshold.dkg_host.is_none() {
            let host = SessionHost::new(2 * MAX_DKG_SESSIONS)
                .map_err(|e| reject(format!("cannot start the key generation thread: {e}")))?;
            self.threshold.dkg_host = Some(host);
        }
        Ok(self.threshold.dkg_host.as_ref().expect("set above"))
    }

    /// A primes set for a new session: a sealed pregenerated one first (its record stays
    /// until the session start commits), else the pool's. Without either, starts the pool
    /// (if allowed) and refuses with [`TeeError::PrimesNotReady`].
    fn find_primes(&mut self) -> Result<(Primes, PrimesFrom), TeeError> {
        for id in self.platform.list(PRIMES_PREFIX).map_err(storage)? {
            if self.corrupt.contains_key(id.as_str()) {
                continue;
            }
            // A set that served a key generation here never serves another, however it
            // came back into the store.
            if self
                .platform
                .unseal(&used_record(&id))
                .map_err(storage)?
                .is_some()
            {
                continue;
            }
            let loaded = self
                .platform
                .unseal(&id)
                .map_err(|e| e.to_string())
                .and_then(|r| r.ok_or_else(|| "record vanished".to_string()))
                .and_then(|body| Primes::from_bytes(&body).map_err(|e| e.to_string()));
            match loaded {
                Ok(p) => return Ok((p, PrimesFrom::Sealed(id))),
                Err(reason) => {
                    self.corrupt.insert(id.as_str().to_string(), reason);
                }
            }
        }
        if let Some(p) = self.threshold.primes.take() {
            return Ok((p, PrimesFrom::Pool));
        }
        if !self.threshold.generate_primes {
            return Err(TeeError::PrimesNotReady(
                "no pregenerated primes set is left in this TEE, and it does not generate its \
                 own"
                .into(),
            ));
        }
        let already = self.threshold.primes.generating();
        if !self.threshold.primes.refill() {
            return Err(TeeError::PrimesNotReady(
                "the primes generation thread cannot start".into(),
            ));
        }
        Err(TeeError::PrimesNotReady(format!(
            "this TEE {} generating safe primes for its Paillier key (one to three minutes); \
             retry then",
            if already { "is" } else { "started" }
        )))
    }

    /// [`Request::ThresholdKeygenStart`] (`group` is `None`) and
    /// [`Request::ThresholdGroupKeygenStart`]: checks the key's terms (with `group`: its
    /// policy, and that this node is the approved executor of its cluster's share), that this
    /// node is the participant of its own cluster, the admins' approval of exactly these
    /// terms (by the new key's group, or any admins of the new key's quorum), every
    /// participant's certificate as a device of its cluster (with `group`: of the device key
    /// approved for its share), that the session and the request were not used, and that a
    /// primes set is ready. Then the session is marked started (and the primes set consumed)
    /// durably, keygen starts, and its first messages are answered. A repeat whose request
    /// made a key here answers that key; one whose session runs here answers its first
    /// messages again (see `repeat`).
    pub(crate) fn threshold_keygen_start(
        &mut self,
        meta: &RequestMeta,
        attempt: u8,
        params: &ThresholdKeygenParams,
        group: Option<GroupTerms<'_>>,
        approvals: &[Approval],
    ) -> Outcome {
        let (own, own_chain) = self.identity()?.clone();
        if attempt >= MAX_THRESHOLD_ATTEMPTS {
            return Err(TeeError::InvalidRequest(format!(
                "attempt {attempt}, at most {MAX_THRESHOLD_ATTEMPTS} attempts"
            )));
        }
        if let Some(g) = group {
            self.check_group_terms(params, g, &own)?;
        }
        let my_index = keygen_position(params, &own, &own_chain)?;
        let n = params.clusters.len();
        let (action, who) = match group {
            None => (
                Action::CreateThresholdKey {
                    quorum: params.quorum,
                    threshold: params.threshold,
                    hd: params.hd,
                    clusters: &params.clusters,
                },
                Who::AnyAdmin {
                    quorum: params.quorum,
                },
            ),
            // Whoever creates a key under a group must be a quorum of that very group, as
            // for a group wallet: no one outside it ever decides about the key.
            Some(g) => (
                Action::CreateGroupThresholdKey {
                    policy: g.policy,
                    threshold: params.threshold,
                    hd: params.hd,
                    clusters: &params.clusters,
                    executors: g.executors,
                },
                Who::Group {
                    group: g.policy.group.clone(),
                    quorum: g.policy.quorum,
                },
            ),
        };
        self.approve_in_by(THRESHOLD_SCOPE, meta, action, approvals, who)?;
        let session = SessionRef {
            request_id: meta.request_id,
            attempt,
        };
        let policy = group.map(|g| g.policy);
        if let Some(made) = self.first_made(meta)? {
            return self.first_keygen(meta, &session, &made, params, policy, my_index);
        }
        // A repeat above still answers the key made before the cluster was governed.
        if group.is_none() && self.gov.is_some() {
            return Err(TeeError::LegacyRequest(
                "ThresholdKeygenStart names no approver group and no executing nodes; a \
                 governed cluster makes threshold keys with ThresholdGroupKeygenStart"
                    .into(),
            ));
        }
        let now = self.platform.now_unix();
        let anchors = policy.and_then(KeyPolicy::cluster_anchors);
        let signers =
            self.keygen_signers(params, group.map(|g| g.executors), anchors.as_deref(), now)?;
        let fingerprints: Vec<[u8; 32]> = signers.iter().map(|s| s.identity.fingerprint).collect();
        let policy_hash = policy.map(KeyPolicy::hash);
        let id = |stage| {
            dkg_execution_id(
                stage,
                &session,
                params.threshold,
                params.hd,
                params.quorum,
                &params.clusters,
                &fingerprints,
                policy_hash.as_ref(),
            )
        };
        let (eid, keygen_id, aux_id) = (
            id(DkgStage::Envelope),
            id(DkgStage::Keygen),
            id(DkgStage::AuxInfo),
        );
        if let Some(running) = self.keygen_running(&session, &eid)? {
            return Ok(running);
        }
        let deadline = self.admit_keygen(&session, meta, now)?;
        let (primes, from) = self.find_primes()?;
        if let Err(e) = self.dkg_host() {
            self.give_back_primes(primes, from);
            return Err(e);
        }
        let (primes, from) = self.record_keygen_start(&session, meta.expires_at, primes, from)?;

        let kind = SessionKind::Keygen {
            my_index: my_index as u16,
            n: n as u16,
            t: params.threshold,
            hd: params.hd,
        };
        let live = Live {
            eid,
            my_position: my_index as u16,
            signers,
            phase: Phase::Keygen,
            deadline,
            work: Work::Keygen(Box::new(Dkg {
                meta: meta.clone(),
                threshold: params.threshold,
                hd: params.hd,
                quorum: params.quorum,
                clusters: params.clusters.clone(),
                policy: policy.cloned(),
                keygen_id,
                aux_id,
                stage: Stage::Keygen,
                from_pool: from.generated(),
                primes: Some((primes, from)),
                core: None,
                queue: VecDeque::new(),
                early: Vec::new(),
                outbox: VecDeque::new(),
                aux: None,
                started: Vec::new(),
            })),
        };
        let started = self
            .dkg_host()
            .and_then(|h| {
                h.start(keygen_id, kind, keygen_id, deadline)
                    .map_err(|e| reject(format!("the key generation did not start: {e}")))
            })
            .and_then(|out| self.emit(&session, &live, out));
        let outgoing = match started {
            Ok(o) => o,
            Err(e) => {
                self.release(live);
                return Err(e);
            }
        };
        let mut live = live;
        dkg_of(&mut live).started = outgoing.clone();
        self.threshold.live.insert(session, live);
        Ok(Response::ThresholdKeygenRound {
            session,
            phase: Phase::Keygen.as_str().into(),
            outgoing,
            computing: false,
            key: None,
        })
    }

    /// The terms a key generation with an approver group adds, checked before anything else
    /// of it: the policy a new key may have, its quorum the key's, one executor per share,
    /// and this node the executor of its own cluster's share. Any other node of the cluster
    /// refuses with [`TeeError::NotExecutor`], so the same approvals retried there can never
    /// make a second key.
    fn check_group_terms(
        &self,
        params: &ThresholdKeygenParams,
        group: GroupTerms<'_>,
        own: &DeviceIdentity,
    ) -> Result<(), TeeError> {
        check_key_facts(params.threshold, &params.clusters, params.quorum).map_err(reject)?;
        let policy = group.policy;
        check_new_policy(policy)?;
        check_key_kind(policy, Some(params.clusters.len()))?;
        if policy.quorum != params.quorum {
            return Err(TeeError::PolicyRejected(format!(
                "the policy's quorum {} differs from the key's quorum {}",
                policy.quorum, params.quorum
            )));
        }
        let n = params.clusters.len();
        if group.executors.len() != n {
            return Err(reject(format!(
                "{} executors for {n} clusters",
                group.executors.len()
            )));
        }
        let my_index = params
            .clusters
            .iter()
            .position(|c| *c == own.cluster)
            .ok_or_else(|| {
                reject(format!(
                    "this node's cluster {:?} holds no share of the key",
                    own.cluster
                ))
            })?;
        let this_node = device_fingerprint(own);
        if group.executors[my_index] != this_node {
            return Err(TeeError::NotExecutor {
                executor: group.executors[my_index],
                this_node,
            });
        }
        match policy.cluster_anchors() {
            Some(anchors) => self.check_own_anchor(&anchors, n, my_index),
            None => Ok(()),
        }
    }

    /// A policy's cluster anchors name one genesis per share, and this cluster's is the log
    /// this node holds. Other clusters' anchors are theirs to check (each participant checks
    /// its own); checking them here needs their logs (plan step D5).
    pub(crate) fn check_own_anchor(
        &self,
        anchors: &[[u8; 32]],
        n: usize,
        my_index: usize,
    ) -> Result<(), TeeError> {
        if anchors.len() != n {
            return Err(TeeError::PolicyRejected(format!(
                "{} cluster anchors for {n} clusters",
                anchors.len()
            )));
        }
        let gov = self.gov.as_ref().ok_or(TeeError::NotGoverned)?;
        if anchors[my_index] != gov.state.genesis_id {
            return Err(TeeError::PolicyRejected(format!(
                "the anchor of share {my_index} is genesis {}, this cluster's log starts at {}",
                hex::encode(anchors[my_index]),
                hex::encode(gov.state.genesis_id)
            )));
        }
        Ok(())
    }

    /// Verifies every participant's certificate chain as a device of the cluster whose share
    /// it is to hold and, when the approvals name `executors`, of the device key approved
    /// for that share: a session never runs with a substituted node.
    fn keygen_signers(
        &mut self,
        params: &ThresholdKeygenParams,
        executors: Option<&[[u8; 32]]>,
        anchors: Option<&[[u8; 32]]>,
        now: u64,
    ) -> Result<Vec<Signer>, TeeError> {
        let mut signers = Vec::with_capacity(params.clusters.len());
        for (i, p) in params.participants.iter().enumerate() {
            let cluster = &params.clusters[i];
            // The approvals name each share's device key, so no other device takes part; a
            // foreign anchored log is consulted when held (to see a removal since the
            // approval), as no key anchors it here before this one exists.
            let anchor = anchors
                .and_then(|a| a.get(i))
                .filter(|a| self.holds_foreign_log(a));
            let identity = self
                .verify_signer(&p.chain, cluster, anchor, now)
                .map_err(|e| in_context(e, format!("participant {i} (cluster {cluster})")))?;
            if let Some(executor) = executors.map(|e| e[i]) {
                let found = device_fingerprint(&identity);
                if found != executor {
                    return Err(TeeError::ParticipantNotExecutor {
                        share_index: i as u16,
                        executor,
                        found,
                    });
                }
            }
            signers.push(Signer {
                share_index: i as u16,
                identity,
            });
        }
        Ok(signers)
    }

    /// Refuses a key generation whose session was already started here (and is no longer
    /// running: aborted, expired or lost in a restart; the caller starts the next attempt),
    /// that finds no room among the open sessions, or whose approvals have expired; else
    /// returns its deadline.
    fn admit_keygen(
        &mut self,
        session: &SessionRef,
        meta: &RequestMeta,
        now: u64,
    ) -> Result<Instant, TeeError> {
        if self.threshold.used_sessions.contains_key(session) {
            return Err(TeeError::RequestReplayed(session_name(session)));
        }
        self.purge_expired_sessions();
        if self.threshold.live.len() >= MAX_LIVE_SESSIONS {
            return Err(reject(format!(
                "{MAX_LIVE_SESSIONS} sessions are open, retry later"
            )));
        }
        let running = self
            .threshold
            .live
            .values()
            .filter(|l| matches!(l.work, Work::Keygen(_)))
            .count();
        if running >= MAX_DKG_SESSIONS {
            return Err(reject(format!(
                "{MAX_DKG_SESSIONS} key generations are running, retry later"
            )));
        }
        let remaining = meta.expires_at.saturating_sub(now);
        if remaining == 0 {
            return Err(TeeError::RequestExpired {
                expires_at: meta.expires_at,
                now,
            });
        }
        Ok(Instant::now() + SESSION_TIMEOUT.min(Duration::from_secs(remaining)))
    }

    /// Marks the session started and consumes its primes set, durably, before anything of the
    /// session exists: a replay is refused even after a crash, and the primes set can never
    /// serve a second session. If sealing or committing fails, the set goes back where it
    /// came from (a sealed one is still in the store); on success it is handed back for the
    /// session.
    fn record_keygen_start(
        &mut self,
        session: &SessionRef,
        expires_at: u64,
        primes: Primes,
        from: PrimesFrom,
    ) -> Result<(Primes, PrimesFrom), TeeError> {
        let record = session_record(session).map_err(storage)?;
        let marked = self
            .platform
            .seal(&record, &expires_at.to_be_bytes())
            .and_then(|_| match &from {
                // The set leaves the store, marked used in the same commit: handed over
                // again it is refused (`already_used`), never a second key's.
                PrimesFrom::Sealed(id) => self
                    .platform
                    .remove(id)
                    .and_then(|_| self.platform.seal(&used_record(id), b"used")),
                PrimesFrom::Pool => Ok(()),
            });
        if let Err(e) = marked {
            self.give_back_primes(primes, from);
            return Err(storage(e));
        }
        self.threshold.used_sessions.insert(*session, expires_at);
        if let Err(e) = self.commit_pending() {
            // The platform discarded the writes: a sealed set is still in the store.
            self.threshold.used_sessions.remove(session);
            if matches!(from, PrimesFrom::Pool) {
                self.give_back_primes(primes, from);
            }
            return Err(storage(e));
        }
        Ok((primes, from))
    }

    /// Puts a primes set no session used back where it came from (a sealed record is
    /// written again, pending until the batch commits).
    fn give_back_primes(&mut self, primes: Primes, from: PrimesFrom) {
        match from {
            PrimesFrom::Sealed(id) => {
                let _ = self.platform.remove(&used_record(&id));
                let _ = self.platform.seal(&id, &primes.to_sealed_bytes());
            }
            PrimesFrom::Pool => self.threshold.primes.give_back(primes),
        }
    }

    /// Ends a key generation's sessions in its host and returns unused primes.
    pub(super) fn release_dkg(&mut self, dkg: Dkg) {
        if let Some(host) = &self.threshold.dkg_host {
            host.abort_deferred(dkg.keygen_id);
            host.abort_deferred(dkg.aux_id);
        }
        if let Some((primes, from)) = dkg.primes {
            self.give_back_primes(primes, from);
        }
    }

    /// [`Request::ThresholdFeed`] of a key generation (the envelope checks of
    /// `threshold_feed` passed): each message is verified and queued on the host (or held, if
    /// aux-info has not started here yet), then what the host finishes within
    /// [`DKG_COLLECT_WAIT`] is collected.
    pub(super) fn dkg_feed(
        &mut self,
        session: SessionRef,
        mut live: Live,
        own_scalar: &[u8],
        messages: &[ThresholdMessage],
    ) -> Outcome {
        for m in messages {
            let (phase, declared, bytes) = match self.open_message(&session, &live, own_scalar, m) {
                Ok(opened) => opened,
                Err(fault) => return Err(self.abort_for(&session, live, fault)),
            };
            let stage = Stage::of(phase);
            let dkg = dkg_of(&mut live);
            match (stage, dkg.stage) {
                // Keygen (or everything) is over here: a relayed repeat.
                (Stage::Keygen, Stage::AuxInfo) => {}
                (Stage::AuxInfo, _) if dkg.aux.is_some() => {}
                (Stage::AuxInfo, Stage::Keygen) => {
                    if dkg
                        .early
                        .iter()
                        .any(|(f, _, b)| *f == m.sender && b[..] == bytes[..])
                    {
                        continue;
                    }
                    if dkg.early.len() >= MAX_EARLY_MESSAGES {
                        let phase = live.phase;
                        return Err(self.abort_live(
                            &session,
                            live,
                            &[m.sender],
                            phase,
                            format!(
                                "more than {MAX_EARLY_MESSAGES} aux-info messages before key \
                                 generation finished"
                            ),
                        ));
                    }
                    dkg.early.push((m.sender, declared, bytes));
                }
                (stage, _) => {
                    let host = self
                        .threshold
                        .dkg_host
                        .as_ref()
                        .expect("a live key generation has its host");
                    let pending =
                        host.feed_deferred(dkg.host_id(stage), m.sender, declared, &bytes);
                    dkg.queue.push_back(Job::Feed(stage, pending));
                }
            }
        }
        self.dkg_collect(session, live)
    }

    /// Collects the host's answers in order, for at most [`DKG_COLLECT_WAIT`]: messages are
    /// wrapped into envelopes, keygen's output starts aux-info, aux-info's output finishes
    /// the key. At most [`MAX_DKG_ANSWER_BYTES`] of messages are answered; the rest wait
    /// for the next call (and the key for the last of them).
    fn dkg_collect(&mut self, session: SessionRef, mut live: Live) -> Outcome {
        let wait_until = Instant::now() + DKG_COLLECT_WAIT;
        loop {
            let dkg = dkg_of(&mut live);
            let Some(job) = dkg.queue.front() else {
                break;
            };
            let Some(result) = job.wait(wait_until.saturating_duration_since(Instant::now()))
            else {
                break;
            };
            let stage = job.stage();
            dkg.queue.pop_front();
            if stage != dkg.stage || dkg.aux.is_some() {
                // An answer about a finished stage (a repeat fed meanwhile).
                continue;
            }
            let step = match result {
                Ok(step) => step,
                Err(e) => return Err(self.abort_for(&session, live, Fault::Session(e))),
            };
            let (out, output) = match step {
                Step::Duplicate => continue,
                Step::Continue(out) => (out, None),
                Step::Done { output, outgoing } => (outgoing, Some(output)),
            };
            match self.emit(&session, &live, out) {
                Ok(msgs) => dkg_of(&mut live).outbox.extend(msgs),
                Err(e) => {
                    let phase = live.phase;
                    return Err(self.abort_live(&session, live, &[], phase, e.to_string()));
                }
            }
            match (stage, output) {
                (_, None) => {}
                (Stage::Keygen, Some(Output::Incomplete(core))) => {
                    if let Err(detail) = self.begin_aux_info(&mut live, core) {
                        return Err(self.abort_live(&session, live, &[], Phase::Keygen, detail));
                    }
                }
                (Stage::AuxInfo, Some(Output::Aux(aux))) => {
                    dkg_of(&mut live).aux = Some(aux);
                }
                (_, Some(other)) => {
                    let phase = live.phase;
                    let detail = format!("the session produced {other:?}");
                    return Err(self.abort_live(&session, live, &[], phase, detail));
                }
            }
        }
        let dkg = dkg_of(&mut live);
        let outgoing = take_answer(&mut dkg.outbox);
        if dkg.outbox.is_empty() {
            if let Some(aux) = dkg.aux.take() {
                return self.finish_dkg(session, live, aux, outgoing);
            }
        }
        let computing = dkg.computing();
        let phase = live.phase.as_str().into();
        self.threshold.live.insert(session, live);
        Ok(Response::ThresholdKeygenRound {
            session,
            phase,
            outgoing,
            computing,
            key: None,
        })
    }

    /// Keygen finished here: checks its output against the approved terms, starts aux-info
    /// with the session's primes, and queues the aux-info messages that came early.
    fn begin_aux_info(&mut self, live: &mut Live, core: IncompleteShare) -> Result<(), String> {
        let (my_position, deadline) = (live.my_position, live.deadline);
        let dkg = dkg_of(live);
        let n = dkg.clusters.len();
        if core.index() != my_position
            || usize::from(core.n()) != n
            || core.threshold() != dkg.threshold
            || core.is_hd() != dkg.hd
        {
            return Err(format!(
                "keygen made share {} of a {}-of-{} key (HD: {}), not share {my_position} of \
                 the approved {}-of-{n} (HD: {})",
                core.index(),
                core.threshold(),
                core.n(),
                core.is_hd(),
                dkg.threshold,
                dkg.hd
            ));
        }
        let Some((primes, _)) = dkg.primes.take() else {
            return Err("the session's primes are gone".into());
        };
        let host = self
            .threshold
            .dkg_host
            .as_ref()
            .expect("a live key generation has its host");
        let kind = SessionKind::AuxInfo {
            my_index: my_position,
            n: n as u16,
            primes,
        };
        let pending = host.start_deferred(dkg.aux_id, kind, dkg.aux_id, deadline);
        dkg.queue.push_back(Job::Start(Stage::AuxInfo, pending));
        for (from, declared, bytes) in dkg.early.drain(..) {
            let pending = host.feed_deferred(dkg.aux_id, from, declared, &bytes);
            dkg.queue.push_back(Job::Feed(Stage::AuxInfo, pending));
        }
        dkg.core = Some(core);
        dkg.stage = Stage::AuxInfo;
        live.phase = Phase::AuxInfo;
        Ok(())
    }

    /// Aux-info finished here: joins the two halves into the share, checks it against the
    /// approved terms, consumes the request id and stores the share (both pending until the
    /// batch commits, before the answer leaves).
    fn finish_dkg(
        &mut self,
        session: SessionRef,
        mut live: Live,
        aux: custos_threshold::AuxInfo,
        outgoing: Vec<ThresholdMessage>,
    ) -> Outcome {
        let dkg = dkg_of(&mut live);
        let made = dkg
            .core
            .take()
            .ok_or_else(|| "keygen's output is gone".to_string())
            .and_then(|core| ThresholdShare::from_parts(core, aux).map_err(|e| e.to_string()))
            .and_then(|share| {
                if share.is_hd() != dkg.hd {
                    return Err("the share's HD setting differs from the approved one".into());
                }
                let info = key_info(&share, &dkg.clusters, dkg.quorum, ThresholdOrigin::Dkg)?;
                Ok(HeldKey {
                    info,
                    share,
                    policy: dkg.policy.clone(),
                })
            });
        let (meta, from_pool) = (dkg.meta.clone(), dkg.from_pool);
        let held = match made {
            Ok(h) => h,
            Err(detail) => {
                return Err(self.abort_live(&session, live, &[], Phase::AuxInfo, detail));
            }
        };
        // The proofs of aux-info show each modulus well formed, not that it is new: every
        // TEE checks that no two parties share primes and that none is the published fixture.
        if let Err(e) = held.share.check_paillier(self.threshold.test_primes) {
            self.release(live);
            return Err(primes_refused(e));
        }
        // The host already dropped both sessions; nothing of the session stays.
        self.release(live);
        self.consume_request(&meta, Some(&held.info.key_id))?;
        let info = self.store_threshold_key(held)?;
        self.keep_final_answer(session, &outgoing);
        if from_pool && self.threshold.generate_primes {
            // Keep one set ready for the next key generation.
            self.threshold.primes.refill();
        }
        Ok(Response::ThresholdKeygenRound {
            session,
            phase: Phase::AuxInfo.as_str().into(),
            outgoing,
            computing: false,
            key: Some(info),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> ThresholdMessage {
        ThresholdMessage {
            session: SessionRef {
                request_id: [1; 16],
                attempt: 0,
            },
            sender: 0,
            recipient: Some(1),
            phase: "auxInfo".into(),
            round: 2,
            enc: vec![0; 65],
            payload: vec![0; len],
            signature: vec![0; 70],
        }
    }

    #[test]
    fn answers_are_cut_at_the_byte_budget_in_order() {
        let mib = 1024 * 1024;
        let mut outbox: VecDeque<ThresholdMessage> =
            [mib, mib, mib, 10, 4 * mib].map(message).into();
        let sizes =
            |v: Vec<ThresholdMessage>| v.iter().map(|m| m.payload.len()).collect::<Vec<_>>();
        assert_eq!(sizes(take_answer(&mut outbox)), [mib, mib]);
        assert_eq!(sizes(take_answer(&mut outbox)), [mib, 10]);
        // A message over the budget still goes, alone.
        assert_eq!(sizes(take_answer(&mut outbox)), [4 * mib]);
        assert!(take_answer(&mut outbox).is_empty());
    }
}
