//! The physical channel between a cluster's relay and its bridge when it is not a network:
//! for a local deployment, a camera filming each side's screen folder with damage
//! ([`QrCameras`]), or a serial cable between two pseudo-terminals ([`SerialCable`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use custos_link::qr::damage::{Damage, DamagedCamera, Filmed};
use custos_link::qr::QrDirs;
use serialport::{SerialPort, TTYPort};

/// The folders of a QR link under `dir`: (relay's, bridge's).
pub fn qr_dirs(dir: &Path) -> (QrDirs, QrDirs) {
    let base = dir.join("link-qr");
    let side = |name: &str| QrDirs {
        screen: base.join(name).join("screen"),
        captured: base.join(name).join("captured"),
    };
    (side("relay"), side("bridge"))
}

/// Which way a filmed envelope went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A request, relay screen to bridge camera.
    ToBridge,
    /// A reply, bridge screen to relay camera.
    ToRelay,
}

/// Two cameras, each filming one side's screen into the other's captured folder through a
/// [`Damage`]d channel, until dropped.
pub struct QrCameras {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    filmed: Arc<Mutex<Vec<(Direction, Filmed)>>>,
}

impl QrCameras {
    /// Starts filming between the QR folders under `dir` ([`qr_dirs`]).
    pub fn start(dir: &Path, damage: Damage) -> std::io::Result<Self> {
        let (relay, bridge) = qr_dirs(dir);
        for d in [
            &relay.screen,
            &relay.captured,
            &bridge.screen,
            &bridge.captured,
        ] {
            std::fs::create_dir_all(d)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let filmed = Arc::new(Mutex::new(Vec::new()));
        let (stopping, log) = (Arc::clone(&stop), Arc::clone(&filmed));
        let thread = std::thread::Builder::new()
            .name("custos-qr-cameras".into())
            .spawn(move || {
                let mut to_bridge = DamagedCamera::new(damage);
                let mut to_relay = DamagedCamera::new(Damage {
                    seed: damage.seed.wrapping_add(1),
                    ..damage
                });
                let mut legs = [
                    (
                        &mut to_bridge,
                        &relay.screen,
                        &bridge.captured,
                        Direction::ToBridge,
                    ),
                    (
                        &mut to_relay,
                        &bridge.screen,
                        &relay.captured,
                        Direction::ToRelay,
                    ),
                ];
                while !stopping.load(Ordering::Relaxed) {
                    for (camera, screen, captured, direction) in legs.iter_mut() {
                        match camera.film(screen, captured) {
                            Ok(f) => log
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(f.into_iter().map(|f| (*direction, f))),
                            // A folder taken off the screen while being filmed.
                            Err(e) => tracing::debug!(error = %e, "QR camera: pass failed"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            filmed,
        })
    }

    /// Everything filmed so far, in order.
    pub fn filmed(&self) -> Vec<(Direction, Filmed)> {
        self.filmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for QrCameras {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A null-modem cable between two pseudo-terminals: what one end's device writes, the
/// other's reads. The relay opens one device path, the bridge the other.
pub struct SerialCable {
    /// The relay's device.
    pub relay_device: PathBuf,
    /// The bridge's device.
    pub bridge_device: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Held open so a device closed and opened again by its process (a restart) does not
    /// end the cable.
    _ends: [TTYPort; 2],
}

impl SerialCable {
    /// Two pseudo-terminal pairs and the threads carrying bytes between their masters.
    pub fn start() -> std::io::Result<Self> {
        let (relay_master, relay_end) = TTYPort::pair().map_err(std::io::Error::from)?;
        let (bridge_master, bridge_end) = TTYPort::pair().map_err(std::io::Error::from)?;
        let device = |end: &TTYPort| {
            end.name()
                .map(PathBuf::from)
                .ok_or_else(|| std::io::Error::other("a pseudo-terminal without a name"))
        };
        let (relay_device, bridge_device) = (device(&relay_end)?, device(&bridge_end)?);
        let stop = Arc::new(AtomicBool::new(false));
        let clone = |p: &TTYPort| p.try_clone_native().map_err(std::io::Error::from);
        let threads = vec![
            carry(
                clone(&relay_master)?,
                clone(&bridge_master)?,
                Arc::clone(&stop),
            )?,
            carry(bridge_master, relay_master, Arc::clone(&stop))?,
        ];
        Ok(Self {
            relay_device,
            bridge_device,
            stop,
            threads,
            _ends: [relay_end, bridge_end],
        })
    }
}

fn carry(
    mut from: TTYPort,
    mut to: TTYPort,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    use std::io::{Read, Write};
    std::thread::Builder::new()
        .name("custos-serial-cable".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match from.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        if to.write_all(&buf[..n]).is_err() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    // Timeouts, and a device between two opens.
                    _ => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
}

impl Drop for SerialCable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
