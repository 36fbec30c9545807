//! Refused callers are counted in memory and written to the history as aggregated rows
//! ([`RefusalSummary`]), never one row per attempt: a stranger repeating a refused call
//! must not grow the history, or hold its single writer, at the rate of their attempts.
//!
//! Counts are kept per (layer, reason code). Both come from closed sets (the TLS refusal
//! reasons of `custos_net`, the application's codes below), so the number of keys in
//! memory is bounded whatever the callers present; each key keeps at most
//! [`MAX_SUMMARY_SAMPLES`] certificate fingerprints, the others are only counted. A key's
//! first refusals are written at the next tick, later ones at most once per interval, and
//! everything still counted when the bridge stops.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use custos_metadata::{MetadataDb, MetadataError, RefusalSummary, MAX_SUMMARY_SAMPLES};

/// Where a caller was refused, or which other repeatable event is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Layer {
    /// In the TLS handshake: the chain does not reach the pinned Root.
    Tls,
    /// By the application: the chain reaches the Root but is not a member of this cluster.
    App,
    /// Not a refusal of a caller: what became of forwarding another cluster's governance log
    /// to this cluster's TEEs (`service::foreign_governance`). The cloud server pushes such a
    /// log again and again, so its forwards are counted like refusals: one row per outcome
    /// and interval, never one per push.
    ForeignLog,
}

impl Layer {
    fn source(self) -> &'static str {
        match self {
            Layer::Tls => "bridge:tls",
            Layer::App => "bridge:app",
            Layer::ForeignLog => "bridge:foreign-log",
        }
    }
}

type Key = (Layer, &'static str);

/// What is counted for one key since its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Count {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    samples: Vec<([u8; 32], u64)>,
    example: String,
}

impl Count {
    fn add_sample(&mut self, fp: [u8; 32], n: u64) {
        if let Some(s) = self.samples.iter_mut().find(|(f, _)| *f == fp) {
            s.1 += n;
        } else if self.samples.len() < MAX_SUMMARY_SAMPLES {
            self.samples.push((fp, n));
        }
    }

    /// Folds `other` (counted earlier, e.g. a row that could not be written) into `self`.
    fn merge(&mut self, other: Count) {
        self.count += other.count;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        for (fp, n) in other.samples {
            self.add_sample(fp, n);
        }
        self.example = other.example;
    }
}

#[derive(Default)]
struct Inner {
    pending: BTreeMap<Key, Count>,
    /// When each key last had a row written (absent: never).
    written_ms: BTreeMap<Key, i64>,
}

/// The in-memory refusal counter of a bridge.
pub(crate) struct RefusalTally {
    /// Least time between two rows of one key.
    interval_ms: i64,
    inner: Mutex<Inner>,
}

impl RefusalTally {
    /// A tally that writes each key at most once per `interval` (after its first row).
    pub(crate) fn new(interval: Duration) -> Self {
        RefusalTally {
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            inner: Mutex::default(),
        }
    }

    /// Counts one refusal. Cheap and non-blocking apart from a short lock: it runs inside
    /// TLS handshakes and request handlers.
    pub(crate) fn record(
        &self,
        layer: Layer,
        reason: &'static str,
        leaf_sha256: Option<[u8; 32]>,
        now_ms: i64,
        example: impl FnOnce() -> String,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = inner
            .pending
            .entry((layer, reason))
            .or_insert_with(|| Count {
                count: 0,
                first_ms: now_ms,
                last_ms: now_ms,
                samples: Vec::new(),
                // Only the first attempt of a row is explained in full: building the text for
                // every attempt would cost the attacker nothing and us a formatting each time.
                example: example(),
            });
        c.count += 1;
        c.first_ms = c.first_ms.min(now_ms);
        c.last_ms = c.last_ms.max(now_ms);
        if let Some(fp) = leaf_sha256 {
            c.add_sample(fp, 1);
        }
    }

    /// Takes the counts that are due: keys never written yet, keys whose last row is at
    /// least an interval old, or (`all`) every key.
    fn take_due(&self, now_ms: i64, all: bool) -> Vec<(Key, Count)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<Key> = inner
            .pending
            .keys()
            .filter(|k| {
                all || inner
                    .written_ms
                    .get(*k)
                    .is_none_or(|at| now_ms.saturating_sub(*at) >= self.interval_ms)
            })
            .copied()
            .collect();
        due.into_iter()
            .filter_map(|k| {
                inner.written_ms.insert(k, now_ms);
                inner.pending.remove(&k).map(|c| (k, c))
            })
            .collect()
    }

    /// Puts back counts whose row could not be written, so that none is lost.
    fn restore(&self, key: Key, count: Count) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.pending.remove(&key) {
            Some(mut newer) => {
                newer.merge(count);
                inner.pending.insert(key, newer);
            }
            None => {
                inner.pending.insert(key, count);
            }
        }
    }

    /// Writes one row per due key (every key if `all`). A row that cannot be written stays
    /// counted for the next flush; the first error is returned.
    pub(crate) async fn flush(
        &self,
        db: &MetadataDb,
        now_ms: i64,
        all: bool,
    ) -> Result<usize, MetadataError> {
        let mut written = 0;
        let mut first_err = None;
        for (key, count) in self.take_due(now_ms, all) {
            let row = summary(key, &count).to_entry();
            let res = match row {
                Ok(entry) => db.append(entry).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => written += 1,
                Err(e) => {
                    tracing::error!(error = %e, reason = key.1, "refusal summary not written; kept for the next flush");
                    self.restore(key, count);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// How often the flusher looks for due keys: the first refusal of a kind shows in the
    /// history within a second, later ones once per interval.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.interval_ms.clamp(1, 1000)).unwrap_or(1000))
    }
}

fn summary(key: Key, c: &Count) -> RefusalSummary {
    RefusalSummary {
        source: key.0.source().into(),
        reason: key.1.into(),
        count: c.count,
        first_seen_ms: c.first_ms,
        last_seen_ms: c.last_ms,
        samples: c
            .samples
            .iter()
            .map(|(fp, n)| (hex::encode(fp), *n))
            .collect(),
        example: c.example.clone(),
    }
}

/// The application's reason code for a chain that reaches the Root but is refused.
pub(crate) fn app_reason(e: &custos_pki::PkiError) -> &'static str {
    use custos_pki::PkiError;
    match e {
        PkiError::WrongCluster { .. } => "wrong_cluster",
        PkiError::NotValidNow { .. } => "not_valid_now",
        PkiError::ChainRejected { .. } => "chain_rejected",
        PkiError::Malformed { .. } => "malformed_certificate",
        _ => "refused_certificate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u8) -> Option<[u8; 32]> {
        Some([i; 32])
    }

    #[test]
    fn counts_are_aggregated_per_key_with_bounded_samples() {
        let t = RefusalTally::new(Duration::from_secs(60));
        for i in 0..10_000u32 {
            let fp_byte = u8::try_from(i % 20).unwrap();
            t.record(
                Layer::Tls,
                "unknown_issuer",
                fp(fp_byte),
                100 + i64::from(i),
                || format!("attempt {i}"),
            );
        }
        t.record(Layer::App, "wrong_cluster", None, 50, || "dc2".into());
        let due = t.take_due(20_000, false);
        assert_eq!(due.len(), 2);
        let (_, tls) = due.iter().find(|(k, _)| k.0 == Layer::Tls).unwrap();
        assert_eq!(tls.count, 10_000);
        assert_eq!((tls.first_ms, tls.last_ms), (100, 10_099));
        assert_eq!(tls.samples.len(), MAX_SUMMARY_SAMPLES);
        assert!(tls.samples.iter().all(|(_, n)| *n == 500));
        assert_eq!(tls.example, "attempt 0");
        // The summary is a valid history row.
        let row = summary(due[0].0, &due[0].1).to_entry().unwrap();
        assert_eq!(row.kind, custos_metadata::REFUSAL_SUMMARY_KIND);
    }

    #[test]
    fn a_key_is_written_at_most_once_per_interval_and_everything_on_stop() {
        let t = RefusalTally::new(Duration::from_secs(60));
        t.record(Layer::Tls, "unknown_issuer", None, 0, String::new);
        assert_eq!(t.take_due(1, false).len(), 1, "first refusals at once");
        for now in 2..1_000 {
            t.record(Layer::Tls, "unknown_issuer", None, now, String::new);
            assert!(
                t.take_due(now, false).is_empty(),
                "not again within the interval"
            );
        }
        let due = t.take_due(60_001, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.count, 998);
        t.record(Layer::Tls, "unknown_issuer", None, 60_002, String::new);
        assert!(t.take_due(60_003, false).is_empty());
        assert_eq!(t.take_due(60_003, true).len(), 1, "all on stop");
        assert!(t.take_due(60_004, true).is_empty());
    }

    #[test]
    fn counts_of_an_unwritten_row_are_kept() {
        let t = RefusalTally::new(Duration::from_secs(60));
        t.record(Layer::Tls, "unknown_issuer", fp(1), 10, || "old".into());
        let mut due = t.take_due(11, true);
        t.record(Layer::Tls, "unknown_issuer", fp(1), 20, || "new".into());
        let (k, c) = due.pop().unwrap();
        t.restore(k, c);
        let due = t.take_due(21, true);
        assert_eq!(due[0].1.count, 2);
        assert_eq!((due[0].1.first_ms, due[0].1.last_ms), (10, 20));
        assert_eq!(due[0].1.samples, vec![([1; 32], 2)]);
    }
}
