//! The patent's own example of t-of-n ([0031], [0070]): a 3-of-6 key dealt over six
//! clusters, one share per cluster, and signatures by several different triples of
//! clusters, each checked with libsecp256k1 against the key's public derivation alone. The
//! cores run in-process; the six parties' Paillier primes are the six TEST-ONLY fixture sets.

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, Secp256k1};
use custos_tee_core::threshold::bundle::seal_bundle;
use custos_tee_core::threshold::key_info;
use custos_threshold::{deal, fixtures, ThresholdShare};
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::protocol::{
    EcdsaSignature, Request, Response, SessionRef, TeeError, ThresholdKeyInfo, ThresholdOrigin,
    ThresholdSignParams, ThresholdSigner,
};
use sha2::{Digest, Sha256};

use crate::threshold::{meta, relay, start, Node, Pki};

const CLUSTERS: [&str; 6] = ["dc1", "dc2", "dc3", "dc4", "dc5", "dc6"];
const PATH: [u32; 2] = [44, 6];

/// The approved start of a signing session at PATH by the shares at `signers` (positions in
/// CLUSTERS), and its session.
fn sign_request(
    pki: &Pki,
    nodes: &[Node],
    key: &ThresholdKeyInfo,
    signers: &[usize],
    digest: [u8; 32],
) -> (Request, SessionRef) {
    let meta = meta();
    let params = ThresholdSignParams {
        key_id: key.key_id.clone(),
        path: PATH.to_vec(),
        digest,
        signers: signers
            .iter()
            .map(|&i| ThresholdSigner {
                share_index: i as u16,
                chain: nodes[i].chain.clone(),
            })
            .collect(),
    };
    let action = Action::ThresholdSign {
        key_id: &params.key_id,
        path: &params.path,
        digest: &params.digest,
    };
    let session = SessionRef {
        request_id: meta.request_id,
        attempt: 0,
    };
    let req = Request::ThresholdStart {
        approvals: pki.approvals(2, &action, THRESHOLD_SCOPE, &meta),
        meta,
        attempt: 0,
        params,
    };
    (req, session)
}

/// Signs `digest` at PATH with the shares at `triple`; returns the signature every signer
/// output, after checking they agree.
fn sign(
    pki: &Pki,
    nodes: &mut [Node],
    key: &ThresholdKeyInfo,
    triple: [usize; 3],
    digest: [u8; 32],
) -> EcdsaSignature {
    let (req, session) = sign_request(pki, nodes, key, &triple, digest);
    let mut signers: Vec<&mut Node> = nodes
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| triple.contains(i))
        .map(|(_, n)| n)
        .collect();
    // In share-index order, as the request lists them.
    let first: Vec<_> = signers.iter_mut().map(|n| start(n, &req)).collect();
    let (sigs, _) = relay(&mut signers, session, first, false);
    assert!(sigs.iter().all(|s| *s == sigs[0]), "signers disagree");
    sigs[0].clone()
}

#[test]
fn a_3_of_6_key_over_six_clusters_signs_with_different_triples() {
    let pki = Pki::with_clusters(&CLUSTERS);
    let primes = fixtures::test_primes();
    assert_eq!(primes.len(), 6, "six TEST-ONLY primes sets");
    let shares: Vec<ThresholdShare> = deal(3, 6, true, Some(primes), &mut |_| {}).expect("deal");
    let clusters: Vec<String> = CLUSTERS.iter().map(|c| c.to_string()).collect();
    let mut nodes: Vec<Node> = CLUSTERS
        .iter()
        .map(|c| pki.node(c, &format!("{c}-node1")))
        .collect();
    let mut key = None;
    for (i, node) in nodes.iter_mut().enumerate() {
        let info = key_info(&shares[i], &clusters, 2, ThresholdOrigin::Dealer).unwrap();
        let bundle = seal_bundle(&shares[i], info, &node.identity, &pki.dealer).unwrap();
        match node.call(&pki.import(&bundle, 2)).unwrap() {
            Response::ThresholdKey(k) => {
                assert_eq!((k.threshold, k.share_index), (3, i as u16));
                key = Some(k);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let key = key.expect("imported");
    // Every cluster holds a share of the same key.
    for node in nodes.iter_mut() {
        let Response::ThresholdKeys(held) = node.call(&Request::ListThresholdKeys).unwrap() else {
            panic!("expected the key list");
        };
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].key_id, key.key_id);
    }
    // The child at PATH, from the key's public facts alone.
    let xpub = Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Default::default(),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: bitcoin::secp256k1::PublicKey::from_slice(&key.key_id).unwrap(),
        chain_code: key.chain_code.expect("an HD key").into(),
    };
    let secp = Secp256k1::new();
    let path: Vec<ChildNumber> = PATH.iter().map(|&i| ChildNumber::from(i)).collect();
    let child = xpub.derive_pub(&secp, &path).unwrap().public_key;

    // Two signers are not three: refused before anything runs.
    let two = sign_request(&pki, &nodes, &key, &[0, 1], [7; 32]);
    match nodes[0].call(&two.0) {
        Err(TeeError::ThresholdRejected(m)) => assert!(m.contains("needs exactly 3"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Three different triples, two of them disjoint: any three of the six clusters sign,
    // whichever three are down.
    for triple in [[0, 1, 2], [3, 4, 5], [1, 3, 5]] {
        let digest: [u8; 32] = Sha256::digest(format!("3-of-6 {triple:?}")).into();
        let sig = sign(&pki, &mut nodes, &key, triple, digest);
        assert_eq!(sig.public_key, child.serialize().to_vec());
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&sig.r);
        rs[32..].copy_from_slice(&sig.s);
        let plain = ecdsa::Signature::from_compact(&rs).unwrap();
        secp.verify_ecdsa(&Message::from_digest(digest), &plain, &child)
            .unwrap_or_else(|e| panic!("triple {triple:?}: {e}"));
    }
}
