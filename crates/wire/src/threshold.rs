//! Threshold keys on the wire: consistency checks of a key's public facts, and the dealer
//! bundle's context and transcript (patent [0070]-[0072], DESIGN flow 6).
//!
//! The dealer program seals a bundle with [`seal_bundle`] outside any TEE (OS randomness); the
//! node's TEE opens it on [`Request::ImportThresholdBundle`](crate::protocol::Request) after
//! checking the dealer's certificate (dealer role under the pinned Root's Admin CA) and
//! signature, that the bundle is addressed to its own certificate and cluster, and the admin
//! approvals. The HPKE `info` is [`bundle_context`]: the share opens only in that node's TEE
//! and only under exactly the public facts the dealer signed.

use custos_pki::{DealerSigner, DeviceIdentity};
use sha2::{Digest, Sha256};

use crate::field::put;
use crate::protocol::{
    SessionRef, TeeError, ThresholdBundle, ThresholdKeyInfo, ThresholdOrigin, MAX_APPROVALS,
};
use crate::seal::{seal_with, sealed_transcript};

/// Domain of [`input_session`].
const INPUT_SESSION_DOMAIN: &[u8] = b"CUSTOS-PSBT-INPUT-SESSION-V1\0";

/// The session that signs input `input` of a threshold PSBT request (attempt `attempt`):
/// its id is the first 16 bytes of SHA-256 of a domain, the request id and the input (u16
/// BE), so each input runs its own session once per attempt while the approval names one
/// request.
pub fn input_session(request_id: &[u8; 16], input: u16, attempt: u8) -> SessionRef {
    let mut h = Sha256::new();
    h.update(INPUT_SESSION_DOMAIN);
    h.update(request_id);
    h.update(input.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    SessionRef {
        request_id: id,
        attempt,
    }
}

/// Most parties (clusters) of a threshold key.
pub const MAX_THRESHOLD_PARTIES: usize = 64;

/// Checks the public facts of a threshold key for consistency: a 33-byte compressed
/// secp256k1 key id, 2 ≤ t ≤ n ≤ [`MAX_THRESHOLD_PARTIES`], one distinct, well-formed cluster
/// name per share, a share index below n and a quorum of 1 to [`MAX_APPROVALS`].
pub fn check_key_info(key: &ThresholdKeyInfo) -> Result<(), String> {
    if key.key_id.len() != 33 || bitcoin::secp256k1::PublicKey::from_slice(&key.key_id).is_err() {
        return Err("key id is not a compressed secp256k1 public key".into());
    }
    check_key_facts(key.threshold, &key.clusters, key.quorum)?;
    let n = key.clusters.len();
    if usize::from(key.share_index) >= n {
        return Err(format!("share index {} outside 0..{n}", key.share_index));
    }
    Ok(())
}

/// Checks the facts of a threshold key that exist before the key does (what a distributed
/// key generation is asked to make): 2 ≤ t ≤ n ≤ [`MAX_THRESHOLD_PARTIES`], one distinct,
/// well-formed cluster name per share, a quorum of 1 to [`MAX_APPROVALS`].
pub fn check_key_facts(threshold: u16, clusters: &[String], quorum: u8) -> Result<(), String> {
    let n = clusters.len();
    if !(2..=MAX_THRESHOLD_PARTIES).contains(&n) {
        return Err(format!(
            "{n} clusters, a threshold key has 2 to {MAX_THRESHOLD_PARTIES}"
        ));
    }
    if threshold < 2 || usize::from(threshold) > n {
        return Err(format!(
            "threshold {threshold} outside 2..={n} (the number of clusters)"
        ));
    }
    for (i, c) in clusters.iter().enumerate() {
        custos_pki::check_name(c).map_err(|e| format!("cluster of share {i}: {e}"))?;
        if clusters[..i].contains(c) {
            return Err(format!("cluster {c:?} holds two shares"));
        }
    }
    if quorum == 0 || usize::from(quorum) > MAX_APPROVALS {
        return Err(format!("quorum {quorum} outside 1..={MAX_APPROVALS}"));
    }
    Ok(())
}

/// Domain tag of bundle contexts (the HPKE `info`).
pub const BUNDLE_DOMAIN: &[u8] = b"CUSTOS-THRESHOLD-BUNDLE-V1\0";
/// Domain tag of what the dealer signs.
pub const BUNDLE_SIGNATURE_DOMAIN: &[u8] = b"CUSTOS-THRESHOLD-BUNDLE-SIGNATURE-V1\0";
/// Context binding a bundle to the recipient's cluster and certificate and to every public
/// fact of the key (key id, chain code, threshold, clusters, quorum, origin, share index).
/// Length-prefixed fields after [`BUNDLE_DOMAIN`].
pub fn bundle_context(
    cluster: &str,
    recipient_fingerprint: &[u8; 32],
    key: &ThresholdKeyInfo,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + key.clusters.len() * 16);
    out.extend_from_slice(BUNDLE_DOMAIN);
    put(&mut out, cluster.as_bytes());
    put(&mut out, recipient_fingerprint);
    put(&mut out, &key.key_id);
    match &key.chain_code {
        None => put(&mut out, &[]),
        Some(c) => put(&mut out, c),
    }
    put(&mut out, &key.threshold.to_be_bytes());
    out.extend_from_slice(&(key.clusters.len() as u32).to_be_bytes());
    for c in &key.clusters {
        put(&mut out, c.as_bytes());
    }
    put(&mut out, &[key.quorum]);
    put(
        &mut out,
        match key.origin {
            ThresholdOrigin::Dealer => b"dealer",
            ThresholdOrigin::Dkg => b"dkg",
        },
    );
    put(&mut out, &key.share_index.to_be_bytes());
    out
}

/// What the dealer signs: domain, the context (all public fields) and the HPKE output.
pub fn bundle_transcript(context: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    sealed_transcript(BUNDLE_SIGNATURE_DOMAIN, context, enc, ciphertext)
}

/// Seals a share's sealed bytes (`plaintext`, the share's own encoding) for the node
/// `recipient` and signs the bundle as `dealer`.
///
/// `recipient` must come from verifying the node's certificate chain against the Root
/// (`TrustRoot::verify_device(chain, Some(&key.clusters[key.share_index]), now)`): this
/// function trusts its cluster, fingerprint and D public key. It checks that `key` is
/// consistent, dealt, and names the recipient's cluster for this share; the caller checks that
/// the share is the one `key` describes. Uses OS randomness; refusals are
/// [`TeeError::ThresholdRejected`].
pub fn seal_bundle(
    plaintext: &[u8],
    key: ThresholdKeyInfo,
    recipient: &DeviceIdentity,
    dealer: &DealerSigner,
) -> Result<ThresholdBundle, TeeError> {
    check_key_info(&key).map_err(TeeError::ThresholdRejected)?;
    if key.origin != ThresholdOrigin::Dealer {
        return Err(TeeError::ThresholdRejected(
            "a dealer bundle carries a dealt key (origin Dealer)".into(),
        ));
    }
    let cluster = &key.clusters[usize::from(key.share_index)];
    if *cluster != recipient.cluster {
        return Err(TeeError::ThresholdRejected(format!(
            "share {} belongs to cluster {cluster:?}, the recipient is in {:?}",
            key.share_index, recipient.cluster
        )));
    }
    let context = bundle_context(cluster, &recipient.fingerprint, &key);
    let (enc, ciphertext) = seal_with(
        &mut rand_core::OsRng,
        &recipient.public_key,
        &context,
        plaintext,
        TeeError::ThresholdRejected,
    )?;
    let signature = dealer.sign(&bundle_transcript(&context, &enc, &ciphertext));
    Ok(ThresholdBundle {
        key,
        recipient_fingerprint: recipient.fingerprint,
        dealer_cert: dealer.cert_der.clone(),
        dealer_ca: dealer.admin_ca_der.clone(),
        enc,
        ciphertext,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ThresholdKeyInfo {
        ThresholdKeyInfo {
            key_id: vec![2; 33],
            chain_code: Some([1; 32]),
            threshold: 2,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
            quorum: 1,
            origin: ThresholdOrigin::Dealer,
            share_index: 1,
        }
    }

    #[test]
    fn contexts_differ_in_every_field() {
        let k = info();
        let base = bundle_context("dc2", &[7; 32], &k);
        let edits: &[fn(&mut ThresholdKeyInfo)] = &[
            |k| k.key_id[5] ^= 1,
            |k| k.chain_code = None,
            |k| k.chain_code = Some([2; 32]),
            |k| k.threshold = 3,
            |k| k.clusters.swap(0, 2),
            |k| k.clusters.push("dc4".into()),
            |k| k.quorum = 2,
            |k| k.origin = ThresholdOrigin::Dkg,
            |k| k.share_index = 2,
        ];
        let mut variants = vec![
            bundle_context("dc3", &[7; 32], &k),
            bundle_context("dc2", &[8; 32], &k),
        ];
        for edit in edits {
            let mut v = k.clone();
            edit(&mut v);
            variants.push(bundle_context("dc2", &[7; 32], &v));
        }
        for v in variants {
            assert_ne!(v, base);
        }
        let t = bundle_transcript(&base, b"enc", b"ct");
        assert_ne!(t, bundle_transcript(&base, b"enc", b"cu"));
        assert_ne!(t, bundle_transcript(&base, b"enb", b"ct"));
    }
}
