//! The internal side: verifies request envelopes and runs each request id exactly once.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::{Envelope, EnvelopeKind, Failure, RequestId};
use crate::error::{FailureCode, LinkError};
use crate::keys::LinkKeys;

/// request id → postcard([`StoredReply`]).
const REPLIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("link_replies");
/// (Unix ms the reply was stored, big-endian ++ request id) → (): replies in the order they
/// may be pruned.
const REPLY_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("link_reply_times");

/// How long a stored reply is replayed to retries of its request id: longer than any request
/// may stay approved (7 days), so within its approvals' validity a request id never runs
/// twice; a later retry runs the handler again, whose TEE refuses the expired approvals.
pub const REPLY_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);
/// The longest a request envelope lives: the longest approval lifetime (7 days,
/// `custos_wire::approval::MAX_APPROVAL_LIFETIME_SECS`). An older one is refused
/// ([`LinkError::Expired`]) even when its reply was pruned, so a captured envelope never runs
/// twice; a request still approved is sealed afresh by its sender.
pub const MAX_ENVELOPE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most a sender's clock may be ahead of the internal side's.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(3600);
// Every envelope accepted is answered from the store for as long as it may be presented.
const _: () =
    assert!(REPLY_RETENTION.as_secs() > MAX_ENVELOPE_AGE.as_secs() + MAX_CLOCK_AHEAD.as_secs());
/// How often the commit thread prunes replies past [`REPLY_RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Most replies removed in one pruning transaction.
const MAX_PRUNE_BATCH: usize = 10_000;

use crate::envelope::now_ms;

fn time_key(at_ms: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// Removes every reply stored before `cutoff_ms` (in batches); returns how many.
fn prune_before(db: &Database, cutoff_ms: u64) -> Result<usize, String> {
    let mut removed = 0;
    loop {
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        let n = {
            let mut times = txn.open_table(REPLY_TIMES).map_err(|e| e.to_string())?;
            let mut replies = txn.open_table(REPLIES).map_err(|e| e.to_string())?;
            let end = cutoff_ms.to_be_bytes();
            let old: Vec<Vec<u8>> = times
                .range::<&[u8]>(..&end[..])
                .map_err(|e| e.to_string())?
                .take(MAX_PRUNE_BATCH)
                .map(|r| r.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            for k in &old {
                times.remove(k.as_slice()).map_err(|e| e.to_string())?;
                replies.remove(&k[8..]).map_err(|e| e.to_string())?;
            }
            old.len()
        };
        txn.commit().map_err(|e| e.to_string())?;
        removed += n;
        if n < MAX_PRUNE_BATCH {
            return Ok(removed);
        }
    }
}

/// Prunes replies past [`REPLY_RETENTION`], logging the outcome.
fn prune_expired(db: &Database) {
    match prune_before(
        db,
        now_ms().saturating_sub(REPLY_RETENTION.as_millis() as u64),
    ) {
        Ok(0) => {}
        Ok(n) => tracing::info!(replies = n, "link: pruned replies past their retention"),
        Err(e) => tracing::warn!(error = %e, "link: pruning stored replies failed"),
    }
}

type BoxedHandler = Box<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Reply, String>> + Send>> + Send + Sync,
>;

/// A handler's answer, and whether it is the request id's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Committed to the exactly-once store before it is sent: every retry of the request id
    /// gets it back and the handler never runs again for that id.
    Final(Vec<u8>),
    /// Sent but not stored, so a retry runs the handler again. Only for answers that say
    /// nothing was executed (e.g. "no node available right now").
    Transient(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
struct StoredReply {
    /// SHA-256 of the request payload the reply answers, to tell a retry from a reuse.
    payload_hash: [u8; 32],
    /// The signed response (or failure) envelope, replayed verbatim to retries.
    response: Vec<u8>,
}

struct Inner {
    cluster: String,
    keys: LinkKeys,
    handler: BoxedHandler,
    db: Arc<Database>,
    /// `None` only while dropping, so the commit thread can be joined.
    committer: Option<std::sync::mpsc::Sender<PendingCommit>>,
    commit_thread: Option<std::thread::JoinHandle<()>>,
    in_flight: Mutex<HashMap<RequestId, Arc<tokio::sync::Mutex<()>>>>,
    /// Requests between their exactly-once lookup and their answer: what the commit thread
    /// may wait for.
    executing: Arc<AtomicUsize>,
    sequence: AtomicU64,
}

/// A reply waiting for the group commit, and who to tell when it is durable.
struct PendingCommit {
    id: RequestId,
    reply: StoredReply,
    done: tokio::sync::oneshot::Sender<Result<StoredReply, LinkError>>,
}

/// Most replies committed in one redb transaction.
const MAX_GROUP_COMMIT: usize = 256;

/// Longest the commit thread waits for the replies of requests still executing before it
/// commits the ones queued (see [`run_committer`]).
const LINGER: Duration = Duration::from_millis(2);

/// Group commit: one thread writes every reply queued while the previous transaction was
/// being made durable in one transaction, so concurrent requests share one fsync instead of
/// paying one each. Every waiter is answered only after its reply is durable.
///
/// A commit costs an fsync and a write of every page it touches whatever its size, so while
/// more requests are executing than replies are queued (`executing`), the thread waits up
/// to [`LINGER`] for their replies to join the group. A lone request (light load) is
/// committed at once.
fn run_committer(
    db: Arc<Database>,
    rx: std::sync::mpsc::Receiver<PendingCommit>,
    executing: Arc<AtomicUsize>,
) {
    // The thread that writes is also the one that prunes (between batches).
    prune_expired(&db);
    let mut pruned_at = std::time::Instant::now();
    loop {
        if pruned_at.elapsed() >= PRUNE_EVERY {
            prune_expired(&db);
            pruned_at = std::time::Instant::now();
        }
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(p) => p,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMIT {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let deadline = std::time::Instant::now() + LINGER;
        while batch.len() < MAX_GROUP_COMMIT && batch.len() < executing.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => batch.push(p),
                // Time is up, or every sender is gone (this batch still commits).
                Err(_) => break,
            }
        }
        let written = commit_batch(&db, &batch);
        for p in batch {
            let answer = match &written {
                Ok(()) => Ok(p.reply),
                Err(e) => Err(LinkError::Store(e.clone())),
            };
            // A waiter that went away still had its reply committed for its retry.
            let _ = p.done.send(answer);
        }
    }
}

fn commit_batch(db: &Database, batch: &[PendingCommit]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(REPLIES).map_err(|e| e.to_string())?;
        let mut times = txn.open_table(REPLY_TIMES).map_err(|e| e.to_string())?;
        let at = now_ms();
        for p in batch {
            let bytes = postcard::to_allocvec(&p.reply).map_err(|e| e.to_string())?;
            table
                .insert(p.id.as_slice(), bytes.as_slice())
                .map_err(|e| e.to_string())?;
            times
                .insert(time_key(at, &p.id).as_slice(), ())
                .map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// The internal relay's end of the link. Cheap to clone; clones share the dedup store.
///
/// Exactly-once: a request id's result is committed to the redb store before it is
/// returned, so a retry (even after a restart) gets the stored envelope and the handler is
/// not called again. The window that remains is a crash after the handler finished but
/// before the commit; the handler's own effects (e.g. the bridge's history) must cover it.
#[derive(Clone)]
pub struct LinkServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LinkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkServer")
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the commit thread after its last batch; joining it releases
        // the store so that it can be reopened at once (redb allows one opener).
        self.committer = None;
        if let Some(t) = self.commit_thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes a request id's in-flight entry however the critical section ends.
struct InFlightGuard<'a> {
    map: &'a Mutex<HashMap<RequestId, Arc<tokio::sync::Mutex<()>>>>,
    id: RequestId,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        // Waiters that already cloned the Arc still serialize on it and then find the
        // committed reply; newcomers find the reply in the store without needing the lock.
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.id);
        }
    }
}

/// Counts a request as executing until it is answered, however that ends.
struct Executing<'a>(&'a AtomicUsize);

impl<'a> Executing<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Executing(count)
    }
}

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn store_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Store(e.to_string())
}

impl LinkServer {
    /// Opens (or creates) the dedup store at `dedup_path` and builds a server for
    /// `cluster`, answering with `keys` and running `handler` on each new request payload.
    pub fn open<F, Fut>(
        dedup_path: impl AsRef<Path>,
        cluster: impl Into<String>,
        keys: LinkKeys,
        handler: F,
    ) -> Result<Self, LinkError>
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, String>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        Self::open_with_replies(dedup_path, cluster, keys, move |p| {
            let handler = Arc::clone(&handler);
            async move { handler(p).await.map(Reply::Final) }
        })
    }

    /// Like [`LinkServer::open`], with a handler that may mark an answer [`Reply::Transient`].
    pub fn open_with_replies<F, Fut>(
        dedup_path: impl AsRef<Path>,
        cluster: impl Into<String>,
        keys: LinkKeys,
        handler: F,
    ) -> Result<Self, LinkError>
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, String>> + Send + 'static,
    {
        let db = Database::create(dedup_path.as_ref()).map_err(store_err)?;
        // Create the tables up front so readers never meet TableDoesNotExist. Replies
        // stored before their times were recorded are timed from now.
        let txn = db.begin_write().map_err(store_err)?;
        {
            let replies = txn.open_table(REPLIES).map_err(store_err)?;
            let mut times = txn.open_table(REPLY_TIMES).map_err(store_err)?;
            if times.is_empty().map_err(store_err)? {
                let at = now_ms();
                for r in replies.iter().map_err(store_err)? {
                    let (id, _) = r.map_err(store_err)?;
                    times
                        .insert(time_key(at, id.value()).as_slice(), ())
                        .map_err(store_err)?;
                }
            }
        }
        txn.commit().map_err(store_err)?;
        let db = Arc::new(db);
        let (committer, rx) = std::sync::mpsc::channel();
        let for_thread = Arc::clone(&db);
        let executing = Arc::new(AtomicUsize::new(0));
        let for_committer = Arc::clone(&executing);
        let commit_thread = std::thread::Builder::new()
            .name("link-commit".into())
            .spawn(move || run_committer(for_thread, rx, for_committer))
            .map_err(|e| LinkError::Internal(format!("commit thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                cluster: cluster.into(),
                keys,
                handler: Box::new(move |p| Box::pin(handler(p))),
                db,
                committer: Some(committer),
                commit_thread: Some(commit_thread),
                in_flight: Mutex::new(HashMap::new()),
                executing,
                sequence: AtomicU64::new(0),
            }),
        })
    }

    /// Removes the replies stored before `unix_ms` (the commit thread does this by itself
    /// for replies past [`REPLY_RETENTION`]); returns how many. A retry of a removed
    /// request id runs the handler again.
    pub fn prune_replies_before(&self, unix_ms: u64) -> Result<usize, LinkError> {
        prune_before(&self.inner.db, unix_ms).map_err(LinkError::Store)
    }

    /// The cluster this server serves.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// Handles one encoded request envelope and returns the encoded, signed response
    /// envelope (a Response, or a Failure for a handler error or a reused request id).
    ///
    /// Returns `Err` without running anything for input that is not an authentic request
    /// for this cluster; the transport decides how to report it ([`Self::refusal_reply`]).
    pub async fn handle_request(&self, request: &[u8]) -> Result<Vec<u8>, LinkError> {
        let env = Envelope::open(request, self.inner.keys.peer_public(), &self.inner.cluster)?;
        if env.kind != EnvelopeKind::Request {
            return Err(LinkError::Malformed(format!(
                "expected a Request envelope, got {:?}",
                env.kind
            )));
        }
        check_age(env.created_at_ms, now_ms())?;
        let inner = Arc::clone(&self.inner);
        // A task of its own: if the transport drops this future (client gone, timeout),
        // the handler still runs to completion and its result is committed for the retry.
        tokio::spawn(async move { inner.execute_once(env).await })
            .await
            .map_err(|e| LinkError::Internal(format!("request task failed: {e}")))?
    }

    /// The answer to `request` for a transport whose answers anyone watching the channel
    /// may take (a screen, a shared line): the response, or a refusal only if the request
    /// was authentic. A forged request naming someone's request id gets nothing, so it
    /// cannot make this side sign a failure that would stand for the real request.
    pub async fn answer(&self, request: &[u8]) -> Option<Vec<u8>> {
        match self.handle_request(request).await {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::warn!(error = %e, "link: request refused");
                e.of_authentic_envelope()
                    .then(|| self.refusal_reply(request, &e))
                    .flatten()
            }
        }
    }

    /// A signed Failure envelope telling the sender why `request` was refused, if the
    /// request is structurally an envelope (its id is needed to address the answer).
    pub fn refusal_reply(&self, request: &[u8], error: &LinkError) -> Option<Vec<u8>> {
        let env = Envelope::decode(request).ok()?;
        self.inner
            .seal_failure(env.request_id, error.failure_code(), error.to_string())
            .ok()
    }
}

/// Refuses a request sealed more than [`MAX_ENVELOPE_AGE`] before `now` or more than
/// [`MAX_CLOCK_AHEAD`] after it.
fn check_age(created_at_ms: u64, now: u64) -> Result<(), LinkError> {
    let max_age = MAX_ENVELOPE_AGE.as_millis() as u64;
    if now.saturating_sub(created_at_ms) > max_age {
        return Err(LinkError::Expired {
            created_at_ms,
            now_ms: now,
            max_age_secs: MAX_ENVELOPE_AGE.as_secs(),
        });
    }
    if created_at_ms.saturating_sub(now) > MAX_CLOCK_AHEAD.as_millis() as u64 {
        return Err(LinkError::FromTheFuture {
            created_at_ms,
            now_ms: now,
            max_ahead_secs: MAX_CLOCK_AHEAD.as_secs(),
        });
    }
    Ok(())
}

impl Inner {
    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    fn seal_failure(
        &self,
        id: RequestId,
        code: FailureCode,
        message: String,
    ) -> Result<Vec<u8>, LinkError> {
        let payload = postcard::to_allocvec(&Failure { code, message })
            .map_err(|e| LinkError::Internal(e.to_string()))?;
        Envelope::seal(
            &self.keys,
            &self.cluster,
            id,
            EnvelopeKind::Failure,
            self.next_sequence(),
            payload,
        )?
        .encode()
    }

    fn lookup(&self, id: &RequestId) -> Result<Option<StoredReply>, LinkError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(REPLIES).map_err(store_err)?;
        match table.get(id.as_slice()).map_err(store_err)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| LinkError::Store(format!("corrupt dedup record: {e}"))),
        }
    }

    async fn execute_once(self: Arc<Self>, env: Envelope) -> Result<Vec<u8>, LinkError> {
        let id = env.request_id;
        let payload_hash: [u8; 32] = Sha256::digest(&env.payload).into();
        let lock = {
            let mut map = self
                .in_flight
                .lock()
                .map_err(|_| LinkError::Internal("in-flight map poisoned".into()))?;
            Arc::clone(map.entry(id).or_default())
        };
        let _held = lock.lock().await;
        let _guard = InFlightGuard {
            map: &self.in_flight,
            id,
        };

        // A point read of the store (a B-tree lookup in redb's page cache; the commit
        // thread's writes do not block readers): cheaper inline than a hand-off to the
        // blocking pool and back.
        if let Some(stored) = self.lookup(&id)? {
            if stored.payload_hash == payload_hash {
                tracing::info!(request_id = %hex::encode(id), "link: replaying stored reply");
                return Ok(stored.response);
            }
            tracing::warn!(request_id = %hex::encode(id), "link: request id reused with a different payload");
            return self.seal_failure(
                id,
                FailureCode::RequestIdReused,
                "request id already used with a different payload".into(),
            );
        }

        let _executing = Executing::enter(&self.executing);
        let (result, durable) = match (self.handler)(env.payload).await {
            Ok(Reply::Final(r)) => (Ok(r), true),
            Ok(Reply::Transient(r)) => (Ok(r), false),
            Err(m) => (Err(m), true),
        };
        let response = match result {
            Ok(result) => match Envelope::seal(
                &self.keys,
                &self.cluster,
                id,
                EnvelopeKind::Response,
                self.next_sequence(),
                result,
            )
            .and_then(|env| env.encode())
            {
                Ok(bytes) => bytes,
                // The handler already ran: its unsendable result must still become the
                // stored final answer, or a retry would run the request again.
                Err(e) => self.seal_failure(
                    id,
                    FailureCode::HandlerFailed,
                    format!("handler result cannot be sent: {e}"),
                )?,
            },
            // A handler failure is a final answer: storing it keeps a retry from running
            // the request a second time.
            Err(message) => self.seal_failure(id, FailureCode::HandlerFailed, message)?,
        };
        if !durable {
            tracing::debug!(request_id = %hex::encode(id), "link: transient answer, not stored");
            return Ok(response);
        }
        let reply = StoredReply {
            payload_hash,
            response,
        };
        let (done, committed) = tokio::sync::oneshot::channel();
        self.committer
            .as_ref()
            .ok_or_else(|| LinkError::Internal("commit thread stopped".into()))?
            .send(PendingCommit { id, reply, done })
            .map_err(|_| LinkError::Internal("commit thread stopped".into()))?;
        let reply = committed
            .await
            .map_err(|_| LinkError::Internal("commit thread stopped".into()))??;
        Ok(reply.response)
    }
}
