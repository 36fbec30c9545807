//! Repeats of a key generation's requests, as a caller sends them when an answer was lost on
//! the way back (or the bridge could not tell whether it arrived).
//!
//! * **Finished here** (the request id is consumed with the share it made): a start of any
//!   attempt, and a feed of a session started here, answer that key, with the last answer's
//!   messages when this TEE still has them in memory (they may be what the other
//!   participants wait for). Never a second key: one approval, one key.
//! * **Running here**: a start of the same session (same participants) answers its first
//!   messages again with the session's current state. A caller whose start answer was lost
//!   needs exactly those: without them no other participant gets past the first round, and
//!   they hold nothing secret (signed envelopes, point-to-point content sealed to its
//!   receiver; receivers drop repeats). One approval never runs two sessions here at once:
//!   a start of a later attempt ends the running earlier one first (the caller gave up on
//!   it, and its abort may have been lost; waiting for it to expire would stall every retry
//!   for up to the session timeout), and a start of an earlier attempt than the running one
//!   is refused, naming it (a late, stale start).

use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::*;

use super::{Phase, Work, MAX_DKG_SESSIONS};
use crate::platform::Platform;
use crate::threshold::engine::{key_facts, reject, session_name};
use crate::{replayed, TeeCore};

/// Most finished key generations whose last answer's messages are kept (in memory only:
/// each is at most one answer, [`super::MAX_DKG_ANSWER_BYTES`]).
const MAX_FINISHED_KEPT: usize = MAX_DKG_SESSIONS;

impl<P: Platform> TeeCore<P> {
    /// A start of a key generation whose approved request already made a key here (`made`,
    /// from the consumed request id): that key, if the repeat asks for what was made (same
    /// terms and approver group, this node the same share); otherwise refused naming both.
    pub(super) fn first_keygen(
        &self,
        meta: &RequestMeta,
        session: &SessionRef,
        made: &[u8],
        params: &ThresholdKeygenParams,
        policy: Option<&KeyPolicy>,
        my_index: usize,
    ) -> Outcome {
        if self.wallets.contains_key(made) {
            return Err(replayed(
                meta,
                format!("it made wallet {}", crate::wallet::key_hex(made)),
            ));
        }
        let key = self.threshold_key(made)?;
        if key.policy.as_ref() != policy {
            let describe = |p: Option<&KeyPolicy>| match p {
                Some(p) => format!("policy {}", hex::encode(p.hash())),
                None => "no policy".to_string(),
            };
            return Err(replayed(
                meta,
                format!(
                    "it made {} under {}, this repeat asks for {}",
                    key_facts(&key.info),
                    describe(key.policy.as_ref()),
                    describe(policy)
                ),
            ));
        }
        let held = &key.info;
        let same = held.origin == ThresholdOrigin::Dkg
            && held.threshold == params.threshold
            && held.chain_code.is_some() == params.hd
            && held.clusters == params.clusters
            && held.quorum == params.quorum
            && usize::from(held.share_index) == my_index;
        if !same {
            return Err(replayed(
                meta,
                format!(
                    "it made {}, this repeat asks for share {my_index} of a {}-of-{} key over \
                     {:?} (HD: {}, quorum {})",
                    key_facts(held),
                    params.threshold,
                    params.clusters.len(),
                    params.clusters,
                    params.hd,
                    params.quorum
                ),
            ));
        }
        Ok(self.finished_answer(session, held.clone()))
    }

    /// A feed of a session that is not running here: the key it made, when the session was
    /// started here and its request made a key (durably); otherwise the session is unknown.
    pub(crate) fn finished_keygen(&self, session: &SessionRef) -> Outcome {
        let unknown = || TeeError::UnknownSession(session_name(session));
        if !self.threshold.used_sessions.contains_key(session) {
            return Err(unknown());
        }
        let made = self
            .consumed
            .get(&session.request_id)
            .and_then(|c| c.made.as_deref())
            .ok_or_else(unknown)?;
        if self.consumed_pending(&session.request_id) {
            return Err(TeeError::RequestReplayed(format!(
                "{} (its key is not durable yet)",
                session_name(session)
            )));
        }
        match self.threshold.keys.get(made) {
            Some(held) if held.info.origin == ThresholdOrigin::Dkg => {
                Ok(self.finished_answer(session, held.info.clone()))
            }
            _ => Err(unknown()),
        }
    }

    /// The answer of a finished key generation: its key, and the last answer's messages if
    /// still kept for this session.
    fn finished_answer(&self, session: &SessionRef, key: ThresholdKeyInfo) -> Response {
        let outgoing = self
            .threshold
            .finished_keygens
            .iter()
            .find(|(s, _)| s == session)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        Response::ThresholdKeygenRound {
            session: *session,
            phase: Phase::AuxInfo.as_str().into(),
            outgoing,
            computing: false,
            key: Some(key),
        }
    }

    /// Keeps the last answer's messages of a key generation that just finished (the oldest
    /// kept is dropped beyond [`MAX_FINISHED_KEPT`]).
    pub(super) fn keep_final_answer(&mut self, session: SessionRef, outgoing: &[ThresholdMessage]) {
        let kept = &mut self.threshold.finished_keygens;
        kept.retain(|(s, _)| *s != session);
        if kept.len() >= MAX_FINISHED_KEPT {
            kept.pop_front();
        }
        kept.push_back((session, outgoing.to_vec()));
    }

    /// A start of a key generation that may be running here already: the running session's
    /// state with its first messages (a repeat of its start, same participants), a refusal
    /// (an earlier attempt than the running one, or the same session with other
    /// participants), or `None` when no session of this request runs here (any earlier
    /// attempt still running is ended and its unused primes given back).
    pub(super) fn keygen_running(
        &mut self,
        session: &SessionRef,
        eid: &[u8; 32],
    ) -> Result<Option<Response>, TeeError> {
        self.purge_expired_sessions();
        if let Some(live) = self.threshold.live.get(session) {
            let Work::Keygen(dkg) = &live.work else {
                return Err(TeeError::RequestReplayed(session_name(session)));
            };
            if live.eid != *eid {
                return Err(reject(format!(
                    "key generation {} runs here with other participants; a repeat of its \
                     start names the same",
                    session_name(session)
                )));
            }
            return Ok(Some(Response::ThresholdKeygenRound {
                session: *session,
                phase: live.phase.as_str().into(),
                outgoing: dkg.started.clone(),
                computing: dkg.computing(),
                key: None,
            }));
        }
        let other = self
            .threshold
            .live
            .iter()
            .find(|(s, l)| s.request_id == session.request_id && matches!(l.work, Work::Keygen(_)))
            .map(|(s, _)| *s);
        if let Some(running) = other {
            if running.attempt > session.attempt {
                return Err(reject(format!(
                    "key generation {} of this request runs here; attempt {} comes too late",
                    session_name(&running),
                    session.attempt
                )));
            }
            if let Some(live) = self.threshold.live.remove(&running) {
                self.release(live);
            }
        }
        Ok(None)
    }
}
