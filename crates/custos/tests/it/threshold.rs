//! Threshold ECDSA end to end through real processes (patent FIG. 12-15, 17): the dealer
//! program seals one share per cluster, each cluster's first node imports it under an admin
//! approval, and the cloud server runs 2-of-3 signing sessions between the clusters' TEEs
//! through each cluster's external relay, link and bridge.
//!
//! Paillier primes come from the committed TEST-ONLY fixture of the threshold crate (Blum
//! primes, not safe primes): production dealing always generates real safe primes.

use std::str::FromStr;

use crate::common::{three_clusters, THRESHOLD_CLUSTERS as CLUSTERS};
use bitcoin::bip32::{DerivationPath, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos::dealer::PrimeSource;
use custos::deployment::{approve, import_threshold, Deployment};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{RequestResult, RequestStatus, RequestView, ThresholdSignBody};
use custos_pki::AdminSigner;

pub(crate) fn test_primes() -> PrimeSource {
    PrimeSource::File(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json"),
    )
}

pub(crate) async fn threshold_sign(
    client: &CloudClient,
    alice: &AdminSigner,
    key_id: &str,
    path: &str,
    digest: [u8; 32],
    clusters: Option<Vec<String>>,
) -> RequestView {
    let view = client
        .threshold_sign(&ThresholdSignBody {
            key_id: key_id.into(),
            path: path.into(),
            digest: hex::encode(digest),
            message: None,
            clusters,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
    approve(client, alice, &view.id).await.unwrap()
}

/// Checks a completed threshold signature with libsecp256k1 against the child of the key's
/// xpub at `path`: valid, low-s, and `v` recovers that key.
pub(crate) fn check_signature(
    view: &RequestView,
    xpub: &Xpub,
    path: &str,
    digest: [u8; 32],
) -> Vec<String> {
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::Signature(sig)) = &view.result else {
        panic!("no signature: {view:?}");
    };
    let secp = Secp256k1::new();
    let child = xpub
        .derive_pub(&secp, &DerivationPath::from_str(path).unwrap())
        .unwrap()
        .public_key;
    assert_eq!(hex::encode(child.serialize()), sig.public_key);
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&hex::decode(&sig.r).unwrap());
    compact[32..].copy_from_slice(&hex::decode(&sig.s).unwrap());
    let plain = ecdsa::Signature::from_compact(&compact).unwrap();
    let mut normalized = plain;
    normalized.normalize_s();
    assert_eq!(plain, normalized, "signature is not low-s");
    let msg = Message::from_digest(digest);
    secp.verify_ecdsa(&msg, &plain, &child).unwrap();
    let rec = ecdsa::RecoverableSignature::from_compact(
        &compact,
        ecdsa::RecoveryId::from_i32(i32::from(sig.v)).unwrap(),
    )
    .unwrap();
    let recovered: PublicKey = secp.recover_ecdsa(&msg, &rec).unwrap();
    assert_eq!(recovered, child, "v does not recover the child key");
    sig.clusters.clone().unwrap_or_default()
}

#[test]
fn dealt_2_of_3_key_signs_with_every_pair_and_with_one_cluster_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters(tmp.path(), 2, 1);
    let (alice, client, rt) = crate::common::alice_client(&dep);

    let dealt = dep
        .deal_threshold("acme", 2, &CLUSTERS, 1, true, test_primes())
        .unwrap();
    let key_id = hex::encode(&dealt.key.key_id);
    let imports = rt
        .block_on(import_threshold(&client, &dealt, &[&alice]))
        .unwrap();
    for v in &imports {
        assert_eq!(v.status, RequestStatus::Completed, "{v:?}");
    }
    let key = rt.block_on(client.threshold_key(&key_id)).unwrap();
    assert_eq!(key.threshold, 2);
    assert!(key.missing_shares.is_empty(), "{key:?}");
    let xpub = Xpub::from_str(key.xpub.as_deref().expect("HD key has an xpub")).unwrap();
    assert_eq!(xpub.public_key.serialize().to_vec(), dealt.key.key_id);

    // Every pair of clusters signs, in either order.
    for (i, pair) in [["dc1", "dc2"], ["dc3", "dc2"], ["dc1", "dc3"]]
        .iter()
        .enumerate()
    {
        let digest: [u8; 32] = rand::random();
        let path = format!("m/0/{i}");
        let view = rt.block_on(threshold_sign(
            &client,
            &alice,
            &key_id,
            &path,
            digest,
            Some(pair.iter().map(|c| c.to_string()).collect()),
        ));
        let used = check_signature(&view, &xpub, &path, digest);
        let mut used_sorted = used.clone();
        used_sorted.sort();
        let mut want: Vec<String> = pair.iter().map(|c| c.to_string()).collect();
        want.sort();
        assert_eq!(used_sorted, want, "{view:?}");
    }

    // Audit ([0086]): without approvals, sessions covering every cluster each sign a random
    // 8-byte message's audit digest with the root key.
    let report = rt.block_on(client.threshold_audit(&key_id)).unwrap();
    assert_eq!(report.key_id, key_id);
    assert_eq!(report.sessions.len(), 2, "{report:?}");
    eprintln!(
        "threshold audit: {} ms",
        report.finished_at_ms - report.started_at_ms
    );
    for c in &report.clusters {
        assert!(c.ok, "{report:?}");
    }
    let mut clusters: Vec<&str> = report.clusters.iter().map(|c| c.cluster.as_str()).collect();
    clusters.sort();
    assert_eq!(clusters, CLUSTERS);
    let secp = Secp256k1::new();
    for sess in &report.sessions {
        assert!(sess.verified && sess.error.is_none(), "{report:?}");
        let message = hex::decode(&sess.message_hex).unwrap();
        assert_eq!(message.len(), custos_wire::protocol::MAX_AUDIT_MESSAGE);
        let mut compact = [0u8; 64];
        compact[..32].copy_from_slice(&hex::decode(sess.r.as_ref().unwrap()).unwrap());
        compact[32..].copy_from_slice(&hex::decode(sess.s.as_ref().unwrap()).unwrap());
        let msg = Message::from_digest(custos_wire::protocol::audit_digest(&message));
        secp.verify_ecdsa(
            &msg,
            &ecdsa::Signature::from_compact(&compact).unwrap(),
            &xpub.public_key,
        )
        .unwrap();
    }
    let latest = rt.block_on(client.latest_threshold_audit(&key_id)).unwrap();
    assert_eq!(latest, report);
    if let Some(m) = crate::metrics::metrics_at(&dep.metrics_url) {
        let verified = r#"custos_cloud_threshold_audit_sessions_total{"outcome": "verified"}"#;
        assert_eq!(crate::metrics::sample(&m, verified), 2.0, "{m:?}");
    }

    // The cluster syncs its share ([0073]-[0074]): dc1's second node gets it from the first,
    // and signs for dc1 once the first node (server and TEE) is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut tee = dep.cluster("dc1").unwrap().nodes[1].tee.client().unwrap();
        match tee
            .call(&custos_wire::protocol::Request::ListThresholdKeys)
            .unwrap()
        {
            custos_wire::protocol::Response::ThresholdKeys(k)
                if k.iter().any(|k| hex::encode(&k.key_id) == key_id) =>
            {
                assert_eq!(k[0].share_index, 0);
                break;
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dc1-node2 never received dc1's share"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    {
        let dc1 = dep.cluster_mut("dc1").unwrap();
        dc1.kill_node_server(0);
        dc1.kill_tee(0);
    }
    // Let the bridge see the node down.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let digest: [u8; 32] = rand::random();
    let view = rt.block_on(threshold_sign(
        &client,
        &alice,
        &key_id,
        "m/3",
        digest,
        Some(vec!["dc1".into(), "dc3".into()]),
    ));
    check_signature(&view, &xpub, "m/3", digest);

    // dc2 unreachable (its external relay is down): the cloud server picks the other two.
    dep.cluster_mut("dc2").unwrap().kill_relay();
    let digest: [u8; 32] = rand::random();
    let view = rt.block_on(threshold_sign(
        &client, &alice, &key_id, "m/7/1", digest, None,
    ));
    let used = check_signature(&view, &xpub, "m/7/1", digest);
    assert!(!used.contains(&"dc2".to_string()), "{used:?}");
}

/// The presignatures `node` of `cluster` holds for `key_id` (asked at its TEE socket).
pub(crate) fn tee_presignatures(
    dep: &Deployment,
    cluster: &str,
    node: usize,
    key_id: &[u8],
) -> Vec<String> {
    let mut tee = dep.cluster(cluster).unwrap().nodes[node]
        .tee
        .client()
        .unwrap();
    match tee
        .call(&custos_wire::protocol::Request::ListPresignatures {
            key_id: key_id.to_vec(),
        })
        .unwrap()
    {
        custos_wire::protocol::Response::Presignatures(list) => {
            list.iter().map(|p| hex::encode(p.id)).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A `threshold_sign` request of a full message (path m), approved by alice.
pub(crate) async fn sign_message(
    client: &CloudClient,
    alice: &AdminSigner,
    key_id: &str,
    message: &[u8],
) -> RequestView {
    let view = client
        .threshold_sign(&ThresholdSignBody {
            key_id: key_id.into(),
            path: "m".into(),
            digest: String::new(),
            message: Some(hex::encode(message)),
            clusters: None,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(view.status, RequestStatus::PendingApproval, "{view:?}");
    approve(client, alice, &view.id).await.unwrap()
}

/// Deals a 2-of-3 key without chain code ("plain", as presignatures need) to the three
/// clusters and imports it through the cloud server, approved by `alice`; its key id.
pub(crate) fn import_plain_key(
    dep: &mut Deployment,
    rt: &tokio::runtime::Runtime,
    client: &CloudClient,
    alice: &AdminSigner,
) -> Vec<u8> {
    let dealt = dep
        .deal_threshold("plain", 2, &CLUSTERS, 1, false, test_primes())
        .unwrap();
    for v in rt
        .block_on(import_threshold(client, &dealt, &[alice]))
        .unwrap()
    {
        assert_eq!(v.status, RequestStatus::Completed, "{v:?}");
    }
    dealt.key.key_id
}

#[test]
fn presignatures_sign_full_messages_once_through_the_cloud_server() {
    use bitcoin::hashes::{sha256, Hash};
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters(tmp.path(), 1, 1);
    let (alice, client, rt) = crate::common::alice_client(&dep);
    // A key without chain code (presignatures never serve HD derivation).
    let key_bytes = import_plain_key(&mut dep, &rt, &client, &alice);
    let key_id = hex::encode(&key_bytes);

    // Made ahead of time: two by dc1+dc2, one by dc3+dc2.
    let body = |n: u32, c: [&str; 2]| custos_cloud_api::MakePresignaturesBody {
        count: n,
        clusters: Some(c.iter().map(|c| c.to_string()).collect()),
    };
    let t = std::time::Instant::now();
    let pool = rt
        .block_on(client.make_presignatures(&key_id, &body(2, ["dc1", "dc2"])))
        .unwrap();
    eprintln!("2 presignatures: {} ms", t.elapsed().as_millis());
    assert_eq!(pool.made.len(), 2, "{pool:?}");
    assert!(pool.failed.is_empty(), "{pool:?}");
    let pool = rt
        .block_on(client.make_presignatures(&key_id, &body(1, ["dc3", "dc2"])))
        .unwrap();
    assert_eq!(pool.ready.len(), 3, "{pool:?}");
    let first = pool.ready[0].id.clone();
    let last = pool.ready[2].id.clone();
    assert_eq!(pool.ready[2].clusters, ["dc3", "dc2"]);
    assert!(tee_presignatures(&dep, "dc1", 0, &key_bytes).contains(&first));
    assert!(tee_presignatures(&dep, "dc2", 0, &key_bytes).contains(&last));
    assert!(!tee_presignatures(&dep, "dc1", 0, &key_bytes).contains(&last));

    // Online signing of a full message: the oldest presignature, one exchange.
    let pk = PublicKey::from_slice(&key_bytes).unwrap();
    let check = |view: &RequestView, message: &[u8]| -> (String, Vec<String>) {
        assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
        let Some(RequestResult::Signature(sig)) = &view.result else {
            panic!("no signature: {view:?}");
        };
        assert_eq!(sig.public_key, key_id);
        let mut compact = [0u8; 64];
        compact[..32].copy_from_slice(&hex::decode(&sig.r).unwrap());
        compact[32..].copy_from_slice(&hex::decode(&sig.s).unwrap());
        let plain = ecdsa::Signature::from_compact(&compact).unwrap();
        let mut normalized = plain;
        normalized.normalize_s();
        assert_eq!(plain, normalized, "signature is not low-s");
        let digest = sha256::Hash::hash(message).to_byte_array();
        Secp256k1::new()
            .verify_ecdsa(&Message::from_digest(digest), &plain, &pk)
            .unwrap();
        (
            sig.presignature
                .clone()
                .expect("signed from a presignature"),
            sig.clusters.clone().unwrap_or_default(),
        )
    };
    let message = b"custos e2e: pay 0.25 BTC to bc1qexample";
    let view = rt.block_on(sign_message(&client, &alice, &key_id, message));
    let (used, clusters) = check(&view, message);
    assert_eq!(used, first);
    assert_eq!(clusters, ["dc1", "dc2"]);
    let ready = rt.block_on(client.presignatures(&key_id)).unwrap().ready;
    assert_eq!(ready.len(), 2);
    assert!(ready.iter().all(|p| p.id != first));
    // Gone from both TEEs, also after dc1's TEE is killed and restarted (sealed storage);
    // the unused ones survive the restart.
    for c in ["dc1", "dc2"] {
        assert!(!tee_presignatures(&dep, c, 0, &key_bytes).contains(&first));
    }
    {
        let dc1 = dep.cluster_mut("dc1").unwrap();
        dc1.kill_tee(0);
        dc1.restart_node(0).unwrap();
    }
    let after = tee_presignatures(&dep, "dc1", 0, &key_bytes);
    assert!(!after.contains(&first), "{after:?}");
    assert!(after.contains(&ready[0].id), "{after:?}");

    // dc1's TEE down: the presignature it holds is lost with a failure naming dc1; the
    // retry avoids dc1 and uses dc3+dc2's.
    dep.cluster_mut("dc1").unwrap().kill_tee(0);
    let message = b"custos e2e: second payment";
    let view = rt.block_on(sign_message(&client, &alice, &key_id, message));
    assert_eq!(view.status, RequestStatus::Failed, "{view:?}");
    let error = view.error.clone().unwrap();
    assert!(error.message.contains("dc1"), "{error:?}");
    let view = rt.block_on(client.retry(&view.id)).unwrap();
    let (used, clusters) = check(&view, message);
    assert_eq!(used, last);
    assert_eq!(clusters, ["dc3", "dc2"]);
    assert!(rt
        .block_on(client.presignatures(&key_id))
        .unwrap()
        .ready
        .is_empty());

    // None ready: the same request kind runs the interactive protocol (dc2+dc3).
    let message = b"custos e2e: third payment";
    let view = rt.block_on(sign_message(&client, &alice, &key_id, message));
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::Signature(sig)) = &view.result else {
        panic!("no signature: {view:?}");
    };
    assert!(sig.presignature.is_none());

    // A configured pool is kept full in the background (by the clusters that are up), and
    // refilled after a use.
    dep.reconfigure_cloud(|c| c.presignature_pool = 2).unwrap();
    let client = dep.client().unwrap();
    let wait_ready = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let pool = rt.block_on(client.presignatures(&key_id)).unwrap();
            if pool.ready.len() >= n {
                assert_eq!(pool.ready.len(), n, "{pool:?}");
                return pool;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pool not refilled: {pool:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let pool = wait_ready(2);
    assert!(pool
        .ready
        .iter()
        .all(|p| !p.clusters.contains(&"dc1".to_string())));
    let message = b"custos e2e: fourth payment";
    let view = rt.block_on(sign_message(&client, &alice, &key_id, message));
    let (used, _) = check(&view, message);
    assert_eq!(used, pool.ready[0].id);
    let pool = wait_ready(2);
    assert!(pool.ready.iter().all(|p| p.id != used));
}
