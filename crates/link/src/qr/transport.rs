//! The link over QR codes: each side shows its envelopes as frames in a screen folder and
//! reads the other side's from a folder of captured images. The external relay's
//! [`QrTransport`] shows a request and waits for the reply's frames; the bridge's
//! [`QrServer`] reads requests, runs them through the [`LinkServer`] (signatures,
//! exactly-once, age limits) and shows the replies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::folder::{entries, show_frames, Capture, CaptureStats};
use crate::client::{AnswerCheck, ClientTransport};
use crate::envelope::{Envelope, EnvelopeKind, RequestId};
use crate::error::LinkError;
use crate::server::LinkServer;
use crate::spool::blocking;

/// The two folders of one side of a QR link.
#[derive(Debug, Clone)]
pub struct QrDirs {
    /// Where this side's frames are drawn (one sub-folder per envelope), for a screen or a
    /// printer.
    pub screen: PathBuf,
    /// Where images of the other side's frames arrive, from a camera or a scanner.
    pub captured: PathBuf,
}

/// How long after showing a reply the same request's reply is not shown again: its other
/// frames, read in a later pass, complete the request again, but a retry (after the
/// relay's attempt timed out, seconds later) must see the reply anew.
pub const REPLY_AGAIN_AFTER: Duration = Duration::from_secs(5);
/// How long a reply's frames stay on the bridge's screen.
pub const REPLY_SHOWN_FOR: Duration = Duration::from_secs(3600);

/// The folder name of an envelope's frames: kind, request id and the time it was shown, so
/// a request shown again after a failed attempt is a new folder.
fn folder_name(kind: EnvelopeKind, request_id: &RequestId) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let kind = match kind {
        EnvelopeKind::Request => "request",
        _ => "reply",
    };
    format!("{kind}-{}-{ms}", hex::encode(request_id))
}

/// A captured-images folder and what it completed, shared by the exchanges waiting on it.
struct Reading {
    capture: Capture,
    /// Request ids of the exchanges waiting, and the answer once read.
    waiting: HashMap<RequestId, Option<Vec<u8>>>,
}

/// The external side of the link over QR codes.
pub struct QrTransport {
    screen: PathBuf,
    reading: Arc<Mutex<Reading>>,
    check: AnswerCheck,
    poll: Duration,
}

impl QrTransport {
    /// A transport drawing requests into `dirs.screen` and reading replies from
    /// `dirs.captured` every `poll`; a reply counts only if `check` accepts it.
    pub fn new(dirs: QrDirs, poll: Duration, check: AnswerCheck) -> Result<Self, LinkError> {
        std::fs::create_dir_all(&dirs.screen)?;
        Ok(Self {
            screen: dirs.screen,
            reading: Arc::new(Mutex::new(Reading {
                capture: Capture::new(dirs.captured)?,
                waiting: HashMap::new(),
            })),
            check,
            poll,
        })
    }

    /// What the captured-images folder gave so far.
    pub fn capture_stats(&self) -> CaptureStats {
        self.reading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capture
            .stats()
    }
}

/// An exchange under way: when it ends, however it ends, its frames leave the screen and
/// its request id stops being waited for.
struct Waiting {
    shown: PathBuf,
    reading: Arc<Mutex<Reading>>,
    request_id: RequestId,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.shown);
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        r.waiting.remove(&self.request_id);
    }
}

impl ClientTransport for QrTransport {
    async fn exchange(
        &self,
        request_id: RequestId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        let name = folder_name(EnvelopeKind::Request, &request_id);
        let screen = self.screen.clone();
        self.reading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .insert(request_id, None);
        let _waiting = Waiting {
            shown: screen.join(&name),
            reading: Arc::clone(&self.reading),
            request_id,
        };
        blocking(move || show_frames(&screen, &name, &request)).await?;
        // Unbounded here on purpose: LinkClient bounds each attempt with its timeout.
        loop {
            let (reading, check) = (Arc::clone(&self.reading), self.check.clone());
            let answer = blocking(move || {
                let mut r = reading.lock().unwrap_or_else(|p| p.into_inner());
                for envelope in r.capture.pass()? {
                    // Only what answers an exchange under way, authentically, is kept.
                    if let Some(slot) = check
                        .answered(&envelope)
                        .and_then(|id| r.waiting.get_mut(&id))
                    {
                        *slot = Some(envelope);
                    }
                }
                Ok(r.waiting.get_mut(&request_id).and_then(Option::take))
            })
            .await?;
            if let Some(answer) = answer {
                return Ok(answer);
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// The bridge's side of the link over QR codes.
pub struct QrServer {
    screen: PathBuf,
    capture: Arc<Mutex<Capture>>,
    server: LinkServer,
    poll: Duration,
    /// When each request's reply was last shown.
    shown: Arc<Mutex<HashMap<RequestId, Instant>>>,
}

impl QrServer {
    /// Serves `server`, reading requests from `dirs.captured` every `poll` and drawing
    /// replies into `dirs.screen`.
    pub fn new(dirs: QrDirs, server: LinkServer, poll: Duration) -> Result<Self, LinkError> {
        std::fs::create_dir_all(&dirs.screen)?;
        Ok(Self {
            screen: dirs.screen,
            capture: Arc::new(Mutex::new(Capture::new(dirs.captured)?)),
            server,
            poll,
            shown: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Passes forever; a failing pass is logged, not fatal.
    pub async fn run(&self) -> Result<(), LinkError> {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "QR link: pass failed");
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Reads the captured images there now, runs the requests they completed (at once,
    /// so a slow one does not hold the others) and shows their replies; returns how many
    /// replies it showed.
    pub async fn pass(&self) -> Result<usize, LinkError> {
        let capture = Arc::clone(&self.capture);
        let screen = self.screen.clone();
        let requests = blocking(move || {
            remove_old_replies(&screen);
            capture.lock().unwrap_or_else(|p| p.into_inner()).pass()
        })
        .await?;
        self.shown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, at| at.elapsed() < REPLY_AGAIN_AFTER);
        let mut tasks: tokio::task::JoinSet<Result<bool, LinkError>> = tokio::task::JoinSet::new();
        for request in requests {
            let (server, screen) = (self.server.clone(), self.screen.clone());
            let shown = Arc::clone(&self.shown);
            tasks.spawn(async move {
                let answer = server.answer(&request).await.ok_or_else(|| {
                    LinkError::Malformed("a request refused without an answer".into())
                })?;
                let id = Envelope::decode(&answer)?.request_id;
                {
                    let mut shown = shown.lock().unwrap_or_else(|p| p.into_inner());
                    if shown
                        .get(&id)
                        .is_some_and(|at| at.elapsed() < REPLY_AGAIN_AFTER)
                    {
                        return Ok(false);
                    }
                    shown.insert(id, Instant::now());
                }
                let name = folder_name(EnvelopeKind::Response, &id);
                blocking(move || show_frames(&screen, &name, &answer)).await?;
                Ok(true)
            });
        }
        let mut shown = 0;
        while let Some(done) = tasks.join_next().await {
            match done.map_err(|e| LinkError::Internal(format!("QR request task: {e}")))? {
                Ok(true) => shown += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "QR link: no reply shown"),
            }
        }
        Ok(shown)
    }

    /// What the captured-images folder gave so far.
    pub fn capture_stats(&self) -> CaptureStats {
        self.capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats()
    }
}

/// Takes replies shown longer than [`REPLY_SHOWN_FOR`] off the screen. Only folders are
/// taken, and a failure is logged: cleaning the screen never stops the link.
fn remove_old_replies(screen: &std::path::Path) {
    let Ok(folders) = entries(screen) else {
        return;
    };
    for folder in folders {
        let old = std::fs::symlink_metadata(&folder).is_ok_and(|m| {
            m.is_dir()
                && m.modified()
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > REPLY_SHOWN_FOR)
        });
        if old {
            if let Err(e) = std::fs::remove_dir_all(&folder) {
                tracing::warn!(folder = %folder.display(), error = %e, "QR link: old reply not removed");
            }
        }
    }
}
