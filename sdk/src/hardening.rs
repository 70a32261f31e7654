//! Process hardening for everything that holds key material.
//!
//! The root key, shares and the keyring must never reach a core file or
//! swap: core dumps are disabled, the process is marked non-dumpable (which
//! also stops same-user ptrace and /proc/<pid>/mem reads), and, when asked,
//! memory is locked so it cannot be swapped out.
//!
//! Locking is opt-in: `mlockall(MCL_FUTURE)` makes every later allocation
//! count against `RLIMIT_MEMLOCK`, and an unprivileged process past that
//! limit fails to allocate. Turn it on where the limit is raised (systemd
//! `LimitMEMLOCK=`, or `CAP_IPC_LOCK`).

/// What [`harden_process`] achieved; a step the OS refused is reported, not
/// fatal (unprivileged containers often forbid `mlockall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `RLIMIT_CORE` set to 0.
    pub core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` cleared.
    pub non_dumpable: bool,
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` was asked for and succeeded.
    pub memory_locked: bool,
}

/// Applies every hardening step the OS allows, locking memory only if
/// `lock_memory`. Call first thing in `main`.
pub fn harden_process(lock_memory: bool) -> Hardening {
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
    let memory_locked = lock_memory
        && rustix::mm::mlockall(
            rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE,
        )
        .is_ok();
    Hardening {
        core_dumps_disabled,
        non_dumpable,
        memory_locked,
    }
}
