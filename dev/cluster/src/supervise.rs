//! Starting, signalling and watching the cluster's processes.
//!
//! Only processes recorded in `cluster.json` are ever signalled, and only
//! while `/proc` shows them still running the binary recorded for their
//! role: a pid reused by some other program is left alone.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::command::command;
use crate::file::{ClusterFile, Process, Role};
use crate::sockets::{self, SocketsError};
use crate::spire::{self, SpireError};

pub use crate::pid::{NotAPid, Pid};
pub use rustix::process::Signal;

/// Longest wait for `ip netns exec` to exec the program.
const EXEC_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the dev Workload API to create every socket.
const SOCKETS_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a signalled process to exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Longest a process caught mid-exec may show an empty command line.
const EXEC_CMDLINE_WAIT: Duration = Duration::from_millis(500);

/// A process that could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The caller asked to start a process that runs.
    #[error("{name} already runs (pid {pid})")]
    AlreadyRuns {
        /// The process.
        name: String,
        /// Its pid.
        pid: Pid,
    },
    /// The Workload API's sockets directory is unusable.
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    /// The log cannot be opened (permissions, disk).
    #[error("cannot open {}: {source}", path.display())]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The binary is missing or cannot run (`cargo build --bins` first).
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// `ip netns exec` never exec'd the program (no such namespace, no
    /// privileges).
    #[error("{name} did not start in its namespace; see {}", log.display())]
    NotInNamespace {
        /// The process.
        name: String,
        /// Its log.
        log: PathBuf,
    },
    /// The dev Workload API exited before serving.
    #[error("the dev Workload API exited ({status}): {last_words}")]
    WorkloadApiExited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last line of its log (or where the log is).
        last_words: String,
    },
    /// The dev Workload API runs but did not create a socket in time.
    #[error(
        "the dev Workload API did not create {} in {} s; see {}",
        socket.display(),
        SOCKETS_WAIT.as_secs(),
        log.display()
    )]
    NoSocket {
        /// The socket.
        socket: PathBuf,
        /// The server's log.
        log: PathBuf,
    },
    /// The SPIRE server or an agent could not be set up or did not serve.
    #[error(transparent)]
    Spire(#[from] SpireError),
    /// A replica's data directory could not be handed to its user.
    #[error("cannot give {} to uid {uid}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The replica's user.
        uid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel refused the signal.
    #[error("cannot signal {name} (pid {pid}): {source}")]
    Signal {
        /// The process.
        name: String,
        /// Its pid.
        pid: Pid,
        /// Why.
        source: rustix::io::Errno,
    },
}

/// Starts process `index` of `cluster` from the binaries in `bin_dir` and
/// records its pid; the dev Workload API is waited for until it serves
/// every identity.
pub fn start(
    cluster: &mut ClusterFile,
    index: usize,
    bin_dir: &Path,
) -> Result<(), SuperviseError> {
    let process = cluster.processes[index].clone();
    if let Some(pid) = running(&process) {
        return Err(SuperviseError::AlreadyRuns {
            name: process.name,
            pid,
        });
    }
    match &process.role {
        Role::WorkloadApi => sockets::make_private(&cluster.sockets_dir)?,
        Role::SpireServer => {
            sockets::make_reachable(&cluster.dir, &cluster.sockets_dir)?;
            spire::prepare(cluster, &process)?;
        }
        Role::SpireAgent => spire::prepare(cluster, &process)?,
        Role::Nexus(replica) => {
            if let Some(uid) = process.uid {
                give_to(&replica.data_dir, uid)?;
            }
        }
        Role::Keeper(_) => {}
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&process.log)
        .and_then(|log| Ok((log.try_clone()?, log)))
        .map_err(|source| SuperviseError::Log {
            path: process.log.clone(),
            source,
        })?;
    let spawn_failed = |source| SuperviseError::Spawn {
        name: process.name.clone(),
        source,
    };
    let mut child = command(cluster, &process, bin_dir)
        .stdin(Stdio::null())
        .stdout(log.0)
        .stderr(log.1)
        // Its own process group: a Ctrl-C aimed at whoever ran `up` does
        // not reach the cluster.
        .process_group(0)
        .spawn()
        .map_err(spawn_failed)?;
    let pid =
        Pid::try_from(child.id()).map_err(|error| spawn_failed(std::io::Error::other(error)))?;
    cluster.processes[index].pid = Some(pid);
    if process.netns.is_some() {
        // `ip` has not necessarily exec'd the program yet.
        let deadline = Instant::now() + EXEC_WAIT;
        while running(&cluster.processes[index]).is_none() {
            if Instant::now() > deadline {
                return Err(SuperviseError::NotInNamespace {
                    name: process.name,
                    log: process.log,
                });
            }
            sleep(Duration::from_millis(5));
        }
    }
    match process.role {
        Role::WorkloadApi => wait_for_sockets(cluster, &mut child, &process.log)?,
        Role::SpireServer | Role::SpireAgent => {
            let mut exited = || matches!(child.try_wait(), Ok(Some(_)));
            spire::started(cluster, &process, &mut exited)?;
        }
        Role::Keeper(_) | Role::Nexus(_) => {}
    }
    Ok(())
}

/// Creates `dir` (0700) if need be and hands it to `uid`: a replica run as
/// a user of its own writes its data there.
fn give_to(dir: &Path, uid: u32) -> Result<(), SuperviseError> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = |source| SuperviseError::DataDir {
        path: dir.to_owned(),
        uid,
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).map_err(failed)
}

/// Waits until the dev Workload API serves every process's socket.
fn wait_for_sockets(
    cluster: &ClusterFile,
    server: &mut Child,
    log: &Path,
) -> Result<(), SuperviseError> {
    let deadline = Instant::now() + SOCKETS_WAIT;
    for socket in cluster
        .processes
        .iter()
        .filter_map(|process| process.spiffe_endpoint_socket.as_deref())
    {
        let path = Path::new(socket.trim_start_matches("unix://"));
        while !path.exists() {
            // A server that exited will not create it: say why at once.
            if let Ok(Some(status)) = server.try_wait() {
                return Err(SuperviseError::WorkloadApiExited {
                    status,
                    last_words: last_line(log).unwrap_or_else(|| format!("see {}", log.display())),
                });
            }
            if Instant::now() > deadline {
                return Err(SuperviseError::NoSocket {
                    socket: path.to_owned(),
                    log: log.to_owned(),
                });
            }
            sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The last non-empty line of a log, for an error message, without
/// terminal colour sequences (a process started by hand, or by another
/// tool, may have written them).
pub fn last_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .map(without_colours)
        .find(|line| !line.trim().is_empty())
}

/// `line` without its ANSI SGR sequences (`ESC [ ... m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The pid of `process` if it still runs the binary recorded for its role.
pub fn running(process: &Process) -> Option<Pid> {
    running_as(process.pid?, process.role.binary())
}

/// `pid` if it runs a program named `expected` (and is no zombie).
fn running_as(pid: Pid, expected: &str) -> Option<Pid> {
    // A process in the middle of exec (its parent already resumed) shows
    // an empty command line until the kernel has laid out its arguments;
    // on a loaded machine that takes a while, and reading it as "not
    // running" made `up` report a replica it had just started as exited.
    // Only a kernel thread or a zombie stays empty.
    let deadline = Instant::now() + EXEC_CMDLINE_WAIT;
    loop {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie (exited, not yet reaped by its parent) does not run.
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if zombie {
            return None;
        }
        if cmdline.is_empty() {
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(5));
            continue;
        }
        let program = cmdline.split(|byte| *byte == 0).next()?;
        let program = Path::new(std::str::from_utf8(program).ok()?);
        return (program.file_name()? == expected).then_some(pid);
    }
}

/// Sends `signal` to process `index` if it runs and waits (a while) for it
/// to exit; forgets its pid either way. Returns the pid it had, if it ran.
pub fn signal(
    cluster: &mut ClusterFile,
    index: usize,
    signal: Signal,
) -> Result<Option<Pid>, SuperviseError> {
    let process = &cluster.processes[index];
    let stopped = running(process);
    if let Some(pid) = stopped {
        rustix::process::kill_process(pid.0, signal).map_err(|source| SuperviseError::Signal {
            name: process.name.clone(),
            pid,
            source,
        })?;
        let deadline = Instant::now() + EXIT_WAIT;
        while running(process).is_some() && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
    }
    cluster.processes[index].pid = None;
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_words_of_a_log_carry_no_colour_sequences() {
        assert_eq!(
            without_colours(
                "\u{1b}[2m2026-12-07T12:00:00Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m cannot bind"
            ),
            "2026-12-07T12:00:00Z ERROR cannot bind"
        );
        assert_eq!(without_colours("plain"), "plain");
    }

    #[test]
    fn a_process_just_started_runs_and_one_that_exited_does_not() {
        // Right after spawn returns, the child may still be in exec with an
        // empty command line: it must count as running all the same.
        for _ in 0..20 {
            let mut child = std::process::Command::new("sleep")
                .arg("10")
                .process_group(0)
                .spawn()
                .expect("spawn sleep");
            let pid = Pid::try_from(child.id()).expect("a pid");
            assert_eq!(running_as(pid, "sleep"), Some(pid));
            assert_eq!(running_as(pid, "nexus"), None);
            child.kill().expect("kill");
            child.wait().expect("reap");
            assert_eq!(running_as(pid, "sleep"), None);
        }
    }

    #[test]
    fn a_pid_is_positive_and_fits_the_kernel_type() {
        assert!(Pid::try_from(0).is_err());
        assert!(Pid::try_from(u32::MAX).is_err());
        assert_eq!(Pid::try_from(42).map(Pid::get), Ok(42));
        assert_eq!(
            serde_json::from_str::<Pid>("7")
                .map(Pid::get)
                .expect("reads"),
            7
        );
        assert!(serde_json::from_str::<Pid>("0").is_err());
    }
}
