//! Where each one-effect request was sent ([`crate::routing::Described::one_effect`]): a
//! resend with its id goes to that node only, whatever its pin, so that a request whose
//! answer was lost never reaches a second node that would make a second key.
//!
//! Kept in memory for routing and in the metadata DB (table `sent_to`), written before the
//! request leaves: a restarted bridge reads it back, so a resend after the restart still
//! goes to the node that may have made the key. Both are bounded: by count
//! ([`MAX_SENT_TO`]) and, in the DB, by age ([`RETENTION`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use custos_metadata::{MetadataDb, MetadataError, SentRecord};

use super::now_ms;

/// Most one-effect requests remembered; beyond, the oldest half is forgotten (in memory), and
/// the DB keeps about this many newest rows.
pub(crate) const MAX_SENT_TO: usize = 100_000;

/// How long the DB keeps a record: as long as the link keeps a reply, the longest a request
/// can be resent with its id.
pub(crate) const RETENTION: Duration = custos_link::REPLY_RETENTION;

/// How often the DB's old records are deleted.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Request id (hex) → the node a one-effect request was last sent to.
#[derive(Default)]
pub(crate) struct SentTo(Mutex<(u64, SentToMap)>);

/// Request id (hex) → (node, insertion sequence number).
type SentToMap = HashMap<String, (String, u64)>;

/// Unix milliseconds before which records are deleted.
fn cutoff() -> i64 {
    now_ms().saturating_sub(RETENTION.as_millis() as i64)
}

impl SentTo {
    /// The map as the DB has it (old records deleted first): what a restarted bridge knows.
    pub(crate) async fn restore(db: &MetadataDb) -> Result<Self, MetadataError> {
        Self::prune(db).await?;
        let records = db.sent_since(cutoff(), MAX_SENT_TO as i64).await?;
        Ok(Self::from_records(records))
    }

    /// Deletes the DB's records past the retention and beyond the count bound.
    pub(crate) async fn prune(db: &MetadataDb) -> Result<u64, MetadataError> {
        db.forget_sent(cutoff(), MAX_SENT_TO as i64).await
    }

    /// `records` newest first, as [`MetadataDb::sent_since`] returns them.
    fn from_records(records: Vec<SentRecord>) -> Self {
        let map = SentTo::default();
        for r in records.into_iter().rev() {
            map.insert(&r.request_id, &r.node);
        }
        map
    }

    /// The node request `id` was last sent to.
    pub(crate) fn get(&self, id: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.1.get(id).map(|(node, _)| node.clone())
    }

    /// Records, durably then in memory, that request `id` is sent to `node`. A resend to the
    /// node already recorded writes nothing.
    pub(crate) async fn remember(
        &self,
        db: &MetadataDb,
        id: &str,
        node: &str,
    ) -> Result<(), MetadataError> {
        if self.get(id).as_deref() == Some(node) {
            return Ok(());
        }
        db.record_sent(id, node, now_ms()).await?;
        self.insert(id, node);
        Ok(())
    }

    fn insert(&self, id: &str, node: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (next, entries) = &mut *map;
        if entries.len() >= MAX_SENT_TO && !entries.contains_key(id) {
            let cut = next.saturating_sub(MAX_SENT_TO as u64 / 2);
            entries.retain(|_, (_, seq)| *seq >= cut);
        }
        *next += 1;
        let seq = *next;
        // The node it was last sent to: a failover after a refused connection moves it.
        entries.insert(id.to_string(), (node.to_string(), seq));
    }
}

#[cfg(test)]
mod tests {
    use super::{SentTo, MAX_SENT_TO};
    use custos_metadata::{sqlite_url, MetadataDb};

    #[test]
    fn a_one_effect_request_is_remembered_at_the_node_it_was_last_sent_to() {
        let sent = SentTo::default();
        assert_eq!(sent.get("r1"), None);
        sent.insert("r1", "node1");
        sent.insert("r1", "node2");
        assert_eq!(sent.get("r1").as_deref(), Some("node2"));
        // Bounded: past the cap the oldest half goes, the newest stay.
        for i in 0..MAX_SENT_TO + 10 {
            sent.insert(&format!("x{i}"), "node1");
        }
        let held = sent.0.lock().unwrap().1.len();
        assert!(held <= MAX_SENT_TO, "{held}");
        assert_eq!(
            sent.get(&format!("x{}", MAX_SENT_TO + 9)).as_deref(),
            Some("node1")
        );
        assert_eq!(sent.get("r1"), None);
    }

    /// A bridge restart (a new map over the same DB) still knows where each request went;
    /// records past the retention are not brought back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn where_a_request_went_survives_a_bridge_restart() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("metadata.db")).unwrap();
        {
            let db = MetadataDb::connect(&url).await.unwrap();
            let sent = SentTo::restore(&db).await.unwrap();
            sent.remember(&db, "r1", "node1").await.unwrap();
            sent.remember(&db, "r1", "node2").await.unwrap();
            sent.remember(&db, "r2", "node1").await.unwrap();
            // A record older than the retention (written as an old bridge would have).
            db.record_sent("r0", "node3", 1).await.unwrap();
            db.close().await;
        }
        let db = MetadataDb::connect(&url).await.unwrap();
        let sent = SentTo::restore(&db).await.unwrap();
        assert_eq!(sent.get("r1").as_deref(), Some("node2"));
        assert_eq!(sent.get("r2").as_deref(), Some("node1"));
        assert_eq!(sent.get("r0"), None);
        assert!(db
            .sent_since(0, 10)
            .await
            .unwrap()
            .iter()
            .all(|r| r.request_id != "r0"));
    }
}
