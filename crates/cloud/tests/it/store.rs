//! The cloud DB on SQLite and PostgreSQL: round trips, compare-and-swap, atomic state
//! changes, ordering and filters.

use custos_cloud::db::{
    PresignatureRow, PresignatureSigner, Record, RequestRow, Store, StoreError, StoredApproval,
    ThresholdKeyRow, ThresholdShareRow, WalletRow,
};
use custos_cloud_api::{RequestKind, RequestStatus};

use custos_cloud::terms::Terms;
use custos_test_kit::*;
use custos_wire::import::SealedImport;
use custos_wire::protocol::{ThresholdBundle, ThresholdKeyInfo, ThresholdOrigin};
use sha2::{Digest, Sha256};

/// Terms of every kind, as the service builds them.
fn terms(kind: RequestKind) -> Terms {
    match kind {
        RequestKind::CreateWallet => Terms::CreateGroupWallet {
            group: vec![[1; 32], [2; 32], [3; 32]],
            executor_node: "node2".into(),
            executor: [9; 32],
            rules: vec![custos_wire::policy::Rule {
                tag: custos_wire::policy::RULE_TRANSACTIONS_ONLY,
                body: vec![],
            }],
        },
        RequestKind::ImportWallet => Terms::ImportWallet {
            root_id: [3; 33],
            node: "node1".into(),
            sealed: SealedImport {
                enc: vec![1; 65],
                ciphertext: vec![2; 100],
            },
            group: vec![],
            rules: vec![],
        },
        RequestKind::Sign => Terms::Sign {
            root_id: [2; 33],
            path: vec![0, 1],
            digest: [0xab; 32],
        },
        RequestKind::ImportThresholdKey => Terms::ImportThresholdKey {
            node: "node1".into(),
            bundle: ThresholdBundle {
                key: ThresholdKeyInfo {
                    key_id: generator().to_vec(),
                    chain_code: None,
                    threshold: 2,
                    clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
                    quorum: 2,
                    origin: ThresholdOrigin::Dealer,
                    share_index: 0,
                },
                recipient_fingerprint: [4; 32],
                dealer_cert: vec![5; 300],
                dealer_ca: vec![6; 300],
                enc: vec![7; 65],
                ciphertext: vec![8; 1000],
                signature: vec![9; 70],
            },
        },
        RequestKind::ThresholdSign => Terms::ThresholdSign {
            key_id: generator(),
            path: vec![],
            digest: Sha256::digest(b"the full message").into(),
            message: Some(b"the full message".to_vec()),
            clusters: Some(vec!["dc3".into(), "dc1".into()]),
        },
        RequestKind::CreateThresholdKey => Terms::CreateThresholdKey {
            threshold: 2,
            hd: false,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
        },
        RequestKind::Governance => Terms::Governance(custos_cloud::terms::GovTerms {
            version: 3,
            prev: [9; 32],
            change: custos_wire::governance::GovChange::Revoke {
                admins: vec![[1; 32], [2; 32]],
                devices: vec![],
                reason: "key lost".into(),
            },
        }),
        RequestKind::SetKeyPolicy => {
            let policy = |version, group: Vec<[u8; 32]>| custos_wire::policy::KeyPolicy {
                version,
                group,
                quorum: 2,
                rules: vec![],
            };
            Terms::SetKeyPolicy(custos_cloud::terms::PolicyTerms::new(
                generator(),
                &policy(1, vec![[1; 32], [2; 32], [3; 32]]),
                &policy(2, vec![[1; 32], [2; 32], [4; 32]]),
            ))
        }
        RequestKind::SignPsbt => {
            let intent = custos_tx::Intent::Bitcoin(custos_tx::BitcoinIntent {
                network: "regtest".into(),
                version: 2,
                lock_time: 0,
                inputs: vec![],
                outputs: vec![],
                fee_sat: 0,
            });
            Terms::SignPsbt {
                root_id: [2; 33],
                network: "regtest".into(),
                psbt: b"psbt\xff".to_vec(),
                intent_hash: intent.hash(),
                intent: serde_json::to_value(&intent).unwrap(),
                node: Some("node1".into()),
                group: vec![[1; 32], [2; 32]],
                // A tier of another group, stored exactly (its amount beyond a u64 too).
                tiers: vec![custos_wire::policy::GroupTier {
                    asset: "bitcoin:regtest".into(),
                    above: u128::from(u64::MAX) + 1,
                    quorum: 1,
                    group: vec![[3; 32], [4; 32]],
                }],
            }
        }
        RequestKind::SignEthereum => {
            let key = bitcoin::secp256k1::PublicKey::from_slice(&generator()).unwrap();
            let payload = custos_wire::protocol::EthPayload::PersonalMessage(b"hello".to_vec());
            let plan = custos_tx::eth::plan_eth(&payload, &[0, 1], &key).unwrap();
            Terms::SignEthereum {
                root_id: generator(),
                path: vec![0, 1],
                payload,
                intent_hash: plan.intent().hash(),
                intent: serde_json::to_value(plan.intent()).unwrap(),
                node: None,
                group: vec![],
                tiers: vec![],
            }
        }
    }
}

/// The generator of secp256k1, compressed: a valid key id.
fn generator() -> [u8; 33] {
    hex::decode("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        .unwrap()
        .try_into()
        .unwrap()
}

fn row(id: u8, kind: RequestKind, created_at: u64) -> RequestRow {
    let terms = terms(kind);
    RequestRow {
        id: hex::encode([id; 16]),
        cluster: match kind {
            RequestKind::ThresholdSign | RequestKind::CreateThresholdKey => "*threshold*".into(),
            _ => "dc1".into(),
        },
        quorum: 2,
        terms,
        status: RequestStatus::PendingApproval,
        created_at,
        updated_at: created_at,
        expires_at: 1_000 + u64::from(id),
        approvals: vec![],
        result: None,
        error_code: None,
        error_message: None,
        attempts: 0,
        created_by: "tester".into(),
        tenant: "default".into(),
        version: 1,
        owner: None,
        events: vec![],
    }
}

fn wallet(root: u8, request: &str) -> WalletRow {
    WalletRow {
        root_id: format!("02{}", hex::encode([root; 32])),
        cluster: "dc1".into(),
        xpub: "xpub-test".into(),
        quorum: 2,
        created_at: 5,
        created_by_request: request.into(),
        tenant: "default".into(),
    }
}

#[tokio::test]
async fn store_round_trips_and_guards_every_change() {
    for db in databases("store_round_trips_and_guards_every_change").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        // Opening twice (a restart) finds the schema in place.
        let store2 = Store::connect(&db.url).await.unwrap();

        let mut a = row(1, RequestKind::Sign, 10);
        store
            .insert_request(&mut a, "created a".into())
            .await
            .unwrap();
        assert!(
            matches!(
                store.insert_request(&mut a, "again".into()).await,
                Err(StoreError::Duplicate(_))
            ),
            "{engine}"
        );
        assert_eq!(store.request(&a.id).await.unwrap().unwrap(), a, "{engine}");
        assert!(store.request(&"ff".repeat(16)).await.unwrap().is_none());

        // A change with the current version succeeds and bumps it; a stale one conflicts.
        let mut b = a.clone();
        b.approvals.push(StoredApproval {
            admin: "alice".into(),
            fingerprint: "00".repeat(32),
            subject: "30".into(),
            key: "11".repeat(32),
            cert: "aa".into(),
            ca: "bb".into(),
            signature: "cc".into(),
            webauthn: Some(custos_cloud_api::WebAuthnBody {
                authenticator_data_hex: "dd".into(),
                client_data_json_hex: "ee".into(),
            }),
            at_ms: 11,
        });
        b.updated_at = 11;
        let b = store
            .update_request(&b, "approved", "alice".into(), None)
            .await
            .unwrap();
        assert_eq!(b.version, 2);
        let stale = a.clone();
        assert!(
            matches!(
                store2
                    .update_request(&stale, "approved", "bob".into(), None)
                    .await,
                Err(StoreError::Conflict(_))
            ),
            "{engine}"
        );
        assert_eq!(store.request(&a.id).await.unwrap().unwrap(), b, "{engine}");

        // Completion with a wallet is one transaction: a duplicate wallet rolls back the
        // request change and its event too.
        let mut c = b.clone();
        c.status = RequestStatus::Completed;
        c.result = Some("{\"root_id\":\"x\",\"xpub\":\"y\"}".into());
        let w = wallet(7, &a.id);
        let mut other = row(2, RequestKind::CreateWallet, 20);
        store
            .insert_request(&mut other, "created".into())
            .await
            .unwrap();
        let mut o = other.clone();
        o.status = RequestStatus::Completed;
        store
            .update_request(&o, "completed", "".into(), Some(&w))
            .await
            .unwrap();
        assert!(
            matches!(
                store
                    .update_request(&c, "completed", "".into(), Some(&w))
                    .await,
                Err(StoreError::Duplicate(_))
            ),
            "{engine}"
        );
        assert_eq!(
            store.request(&a.id).await.unwrap().unwrap(),
            b,
            "{engine}: rolled back"
        );
        assert_eq!(store.events(&a.id).await.unwrap().len(), 2, "{engine}");
        let c = store
            .update_request(&c, "completed", "served by node1".into(), None)
            .await
            .unwrap();
        assert_eq!(c.status, RequestStatus::Completed);

        let events = store.events(&a.id).await.unwrap();
        let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["created", "approved", "completed"], "{engine}");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // Over-long details are truncated, not refused.
        let mut d = c.clone();
        d.updated_at = 30;
        store
            .update_request(&d, "note", "x".repeat(10_000), None)
            .await
            .unwrap();
        let last = store.events(&a.id).await.unwrap().pop().unwrap();
        assert!(last.detail.len() <= custos_cloud::db::MAX_DETAIL + 3);

        assert_eq!(
            store.wallet(&w.root_id).await.unwrap().unwrap(),
            w,
            "{engine}"
        );
        assert_eq!(store.wallets().await.unwrap(), vec![w.clone()]);

        // Listing: newest first, filters, limit.
        store
            .insert_request(&mut row(3, RequestKind::Sign, 30), "".into())
            .await
            .unwrap();
        let all = store.requests(None, None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            [
                hex::encode([3; 16]),
                hex::encode([2; 16]),
                hex::encode([1; 16])
            ],
            "{engine}"
        );
        let signs = store
            .requests(None, Some(RequestKind::Sign), 10)
            .await
            .unwrap();
        assert_eq!(signs.len(), 2);
        let done = store
            .requests(Some(RequestStatus::Completed), Some(RequestKind::Sign), 10)
            .await
            .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(store.requests(None, None, 1).await.unwrap().len(), 1);

        let pending = store
            .request_ids_with_status(RequestStatus::PendingApproval, Some(1_004))
            .await
            .unwrap();
        assert_eq!(pending, vec![hex::encode([3; 16])], "{engine}");
        assert!(store
            .request_ids_with_status(RequestStatus::PendingApproval, Some(1_003))
            .await
            .unwrap()
            .is_empty());
        store.close().await;
        store2.close().await;
        db.cleanup().await;
    }
}

/// Writes queued together (on SQLite: committed as one transaction) each hear their own
/// outcome: of two inserts of one id one is stored and one is a duplicate, of two changes
/// from one version one wins and one conflicts, whichever else shares their commit.
#[tokio::test]
async fn concurrent_writes_each_hear_their_own_outcome_on_every_database() {
    use futures::future::join_all;
    for db in databases("concurrent_writes_each_hear_their_own_outcome").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        // 24 ids, each inserted twice at once with different creators.
        let inserts = (0..48u8).map(|n| {
            let store = store.clone();
            async move {
                let mut r = row(n / 2 + 1, RequestKind::Sign, 10);
                r.created_by = format!("caller{n}");
                let out = store.insert_request(&mut r, format!("by {n}")).await;
                (n, r, out)
            }
        });
        let mut stored = Vec::new();
        for pair in join_all(inserts).await.chunks(2) {
            let wins: Vec<_> = pair.iter().filter(|(_, _, out)| out.is_ok()).collect();
            assert_eq!(wins.len(), 1, "{engine}: one insert of an id is stored");
            let lost = pair.iter().find(|(_, _, out)| out.is_err()).unwrap();
            assert!(
                matches!(lost.2, Err(StoreError::Duplicate(_))),
                "{engine}: {:?}",
                lost.2
            );
            let (_, won, _) = wins[0];
            assert_eq!(
                &store.request(&won.id).await.unwrap().unwrap(),
                won,
                "{engine}"
            );
            stored.push(won.clone());
        }
        // Each row changed twice at once from the version just stored.
        let updates = stored.iter().flat_map(|r| {
            ["first", "second"].map(|who| {
                let (store, mut next) = (store.clone(), r.clone());
                next.updated_at = 20;
                next.error_message = Some(who.to_string());
                async move {
                    store
                        .update_request(&next, "approved", who.into(), None)
                        .await
                }
            })
        });
        let outcomes = join_all(updates).await;
        for (r, pair) in stored.iter().zip(outcomes.chunks(2)) {
            let won: Vec<_> = pair.iter().filter_map(|o| o.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "{engine}: one change from version 1 wins");
            assert!(
                pair.iter()
                    .any(|o| matches!(o, Err(StoreError::Conflict(id)) if id == &r.id)),
                "{engine}: the other conflicts"
            );
            let now = store.request(&r.id).await.unwrap().unwrap();
            assert_eq!(&now, won[0], "{engine}: the winner is what is stored");
            assert_eq!(now.version, 2);
        }
        store.close().await;
        // A closed store refuses writes (fail closed) instead of losing them.
        let mut late = row(99, RequestKind::Sign, 30);
        assert!(store
            .insert_request(&mut late, "late".into())
            .await
            .is_err());
        db.cleanup().await;
    }
}

/// Lists of one tenant hold only its rows; a threshold share recorded for another tenant's
/// key disagrees with it (and names no tenant).
#[tokio::test]
async fn lists_are_per_tenant_on_every_database() {
    for db in databases("lists_are_per_tenant").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        let mut mine = row(1, RequestKind::CreateWallet, 10);
        let mut theirs = RequestRow {
            tenant: "other".into(),
            ..row(2, RequestKind::CreateWallet, 20)
        };
        store.insert_request(&mut mine, "t".into()).await.unwrap();
        store.insert_request(&mut theirs, "t".into()).await.unwrap();
        let ids = |rows: Vec<RequestRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store
                .requests_of(Some("default"), None, None, 10)
                .await
                .unwrap()),
            vec![mine.id.clone()],
            "{engine}"
        );
        assert_eq!(
            ids(store
                .requests_of(Some("other"), None, None, 10)
                .await
                .unwrap()),
            vec![theirs.id.clone()],
            "{engine}"
        );
        assert!(store
            .requests_of(Some("nobody"), None, None, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.requests(None, None, 10).await.unwrap().len(), 2);
        assert_eq!(
            store.request(&theirs.id).await.unwrap().unwrap().tenant,
            "other"
        );

        // A wallet and a key recorded by completing each tenant's request.
        let mut done = mine.clone();
        done.status = RequestStatus::Completed;
        let w = wallet(1, &mine.id);
        store
            .update_request(&done, "completed", String::new(), Some(&w))
            .await
            .unwrap();
        let mut done = theirs.clone();
        done.status = RequestStatus::Completed;
        let w2 = WalletRow {
            tenant: "other".into(),
            ..wallet(2, &theirs.id)
        };
        store
            .update_request(&done, "completed", String::new(), Some(&w2))
            .await
            .unwrap();
        assert_eq!(store.wallets_of(Some("default")).await.unwrap(), vec![w]);
        assert_eq!(
            store.wallets_of(Some("other")).await.unwrap(),
            vec![w2.clone()]
        );
        assert_eq!(store.wallet(&w2.root_id).await.unwrap(), Some(w2));
        assert_eq!(store.wallets().await.unwrap().len(), 2);

        let key = threshold_key(3, 2, &mine.id);
        let foreign = ThresholdKeyRow {
            tenant: "tenant-b".into(),
            ..key.clone()
        };
        let why = key.disagreement(&foreign).expect("tenants differ");
        assert!(why.contains("tenant") && !why.contains("tenant-b"), "{why}");
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    assert!(matches!(
        Store::connect("mysql://x@localhost/db").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
    // One database per connection: the writer's would not be the one read.
    for url in ["sqlite::memory:", "sqlite://x.db?mode=memory"] {
        assert!(
            matches!(
                Store::connect(url).await,
                Err(StoreError::UnsupportedUrl(_))
            ),
            "{url}"
        );
    }
}

fn threshold_key(key: u8, threshold: u16, request: &str) -> ThresholdKeyRow {
    ThresholdKeyRow {
        key_id: format!("03{}", hex::encode([key; 32])),
        threshold,
        clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
        quorum: 2,
        chain_code: Some("cc".repeat(32)),
        origin: "dealer".into(),
        created_at: 40,
        created_by_request: request.into(),
        tenant: "default".into(),
    }
}

fn share(key: &ThresholdKeyRow, index: u16, node: &str, request: &str) -> ThresholdShareRow {
    ThresholdShareRow {
        key_id: key.key_id.clone(),
        share_index: index,
        cluster: key.clusters[usize::from(index)].clone(),
        node: node.into(),
        imported_at: 50 + u64::from(index),
        request_id: request.into(),
    }
}

#[tokio::test]
async fn threshold_keys_and_shares_on_every_database() {
    for db in databases("threshold_keys_and_shares_on_every_database").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();

        // The threshold kinds' terms round-trip.
        let mut import = row(1, RequestKind::ImportThresholdKey, 10);
        store
            .insert_request(&mut import, "created".into())
            .await
            .unwrap();
        assert_eq!(store.request(&import.id).await.unwrap().unwrap(), import);
        let mut sign = row(2, RequestKind::ThresholdSign, 11);
        store
            .insert_request(&mut sign, "created".into())
            .await
            .unwrap();
        assert_eq!(store.request(&sign.id).await.unwrap().unwrap(), sign);
        assert_eq!(
            store
                .requests(None, Some(RequestKind::ThresholdSign), 10)
                .await
                .unwrap(),
            // Lists carry no lifecycle logs.
            vec![RequestRow {
                events: vec![],
                ..sign.clone()
            }],
            "{engine}"
        );

        // Completing an import records the key with its first share, in one transaction.
        let key = threshold_key(9, 2, &import.id);
        let mut done = import.clone();
        done.status = RequestStatus::Completed;
        let s2 = share(&key, 2, "node1", &import.id);
        let done = store
            .update_request_recording(
                &done,
                "completed",
                "".into(),
                Record::ThresholdShare(key.clone(), s2.clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            store.threshold_key(&key.key_id).await.unwrap().unwrap(),
            key
        );
        assert_eq!(
            store.threshold_shares(Some(&key.key_id)).await.unwrap(),
            vec![s2.clone()]
        );

        // Later shares must agree with the recorded key; one that does not changes nothing.
        let mut other = row(3, RequestKind::ImportThresholdKey, 12);
        store
            .insert_request(&mut other, "created".into())
            .await
            .unwrap();
        let mut o = other.clone();
        o.status = RequestStatus::Completed;
        let mut wrong = threshold_key(9, 3, &other.id);
        wrong.created_at = 99;
        let s0 = share(&wrong, 0, "node2", &other.id);
        let e = store
            .update_request_recording(
                &o,
                "completed",
                "".into(),
                Record::ThresholdShare(wrong.clone(), s0.clone()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Inconsistent(m) if m.contains("threshold 2 vs 3")),
            "{engine}: {e}"
        );
        assert_eq!(
            store.request(&other.id).await.unwrap().unwrap(),
            other,
            "{engine}"
        );
        assert_eq!(store.events(&other.id).await.unwrap().len(), 1, "{engine}");
        assert_eq!(
            store.threshold_shares(None).await.unwrap().len(),
            1,
            "{engine}"
        );
        // The same facts (another request, another time) are accepted.
        let agreeing = threshold_key(9, 2, &other.id);
        let s0 = share(&agreeing, 0, "node2", &other.id);
        store
            .update_request_recording(
                &o,
                "completed",
                "".into(),
                Record::ThresholdShare(agreeing.clone(), s0.clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            store.threshold_key(&key.key_id).await.unwrap().unwrap(),
            key,
            "{engine}: the first import's record stays"
        );
        // A re-import of a share moves it to the new node.
        let mut again = done.clone();
        again.updated_at = 60;
        let moved = share(&key, 2, "node3", &import.id);
        store
            .update_request_recording(
                &again,
                "note",
                "".into(),
                Record::ThresholdShare(key.clone(), moved.clone()),
            )
            .await
            .unwrap();
        let shares = store.threshold_shares(Some(&key.key_id)).await.unwrap();
        assert_eq!(shares, vec![s0.clone(), moved.clone()], "{engine}");

        // Listing.
        let second = ThresholdKeyRow {
            clusters: vec!["dc1".into(), "dc2".into()],
            chain_code: None,
            origin: "dkg".into(),
            created_at: 45,
            ..threshold_key(8, 2, &sign.id)
        };
        let mut s = sign.clone();
        s.updated_at = 70;
        store
            .update_request_recording(
                &s,
                "note",
                "".into(),
                Record::ThresholdShare(second.clone(), share(&second, 1, "node1", &sign.id)),
            )
            .await
            .unwrap();
        assert_eq!(
            store.threshold_keys().await.unwrap(),
            vec![key.clone(), second.clone()]
        );
        assert_eq!(store.threshold_shares(None).await.unwrap().len(), 3);
        assert!(store
            .threshold_key(&"02".repeat(33))
            .await
            .unwrap()
            .is_none());
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn key_creations_record_the_key_with_every_share_on_every_database() {
    for db in databases("key_creations_record_the_key_with_every_share").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();

        // The terms of a key creation round-trip.
        let mut create = row(4, RequestKind::CreateThresholdKey, 10);
        store
            .insert_request(&mut create, "created".into())
            .await
            .unwrap();
        assert_eq!(
            store.request(&create.id).await.unwrap().unwrap(),
            create,
            "{engine}"
        );

        // Completion records the key and all its shares in one transaction.
        let key = ThresholdKeyRow {
            origin: "dkg".into(),
            ..threshold_key(7, 2, &create.id)
        };
        let shares: Vec<ThresholdShareRow> = (0..3u16)
            .map(|i| share(&key, i, &format!("node{i}"), &create.id))
            .collect();
        let mut done = create.clone();
        done.status = RequestStatus::Completed;
        let done = store
            .update_request_recording(
                &done,
                "completed",
                "".into(),
                Record::ThresholdKey(key.clone(), shares.clone()),
            )
            .await
            .unwrap();
        assert_eq!(store.request(&create.id).await.unwrap().unwrap(), done);
        assert_eq!(
            store.threshold_key(&key.key_id).await.unwrap().unwrap(),
            key
        );
        assert_eq!(
            store.threshold_shares(Some(&key.key_id)).await.unwrap(),
            shares,
            "{engine}"
        );

        // A key generation never makes a key already recorded: nothing changes.
        let mut again = row(5, RequestKind::CreateThresholdKey, 11);
        store
            .insert_request(&mut again, "created".into())
            .await
            .unwrap();
        let mut a = again.clone();
        a.status = RequestStatus::Completed;
        let e = store
            .update_request_recording(
                &a,
                "completed",
                "".into(),
                Record::ThresholdKey(key.clone(), shares.clone()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Inconsistent(m) if m.contains("already recorded")),
            "{engine}: {e}"
        );
        assert_eq!(store.request(&again.id).await.unwrap().unwrap(), again);
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn presignatures_are_handed_out_once_on_every_database() {
    for db in databases("presignatures_are_handed_out_once").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        // Two recorded keys: the first gets a pool, the second none.
        let mut create = row(4, RequestKind::CreateThresholdKey, 10);
        store
            .insert_request(&mut create, "created".into())
            .await
            .unwrap();
        let (pooled, bare) = (
            threshold_key(0xcd, 2, &create.id),
            threshold_key(0xce, 2, &create.id),
        );
        for (i, k) in [&pooled, &bare].into_iter().enumerate() {
            let mut next = store.request(&create.id).await.unwrap().unwrap();
            next.updated_at = 11 + i as u64;
            store
                .update_request_recording(
                    &next,
                    "recorded",
                    "".into(),
                    Record::ThresholdKey(k.clone(), vec![share(k, 0, "node1", &create.id)]),
                )
                .await
                .unwrap();
        }
        let key = pooled.key_id.clone();
        let presig = |n: u8, at: u64| PresignatureRow {
            id: hex::encode([n; 32]),
            key_id: key.clone(),
            signers: vec![
                PresignatureSigner {
                    cluster: "dc1".into(),
                    node: "node1".into(),
                    share_index: 0,
                },
                PresignatureSigner {
                    cluster: "dc3".into(),
                    node: "node2".into(),
                    share_index: 2,
                },
            ],
            created_at: at,
            taken_by: None,
        };
        store.insert_presignature(&presig(2, 20)).await.unwrap();
        store.insert_presignature(&presig(1, 10)).await.unwrap();
        assert!(matches!(
            store.insert_presignature(&presig(1, 30)).await,
            Err(StoreError::Duplicate(_))
        ));
        // Oldest first.
        let ready = store.ready_presignatures(&key).await.unwrap();
        assert_eq!(ready, vec![presig(1, 10), presig(2, 20)], "{engine}");
        assert!(store.ready_presignatures("02ff").await.unwrap().is_empty());

        // Taken once: the second taker loses, and it is no longer ready.
        assert!(store
            .take_presignature(&ready[0].id, "req-a", 40)
            .await
            .unwrap());
        assert!(!store
            .take_presignature(&ready[0].id, "req-b", 41)
            .await
            .unwrap());
        assert_eq!(
            store.ready_presignatures(&key).await.unwrap(),
            vec![presig(2, 20)],
            "{engine}"
        );
        assert!(!store.take_presignature("00", "req-c", 42).await.unwrap());
        // The pool level the metrics show; a drained pool stays listed, at 0.
        assert_eq!(
            store.ready_presignature_counts().await.unwrap(),
            vec![(key.clone(), 1), (bare.key_id.clone(), 0)],
            "{engine}"
        );
        assert!(store
            .take_presignature(&presig(2, 20).id, "req-d", 43)
            .await
            .unwrap());
        assert_eq!(
            store.ready_presignature_counts().await.unwrap(),
            vec![(key.clone(), 0), (bare.key_id.clone(), 0)],
            "{engine}"
        );
    }
}

/// A database of schema version 4 (before `terms`) with one request of every kind, in
/// the columns of that schema; opening it with this build moves each into its terms.
#[tokio::test]
async fn requests_of_schema_4_are_moved_into_typed_terms_and_one_row_on_every_database() {
    for db in databases("requests_of_schema_4_are_moved_into_typed_terms").await {
        let engine = db.engine;
        // Schema version 4: the first four migrations of this crate, as shipped.
        let old = tempfile::tempdir().unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(&shipped).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.as_str() < "0005" {
                std::fs::copy(&path, old.path().join(name)).unwrap();
            }
        }
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let v4 = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        assert_eq!(v4.iter().count(), 4);
        v4.run(&pool).await.unwrap();

        fn postcard_hex<T: serde::Serialize>(v: &T) -> String {
            hex::encode(postcard::to_allocvec(v).unwrap())
        }
        let bundle = match terms(RequestKind::ImportThresholdKey) {
            Terms::ImportThresholdKey { bundle, .. } => bundle,
            _ => unreachable!(),
        };
        let sealed = match terms(RequestKind::ImportWallet) {
            Terms::ImportWallet { sealed, .. } => sealed,
            _ => unreachable!(),
        };
        let g = hex::encode(generator());
        let created_result = format!(r#"{{"root_id":"{}","xpub":"x"}}"#, "02".repeat(33));
        let rows = [
            OldRow {
                root_id: Some("02".repeat(33)),
                result: Some(created_result.clone()),
                ..OldRow::new(1, "create_wallet", "dc1")
            },
            OldRow {
                root_id: Some("03".repeat(33)),
                target_node: Some("node1"),
                sealed: Some(postcard_hex(&sealed)),
                ..OldRow::new(2, "import_wallet", "dc1")
            },
            OldRow {
                root_id: Some("02".repeat(33)),
                path: Some("m/0/1"),
                digest: Some("ab".repeat(32)),
                ..OldRow::new(3, "sign", "dc1")
            },
            OldRow {
                root_id: Some(g.clone()),
                target_node: Some("node1"),
                sealed: Some(postcard_hex(&bundle)),
                share_index: Some(0),
                ..OldRow::new(4, "import_threshold_key", "dc1")
            },
            OldRow {
                root_id: Some(g.clone()),
                path: Some("m"),
                digest: Some(hex::encode(Sha256::digest(b"the full message"))),
                target_node: Some("dc3,dc1"),
                message: Some(hex::encode(b"the full message")),
                ..OldRow::new(5, "threshold_sign", "*threshold*")
            },
            OldRow {
                root_id: Some(g.clone()),
                path: Some("m"),
                digest: Some("cd".repeat(32)),
                ..OldRow::new(6, "threshold_sign", "*threshold*")
            },
            OldRow {
                threshold: Some(2),
                hd: Some(0),
                clusters: Some(r#"["dc1","dc2","dc3"]"#),
                ..OldRow::new(7, "create_threshold_key", "*threshold*")
            },
        ];
        for r in &rows {
            sqlx::query(
                "INSERT INTO requests (id, kind, cluster, root_id, path, digest, quorum, status, \
                 created_at, updated_at, expires_at, approvals, target_node, sealed, result, \
                 error_code, error_message, attempts, created_by, version, share_index, \
                 threshold, hd, clusters, message) VALUES ($1, $2, $3, $4, $5, $6, 2, \
                 'pending_approval', 10, 10, 1000, '[]', $7, $8, $9, NULL, NULL, 0, 'tester', \
                 1, $10, $11, $12, $13, $14)",
            )
            .bind(hex::encode([r.id; 16]))
            .bind(r.kind)
            .bind(r.cluster)
            .bind(r.root_id.clone())
            .bind(r.path)
            .bind(r.digest.clone())
            .bind(r.target_node)
            .bind(r.sealed.clone())
            .bind(r.result.clone())
            .bind(r.share_index)
            .bind(r.threshold)
            .bind(r.hd)
            .bind(r.clusters)
            .bind(r.message.clone())
            .execute(&pool)
            .await
            .unwrap();
        }
        // Request 1's lifecycle log as schema 4 kept it, in its own table.
        for (seq, event) in [(1i64, "created"), (2, "approved")] {
            sqlx::query(
                "INSERT INTO request_events (request_id, seq, at, event, detail) \
                 VALUES ($1, $2, 10, $3, 'before the upgrade')",
            )
            .bind(hex::encode([1u8; 16]))
            .bind(seq)
            .bind(event)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        // This build migrates to its schema.
        let store = Store::connect(&db.url).await.unwrap();
        let unnamed = Terms::ThresholdSign {
            key_id: generator(),
            path: vec![],
            digest: [0xcd; 32],
            message: None,
            clusters: None,
        };
        let expected = [
            // Made before approver groups: read back as such (and never executed).
            (1, Terms::CreateWallet { node: None }),
            (2, terms(RequestKind::ImportWallet)),
            (3, terms(RequestKind::Sign)),
            (4, terms(RequestKind::ImportThresholdKey)),
            (5, terms(RequestKind::ThresholdSign)),
            (6, unnamed),
            (7, terms(RequestKind::CreateThresholdKey)),
        ];
        for (id, want) in expected {
            let got = store
                .request(&hex::encode([id; 16]))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{engine}: request {id} lost"));
            assert_eq!(got.terms, want, "{engine}: request {id}");
            assert_eq!(got.quorum, 2);
            // Rows older than tenants belong to the default tenant (migration 0007).
            assert_eq!(got.tenant, "default", "{engine}: request {id}");
        }
        let created = store
            .request(&hex::encode([1u8; 16]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.result.as_deref(), Some(created_result.as_str()));
        // The log moved into the row, once: the old table is empty.
        let moved: Vec<(i64, String)> = created
            .events
            .iter()
            .map(|e| (e.seq, e.event.clone()))
            .collect();
        assert_eq!(
            moved,
            [(1, "created".to_string()), (2, "approved".to_string())],
            "{engine}"
        );
        assert!(created
            .events
            .iter()
            .all(|e| e.detail == "before the upgrade"));
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM request_events")
            .fetch_one(&sqlx::AnyPool::connect(&db.url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(left, 0, "{engine}");
        let reopened = Store::connect(&db.url).await.unwrap();
        assert_eq!(
            reopened.events(&created.id).await.unwrap(),
            created.events,
            "{engine}: moved twice"
        );
        reopened.close().await;
        // The old columns are gone: nothing can read or write a second copy of the terms.
        let gone = sqlx::query("SELECT target_node FROM requests")
            .fetch_all(&sqlx::AnyPool::connect(&db.url).await.unwrap())
            .await;
        assert!(gone.is_err(), "{engine}: target_node still exists");
        store.close().await;
        db.cleanup().await;
    }
}

/// A request row in the columns of schema version 4.
struct OldRow {
    id: u8,
    kind: &'static str,
    cluster: &'static str,
    root_id: Option<String>,
    path: Option<&'static str>,
    digest: Option<String>,
    target_node: Option<&'static str>,
    sealed: Option<String>,
    share_index: Option<i64>,
    threshold: Option<i64>,
    hd: Option<i64>,
    clusters: Option<&'static str>,
    message: Option<String>,
    result: Option<String>,
}

impl OldRow {
    fn new(id: u8, kind: &'static str, cluster: &'static str) -> Self {
        OldRow {
            id,
            kind,
            cluster,
            root_id: None,
            path: None,
            digest: None,
            target_node: None,
            sealed: None,
            share_index: None,
            threshold: None,
            hd: None,
            clusters: None,
            message: None,
            result: None,
        }
    }
}

/// The console's sign-in challenges are taken once, by the browser they were handed to,
/// while valid; a browser keeps at most `MAX_CHALLENGES`; sessions end at expiry or
/// sign-out (issue 17).
#[tokio::test]
async fn console_challenges_and_sessions_on_every_database() {
    use custos_cloud::db::{ConsoleSession, MAX_CHALLENGES};
    for db in databases("console_challenges_and_sessions").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        let nonce = |i: usize| format!("{i:064x}");
        store
            .put_console_challenge(&nonce(1), "dave", "browser-a", 1_000, 2_000)
            .await
            .unwrap();
        // Another browser, another admin, too late: not taken (and the challenge is gone
        // after the first try, whatever it was).
        assert!(!store
            .take_console_challenge(&nonce(1), "dave", "browser-b", 1_500)
            .await
            .unwrap());
        store
            .put_console_challenge(&nonce(2), "dave", "browser-a", 1_000, 2_000)
            .await
            .unwrap();
        assert!(!store
            .take_console_challenge(&nonce(2), "erin", "browser-a", 1_500)
            .await
            .unwrap());
        store
            .put_console_challenge(&nonce(3), "dave", "browser-a", 1_000, 2_000)
            .await
            .unwrap();
        assert!(!store
            .take_console_challenge(&nonce(3), "dave", "browser-a", 2_001)
            .await
            .unwrap());
        store
            .put_console_challenge(&nonce(4), "dave", "browser-a", 1_000, 2_000)
            .await
            .unwrap();
        assert!(
            store
                .take_console_challenge(&nonce(4), "dave", "browser-a", 2_000)
                .await
                .unwrap(),
            "{engine:?}"
        );
        assert!(!store
            .take_console_challenge(&nonce(4), "dave", "browser-a", 2_000)
            .await
            .unwrap());
        // A browser asking for more: its oldest are displaced, another browser's are not.
        store
            .put_console_challenge(&nonce(10), "dave", "browser-b", 1_000, 5_000)
            .await
            .unwrap();
        for i in 0..=MAX_CHALLENGES {
            let at = 3_000 + i as u64;
            store
                .put_console_challenge(&nonce(20 + i), "dave", "browser-a", at - 1_000, at)
                .await
                .unwrap();
        }
        assert!(!store
            .take_console_challenge(&nonce(20), "dave", "browser-a", 2_500)
            .await
            .unwrap());
        let newest = nonce(20 + MAX_CHALLENGES);
        assert!(store
            .take_console_challenge(&newest, "dave", "browser-a", 2_500)
            .await
            .unwrap());
        assert!(store
            .take_console_challenge(&nonce(10), "dave", "browser-b", 2_500)
            .await
            .unwrap());

        let session = ConsoleSession {
            admin: "dave".into(),
            admin_key: "ab".repeat(32),
        };
        store
            .put_console_session("hash-1", &session, 1_000, 9_000)
            .await
            .unwrap();
        assert_eq!(
            store.console_session("hash-1", 9_000).await.unwrap(),
            Some(session.clone())
        );
        assert_eq!(store.console_session("hash-1", 9_001).await.unwrap(), None);
        assert_eq!(store.console_session("hash-2", 1_000).await.unwrap(), None);
        store.end_console_session("hash-1").await.unwrap();
        assert_eq!(store.console_session("hash-1", 1_000).await.unwrap(), None);
        store.close().await;
        db.cleanup().await;
    }
}
