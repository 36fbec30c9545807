//! Several cloud servers (replicas) on one database: any of them serves any route, and the
//! work no client call drives is claimed through the database, never done twice and never
//! lost when a replica dies.
//!
//! * Every server process is a **replica** with a random id of its own (a restarted process
//!   is a new replica). It writes a heartbeat every [`Replica::beat_every`]; one not seen
//!   for `replica_ttl_secs` is dead. Times come from the database's clock (one clock for
//!   every replica, whatever their skew).
//! * A request moved to `submitting` names its **owner**, the replica executing it. Crash
//!   recovery resubmits only requests whose owner is dead (or unnamed: written before
//!   replicas), with their own id, so the link answers the first execution's result instead
//!   of executing again; a threshold request only once its last attempt's session cannot be
//!   running any more (a new attempt is a new session). The move itself is a
//!   compare-and-swap on the row's version: two replicas never both resubmit one request.
//! * A replica **fences itself**: once its last good heartbeat is older than half the TTL it
//!   starts no submission ([`ErrorCode::ReplicaUnavailable`]), so that it never acts on a
//!   request another replica may be taking over.
//! * **Background jobs** ([`Job`]) run only on the replica holding the job's lease, a row of
//!   `cloud_leases` taken when free or expired and renewed with every heartbeat; the holder
//!   counts it held only until half a TTL after the heartbeat that renewed it. A dead
//!   holder's lease runs out and another replica takes it; a clean shutdown hands it over at
//!   once. The lease keeps the work single; correctness never rests on it alone (every change
//!   a job makes is itself a compare-and-swap, or harmless if repeated).
//! * A request this replica owns but no longer executes (its call failed before recording
//!   an outcome) is resubmitted by this replica itself ([`Cloud::recover_own`]).
//!
//! SQLite, the single-process default, runs the same code with one replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::db::StoreError;
use crate::error::{ApiError, ErrorCode};
use crate::service::Cloud;

/// Work that runs in the background, on one replica at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Resubmitting requests whose owner died, and requests whose outcome is unknown.
    Recovery,
    /// Marking requests whose approval window passed as expired.
    Expiry,
    /// Topping up the presignature pools.
    Refill,
    /// Fanning request events out to webhooks and delivering them.
    Webhooks,
}

impl Job {
    /// Every job.
    pub const ALL: [Job; 4] = [Job::Recovery, Job::Expiry, Job::Refill, Job::Webhooks];

    /// Its name in `cloud_leases`, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Recovery => "recovery",
            Job::Expiry => "expiry",
            Job::Refill => "refill",
            Job::Webhooks => "webhooks",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// This process as a replica.
#[derive(Debug)]
pub struct Replica {
    /// Random, 16 hex digits.
    pub id: String,
    /// When it opened its store (Unix ms).
    pub started_at_ms: u64,
    /// Heartbeat age after which a replica is dead (ms).
    pub ttl_ms: u64,
    /// Whether liveness is judged on the database's clock (the system clock's server) or on
    /// the server's own (a test clock).
    db_clock: bool,
    /// Monotonic origin of the deadlines below.
    origin: Instant,
    /// When (ms after `origin`) the last good heartbeat started; 0: none yet.
    last_beat: AtomicU64,
    /// Per job, until when (ms after `origin`) this replica counts its lease held.
    held_until: [AtomicU64; 4],
    /// Requests this replica is executing now, with the number of calls at it (a second
    /// call at a request, e.g. a losing approval, must not clear the first one's mark).
    executing: Mutex<HashMap<String, usize>>,
    /// Whether the last heartbeat found this replica the only live one.
    alone: std::sync::atomic::AtomicBool,
    /// Set at shutdown: background jobs end after their current run.
    stopping: std::sync::atomic::AtomicBool,
    /// Wakes background jobs waiting for their next run at shutdown.
    stopped: tokio::sync::Notify,
}

/// Marks a request as being executed by this replica while it lives (also when its call is
/// dropped or panics).
pub(crate) struct Executing<'a> {
    replica: &'a Replica,
    id: String,
}

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        let mut executing = self.replica.executing.lock().expect("executing lock");
        if let Some(n) = executing.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                executing.remove(&self.id);
            }
        }
    }
}

impl Replica {
    /// A new replica id for a process started at `now_ms`; `db_clock` as in [`Replica`].
    pub fn new(now_ms: u64, ttl_secs: u64, db_clock: bool) -> Self {
        Replica {
            id: hex::encode(rand::random::<[u8; 8]>()),
            started_at_ms: now_ms,
            ttl_ms: ttl_secs.saturating_mul(1000),
            db_clock,
            origin: Instant::now(),
            last_beat: AtomicU64::new(0),
            held_until: Default::default(),
            executing: Mutex::new(HashMap::new()),
            alone: Default::default(),
            stopping: Default::default(),
            stopped: tokio::sync::Notify::new(),
        }
    }

    /// How often the heartbeat (and every lease held) is renewed: five times per TTL, so a
    /// few late or failed writes do not make a live replica look dead.
    pub fn beat_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.ttl_ms / 5).max(500))
    }

    /// Whether this replica holds `job`'s lease now.
    pub fn holds(&self, job: Job) -> bool {
        self.mono_ms() < self.held_until[job.index()].load(Ordering::Acquire)
    }

    /// Whether this replica may run `job` now: it holds the lease, or it never had a
    /// heartbeat (a server alone, as in tests).
    pub fn may_run(&self, job: Job) -> bool {
        self.last_beat.load(Ordering::Acquire) == 0 || self.holds(job)
    }

    /// Whether this replica may start a submission: its last good heartbeat began less than
    /// half a TTL ago (or it never had one: a server without heartbeats is alone).
    pub fn fresh(&self) -> bool {
        let last = self.last_beat.load(Ordering::Acquire);
        last == 0 || self.mono_ms().saturating_sub(last) < self.ttl_ms / 2
    }

    /// Whether no other replica shares the database: this one never had a heartbeat (a
    /// server alone, as in tests), or its last one, less than half a TTL ago, found only
    /// itself live. A replica that starts next to it is seen within one heartbeat.
    pub fn alone(&self) -> bool {
        self.last_beat.load(Ordering::Acquire) == 0
            || (self.fresh() && self.alone.load(Ordering::Acquire))
    }

    /// Refuses a submission while this replica is not [`Replica::fresh`].
    pub(crate) fn check_fresh(&self) -> Result<(), ApiError> {
        if self.fresh() {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::ReplicaUnavailable,
            format!(
                "cloud server replica {} has not renewed its heartbeat for half its TTL; \
                 call another address",
                self.id
            ),
        ))
    }

    /// Marks request `id` as executed by this replica until the guard drops.
    pub(crate) fn executing(&self, id: &str) -> Executing<'_> {
        *self
            .executing
            .lock()
            .expect("executing lock")
            .entry(id.to_string())
            .or_insert(0) += 1;
        Executing {
            replica: self,
            id: id.to_string(),
        }
    }

    /// Whether this replica is executing request `id` now.
    pub(crate) fn is_executing(&self, id: &str) -> bool {
        self.executing
            .lock()
            .expect("executing lock")
            .contains_key(id)
    }

    /// How many requests this replica is executing now.
    pub fn executing_count(&self) -> usize {
        self.executing.lock().expect("executing lock").len()
    }

    /// Asks background jobs to end after their current run (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }

    /// Waits for `tick`'s next period; `false` once shutdown began (then the job ends).
    pub async fn next_run(&self, tick: &mut tokio::time::Interval) -> bool {
        let stopped = self.stopped.notified();
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tick.tick() => !self.stopping(),
            _ = stopped => false,
        }
    }

    /// Whether [`Replica::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn mono_ms(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "never".
        (self.origin.elapsed().as_millis() as u64).max(1)
    }

    fn drop_leases(&self) {
        for job in Job::ALL {
            if self.held_until[job.index()].swap(0, Ordering::AcqRel) > self.mono_ms() {
                tracing::warn!(
                    job = job.as_str(),
                    "lease dropped: the database did not answer"
                );
            }
        }
    }
}

impl Cloud {
    /// The time liveness is judged by (Unix ms): the database's clock, or the test clock.
    pub(crate) async fn replica_now_ms(&self) -> Result<u64, StoreError> {
        if self.replica().db_clock {
            self.store().db_now_ms().await
        } else {
            Ok(self.now_ms())
        }
    }

    /// Writes this replica's heartbeat and takes or renews every job's lease it can; returns
    /// the jobs it holds. A failed write drops every lease this replica counted as held (it
    /// cannot tell whether another replica took them over) and stops submissions once half
    /// a TTL has passed since the last good one.
    pub async fn heartbeat(&self, listen: &str) -> Result<Vec<Job>, StoreError> {
        let r = self.replica();
        let began = r.mono_ms();
        match self.beat(listen, began).await {
            Ok(held) => {
                r.last_beat.store(began, Ordering::Release);
                Ok(held)
            }
            Err(e) => {
                r.drop_leases();
                for job in Job::ALL {
                    self.metrics().lease_held(job.as_str(), false);
                }
                Err(e)
            }
        }
    }

    async fn beat(&self, listen: &str, began: u64) -> Result<Vec<Job>, StoreError> {
        let r = self.replica();
        let now = self.replica_now_ms().await?;
        self.store()
            .heartbeat(
                &r.id,
                listen,
                r.started_at_ms,
                now,
                r.ttl_ms,
                self.webhooks().fingerprint(),
            )
            .await?;
        let mut held = Vec::new();
        for job in Job::ALL {
            let term = self
                .store()
                .try_lease(job.as_str(), &r.id, now, r.ttl_ms)
                .await?;
            // Counted held for half a TTL from the start of this heartbeat: well before the
            // row's expiry, whatever this heartbeat's own delays.
            let until = if term.is_some() {
                began + r.ttl_ms / 2
            } else {
                0
            };
            let had = r.held_until[job.index()].swap(until, Ordering::AcqRel) > began;
            match (had, term) {
                (false, Some(term)) => {
                    tracing::info!(job = job.as_str(), term, replica = %r.id, "lease taken")
                }
                (true, None) => {
                    tracing::warn!(job = job.as_str(), replica = %r.id, "lease lost to another replica")
                }
                _ => {}
            }
            self.metrics().lease_held(job.as_str(), term.is_some());
            if term.is_some() {
                held.push(job);
            }
        }
        // A gauge only: its failure fails no heartbeat.
        match self.store().replicas_live_at(now).await {
            Ok(live) => {
                let me = &self.replica().id;
                let alone = live.iter().all(|l| &l.id == me);
                self.replica().alone.store(alone, Ordering::Release);
                if !alone {
                    // Another replica may change a quorum this one has cached; until it has
                    // been gone for a TTL, every heartbeat forgets them.
                    self.forget_wallets();
                }
                self.metrics().replicas_live(live.len())
            }
            Err(e) => {
                self.replica().alone.store(false, Ordering::Release);
                self.forget_wallets();
                tracing::warn!(error = %e, "live replicas could not be counted")
            }
        }
        Ok(held)
    }

    /// Ends this replica's leases and removes its heartbeat (clean shutdown, nothing left
    /// executing), so that another replica takes its work over at once; forgets replicas
    /// dead for a day.
    pub async fn retire(&self) -> Result<(), StoreError> {
        self.replica().drop_leases();
        let now = self.replica_now_ms().await?;
        self.store()
            .retire(&self.replica().id, now.saturating_sub(24 * 3600 * 1000))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::Replica;

    /// A second call at a request that is executing (a losing approval, a resent creation)
    /// ends without clearing the first call's mark: its own recovery would take the
    /// request up while it still runs.
    #[test]
    fn a_second_call_at_a_request_keeps_the_first_ones_mark() {
        let r = Replica::new(0, 15, false);
        let first = r.executing("ab");
        drop(r.executing("ab"));
        assert!(r.is_executing("ab"));
        assert_eq!(r.executing_count(), 1);
        drop(first);
        assert!(!r.is_executing("ab"));
        assert_eq!(r.executing_count(), 0);
    }
}
