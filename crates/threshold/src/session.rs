//! One protocol execution as a synchronous, message-at-a-time engine.
//!
//! A [`Session`] wraps a cggmp24 state machine (`round_based::state_machine`, the protocol's
//! async function polled by hand, no async runtime). It is created with
//! [`Session::new`], which returns the first outgoing messages, and then fed one received
//! message at a time with [`Session::feed`]; each call runs the protocol until it needs another
//! message and returns what to send, or the output.
//!
//! **Threading.** The state machines are `!Send` (`Rc<RefCell<..>>` inside round-based), so a
//! `Session` is `!Send` too and must stay on the thread that created it. Use
//! [`SessionHost`](crate::SessionHost) to keep sessions on a worker thread of their own. One
//! `feed` can compute for up to ~0.75 s (SL128 signing) on that thread.
//!
//! **Persistence.** Nothing of a running session can be saved: after a crash the session is
//! lost; abort it and retry with a new session id and a new execution id (never reuse one).
//!
//! **Positions.** All party numbers of a session (`from`, [`Outgoing::to`], blamed parties) are
//! positions in its party list: for signing and presigning the index into `parties`, for keygen
//! and aux info the keygen index itself (the list is `0..n`).
//!
//! **What `feed` checks**, before the library sees a message: the sender is another party of the
//! session; the bytes are at most [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES), decode, and
//! belong to a round of this protocol; the content's broadcast/p2p type is the declared one; and
//! (sender, round) was not fed before. The identical bytes again are ignored
//! ([`Step::Duplicate`]: relays may repeat); different bytes for a (sender, round) already fed are
//! equivocation and abort the session blaming the sender. The caller must already have checked
//! the envelope: sender certificate and signature, session id, and that p2p messages are addressed
//! to this party.

use std::collections::HashMap;
use std::fmt;

use cggmp24::generic_ec::{NonZero, Point, Scalar};
use cggmp24::key_share::{AuxInfo as LibAuxInfo, IncompleteKeyShare};
use cggmp24::round_based::state_machine::{wrap_protocol, ProceedResult, StateMachine};
use cggmp24::round_based::{Incoming, MessageDestination, MessageType};
use cggmp24::signing::{PrehashedDataToSign, Presignature, PresignaturePublicData};
use cggmp24::ExecutionId;
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::blame::parse_blame;
use crate::dealer::error_chain;
use crate::phase::{decode, AuxMsg, KeygenMsg, MsgType, Phase, ProtocolKind, SignMsg, WireMsg};
use crate::presign::{presignature_public, StoredPresignature};
use crate::primes::Primes;
use crate::share::{child_point, AuxInfo, IncompleteShare, ThresholdShare};
use crate::signature::finish;
use crate::util::{check_path, to_json_zeroizing};
use crate::{SessionError, ThresholdError, E, L};
use custos_threshold_public::Signature;

/// What a session runs, with everything it needs.
pub enum SessionKind {
    /// Interactive signing of a 32-byte digest (the full protocol tolerates a prehash).
    Sign {
        /// This party's key share.
        share: ThresholdShare,
        /// The signers' keygen indexes, in signing order; exactly t of them, the same order at
        /// every signer.
        parties: Vec<u16>,
        /// This party's position in `parties`.
        my_position: u16,
        /// Non-hardened derivation path of the child key to sign with (HD keys only); `None`
        /// (or empty) signs with the root key.
        path: Option<Vec<u32>>,
        /// The digest to sign (big-endian, reduced mod n).
        digest: [u8; 32],
    },
    /// Presignature generation. Refused for HD shares
    /// ([`ThresholdError::HdPresignature`], RUSTSEC-2025-0127).
    Presign {
        /// This party's key share (non-HD).
        share: ThresholdShare,
        /// The signers' keygen indexes, in signing order (exactly t).
        parties: Vec<u16>,
        /// This party's position in `parties`.
        my_position: u16,
    },
    /// Distributed key generation (threshold keygen); outputs an [`IncompleteShare`].
    Keygen {
        /// This party's index (`0..n`).
        my_index: u16,
        /// Number of parties.
        n: u16,
        /// Threshold (2 ≤ t ≤ n).
        t: u16,
        /// Generate a chain code (HD key).
        hd: bool,
    },
    /// Aux-info generation; outputs an [`AuxInfo`].
    AuxInfo {
        /// This party's index (`0..n`).
        my_index: u16,
        /// Number of parties.
        n: u16,
        /// This party's pregenerated primes.
        primes: Primes,
    },
}

impl SessionKind {
    /// The protocol this kind runs.
    pub fn protocol(&self) -> ProtocolKind {
        match self {
            SessionKind::Sign { .. } => ProtocolKind::Sign,
            SessionKind::Presign { .. } => ProtocolKind::Presign,
            SessionKind::Keygen { .. } => ProtocolKind::Keygen,
            SessionKind::AuxInfo { .. } => ProtocolKind::AuxInfo,
        }
    }
}

impl fmt::Debug for SessionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionKind::Sign {
                share,
                parties,
                my_position,
                path,
                digest,
            } => f
                .debug_struct("Sign")
                .field("share", share)
                .field("parties", parties)
                .field("my_position", my_position)
                .field("path", path)
                .field("digest", &hex::encode(digest))
                .finish(),
            SessionKind::Presign {
                share,
                parties,
                my_position,
            } => f
                .debug_struct("Presign")
                .field("share", share)
                .field("parties", parties)
                .field("my_position", my_position)
                .finish(),
            SessionKind::Keygen { my_index, n, t, hd } => f
                .debug_struct("Keygen")
                .field("my_index", my_index)
                .field("n", n)
                .field("t", t)
                .field("hd", hd)
                .finish(),
            SessionKind::AuxInfo { my_index, n, .. } => f
                .debug_struct("AuxInfo")
                .field("my_index", my_index)
                .field("n", n)
                .finish_non_exhaustive(),
        }
    }
}

/// A message to send.
///
/// The bytes are held in a zeroizing buffer: p2p messages of key generation carry the
/// receiver's secret share in plaintext (and other p2p messages data meant for one party only),
/// so the session layer must seal every p2p message to its recipient (HPKE) before it leaves
/// the TEE. `Debug` prints the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Recipient position; `None` = broadcast to every other party of the session.
    pub to: Option<u16>,
    /// Phase of the message (goes into the envelope).
    pub phase: Phase,
    /// The library's round number (goes into the envelope).
    pub round: u16,
    /// The serialized message (JSON).
    pub bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("to", &self.to)
            .field("phase", &self.phase)
            .field("round", &self.round)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Outgoing {
    /// Broadcast or p2p (what the receiver passes to [`Session::feed`]).
    pub fn msg_type(&self) -> MsgType {
        match self.to {
            None => MsgType::Broadcast,
            Some(_) => MsgType::P2P,
        }
    }
}

/// What a finished session produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // produced once per session, moved a couple of times
pub enum Output {
    /// A signature (verified with libsecp256k1 against the signing key, low-s, with `v`).
    Signature(Signature),
    /// This signer's presignature (seal it; use it once).
    Presignature(StoredPresignature),
    /// This party's DKG key share, without aux info.
    Incomplete(IncompleteShare),
    /// This party's aux info.
    Aux(AuxInfo),
}

/// Result of feeding one message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // see Output
pub enum Step {
    /// Accepted; send these messages (possibly none) and wait for more.
    Continue(Vec<Outgoing>),
    /// The identical message was fed before; ignored.
    Duplicate,
    /// The protocol finished. `outgoing` holds messages produced in the same step (none for the
    /// current protocols, whose last action is receiving; relay them if there are any).
    Done {
        /// The output.
        output: Output,
        /// Messages to send still.
        outgoing: Vec<Outgoing>,
    },
}

/// A library failure carried out of the protocol future.
struct LibFailure {
    display: String,
    debug: String,
}

impl LibFailure {
    fn from_err<T: std::error::Error>(e: T) -> Self {
        Self {
            display: error_chain(&e),
            debug: format!("{e:?}"),
        }
    }
}

type BoxSm<O, M> = Box<dyn StateMachine<Output = Result<O, LibFailure>, Msg = M>>;
type PresigPair = (Presignature<E>, PresignaturePublicData<E>);

enum Machine {
    Sign {
        sm: BoxSm<cggmp24::Signature<E>, SignMsg>,
        public_key: NonZero<Point<E>>,
        digest: [u8; 32],
    },
    Presign {
        sm: BoxSm<PresigPair, SignMsg>,
        public_key: NonZero<Point<E>>,
        parties: Vec<u16>,
        my_position: u16,
    },
    Keygen {
        sm: BoxSm<IncompleteKeyShare<E>, KeygenMsg>,
    },
    Aux {
        sm: BoxSm<LibAuxInfo<L>, AuxMsg>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Aborted,
}

/// One protocol execution (see the [module docs](self)). `!Send`: keep it on one thread.
///
/// ```compile_fail
/// fn must_be_send<T: Send>() {}
/// must_be_send::<custos_threshold::Session>();
/// ```
pub struct Session {
    kind: ProtocolKind,
    machine: Machine,
    my_position: u16,
    parties: u16,
    /// (sender, round) → SHA-256 of the bytes fed.
    seen: HashMap<(u16, u16), [u8; 32]>,
    /// Message id given to the library → sender, to map blame by message id.
    senders: HashMap<u64, u16>,
    next_id: u64,
    state: State,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("kind", &self.kind)
            .field("my_position", &self.my_position)
            .field("parties", &self.parties)
            .field("received", &self.seen.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> SessionError {
    SessionError::InvalidParameters(msg.into())
}

/// Checks a signer list against the share; returns the number of signers.
fn check_signers(
    share: &ThresholdShare,
    parties: &[u16],
    my_position: u16,
) -> Result<u16, SessionError> {
    let t = share.threshold();
    if parties.len() != usize::from(t) {
        return Err(invalid(format!(
            "{} signers for a key with threshold {t}",
            parties.len()
        )));
    }
    let mut sorted = parties.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != parties.len() {
        return Err(invalid("a signer appears twice"));
    }
    if let Some(p) = parties.iter().find(|&&p| p >= share.n()) {
        return Err(invalid(format!(
            "signer index {p} out of range (n = {})",
            share.n()
        )));
    }
    match parties.get(usize::from(my_position)) {
        Some(&i) if i == share.index() => Ok(t),
        Some(&i) => Err(invalid(format!(
            "position {my_position} is signer {i}, but this share has index {}",
            share.index()
        ))),
        None => Err(invalid(format!(
            "position {my_position} outside the signer list"
        ))),
    }
}

impl Session {
    /// Starts a session. `eid` is the execution id: unique per execution and derived by every
    /// party from the approved request (e.g. SHA-256 of a domain tag, phase, session id, key id,
    /// signer list, digest and path), so parties given different parameters fail the proofs.
    ///
    /// Returns the session and its first outgoing messages.
    pub fn new(kind: SessionKind, eid: [u8; 32]) -> Result<(Session, Vec<Outgoing>), SessionError> {
        let protocol = kind.protocol();
        let (machine, my_position, parties) = match kind {
            SessionKind::Sign {
                share,
                parties,
                my_position,
                path,
                digest,
            } => {
                let t = check_signers(&share, &parties, my_position)?;
                let path = path.unwrap_or_default();
                check_path(&path)?;
                if !path.is_empty() && !share.is_hd() {
                    return Err(ThresholdError::NotHd.into());
                }
                let public_key = child_point(&share.0.core, &path)?;
                let sm: BoxSm<cggmp24::Signature<E>, SignMsg> =
                    Box::new(wrap_protocol(move |party| async move {
                        let data = PrehashedDataToSign::<E>::from_scalar(
                            Scalar::from_be_bytes_mod_order(digest),
                        );
                        let mut b = cggmp24::signing(
                            ExecutionId::new(&eid),
                            my_position,
                            &parties,
                            &share.0,
                        );
                        if !path.is_empty() {
                            b = b
                                .set_derivation_path(path.iter().copied())
                                .map_err(LibFailure::from_err)?;
                        }
                        b.sign(&mut OsRng, party, &data)
                            .await
                            .map_err(LibFailure::from_err)
                    }));
                (
                    Machine::Sign {
                        sm,
                        public_key,
                        digest,
                    },
                    my_position,
                    t,
                )
            }
            SessionKind::Presign {
                share,
                parties,
                my_position,
            } => {
                if share.is_hd() {
                    return Err(ThresholdError::HdPresignature.into());
                }
                let t = check_signers(&share, &parties, my_position)?;
                let public_key = share.0.core.shared_public_key;
                let list = parties.clone();
                let sm: BoxSm<PresigPair, SignMsg> =
                    Box::new(wrap_protocol(move |party| async move {
                        cggmp24::signing(ExecutionId::new(&eid), my_position, &list, &share.0)
                            .generate_presignature(&mut OsRng, party)
                            .await
                            .map_err(LibFailure::from_err)
                    }));
                (
                    Machine::Presign {
                        sm,
                        public_key,
                        parties,
                        my_position,
                    },
                    my_position,
                    t,
                )
            }
            SessionKind::Keygen { my_index, n, t, hd } => {
                if t < 2 || t > n || my_index >= n {
                    return Err(invalid(format!(
                        "keygen needs 2 <= t <= n and index < n, got t={t} n={n} index={my_index}"
                    )));
                }
                let sm: BoxSm<IncompleteKeyShare<E>, KeygenMsg> =
                    Box::new(wrap_protocol(move |party| async move {
                        cggmp24::keygen::<E>(ExecutionId::new(&eid), my_index, n)
                            .set_threshold(t)
                            .hd_wallet(hd)
                            .start(&mut OsRng, party)
                            .await
                            .map_err(LibFailure::from_err)
                    }));
                (Machine::Keygen { sm }, my_index, n)
            }
            SessionKind::AuxInfo {
                my_index,
                n,
                primes,
            } => {
                if n < 2 || my_index >= n {
                    return Err(invalid(format!(
                        "aux info needs n >= 2 and index < n, got n={n} index={my_index}"
                    )));
                }
                let sm: BoxSm<LibAuxInfo<L>, AuxMsg> =
                    Box::new(wrap_protocol(move |party| async move {
                        cggmp24::aux_info_gen(ExecutionId::new(&eid), my_index, n, primes.0)
                            .start(&mut OsRng, party)
                            .await
                            .map_err(LibFailure::from_err)
                    }));
                (Machine::Aux { sm }, my_index, n)
            }
        };
        let mut session = Session {
            kind: protocol,
            machine,
            my_position,
            parties,
            seen: HashMap::new(),
            senders: HashMap::new(),
            next_id: 0,
            state: State::Running,
        };
        let phase = protocol.first_phase();
        let first = match protocol {
            ProtocolKind::Sign | ProtocolKind::Presign => session.run::<SignMsg>(None, phase),
            ProtocolKind::Keygen => session.run::<KeygenMsg>(None, phase),
            ProtocolKind::AuxInfo => session.run::<AuxMsg>(None, phase),
        };
        match first? {
            Step::Continue(out) => Ok((session, out)),
            Step::Duplicate | Step::Done { .. } => Err(SessionError::Internal(
                "protocol finished without receiving anything".into(),
            )),
        }
    }

    /// The protocol this session runs.
    pub fn protocol(&self) -> ProtocolKind {
        self.kind
    }

    /// This party's position.
    pub fn my_position(&self) -> u16 {
        self.my_position
    }

    /// Number of parties in the session.
    pub fn parties(&self) -> u16 {
        self.parties
    }

    /// Whether the session still accepts messages.
    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    /// Feeds one received message from position `from`, declared by its envelope as `declared`
    /// (see the [module docs](self) for the checks). Runs the protocol as far as it goes.
    ///
    /// Errors: [`SessionError::InvalidParameters`] for a `from` that is not another party of the
    /// session (nothing changes); [`SessionError::BadMessage`] and [`SessionError::Aborted`] end
    /// the session; [`SessionError::Finished`] / [`SessionError::AlreadyAborted`] after the end.
    pub fn feed(
        &mut self,
        from: u16,
        declared: MsgType,
        bytes: &[u8],
    ) -> Result<Step, SessionError> {
        match self.state {
            State::Running => {}
            State::Finished => return Err(SessionError::Finished),
            State::Aborted => return Err(SessionError::AlreadyAborted),
        }
        if from >= self.parties || from == self.my_position {
            return Err(invalid(format!(
                "sender position {from} is not another party of this session ({} parties, mine {})",
                self.parties, self.my_position
            )));
        }
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let kind = self.kind;
        macro_rules! decoded {
            ($ty:ty) => {{
                match decode::<$ty>(kind, bytes) {
                    Ok((msg, info)) => (msg, info),
                    Err(e) => return Err(self.bad(from, e.to_string())),
                }
            }};
        }
        match kind {
            ProtocolKind::Sign | ProtocolKind::Presign => {
                let (msg, info) = decoded!(SignMsg);
                self.accept(from, declared, hash, msg, info)
            }
            ProtocolKind::Keygen => {
                let (msg, info) = decoded!(KeygenMsg);
                self.accept(from, declared, hash, msg, info)
            }
            ProtocolKind::AuxInfo => {
                let (msg, info) = decoded!(AuxMsg);
                self.accept(from, declared, hash, msg, info)
            }
        }
    }

    fn bad(&mut self, from: u16, reason: String) -> SessionError {
        self.state = State::Aborted;
        SessionError::BadMessage { from, reason }
    }

    /// Type check, duplicate / equivocation check, then feeds the message.
    fn accept<M: WireMsg>(
        &mut self,
        from: u16,
        declared: MsgType,
        hash: [u8; 32],
        msg: M,
        info: crate::phase::MsgInfo,
    ) -> Result<Step, SessionError>
    where
        Machine: Feed<M>,
    {
        if info.msg_type != declared {
            return Err(self.bad(
                from,
                format!(
                    "{} is a {:?} message, declared {declared:?}",
                    info.name, info.msg_type
                ),
            ));
        }
        match self.seen.get(&(from, info.round)) {
            Some(h) if *h == hash => return Ok(Step::Duplicate),
            Some(_) => {
                self.state = State::Aborted;
                return Err(SessionError::Aborted {
                    blamed: vec![from],
                    phase: info.phase,
                    detail: format!(
                        "equivocation: two different {} messages (round {}) from position {from}",
                        info.name, info.round
                    ),
                });
            }
            None => {}
        }
        self.seen.insert((from, info.round), hash);
        let id = self.next_id;
        self.next_id += 1;
        self.senders.insert(id, from);
        let msg_type = match declared {
            MsgType::Broadcast => MessageType::Broadcast,
            MsgType::P2P => MessageType::P2P,
        };
        let incoming = Incoming {
            id,
            sender: from,
            msg_type,
            msg,
        };
        self.run(Some(incoming), info.phase)
    }

    /// Drives the state machine (optionally delivering one message first) and finishes the
    /// output. `phase` is the phase errors are attributed to.
    fn run<M>(&mut self, incoming: Option<Incoming<M>>, phase: Phase) -> Result<Step, SessionError>
    where
        Machine: Feed<M>,
    {
        let kind = self.kind;
        let result = self.machine.feed_and_drive(kind, incoming);
        let result = match result {
            Ok(r) => r,
            Err(DriveError::Execution(detail)) => {
                self.state = State::Aborted;
                return Err(SessionError::Aborted {
                    blamed: vec![],
                    phase,
                    detail: format!("state machine: {detail}"),
                });
            }
            Err(DriveError::Failed(f)) => {
                self.state = State::Aborted;
                let senders = &self.senders;
                let blamed = parse_blame(&f.debug, self.parties, |id| senders.get(&id).copied());
                return Err(SessionError::Aborted {
                    blamed,
                    phase,
                    detail: f.display,
                });
            }
        };
        match result {
            Driven::Waiting(out) => Ok(Step::Continue(out)),
            Driven::Output(output, outgoing) => match output {
                Ok(output) => {
                    self.state = State::Finished;
                    Ok(Step::Done { output, outgoing })
                }
                Err(e) => {
                    self.state = State::Aborted;
                    Err(SessionError::Aborted {
                        blamed: vec![],
                        phase,
                        detail: e.to_string(),
                    })
                }
            },
        }
    }
}

enum DriveError {
    /// The state machine itself failed (misuse or unsupported future).
    Execution(String),
    /// The protocol returned an error.
    Failed(LibFailure),
}

#[allow(clippy::large_enum_variant)] // see Output
enum Driven {
    Waiting(Vec<Outgoing>),
    /// The finished output (or why it could not be finished), and messages sent on the way.
    Output(Result<Output, ThresholdError>, Vec<Outgoing>),
}

/// Feeding a message of type `M` to the machine (implemented for the three message types).
trait Feed<M> {
    fn feed_and_drive(
        &mut self,
        kind: ProtocolKind,
        incoming: Option<Incoming<M>>,
    ) -> Result<Driven, DriveError>;
}

impl Feed<SignMsg> for Machine {
    fn feed_and_drive(
        &mut self,
        kind: ProtocolKind,
        incoming: Option<Incoming<SignMsg>>,
    ) -> Result<Driven, DriveError> {
        match self {
            Machine::Sign {
                sm,
                public_key,
                digest,
            } => drive(sm, kind, incoming, |sig| {
                finish(&sig, public_key, digest).map(Output::Signature)
            }),
            Machine::Presign {
                sm,
                public_key,
                parties,
                my_position,
            } => drive(sm, kind, incoming, |(presig, data)| {
                let public = presignature_public(*public_key, parties.clone(), &data)?;
                Ok(Output::Presignature(StoredPresignature::new(
                    public,
                    *my_position,
                    presig,
                )))
            }),
            _ => Err(DriveError::Execution(
                "message type does not match the session".into(),
            )),
        }
    }
}

impl Feed<KeygenMsg> for Machine {
    fn feed_and_drive(
        &mut self,
        kind: ProtocolKind,
        incoming: Option<Incoming<KeygenMsg>>,
    ) -> Result<Driven, DriveError> {
        match self {
            Machine::Keygen { sm } => drive(sm, kind, incoming, |core| {
                Ok(Output::Incomplete(IncompleteShare(core)))
            }),
            _ => Err(DriveError::Execution(
                "message type does not match the session".into(),
            )),
        }
    }
}

impl Feed<AuxMsg> for Machine {
    fn feed_and_drive(
        &mut self,
        kind: ProtocolKind,
        incoming: Option<Incoming<AuxMsg>>,
    ) -> Result<Driven, DriveError> {
        match self {
            Machine::Aux { sm } => drive(sm, kind, incoming, |aux| Ok(Output::Aux(AuxInfo(aux)))),
            _ => Err(DriveError::Execution(
                "message type does not match the session".into(),
            )),
        }
    }
}

/// Delivers `incoming` (if any), then proceeds until the machine needs a message or finishes.
fn drive<O, M: WireMsg>(
    sm: &mut BoxSm<O, M>,
    kind: ProtocolKind,
    incoming: Option<Incoming<M>>,
    finish_output: impl FnOnce(O) -> Result<Output, ThresholdError>,
) -> Result<Driven, DriveError> {
    if let Some(msg) = incoming {
        sm.received_msg(msg)
            .map_err(|_| DriveError::Execution("state machine refused a message".into()))?;
    }
    let mut out = Vec::new();
    loop {
        match sm.proceed() {
            ProceedResult::SendMsg(o) => {
                let info = o.msg.info(kind).ok_or_else(|| {
                    DriveError::Execution("protocol sent a message of an unknown round".into())
                })?;
                let to = match o.recipient {
                    MessageDestination::AllParties => None,
                    MessageDestination::OneParty(j) => Some(j),
                };
                let bytes = to_json_zeroizing(&o.msg);
                out.push(Outgoing {
                    to,
                    phase: info.phase,
                    round: info.round,
                    bytes,
                });
            }
            ProceedResult::NeedsOneMoreMessage => return Ok(Driven::Waiting(out)),
            ProceedResult::Yielded => {}
            ProceedResult::Output(Ok(o)) => return Ok(Driven::Output(finish_output(o), out)),
            ProceedResult::Output(Err(f)) => return Err(DriveError::Failed(f)),
            ProceedResult::Error(e) => return Err(DriveError::Execution(e.to_string())),
        }
    }
}
