//! anvil and cast, Foundry's Ethereum node and client, as the npm registry ships them
//! (`@foundry-rs/anvil`, `@foundry-rs/cast`, pinned): where `scripts/test-deps.sh` (or the
//! demo) installs them, and the platform binaries themselves. The `.bin` entries are Node
//! wrappers whose child would outlive a kill of the wrapper (and hold its caller's pipes), so
//! whoever starts anvil starts the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pinned packages.
pub const PACKAGES: [&str; 2] = ["@foundry-rs/anvil@1.7.1", "@foundry-rs/cast@1.7.1"];

/// Where they are installed: `$HOME/.cache/custos/node`.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/custos/node"))
}

/// The platform binary of `tool` (`anvil`, `cast`) under `dir`, if installed
/// (`node_modules/@foundry-rs/<tool>-<platform>/bin/<tool>`).
pub fn tool(dir: &Path, tool: &str) -> Option<PathBuf> {
    let scope = dir.join("node_modules/@foundry-rs");
    std::fs::read_dir(scope)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{tool}-")))
        })
        .map(|e| e.path().join("bin").join(tool))
        .find(|p| p.exists())
}

/// anvil's and cast's binaries, installed under [`dir`] from the npm registry first when
/// they are missing and npm is at hand.
pub fn anvil_and_cast() -> Option<(PathBuf, PathBuf)> {
    let dir = dir()?;
    let both = || Some((tool(&dir, "anvil")?, tool(&dir, "cast")?));
    if let Some(found) = both() {
        return Some(found);
    }
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .args(PACKAGES)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    installed.is_ok_and(|s| s.success()).then(both).flatten()
}

/// Starts anvil on the loopback `port`, its output discarded.
pub fn start_anvil(anvil: &Path, port: u16) -> std::io::Result<std::process::Child> {
    Command::new(anvil)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--silent",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}
