//! Threshold keys (patent FIG. 5, 12–15; \[0069\]–\[0085\]): imports of dealer bundles,
//! keys made by distributed key generation across all n clusters, and signing sessions
//! orchestrated across t clusters.
//!
//! The cloud server chooses the participants and relays the protocol's messages between
//! their TEEs, nothing more: point-to-point payloads are sealed to the receiving node and
//! every message is signed by its sender's device key D, so messages are routed here
//! unread and unaltered. Every TEE answer is verified against the serving node's certified
//! D key ([`Clusters::tee_call`]), and the final signature independently with libsecp256k1
//! against the child of the joint key at the approved path.
//!
//! A session runs as exchanges: every participant with pending messages gets one
//! `ThresholdFeed` (all participants concurrently), and the messages it returns are routed
//! to their recipients for the next exchange, until every participant returned its output
//! (the signature, or its share of the new key). The same loop runs both kinds ([`Run`]).
//! A key generation's aux-info steps compute for seconds: its TEEs answer `computing` and
//! are polled with empty feeds until their messages are ready, so no call waits long. Any
//! failure — a refusal, an abort naming a culprit, an unreachable cluster, a stall, the
//! time limit — aborts the session in the other participants and leaves the request
//! `failed` (a retry makes the next attempt, possibly with other clusters) or, when no
//! retry can help (approvals), `refused`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint};
use bitcoin::NetworkKind;
use custos_threshold_public::Phase;
use custos_wire::approval::THRESHOLD_SCOPE;
use custos_wire::protocol::{audit_digest, format_path, MAX_AUDIT_MESSAGE};
use custos_wire::protocol::{
    CertChain, PresignSignParams, PresignatureInfo, SessionRef, ThresholdBundle, ThresholdKeyInfo,
    ThresholdKeygenParams, ThresholdMessage, ThresholdOrigin, ThresholdSignParams, ThresholdSigner,
    MAX_PRESIGN_MESSAGE, MAX_THRESHOLD_ATTEMPTS, MAX_THRESHOLD_MESSAGES,
};

use super::*;

mod audit;
mod driver;
mod foreign_logs;
mod keygen;
mod keys;
mod participants;
mod presign;
mod psbt;
mod session;
mod signing;

use custos_cloud_api::approval::parse_key_id;
use keys::*;
pub use keys::{check_threshold_key_info, decode_bundle, threshold_xpub};
pub use presign::MAX_PRESIGNATURES_PER_CALL;
/// The link id of one attempt's call to one cluster (also a threshold key's policy change).
pub(super) use session::start_link_id;
use session::*;
use signing::*;

/// Largest dealer bundle accepted (decoded bytes; its hex is twice as long).
pub const MAX_BUNDLE: usize = 256 * 1024;
/// Most clusters (shares) a threshold key may span (the TEE core's limit).
pub const MAX_THRESHOLD_CLUSTERS: usize = custos_wire::threshold::MAX_THRESHOLD_PARTIES;
/// Most message exchanges one signing session may take (cggmp24 signing needs about five).
pub const MAX_THRESHOLD_EXCHANGES: u32 = 32;
/// Longest a signing session may run, from its start to the last signature.
pub const THRESHOLD_SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Most message exchanges one key generation may take (keygen and aux-info need about
/// ten; the empty feeds that collect computed messages are not counted, the time limit
/// bounds them).
pub const MAX_KEYGEN_EXCHANGES: u32 = 64;
/// Longest a key generation may run (the TEEs' own session limit): aux-info generation
/// takes tens of seconds for three clusters and grows with n.
pub const THRESHOLD_KEYGEN_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::audit::audit_groups;
    use super::*;
    use custos_wire::protocol::ThresholdOrigin;

    fn info() -> ThresholdKeyInfo {
        let secp = Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        ThresholdKeyInfo {
            key_id: PublicKey::from_secret_key(&secp, &sk).serialize().to_vec(),
            chain_code: Some([1u8; 32]),
            threshold: 2,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
            quorum: 1,
            origin: ThresholdOrigin::Dealer,
            share_index: 1,
        }
    }

    fn bundle(key: ThresholdKeyInfo) -> ThresholdBundle {
        ThresholdBundle {
            key,
            recipient_fingerprint: [3u8; 32],
            dealer_cert: vec![1],
            dealer_ca: vec![2],
            enc: vec![3],
            ciphertext: vec![4; 10],
            signature: vec![5],
        }
    }

    #[test]
    fn bundles_are_decoded_and_checked() {
        let b = bundle(info());
        let text = hex::encode(postcard::to_allocvec(&b).unwrap());
        assert_eq!(decode_bundle(&text).unwrap(), b);
        assert!(decode_bundle("zz").is_err());
        assert!(decode_bundle(&format!("{text}00"))
            .unwrap_err()
            .contains("trailing"));
        assert!(decode_bundle(&"00".repeat(MAX_BUNDLE + 1)).is_err());
        let bad = [
            ThresholdKeyInfo {
                share_index: 3,
                ..info()
            },
            ThresholdKeyInfo {
                threshold: 4,
                ..info()
            },
            ThresholdKeyInfo {
                threshold: 0,
                ..info()
            },
            ThresholdKeyInfo {
                // x = 0 is on no point of secp256k1.
                key_id: [&[2u8][..], &[0u8; 32]].concat(),
                ..info()
            },
            ThresholdKeyInfo {
                key_id: vec![4; 65],
                ..info()
            },
            ThresholdKeyInfo {
                clusters: vec!["dc1".into(), "dc1".into(), "dc3".into()],
                ..info()
            },
            ThresholdKeyInfo {
                clusters: vec!["dc1".into(), "bad,name".into(), "dc3".into()],
                ..info()
            },
            ThresholdKeyInfo {
                quorum: 0,
                ..info()
            },
        ];
        for k in bad {
            let text = hex::encode(postcard::to_allocvec(&bundle(k.clone())).unwrap());
            assert!(decode_bundle(&text).is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn audit_groups_cover_every_cluster() {
        assert_eq!(audit_groups(3, 2), vec![vec![0, 1], vec![2, 0]]);
        assert_eq!(audit_groups(3, 3), vec![vec![0, 1, 2]]);
        assert_eq!(audit_groups(4, 2), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(audit_groups(5, 3), vec![vec![0, 1, 2], vec![3, 4, 0]]);
        for n in 1..10 {
            for t in 1..=n {
                let g = audit_groups(n, t);
                assert!(g.iter().all(|s| s.len() == t));
                for i in 0..n {
                    assert!(g.iter().any(|s| s.contains(&i)));
                }
            }
        }
    }

    #[test]
    fn start_link_ids_are_per_attempt_and_cluster() {
        let id = [9u8; 16];
        assert_eq!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 0, "dc1"));
        assert_ne!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 1, "dc1"));
        assert_ne!(start_link_id(&id, 0, "dc1"), start_link_id(&id, 0, "dc2"));
        assert_ne!(start_link_id(&id, 0, "dc1"), id);
    }

    #[test]
    fn threshold_xpub_is_the_root_of_the_joint_key() {
        let k = info();
        let x = threshold_xpub(&k.key_id, &k.chain_code.unwrap()).unwrap();
        assert_eq!(x.depth, 0);
        assert!(x.to_string().starts_with("xpub"));
        assert_eq!(x.public_key.serialize().to_vec(), k.key_id);
        let again = Xpub::from_str(&x.to_string()).unwrap();
        assert_eq!(again, x);
    }

    #[test]
    fn merged_aborts_name_every_cluster_and_keep_the_tee_code() {
        let a = Abort::new("threshold_aborted", "dc1 down".into(), vec!["dc1".into()]);
        let b = Abort::new(
            "tee_threshold_rejected",
            "dc2 refused".into(),
            vec!["dc2".into()],
        );
        let m = Abort::merge(vec![a, b]).unwrap();
        assert_eq!(m.code, "tee_threshold_rejected");
        assert_eq!(m.blamed, ["dc1", "dc2"]);
        assert!(m.message.contains("dc1 down") && m.message.contains("dc2 refused"));
        assert!(Abort::merge(Vec::new()).is_none());
    }
}
