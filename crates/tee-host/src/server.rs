//! The TEE core's socket server: one thread per connection; requests are serialized through
//! a single core thread (the core is one state machine, like an enclave's single entry
//! point), which takes every request waiting at that moment as one batch with one storage
//! commit (group commit) — the way databases turn many small durable writes into one flush.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use custos_wire::frame::{read_frame, refusal_payload, write_frame, FrameError, Kind, RefusalCode};

/// Most simultaneous connections (node server, admin tools, sync workers).
pub const MAX_CONNECTIONS: usize = 64;
const CONNECTION_STACK: usize = 512 * 1024;
/// Bytes a connection reads at once: a usual request whole, header and payload.
const READ_BUFFER: usize = 16 * 1024;
/// Most requests handled under one storage commit.
pub const MAX_BATCH: usize = 256;

/// A request for the core thread and where to send its response.
type Job = (Vec<u8>, SyncSender<Vec<u8>>);

/// The core thread: drains whatever is queued (up to [`MAX_BATCH`]), handles it with one
/// commit, answers each. Ends when every connection sender is gone.
fn run_core<P: Platform>(mut core: TeeCore<P>, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let requests: Vec<&[u8]> = batch.iter().map(|(r, _)| r.as_slice()).collect();
        let responses = core.handle_batch(&requests);
        for ((_, reply), response) in batch.into_iter().zip(responses) {
            // A connection that went away no longer needs its answer.
            let _ = reply.send(response);
        }
    }
}

/// Binds the socket, replacing a stale socket file only if nothing answers on it, and
/// restricts it to the owner (0600).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a TEE core is already serving on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Only the same user as the TEE process (the node server runs as it) or root may talk to
/// the core; the socket's mode says the same, this holds even if the mode is loosened.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = getsockopt(stream, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not use this TEE (owner uid {me})",
            cred.uid()
        ))
    }
}

fn refuse(mut stream: &UnixStream, code: RefusalCode, message: &str) {
    let _ = write_frame(&mut stream, Kind::Refusal, &refusal_payload(code, message));
}

fn handle_connection(stream: UnixStream, core: &SyncSender<Job>) {
    if let Err(why) = peer_allowed(&stream) {
        tracing::warn!(%why, "refused TEE connection");
        refuse(&stream, RefusalCode::PeerRejected, &why);
        return;
    }
    // A request's header and payload arrive together: one read takes both.
    let mut reader = io::BufReader::with_capacity(READ_BUFFER, &stream);
    loop {
        match read_frame(&mut reader, custos_wire::frame::MAX_REQUEST) {
            Ok((Kind::Request, payload)) => {
                let (reply, answer) = mpsc::sync_channel(1);
                if core.send((payload, reply)).is_err() {
                    return;
                }
                let Ok(response) = answer.recv() else {
                    return;
                };
                if write_frame(&mut &stream, Kind::Response, &response).is_err() {
                    return;
                }
            }
            Ok((kind, _)) => {
                refuse(
                    &stream,
                    RefusalCode::BadKind,
                    &format!("expected a request frame, got {kind:?}"),
                );
                return;
            }
            Err(FrameError::Invalid { code, message }) => {
                tracing::warn!(?code, %message, "refused malformed frame");
                refuse(&stream, code, &message);
                return;
            }
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => return,
        }
    }
}

/// Serves the core on `listener` until the process ends.
pub fn serve<P: Platform + Send + 'static>(
    listener: UnixListener,
    core: TeeCore<P>,
) -> io::Result<()> {
    let (jobs, queue) = mpsc::sync_channel::<Job>(MAX_BATCH * 4);
    std::thread::Builder::new()
        .name("tee-core".into())
        .spawn(move || run_core(core, queue))?;
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(&stream, RefusalCode::Busy, "too many connections");
            continue;
        }
        let core = jobs.clone();
        let active_c = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("tee-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                handle_connection(stream, &core);
                active_c.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}
