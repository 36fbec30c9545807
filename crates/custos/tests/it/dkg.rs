//! Distributed key generation end to end through real processes (issue 5, item 2): the
//! cloud server runs keygen and aux-info between the TEEs of three clusters through each
//! cluster's external relay, link and bridge, every TEE ends with its own share of a 2-of-3
//! HD key that no process ever held whole, and two clusters then sign with it. The clusters
//! are governed first, so the key anchors each share's cluster at its log and its co-signers
//! are checked against each other's logs (issue 12, plan step D5), down to a rogue device
//! named as a co-signer straight at a TEE.
//!
//! Paillier primes: each TEE process is given one set of the committed TEST-ONLY fixture of
//! the threshold crate (Blum primes, not safe primes, published), sealed to it, through
//! `CUSTOS_TEE_PRIMES_FILE` (this test binary's TEEs accept the fixture: feature
//! `insecure-test-primes`); production TEEs generate real safe primes themselves or get a set
//! sealed to them (`custos dealer primes --for`).
//! Aux-info generation is the cost of this test: about 12 s of one core per TEE, in three
//! processes at once.

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::{govern, three_clusters, THRESHOLD_CLUSTERS as CLUSTERS};
use bitcoin::bip32::{DerivationPath, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos::deployment::{approve, create_threshold_key, wait_healthy};
use custos_cloud_api::{PolicyRules, RequestKind, RequestResult, RequestStatus, ThresholdSignBody};
use custos_wire::protocol::{Request, Response, ThresholdKeyInfo, ThresholdOrigin};

/// The TEST-ONLY fixture's sets.
pub(crate) fn fixture_sets() -> Vec<custos_threshold::Primes> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../threshold/fixtures/TEST-ONLY-blum-primes-sl128.json");
    custos::dealer::read_primes(&path).unwrap()
}

/// Primes sets every TEE of the binary under test accepts: the sets of the file named by
/// `CUSTOS_TEST_SAFE_PRIMES` (real safe primes, e.g. from `cargo run --release -p
/// custos-threshold --example gen-safe-primes -- 2 FILE`, for a run against a build without
/// `insecure-test-primes`, see [`crate::common::exe`]), else the fixture's.
fn accepted_sets() -> Vec<custos_threshold::Primes> {
    match std::env::var_os("CUSTOS_TEST_SAFE_PRIMES") {
        Some(file) => custos::dealer::read_primes(std::path::Path::new(&file)).unwrap(),
        None => fixture_sets(),
    }
}

/// A set of four fresh 1536-bit primes that are not safe primes (nor the fixture's).
fn unsafe_set() -> custos_threshold::Primes {
    let primes: Vec<String> = (0..4)
        .map(|_| {
            let h = glass_pumpkin::prime::new(1536).unwrap().to_str_radix(16);
            format!("{{\"radix\":16,\"value\":\"{h}\"}}")
        })
        .collect();
    let file = format!("[{{\"primes\":[{}],\"_phantom\":null}}]", primes.join(","));
    custos_threshold::Primes::list_from_bytes(file.as_bytes())
        .unwrap()
        .remove(0)
}

/// Every TEE process refuses Paillier primes whoever holds them could know, by name
/// (`primes_refused`) and with nothing kept: two clusters given the same set make no key
/// (`duplicate_modulus`, found when the key would be finished), and a TEE that is not asked
/// to accept the TEST-ONLY primes — as every TEE of a build without the feature
/// `insecure-test-primes` — refuses a set of the published fixture (`test_fixture`) and a
/// set of primes that are not safe primes (`not_safe_prime`) before it serves. Run with
/// `CUSTOS_TEST_EXE` and `CUSTOS_TEST_SAFE_PRIMES` it shows the same of a release build.
#[test]
fn a_tee_process_refuses_published_unsafe_and_shared_primes_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters(tmp.path(), 1, 3600);
    let accepted = accepted_sets();
    assert!(
        accepted.len() >= 2,
        "two primes sets are needed, one shared"
    );
    for (c, set) in CLUSTERS
        .iter()
        .zip([&accepted[0], &accepted[0], &accepted[1]])
    {
        dep.provide_tee_primes("acme", c, 0, set).unwrap();
    }
    let (alice, client, rt) = crate::common::alice_client(&dep);
    rt.block_on(wait_healthy(&client, &CLUSTERS, Duration::from_secs(20)))
        .unwrap();
    let view = rt
        .block_on(create_threshold_key(
            &client,
            &CLUSTERS,
            2,
            1,
            true,
            &[&alice],
        ))
        .unwrap();
    assert_eq!(view.status, RequestStatus::Refused, "{view:?}");
    let error = view.error.as_ref().expect("a refusal says why");
    let said = format!("{}: {}", error.code, error.message);
    assert!(said.contains("primes_refused"), "{error:?}");
    assert!(said.contains("(duplicate_modulus)"), "{error:?}");
    assert!(rt
        .block_on(client.threshold_keys())
        .unwrap()
        .keys
        .is_empty());
    for c in CLUSTERS {
        let mut tee = dep.cluster(c).unwrap().nodes[0].tee.client().unwrap();
        assert_eq!(
            tee.call(&Request::ListThresholdKeys).unwrap(),
            Response::ThresholdKeys(Vec::new()),
            "{c} keeps nothing"
        );
    }

    // Each refusal stops its TEE (it does not serve with a file it refuses), so one each.
    for (cluster, set, fault, names) in [
        ("dc2", &fixture_sets()[0], "test_fixture", "TEST-ONLY"),
        ("dc3", &unsafe_set(), "not_safe_prime", "prime 0 of the set"),
    ] {
        let node = &mut dep.cluster_mut(cluster).unwrap().nodes[0];
        node.tee.restart_refusing_test_primes().unwrap();
        let err = dep
            .provide_tee_primes("acme", cluster, 0, set)
            .unwrap_err()
            .to_string();
        assert!(err.contains("primes_refused"), "{err}");
        assert!(err.contains(&format!("({fault})")), "{err}");
        assert!(err.contains(names), "{err}");
    }
}

#[test]
fn three_clusters_make_a_2_of_3_key_by_dkg_and_two_sign_with_it() {
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters(tmp.path(), 1, 3600);
    let sets = fixture_sets();
    let mut primes_files = Vec::new();
    for (i, c) in CLUSTERS.iter().enumerate() {
        primes_files.push(dep.provide_tee_primes("acme", c, 0, &sets[i]).unwrap());
    }
    // Imported by each TEE (sealed to it) and emptied at its start.
    for f in &primes_files {
        assert!(std::fs::read(f).unwrap().is_empty());
    }
    let (alice, client, rt) = crate::common::alice_client(&dep);
    rt.block_on(wait_healthy(&client, &CLUSTERS, Duration::from_secs(20)))
        .unwrap();
    // Each cluster governed (alice its governor, node1 its member): the key's policy then
    // anchors every share's cluster at its log, and co-signers are members only.
    for c in CLUSTERS {
        rt.block_on(govern(&client, c, &[format!("{c}-node1")], &[&alice], 1));
    }
    let ready = began.elapsed();

    // The key: requested, approved, made by the three TEEs.
    let dkg_began = Instant::now();
    let view = rt
        .block_on(create_threshold_key(
            &client,
            &CLUSTERS,
            2,
            1,
            true,
            &[&alice],
        ))
        .unwrap();
    let dkg_took = dkg_began.elapsed();
    assert_eq!(view.kind, RequestKind::CreateThresholdKey);
    assert_eq!(view.status, RequestStatus::Completed, "{view:?}");
    // Every cluster governed: the key anchors each share's cluster at its log's genesis,
    // shown to (and approved by) the admins; signing below then needs each co-signer's log
    // pushed to the other co-signer's TEE (plan step D5).
    let geneses: Vec<String> = CLUSTERS
        .iter()
        .map(|c| rt.block_on(client.members(c)).unwrap().genesis_id)
        .collect();
    assert_eq!(view.anchors.as_ref(), Some(&geneses), "{view:?}");
    let Some(RequestResult::ThresholdKey(made)) = &view.result else {
        panic!("no key: {view:?}");
    };
    assert_eq!((made.threshold, made.origin.as_str()), (2, "dkg"));
    assert_eq!(made.clusters, CLUSTERS);
    let xpub = Xpub::from_str(made.xpub.as_deref().expect("an HD key has an xpub")).unwrap();
    assert_eq!(hex::encode(xpub.public_key.serialize()), made.key_id);
    for (i, s) in made.shares.iter().enumerate() {
        assert_eq!(
            (usize::from(s.share_index), s.cluster.as_str()),
            (i, CLUSTERS[i])
        );
        assert_eq!(s.node, format!("{}-node1", CLUSTERS[i]));
    }
    let key = rt.block_on(client.threshold_key(&made.key_id)).unwrap();
    assert_eq!(key.origin, "dkg");
    assert!(key.missing_shares.is_empty(), "{key:?}");
    assert_eq!(key.created_by_request, view.id);

    // No process ever computed the whole key, as far as can be checked from outside: no
    // dealer dealt it (the dealer only signed each TEE's primes set, so it knows those
    // Paillier secrets — published ones here), and each TEE holds its own share, the key's
    // public facts differing in the share index only.
    let mut infos: Vec<ThresholdKeyInfo> = Vec::new();
    for (i, c) in CLUSTERS.iter().enumerate() {
        let node = &dep.cluster(c).unwrap().nodes[0];
        let mut tee = node.tee.client().unwrap();
        let Response::ThresholdKeys(held) = tee.call(&Request::ListThresholdKeys).unwrap() else {
            panic!("expected the threshold key list");
        };
        assert_eq!(held.len(), 1, "{c}: {held:?}");
        let info = held.into_iter().next().unwrap();
        assert_eq!(usize::from(info.share_index), i);
        assert_eq!(info.origin, ThresholdOrigin::Dkg);
        assert_eq!(hex::encode(&info.key_id), made.key_id);
        infos.push(info);
    }
    for info in &infos[1..] {
        assert_eq!(
            ThresholdKeyInfo {
                share_index: 0,
                ..info.clone()
            },
            infos[0]
        );
    }
    assert!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("bundle")),
        "no dealer bundle was written"
    );

    // dc3 and dc1 sign with the new key; libsecp256k1 verifies against the xpub's child.
    let sign_began = Instant::now();
    let digest: [u8; 32] = rand::random();
    let path = "m/0/7";
    let request = rt
        .block_on(client.threshold_sign(&ThresholdSignBody {
            key_id: made.key_id.clone(),
            path: path.into(),
            digest: hex::encode(digest),
            message: None,
            clusters: Some(vec!["dc3".into(), "dc1".into()]),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        }))
        .unwrap();
    let signed = rt.block_on(approve(&client, &alice, &request.id)).unwrap();
    let sign_took = sign_began.elapsed();
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    let Some(RequestResult::Signature(sig)) = &signed.result else {
        panic!("no signature: {signed:?}");
    };
    let mut used = sig.clusters.clone().unwrap_or_default();
    used.sort();
    assert_eq!(used, ["dc1", "dc3"]);
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

    rogue_co_signer_refused(&dep, &alice, &made.key_id, digest, path);
    let bob = rt.block_on(group_changed_on_every_cluster(
        &dep,
        &client,
        &made.key_id,
        &geneses,
    ));
    let psbt_began = Instant::now();
    rt.block_on(crate::threshold_psbt::threshold_psbt_through_rest(
        &dep,
        &client,
        &bob,
        &made.key_id,
        &xpub.to_string(),
    ));
    let psbt_took = psbt_began.elapsed();

    eprintln!(
        "deployment + primes [{:.1} s], DKG 2-of-3 through the cloud server [{:.1} s], \
         2-of-3 signing [{:.1} s], rules and PSBTs [{:.1} s], total [{:.1} s]",
        ready.as_secs_f64(),
        dkg_took.as_secs_f64(),
        sign_took.as_secs_f64(),
        psbt_took.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

/// The key's group changes from alice to bob through `PUT /v1/threshold/keys/{id}/policy`:
/// one approval by alice (the group in force) for every cluster (`*threshold*` scope,
/// recomputed from the view as `custos approve` does), the anchors carried over. Each
/// cluster's TEE then holds the new policy; a signing approved by alice is refused, by bob
/// accepted.
async fn group_changed_on_every_cluster(
    dep: &custos::deployment::Deployment,
    client: &custos_cloud_api::client::CloudClient,
    key_id: &str,
    geneses: &[String],
) -> custos_pki::AdminSigner {
    use custos_cloud_api::KeyPolicyBody;
    let alice = dep.admin("alice").unwrap();
    // A second admin of the Admin CA, enrolled now.
    let bob = dep
        .admin_folder("bob")
        .unwrap()
        .enroll("bob", &dep.pki)
        .unwrap();
    let before = client.threshold_key_policy(key_id).await.unwrap();
    assert_eq!(
        (before.version, before.quorum, &before.group),
        (1, 1, &vec![hex::encode(alice.key_fingerprint())])
    );
    assert_eq!(before.anchors.as_deref(), Some(geneses));
    let change = client
        .set_threshold_key_policy(
            key_id,
            &KeyPolicyBody {
                rules: None,
                group: vec![hex::encode(bob.key_fingerprint())],
                quorum: 1,
                request_id: None,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(change.anchors.as_deref(), Some(geneses));
    // Bob, of the new group only, does not count; alice's approval changes every cluster.
    let e = approve(client, &bob, &change.id).await.unwrap_err();
    assert!(e.to_string().contains("approver_not_in_group"), "{e}");
    let done = approve(client, &alice, &change.id).await.unwrap();
    assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
    let after = client.threshold_key_policy(key_id).await.unwrap();
    assert_eq!(
        (after.version, &after.group, after.anchors.as_deref()),
        (2, &vec![hex::encode(bob.key_fingerprint())], Some(geneses))
    );
    // `custos wallet policy --threshold-key <id> --show` shows it with its anchors.
    let mut out = Vec::new();
    let show = custos::wallet::policy::PolicyArgs {
        rules: None,
        api: dep.api_url.clone(),
        token: dep.api_token.clone(),
        api_root_ca: None,
        root: None,
        threshold_key: Some(key_id.into()),
        show: true,
        group: vec![],
        group_certs: vec![],
        quorum: None,
    };
    let shown = custos::wallet::policy::run(&show, &mut out).await.unwrap();
    assert_eq!(
        shown,
        custos::wallet::policy::PolicyOutcome::Shown(Box::new(after.clone()))
    );
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(&format!("threshold key {key_id}: policy version 2"))
            && out.contains(&format!("2: {}", geneses[2])),
        "{out}"
    );
    let key = hex::decode(key_id).unwrap();
    for c in CLUSTERS {
        let node = &dep.cluster(c).unwrap().nodes[0];
        let mut tee = node.tee.client().unwrap();
        let Response::KeyPolicy { policy, .. } = tee
            .call(&Request::GetKeyPolicy {
                key_id: key.clone(),
            })
            .unwrap()
        else {
            panic!("{c}: no policy");
        };
        assert_eq!(hex::encode(policy.hash()), after.hash, "{c}");
    }
    let sign = |by| {
        let by: custos_pki::AdminSigner = by;
        async move {
            let request = client
                .threshold_sign(&ThresholdSignBody {
                    key_id: key_id.into(),
                    path: "m/1".into(),
                    digest: hex::encode(rand::random::<[u8; 32]>()),
                    message: None,
                    clusters: Some(vec!["dc1".into(), "dc2".into()]),
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await
                .unwrap();
            approve(client, &by, &request.id).await.unwrap()
        }
    };
    let refused = sign(alice).await;
    assert_ne!(refused.status, RequestStatus::Completed, "{refused:?}");
    let error = refused.error.expect("why it was refused");
    assert!(
        format!("{}: {}", error.code, error.message).contains("approver_not_in_group"),
        "{error:?}"
    );
    let signed = sign(bob).await;
    assert_eq!(signed.status, RequestStatus::Completed, "{signed:?}");
    dep.admin("bob").unwrap()
}

/// Attacker's test (issue 12, item 1, threshold participation): a P-256 key made outside
/// any TEE, with a device certificate dc3's Cluster CA genuinely issued, named as dc3's
/// co-signer in an approved signing start sent straight to dc1's TEE (what a compromised
/// coordinator could do). Before plan step D5, dc1's TEE checked the chain only and started
/// the session; now the key anchors dc3 at its log, which the cloud pushed to dc1 before the
/// signing above, and the rogue is no member of it: refused by name, no session recorded.
/// The same start naming dc3's real node is accepted.
fn rogue_co_signer_refused(
    dep: &custos::deployment::Deployment,
    alice: &custos_pki::AdminSigner,
    key_id: &str,
    digest: [u8; 32],
    path: &str,
) {
    use crate::governance::Rogue;
    use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
    use custos_wire::protocol::{
        encode_request, RequestMeta, TeeError, ThresholdSignParams, ThresholdSigner,
    };

    let rogue = Rogue::of(&dep.pki, "dc3", "dc3-rogue");
    let key_id = hex::decode(key_id).unwrap();
    let path: Vec<u32> = DerivationPath::from_str(path)
        .unwrap()
        .into_iter()
        .map(|c| u32::from(*c))
        .collect();
    let node1 = |c: &str| &dep.cluster(c).unwrap().nodes[0];
    let dc3_chain = dep.node_chain("dc3", 0).unwrap();
    let mut tee = node1("dc1").tee.client().unwrap();
    let start = |co_signer: &custos_wire::protocol::CertChain| {
        let meta = RequestMeta {
            request_id: rand::random(),
            expires_at: custos_test_kit::now() + 600,
        };
        let action = Action::ThresholdSign {
            key_id: &key_id,
            path: &path,
            digest: &digest,
        };
        let message = action.message(THRESHOLD_SCOPE, &meta);
        let approval = Approval::by_key_file(alice, &message).unwrap();
        let dc1_chain = dep.node_chain("dc1", 0).unwrap();
        Request::ThresholdStart {
            meta,
            attempt: 0,
            approvals: vec![approval],
            params: ThresholdSignParams {
                key_id: key_id.clone(),
                path: path.clone(),
                digest,
                signers: vec![
                    ThresholdSigner {
                        share_index: 0,
                        chain: dc1_chain,
                    },
                    ThresholdSigner {
                        share_index: 2,
                        chain: co_signer.clone(),
                    },
                ],
            },
        }
    };
    match tee
        .call_bytes(&encode_request(&start(&rogue.chain)))
        .unwrap()
    {
        Err(TeeError::NotAMember { node, .. }) => assert_eq!(node, "dc3-rogue"),
        Err(e) => panic!("expected not_a_member for the rogue, got {e}"),
        Ok(_) => panic!("dc1's TEE started a session with the rogue as dc3's co-signer"),
    }
    assert!(matches!(
        tee.call_bytes(&encode_request(&start(&dc3_chain))).unwrap(),
        Ok(Response::ThresholdRound { .. })
    ));
}

/// One approval, one effect, for distributed key generation (issue 12 item 5): a group key
/// generation whose executor in dc1 stores its share and then has the answer lost between
/// its node server and the bridge (a proxy in front of the node server drops the first
/// reply leaving after the TEE holds the share). The attempt fails; the retry runs on the
/// nodes pinned at proposal, never on dc1's other node (which a naive retry, picking any
/// healthy node, would use and so make a second key). The request ends completed with the
/// one key or failed cleanly; no TEE holds more than one share, all of one key, each its
/// own cluster's (a node may hold a synced copy of its executor's), no session ran on any
/// other node, and the cloud server records at most that key.
#[test]
fn a_group_keygen_whose_answer_is_lost_makes_at_most_one_key() {
    use crate::common::proxy::front_two_nodes;
    use custos_cloud_api::CreateThresholdKeyBody;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    let tmp = tempfile::tempdir().unwrap();
    let mut dep = three_clusters(tmp.path(), 2, 3600);
    // Set i for every node of cluster i: only one node per cluster executes, so no session
    // ever meets the same Paillier primes twice in aux-info. The spare set 3 lets dc2 and
    // dc3 start the retry (their first set goes with the aborted attempt); that retry
    // cannot reach aux-info without dc1, so sharing it is harmless.
    let sets = fixture_sets();
    for (i, c) in CLUSTERS.iter().enumerate() {
        for n in 0..2 {
            dep.provide_tee_primes("acme", c, n, &sets[i]).unwrap();
            dep.provide_tee_primes("acme", c, n, &sets[3]).unwrap();
        }
    }
    let alice = dep.admin("alice").unwrap();
    let client = dep.client().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Both of dc1's nodes behind proxies: whichever executes, its answer can be lost.
    let proxies = front_two_nodes(&rt, &mut dep, &client, CLUSTERS[0]);
    rt.block_on(wait_healthy(&client, &CLUSTERS, Duration::from_secs(30)))
        .unwrap();

    let view = rt
        .block_on(client.create_threshold_key(&CreateThresholdKeyBody {
            group: Some(vec![hex::encode(alice.key_fingerprint())]),
            clusters: CLUSTERS.iter().map(|c| c.to_string()).collect(),
            threshold: 2,
            quorum: 1,
            hd: true,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
            rules: None,
        }))
        .unwrap();
    // No rules asked: the new key signs transactions only (raw digests off), shown so.
    assert_eq!(
        view.rules,
        Some(PolicyRules::new_wallet_default()),
        "{view:?}"
    );
    let executors: Vec<String> = view
        .target_node
        .as_deref()
        .expect("executing nodes named")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(executors.len(), CLUSTERS.len(), "{view:?}");
    // No cluster is governed here: the key anchors no governance log.
    assert_eq!(view.anchors, None, "{view:?}");
    let position = |c: &str, node: &str| {
        dep.cluster(c)
            .unwrap()
            .nodes
            .iter()
            .position(|n| n.name == node)
            .unwrap_or_else(|| panic!("{node} is no node of {c}"))
    };
    let dc1_executor = position(CLUSTERS[0], &executors[0]);

    // Lose the answer dc1's executor sends once its TEE has stored the share: the moment a
    // retry elsewhere would make a second key.
    let tee = Mutex::new(
        dep.cluster(CLUSTERS[0]).unwrap().nodes[dc1_executor]
            .tee
            .client()
            .unwrap(),
    );
    proxies[dc1_executor].arm_when(Arc::new(move || {
        matches!(
            tee.lock().unwrap().call(&Request::ListThresholdKeys),
            Ok(Response::ThresholdKeys(held)) if !held.is_empty()
        )
    }));
    let settled = |id: &str, limit: Duration| {
        rt.block_on(async {
            let deadline = Instant::now() + limit;
            loop {
                let v = client.request(id).await.unwrap();
                if v.status != RequestStatus::Submitting {
                    break v;
                }
                assert!(Instant::now() < deadline, "still submitting: {v:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    rt.block_on(approve(&client, &alice, &view.id)).unwrap();
    let first = settled(&view.id, Duration::from_secs(120));
    assert_eq!(proxies[dc1_executor].dropped(), 1, "{first:?}");
    eprintln!(
        "after the lost answer: {:?} {:?}",
        first.status, first.error
    );
    // A lost answer is no refusal: the attempt failed and may be retried.
    assert_eq!(first.status, RequestStatus::Failed, "{first:?}");
    proxies[dc1_executor].disarm();
    rt.block_on(client.retry(&view.id)).unwrap();
    let done = settled(&view.id, Duration::from_secs(120));
    eprintln!(
        "after the retry: {:?} {:?} result {:?}",
        done.status, done.error, done.result
    );
    for e in &done.events {
        eprintln!("  {} {}", e.event, e.detail);
    }

    // Every attempt ran on the pinned executors.
    let sessions: Vec<&str> = done
        .events
        .iter()
        .filter(|e| e.event == "session")
        .map(|e| e.detail.as_str())
        .collect();
    assert!(sessions.len() >= 2, "{:?}", done.events);
    for s in &sessions {
        for (c, node) in CLUSTERS.iter().zip(&executors) {
            assert!(s.contains(&format!("{c}/{node} ")), "moved: {s}");
        }
    }

    // Each bridge's own history: every keygen start it passed on (one per attempt) went to
    // its executor.
    for (c, executor) in CLUSTERS.iter().zip(&executors) {
        let db_url = dep.cluster(c).unwrap().db_url.clone();
        let history = rt.block_on(async {
            let db = custos_metadata::MetadataDb::connect(&db_url).await.unwrap();
            db.history(0, 10_000).await.unwrap()
        });
        // (Its "received" entries name no node yet: each sent one is recorded again.)
        let starts: Vec<_> = history
            .iter()
            .filter(|e| e.kind == "threshold-keygen-start" && e.node.is_some())
            .collect();
        eprintln!(
            "{c}: keygen starts {:?}",
            starts
                .iter()
                .map(|e| (e.node.as_deref(), e.outcome.as_str()))
                .collect::<Vec<_>>()
        );
        assert!(starts.len() >= 2, "{c}: {starts:?}");
        for e in &starts {
            assert_eq!(e.node.as_deref(), Some(executor.as_str()), "{c}: {e:?}");
        }
    }

    // Every TEE, asked directly: at most one share each, of one key, each its own
    // cluster's share. (A cluster's other node may hold a copy of its executor's share:
    // the bridge has its nodes sync once the cut node is healthy again. A copy is no second
    // key; a node that ran a session of its own would have shown in the events above.)
    let mut held: BTreeMap<String, Vec<ThresholdKeyInfo>> = BTreeMap::new();
    for (i, c) in CLUSTERS.iter().enumerate() {
        for node in &dep.cluster(c).unwrap().nodes {
            let mut tee = node.tee.client().unwrap();
            let Response::ThresholdKeys(keys) = tee.call(&Request::ListThresholdKeys).unwrap()
            else {
                panic!("expected the threshold key list");
            };
            assert!(keys.len() <= 1, "{}: {keys:?}", node.name);
            for k in &keys {
                assert_eq!(usize::from(k.share_index), i, "{}: {k:?}", node.name);
            }
            held.insert(node.name.clone(), keys);
        }
    }
    assert_eq!(held[&executors[0]].len(), 1, "the lost answer's share");
    let key_ids: BTreeSet<String> = held
        .values()
        .flatten()
        .map(|k| hex::encode(&k.key_id))
        .collect();
    assert_eq!(key_ids.len(), 1, "{held:?}");
    let recorded = rt.block_on(client.threshold_keys()).unwrap().keys;
    match done.status {
        RequestStatus::Completed => {
            let Some(RequestResult::ThresholdKey(made)) = &done.result else {
                panic!("no key: {done:?}");
            };
            assert_eq!(key_ids, BTreeSet::from([made.key_id.clone()]));
            let made_on: Vec<&str> = made.shares.iter().map(|s| s.node.as_str()).collect();
            assert_eq!(made_on, executors);
            for e in &executors {
                assert_eq!(held[e].len(), 1, "{e}: {held:?}");
            }
            assert_eq!(recorded.len(), 1, "{recorded:?}");
            assert_eq!(recorded[0].key_id, made.key_id);
        }
        RequestStatus::Failed | RequestStatus::Refused => {
            let error = done.error.as_ref().expect("a failure says why");
            // dc1 answered the retry with the key it holds, starting no second session: the
            // retry stalls waiting for dc2 and dc3 only.
            let (_, waiting) = error
                .message
                .split_once("not finished: ")
                .unwrap_or_else(|| panic!("the retry did not stall: {error:?}"));
            assert!(!waiting.contains(CLUSTERS[0]), "{error:?}");
            assert!(recorded.is_empty(), "{recorded:?}");
        }
        other => panic!("ended {other:?}: {done:?}"),
    }
}

/// The tests' `custos` is built with `insecure-test-primes`: its version says so, so that an
/// operator can tell such a build from a release one.
#[test]
fn a_build_accepting_test_primes_says_so_in_its_version() {
    let out = std::process::Command::new(crate::common::exe())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(version.contains("insecure-test-primes"), "{version}");
}
