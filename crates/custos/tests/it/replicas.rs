//! Cloud server replicas on one PostgreSQL (issue 16 item 1), through real processes: two
//! cloud servers behind one address list serve a stream of BIP-32 and threshold requests
//! while the one holding the background leases is SIGKILLed and restarted. No request is
//! lost or executed twice (the bridges' histories and the TEEs' presignature records
//! agree), the dead replica's in-flight requests are resubmitted by the other one exactly
//! once, and recovery and refill change hands exactly once.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::bip32::{DerivationPath, Xpub};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos::cluster::LinkTransport;
use custos::deployment::{approve, Deployment, DeploymentOptions};
use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::{
    CreateWalletBody, RequestResult, RequestStatus, RequestView, SignRequestBody, ThresholdSignBody,
};
use custos_pki::AdminSigner;
use custos_test_kit::db::TestDb;

use crate::common::{exe, THRESHOLD_CLUSTERS as CLUSTERS};

/// Heartbeat age after which a replica is dead, in this test (the default is 15 s).
const TTL_SECS: u64 = 4;
/// Requests of the client stream.
const STREAM: usize = 24;

type Create = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<RequestView, ClientError>> + Send>>
        + Send
        + Sync,
>;

/// Creates a request with an id chosen here, approves it, and returns its final state, the
/// way a client of an address list must: a call whose connection broke is read back by id
/// (through whichever replica answers), never blindly repeated.
async fn settle(
    client: &CloudClient,
    alice: &AdminSigner,
    id: &str,
    create: &Create,
) -> RequestView {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut created = false;
    loop {
        assert!(Instant::now() < deadline, "request {id} never settled");
        if !created {
            match create().await {
                Ok(_) => {}
                Err(e) if e.code() == Some("request_exists") => {}
                Err(ClientError::Transport(_)) => {}
                Err(e) => panic!("request {id}: {e}"),
            }
            created = true;
        }
        match client.request(id).await {
            Ok(v) if v.status == RequestStatus::PendingApproval => {
                // A broken approval call is read back like any other.
                let _ = approve(client, alice, id).await;
            }
            Ok(v) if v.status == RequestStatus::Submitting => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(v) => return v,
            Err(e) if e.code() == Some("unknown_request") => created = false,
            Err(ClientError::Transport(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("request {id}: {e}"),
        }
    }
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn bip32_sign(client: &CloudClient, root_id: &str, i: usize, id: &str) -> (Create, [u8; 32]) {
    let digest: [u8; 32] = rand::random();
    let body = SignRequestBody {
        root_id: root_id.into(),
        path: format!("m/0/{i}"),
        digest: hex::encode(digest),
        request_id: Some(id.into()),
        expires_at: None,
        approvals: Vec::new(),
    };
    let client = client.clone();
    (
        Box::new(move || {
            let (client, body) = (client.clone(), body.clone());
            Box::pin(async move { client.sign(&body).await })
        }),
        digest,
    )
}

fn threshold_sign(client: &CloudClient, key_id: &str, message: &[u8], id: &str) -> Create {
    let body = ThresholdSignBody {
        key_id: key_id.into(),
        path: "m".into(),
        digest: String::new(),
        message: Some(hex::encode(message)),
        clusters: None,
        request_id: Some(id.into()),
        expires_at: None,
        approvals: Vec::new(),
    };
    let client = client.clone();
    Box::new(move || {
        let (client, body) = (client.clone(), body.clone());
        Box::pin(async move { client.threshold_sign(&body).await })
    })
}

/// `r || s` of a completed signature, checked against `key` over `digest`.
fn check_signature(view: &RequestView, key: &PublicKey, digest: [u8; 32]) -> Option<String> {
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    let Some(RequestResult::Signature(sig)) = &view.result else {
        panic!("no signature: {view:?}");
    };
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&hex::decode(&sig.r).unwrap());
    compact[32..].copy_from_slice(&hex::decode(&sig.s).unwrap());
    Secp256k1::verification_only()
        .verify_ecdsa(
            &Message::from_digest(digest),
            &ecdsa::Signature::from_compact(&compact).unwrap(),
            key,
        )
        .unwrap_or_else(|e| panic!("request {}: {e}", view.id));
    sig.presignature.clone()
}

/// A bridge history's entries per request id.
async fn history(dep: &Deployment, cluster: &str) -> BTreeMap<String, Vec<custos_metadata::Entry>> {
    let db = custos_metadata::MetadataDb::connect(&dep.cluster(cluster).unwrap().db_url)
        .await
        .unwrap();
    let mut by_id: BTreeMap<String, Vec<custos_metadata::Entry>> = BTreeMap::new();
    for e in db.history(0, 100_000).await.unwrap() {
        if let Some(id) = e.request_id.clone() {
            by_id.entry(id).or_default().push(e);
        }
    }
    by_id
}

/// Replica id of the cloud server serving at `url`, from the heartbeat table.
async fn replica_at(store: &custos_cloud::db::Store, url: &str) -> String {
    let listen = url.trim_start_matches("http://");
    store
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| r.listen == listen)
        .unwrap_or_else(|| panic!("no replica serves at {url}"))
        .id
}

async fn wait_until(
    what: &str,
    mut cond: impl FnMut() -> Pin<Box<dyn Future<Output = bool> + Send>>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_stream_of_requests_survives_a_replica_killed_and_restarted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(TestDb::postgres("cloud_replicas")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = Deployment::start(
        &exe(),
        tmp.path(),
        &DeploymentOptions {
            clusters: CLUSTERS
                .iter()
                .map(|c| (c.to_string(), LinkTransport::Tcp))
                .collect(),
            nodes: 1,
            admins: vec!["alice".into()],
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: Some(db.url.clone()),
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    dep.reconfigure_cloud(|c| {
        c.replica_ttl_secs = TTL_SECS;
        c.presignature_pool = 2;
    })
    .unwrap();
    let second = dep.add_cloud_replica().unwrap();
    let urls = dep.cloud_urls();
    let alice = Arc::new(dep.admin("alice").unwrap());
    let client = dep.replicas_client().unwrap();
    let store = rt
        .block_on(custos_cloud::db::Store::connect(&db.url))
        .unwrap();
    let first_id = rt.block_on(replica_at(&store, &urls[0]));
    let second_id = rt.block_on(replica_at(&store, &urls[second]));

    // A wallet on dc1 and a 2-of-3 key without chain code (presignatures refilled in the
    // background by the replica holding the refill lease: the first one started).
    let (root_id, xpub) = rt.block_on(async {
        let view = client
            .create_wallet(&CreateWalletBody {
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                cluster: "dc1".into(),
                quorum: 1,
                group: vec![hex::encode(alice.key_fingerprint())],
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await
            .unwrap();
        let view = approve(&client, &alice, &view.id).await.unwrap();
        match view.result {
            Some(RequestResult::Wallet(w)) => (w.root_id, Xpub::from_str(&w.xpub).unwrap()),
            _ => panic!("no wallet: {view:?}"),
        }
    });
    let key_bytes = crate::threshold::import_plain_key(&mut dep, &rt, &client, &alice);
    let key_id = hex::encode(&key_bytes);
    let key = PublicKey::from_slice(&key_bytes).unwrap();
    rt.block_on(wait_until("the pool is full", || {
        let (client, key_id) = (client.clone(), key_id.clone());
        Box::pin(async move { client.presignatures(&key_id).await.unwrap().ready.len() == 2 })
    }));
    // An audit report made by one replica is the other's latest too (stored, not kept in
    // one process's memory).
    let token = dep.api_token.clone();
    let only = move |url: &str| CloudClient::new(url, &token).unwrap();
    let report = rt
        .block_on(only(&urls[0]).threshold_audit(&key_id))
        .unwrap();
    assert!(report.clusters.iter().all(|c| c.ok), "{report:?}");
    let latest = rt
        .block_on(only(&urls[second]).latest_threshold_audit(&key_id))
        .unwrap();
    assert_eq!(latest, report);
    let leases = rt.block_on(store.leases()).unwrap();
    assert_eq!(
        leases.len(),
        custos_cloud::replica::Job::ALL.len(),
        "{leases:?}"
    );
    for l in &leases {
        assert_eq!(l.holder, first_id, "{leases:?}");
    }

    // The client stream, in the background: BIP-32 signs, every fourth a threshold sign —
    // except around the kill: a threshold request whose replica died is taken over only once
    // its session must have ended (minutes; `takeover_after_ms`, shown by the cloud crate's
    // tests).
    let done = Arc::new(AtomicUsize::new(0));
    let bip32_only = Arc::new(AtomicBool::new(false));
    let stream = {
        let (client, alice, done, root_id, key_id, bip32_only) = (
            client.clone(),
            alice.clone(),
            done.clone(),
            root_id.clone(),
            key_id.clone(),
            bip32_only.clone(),
        );
        rt.spawn(async move {
            let mut out = Vec::new();
            for i in 0..STREAM {
                let id = new_id();
                let threshold = i % 4 == 3 && !bip32_only.load(Ordering::SeqCst);
                let (create, digest, threshold) = if threshold {
                    let message = format!("custos replicas: payment {i}").into_bytes();
                    let digest = sha256::Hash::hash(&message).to_byte_array();
                    (
                        threshold_sign(&client, &key_id, &message, &id),
                        digest,
                        true,
                    )
                } else {
                    let (create, digest) = bip32_sign(&client, &root_id, 100 + i, &id);
                    (create, digest, false)
                };
                let view = settle(&client, &alice, &id, &create).await;
                out.push((view, digest, threshold, 100 + i));
                done.fetch_add(1, Ordering::SeqCst);
            }
            out
        })
    };
    let wait_done = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the stream stalled before {n}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_done(STREAM / 4);
    bip32_only.store(true, Ordering::SeqCst);
    wait_done(done.load(Ordering::SeqCst) + 1);
    let terms: BTreeMap<String, i64> = rt
        .block_on(store.leases())
        .unwrap()
        .into_iter()
        .map(|l| (l.job, l.term))
        .collect();

    // Requests in flight on the first replica when it dies: dc1's bridge is frozen so that
    // they wait there, sent (attempt 1) and unanswered.
    let first_only = only(&urls[0]);
    dep.cluster("dc1").unwrap().freeze_bridge(true).unwrap();
    let stranded: Vec<(String, [u8; 32], usize)> = (0..3)
        .map(|k| {
            let id = new_id();
            let (create, digest) = bip32_sign(&first_only, &root_id, 500 + k, &id);
            let (client, alice, rid) = (first_only.clone(), alice.clone(), id.clone());
            // The approval's call waits for the frozen bridge; it dies with the replica.
            rt.spawn(async move {
                create().await.unwrap();
                let _ = approve(&client, &alice, &rid).await;
            });
            (id, digest, 500 + k)
        })
        .collect();
    rt.block_on(wait_until("the stranded requests are submitting", || {
        let (store, ids) = (
            store.clone(),
            stranded.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        );
        Box::pin(async move {
            for id in &ids {
                let row = store.request(id).await.unwrap();
                if row.map(|r| r.status) != Some(RequestStatus::Submitting) {
                    return false;
                }
            }
            true
        })
    }));
    dep.kill_cloud_replica(0);
    let killed_ms = custos_pki::clock::now_unix_ms();
    dep.cluster("dc1").unwrap().freeze_bridge(false).unwrap();

    // The second replica takes the leases over once the first one's heartbeat ran out, and
    // resubmits the stranded requests; the stream goes on through it meanwhile.
    let survivor = only(&urls[second]);
    for (id, digest, i) in &stranded {
        let view = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let v = survivor.request(id).await.unwrap();
                if v.status != RequestStatus::Submitting || Instant::now() > deadline {
                    break v;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let child = xpub
            .derive_pub(
                &Secp256k1::new(),
                &DerivationPath::from_str(&format!("m/0/{i}")).unwrap(),
            )
            .unwrap()
            .public_key;
        check_signature(&view, &child, *digest);
        let row = rt.block_on(store.request(id)).unwrap().unwrap();
        let resubmits: Vec<_> = row
            .events
            .iter()
            .filter(|e| e.event == "resubmitting")
            .collect();
        assert_eq!(resubmits.len(), 1, "{:?}", row.events);
        assert!(resubmits[0].detail.contains(&second_id), "{:?}", row.events);
        // Not before the dead replica's heartbeat ran out (its last beat was at most a
        // fifth of the TTL before the kill).
        assert!(
            resubmits[0].at >= killed_ms + TTL_SECS * 1000 * 4 / 5,
            "taken over {} ms after the kill",
            resubmits[0].at.saturating_sub(killed_ms)
        );
        assert_eq!(row.owner.as_deref(), Some(second_id.as_str()));
    }
    dep.start_cloud_replica(0).unwrap();
    bip32_only.store(false, Ordering::SeqCst);
    let restarted_id = rt.block_on(replica_at(&store, &urls[0]));
    assert_ne!(
        restarted_id, first_id,
        "a restarted process is a new replica"
    );

    let results = rt.block_on(stream).unwrap();
    assert_eq!(results.len(), STREAM);

    // Every request completed, once: its signature verifies, dc1's history holds one
    // execution of each BIP-32 sign, and each threshold sign used its own presignature
    // (which no TEE holds any more).
    let dc1 = rt.block_on(history(&dep, "dc1"));
    let mut presignatures = Vec::new();
    let all = results
        .iter()
        .map(|(v, d, t, i)| (v.clone(), *d, *t, *i))
        .chain(
            stranded
                .iter()
                .map(|(id, d, i)| (rt.block_on(survivor.request(id)).unwrap(), *d, false, *i)),
        );
    for (view, digest, threshold, i) in all {
        if threshold {
            presignatures.extend(check_signature(&view, &key, digest));
            continue;
        }
        let child = xpub
            .derive_pub(
                &Secp256k1::new(),
                &DerivationPath::from_str(&format!("m/0/{i}")).unwrap(),
            )
            .unwrap()
            .public_key;
        check_signature(&view, &child, digest);
        let executed: Vec<_> = dc1
            .get(&view.id)
            .map(|es| es.iter().filter(|e| e.outcome == "ok").collect())
            .unwrap_or_default();
        assert_eq!(
            executed.len(),
            1,
            "request {}: {:?}",
            view.id,
            dc1.get(&view.id)
        );
    }
    let mut distinct = presignatures.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), presignatures.len(), "{presignatures:?}");
    for c in CLUSTERS {
        let held = crate::threshold::tee_presignatures(&dep, c, 0, &key_bytes);
        assert!(
            presignatures.iter().all(|p| !held.contains(p)),
            "{c}: {held:?}"
        );
    }

    // Each job changed hands exactly once: to the survivor, which still holds it.
    let leases = rt.block_on(store.leases()).unwrap();
    for l in &leases {
        assert_eq!(
            (l.holder.as_str(), l.term),
            (second_id.as_str(), terms[&l.job] + 1),
            "{leases:?}"
        );
    }
    if let (Some(a), Some(b)) = (
        crate::metrics::metrics_at(dep.cloud_metrics_url(0).unwrap()),
        crate::metrics::metrics_at(dep.cloud_metrics_url(second).unwrap()),
    ) {
        let held = |m: &BTreeMap<String, f64>, job: &str| {
            crate::metrics::sample(m, &format!(r#"custos_cloud_lease_held{{"job": "{job}"}}"#))
        };
        for job in ["recovery", "expiry", "refill"] {
            assert_eq!((held(&a, job), held(&b, job)), (0.0, 1.0), "{job}");
        }
        // The gauge is set by the survivor's heartbeat: the restarted replica is counted
        // from the survivor's first heartbeat after the restart's first one.
        let deadline = Instant::now() + Duration::from_secs(3 * TTL_SECS);
        let mut live = crate::metrics::sample(&b, "custos_cloud_replicas_live{}");
        while live != 2.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let m = crate::metrics::metrics_at(dep.cloud_metrics_url(second).unwrap()).unwrap();
            live = crate::metrics::sample(&m, "custos_cloud_replicas_live{}");
        }
        assert_eq!(live, 2.0);
        let refills = |m: &BTreeMap<String, f64>| {
            crate::metrics::sample(m, r#"custos_cloud_job_runs_total{"job": "refill"}"#)
        };
        assert_eq!(refills(&a), 0.0, "the restarted replica refilled");
        assert!(refills(&b) > 0.0);
    }
    rt.block_on(store.close());
    drop(dep);
    rt.block_on(db.cleanup());
}
