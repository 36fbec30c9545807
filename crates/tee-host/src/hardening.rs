//! Process hardening for the TEE core process (software backend).
//!
//! What a real TEE gives by construction, approximated for an ordinary process: no core
//! dumps (secrets would land on disk), not dumpable and so not ptrace-attachable by other
//! processes of the same user, and memory locked so secrets are never swapped out. All
//! calls go through `nix`'s safe wrappers, so this module needs no `unsafe` of its own.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What hardening achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardeningReport {
    /// RLIMIT_CORE is 0.
    pub core_dumps_disabled: bool,
    /// PR_SET_DUMPABLE is 0 (no ptrace attach, no /proc/pid/mem for others).
    pub not_dumpable: bool,
    /// `None` if all current and future memory is locked; otherwise why not.
    pub memory_not_locked: Option<String>,
}

/// A hardening step that must not fail did fail.
#[derive(Debug, thiserror::Error)]
#[error("process hardening failed: {0}")]
pub struct HardeningError(String);

/// Applies hardening. Disabling core dumps and ptrace is mandatory; locking memory is done
/// where the memlock limit permits (raising it needs CAP_IPC_LOCK) and reported otherwise,
/// because locking with a small limit would make later allocations fail.
pub fn harden_process() -> Result<HardeningReport, HardeningError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| HardeningError(format!("setrlimit(RLIMIT_CORE, 0): {e}")))?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| HardeningError(format!("prctl(PR_SET_DUMPABLE, 0): {e}")))?;
    let _ = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY);
    let memory_not_locked = match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => {
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => None,
                Err(e) => Some(format!("mlockall: {e}")),
            }
        }
        Ok((soft, _)) => Some(format!(
            "RLIMIT_MEMLOCK is {soft} bytes and cannot be raised (needs CAP_IPC_LOCK)"
        )),
        Err(e) => Some(format!("getrlimit(RLIMIT_MEMLOCK): {e}")),
    };
    Ok(HardeningReport {
        core_dumps_disabled: true,
        not_dumpable: !nix::sys::prctl::get_dumpable().unwrap_or(true),
        memory_not_locked,
    })
}
