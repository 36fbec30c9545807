//! The link over a serial line: the external relay's [`SerialTransport`] and the bridge's
//! [`serve_serial`], one envelope per message, strictly alternating.

use std::path::Path;
use std::sync::Arc;

use super::line::{SerialLine, READ_TIMEOUT};
use crate::client::{AnswerCheck, ClientTransport};
use crate::envelope::RequestId;
use crate::error::LinkError;
use crate::server::LinkServer;

impl SerialLine {
    /// A line on the serial device at `path` (e.g. `/dev/ttyUSB0`) at `baud`, 8N1, no flow
    /// control, opened exclusively.
    pub fn open(path: &Path, baud: u32) -> Result<Self, LinkError> {
        let port = serialport::new(path.to_string_lossy(), baud)
            .timeout(READ_TIMEOUT)
            .open_native()
            .map_err(|e| LinkError::Io(e.into()))?;
        Self::over_tty(port, baud)
    }

    /// A line on an open terminal (a serial device or one end of a pseudo-terminal pair).
    pub fn over_tty(port: serialport::TTYPort, baud: u32) -> Result<Self, LinkError> {
        let reader = port
            .try_clone_native()
            .map_err(|e| LinkError::Io(e.into()))?;
        Self::new(Box::new(reader), Box::new(port), baud)
    }
}

async fn send(line: &Arc<SerialLine>, message: Vec<u8>) -> Result<(), LinkError> {
    let line = Arc::clone(line);
    tokio::task::spawn_blocking(move || line.send(&message))
        .await
        .map_err(|e| LinkError::Internal(format!("serial send task failed: {e}")))?
}

/// The external side of the link over a serial line.
pub struct SerialTransport {
    line: Arc<SerialLine>,
    check: AnswerCheck,
    /// One exchange on the line at a time: an answer is matched to the request before it.
    turn: tokio::sync::Mutex<()>,
}

impl SerialTransport {
    /// A transport over `line`; an answer counts only if `check` accepts it.
    pub fn new(line: SerialLine, check: AnswerCheck) -> Self {
        Self {
            line: Arc::new(line),
            check,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The line under it (for its statistics).
    pub fn line(&self) -> &SerialLine {
        &self.line
    }
}

impl ClientTransport for SerialTransport {
    async fn exchange(
        &self,
        request_id: RequestId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, LinkError> {
        let _turn = self.turn.lock().await;
        send(&self.line, request).await?;
        loop {
            let answer = self.line.recv().await?;
            // An answer to an earlier attempt that timed out arrives late: not this one's;
            // nor is anything not signed by the bridge.
            if self.check.answered(&answer) == Some(request_id) {
                return Ok(answer);
            }
            tracing::debug!("serial link: an answer to another request skipped");
        }
    }
}

/// Serves the link on `line` until the line closes: each message is a request envelope,
/// answered (or refused, if its sender can be told) in order.
pub async fn serve_serial(line: SerialLine, server: LinkServer) -> Result<(), LinkError> {
    let line = Arc::new(line);
    loop {
        let request = line.recv().await?;
        let Some(answer) = server.answer(&request).await else {
            continue;
        };
        // An answer the relay did not take (it gave up, the cable was out) is stored: its
        // retry gets it. The line keeps serving.
        if let Err(e) = send(&line, answer).await {
            tracing::warn!(error = %e, "serial link: answer not delivered");
        }
    }
}
