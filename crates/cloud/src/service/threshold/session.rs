//! One threshold session as a state machine, free of any transport: who takes part, what
//! each participant still owes, the messages waiting for each, the phase reached, and how
//! an answer (or a failed call) moves it on or aborts it ([`Abort`], naming the clusters).
//! The driver feeds it the answers it got; nothing here talks to a cluster.

use super::*;

/// Pause before an exchange of empty feeds only (every participant still computing).
pub(super) const POLL_PAUSE: Duration = Duration::from_millis(20);

/// Time allowed for cluster status probes when choosing participants.
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for the (best-effort) aborts sent after a failure.
pub(super) const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of messages in one `ThresholdFeed` (the TEE takes requests of up to 4 MiB).
pub(super) const FEED_MAX_BYTES: usize = 3 * 1024 * 1024;

/// Longest abort reason sent to a TEE.
pub(super) const MAX_ABORT_REASON: usize = 512;

/// The patent's phases, in protocol order (for logs and "how far it got").
pub(super) const PHASES: [&str; 4] = phase_names(Phase::SIGNING);

/// The phases of a key generation, in protocol order.
pub(super) const KEYGEN_PHASES: [&str; 2] = phase_names(Phase::KEY_GENERATION);

/// The phase of a presignature session (getAB, getAB_and_R and getR ahead of the message;
/// getSig is the online step).
pub(super) const PRESIGN_PHASES: [&str; 1] = phase_names(Phase::PRESIGNING);

pub(super) const fn phase_names<const N: usize>(phases: [Phase; N]) -> [&'static str; N] {
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
pub(super) enum Run {
    /// A signature, by t clusters.
    Sign,
    /// A new key, by all n clusters.
    Keygen,
    /// A presignature, by t clusters.
    Presign,
}

impl Run {
    pub(super) fn phases(self) -> &'static [&'static str] {
        match self {
            Run::Sign => &PHASES,
            Run::Keygen => &KEYGEN_PHASES,
            Run::Presign => &PRESIGN_PHASES,
        }
    }

    pub(super) fn timeout(self) -> Duration {
        match self {
            Run::Sign | Run::Presign => THRESHOLD_SESSION_TIMEOUT,
            Run::Keygen => THRESHOLD_KEYGEN_TIMEOUT,
        }
    }

    pub(super) fn max_exchanges(self) -> u32 {
        match self {
            Run::Sign | Run::Presign => MAX_THRESHOLD_EXCHANGES,
            Run::Keygen => MAX_KEYGEN_EXCHANGES,
        }
    }

    pub(super) fn output(self) -> &'static str {
        match self {
            Run::Sign => "signature",
            Run::Keygen => "key",
            Run::Presign => "presignature",
        }
    }
}

/// What a participant returned at the end of a session.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Output {
    Signature(EcdsaSignature),
    Key(ThresholdKeyInfo),
    Presignature(PresignatureInfo),
}

/// One answer of a participant, whatever the session makes.
pub(super) struct Round {
    pub(super) session: SessionRef,
    pub(super) phase: String,
    pub(super) outgoing: Vec<ThresholdMessage>,
    pub(super) computing: bool,
    pub(super) output: Option<Output>,
}

impl Round {
    /// The round answer of a session of kind `run`, or the name of what came instead.
    pub(super) fn of(run: Run, r: Response) -> Result<Round, String> {
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
pub(super) fn still_open(a: &Result<TeeAnswer, CallError>) -> bool {
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

/// Link request id of a participant's `ThresholdStart` (and of a threshold key's policy
/// change sent to one cluster): the same for every send of one attempt to one cluster, so
/// that the link's exactly-once store answers a resend with the first answer instead of
/// opening the session twice.
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

/// Refusals no retry can fix: the approvals themselves are wrong or void, or the key's
/// policy or the TEE's reading of the transaction refuses what they approved (another set
/// of clusters would hold the same policy once its change reached them all; the velocity
/// share, the one whose refusals vary with the signers, takes part in every attempt).
pub(super) fn final_refusal(e: &TeeError) -> bool {
    matches!(
        e,
        TeeError::ApprovalMissing
            | TeeError::ApprovalRejected { .. }
            | TeeError::QuorumNotMet { .. }
            | TeeError::RequestExpired { .. }
            | TeeError::InvalidPath(_)
            | TeeError::AdminRevoked { .. }
            | TeeError::ApproverNotInGroup { .. }
            | TeeError::RawSigningOff { .. }
            | TeeError::TransactionPolicyRefused { .. }
            | TeeError::TransactionRejected { .. }
            | TeeError::IntentMismatch { .. }
            // Another attempt meets the same published or shared primes (and spends a primes
            // set on every TEE): the request ends, naming the fault.
            | TeeError::PrimesRefused { .. }
    )
}

pub(super) fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub(super) fn phase_rank(run: Run, p: &str) -> usize {
    run.phases().iter().position(|x| *x == p).unwrap_or(0)
}

/// The participants as a TEE request names them, in session order.
pub(super) fn signers_of(participants: &[Participant]) -> Vec<ThresholdSigner> {
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
pub(super) struct Participant {
    pub(super) cluster: String,
    pub(super) node: String,
    pub(super) share_index: u16,
    pub(super) chain: CertChain,
}

/// Why a session (or choosing its participants) ended without a signature.
#[derive(Debug)]
pub(super) struct Abort {
    pub(super) code: String,
    pub(super) message: String,
    /// Clusters at fault (or that could not take part), when known.
    pub(super) blamed: Vec<String>,
    /// No retry can help.
    pub(super) final_: bool,
}

impl Abort {
    pub(super) fn new(code: &str, message: String, blamed: Vec<String>) -> Self {
        Abort {
            code: code.to_string(),
            message,
            blamed,
            final_: false,
        }
    }

    /// Several participants failed in the same exchange: one abort naming all of them,
    /// with the first TEE's code if a TEE refused.
    pub(super) fn merge(mut aborts: Vec<Abort>) -> Option<Abort> {
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
pub(super) struct Session<'a> {
    pub(super) run: Run,
    pub(super) session: SessionRef,
    pub(super) participants: &'a [Participant],
    /// Phase each participant last reported.
    pub(super) phase: Vec<String>,
    /// Output each participant returned, once done.
    pub(super) output: Vec<Option<Output>>,
    /// Messages waiting for each participant.
    pub(super) pending: Vec<Vec<ThresholdMessage>>,
    /// Participants still computing on messages already delivered (to be polled).
    pub(super) computing: Vec<bool>,
    /// Participants whose TEE already ended the session (refused or aborted it).
    pub(super) ended: Vec<bool>,
    /// Participants being called right now.
    pub(super) in_flight: Vec<usize>,
    /// Exchanges that delivered messages.
    pub(super) exchanges: u32,
    /// Exchanges of empty feeds only (collecting computed messages).
    pub(super) polls: u32,
}

impl<'a> Session<'a> {
    pub(super) fn new(run: Run, session: SessionRef, participants: &'a [Participant]) -> Self {
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

    pub(super) fn done(&self) -> bool {
        self.output.iter().all(Option::is_some)
    }

    /// The furthest phase any participant reported.
    pub(super) fn phase(&self) -> String {
        self.phase
            .iter()
            .max_by_key(|p| phase_rank(self.run, p))
            .cloned()
            .unwrap_or_else(|| self.run.phases()[0].to_string())
    }

    pub(super) fn clusters(&self, positions: impl IntoIterator<Item = usize>) -> Vec<String> {
        positions
            .into_iter()
            .map(|i| self.participants[i].cluster.clone())
            .collect()
    }

    pub(super) fn unfinished(&self) -> Vec<usize> {
        (0..self.participants.len())
            .filter(|&i| self.output[i].is_none())
            .collect()
    }

    pub(super) fn stalled(&self, why: &str) -> Abort {
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

    pub(super) fn timed_out(&self) -> Abort {
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
    pub(super) fn absorb(
        &mut self,
        pos: usize,
        answer: Result<TeeAnswer, CallError>,
    ) -> Result<(), Abort> {
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

    pub(super) fn absorb_all(
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
    pub(super) fn take_batches(&mut self, pos: usize) -> Vec<Vec<ThresholdMessage>> {
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

/// What an attempt of an approved threshold request takes from its stored row.
pub(super) struct StoredAttempt {
    /// The attempt number (the first is 0).
    pub attempt: u8,
    /// The TEE request id.
    pub request_id: [u8; 16],
    /// The approvals, as the TEEs take them.
    pub approvals: Vec<Approval>,
}

/// [`StoredAttempt`] of `row`, or the verdict that ends it: every attempt used, or a
/// stored row that cannot give its id or approvals (refused, never run half-read).
pub(super) fn stored_attempt(row: &RequestRow) -> Result<StoredAttempt, Verdict> {
    let attempt = attempt_of(row).map_err(Verdict::Refused)?;
    match (parse_request_id(&row.id), tee_approvals(row)) {
        (Ok(request_id), Ok(approvals)) => Ok(StoredAttempt {
            attempt,
            request_id,
            approvals,
        }),
        (i, a) => {
            let why = [i.err(), a.err()].into_iter().flatten().collect::<Vec<_>>();
            Err(Verdict::Refused(Failure::new(
                "bad_request_row",
                format!("stored request unusable: {}", why.join("; ")),
            )))
        }
    }
}

/// The attempt a `submitting` threshold request is at (its first is 0), or why it ends
/// (refused) when every attempt its approvals allow was used.
pub(super) fn attempt_of(row: &RequestRow) -> Result<u8, Failure> {
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

pub(super) fn session_text(s: &SessionRef) -> String {
    format!("{}/{}", hex::encode(s.request_id), s.attempt)
}
