//! Process hardening for everything that holds key material.
//!
//! The root key, shares and the keyring must never reach a core file or
//! swap: core dumps are disabled, the process is marked non-dumpable (which
//! also stops same-user ptrace and /proc/<pid>/mem reads), and memory is
//! locked so it cannot be swapped out, where the OS allows it.
//!
//! `mlockall(MCL_FUTURE)` makes every later mapping count against
//! `RLIMIT_MEMLOCK`, and a process past that limit fails to allocate (and
//! aborts). So by default ([`MemoryLock::Auto`]) memory is locked only when
//! no limit applies: the process has `CAP_IPC_LOCK` or an unlimited
//! `RLIMIT_MEMLOCK` (systemd `LimitMEMLOCK=infinity`). Otherwise it runs
//! unlocked and says so. [`MemoryLock::Required`] locks whatever the limit
//! and refuses to start if the OS says no. Pages are locked as they are
//! first touched (`MCL_ONFAULT`), so locking does not inflate resident
//! memory with reserved but unused mappings.

use std::fmt;
use std::str::FromStr;

/// Whether to lock the process's memory (flag `--lock-memory`, variable
/// `SPIKE_LOCK_MEMORY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryLock {
    /// Lock when no memory-lock limit applies; otherwise warn and go on.
    #[default]
    Auto,
    /// Lock or refuse to start (`true`, and a bare `--lock-memory`, mean
    /// this, as before the default changed).
    Required,
    /// Never lock (`false`).
    Off,
}

impl FromStr for MemoryLock {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "required" | "true" | "on" => Ok(Self::Required),
            "off" | "false" => Ok(Self::Off),
            _ => Err(format!("{text:?} is not auto, required or off")),
        }
    }
}

impl fmt::Display for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Required => "required",
            Self::Off => "off",
        })
    }
}

/// What [`harden_process`] achieved; a step the OS refused is reported, not
/// fatal (unprivileged containers often forbid `mlockall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `RLIMIT_CORE` set to 0.
    pub core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` cleared.
    pub non_dumpable: bool,
    /// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` succeeded.
    pub memory_locked: bool,
    /// Locking was the default ([`MemoryLock::Auto`]) and did not happen:
    /// the server says so once its configuration is known to be good
    /// ([`crate::cli::warn_if_unlocked`]).
    pub unlocked_by_default: bool,
}

/// Applies every hardening step the OS allows, locking memory as `lock`
/// says, and makes files the process creates private (umask 077). Call
/// first thing in `main`, before any thread starts.
pub fn harden_process(lock: MemoryLock) -> Hardening {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};

    let core_dumps_disabled = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok();
    let non_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    // Everything the process creates (data, snapshots, backups, logs) is
    // readable by its own user only: paths, names and times are not public.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let memory_locked = match lock {
        MemoryLock::Off => false,
        MemoryLock::Auto => memory_lock_hazard().is_none() && lock_all(),
        MemoryLock::Required => lock_all(),
    };
    Hardening {
        core_dumps_disabled,
        non_dumpable,
        memory_locked,
        unlocked_by_default: lock == MemoryLock::Auto && !memory_locked,
    }
}

fn lock_all() -> bool {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT).is_ok()
}

/// Why locking all memory could make this process fail to allocate later,
/// or `None` when no limit applies (`CAP_IPC_LOCK`, or an unlimited
/// `RLIMIT_MEMLOCK`, to which a lower soft limit is raised here).
pub fn memory_lock_hazard() -> Option<String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use rustix::thread::{CapabilitySet, capabilities};

    if capabilities(None).is_ok_and(|sets| sets.effective.contains(CapabilitySet::IPC_LOCK)) {
        return None;
    }
    let limit = getrlimit(Resource::Memlock);
    if limit.maximum.is_none() {
        let unlimited = Rlimit {
            current: None,
            maximum: None,
        };
        if limit.current.is_none() || setrlimit(Resource::Memlock, unlimited).is_ok() {
            return None;
        }
    }
    let bytes = limit
        .current
        .map_or_else(|| "unlimited".to_owned(), |bytes| format!("{bytes} bytes"));
    Some(format!(
        "RLIMIT_MEMLOCK is {bytes} and the process lacks CAP_IPC_LOCK; set \
         LimitMEMLOCK=infinity (systemd), `ulimit -l unlimited`, or grant CAP_IPC_LOCK"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_its_names_and_the_old_booleans() {
        assert_eq!(MemoryLock::default(), MemoryLock::Auto);
        for (text, lock) in [
            ("auto", MemoryLock::Auto),
            ("Required", MemoryLock::Required),
            ("true", MemoryLock::Required),
            ("off", MemoryLock::Off),
            ("false", MemoryLock::Off),
        ] {
            assert_eq!(text.parse::<MemoryLock>(), Ok(lock));
        }
        assert!("sometimes".parse::<MemoryLock>().is_err());
        assert_eq!(MemoryLock::Required.to_string(), "required");
    }
}
