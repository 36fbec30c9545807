//! Presignatures: generated ahead of time by t TEEs for a threshold key without chain code,
//! held sealed in each TEE, and used once each for an online signature of a full message.
//!
//! A presignature used twice reveals the signer's key share, so its use is ordered:
//! the TEE checks the approvals, then removes the sealed record and records the attempt as
//! used and **commits** both, and only then computes the partial signature. A crash after the
//! commit loses the presignature (the caller takes another one); a crash before it leaves
//! nothing issued. Presignature records (`tpresig/<id hex>`) are never part of a
//! key transfer between the nodes of a cluster, so no second node ever holds a copy.
//!
//! A presignature is bound to the signers it was made with. Each record keeps their device
//! identities as the start verified them, and a use checks each again, with the same check
//! a session start makes (`member_signer`), against the governance logs held now: a device
//! removed from its cluster's log or revoked since gets nothing more (issue 12). A
//! presignature one of whose signers is refused can never be used with anyone else, so the
//! refusal also deletes it, durably, before it answers (`not_a_member`, `device_revoked`,
//! `foreign_log_missing`, as at a start). A sign request names no co-signers (the
//! presignature's id binds them, see `presign_execution_id`), so there is nothing of the
//! request to compare them with.
//!
//! Record body (`tpresig/<id hex>`):
//!
//! | version | body |
//! |---|---|
//! | 1 (before co-signers were recorded) | the JSON of the [`StoredPresignature`] (starts with `{`) |
//! | 2 | `P` ‖ `2` ‖ field(JSON of the presignature) ‖ per signer, in the presignature's party order: field(share index, u16 BE) ‖ field(cluster) ‖ field(node name) ‖ field(device public key, SEC1) ‖ field(device certificate SHA-256) |
//!
//! (field: [`custos_wire::field::put`], u32 BE length ‖ bytes.) A version 1 record names no
//! signer: its use re-checks what can be known, this node's own membership of its cluster's
//! log; a co-signer whose cluster the key anchors (and whose identity is therefore needed)
//! cannot be checked, so such a record is refused and deleted like one whose co-signer is
//! no member (`threshold_rejected`); for a key without anchors the certificate rule of its
//! start is all there is, and the record stays usable.
//!
//! Security rules of the library (RUSTSEC-2025-0127): no presignature for a key with HD
//! derivation, and the TEE always hashes the full message itself.

use std::time::{Duration, Instant};

use custos_pki::DeviceIdentity;
use custos_threshold::{issue_partial, Phase, SessionKind, StoredPresignature};
use custos_wire::field::{put, take};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::engine::{
    in_context, reject, session_name, session_record, Live, Work, MAX_LIVE_SESSIONS,
    SESSION_TIMEOUT,
};
use super::wire::presign_execution_id;
use super::PRESIGN_PREFIX;
use crate::platform::{Platform, PlatformError, RecordId};
use crate::wallet::key_hex;
use crate::{storage, TeeCore};
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::protocol::*;

/// Record name of a stored presignature (its key is inside the record).
pub(crate) fn presign_record(id: &[u8; 32]) -> Result<RecordId, PlatformError> {
    RecordId::new(format!("{PRESIGN_PREFIX}{}", hex::encode(id)))
}

/// Parses [`presign_record`] names back.
pub(crate) fn parse_presign_record(name: &str) -> Option<[u8; 32]> {
    let id = name.strip_prefix(PRESIGN_PREFIX)?;
    <[u8; 32]>::try_from(hex::decode(id).ok()?).ok()
}

/// First byte of a version 2 presignature record (a version 1 record is JSON, `{`).
const RECORD_TAG: u8 = b'P';
/// The record version that names the signers.
const RECORD_V2: u8 = 2;

/// A presignature held, with the signers it was made with.
pub(crate) struct HeldPresignature {
    pub(crate) presig: StoredPresignature,
    /// Each signer's share index and device identity, in the presignature's party order
    /// (this node's own at its position); `None` for a record sealed before they were kept.
    pub(crate) signers: Option<Vec<(u16, DeviceIdentity)>>,
}

impl HeldPresignature {
    /// The sealed record (format in the module documentation).
    pub(crate) fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let presig = self.presig.to_sealed_bytes();
        let Some(signers) = &self.signers else {
            return presig;
        };
        let mut out = Zeroizing::new(Vec::with_capacity(presig.len() + 256 * signers.len()));
        out.push(RECORD_TAG);
        out.push(RECORD_V2);
        put(&mut out, &presig);
        for (index, id) in signers {
            put(&mut out, &index.to_be_bytes());
            put(&mut out, id.cluster.as_bytes());
            put(&mut out, id.node.as_bytes());
            put(&mut out, &id.public_key);
            put(&mut out, &id.fingerprint);
        }
        out
    }

    /// Parses a record of either version; a version 2 record must name exactly the
    /// presignature's parties, in its order.
    pub(crate) fn from_record(record: &[u8]) -> Result<Self, String> {
        let [RECORD_TAG, version, rest @ ..] = record else {
            let presig = StoredPresignature::from_bytes(record).map_err(|e| e.to_string())?;
            return Ok(HeldPresignature {
                presig,
                signers: None,
            });
        };
        if *version != RECORD_V2 {
            return Err(format!("presignature record version {version}"));
        }
        let mut input = rest;
        let truncated = || "truncated presignature record".to_string();
        let presig = StoredPresignature::from_bytes(take(&mut input).ok_or_else(truncated)?)
            .map_err(|e| e.to_string())?;
        let text = |f: &[u8]| String::from_utf8(f.to_vec()).map_err(|e| e.to_string());
        let mut signers = Vec::new();
        while !input.is_empty() {
            let mut next = || take(&mut input).ok_or_else(truncated);
            let index = u16::from_be_bytes(next()?.try_into().map_err(|_| "bad share index")?);
            let cluster = text(next()?)?;
            let node = text(next()?)?;
            let public_key = next()?.to_vec();
            let fingerprint = next()?.try_into().map_err(|_| "bad fingerprint")?;
            signers.push((
                index,
                DeviceIdentity {
                    cluster,
                    node,
                    public_key,
                    fingerprint,
                },
            ));
        }
        if !signers
            .iter()
            .map(|(i, _)| *i)
            .eq(presig.public().parties().iter().copied())
        {
            return Err("the recorded signers are not the presignature's parties".into());
        }
        Ok(HeldPresignature {
            presig,
            signers: Some(signers),
        })
    }
}

fn info_of(id: &[u8; 32], p: &StoredPresignature) -> PresignatureInfo {
    PresignatureInfo {
        id: *id,
        key_id: p.public().public_key().to_vec(),
        signers: p.public().parties().to_vec(),
    }
}

impl<P: Platform> TeeCore<P> {
    /// Ends every presignature of `key_id` made or being made under its current policy (its
    /// co-signers were the ones that policy let in): live presign sessions are released, and
    /// stored ones leave memory at once, their records removed with the next commit. Memory
    /// goes first, so a failure anywhere never leaves one usable here that storage dropped;
    /// one whose removal a failed commit discarded only comes back after a restart.
    pub(crate) fn end_presignatures_of(&mut self, key_id: &[u8]) -> Result<(), PlatformError> {
        let live: Vec<SessionRef> = self
            .threshold
            .live
            .iter()
            .filter(|(_, l)| matches!(&l.work, Work::Presign { key_id: k, .. } if k[..] == *key_id))
            .map(|(s, _)| *s)
            .collect();
        for s in live {
            if let Some(l) = self.threshold.live.remove(&s) {
                self.release(l);
            }
        }
        let ids: Vec<[u8; 32]> = self
            .threshold
            .presigs
            .iter()
            .filter(|(_, p)| p.presig.public().public_key()[..] == *key_id)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.threshold.presigs.remove(id);
        }
        for id in &ids {
            self.platform.remove(&presign_record(id)?)?;
        }
        Ok(())
    }

    /// The threshold key a presignature request names, which must have no chain code.
    fn presign_key(&self, key_id: &[u8]) -> Result<ThresholdKeyInfo, TeeError> {
        let info = self.threshold_key(key_id)?.info.clone();
        if info.chain_code.is_some() {
            return Err(reject(format!(
                "threshold key {} derives HD children: presignatures are only made and used \
                 for keys without chain code (RUSTSEC-2025-0127)",
                key_hex(key_id)
            )));
        }
        Ok(info)
    }

    /// Presignatures held for `key_id`, plus those being made.
    fn presignatures_of(&self, key_id: &[u8]) -> usize {
        let held = self
            .threshold
            .presigs
            .values()
            .filter(|p| p.presig.public().public_key()[..] == *key_id)
            .count();
        let making = self
            .threshold
            .live
            .values()
            .filter(|l| matches!(&l.work, Work::Presign { key_id: k, .. } if k[..] == *key_id))
            .count();
        held + making
    }

    /// [`Request::ThresholdPresignStart`].
    pub(crate) fn threshold_presign_start(
        &mut self,
        session: SessionRef,
        key_id: &[u8],
        signer_list: &[ThresholdSigner],
    ) -> Outcome {
        self.identity()?;
        let info = self.presign_key(key_id)?;
        let now = self.platform.now_unix();
        let (my_position, signers) = self.session_signers(&info, signer_list, now)?;
        if self.threshold.used_sessions.contains_key(&session) {
            return Err(TeeError::RequestReplayed(session_name(&session)));
        }
        self.purge_expired_sessions();
        if self.presignatures_of(key_id) >= MAX_PRESIGNATURES_PER_KEY {
            return Err(reject(format!(
                "{MAX_PRESIGNATURES_PER_KEY} presignatures of key {} are held or being made",
                key_hex(key_id)
            )));
        }
        if self.threshold.live.len() >= MAX_LIVE_SESSIONS {
            return Err(reject(format!(
                "{MAX_LIVE_SESSIONS} sessions are open, retry later"
            )));
        }
        let fingerprints: Vec<(u16, [u8; 32])> = signers
            .iter()
            .map(|s| (s.share_index, s.identity.fingerprint))
            .collect();
        let eid = presign_execution_id(&session, key_id, &fingerprints);
        // A start replayed after its session record expired must not make a second
        // presignature under the id of one still held.
        if self.threshold.presigs.contains_key(&eid) {
            return Err(TeeError::RequestReplayed(session_name(&session)));
        }
        let share = self.threshold_key(key_id)?.share.clone();
        // The record of the session outlives the session itself.
        self.record_session_start(&session, now.saturating_add(SESSION_TIMEOUT.as_secs()))?;
        let deadline = Instant::now() + SESSION_TIMEOUT.min(Duration::from_secs(600));
        let kind = SessionKind::Presign {
            share,
            parties: signers.iter().map(|s| s.share_index).collect(),
            my_position: my_position as u16,
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
            phase: Phase::Presign,
            deadline,
            work: Work::Presign {
                host_id: eid,
                key_id: key_id.to_vec(),
            },
        };
        let outgoing = self.go_live(session, live, out)?;
        Ok(Response::ThresholdPresignRound {
            session,
            phase: Phase::Presign.as_str().into(),
            outgoing,
            presignature: None,
        })
    }

    /// Seals and commits a finished presignature before the session's last answer leaves.
    pub(super) fn store_presignature(
        &mut self,
        live: &Live,
        presig: StoredPresignature,
    ) -> Result<PresignatureInfo, String> {
        let Work::Presign { key_id, .. } = &live.work else {
            return Err("not a presignature session".into());
        };
        if presig.public().public_key()[..] != key_id[..] {
            return Err("the presignature is for another key".into());
        }
        let expected: Vec<u16> = live.signers.iter().map(|s| s.share_index).collect();
        if presig.public().parties() != expected.as_slice()
            || presig.my_position() != live.my_position
        {
            return Err("the presignature's signers are not the session's".into());
        }
        let id = live.eid;
        let held = HeldPresignature {
            presig,
            signers: Some(
                live.signers
                    .iter()
                    .map(|s| (s.share_index, s.identity.clone()))
                    .collect(),
            ),
        };
        let record = presign_record(&id).map_err(|e| e.to_string())?;
        self.platform
            .seal(&record, &held.to_record())
            .map_err(|e| e.to_string())?;
        self.commit_pending()
            .map_err(|e| format!("storing the presignature: {e}"))?;
        let info = info_of(&id, &held.presig);
        self.threshold.presigs.insert(id, held);
        Ok(info)
    }

    /// Checks every signer of presignature `id` again as a session start checks it
    /// (`member_signer`: this cluster's log for a device of this cluster, the anchored log
    /// for another cluster's), against the logs held now. A record without its signers
    /// (version 1) checks this node itself, and is refused when the key anchors another
    /// cluster, whose co-signer it cannot name.
    fn check_presignature_signers(
        &self,
        id: &[u8; 32],
        held: &HeldPresignature,
    ) -> Result<(), TeeError> {
        let info = &self
            .threshold_key(&held.presig.public().public_key()[..])?
            .info;
        let anchors = self.signer_anchors(info)?;
        let anchor = |index: u16| anchors.as_ref().and_then(|a| a.get(usize::from(index)));
        let named = |index: u16, cluster: &str| {
            format!(
                "presignature {} signer of share {index} (cluster {cluster})",
                hex::encode(id)
            )
        };
        match &held.signers {
            Some(signers) => {
                for (index, identity) in signers {
                    let cluster = identity.cluster.clone();
                    self.member_signer(identity.clone(), anchor(*index))
                        .map_err(|e| in_context(e, named(*index, &cluster)))?;
                }
            }
            None => {
                let (own, _) = self.identity()?.clone();
                self.member_signer(own.clone(), anchor(info.share_index))
                    .map_err(|e| in_context(e, named(info.share_index, &own.cluster)))?;
                if anchors.is_some() {
                    return Err(reject(format!(
                        "presignature {} was made before its co-signers were recorded and \
                         key {} anchors their clusters: they cannot be checked, so it is \
                         deleted (make another)",
                        hex::encode(id),
                        key_hex(&info.key_id)
                    )));
                }
            }
        }
        Ok(())
    }

    /// [`Request::ListPresignatures`].
    pub(crate) fn list_presignatures(&self, key_id: &[u8]) -> Outcome {
        self.identity()?;
        self.threshold_key(key_id)?;
        Ok(Response::Presignatures(
            self.threshold
                .presigs
                .iter()
                .filter(|(_, p)| p.presig.public().public_key()[..] == *key_id)
                .map(|(id, p)| info_of(id, &p.presig))
                .collect(),
        ))
    }

    /// [`Request::ThresholdPresignSign`]: see its documentation for the order of the steps.
    pub(crate) fn threshold_presign_sign(
        &mut self,
        meta: &RequestMeta,
        attempt: u8,
        params: &PresignSignParams,
        approvals: &[Approval],
    ) -> Outcome {
        self.identity()?;
        if params.message.len() > MAX_PRESIGN_MESSAGE {
            return Err(TeeError::InvalidRequest(format!(
                "message of {} bytes, at most {MAX_PRESIGN_MESSAGE}",
                params.message.len()
            )));
        }
        if attempt >= MAX_THRESHOLD_ATTEMPTS {
            return Err(TeeError::InvalidRequest(format!(
                "attempt {attempt}, at most {MAX_THRESHOLD_ATTEMPTS} attempts"
            )));
        }
        self.presign_key(&params.key_id)?;
        let held = self.threshold_key(&params.key_id)?;
        Self::raw_signing(held.policy.as_ref(), &params.key_id)?;
        let who = Self::approvers_for_share(held);
        // The full message is hashed here: a digest from outside is never signed with a
        // presignature.
        let digest: [u8; 32] = Sha256::digest(&params.message).into();
        self.approve_in_by(
            THRESHOLD_SCOPE,
            meta,
            Action::ThresholdSign {
                key_id: &params.key_id,
                path: &[],
                digest: &digest,
            },
            approvals,
            who,
        )?;
        let session = SessionRef {
            request_id: meta.request_id,
            attempt,
        };
        if self.threshold.used_sessions.contains_key(&session) {
            return Err(TeeError::RequestReplayed(session_name(&session)));
        }
        let id = params.presignature;
        let held = match self.threshold.presigs.remove(&id) {
            Some(p) if p.presig.public().public_key()[..] == params.key_id[..] => p,
            other => {
                if let Some(p) = other {
                    self.threshold.presigs.insert(id, p);
                }
                return Err(TeeError::UnknownPresignature(hex::encode(id)));
            }
        };
        // Out of memory from here on: one whose signer is refused is deleted, not put back.
        if let Err(refused) = self.check_presignature_signers(&id, &held) {
            let deleted = presign_record(&id)
                .and_then(|r| self.platform.remove(&r))
                .and_then(|_| self.commit_pending());
            return Err(match deleted {
                Ok(()) => refused,
                Err(e) => storage(e),
            });
        }
        let HeldPresignature {
            presig,
            signers: held_signers,
        } = held;

        // Consumed durably before the partial signature exists.
        let consumed = session_record(&session)
            .and_then(|r| self.platform.seal(&r, &meta.expires_at.to_be_bytes()))
            .and_then(|_| presign_record(&id))
            .and_then(|r| self.platform.remove(&r));
        let committed = consumed.and_then(|_| {
            self.threshold
                .used_sessions
                .insert(session, meta.expires_at);
            self.commit_pending()
        });
        if let Err(e) = committed {
            // The platform discarded the writes: the presignature is still stored and was
            // never used.
            self.threshold.used_sessions.remove(&session);
            self.threshold.presigs.insert(
                id,
                HeldPresignature {
                    presig,
                    signers: held_signers,
                },
            );
            return Err(storage(e));
        }
        let public = presig.public().to_bytes();
        let partial = issue_partial(presig, &params.message);
        Ok(Response::ThresholdPartial {
            presignature: id,
            position: partial.position,
            sigma: partial.sigma,
            public,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(record: &[u8]) -> String {
        match HeldPresignature::from_record(record) {
            Err(e) => e,
            Ok(_) => panic!("{record:?} was read as a presignature"),
        }
    }

    /// A record of an unknown version, a cut one, and one that is neither version are
    /// refused (the TEE sets it aside at open and never uses it).
    #[test]
    fn malformed_presignature_records_are_refused() {
        assert!(refused(&[RECORD_TAG, 3, 0, 0, 0, 0]).contains("version 3"));
        assert!(refused(&[RECORD_TAG, RECORD_V2, 0, 0]).contains("truncated"));
        let mut cut = vec![RECORD_TAG, RECORD_V2];
        put(&mut cut, b"{}");
        cut.truncate(cut.len() - 1);
        assert!(refused(&cut).contains("truncated"));
        refused(b"not json");
        refused(&[]);
    }
}
