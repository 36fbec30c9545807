//! [`SessionHost`]: sessions on a worker thread of their own.
//!
//! [`Session`]s are `!Send` and one `feed` can compute for most of a second. The host owns one
//! std thread that creates and keeps all sessions (`HashMap<session id, Session>`); the handle is
//! `Send + Sync`, so the TEE core thread can hold it and call it synchronously: each call sends a
//! command over a channel and waits for the reply. Calls are served one at a time, in order.
//!
//! Sessions are bounded ([`DEFAULT_MAX_SESSIONS`] unless configured) and expire at the deadline
//! given at start; expiry is checked on every call (expired sessions are dropped, and calls for
//! them answer [`SessionError::Expired`]). A session that finishes or aborts is dropped at once.
//! Session ids are never accepted twice while the host remembers them (the last
//! [`REMEMBERED_CLOSED`] closed ids); durable "session id used" records are the caller's job.
//!
//! **Deferred calls.** [`start_deferred`](SessionHost::start_deferred),
//! [`feed_deferred`](SessionHost::feed_deferred) and [`abort_deferred`](SessionHost::abort_deferred)
//! queue the command and return at once; the answer is collected later from the [`Pending`]
//! handle, with a bounded wait. Commands still run one at a time in the order they were queued,
//! so a caller may queue several feeds of one session back to back. This is for protocols whose
//! single steps compute for many seconds (aux-info generation), so that the caller's thread (the
//! TEE core's request loop) never blocks for that long.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::phase::MsgType;
use crate::session::{Outgoing, Session, SessionKind, Step};
use crate::SessionError;

/// Default bound on concurrently open sessions of a host.
pub const DEFAULT_MAX_SESSIONS: usize = 64;
/// How many closed (finished, aborted, expired) session ids a host remembers.
pub const REMEMBERED_CLOSED: usize = 1024;

/// A session id (chosen by the caller, e.g. the approved request's id).
pub type SessionId = [u8; 32];

type Reply<T> = mpsc::Sender<Result<T, SessionError>>;

enum Command {
    Start {
        id: SessionId,
        kind: Box<SessionKind>,
        eid: [u8; 32],
        deadline: Instant,
        reply: Reply<Vec<Outgoing>>,
    },
    Feed {
        id: SessionId,
        from: u16,
        declared: MsgType,
        bytes: Vec<u8>,
        reply: Reply<Step>,
    },
    Abort {
        id: SessionId,
        reply: Reply<bool>,
    },
    Len {
        reply: Reply<usize>,
    },
}

/// Handle to a worker thread that owns protocol sessions. `Send + Sync`.
///
/// Dropping the handle stops the thread (after the call in progress) and drops its sessions.
pub struct SessionHost {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SessionHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHost").finish_non_exhaustive()
    }
}

impl SessionHost {
    /// Starts the worker thread with a bound of `max_sessions` open sessions.
    pub fn new(max_sessions: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("custos-threshold".into())
            .spawn(move || Worker::new(max_sessions).run(rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SessionError> {
        let (reply, answer) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or(SessionError::HostStopped)?;
        tx.send(make(reply))
            .map_err(|_| SessionError::HostStopped)?;
        answer.recv().map_err(|_| SessionError::HostStopped)?
    }

    /// Starts session `id` (see [`Session::new`]); it expires at `deadline`. Returns the first
    /// messages to send.
    pub fn start(
        &self,
        id: SessionId,
        kind: SessionKind,
        eid: [u8; 32],
        deadline: Instant,
    ) -> Result<Vec<Outgoing>, SessionError> {
        self.call(|reply| Command::Start {
            id,
            kind: Box::new(kind),
            eid,
            deadline,
            reply,
        })
    }

    /// Feeds one message to session `id` (see [`Session::feed`]). A session that finishes or
    /// fails is dropped.
    pub fn feed(
        &self,
        id: SessionId,
        from: u16,
        declared: MsgType,
        bytes: &[u8],
    ) -> Result<Step, SessionError> {
        self.call(|reply| Command::Feed {
            id,
            from,
            declared,
            bytes: bytes.to_vec(),
            reply,
        })
    }

    /// Drops session `id`; `true` if it was open.
    pub fn abort(&self, id: SessionId) -> Result<bool, SessionError> {
        self.call(|reply| Command::Abort { id, reply })
    }

    /// Queues a command and returns the handle of its answer without waiting.
    fn defer<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Pending<T> {
        let (reply, answer) = mpsc::channel();
        if let Some(tx) = self.tx.as_ref() {
            // If the worker is gone, `answer` reports it (its sender was dropped).
            let _ = tx.send(make(reply));
        }
        Pending { answer }
    }

    /// [`start`](Self::start) without waiting: the first messages arrive through the handle.
    pub fn start_deferred(
        &self,
        id: SessionId,
        kind: SessionKind,
        eid: [u8; 32],
        deadline: Instant,
    ) -> Pending<Vec<Outgoing>> {
        self.defer(|reply| Command::Start {
            id,
            kind: Box::new(kind),
            eid,
            deadline,
            reply,
        })
    }

    /// [`feed`](Self::feed) without waiting: the step arrives through the handle.
    pub fn feed_deferred(
        &self,
        id: SessionId,
        from: u16,
        declared: MsgType,
        bytes: &[u8],
    ) -> Pending<Step> {
        self.defer(|reply| Command::Feed {
            id,
            from,
            declared,
            bytes: bytes.to_vec(),
            reply,
        })
    }

    /// [`abort`](Self::abort) without waiting (after the commands queued before it).
    pub fn abort_deferred(&self, id: SessionId) {
        drop(self.defer(|reply| Command::Abort { id, reply }));
    }

    /// Number of open sessions (after dropping expired ones).
    pub fn len(&self) -> Result<usize, SessionError> {
        self.call(|reply| Command::Len { reply })
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> Result<bool, SessionError> {
        self.len().map(|n| n == 0)
    }
}

/// The answer to a deferred call ([`SessionHost::start_deferred`],
/// [`SessionHost::feed_deferred`]), collected with [`Pending::wait`]. Dropping it discards the
/// answer; the command still runs.
pub struct Pending<T> {
    answer: mpsc::Receiver<Result<T, SessionError>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    /// Waits at most `timeout` for the answer: `None` while the worker is still on it (or on
    /// commands queued before it); [`SessionError::HostStopped`] if the worker is gone.
    pub fn wait(&self, timeout: Duration) -> Option<Result<T, SessionError>> {
        match self.answer.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(SessionError::HostStopped)),
        }
    }
}

impl Drop for SessionHost {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
enum Closed {
    Finished,
    Aborted,
    Expired,
}

impl Closed {
    fn error(self) -> SessionError {
        match self {
            Closed::Finished => SessionError::Finished,
            Closed::Aborted => SessionError::AlreadyAborted,
            Closed::Expired => SessionError::Expired,
        }
    }
}

struct Worker {
    max: usize,
    open: HashMap<SessionId, (Session, Instant)>,
    closed: VecDeque<(SessionId, Closed)>,
}

impl Worker {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: HashMap::new(),
            closed: VecDeque::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        // Replies fail only when the caller went away; nothing to do then.
        for cmd in rx {
            self.expire(Instant::now());
            match cmd {
                Command::Start {
                    id,
                    kind,
                    eid,
                    deadline,
                    reply,
                } => {
                    let _ = reply.send(self.start(id, *kind, eid, deadline));
                }
                Command::Feed {
                    id,
                    from,
                    declared,
                    bytes,
                    reply,
                } => {
                    let _ = reply.send(self.feed(id, from, declared, &bytes));
                }
                Command::Abort { id, reply } => {
                    let was_open = self.open.remove(&id).is_some();
                    if was_open {
                        self.remember(id, Closed::Aborted);
                    }
                    let _ = reply.send(Ok(was_open));
                }
                Command::Len { reply } => {
                    let _ = reply.send(Ok(self.open.len()));
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<SessionId> = self
            .open
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.open.remove(&id);
            self.remember(id, Closed::Expired);
        }
    }

    fn remember(&mut self, id: SessionId, how: Closed) {
        if self.closed.len() >= REMEMBERED_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((id, how));
    }

    fn closed(&self, id: &SessionId) -> Option<Closed> {
        self.closed
            .iter()
            .rev()
            .find(|(c, _)| c == id)
            .map(|(_, how)| *how)
    }

    fn start(
        &mut self,
        id: SessionId,
        kind: SessionKind,
        eid: [u8; 32],
        deadline: Instant,
    ) -> Result<Vec<Outgoing>, SessionError> {
        if self.open.contains_key(&id) || self.closed(&id).is_some() {
            return Err(SessionError::SessionExists);
        }
        if deadline <= Instant::now() {
            return Err(SessionError::InvalidParameters(
                "deadline already passed".into(),
            ));
        }
        if self.open.len() >= self.max {
            return Err(SessionError::TooManySessions { limit: self.max });
        }
        let started = catch_unwind(AssertUnwindSafe(|| Session::new(kind, eid)))
            .unwrap_or_else(|_| Err(SessionError::Internal("session start panicked".into())));
        match started {
            Ok((session, out)) => {
                self.open.insert(id, (session, deadline));
                Ok(out)
            }
            // Nothing was sent: the id may be used again.
            Err(e) => Err(e),
        }
    }

    fn feed(
        &mut self,
        id: SessionId,
        from: u16,
        declared: MsgType,
        bytes: &[u8],
    ) -> Result<Step, SessionError> {
        let Some((session, _)) = self.open.get_mut(&id) else {
            return Err(self
                .closed(&id)
                .map(Closed::error)
                .unwrap_or(SessionError::UnknownSession));
        };
        let result = catch_unwind(AssertUnwindSafe(|| session.feed(from, declared, bytes)))
            .unwrap_or_else(|_| Err(SessionError::Internal("session panicked".into())));
        let running = session.is_running();
        match &result {
            Ok(Step::Done { .. }) => {
                self.open.remove(&id);
                self.remember(id, Closed::Finished);
            }
            Err(SessionError::InvalidParameters(_)) if running => {}
            Err(_) => {
                self.open.remove(&id);
                self.remember(id, Closed::Aborted);
            }
            Ok(_) => {}
        }
        result
    }
}
