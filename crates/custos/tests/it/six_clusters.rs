//! The patent's own example ([0031], [0070]) through real processes: a 3-of-6 key over six
//! clusters, made by distributed key generation in the six clusters' TEEs (each given its
//! own TEST-ONLY primes set) and dealt by a dealer, signs through the cloud server with
//! three different triples, each signature checked with libsecp256k1; with a cluster down
//! the cloud server replaces it in the triple by itself, and with three down the other
//! three still sign.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::bip32::Xpub;
use custos::cluster::LinkTransport;
use custos::deployment::{
    create_threshold_key, import_threshold, wait_healthy, Deployment, DeploymentOptions,
};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{RequestResult, RequestStatus};
use custos_pki::AdminSigner;

use crate::common::exe;

const SIX: [&str; 6] = ["dc1", "dc2", "dc3", "dc4", "dc5", "dc6"];

fn six_clusters(dir: &std::path::Path) -> Deployment {
    Deployment::start(
        &exe(),
        dir,
        &DeploymentOptions {
            clusters: SIX
                .iter()
                .map(|c| (c.to_string(), LinkTransport::Tcp))
                .collect(),
            nodes: 1,
            admins: vec!["alice".into()],
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap()
}

/// Signs a fresh digest at `path` with `clusters` (the cloud server's choice when `None`)
/// and checks the signature against the child of `xpub`; returns the clusters that signed.
async fn sign(
    client: &CloudClient,
    alice: &AdminSigner,
    xpub: &Xpub,
    key_id: &str,
    path: &str,
    clusters: Option<&[&str]>,
) -> Vec<String> {
    let digest: [u8; 32] = rand::random();
    let clusters = clusters.map(|c| c.iter().map(|c| c.to_string()).collect());
    let view =
        crate::threshold::threshold_sign(client, alice, key_id, path, digest, clusters).await;
    let mut used = crate::threshold::check_signature(&view, xpub, path, digest);
    used.sort();
    used
}

/// Each key (id, xpub) signs with three named triples; then with dc1 down an unnamed request
/// is served by a triple without it, and with dc1, dc3 and dc5 down by dc2, dc4 and dc6.
fn sign_with_triples_and_clusters_down(dep: &mut Deployment, keys: &[(String, Xpub)]) {
    let (alice, client, rt) = crate::common::alice_client(dep);
    for (key_id, xpub) in keys {
        for (i, triple) in [
            ["dc1", "dc2", "dc3"],
            ["dc4", "dc5", "dc6"],
            ["dc2", "dc4", "dc6"],
        ]
        .iter()
        .enumerate()
        {
            let path = format!("m/0/{i}");
            let used = rt.block_on(sign(&client, &alice, xpub, key_id, &path, Some(triple)));
            assert_eq!(used, triple.to_vec(), "{triple:?}");
        }
    }
    for (down, path) in [(&["dc1"][..], "m/1/0"), (&["dc3", "dc5"][..], "m/1/1")] {
        for c in down {
            let cluster = dep.cluster_mut(c).unwrap();
            cluster.kill_node_server(0);
            cluster.kill_tee(0);
            // Until its bridge sees the node down (the cloud server asks the bridges).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while rt.block_on(client.cluster(c)).is_ok_and(|s| s.healthy > 0) {
                assert!(std::time::Instant::now() < deadline, "{c} still healthy");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (key_id, xpub) in keys {
            let used = rt.block_on(sign(&client, &alice, xpub, key_id, path, None));
            assert_eq!(used.len(), 3, "{used:?}");
            assert!(!used.contains(&"dc1".to_string()), "{used:?}");
            if down.len() == 2 {
                assert_eq!(used, ["dc2", "dc4", "dc6"]);
            }
        }
    }
}

/// One deployment of six clusters, two 3-of-6 keys: one made by DKG, one dealt.
#[test]
fn three_of_six_keys_made_by_dkg_and_dealt_sign_with_several_triples_and_three_clusters_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = six_clusters(tmp.path());
    let sets = crate::dkg::fixture_sets();
    assert!(sets.len() >= 6, "the fixture holds six parties' sets");
    for (i, c) in SIX.iter().enumerate() {
        dep.provide_tee_primes("acme", c, 0, &sets[i]).unwrap();
    }
    let (alice, client, rt) = crate::common::alice_client(&dep);
    rt.block_on(wait_healthy(&client, &SIX, Duration::from_secs(30)))
        .unwrap();
    let view = rt
        .block_on(create_threshold_key(&client, &SIX, 3, 1, true, &[&alice]))
        .unwrap();
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::ThresholdKey(made)) = &view.result else {
        panic!("no key: {view:?}");
    };
    assert_eq!((made.threshold, made.origin.as_str()), (3, "dkg"));
    assert_eq!(made.clusters, SIX);
    let by_dkg = Xpub::from_str(made.xpub.as_deref().expect("an HD key")).unwrap();

    let dealt = dep
        .deal_threshold("acme", 3, &SIX, 1, true, crate::threshold::test_primes())
        .unwrap();
    for v in rt
        .block_on(import_threshold(&client, &dealt, &[&alice]))
        .unwrap()
    {
        assert_eq!(v.status, RequestStatus::Completed, "{v:?}");
    }
    let dealt_id = hex::encode(&dealt.key.key_id);
    let key = rt.block_on(client.threshold_key(&dealt_id)).unwrap();
    assert_eq!((key.threshold, key.clusters.len()), (3, 6));
    let by_dealer = Xpub::from_str(key.xpub.as_deref().expect("an HD key")).unwrap();
    sign_with_triples_and_clusters_down(
        &mut dep,
        &[(made.key_id.clone(), by_dkg), (dealt_id, by_dealer)],
    );
}
