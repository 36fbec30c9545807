//! Threshold signing sessions (patent FIG. 12-15): an approved signing of a digest with a
//! child key, or an audit with the root key, opened here and fed through `super::messages`;
//! the engine's signature is checked independently before it leaves.

use std::time::{Duration, Instant};

use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature as SecpSignature};
use bitcoin::secp256k1::{Message, PublicKey};
use custos_threshold::{Phase, SessionKind};

use super::engine::{reject, session_name, Live, Work, MAX_LIVE_SESSIONS, SESSION_TIMEOUT};
use super::wire::{audit_execution_id, execution_id, transaction_execution_id};
use crate::platform::Platform;
use crate::TeeCore;
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::protocol::*;

/// Who allows a signing session.
#[derive(Clone, Copy)]
pub(super) enum SignPolicy<'a> {
    /// Admin approvals of the request (any digest, any non-hardened path).
    Approved {
        meta: &'a RequestMeta,
        approvals: &'a [Approval],
    },
    /// An audit (patent [0086]): the root key over an audit digest, no approvals.
    Audit,
    /// An input of a transaction whose approvals, intent and tiers the caller checked:
    /// the key's policy is applied (and the request id consumed) once the session is known
    /// to start, so a refused start counts nothing.
    Transaction {
        meta: &'a RequestMeta,
        intent_hash: &'a [u8; 32],
        intent: &'a custos_tx::Intent,
    },
}

impl<P: Platform> TeeCore<P> {
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

    /// Opens a signing session (approved signing, transaction input or audit, per `policy`)
    /// and returns its first messages.
    pub(super) fn start_sign_session(
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
        let held = self.threshold_key(key_id)?;
        if matches!(policy, SignPolicy::Approved { .. }) {
            Self::raw_signing(held.policy.as_ref(), key_id)?;
        }
        let (info, who) = (held.info.clone(), Self::approvers_for_share(held));
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
            SignPolicy::Transaction { meta, .. } => meta.expires_at,
            SignPolicy::Approved { meta, approvals } => {
                self.approve_in_by(
                    THRESHOLD_SCOPE,
                    meta,
                    Action::ThresholdSign {
                        key_id,
                        path,
                        digest,
                    },
                    approvals,
                    who,
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
            // Under the policy each participant holds: participants whose policies differ
            // (a change that reached some clusters only) cannot finish a session together.
            SignPolicy::Transaction { .. } => {
                let policy = self.policy_key(key_id)?.current();
                let eid = execution_id(&session, key_id, &fingerprints, digest, path);
                transaction_execution_id(&eid, &policy.hash())
            }
            SignPolicy::Audit => audit_execution_id(&session, key_id, &fingerprints, digest),
        };
        let held = self.threshold_key(key_id)?;
        let child_key = held
            .share
            .derive_child_public_key(path)
            .map_err(|e| TeeError::InvalidPath(e.to_string()))?;
        let share = held.share.clone();

        if let SignPolicy::Transaction {
            meta,
            intent_hash,
            intent,
        } = policy
        {
            let indexes: Vec<u16> = signers.iter().map(|s| s.share_index).collect();
            self.check_spend(meta, key_id, (intent_hash, intent), Some(&indexes))?;
        }
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

    /// Checks the engine's signature independently: the key is the approved child key, and
    /// libsecp256k1 verifies it, low-s, with `v` recovering the key.
    pub(super) fn check_signature(
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
}
