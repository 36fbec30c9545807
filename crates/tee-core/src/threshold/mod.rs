//! Threshold ECDSA keys T (one share per cluster) with their Paillier material P (patent
//! [0070]-[0085], DESIGN flows 6 and 7).
//!
//! * [`bundle`]: the dealer's sealed, signed delivery of one cluster's share to one node
//!   (sealed by the dealer program, opened inside the TEE; format in [`custos_wire::threshold`]).
//! * [`wire`]: what binds a signing session together: the execution id every participant
//!   derives from the approved request, and the contexts and transcripts of the protocol
//!   messages (each signed by its sender's D key, point-to-point content HPKE-sealed to the
//!   receiving node).
//! * [`primes`]: the Paillier primes a distributed key generation consumes (pregenerated
//!   sets sealed in the store, or safe primes generated in the background inside the TEE).
//! * `engine`, `sign`, `messages` (private): the TEE core's handling of
//!   [`Request::ImportThresholdBundle`], [`Request::ListThresholdKeys`] and the session
//!   requests, over [`custos_threshold::SessionHost`]s owned by the core (the protocol state
//!   machines are `!Send` and live on their worker threads): signing sessions on one,
//!   distributed key generations ([`Request::ThresholdKeygenStart`]) on another, whose
//!   multi-second aux-info steps run while the core goes on serving (the cloud server
//!   collects their output with empty feeds).
//!
//! Held shares are sealed records `tshare/<key id hex>` ([`HeldKey::to_record`]); the same
//! record travels inside key transfers between the nodes of a cluster (patent [0073]-[0074]),
//! next to wallet records, which it cannot be mistaken for (its first byte,
//! [`THRESHOLD_RECORD_TAG`], is never a wallet record version).
//!
//! [`Request::ImportThresholdBundle`]: custos_wire::protocol::Request::ImportThresholdBundle
//! [`Request::ListThresholdKeys`]: custos_wire::protocol::Request::ListThresholdKeys
//! [`Request::ThresholdKeygenStart`]: custos_wire::protocol::Request::ThresholdKeygenStart

pub mod bundle;
pub(crate) mod dkg;
pub(crate) mod engine;
mod messages;
pub(crate) mod presign;
pub mod primes;
mod psbt;
mod sign;
pub mod wire;

use std::fmt;

use custos_threshold::ThresholdShare;
use zeroize::Zeroizing;

use crate::wallet::key_hex;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{ThresholdKeyInfo, ThresholdOrigin};
use custos_wire::threshold::{check_key_facts, check_key_info, MAX_THRESHOLD_PARTIES};

/// Record name prefix of held threshold shares.
pub const SHARE_PREFIX: &str = "tshare/";
/// Record name prefix of threshold sessions already started (request id, attempt).
pub const SESSION_PREFIX: &str = "tsession/";
/// Record name prefix of stored presignatures (never transferred to another node).
pub const PRESIGN_PREFIX: &str = "tpresig/";
/// First byte of a threshold share record (a wallet record starts with its version, 1 or 2).
pub const THRESHOLD_RECORD_TAG: u8 = b'T';
/// A share sealed before threshold keys carried their approver group: `[T, 1, info, share]`.
const RECORD_V1: u8 = 1;
/// A share with its approver group: `[T, 2, info, share, KeyPolicy::encode]`, each a
/// length-prefixed field. Key transfers carry the same record, so the group travels with the
/// share.
const RECORD_V2: u8 = 2;

use custos_wire::field::{put, take};

/// Checks that `share` is the share `key` describes: joint public key, chain code, threshold,
/// number of parties and index.
pub fn check_share(key: &ThresholdKeyInfo, share: &ThresholdShare) -> Result<(), String> {
    if share.public_key()[..] != key.key_id[..] {
        return Err(format!(
            "share is of key {}, not {}",
            hex::encode(share.public_key()),
            key_hex(&key.key_id)
        ));
    }
    if share.chain_code() != key.chain_code {
        return Err("share's chain code differs from the key's".into());
    }
    if share.threshold() != key.threshold {
        return Err(format!(
            "share has threshold {}, the key {}",
            share.threshold(),
            key.threshold
        ));
    }
    if usize::from(share.n()) != key.clusters.len() {
        return Err(format!(
            "share is one of {}, the key names {} clusters",
            share.n(),
            key.clusters.len()
        ));
    }
    if share.index() != key.share_index {
        return Err(format!(
            "share has index {}, expected {}",
            share.index(),
            key.share_index
        ));
    }
    Ok(())
}

/// The public facts of a dealt key as seen by the holder of `share`: joint key, chain code,
/// threshold and index from the share, `clusters[i]` holding share i, `quorum` admins to use
/// it. Checked with [`check_key_info`] and [`check_share`].
pub fn key_info(
    share: &ThresholdShare,
    clusters: &[String],
    quorum: u8,
    origin: ThresholdOrigin,
) -> Result<ThresholdKeyInfo, String> {
    let info = ThresholdKeyInfo {
        key_id: share.public_key().to_vec(),
        chain_code: share.chain_code(),
        threshold: share.threshold(),
        clusters: clusters.to_vec(),
        quorum,
        origin,
        share_index: share.index(),
    };
    check_key_info(&info)?;
    check_share(&info, share)?;
    Ok(info)
}

/// A threshold share held by this node, with its public facts.
pub struct HeldKey {
    /// Public facts (`share_index` is this node's).
    pub info: ThresholdKeyInfo,
    /// The share T_i with its aux info P.
    pub share: ThresholdShare,
    /// Who approves its use, fixed at creation (`None`: a key sealed before groups existed,
    /// or a dealt key, approved by any `info.quorum` admins, or by the cluster's governors
    /// once governed). Its quorum is `info.quorum`.
    pub policy: Option<KeyPolicy>,
}

impl fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl HeldKey {
    /// Sealed record body (and key-transfer record): tag, version, the key info (postcard)
    /// and the share (JSON), length-prefixed, then the policy when the key has one (version
    /// 2; a key without one keeps the version-1 format, readable by older code). Erased on
    /// drop.
    pub fn to_record(&self) -> Zeroizing<Vec<u8>> {
        let info = postcard::to_allocvec(&self.info).expect("key info always serializes");
        let share = self.share.to_sealed_bytes();
        let policy = self.policy.as_ref().map(KeyPolicy::encode);
        let extra = policy.as_ref().map_or(0, |p| 4 + p.len());
        let mut out = Zeroizing::new(Vec::with_capacity(10 + info.len() + share.len() + extra));
        out.push(THRESHOLD_RECORD_TAG);
        out.push(if policy.is_some() {
            RECORD_V2
        } else {
            RECORD_V1
        });
        put(&mut out, &info);
        put(&mut out, &share);
        if let Some(p) = &policy {
            put(&mut out, p);
        }
        out
    }

    /// Whether a record (sealed or in a transfer) is a threshold share record.
    pub fn is_record(record: &[u8]) -> bool {
        record.first() == Some(&THRESHOLD_RECORD_TAG)
    }

    /// Parses and validates a record and checks it holds the key it is filed under.
    pub fn from_record(record: &[u8], expected_key: &[u8]) -> Result<Self, String> {
        let version = match record {
            [THRESHOLD_RECORD_TAG, v @ (RECORD_V1 | RECORD_V2), ..] => *v,
            _ => return Err("not a threshold share record of a known version".into()),
        };
        let mut input = &record[2..];
        let (Some(info), Some(share)) = (take(&mut input), take(&mut input)) else {
            return Err("truncated threshold share record".into());
        };
        let policy = match version {
            RECORD_V2 => {
                let bytes = take(&mut input).ok_or("truncated threshold share record")?;
                Some(read_policy(bytes)?)
            }
            _ => None,
        };
        if !input.is_empty() {
            return Err("trailing bytes after threshold share record".into());
        }
        let info: ThresholdKeyInfo = match postcard::take_from_bytes(info) {
            Ok((info, [])) => info,
            _ => return Err("undecodable key info".into()),
        };
        check_key_info(&info)?;
        let share = ThresholdShare::from_bytes(share).map_err(|e| e.to_string())?;
        check_share(&info, &share)?;
        if info.key_id != expected_key {
            return Err("record holds a different key than its name".into());
        }
        if let Some(p) = &policy {
            // Two quorums for one key would leave it to the reader which one counts.
            if p.quorum != info.quorum {
                return Err(format!(
                    "the policy's quorum {} differs from the key's {}",
                    p.quorum, info.quorum
                ));
            }
        }
        Ok(HeldKey {
            info,
            share,
            policy,
        })
    }
}

/// A sealed policy, held to the rules it was created under: a record whose group or quorum
/// no longer validates is refused rather than read as a looser policy.
fn read_policy(bytes: &[u8]) -> Result<KeyPolicy, String> {
    let policy = KeyPolicy::decode(bytes).map_err(|e| format!("policy: {e}"))?;
    policy.validate().map_err(|e| format!("policy: {e}"))?;
    Ok(policy)
}
