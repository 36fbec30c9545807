//! The link over QR codes: each side shows its envelopes as frames in a screen folder and
//! reads the other side's from a folder of captured images. The external relay's
//! [`QrTransport`] shows a request and waits for the reply's frames; the bridge's
//! [`QrServer`] reads requests, runs them through the [`LinkServer`] (signatures,
//! exactly-once, age limits) and shows the replies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::folder::{entries, show_frames, Capture, CaptureStats};
use crate::client::ClientTransport;
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

/// Answers read but not yet asked for, kept for exchanges still waiting.
const MAX_UNCLAIMED: usize = 64;
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
    unclaimed: HashMap<RequestId, Vec<u8>>,
}

/// The external side of the link over QR codes.
pub struct QrTransport {
    screen: PathBuf,
    reading: Arc<Mutex<Reading>>,
    poll: Duration,
}

impl QrTransport {
    /// A transport drawing requests into `dirs.screen` and reading replies from
    /// `dirs.captured` every `poll`.
    pub fn new(dirs: QrDirs, poll: Duration) -> Result<Self, LinkError> {
        std::fs::create_dir_all(&dirs.screen)?;
        Ok(Self {
            screen: dirs.screen,
            reading: Arc::new(Mutex::new(Reading {
                capture: Capture::new(dirs.captured)?,
                unclaimed: HashMap::new(),
            })),
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

/// Removes a request's frames from the screen when its exchange ends, however it ends.
struct Shown(PathBuf);

impl Drop for Shown {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
        let _shown = Shown(screen.join(&name));
        blocking(move || show_frames(&screen, &name, &request)).await?;
        // Unbounded here on purpose: LinkClient bounds each attempt with its timeout.
        loop {
            let reading = Arc::clone(&self.reading);
            let answer = blocking(move || {
                let mut r = reading.lock().unwrap_or_else(|p| p.into_inner());
                for envelope in r.capture.pass()? {
                    let Ok(id) = Envelope::decode(&envelope).map(|e| e.request_id) else {
                        continue;
                    };
                    if r.unclaimed.len() == MAX_UNCLAIMED {
                        r.unclaimed.clear();
                    }
                    r.unclaimed.insert(id, envelope);
                }
                Ok(r.unclaimed.remove(&request_id))
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
            remove_old_replies(&screen)?;
            capture.lock().unwrap_or_else(|p| p.into_inner()).pass()
        })
        .await?;
        let mut tasks = tokio::task::JoinSet::new();
        for request in requests {
            let (server, screen) = (self.server.clone(), self.screen.clone());
            tasks.spawn(async move {
                let answer = match server.handle_request(&request).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(error = %e, "QR link: request refused");
                        server.refusal_reply(&request, &e).ok_or(e)?
                    }
                };
                let id = Envelope::decode(&answer)?.request_id;
                let name = folder_name(EnvelopeKind::Response, &id);
                blocking(move || show_frames(&screen, &name, &answer)).await
            });
        }
        let mut shown = 0;
        while let Some(done) = tasks.join_next().await {
            match done.map_err(|e| LinkError::Internal(format!("QR request task: {e}")))? {
                Ok(_) => shown += 1,
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

/// Takes replies shown longer than [`REPLY_SHOWN_FOR`] off the screen.
fn remove_old_replies(screen: &std::path::Path) -> Result<(), LinkError> {
    for folder in entries(screen)? {
        let age = std::fs::metadata(&folder)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        if age > REPLY_SHOWN_FOR {
            std::fs::remove_dir_all(&folder)?;
        }
    }
    Ok(())
}
