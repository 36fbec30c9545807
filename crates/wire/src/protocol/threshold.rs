//! Threshold keys and sessions: the parameters of signing, presignature and key-generation
//! sessions, the messages relayed between their TEEs, dealer bundles and the limits on all
//! of them.

use serde::{Deserialize, Serialize};

// One module split in files: every protocol type is in scope, for the code and the doc links.
use super::*;

/// What an online signing uses and signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresignSignParams {
    /// Joint public key (no chain code).
    pub key_id: KeyId,
    /// The presignature (its execution id).
    pub presignature: [u8; 32],
    /// The full message, at most [`MAX_PRESIGN_MESSAGE`] bytes; the TEE signs SHA-256 of it.
    pub message: Vec<u8>,
}

/// Longest message signed with a presignature.
pub const MAX_PRESIGN_MESSAGE: usize = 64 * 1024;
/// Most presignatures a TEE holds (and generates at once) for one key.
pub const MAX_PRESIGNATURES_PER_KEY: usize = 256;

/// A presignature this TEE finished and stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresignatureInfo {
    /// Its id (the session's execution id, the same at every signer).
    pub id: [u8; 32],
    /// Joint public key.
    pub key_id: KeyId,
    /// Share indexes of its signers, in signing order.
    pub signers: Vec<u16>,
}

/// What a distributed key generation makes, and who takes part.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdKeygenParams {
    /// Signers the new key needs (t, 2 ≤ t ≤ n).
    pub threshold: u16,
    /// Whether the key gets a chain code (BIP-32 derivation of non-hardened children).
    pub hd: bool,
    /// Cluster holding each share, by share index (n entries, distinct).
    pub clusters: Vec<String>,
    /// Distinct admins required to use the new key (and to create it).
    pub quorum: u8,
    /// The node running the session for each cluster, in share-index order: entry i has
    /// `share_index` i and the certificate chain of a node of `clusters[i]`.
    pub participants: Vec<ThresholdSigner>,
}

/// Most attempts one approved threshold request may make.
pub const MAX_THRESHOLD_ATTEMPTS: u8 = 8;
/// Most messages in one [`Request::ThresholdFeed`].
pub const MAX_THRESHOLD_MESSAGES: usize = 64;
/// Largest payload of one [`ThresholdMessage`] (aux-info rounds are about 220 KB).
pub const MAX_THRESHOLD_PAYLOAD: usize = 1024 * 1024;

/// A threshold session: the approved request and the attempt under it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    /// Request id of the approved request.
    pub request_id: [u8; 16],
    /// Attempt number.
    pub attempt: u8,
}

/// Public facts about a threshold key, as every share holder knows them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdKeyInfo {
    /// Joint public key (compressed, 33 bytes): the key's id.
    pub key_id: KeyId,
    /// BIP-32 chain code when HD derivation is enabled (required for signing with a path;
    /// presignatures are refused for such keys).
    pub chain_code: Option<[u8; 32]>,
    /// Signers needed (t).
    pub threshold: u16,
    /// Cluster holding each share, by share index (n entries).
    pub clusters: Vec<String>,
    /// Distinct admins required to use the key.
    pub quorum: u8,
    /// How the key came to be.
    pub origin: ThresholdOrigin,
    /// Index of the share this node holds.
    pub share_index: u16,
}

/// How a threshold key was created.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ThresholdOrigin {
    /// Dealt by the operating company's dealer program.
    Dealer,
    /// Generated jointly by the clusters (no dealer ever held the key).
    Dkg,
}

/// One cluster's share of a dealt threshold key, sealed to a node and signed by the dealer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdBundle {
    /// Public facts of the key; `share_index` is the share sealed inside.
    pub key: ThresholdKeyInfo,
    /// SHA-256 of the recipient node's device certificate.
    pub recipient_fingerprint: [u8; 32],
    /// The dealer's certificate (DER), issued by the Admin CA with the dealer role.
    pub dealer_cert: Vec<u8>,
    /// The Admin CA certificate (DER).
    pub dealer_ca: Vec<u8>,
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the share (T_i and P).
    pub ciphertext: Vec<u8>,
    /// The dealer's ECDSA P-256 signature (DER) over the bundle transcript.
    pub signature: Vec<u8>,
}

/// One participant of a threshold session (signing or distributed key generation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdSigner {
    /// Share index the participant holds.
    pub share_index: u16,
    /// Certificate chain of the node that runs the session for that cluster.
    pub chain: CertChain,
}

/// What a threshold session signs, and who takes part (in signing order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdSignParams {
    /// Joint public key.
    pub key_id: KeyId,
    /// Non-hardened BIP-32 path of the child key.
    pub path: Vec<u32>,
    /// Digest to sign.
    pub digest: [u8; 32],
    /// Participants, in signing order (exactly t, distinct share indexes).
    pub signers: Vec<ThresholdSigner>,
}

/// A PSBT one threshold signing session per input signs (see
/// [`super::Request::ThresholdPsbtStart`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdPsbtParams {
    /// Joint public key (with a chain code: the inputs' keys are its children).
    pub key_id: KeyId,
    /// The network its addresses are written for.
    pub network: super::BitcoinNetwork,
    /// The PSBT, binary (at most 1 MiB).
    pub psbt: Vec<u8>,
    /// The intent hash the approvals were made for (`intent_mismatch` otherwise).
    pub intent_hash: [u8; 32],
    /// Participants, in signing order (exactly t, distinct share indexes).
    pub signers: Vec<ThresholdSigner>,
}

/// A protocol message between the TEEs of a session, relayed by the cloud server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdMessage {
    /// Session.
    pub session: SessionRef,
    /// Sender's position in the signer list.
    pub sender: u16,
    /// Recipient's position, or `None` for a broadcast.
    pub recipient: Option<u16>,
    /// Phase: the patent's getAB, getAB_and_R, getR, getSig for signing; keygen and
    /// auxInfo for distributed key generation.
    pub phase: String,
    /// Protocol round.
    pub round: u16,
    /// HPKE encapsulated key (point-to-point messages; empty for broadcasts).
    pub enc: Vec<u8>,
    /// The message: plaintext for a broadcast, HPKE ciphertext sealed to the recipient's D
    /// key for a point-to-point message.
    pub payload: Vec<u8>,
    /// Sender's D signature (DER) over the message transcript.
    pub signature: Vec<u8>,
}
