//! The messages of a running session: this TEE's outgoing ones wrapped in signed envelopes
//! (p2p content sealed to the recipient), the incoming ones checked and opened, and a feed of
//! them driven through the session.

use custos_pki::TrustRoot;
use custos_threshold::{MsgType, Outgoing, Output, Phase, ProtocolKind, Step};
use zeroize::Zeroizing;

use super::engine::{reject, session_name, Fault, Live, Work};
use super::wire::{message_transcript, p2p_context};
use crate::platform::Platform;
use crate::{sync, TeeCore};
use custos_wire::protocol::*;

/// Longest HPKE `enc` accepted in a message (a P-256 point is 65 bytes).
const MAX_ENC_LEN: usize = 133;
/// Longest D signature accepted in a message (DER ECDSA P-256 is at most 72 bytes).
const MAX_SIGNATURE_LEN: usize = 80;

impl<P: Platform> TeeCore<P> {
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

    /// [`Request::ThresholdFeed`].
    ///
    /// First, without touching the session, every message must belong to it, come from
    /// another participant, be addressed to this node (or broadcast) and respect the size
    /// limits; otherwise the request is refused ([`TeeError::ThresholdRejected`]) and the
    /// session goes on. Then each message in turn: a bad signature, an envelope that does not
    /// match the content, a p2p payload that does not open, or the engine's refusal aborts
    /// the session ([`TeeError::ThresholdAborted`], naming the sender's cluster or those
    /// the protocol blamed). Identical repeats are ignored. A key generation's messages are
    /// checked the same way and then queued on its own worker (`super::dkg`); a feed of a
    /// key generation that finished here answers the key it made (`super::dkg`'s repeats).
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
            // A repeat of a finished key generation's last feed answers its key.
            return self.finished_keygen(&session);
        };
        if let Some(p) = feed_problem(&session, &live, messages) {
            self.threshold.live.insert(session, live);
            return Err(reject(p));
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
                    return self.finish_session(session, live, output, last, outgoing);
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

    /// Ends a session the engine finished with `output`: a presignature is sealed and
    /// stored, a signature checked independently, before either is answered (with the
    /// engine's `last` messages after the `outgoing` ones of this feed).
    fn finish_session(
        &mut self,
        session: SessionRef,
        mut live: Live,
        output: Output,
        last: Vec<Outgoing>,
        mut outgoing: Vec<ThresholdMessage>,
    ) -> Outcome {
        match output {
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
                    Err(d) => return Err(self.abort_live(&session, live, &[], Phase::GetSig, d)),
                };
                outgoing.extend(self.emit(&session, &live, last)?);
                Ok(Response::ThresholdRound {
                    session,
                    phase: Phase::GetSig.as_str().into(),
                    outgoing,
                    signature: Some(signature),
                })
            }
        }
    }
}

/// The first reason, if any, why a feed's message cannot be for this node in this session:
/// checked for every message before any of them touches the session.
fn feed_problem(
    session: &SessionRef,
    live: &Live,
    messages: &[ThresholdMessage],
) -> Option<String> {
    let t = live.signers.len();
    for (i, m) in messages.iter().enumerate() {
        let problem = if m.session != *session {
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
        if problem.is_some() {
            return problem;
        }
    }
    None
}
