//! Threshold keys (patent FIG. 5, 12–15; \[0069\]–\[0085\]): imports of dealer bundles,
//! keys made by distributed key generation across all n clusters, and signing sessions
//! orchestrated across t clusters.
//!
//! The cloud server chooses the participants and relays the protocol's messages between
//! their TEEs, nothing more: point-to-point payloads are sealed to the receiving node and
//! every message is signed by its sender's device key D, so messages are routed here
//! unread and unaltered. Every TEE answer is verified against the serving node's certified
//! D key ([`Clusters::tee_call`]), and the final signature independently with libsecp256k1
//! against the child of the joint key at the approved path.
//!
//! A session runs as exchanges: every participant with pending messages gets one
//! `ThresholdFeed` (all participants concurrently), and the messages it returns are routed
//! to their recipients for the next exchange, until every participant returned its output
//! (the signature, or its share of the new key). The same loop runs both kinds ([`Run`]).
//! A key generation's aux-info steps compute for seconds: its TEEs answer `computing` and
//! are polled with empty feeds until their messages are ready, so no call waits long. Any
//! failure — a refusal, an abort naming a culprit, an unreachable cluster, a stall, the
//! time limit — aborts the session in the other participants and leaves the request
//! `failed` (a retry makes the next attempt, possibly with other clusters) or, when no
//! retry can help (approvals), `refused`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint};
use bitcoin::NetworkKind;
use custos_threshold_public::Phase;
use custos_wire::approval::THRESHOLD_SCOPE;
use custos_wire::protocol::{audit_digest, format_path, MAX_AUDIT_MESSAGE};
use custos_wire::protocol::{
    CertChain, PresignSignParams, PresignatureInfo, SessionRef, ThresholdBundle, ThresholdKeyInfo,
    ThresholdKeygenParams, ThresholdMessage, ThresholdOrigin, ThresholdSignParams, ThresholdSigner,
    MAX_PRESIGN_MESSAGE, MAX_THRESHOLD_ATTEMPTS, MAX_THRESHOLD_MESSAGES,
};

use super::*;

mod presign;
use crate::approval::parse_key_id;

/// Largest dealer bundle accepted (decoded bytes; its hex is twice as long).
pub const MAX_BUNDLE: usize = 256 * 1024;
/// Most clusters (shares) a threshold key may span (the TEE core's limit).
pub const MAX_THRESHOLD_CLUSTERS: usize = custos_wire::threshold::MAX_THRESHOLD_PARTIES;
/// Most message exchanges one signing session may take (cggmp24 signing needs about five).
pub const MAX_THRESHOLD_EXCHANGES: u32 = 32;
/// Longest a signing session may run, from its start to the last signature.
pub const THRESHOLD_SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Most message exchanges one key generation may take (keygen and aux-info need about
/// ten; the empty feeds that collect computed messages are not counted, the time limit
/// bounds them).
pub const MAX_KEYGEN_EXCHANGES: u32 = 64;
/// Longest a key generation may run (the TEEs' own session limit): aux-info generation
/// takes tens of seconds for three clusters and grows with n.
pub const THRESHOLD_KEYGEN_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause before an exchange of empty feeds only (every participant still computing).
const POLL_PAUSE: Duration = Duration::from_millis(20);
/// Time allowed for cluster status probes when choosing participants.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the (best-effort) aborts sent after a failure.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of messages in one `ThresholdFeed` (the TEE takes requests of up to 4 MiB).
const FEED_MAX_BYTES: usize = 3 * 1024 * 1024;
/// Longest abort reason sent to a TEE.
const MAX_ABORT_REASON: usize = 512;

/// The patent's phases, in protocol order (for logs and "how far it got").
const PHASES: [&str; 4] = phase_names(Phase::SIGNING);
/// The phases of a key generation, in protocol order.
const KEYGEN_PHASES: [&str; 2] = phase_names(Phase::KEY_GENERATION);
/// The phase of a presignature session (getAB, getAB_and_R and getR ahead of the message;
/// getSig is the online step).
const PRESIGN_PHASES: [&str; 1] = phase_names(Phase::PRESIGNING);

const fn phase_names<const N: usize>(phases: [Phase; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = phases[i].as_str();
        i += 1;
    }
    out
}

/// What a session makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// A signature, by t clusters.
    Sign,
    /// A new key, by all n clusters.
    Keygen,
    /// A presignature, by t clusters.
    Presign,
}

impl Run {
    fn phases(self) -> &'static [&'static str] {
        match self {
            Run::Sign => &PHASES,
            Run::Keygen => &KEYGEN_PHASES,
            Run::Presign => &PRESIGN_PHASES,
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Run::Sign | Run::Presign => THRESHOLD_SESSION_TIMEOUT,
            Run::Keygen => THRESHOLD_KEYGEN_TIMEOUT,
        }
    }

    fn max_exchanges(self) -> u32 {
        match self {
            Run::Sign | Run::Presign => MAX_THRESHOLD_EXCHANGES,
            Run::Keygen => MAX_KEYGEN_EXCHANGES,
        }
    }

    fn output(self) -> &'static str {
        match self {
            Run::Sign => "signature",
            Run::Keygen => "key",
            Run::Presign => "presignature",
        }
    }
}

/// What a participant returned at the end of a session.
#[derive(Clone, Debug, PartialEq)]
enum Output {
    Signature(EcdsaSignature),
    Key(ThresholdKeyInfo),
    Presignature(PresignatureInfo),
}

/// One answer of a participant, whatever the session makes.
struct Round {
    session: SessionRef,
    phase: String,
    outgoing: Vec<ThresholdMessage>,
    computing: bool,
    output: Option<Output>,
}

impl Round {
    /// The round answer of a session of kind `run`, or the name of what came instead.
    fn of(run: Run, r: Response) -> Result<Round, String> {
        match (run, r) {
            (
                Run::Sign,
                Response::ThresholdRound {
                    session,
                    phase,
                    outgoing,
                    signature,
                },
            ) => Ok(Round {
                session,
                phase,
                outgoing,
                computing: false,
                output: signature.map(Output::Signature),
            }),
            (
                Run::Keygen,
                Response::ThresholdKeygenRound {
                    session,
                    phase,
                    outgoing,
                    computing,
                    key,
                },
            ) => Ok(Round {
                session,
                phase,
                outgoing,
                computing,
                output: key.map(Output::Key),
            }),
            (
                Run::Presign,
                Response::ThresholdPresignRound {
                    session,
                    phase,
                    outgoing,
                    presignature,
                },
            ) => Ok(Round {
                session,
                phase,
                outgoing,
                computing: false,
                output: presignature.map(Output::Presignature),
            }),
            (_, r) => Err(response_name(&r)),
        }
    }
}

/// Whether an answer leaves the session open at the participant (a round without output),
/// so that more of its messages may be fed.
fn still_open(a: &Result<TeeAnswer, CallError>) -> bool {
    matches!(
        a,
        Ok(TeeAnswer {
            outcome: Ok(Response::ThresholdRound {
                signature: None,
                ..
            } | Response::ThresholdKeygenRound { key: None, .. }
                | Response::ThresholdPresignRound {
                    presignature: None,
                    ..
                }),
            ..
        })
    )
}

/// Decodes and checks a dealer bundle from hex (the TEE checks the dealer's signature and
/// opens the share; this checks what the cloud server relies on).
pub fn decode_bundle(text: &str) -> Result<ThresholdBundle, String> {
    if text.len() > 2 * MAX_BUNDLE {
        return Err(format!(
            "bundle is {} hex characters, at most {} ({MAX_BUNDLE} bytes)",
            text.len(),
            2 * MAX_BUNDLE
        ));
    }
    let bytes = hex::decode(text).map_err(|_| "bundle_hex is not hex".to_string())?;
    let (bundle, rest) = postcard::take_from_bytes::<ThresholdBundle>(&bytes)
        .map_err(|e| format!("not a dealer bundle: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the bundle", rest.len()));
    }
    check_threshold_key_info(&bundle.key)?;
    Ok(bundle)
}

/// Checks the public facts of a threshold share with the TEE core's own rules: a
/// compressed point as key id, 2 ≤ t ≤ n ≤ [`MAX_THRESHOLD_CLUSTERS`], distinct valid
/// cluster names, the share index among the n, a usable quorum.
pub fn check_threshold_key_info(k: &ThresholdKeyInfo) -> Result<(), String> {
    custos_wire::threshold::check_key_info(k)
}

/// The extended public key (depth 0, mainnet version bytes like the TEE's wallets) of a
/// threshold key with HD derivation.
pub fn threshold_xpub(key_id: &[u8], chain_code: &[u8; 32]) -> Result<Xpub, String> {
    Ok(Xpub {
        network: NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::from([0u8; 4]),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: PublicKey::from_slice(key_id).map_err(|e| format!("key id: {e}"))?,
        chain_code: ChainCode::from(*chain_code),
    })
}

fn origin_name(o: ThresholdOrigin) -> &'static str {
    match o {
        ThresholdOrigin::Dealer => "dealer",
        ThresholdOrigin::Dkg => "dkg",
    }
}

fn key_row(k: &ThresholdKeyInfo, now_ms: u64, request: &str) -> ThresholdKeyRow {
    ThresholdKeyRow {
        key_id: hex::encode(&k.key_id),
        threshold: k.threshold,
        clusters: k.clusters.clone(),
        quorum: k.quorum,
        chain_code: k.chain_code.map(hex::encode),
        origin: origin_name(k.origin).to_string(),
        created_at: now_ms,
        created_by_request: request.to_string(),
    }
}

fn chain_code_of(key: &ThresholdKeyRow) -> Result<Option<[u8; 32]>, String> {
    key.chain_code
        .as_deref()
        .map(|c| parse_digest(c).map_err(|_| "recorded chain code is not 32 bytes of hex".into()))
        .transpose()
}

/// The recorded key's xpub, when it has a chain code.
fn key_xpub(key: &ThresholdKeyRow) -> Result<Option<Xpub>, String> {
    let key_id = hex::decode(&key.key_id).map_err(|e| e.to_string())?;
    chain_code_of(key)?
        .map(|c| threshold_xpub(&key_id, &c))
        .transpose()
}

fn threshold_key_view(key: &ThresholdKeyRow, shares: &[ThresholdShareRow]) -> ThresholdKeyView {
    let xpub = key_xpub(key).ok().flatten().map(|x| x.to_string());
    let mine: Vec<&ThresholdShareRow> = shares.iter().filter(|s| s.key_id == key.key_id).collect();
    ThresholdKeyView {
        key_id: key.key_id.clone(),
        xpub,
        threshold: key.threshold,
        clusters: key.clusters.clone(),
        quorum: key.quorum,
        origin: key.origin.clone(),
        shares: mine
            .iter()
            .map(|s| ThresholdShareView {
                share_index: s.share_index,
                cluster: s.cluster.clone(),
                node: s.node.clone(),
                imported_at_ms: s.imported_at,
                request_id: s.request_id.clone(),
            })
            .collect(),
        missing_shares: (0..key.clusters.len() as u16)
            .filter(|i| !mine.iter().any(|s| s.share_index == *i))
            .collect(),
        created_at_ms: key.created_at,
        created_by_request: key.created_by_request.clone(),
    }
}

/// Link request id of a participant's `ThresholdStart`: the same for every send of one
/// attempt to one cluster, so that the link's exactly-once store answers a resend with the
/// first answer instead of opening the session twice.
pub(crate) fn start_link_id(request_id: &[u8; 16], attempt: u8, cluster: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"custos-threshold-start");
    h.update(request_id);
    h.update([attempt]);
    h.update(cluster.as_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// Refusals no retry can fix: the approvals themselves are wrong or void.
fn final_refusal(e: &TeeError) -> bool {
    matches!(
        e,
        TeeError::ApprovalMissing
            | TeeError::ApprovalRejected { .. }
            | TeeError::QuorumNotMet { .. }
            | TeeError::RequestExpired { .. }
            | TeeError::InvalidPath(_)
    )
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn phase_rank(run: Run, p: &str) -> usize {
    run.phases().iter().position(|x| *x == p).unwrap_or(0)
}

/// The participants as a TEE request names them, in session order.
fn signers_of(participants: &[Participant]) -> Vec<ThresholdSigner> {
    participants
        .iter()
        .map(|p| ThresholdSigner {
            share_index: p.share_index,
            chain: p.chain.clone(),
        })
        .collect()
}

/// One participant of a session.
#[derive(Clone, Debug)]
struct Participant {
    cluster: String,
    node: String,
    share_index: u16,
    chain: CertChain,
}

/// Why a session (or choosing its participants) ended without a signature.
#[derive(Debug)]
struct Abort {
    code: String,
    message: String,
    /// Clusters at fault (or that could not take part), when known.
    blamed: Vec<String>,
    /// No retry can help.
    final_: bool,
}

impl Abort {
    fn new(code: &str, message: String, blamed: Vec<String>) -> Self {
        Abort {
            code: code.to_string(),
            message,
            blamed,
            final_: false,
        }
    }

    /// Several participants failed in the same exchange: one abort naming all of them,
    /// with the first TEE's code if a TEE refused.
    fn merge(mut aborts: Vec<Abort>) -> Option<Abort> {
        if aborts.len() <= 1 {
            return aborts.pop();
        }
        let code = aborts
            .iter()
            .find(|a| a.code.starts_with("tee_"))
            .unwrap_or(&aborts[0])
            .code
            .clone();
        let mut blamed: Vec<String> = Vec::new();
        for b in aborts.iter().flat_map(|a| a.blamed.iter()) {
            if !blamed.contains(b) {
                blamed.push(b.clone());
            }
        }
        Some(Abort {
            code,
            message: aborts
                .iter()
                .map(|a| a.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            blamed,
            final_: aborts.iter().any(|a| a.final_),
        })
    }
}

/// A running session as the cloud server sees it.
struct Session<'a> {
    run: Run,
    session: SessionRef,
    participants: &'a [Participant],
    /// Phase each participant last reported.
    phase: Vec<String>,
    /// Output each participant returned, once done.
    output: Vec<Option<Output>>,
    /// Messages waiting for each participant.
    pending: Vec<Vec<ThresholdMessage>>,
    /// Participants still computing on messages already delivered (to be polled).
    computing: Vec<bool>,
    /// Participants whose TEE already ended the session (refused or aborted it).
    ended: Vec<bool>,
    /// Participants being called right now.
    in_flight: Vec<usize>,
    /// Exchanges that delivered messages.
    exchanges: u32,
    /// Exchanges of empty feeds only (collecting computed messages).
    polls: u32,
}

impl<'a> Session<'a> {
    fn new(run: Run, session: SessionRef, participants: &'a [Participant]) -> Self {
        let n = participants.len();
        Session {
            run,
            session,
            participants,
            phase: vec![run.phases()[0].to_string(); n],
            output: vec![None; n],
            pending: vec![Vec::new(); n],
            computing: vec![false; n],
            ended: vec![false; n],
            in_flight: Vec::new(),
            exchanges: 0,
            polls: 0,
        }
    }

    fn done(&self) -> bool {
        self.output.iter().all(Option::is_some)
    }

    /// The furthest phase any participant reported.
    fn phase(&self) -> String {
        self.phase
            .iter()
            .max_by_key(|p| phase_rank(self.run, p))
            .cloned()
            .unwrap_or_else(|| self.run.phases()[0].to_string())
    }

    fn clusters(&self, positions: impl IntoIterator<Item = usize>) -> Vec<String> {
        positions
            .into_iter()
            .map(|i| self.participants[i].cluster.clone())
            .collect()
    }

    fn unfinished(&self) -> Vec<usize> {
        (0..self.participants.len())
            .filter(|&i| self.output[i].is_none())
            .collect()
    }

    fn stalled(&self, why: &str) -> Abort {
        let waiting = self.clusters(self.unfinished());
        Abort::new(
            "threshold_aborted",
            format!(
                "session {} stalled in {} ({why}); not finished: {}",
                session_text(&self.session),
                self.phase(),
                names(&waiting)
            ),
            waiting,
        )
    }

    fn timed_out(&self) -> Abort {
        let waiting = if self.in_flight.is_empty() {
            self.clusters(self.unfinished())
        } else {
            self.clusters(self.in_flight.iter().copied())
        };
        Abort::new(
            "threshold_aborted",
            format!(
                "session {} timed out after {} s in {}, waiting for {}",
                session_text(&self.session),
                self.run.timeout().as_secs(),
                self.phase(),
                names(&waiting)
            ),
            waiting,
        )
    }

    /// Takes one participant's answer: its messages are routed to their recipients, its
    /// output kept; a refusal or a malformed answer is an abort naming it.
    fn absorb(&mut self, pos: usize, answer: Result<TeeAnswer, CallError>) -> Result<(), Abort> {
        let p = &self.participants[pos];
        let at = self.phase[pos].clone();
        let bad = |what: String| {
            Abort::new(
                "threshold_aborted",
                format!(
                    "cluster {} (node {}) misbehaved in {at}: {what}",
                    p.cluster, p.node
                ),
                vec![p.cluster.clone()],
            )
        };
        let response = match answer {
            Err(e) => {
                return Err(Abort::new(
                    "threshold_aborted",
                    format!(
                        "cluster {} (node {}) failed in {at}: {e}",
                        p.cluster, p.node
                    ),
                    vec![p.cluster.clone()],
                ))
            }
            Ok(TeeAnswer {
                outcome: Err(e), ..
            }) => {
                self.ended[pos] = true;
                return Err(match e {
                    TeeError::ThresholdAborted {
                        ref session,
                        ref blamed,
                        ref phase,
                        ref detail,
                    } => {
                        let blamed = if blamed.is_empty() {
                            vec![p.cluster.clone()]
                        } else {
                            blamed.clone()
                        };
                        Abort::new(
                            &tee_code(&e),
                            format!(
                                "cluster {} aborted session {session} in {phase}: {detail} \
                                 (blamed: {})",
                                p.cluster,
                                names(&blamed)
                            ),
                            blamed,
                        )
                    }
                    e => Abort {
                        final_: final_refusal(&e),
                        ..Abort::new(
                            &tee_code(&e),
                            format!(
                                "cluster {} (node {}) refused in {at}: {e}",
                                p.cluster, p.node
                            ),
                            vec![p.cluster.clone()],
                        )
                    },
                });
            }
            Ok(TeeAnswer { outcome: Ok(r), .. }) => r,
        };
        let Round {
            session,
            phase,
            outgoing,
            computing,
            output,
        } = Round::of(self.run, response)
            .map_err(|r| bad(format!("answered {r} instead of a session round")))?;
        if computing && output.is_some() {
            return Err(bad(format!(
                "returned its {} while still computing",
                self.run.output()
            )));
        }
        if session != self.session {
            return Err(bad(format!(
                "answered for session {}",
                session_text(&session)
            )));
        }
        let n = self.participants.len();
        for m in &outgoing {
            if m.session != self.session {
                return Err(bad(format!(
                    "sent a message of session {}",
                    session_text(&m.session)
                )));
            }
            if usize::from(m.sender) != pos {
                return Err(bad(format!(
                    "sent a message as participant {} (it is {pos})",
                    m.sender
                )));
            }
            if let Some(r) = m.recipient {
                if usize::from(r) >= n || usize::from(r) == pos {
                    return Err(bad(format!("sent a message to participant {r}")));
                }
            }
        }
        // Shown in logs and errors only; a TEE names its phase in a few characters.
        self.phase[pos] = phase.chars().take(32).collect();
        for m in outgoing {
            match m.recipient {
                Some(r) => self.pending[usize::from(r)].push(m),
                None => {
                    for q in (0..n).filter(|&q| q != pos) {
                        self.pending[q].push(m.clone());
                    }
                }
            }
        }
        self.computing[pos] = computing;
        if let Some(o) = output {
            self.output[pos] = Some(o);
        }
        Ok(())
    }

    fn absorb_all(
        &mut self,
        answers: Vec<(usize, Result<TeeAnswer, CallError>)>,
    ) -> Result<(), Abort> {
        let mut aborts = Vec::new();
        for (pos, a) in answers {
            if let Err(e) = self.absorb(pos, a) {
                aborts.push(e);
            }
        }
        match Abort::merge(aborts) {
            Some(a) => Err(a),
            None => Ok(()),
        }
    }

    /// The pending messages of `pos` in feeds within the TEE's limits.
    fn take_batches(&mut self, pos: usize) -> Vec<Vec<ThresholdMessage>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for m in std::mem::take(&mut self.pending[pos]) {
            let size = m.payload.len() + m.enc.len() + m.signature.len() + m.phase.len() + 64;
            if !batch.is_empty()
                && (batch.len() >= MAX_THRESHOLD_MESSAGES || bytes + size > FEED_MAX_BYTES)
            {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(m);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }
}

/// Verifies a threshold signature for the key's child at `path` (low-s, `v`, the child
/// derived from the recorded key).
fn verify_threshold_result(
    secp: &Secp256k1<All>,
    key: &ThresholdKeyRow,
    path: &[u32],
    digest: &[u8; 32],
    sig: &EcdsaSignature,
) -> Result<SignResult, String> {
    // Without a chain code only the key itself signs (path m, checked at creation); a zero
    // chain code then stands in, derivation along an empty path being the identity.
    let key_id = hex::decode(&key.key_id).map_err(|e| e.to_string())?;
    let chain_code = chain_code_of(key)?;
    if chain_code.is_none() && !path.is_empty() {
        return Err("a key without chain code signed with a path".into());
    }
    let xpub = threshold_xpub(&key_id, &chain_code.unwrap_or([0u8; 32]))?.to_string();
    verify_sign_result(secp, digest, path, Some(&xpub), sig)
}

/// The attempt a `submitting` threshold request is at (its first is 0), or why it ends
/// (refused) when every attempt its approvals allow was used.
fn attempt_of(row: &RequestRow) -> Result<u8, Failure> {
    let attempt = row.attempts.saturating_sub(1);
    if attempt >= u32::from(MAX_THRESHOLD_ATTEMPTS) {
        return Err(Failure::new(
            "threshold_attempts_exhausted",
            format!(
                "all {MAX_THRESHOLD_ATTEMPTS} attempts of this approved request were used; a new \
                 request needs new approvals"
            ),
        ));
    }
    Ok(attempt as u8)
}

fn session_text(s: &SessionRef) -> String {
    format!("{}/{}", hex::encode(s.request_id), s.attempt)
}

impl Cloud {
    /// `POST /v1/threshold/keys/import`: records an `import_threshold_key` request for the
    /// node the bundle is sealed to.
    pub async fn import_threshold_key(
        &self,
        caller: &str,
        body: ImportThresholdKeyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let bundle =
            decode_bundle(&body.bundle_hex).map_err(|m| ApiError::new("invalid_bundle", m))?;
        let key = &bundle.key;
        let cluster = key.clusters[usize::from(key.share_index)].clone();
        self.cluster_config(&cluster)?;
        let key_id = hex::encode(&key.key_id);
        if let Some(recorded) = self.store.threshold_key(&key_id).await? {
            if let Some(why) = recorded.disagreement(&key_row(key, 0, "")) {
                return Err(ApiError::new("threshold_key_mismatch", why));
            }
        }
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        let node = self
            .bundle_recipient(&cluster, &bundle.recipient_fingerprint)
            .await?;
        let quorum = key.quorum;
        self.create(
            caller,
            Draft {
                cluster,
                quorum,
                terms: Terms::ImportThresholdKey { node, bundle },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// The node of `cluster` whose device certificate has SHA-256 `fingerprint`.
    async fn bundle_recipient(
        &self,
        cluster: &str,
        fingerprint: &[u8; 32],
    ) -> Result<String, ApiError> {
        let status = self
            .clusters
            .status(cluster, true)
            .await
            .map_err(call_api_error)?;
        let checks = status.nodes.iter().map(|n| async move {
            let chain = self.clusters.device_chain(cluster, &n.node).await;
            (n.node.clone(), chain)
        });
        let mut unreachable = Vec::new();
        for (node, chain) in futures::future::join_all(checks).await {
            match chain {
                Ok(c) => {
                    let fp: [u8; 32] = Sha256::digest(&c.device).into();
                    if &fp == fingerprint {
                        return Ok(node);
                    }
                }
                Err(e) => unreachable.push(format!("{node}: {e}")),
            }
        }
        let what = format!(
            "no node of cluster {cluster} has the device certificate the bundle is sealed to \
             (SHA-256 {})",
            hex::encode(fingerprint)
        );
        if unreachable.is_empty() {
            Err(ApiError::new("bundle_recipient_unknown", what))
        } else {
            Err(ApiError::new(
                "cluster_unavailable",
                format!("{what}; unreachable: {}", unreachable.join("; ")),
            ))
        }
    }

    /// Checks the TEE's answer to an import against the bundle and builds what is recorded.
    pub(super) fn check_threshold_share(
        &self,
        row: &RequestRow,
        sealed_to: &str,
        bundle: &ThresholdBundle,
        node: &str,
        info: &ThresholdKeyInfo,
    ) -> Result<(RequestResult, ThresholdKeyRow, ThresholdShareRow), String> {
        if *info != bundle.key {
            return Err(format!(
                "the TEE imported {info:?}, the bundle carries {:?}",
                bundle.key
            ));
        }
        if sealed_to != node {
            return Err(format!(
                "imported by node {node}, the bundle is sealed to {sealed_to}"
            ));
        }
        let now = self.now_ms();
        let key = key_row(info, now, &row.id);
        let share = ThresholdShareRow {
            key_id: key.key_id.clone(),
            share_index: info.share_index,
            cluster: row.cluster.clone(),
            node: node.to_string(),
            imported_at: now,
            request_id: row.id.clone(),
        };
        let result = RequestResult::ThresholdShare(ThresholdShareResult {
            key_id: key.key_id.clone(),
            share_index: info.share_index,
            cluster: row.cluster.clone(),
            node: node.to_string(),
            xpub: key_xpub(&key)?.map(|x| x.to_string()),
        });
        Ok((result, key, share))
    }

    /// `GET /v1/threshold/keys`.
    pub async fn threshold_keys(&self) -> Result<ThresholdKeyList, ApiError> {
        let keys = self.store.threshold_keys().await?;
        let shares = self.store.threshold_shares(None).await?;
        Ok(ThresholdKeyList {
            keys: keys
                .iter()
                .map(|k| threshold_key_view(k, &shares))
                .collect(),
        })
    }

    async fn threshold_key_row(&self, key_id: &str) -> Result<ThresholdKeyRow, ApiError> {
        parse_key_id(key_id).map_err(|m| ApiError::new("invalid_key_id", m))?;
        self.store
            .threshold_key(&key_id.to_ascii_lowercase())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    "unknown_threshold_key",
                    format!("no threshold key {key_id}"),
                )
            })
    }

    /// `GET /v1/threshold/keys/{key_id}`.
    pub async fn threshold_key(&self, key_id: &str) -> Result<ThresholdKeyView, ApiError> {
        let key = self.threshold_key_row(key_id).await?;
        let shares = self.store.threshold_shares(Some(&key.key_id)).await?;
        Ok(threshold_key_view(&key, &shares))
    }

    /// `POST /v1/threshold/sign`: records a `threshold_sign` request (cluster
    /// `*threshold*`); the clusters the caller named are part of its terms.
    pub async fn threshold_sign(
        &self,
        caller: &str,
        body: ThresholdSignBody,
    ) -> Result<RequestOutcome, ApiError> {
        let key_id = parse_key_id(&body.key_id).map_err(|m| ApiError::new("invalid_key_id", m))?;
        let path =
            parse_path(&body.path).map_err(|e| ApiError::new("invalid_path", e.to_string()))?;
        if has_hardened(&path) {
            return Err(ApiError::new(
                "hardened_path",
                format!(
                    "{}: threshold keys derive non-hardened children only",
                    format_path(&path)
                ),
            ));
        }
        let message = match &body.message {
            None => None,
            Some(m) => {
                let bytes = hex::decode(m)
                    .map_err(|e| ApiError::new("invalid_message", format!("message: {e}")))?;
                if bytes.len() > MAX_PRESIGN_MESSAGE {
                    return Err(ApiError::new(
                        "invalid_message",
                        format!(
                            "message of {} bytes, at most {MAX_PRESIGN_MESSAGE}",
                            bytes.len()
                        ),
                    ));
                }
                Some(bytes)
            }
        };
        let digest = match &message {
            Some(m) => {
                let d: [u8; 32] = Sha256::digest(m).into();
                if !body.digest.is_empty() && !body.digest.eq_ignore_ascii_case(&hex::encode(d)) {
                    return Err(ApiError::new(
                        "invalid_message",
                        "the digest given is not SHA-256 of the message",
                    ));
                }
                d
            }
            None => parse_digest(&body.digest).map_err(|m| ApiError::new("invalid_digest", m))?,
        };
        if let Some(list) = &body.clusters {
            if list.is_empty() || list.len() > MAX_THRESHOLD_CLUSTERS {
                return Err(ApiError::new(
                    "invalid_clusters",
                    format!("name 1 to {MAX_THRESHOLD_CLUSTERS} clusters"),
                ));
            }
            for c in list {
                self.cluster_config(c)?;
            }
        }
        let key = self.threshold_key_row(&body.key_id).await?;
        if key.chain_code.is_none() && !path.is_empty() {
            return Err(ApiError::new(
                "invalid_path",
                format!(
                    "threshold key {} has no chain code (no HD derivation): only path m",
                    key.key_id
                ),
            ));
        }
        let clusters = match &body.clusters {
            None => None,
            Some(list) => {
                let mut seen = HashSet::new();
                for c in list {
                    if !seen.insert(c.as_str()) {
                        return Err(ApiError::new(
                            "invalid_clusters",
                            format!("cluster {c} named twice"),
                        ));
                    }
                    if !key.clusters.contains(c) {
                        return Err(ApiError::new(
                            "invalid_clusters",
                            format!(
                                "cluster {c} holds no share of threshold key {} (its clusters: {})",
                                key.key_id,
                                key.clusters.join(", ")
                            ),
                        ));
                    }
                }
                if list.len() < usize::from(key.threshold) {
                    return Err(ApiError::new(
                        "invalid_clusters",
                        format!(
                            "{} clusters named, threshold key {} needs {}",
                            list.len(),
                            key.key_id,
                            key.threshold
                        ),
                    ));
                }
                Some(list.clone())
            }
        };
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: THRESHOLD_SCOPE.to_string(),
                quorum: key.quorum,
                terms: Terms::ThresholdSign {
                    key_id,
                    path,
                    digest,
                    message,
                    clusters,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// Runs a `submitting` threshold sign request as one session attempt and records the
    /// outcome.
    pub(super) async fn execute_threshold(
        &self,
        row: RequestRow,
    ) -> Result<RequestRow, StoreError> {
        let attempt = match attempt_of(&row) {
            Ok(a) => a,
            Err(f) => return self.finish(row, Verdict::Refused(f)).await,
        };
        let Terms::ThresholdSign {
            key_id,
            path,
            digest,
            message,
            ..
        } = row.terms.clone()
        else {
            let v = Verdict::Refused(Failure::new("bad_request_row", "not a threshold signing"));
            return self.finish(row, v).await;
        };
        let key_id = hex::encode(key_id);
        let Some(key) = self.store.threshold_key(&key_id).await? else {
            let v = Verdict::Refused(Failure::new(
                "unknown_threshold_key",
                format!("threshold key {key_id} is not recorded"),
            ));
            return self.finish(row, v).await;
        };
        let (request_id, approvals) = match (parse_request_id(&row.id), tee_approvals(&row)) {
            (Ok(i), Ok(a)) => (i, a),
            (i, a) => {
                let why = [i.err(), a.err()].into_iter().flatten().collect::<Vec<_>>();
                let v = Verdict::Refused(Failure::new(
                    "bad_request_row",
                    format!("stored request unusable: {}", why.join("; ")),
                ));
                return self.finish(row, v).await;
            }
        };
        // A full message for a key without chain code: from a presignature when one is ready.
        if let (Some(message), None, true) = (&message, &key.chain_code, path.is_empty()) {
            match self
                .sign_presigned(&row, &key, attempt, message, &digest, approvals.clone())
                .await?
            {
                presign::Online::NoneReady => {}
                presign::Online::Signed(result, by) => {
                    self.threshold_blamed
                        .lock()
                        .expect("blame lock")
                        .remove(&row.id);
                    let v =
                        Verdict::completed(by, RequestResult::Signature(result), Recorded::Nothing);
                    return self.finish(row, v).await;
                }
                presign::Online::Failed(a) => return self.threshold_failed(row, attempt, a).await,
            }
        }
        let participants = match self.threshold_participants(&row, &key).await? {
            Ok(p) => p,
            Err(a) => return self.threshold_failed(row, attempt, a).await,
        };
        let session = SessionRef {
            request_id,
            attempt,
        };
        let (row, described) = self.record_session(&row, attempt, &participants).await?;
        tracing::info!(
            request_id = %row.id,
            attempt,
            key = %key.key_id,
            participants = %described,
            "threshold session starting"
        );
        let start = encode_request(&Request::ThresholdStart {
            meta: RequestMeta {
                request_id,
                expires_at: row.expires_at,
            },
            attempt,
            params: ThresholdSignParams {
                key_id: hex::decode(&key.key_id).unwrap_or_default(),
                path: path.clone(),
                digest,
                signers: signers_of(&participants),
            },
            approvals,
        });
        let began = Instant::now();
        let mut st = Session::new(Run::Sign, session, &participants);
        if let Err(abort) = self
            .drive_session(&row.id, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
            .await
        {
            return self.threshold_failed(row, attempt, abort).await;
        }
        tracing::info!(
            request_id = %row.id,
            attempt,
            exchanges = st.exchanges,
            ms = began.elapsed().as_millis() as u64,
            "threshold session signed"
        );
        let clusters: Vec<String> = participants.iter().map(|p| p.cluster.clone()).collect();
        let verdict = self.check_threshold_signature(&key, &path, &digest, &st);
        match verdict {
            Ok(mut result) => {
                result.clusters = Some(clusters);
                self.threshold_blamed
                    .lock()
                    .expect("blame lock")
                    .remove(&row.id);
                let by = format!(
                    "{} (attempt {attempt}, {} exchanges)",
                    described, st.exchanges
                );
                let v = Verdict::completed(by, RequestResult::Signature(result), Recorded::Nothing);
                self.finish(row, v).await
            }
            Err(m) => {
                self.threshold_failed(row, attempt, Abort::new("bad_signature", m, Vec::new()))
                    .await
            }
        }
    }

    /// All participants' signatures agree and verify for the key's child at `path`.
    fn check_threshold_signature(
        &self,
        key: &ThresholdKeyRow,
        path: &[u32],
        digest: &[u8; 32],
        st: &Session<'_>,
    ) -> Result<SignResult, String> {
        let sigs: Vec<&EcdsaSignature> = st
            .output
            .iter()
            .map(|o| match o {
                Some(Output::Signature(s)) => Ok(s),
                _ => Err("a participant returned no signature".to_string()),
            })
            .collect::<Result<_, _>>()?;
        let first = *sigs.first().ok_or("no signature")?;
        if let Some(i) = sigs.iter().position(|s| *s != first) {
            return Err(format!(
                "participants disagree: {} and {} returned different signatures",
                st.participants[0].cluster, st.participants[i].cluster
            ));
        }
        verify_threshold_result(&self.secp, key, path, digest, first)
    }

    /// Records a failed attempt (retryable unless `final_`) and remembers whom it blamed.
    async fn threshold_failed(
        &self,
        row: RequestRow,
        attempt: u8,
        abort: Abort,
    ) -> Result<RequestRow, StoreError> {
        tracing::warn!(
            request_id = %row.id,
            attempt,
            code = %abort.code,
            blamed = %names(&abort.blamed),
            "threshold attempt failed: {}",
            abort.message
        );
        if !abort.blamed.is_empty() {
            let mut blamed = self.threshold_blamed.lock().expect("blame lock");
            if blamed.len() >= 10_000 {
                blamed.clear();
            }
            blamed.insert(row.id.clone(), abort.blamed.clone());
        }
        let message = format!("attempt {attempt}: {}", abort.message);
        let failure = Failure::new(abort.code, message);
        self.finish(row, Verdict::ended(failure, !abort.final_))
            .await
    }

    /// Chooses the t participants: the named clusters in order, or else the clusters
    /// with an imported share, healthy first (and those blamed by the previous attempt
    /// last); each runs on the node that imported the share, or on any healthy node of
    /// its cluster when that one is not healthy.
    async fn threshold_participants(
        &self,
        row: &RequestRow,
        key: &ThresholdKeyRow,
    ) -> Result<Result<Vec<Participant>, Abort>, StoreError> {
        let (named, blamed_before) = self.cluster_preferences(row);
        self.choose_participants(key, named, &blamed_before).await
    }

    /// The clusters a threshold request named, and those its previous attempt blamed.
    fn cluster_preferences(&self, row: &RequestRow) -> (Option<Vec<String>>, Vec<String>) {
        let named = match &row.terms {
            Terms::ThresholdSign { clusters, .. } => clusters.clone(),
            _ => None,
        };
        let blamed = self
            .threshold_blamed
            .lock()
            .expect("blame lock")
            .get(&row.id)
            .cloned()
            .unwrap_or_default();
        (named, blamed)
    }

    /// [`Cloud::threshold_participants`] for the `named` clusters (in this order) or else
    /// the healthiest holders, avoiding `blamed_before`.
    async fn choose_participants(
        &self,
        key: &ThresholdKeyRow,
        named: Option<Vec<String>>,
        blamed_before: &[String],
    ) -> Result<Result<Vec<Participant>, Abort>, StoreError> {
        let t = usize::from(key.threshold);
        let shares = self.store.threshold_shares(Some(&key.key_id)).await?;
        let candidates: Vec<String> = match &named {
            Some(list) => list.clone(),
            None => {
                let mut v: Vec<String> = Vec::new();
                for s in &shares {
                    if !v.contains(&s.cluster) {
                        v.push(s.cluster.clone());
                    }
                }
                v
            }
        };
        if candidates.len() < t {
            return Ok(Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "threshold key {} needs {t} clusters; shares are recorded as imported on \
                     {} only ({})",
                    key.key_id,
                    candidates.len(),
                    names(&candidates)
                ),
                Vec::new(),
            )));
        }
        let mut indexed = Vec::with_capacity(candidates.len());
        for c in &candidates {
            match key.clusters.iter().position(|k| k == c) {
                Some(i) => indexed.push((c.clone(), i as u16)),
                None => {
                    return Ok(Err(Abort {
                        final_: true,
                        ..Abort::new(
                            "invalid_clusters",
                            format!("cluster {c} holds no share of threshold key {}", key.key_id),
                            Vec::new(),
                        )
                    }))
                }
            }
        }
        let probes = futures::future::join_all(indexed.iter().map(|(c, _)| async move {
            tokio::time::timeout(STATUS_TIMEOUT, self.clusters.status(c, false))
                .await
                .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())))
        }))
        .await;
        // (cluster, share index, node, whether that node imported the share)
        let mut usable: Vec<(String, u16, String, bool)> = Vec::new();
        let mut unusable: Vec<String> = Vec::new();
        let mut unusable_clusters: Vec<String> = Vec::new();
        for ((cluster, index), probe) in indexed.into_iter().zip(probes) {
            let status = match probe {
                Ok(s) => s,
                Err(e) => {
                    unusable.push(format!("{cluster}: {e}"));
                    unusable_clusters.push(cluster);
                    continue;
                }
            };
            let healthy: Vec<&str> = status
                .nodes
                .iter()
                .filter(|n| n.healthy)
                .map(|n| n.node.as_str())
                .collect();
            let recorded = shares
                .iter()
                .find(|s| s.share_index == index)
                .map(|s| s.node.as_str());
            let node = match recorded {
                Some(n) if healthy.contains(&n) => Some((n.to_string(), true)),
                _ => healthy.first().map(|n| (n.to_string(), false)),
            };
            match node {
                Some((node, imported_here)) => usable.push((cluster, index, node, imported_here)),
                None => {
                    unusable.push(format!("{cluster}: no healthy node"));
                    unusable_clusters.push(cluster);
                }
            }
        }
        if named.is_none() {
            // Stable: share index order among equals.
            usable.sort_by_key(|(c, _, _, imported_here)| {
                (blamed_before.contains(c), !imported_here)
            });
        }
        if usable.len() < t {
            return Ok(Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "threshold key {} needs {t} clusters, {} of {} can take part now \
                     (unavailable: {})",
                    key.key_id,
                    usable.len(),
                    names(&candidates),
                    unusable.join("; ")
                ),
                unusable_clusters,
            )));
        }
        usable.truncate(t);
        if named.is_none() {
            usable.sort_by_key(|(_, index, _, _)| *index);
        }
        let chains = futures::future::join_all(
            usable
                .iter()
                .map(|(c, _, node, _)| self.clusters.device_chain(c, node)),
        )
        .await;
        let mut participants = Vec::with_capacity(t);
        for ((cluster, share_index, node, _), chain) in usable.into_iter().zip(chains) {
            match chain {
                Ok(chain) => participants.push(Participant {
                    cluster,
                    node,
                    share_index,
                    chain,
                }),
                Err(e) => {
                    return Ok(Err(Abort::new(
                        &e.code(),
                        format!("device chain of {cluster}/{node}: {e}"),
                        vec![cluster],
                    )))
                }
            }
        }
        Ok(Ok(participants))
    }

    /// Starts the session in every participant, then relays messages exchange by exchange
    /// (polling participants that are still computing with empty feeds) until every
    /// participant returned its output.
    /// Records a session's participants as the request's `session` event; returns the stored
    /// row and the participants as text for the log.
    async fn record_session(
        &self,
        row: &RequestRow,
        attempt: u8,
        participants: &[Participant],
    ) -> Result<(RequestRow, String), StoreError> {
        let described = participants
            .iter()
            .map(|p| format!("{}/{} (share {})", p.cluster, p.node, p.share_index))
            .collect::<Vec<_>>()
            .join(", ");
        let mut next = row.clone();
        next.updated_at = self.now_ms();
        let row = self
            .store
            .update_request(
                &next,
                "session",
                format!("attempt {attempt}: {described}"),
                None,
            )
            .await?;
        Ok((row, described))
    }

    /// Runs a started session to its end within `limit`; on failure (including the time
    /// limit) tells every participant to abort before the caller records the failure.
    async fn drive_session(
        &self,
        request_id: &str,
        start: &[u8],
        st: &mut Session<'_>,
        limit: Duration,
    ) -> Result<(), Abort> {
        let outcome =
            match tokio::time::timeout(limit, self.run_session(request_id, start, st)).await {
                Ok(r) => r,
                Err(_) => Err(st.timed_out()),
            };
        if let Err(abort) = &outcome {
            self.abort_session(st, &abort.message).await;
        }
        outcome
    }

    async fn run_session(
        &self,
        request_id: &str,
        start: &[u8],
        st: &mut Session<'_>,
    ) -> Result<(), Abort> {
        let participants = st.participants;
        let session = st.session;
        let run = st.run;
        st.in_flight = (0..participants.len()).collect();
        let starts = participants.iter().map(|p| {
            let link_id = start_link_id(&session.request_id, session.attempt, &p.cluster);
            self.clusters
                .tee_call(&p.cluster, link_id, start, Some(&p.node))
        });
        let answers = futures::future::join_all(starts).await;
        st.in_flight.clear();
        st.absorb_all(answers.into_iter().enumerate().collect())?;
        loop {
            if st.done() {
                return Ok(());
            }
            let targets: Vec<usize> = (0..participants.len())
                .filter(|&q| {
                    st.output[q].is_none() && (!st.pending[q].is_empty() || st.computing[q])
                })
                .collect();
            if targets.is_empty() {
                return Err(st.stalled("no message to relay"));
            }
            let mut phases: Vec<&str> = Vec::new();
            let mut count = 0;
            for &q in &targets {
                for m in &st.pending[q] {
                    count += 1;
                    if !phases.contains(&m.phase.as_str()) {
                        phases.push(m.phase.as_str());
                    }
                }
            }
            if count == 0 {
                // Everyone is still computing: collect what they produce.
                st.polls += 1;
                tokio::time::sleep(POLL_PAUSE).await;
                tracing::debug!(
                    request_id,
                    attempt = session.attempt,
                    poll = st.polls,
                    to = %names(&st.clusters(targets.iter().copied())),
                    "threshold poll"
                );
            } else {
                if st.exchanges >= run.max_exchanges() {
                    return Err(st.stalled(&format!(
                        "no {} after {} exchanges",
                        run.output(),
                        run.max_exchanges()
                    )));
                }
                st.exchanges += 1;
                tracing::info!(
                    request_id,
                    attempt = session.attempt,
                    exchange = st.exchanges,
                    phase = %phases.join("/"),
                    messages = count,
                    to = %names(&st.clusters(targets.iter().copied())),
                    "threshold exchange"
                );
            }
            let feeds: Vec<(usize, Vec<Vec<ThresholdMessage>>)> =
                targets.iter().map(|&q| (q, st.take_batches(q))).collect();
            st.in_flight = targets;
            let calls = feeds.into_iter().map(|(q, mut batches)| async move {
                let p = &participants[q];
                if batches.is_empty() {
                    // A participant still computing: an empty feed collects its output.
                    batches.push(Vec::new());
                }
                let mut answers = Vec::new();
                for messages in batches {
                    let request = encode_request(&Request::ThresholdFeed { session, messages });
                    let a = self
                        .clusters
                        .tee_call(&p.cluster, random_id(), &request, Some(&p.node))
                        .await;
                    // A refusal, or the output (the TEE dropped the session): the rest of the
                    // messages would find no session.
                    let stop = !still_open(&a);
                    answers.push((q, a));
                    if stop {
                        break;
                    }
                }
                answers
            });
            let answers: Vec<(usize, Result<TeeAnswer, CallError>)> =
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            st.in_flight.clear();
            st.absorb_all(answers)?;
        }
    }

    /// `POST /v1/threshold/keys/{key_id}/audit` (patent \[0086\]): runs audit sessions
    /// ([`audit_groups`]: consecutive groups of t clusters, wrapping around) so that every
    /// cluster holding a share takes part at least once, each signing a fresh random
    /// 8-byte message; every signature is verified against the key's root public key over
    /// `audit_digest(message)`. No admin approvals: a TEE signs only the domain-separated
    /// audit digest with the root key in such a session, which can never be a transaction
    /// digest. No request is recorded; the report is kept in memory as the key's latest.
    pub async fn threshold_audit(&self, key_id: &str) -> Result<ThresholdAuditReport, ApiError> {
        let key = self.threshold_key_row(key_id).await?;
        let started_at_ms = self.now_ms();
        let groups = audit_groups(key.clusters.len(), usize::from(key.threshold));
        let runs = groups.iter().map(|g| {
            let clusters: Vec<String> = g.iter().map(|&i| key.clusters[i].clone()).collect();
            self.audit_session(&key, clusters)
        });
        let sessions = futures::future::join_all(runs)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, StoreError>>()?;
        let clusters = key
            .clusters
            .iter()
            .map(|c| {
                let mine: Vec<&ThresholdAuditSessionView> =
                    sessions.iter().filter(|s| s.clusters.contains(c)).collect();
                let ok = mine.iter().any(|s| s.verified);
                let error = (!ok).then(|| {
                    mine.iter()
                        .map(|s| {
                            format!(
                                "session with {}: {}",
                                s.clusters.join(", "),
                                s.error.as_deref().unwrap_or("no verified signature")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                ThresholdAuditClusterView {
                    cluster: c.clone(),
                    ok,
                    error,
                }
            })
            .collect::<Vec<_>>();
        let report = ThresholdAuditReport {
            key_id: key.key_id.clone(),
            started_at_ms,
            finished_at_ms: self.now_ms(),
            sessions,
            clusters,
        };
        tracing::info!(
            key = %key.key_id,
            sessions = report.sessions.len(),
            verified = report.sessions.iter().filter(|s| s.verified).count(),
            failed_clusters = %names(
                &report
                    .clusters
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.cluster.clone())
                    .collect::<Vec<_>>()
            ),
            "threshold audit done"
        );
        self.threshold_audits
            .lock()
            .expect("audit lock")
            .insert(key.key_id.clone(), report.clone());
        Ok(report)
    }

    /// `GET /v1/threshold/keys/{key_id}/audit`: the latest report since the server started.
    pub async fn latest_threshold_audit(
        &self,
        key_id: &str,
    ) -> Result<ThresholdAuditReport, ApiError> {
        let key = self.threshold_key_row(key_id).await?;
        self.threshold_audits
            .lock()
            .expect("audit lock")
            .get(&key.key_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    "no_threshold_audit",
                    format!(
                        "threshold key {} was not audited since the server started",
                        key.key_id
                    ),
                )
            })
    }

    /// One audit session between `clusters` (exactly t), over a fresh random message.
    async fn audit_session(
        &self,
        key: &ThresholdKeyRow,
        clusters: Vec<String>,
    ) -> Result<ThresholdAuditSessionView, StoreError> {
        let mut message = [0u8; MAX_AUDIT_MESSAGE];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut message);
        let mut view = ThresholdAuditSessionView {
            clusters: clusters.clone(),
            message_hex: hex::encode(message),
            r: None,
            s: None,
            v: None,
            verified: false,
            error: None,
            blamed: Vec::new(),
        };
        let failed = |mut view: ThresholdAuditSessionView, a: Abort| {
            tracing::warn!(
                key = %key.key_id,
                clusters = %names(&view.clusters),
                code = %a.code,
                blamed = %names(&a.blamed),
                "threshold audit session failed: {}",
                a.message
            );
            view.error = Some(format!("{}: {}", a.code, a.message));
            view.blamed = a.blamed;
            view
        };
        let participants = match self.choose_participants(key, Some(clusters), &[]).await? {
            Ok(p) => p,
            Err(a) => return Ok(failed(view, a)),
        };
        // A fresh session id: audits are not requests, and each session runs once.
        let session = SessionRef {
            request_id: random_id(),
            attempt: 0,
        };
        let label = format!("audit-{}", hex::encode(session.request_id));
        let start = encode_request(&Request::ThresholdAuditStart {
            session,
            key_id: hex::decode(&key.key_id).unwrap_or_default(),
            message: message.to_vec(),
            signers: signers_of(&participants),
        });
        let mut st = Session::new(Run::Sign, session, &participants);
        if let Err(a) = self
            .drive_session(&label, &start, &mut st, THRESHOLD_SESSION_TIMEOUT)
            .await
        {
            return Ok(failed(view, a));
        }
        match self.check_threshold_signature(key, &[], &audit_digest(&message), &st) {
            Ok(sig) => {
                view.r = Some(sig.r);
                view.s = Some(sig.s);
                view.v = Some(sig.v);
                view.verified = true;
                Ok(view)
            }
            Err(m) => Ok(failed(view, Abort::new("bad_signature", m, Vec::new()))),
        }
    }

    /// `POST /v1/threshold/keys`: records a `create_threshold_key` request (cluster
    /// `*threshold*`) for a `threshold`-of-n key over `clusters` (share i to cluster i).
    pub async fn create_threshold_key(
        &self,
        caller: &str,
        body: CreateThresholdKeyBody,
    ) -> Result<RequestOutcome, ApiError> {
        let n = body.clusters.len();
        if !(2..=MAX_THRESHOLD_CLUSTERS).contains(&n) {
            return Err(ApiError::new(
                "invalid_clusters",
                format!("{n} clusters named; a threshold key spans 2 to {MAX_THRESHOLD_CLUSTERS}"),
            ));
        }
        let mut seen = HashSet::new();
        for c in &body.clusters {
            if !seen.insert(c.as_str()) {
                return Err(ApiError::new(
                    "invalid_clusters",
                    format!("cluster {c} named twice: each cluster holds one share"),
                ));
            }
        }
        for c in &body.clusters {
            self.cluster_config(c)?;
        }
        if body.threshold < 2 || usize::from(body.threshold) > n {
            return Err(ApiError::new(
                "invalid_threshold",
                format!(
                    "threshold {} outside 2..={n} (the number of clusters)",
                    body.threshold
                ),
            ));
        }
        Self::check_quorum(body.quorum)?;
        let (id, expires_at) =
            self.request_id_and_expiry(body.request_id.as_deref(), body.expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: THRESHOLD_SCOPE.to_string(),
                quorum: body.quorum,
                terms: Terms::CreateThresholdKey {
                    threshold: body.threshold,
                    hd: body.hd,
                    clusters: body.clusters,
                },
                id,
                expires_at,
                approvals: body.approvals,
                wallet_xpub: None,
            },
        )
        .await
    }

    /// Runs a `submitting` key creation as one distributed key generation attempt across
    /// all its clusters and records the key.
    pub(super) async fn execute_keygen(&self, row: RequestRow) -> Result<RequestRow, StoreError> {
        let attempt = match attempt_of(&row) {
            Ok(a) => a,
            Err(f) => return self.finish(row, Verdict::Refused(f)).await,
        };
        let terms = match row.terms.clone() {
            Terms::CreateThresholdKey {
                threshold,
                hd,
                clusters,
            } => Ok((threshold, hd, clusters)),
            _ => Err("not a threshold key creation".to_string()),
        };
        let (request_id, (threshold, hd, clusters), approvals) =
            match (parse_request_id(&row.id), terms, tee_approvals(&row)) {
                (Ok(i), Ok(t), Ok(a)) => (i, t, a),
                (i, t, a) => {
                    let why = [i.err(), t.err(), a.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>();
                    let v = Verdict::Refused(Failure::new(
                        "bad_request_row",
                        format!("stored request unusable: {}", why.join("; ")),
                    ));
                    return self.finish(row, v).await;
                }
            };
        let participants = match self.keygen_participants(&clusters).await {
            Ok(p) => p,
            Err(a) => return self.threshold_failed(row, attempt, a).await,
        };
        let session = SessionRef {
            request_id,
            attempt,
        };
        let (row, described) = self.record_session(&row, attempt, &participants).await?;
        tracing::info!(
            request_id = %row.id,
            attempt,
            threshold,
            participants = %described,
            "key generation starting"
        );
        let start = encode_request(&Request::ThresholdKeygenStart {
            meta: RequestMeta {
                request_id,
                expires_at: row.expires_at,
            },
            attempt,
            params: ThresholdKeygenParams {
                threshold,
                hd,
                clusters: clusters.clone(),
                quorum: row.quorum,
                participants: signers_of(&participants),
            },
            approvals,
        });
        let began = Instant::now();
        let mut st = Session::new(Run::Keygen, session, &participants);
        if let Err(abort) = self
            .drive_session(&row.id, &start, &mut st, THRESHOLD_KEYGEN_TIMEOUT)
            .await
        {
            return self.threshold_failed(row, attempt, abort).await;
        }
        tracing::info!(
            request_id = %row.id,
            attempt,
            exchanges = st.exchanges,
            polls = st.polls,
            ms = began.elapsed().as_millis() as u64,
            "key generation finished"
        );
        match self.check_keygen(&row, threshold, hd, &clusters, &st) {
            Ok((result, key, shares)) => {
                self.threshold_blamed
                    .lock()
                    .expect("blame lock")
                    .remove(&row.id);
                let by = format!(
                    "{} (attempt {attempt}, {} exchanges, {} polls)",
                    described, st.exchanges, st.polls
                );
                let v = Verdict::completed(
                    by,
                    RequestResult::ThresholdKey(result),
                    Recorded::ThresholdKey(key, shares),
                );
                self.finish(row, v).await
            }
            // The TEEs stored shares of different keys (or of other terms): nothing is
            // recorded, and no retry under these approvals can run (each TEE consumed them).
            Err(m) => {
                let v = Verdict::Refused(Failure::new("threshold_key_mismatch", m));
                self.finish(row, v).await
            }
        }
    }

    /// Every participant reported the same key (all but the share index), its own share,
    /// made of the approved terms; returns the result and what is recorded.
    fn check_keygen(
        &self,
        row: &RequestRow,
        threshold: u16,
        hd: bool,
        clusters: &[String],
        st: &Session<'_>,
    ) -> Result<(ThresholdKeyResult, ThresholdKeyRow, Vec<ThresholdShareRow>), String> {
        let mut infos = Vec::with_capacity(st.participants.len());
        for (p, o) in st.participants.iter().zip(&st.output) {
            let Some(Output::Key(info)) = o else {
                return Err(format!("cluster {} returned no key", p.cluster));
            };
            check_threshold_key_info(info)
                .map_err(|e| format!("cluster {} reported an unusable key: {e}", p.cluster))?;
            if info.share_index != p.share_index {
                return Err(format!(
                    "cluster {} holds share {}, it was to make share {}",
                    p.cluster, info.share_index, p.share_index
                ));
            }
            infos.push(info);
        }
        let first = *infos.first().ok_or("no participant")?;
        let terms = |k: &ThresholdKeyInfo| ThresholdKeyInfo {
            share_index: 0,
            ..k.clone()
        };
        for (p, info) in st.participants.iter().zip(&infos).skip(1) {
            if terms(info) != terms(first) {
                return Err(format!(
                    "participants disagree on the key: cluster {} made {} and cluster {} made \
                     {}",
                    st.participants[0].cluster,
                    hex::encode(&first.key_id),
                    p.cluster,
                    hex::encode(&info.key_id)
                ));
            }
        }
        if first.threshold != threshold
            || first.clusters != clusters
            || first.quorum != row.quorum
            || first.chain_code.is_some() != hd
            || first.origin != ThresholdOrigin::Dkg
        {
            return Err(format!(
                "the key made is not the approved one: {}-of-{:?}, quorum {}, HD {}, {:?}",
                first.threshold,
                first.clusters,
                first.quorum,
                first.chain_code.is_some(),
                first.origin
            ));
        }
        let now = self.now_ms();
        let key = key_row(first, now, &row.id);
        let shares: Vec<ThresholdShareRow> = st
            .participants
            .iter()
            .map(|p| ThresholdShareRow {
                key_id: key.key_id.clone(),
                share_index: p.share_index,
                cluster: p.cluster.clone(),
                node: p.node.clone(),
                imported_at: now,
                request_id: row.id.clone(),
            })
            .collect();
        let result = ThresholdKeyResult {
            key_id: key.key_id.clone(),
            xpub: key_xpub(&key)?.map(|x| x.to_string()),
            threshold: key.threshold,
            clusters: key.clusters.clone(),
            quorum: key.quorum,
            origin: key.origin.clone(),
            shares: shares
                .iter()
                .map(|s| ThresholdKeyShare {
                    share_index: s.share_index,
                    cluster: s.cluster.clone(),
                    node: s.node.clone(),
                })
                .collect(),
        };
        Ok((result, key, shares))
    }

    /// One participant per cluster, in share order: a healthy node of each (its device
    /// chain fetched and verified). Every cluster must take part.
    async fn keygen_participants(&self, clusters: &[String]) -> Result<Vec<Participant>, Abort> {
        let probes = futures::future::join_all(clusters.iter().map(|c| async move {
            tokio::time::timeout(STATUS_TIMEOUT, self.clusters.status(c, false))
                .await
                .unwrap_or_else(|_| Err(CallError::Unavailable("status probe timed out".into())))
        }))
        .await;
        let mut chosen: Vec<(String, u16, String)> = Vec::with_capacity(clusters.len());
        let mut unusable: Vec<String> = Vec::new();
        let mut unusable_clusters: Vec<String> = Vec::new();
        for (i, (cluster, probe)) in clusters.iter().zip(probes).enumerate() {
            let node = match probe {
                Ok(status) => status
                    .nodes
                    .iter()
                    .find(|n| n.healthy)
                    .map(|n| n.node.clone())
                    .ok_or_else(|| "no healthy node".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match node {
                Ok(node) => chosen.push((cluster.clone(), i as u16, node)),
                Err(why) => {
                    unusable.push(format!("{cluster}: {why}"));
                    unusable_clusters.push(cluster.clone());
                }
            }
        }
        if !unusable.is_empty() {
            return Err(Abort::new(
                "cluster_unavailable",
                format!(
                    "a key generation needs every one of its {} clusters; unavailable: {}",
                    clusters.len(),
                    unusable.join("; ")
                ),
                unusable_clusters,
            ));
        }
        let chains = futures::future::join_all(
            chosen
                .iter()
                .map(|(c, _, node)| self.clusters.device_chain(c, node)),
        )
        .await;
        let mut participants = Vec::with_capacity(chosen.len());
        for ((cluster, share_index, node), chain) in chosen.into_iter().zip(chains) {
            match chain {
                Ok(chain) => participants.push(Participant {
                    cluster,
                    node,
                    share_index,
                    chain,
                }),
                Err(e) => {
                    return Err(Abort::new(
                        &e.code(),
                        format!("device chain of {cluster}/{node}: {e}"),
                        vec![cluster],
                    ))
                }
            }
        }
        Ok(participants)
    }

    /// Best effort: tells every participant whose TEE may still hold the session to drop
    /// it.
    async fn abort_session(&self, st: &Session<'_>, why: &str) {
        let reason: String = why.chars().take(MAX_ABORT_REASON).collect();
        let request = encode_request(&Request::ThresholdAbort {
            session: st.session,
            reason,
        });
        let calls = st
            .participants
            .iter()
            .enumerate()
            .filter(|(i, _)| !st.ended[*i])
            .map(|(_, p)| {
                let request = &request;
                async move {
                    let r = tokio::time::timeout(
                        ABORT_TIMEOUT,
                        self.clusters
                            .tee_call(&p.cluster, random_id(), request, Some(&p.node)),
                    )
                    .await;
                    match r {
                        Ok(Ok(TeeAnswer {
                            outcome: Ok(Response::ThresholdAborted(_)),
                            ..
                        })) => tracing::info!(
                            cluster = %p.cluster,
                            node = %p.node,
                            session = %session_text(&st.session),
                            "threshold session aborted"
                        ),
                        Ok(Ok(a)) => tracing::info!(
                            cluster = %p.cluster,
                            node = %p.node,
                            answer = ?a.outcome.map(|r| response_name(&r)),
                            "threshold abort answered"
                        ),
                        Ok(Err(e)) => tracing::warn!(
                            cluster = %p.cluster,
                            node = %p.node,
                            error = %e,
                            "threshold abort not delivered"
                        ),
                        Err(_) => tracing::warn!(
                            cluster = %p.cluster,
                            node = %p.node,
                            "threshold abort timed out"
                        ),
                    }
                }
            });
        futures::future::join_all(calls).await;
    }
}

/// The clusters (share indexes) of each audit session of an `n`-cluster key with threshold
/// `t`: consecutive groups of t, wrapping around, so every cluster takes part at least once
/// in ⌈n/t⌉ sessions.
fn audit_groups(n: usize, t: usize) -> Vec<Vec<usize>> {
    if t == 0 || t > n {
        return Vec::new();
    }
    (0..n.div_ceil(t))
        .map(|k| (0..t).map(|j| (k * t + j) % n).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_wire::protocol::ThresholdOrigin;

    fn info() -> ThresholdKeyInfo {
        let secp = Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        ThresholdKeyInfo {
            key_id: PublicKey::from_secret_key(&secp, &sk).serialize().to_vec(),
            chain_code: Some([1u8; 32]),
            threshold: 2,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
            quorum: 1,
            origin: ThresholdOrigin::Dealer,
            share_index: 1,
        }
    }

    fn bundle(key: ThresholdKeyInfo) -> ThresholdBundle {
        ThresholdBundle {
            key,
            recipient_fingerprint: [3u8; 32],
            dealer_cert: vec![1],
            dealer_ca: vec![2],
            enc: vec![3],
            ciphertext: vec![4; 10],
            signature: vec![5],
        }
    }

    #[test]
    fn bundles_are_decoded_and_checked() {
        let b = bundle(info());
        let text = hex::encode(postcard::to_allocvec(&b).unwrap());
        assert_eq!(decode_bundle(&text).unwrap(), b);
        assert!(decode_bundle("zz").is_err());
        assert!(decode_bundle(&format!("{text}00"))
            .unwrap_err()
            .contains("trailing"));
        assert!(decode_bundle(&"00".repeat(MAX_BUNDLE + 1)).is_err());
        let bad = [
            ThresholdKeyInfo {
                share_index: 3,
                ..info()
            },
            ThresholdKeyInfo {
                threshold: 4,
                ..info()
            },
            ThresholdKeyInfo {
                threshold: 0,
                ..info()
            },
            ThresholdKeyInfo {
                // x = 0 is on no point of secp256k1.
                key_id: [&[2u8][..], &[0u8; 32]].concat(),
                ..info()
            },
            ThresholdKeyInfo {
                key_id: vec![4; 65],
                ..info()
            },
            ThresholdKeyInfo {
                clusters: vec!["dc1".into(), "dc1".into(), "dc3".into()],
                ..info()
            },
            ThresholdKeyInfo {
                clusters: vec!["dc1".into(), "bad,name".into(), "dc3".into()],
                ..info()
            },
            ThresholdKeyInfo {
                quorum: 0,
                ..info()
            },
        ];
        for k in bad {
            let text = hex::encode(postcard::to_allocvec(&bundle(k.clone())).unwrap());
            assert!(decode_bundle(&text).is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn audit_groups_cover_every_cluster() {
        assert_eq!(audit_groups(3, 2), vec![vec![0, 1], vec![2, 0]]);
        assert_eq!(audit_groups(3, 3), vec![vec![0, 1, 2]]);
        assert_eq!(audit_groups(4, 2), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(audit_groups(5, 3), vec![vec![0, 1, 2], vec![3, 4, 0]]);
        for n in 1..10 {
            for t in 1..=n {
                let g = audit_groups(n, t);
                assert!(g.iter().all(|s| s.len() == t));
                for i in 0..n {
                    assert!(g.iter().any(|s| s.contains(&i)));
                }
            }
        }
    }

    #[test]
    fn start_link_ids_are_per_attempt_and_cluster() {
        let id = [9u8; 16];
        assert_eq!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 0, "dc1"));
        assert_ne!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 1, "dc1"));
        assert_ne!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 0, "dc2"));
        assert_ne!(start_link_id(&id, 0, "dc1"), id);
    }

    #[test]
    fn threshold_xpub_is_the_root_of_the_joint_key() {
        let k = info();
        let x = threshold_xpub(&k.key_id, &k.chain_code.unwrap()).unwrap();
        assert_eq!(x.depth, 0);
        assert!(x.to_string().starts_with("xpub"));
        assert_eq!(x.public_key.serialize().to_vec(), k.key_id);
        let again = Xpub::from_str(&x.to_string()).unwrap();
        assert_eq!(again, x);
    }

    #[test]
    fn merged_aborts_name_every_cluster_and_keep_the_tee_code() {
        let a = Abort::new("threshold_aborted", "dc1 down".into(), vec!["dc1".into()]);
        let b = Abort::new(
            "tee_threshold_rejected",
            "dc2 refused".into(),
            vec!["dc2".into()],
        );
        let m = Abort::merge(vec![a, b]).unwrap();
        assert_eq!(m.code, "tee_threshold_rejected");
        assert_eq!(m.blamed, ["dc1", "dc2"]);
        assert!(m.message.contains("dc1 down") && m.message.contains("dc2 refused"));
        assert!(Abort::merge(Vec::new()).is_none());
    }
}
