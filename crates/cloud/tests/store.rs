//! The cloud DB on SQLite and PostgreSQL: round trips, compare-and-swap, atomic state
//! changes, ordering and filters.

mod common;

use custos_cloud::api::{RequestKind, RequestStatus};
use custos_cloud::db::{RequestRow, Store, StoreError, StoredApproval, WalletRow};

use common::*;

fn row(id: u8, kind: RequestKind, created_at: u64) -> RequestRow {
    RequestRow {
        id: hex::encode([id; 16]),
        kind,
        cluster: "dc1".into(),
        root_id: None,
        path: Some("m/0/1".into()),
        digest: Some("ab".repeat(32)),
        quorum: 2,
        status: RequestStatus::PendingApproval,
        created_at,
        updated_at: created_at,
        expires_at: 1_000 + u64::from(id),
        approvals: vec![],
        target_node: None,
        sealed: None,
        result: None,
        error_code: None,
        error_message: None,
        attempts: 0,
        created_by: "tester".into(),
        version: 1,
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
    }
}

#[tokio::test]
async fn store_round_trips_and_guards_every_change() {
    for db in databases("store_round_trips_and_guards_every_change").await {
        let engine = db.engine;
        let store = Store::connect(&db.url).await.unwrap();
        // Opening twice (a restart) finds the schema in place.
        let store2 = Store::connect(&db.url).await.unwrap();

        let a = row(1, RequestKind::Sign, 10);
        store.insert_request(&a, "created a".into()).await.unwrap();
        assert!(
            matches!(
                store.insert_request(&a, "again".into()).await,
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
            cert: "aa".into(),
            ca: "bb".into(),
            signature: "cc".into(),
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
        let other = row(2, RequestKind::CreateWallet, 20);
        store
            .insert_request(&other, "created".into())
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
            .insert_request(&row(3, RequestKind::Sign, 30), "".into())
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

#[tokio::test]
async fn unsupported_urls_are_refused() {
    assert!(matches!(
        Store::connect("mysql://x@localhost/db").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}
