//! Phases and message classification.
//!
//! The patent names the exchanges of a signing session; they map onto the cggmp24 signing
//! rounds as follows (enforce_reliable_broadcast is on, so there is a `ReliabilityCheck` round):
//!
//! | cggmp24 message | round | type | phase |
//! |---|---|---|---|
//! | `Round1a` (Paillier ciphertexts K, G; El-Gamal commitments) | 0 | broadcast | `getAB` |
//! | `Round1b` (ψ⁰, ψ¹ range proofs for the receiver) | 1 | p2p | `getAB` |
//! | `ReliabilityCheck` (hash of all Round1a seen) | 5 | broadcast | `getAB` |
//! | `Round2` (Γ and the MtA ciphertexts + proofs) | 2 | p2p | `getAB_and_R` |
//! | `Round3` (δ, S, Δ + proof) | 3 | broadcast | `getR` |
//! | `Round4` (partial signature σ) | 4 | broadcast | `getSig` |
//!
//! Presignature generation runs rounds 0–3 and 5 of the same protocol; its messages are all in
//! phase [`Phase::Presign`] (a `Round4` message is not part of it). Key generation messages are
//! [`Phase::Keygen`], aux-info generation messages [`Phase::AuxInfo`].
//!
//! "round" is the library's round number of a message (`round_based::ProtocolMessage::round`,
//! the variant's position in the message enum), so it is what the router of the receiving
//! state machine files the message under. A session layer puts phase and round in the signed
//! envelope and checks them on receipt with [`inspect`].

use cggmp24::round_based::ProtocolMessage;
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;

use crate::{ThresholdError, E, L, MAX_MESSAGE_BYTES};

pub(crate) type SignMsg = cggmp24::signing::msg::Msg<E, Sha256>;
pub(crate) type KeygenMsg = cggmp24::keygen::msg::threshold::Msg<E, L, Sha256>;
pub(crate) type AuxMsg = cggmp24::key_refresh::msg::Msg<Sha256, L>;

pub use custos_threshold_public::Phase;

/// Broadcast or point-to-point, as declared by a message's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Sent to every other party of the session.
    Broadcast,
    /// Sent to one party.
    P2P,
}

/// The protocol a session runs (selects the message format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolKind {
    /// Interactive signing.
    Sign,
    /// Presignature generation.
    Presign,
    /// Distributed key generation (threshold keygen, without aux info).
    Keygen,
    /// Aux-info generation.
    AuxInfo,
}

impl ProtocolKind {
    /// The phase errors are attributed to before any message was received.
    pub(crate) fn first_phase(self) -> Phase {
        match self {
            ProtocolKind::Sign => Phase::GetAb,
            ProtocolKind::Presign => Phase::Presign,
            ProtocolKind::Keygen => Phase::Keygen,
            ProtocolKind::AuxInfo => Phase::AuxInfo,
        }
    }
}

/// What a protocol message is, from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgInfo {
    /// Its phase.
    pub phase: Phase,
    /// The library's round number.
    pub round: u16,
    /// Broadcast or p2p, as the protocol sends it.
    pub msg_type: MsgType,
    /// The library's variant name (e.g. `"Round1b"`), for logs.
    pub name: &'static str,
}

/// A protocol message type this crate drives.
pub(crate) trait WireMsg: Serialize + DeserializeOwned + ProtocolMessage + 'static {
    /// Classifies the message; `None` if it belongs to no round of `kind`.
    fn info(&self, kind: ProtocolKind) -> Option<MsgInfo>;
}

fn info(phase: Phase, round: u16, msg_type: MsgType, name: &'static str) -> Option<MsgInfo> {
    Some(MsgInfo {
        phase,
        round,
        msg_type,
        name,
    })
}

impl WireMsg for SignMsg {
    fn info(&self, kind: ProtocolKind) -> Option<MsgInfo> {
        use cggmp24::signing::msg::Msg;
        use MsgType::*;
        let round = self.round();
        let presign = match kind {
            ProtocolKind::Sign => false,
            ProtocolKind::Presign => true,
            _ => return None,
        };
        let p = |sign_phase: Phase| if presign { Phase::Presign } else { sign_phase };
        match self {
            Msg::Round1a(_) => info(p(Phase::GetAb), round, Broadcast, "Round1a"),
            Msg::Round1b(_) => info(p(Phase::GetAb), round, P2P, "Round1b"),
            Msg::ReliabilityCheck(_) => info(p(Phase::GetAb), round, Broadcast, "ReliabilityCheck"),
            Msg::Round2(_) => info(p(Phase::GetAbAndR), round, P2P, "Round2"),
            Msg::Round3(_) => info(p(Phase::GetR), round, Broadcast, "Round3"),
            Msg::Round4(_) if !presign => info(Phase::GetSig, round, Broadcast, "Round4"),
            Msg::Round4(_) => None,
        }
    }
}

impl WireMsg for KeygenMsg {
    fn info(&self, kind: ProtocolKind) -> Option<MsgInfo> {
        use cggmp24::keygen::msg::threshold::Msg;
        use MsgType::*;
        if kind != ProtocolKind::Keygen {
            return None;
        }
        let round = self.round();
        let k = Phase::Keygen;
        match self {
            Msg::Round1(_) => info(k, round, Broadcast, "Round1"),
            Msg::Round2Broad(_) => info(k, round, Broadcast, "Round2Broad"),
            Msg::Round2Uni(_) => info(k, round, P2P, "Round2Uni"),
            Msg::Round3(_) => info(k, round, Broadcast, "Round3"),
            Msg::ReliabilityCheck(_) => info(k, round, Broadcast, "ReliabilityCheck"),
        }
    }
}

impl WireMsg for AuxMsg {
    fn info(&self, kind: ProtocolKind) -> Option<MsgInfo> {
        use cggmp24::key_refresh::msg::Msg;
        use MsgType::*;
        if kind != ProtocolKind::AuxInfo {
            return None;
        }
        let round = self.round();
        let a = Phase::AuxInfo;
        match self {
            Msg::Round1(_) => info(a, round, Broadcast, "Round1"),
            Msg::Round2(_) => info(a, round, Broadcast, "Round2"),
            Msg::Round3(_) => info(a, round, P2P, "Round3"),
            Msg::ReliabilityCheck(_) => info(a, round, Broadcast, "ReliabilityCheck"),
        }
    }
}

/// Decodes a message of protocol `kind` (at most [`MAX_MESSAGE_BYTES`]) and classifies it.
pub(crate) fn decode<M: WireMsg>(
    kind: ProtocolKind,
    bytes: &[u8],
) -> Result<(M, MsgInfo), ThresholdError> {
    let msg: M = crate::util::from_json_bounded(bytes, MAX_MESSAGE_BYTES, "protocol message")?;
    let info = msg.info(kind).ok_or_else(|| ThresholdError::Decode {
        what: "protocol message",
        reason: format!("round {} is not part of {kind:?}", msg.round()),
    })?;
    Ok((msg, info))
}

/// Classifies a serialized message of protocol `kind` from its content, so a session layer can
/// check that an envelope's declared phase, round and broadcast/p2p type match what it carries.
/// (A [`Session`](crate::Session) checks the type itself when fed.)
pub fn inspect(kind: ProtocolKind, bytes: &[u8]) -> Result<MsgInfo, ThresholdError> {
    Ok(match kind {
        ProtocolKind::Sign | ProtocolKind::Presign => decode::<SignMsg>(kind, bytes)?.1,
        ProtocolKind::Keygen => decode::<KeygenMsg>(kind, bytes)?.1,
        ProtocolKind::AuxInfo => decode::<AuxMsg>(kind, bytes)?.1,
    })
}
