//! What ties the messages of a threshold session (signing, distributed key generation)
//! together.
//!
//! * The **execution id** ([`execution_id`]) every participating TEE derives itself from the
//!   approved request and the signer list: a participant given other parameters computes
//!   another id, and then neither its signatures nor its proofs verify at the others, so the
//!   cloud server cannot splice sessions together or swap a signer.
//! * Every [`ThresholdMessage`] is signed by its sender's D key over [`message_transcript`]
//!   (domain, execution id, session, sender, recipient, phase, round, HPKE `enc`, payload).
//! * Point-to-point payloads are HPKE-sealed (same suite as key sync) to the receiving node's
//!   certified D key with [`p2p_context`] as `info`, so relays see only ciphertext, and a
//!   ciphertext cannot be moved to another session, round, sender or recipient.

use sha2::{Digest, Sha256};

use super::put;
use custos_wire::protocol::{SessionRef, ThresholdMessage};

/// Domain tag of execution ids.
pub const EID_DOMAIN: &[u8] = b"custos/tecdsa/v1";
/// Domain tag of audit session execution ids ([`audit_execution_id`]): an audit session's
/// envelopes can never be taken for those of a signing session, nor the other way round.
pub const AUDIT_EID_DOMAIN: &[u8] = b"custos/tecdsa-audit/v1";
/// Domain tag of presignature session execution ids ([`presign_execution_id`]).
pub const PRESIGN_EID_DOMAIN: &[u8] = b"custos/tecdsa-presign/v1";
/// Domain tag of message transcripts (what a sender's D signs).
pub const MESSAGE_DOMAIN: &[u8] = b"CUSTOS-TECDSA-MESSAGE-V1\0";
/// Domain tag of point-to-point HPKE contexts.
pub const P2P_DOMAIN: &[u8] = b"CUSTOS-TECDSA-P2P-V1\0";

fn put_session(out: &mut Vec<u8>, session: &SessionRef) {
    put(out, &session.request_id);
    put(out, &[session.attempt]);
}

fn put_recipient(out: &mut Vec<u8>, recipient: Option<u16>) {
    match recipient {
        None => put(out, &[]),
        Some(j) => put(out, &j.to_be_bytes()),
    }
}

/// `SHA-256("custos/tecdsa/v1" ‖ request id ‖ attempt ‖ key id ‖ signer share indexes in
/// signing order ‖ each signer's device certificate fingerprint ‖ digest ‖ path)`, every
/// field length-prefixed. `signers` holds (share index, device certificate fingerprint) in
/// signing order.
pub fn execution_id(
    session: &SessionRef,
    key_id: &[u8],
    signers: &[(u16, [u8; 32])],
    digest: &[u8; 32],
    path: &[u32],
) -> [u8; 32] {
    execution_id_in(EID_DOMAIN, session, key_id, signers, digest, path)
}

/// [`execution_id`] of an audit session (patent [0086]): the same fields under
/// [`AUDIT_EID_DOMAIN`], the digest being `audit_digest(message)` and the path empty.
pub fn audit_execution_id(
    session: &SessionRef,
    key_id: &[u8],
    signers: &[(u16, [u8; 32])],
    digest: &[u8; 32],
) -> [u8; 32] {
    execution_id_in(AUDIT_EID_DOMAIN, session, key_id, signers, digest, &[])
}

/// [`execution_id`] of a presignature session: the same fields under
/// [`PRESIGN_EID_DOMAIN`], no digest (none is known yet) and an empty path (presignatures are
/// for keys without chain code). It is also the presignature's id.
pub fn presign_execution_id(
    session: &SessionRef,
    key_id: &[u8],
    signers: &[(u16, [u8; 32])],
) -> [u8; 32] {
    execution_id_in(
        PRESIGN_EID_DOMAIN,
        session,
        key_id,
        signers,
        &[0u8; 32],
        &[],
    )
}

/// Domain tag of [`transaction_execution_id`].
pub const TX_EID_DOMAIN: &[u8] = b"custos/tecdsa-tx/v1";

/// The execution id of a session signing an input of a transaction:
/// `SHA-256(TX_EID_DOMAIN ‖ execution id ‖ policy hash)`, each length-prefixed, with the
/// hash of the key's policy the participant holds. Apart from any raw signing's id, and
/// the same at two participants only when they hold the same policy.
pub fn transaction_execution_id(eid: &[u8; 32], policy_hash: &[u8; 32]) -> [u8; 32] {
    let mut out = Vec::with_capacity(96);
    put(&mut out, TX_EID_DOMAIN);
    put(&mut out, eid);
    put(&mut out, policy_hash);
    Sha256::digest(&out).into()
}

fn execution_id_in(
    domain: &[u8],
    session: &SessionRef,
    key_id: &[u8],
    signers: &[(u16, [u8; 32])],
    digest: &[u8; 32],
    path: &[u32],
) -> [u8; 32] {
    let mut out = Vec::with_capacity(128 + signers.len() * 40 + path.len() * 4);
    put(&mut out, domain);
    put_session(&mut out, session);
    put(&mut out, key_id);
    let indexes: Vec<u8> = signers.iter().flat_map(|(i, _)| i.to_be_bytes()).collect();
    put(&mut out, &indexes);
    let fingerprints: Vec<u8> = signers.iter().flat_map(|(_, f)| *f).collect();
    put(&mut out, &fingerprints);
    put(&mut out, digest);
    let p: Vec<u8> = path.iter().flat_map(|i| i.to_be_bytes()).collect();
    put(&mut out, &p);
    Sha256::digest(&out).into()
}

/// Domain tag of distributed key generation execution ids.
pub const DKG_EID_DOMAIN: &[u8] = b"custos/tdkg/v1";

/// What a distributed key generation id stands for: the envelopes of the session's messages,
/// or one of its two protocol executions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkgStage {
    /// The id under which every message of the session is signed and sealed.
    Envelope,
    /// Threshold key generation.
    Keygen,
    /// Aux-info generation.
    AuxInfo,
}

impl DkgStage {
    fn tag(self) -> &'static [u8] {
        match self {
            DkgStage::Envelope => b"envelope",
            DkgStage::Keygen => b"keygen",
            DkgStage::AuxInfo => b"aux-info",
        }
    }
}

/// `SHA-256("custos/tdkg/v1" ‖ stage ‖ request id ‖ attempt ‖ t ‖ hd ‖ quorum ‖ clusters ‖
/// each participant's device certificate fingerprint in share-index order [‖ policy hash])`,
/// every field length-prefixed: each participating TEE derives the ids of a key generation
/// itself from the approved request, one per [`DkgStage`], so a participant given other
/// terms or other participants fails every proof and signature check. A key generation with
/// an approver group adds its policy's hash (a legacy one adds nothing, so its ids are
/// unchanged): no session runs with participants that would seal the key under different
/// groups.
#[allow(clippy::too_many_arguments)]
pub fn dkg_execution_id(
    stage: DkgStage,
    session: &SessionRef,
    threshold: u16,
    hd: bool,
    quorum: u8,
    clusters: &[String],
    fingerprints: &[[u8; 32]],
    policy: Option<&[u8; 32]>,
) -> [u8; 32] {
    let mut out = Vec::with_capacity(128 + clusters.len() * 16 + fingerprints.len() * 32);
    put(&mut out, DKG_EID_DOMAIN);
    put(&mut out, stage.tag());
    put_session(&mut out, session);
    put(&mut out, &threshold.to_be_bytes());
    put(&mut out, &[u8::from(hd)]);
    put(&mut out, &[quorum]);
    put(&mut out, &(clusters.len() as u32).to_be_bytes());
    for c in clusters {
        put(&mut out, c.as_bytes());
    }
    let f: Vec<u8> = fingerprints.iter().flatten().copied().collect();
    put(&mut out, &f);
    if let Some(hash) = policy {
        put(&mut out, hash);
    }
    Sha256::digest(&out).into()
}

/// The HPKE `info` of a point-to-point payload from position `sender` to `recipient`.
pub fn p2p_context(
    eid: &[u8; 32],
    session: &SessionRef,
    sender: u16,
    recipient: u16,
    phase: &str,
    round: u16,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(P2P_DOMAIN.len() + 96 + phase.len());
    out.extend_from_slice(P2P_DOMAIN);
    put(&mut out, eid);
    put_session(&mut out, session);
    put(&mut out, &sender.to_be_bytes());
    put(&mut out, &recipient.to_be_bytes());
    put(&mut out, phase.as_bytes());
    put(&mut out, &round.to_be_bytes());
    out
}

/// What the sender's D key signs for a message: every field but the signature, under the
/// session's execution id.
pub fn message_transcript(eid: &[u8; 32], m: &ThresholdMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        MESSAGE_DOMAIN.len() + 128 + m.phase.len() + m.enc.len() + m.payload.len(),
    );
    out.extend_from_slice(MESSAGE_DOMAIN);
    put(&mut out, eid);
    put_session(&mut out, &m.session);
    put(&mut out, &m.sender.to_be_bytes());
    put_recipient(&mut out, m.recipient);
    put(&mut out, m.phase.as_bytes());
    put(&mut out, &m.round.to_be_bytes());
    put(&mut out, &m.enc);
    put(&mut out, &m.payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRef {
        SessionRef {
            request_id: [5; 16],
            attempt: 0,
        }
    }

    #[test]
    fn execution_ids_differ_in_every_field() {
        let s = session();
        let signers = [(0u16, [1u8; 32]), (2, [2; 32])];
        let base = execution_id(&s, &[2; 33], &signers, &[9; 32], &[0, 1]);
        let mut other_attempt = s;
        other_attempt.attempt = 1;
        let mut other_id = s;
        other_id.request_id[3] ^= 1;
        for variant in [
            execution_id(&other_attempt, &[2; 33], &signers, &[9; 32], &[0, 1]),
            execution_id(&other_id, &[2; 33], &signers, &[9; 32], &[0, 1]),
            execution_id(&s, &[3; 33], &signers, &[9; 32], &[0, 1]),
            execution_id(&s, &[2; 33], &[signers[1], signers[0]], &[9; 32], &[0, 1]),
            execution_id(
                &s,
                &[2; 33],
                &[(0, [1; 32]), (1, [2; 32])],
                &[9; 32],
                &[0, 1],
            ),
            execution_id(
                &s,
                &[2; 33],
                &[(0, [1; 32]), (2, [3; 32])],
                &[9; 32],
                &[0, 1],
            ),
            execution_id(&s, &[2; 33], &signers, &[8; 32], &[0, 1]),
            execution_id(&s, &[2; 33], &signers, &[9; 32], &[0, 2]),
            execution_id(&s, &[2; 33], &signers, &[9; 32], &[0, 1, 0]),
        ] {
            assert_ne!(variant, base);
        }
        assert_ne!(
            audit_execution_id(&s, &[2; 33], &signers, &[9; 32]),
            execution_id(&s, &[2; 33], &signers, &[9; 32], &[])
        );
    }

    #[test]
    fn dkg_execution_ids_differ_in_every_field_and_stage() {
        let s = session();
        let clusters: Vec<String> = ["dc1", "dc2", "dc3"].map(String::from).to_vec();
        let fps = [[1u8; 32], [2; 32], [3; 32]];
        let id = |stage, s: &SessionRef, t, hd, q, c: &[String], f: &[[u8; 32]]| {
            dkg_execution_id(stage, s, t, hd, q, c, f, None)
        };
        let base = id(DkgStage::Keygen, &s, 2, true, 1, &clusters, &fps);
        let mut other_attempt = s;
        other_attempt.attempt = 1;
        let swapped: Vec<String> = ["dc2", "dc1", "dc3"].map(String::from).to_vec();
        let joined: Vec<String> = ["dc1dc2", "dc3"].map(String::from).to_vec();
        for v in [
            id(DkgStage::Envelope, &s, 2, true, 1, &clusters, &fps),
            id(DkgStage::AuxInfo, &s, 2, true, 1, &clusters, &fps),
            id(
                DkgStage::Keygen,
                &other_attempt,
                2,
                true,
                1,
                &clusters,
                &fps,
            ),
            id(DkgStage::Keygen, &s, 3, true, 1, &clusters, &fps),
            id(DkgStage::Keygen, &s, 2, false, 1, &clusters, &fps),
            id(DkgStage::Keygen, &s, 2, true, 2, &clusters, &fps),
            id(DkgStage::Keygen, &s, 2, true, 1, &swapped, &fps),
            id(DkgStage::Keygen, &s, 2, true, 1, &joined, &fps),
            id(
                DkgStage::Keygen,
                &s,
                2,
                true,
                1,
                &clusters,
                &[fps[1], fps[0], fps[2]],
            ),
        ] {
            assert_ne!(v, base);
        }
        // A group key generation's ids name its policy, and differ from the legacy ones.
        let grouped =
            |policy| dkg_execution_id(DkgStage::Keygen, &s, 2, true, 1, &clusters, &fps, policy);
        assert_ne!(grouped(Some(&[7; 32])), base);
        assert_ne!(grouped(Some(&[7; 32])), grouped(Some(&[8; 32])));
        assert_eq!(grouped(None), base);
    }

    #[test]
    fn transcripts_and_contexts_bind_every_field() {
        let m = ThresholdMessage {
            session: session(),
            sender: 0,
            recipient: Some(1),
            phase: "getAB".into(),
            round: 1,
            enc: vec![4; 65],
            payload: vec![7; 40],
            signature: vec![],
        };
        let eid = [3u8; 32];
        let base = message_transcript(&eid, &m);
        let mut variants = vec![message_transcript(&[4; 32], &m)];
        let edits: &[fn(&mut ThresholdMessage)] = &[
            |m| m.session.attempt = 1,
            |m| m.sender = 1,
            |m| m.recipient = None,
            |m| m.recipient = Some(0),
            |m| m.phase = "getR".into(),
            |m| m.round = 2,
            |m| m.enc.clear(),
            |m| m.payload[39] ^= 1,
        ];
        for edit in edits {
            let mut v = m.clone();
            edit(&mut v);
            variants.push(message_transcript(&eid, &v));
        }
        // The signature itself is not part of what is signed.
        let mut signed = m.clone();
        signed.signature = vec![1, 2, 3];
        assert_eq!(message_transcript(&eid, &signed), base);
        for v in variants {
            assert_ne!(v, base);
        }
        let ctx = p2p_context(&eid, &m.session, 0, 1, "getAB", 1);
        for v in [
            p2p_context(&[0; 32], &m.session, 0, 1, "getAB", 1),
            p2p_context(&eid, &session(), 1, 0, "getAB", 1),
            p2p_context(&eid, &m.session, 0, 1, "getAB_and_R", 1),
            p2p_context(&eid, &m.session, 0, 1, "getAB", 2),
        ] {
            assert_ne!(v, ctx);
        }
    }
}
