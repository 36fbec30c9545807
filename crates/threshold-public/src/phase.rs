//! The phases of the patent's threshold sessions (FIG. 12–15), by the names used on the
//! wire and in logs: the protocol engine classifies messages into them, the cloud server
//! reports how far a session got with them.

/// Phase of a protocol message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Signing: Round1a, Round1b and the reliability check ("getAB").
    GetAb,
    /// Signing: Round2 ("getAB_and_R").
    GetAbAndR,
    /// Signing: Round3 ("getR").
    GetR,
    /// Signing: Round4 ("getSig").
    GetSig,
    /// Distributed key generation.
    Keygen,
    /// Aux-info generation.
    AuxInfo,
    /// Presignature generation.
    Presign,
}

impl Phase {
    /// A signing session's phases, in protocol order.
    pub const SIGNING: [Phase; 4] = [Phase::GetAb, Phase::GetAbAndR, Phase::GetR, Phase::GetSig];
    /// A distributed key generation's phases, in protocol order.
    pub const KEY_GENERATION: [Phase; 2] = [Phase::Keygen, Phase::AuxInfo];
    /// A presignature session's phase.
    pub const PRESIGNING: [Phase; 1] = [Phase::Presign];
    /// Every phase, in the order above.
    pub const ALL: [Phase; 7] = [
        Phase::GetAb,
        Phase::GetAbAndR,
        Phase::GetR,
        Phase::GetSig,
        Phase::Keygen,
        Phase::AuxInfo,
        Phase::Presign,
    ];

    /// The phase's name as used on the wire and in logs.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Phase::GetAb => "getAB",
            Phase::GetAbAndR => "getAB_and_R",
            Phase::GetR => "getR",
            Phase::GetSig => "getSig",
            Phase::Keygen => "keygen",
            Phase::AuxInfo => "auxInfo",
            Phase::Presign => "presign",
        }
    }

    /// Parses [`as_str`](Self::as_str) output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
