//! Teardown on SIGINT and SIGTERM: a `kill` of the benchmark (or of
//! `bench/run`, which execs it) takes down every process it started.
//!
//! spike-bench makes itself a child subreaper at start, so the processes
//! `spike-dev-cluster` leaves running (keepers, replicas, the dev Workload
//! API, each in a process group of its own) become its children when the
//! launcher exits, beside the etcd members it starts itself. On a signal
//! it refuses to start anything more ([`spawn`]), runs `spike-dev-cluster
//! down` on each cluster, sends SIGTERM to each of its child processes by
//! pid (SIGKILL to those still there after [`GRACE`]), removes its work
//! directories and exits with 128 + the signal's number. Children that
//! exit during the run stay zombies until spike-bench exits: they are
//! few (one per killed member) and reaping them here would race the
//! `wait` of the code that started them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};
use spike_dev_cluster::Launcher;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How long children get to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long SIGKILLed children get to go before spike-bench exits anyway.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// What a teardown must stop and remove.
struct Registry {
    /// Set once a signal came: nothing more is started.
    stopping: bool,
    /// Clusters of ours, by directory (taken down with their launcher).
    clusters: Vec<(PathBuf, Launcher)>,
    /// Work directories, removed last.
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    stopping: false,
    clusters: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Becomes a child subreaper and starts listening for SIGINT and SIGTERM.
/// Call once, inside the runtime, before starting any process. The
/// receiver turns true when a teardown begins: the caller drops its work
/// then (no more load against clusters going away) and waits for the exit.
pub fn install() -> anyhow::Result<watch::Receiver<bool>> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("cannot become a child subreaper")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (began, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let (name, code) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", 128 + 2),
            _ = terminate.recv() => ("SIGTERM", 128 + 15),
        };
        eprintln!("spike-bench: {name}: stopping every process it started");
        let (clusters, dirs) = {
            let mut registry = registry();
            registry.stopping = true;
            (
                std::mem::take(&mut registry.clusters),
                std::mem::take(&mut registry.dirs),
            )
        };
        let _ = began.send(true);
        // Blocking work (waiting for processes) off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || tear_down_and_exit(clusters, dirs, code)).await;
    });
    Ok(receiver)
}

/// True once a signal came; the caller then waits for the exit instead of
/// returning (its error would race the teardown).
pub fn stopping() -> bool {
    registry().stopping
}

/// Starts `command` unless a teardown has begun (then it would outlive
/// the sweep of children).
pub fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    let registry = registry();
    if registry.stopping {
        bail!(
            "interrupted: not starting {}",
            command.get_program().to_string_lossy()
        );
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))
}

/// Remembers the cluster of `launcher` in `dir`, to take down on a signal.
pub fn add_cluster(dir: &Path, launcher: Launcher) {
    registry().clusters.push((dir.to_owned(), launcher));
}

/// Forgets the cluster in `dir` (taken down by its owner).
pub fn remove_cluster(dir: &Path) {
    registry().clusters.retain(|(known, _)| known != dir);
}

/// A temporary work directory: removed on drop, or by the teardown after
/// the processes using it are gone (a drop of the work on a signal must
/// not pull it from under them).
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// A new directory in the system's temporary directory.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let mut registry = registry();
        if registry.stopping {
            bail!("interrupted: no new work directory");
        }
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot make a work directory")?
            .keep();
        registry.dirs.push(path.clone());
        Ok(Self(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let mut registry = registry();
        if !registry.stopping {
            registry.dirs.retain(|dir| *dir != self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tear_down_and_exit(clusters: Vec<(PathBuf, Launcher)>, dirs: Vec<PathBuf>, code: i32) -> ! {
    // First the children: a launcher still starting a cluster stops, and
    // what it started comes to us.
    let mut signalled = Vec::new();
    signal_new_children(&mut signalled, Signal::TERM);
    for (dir, launcher) in clusters {
        // Before its `up` wrote the file there is nothing to take down by
        // name; the sweep below stops what it started.
        if !dir.join(spike_dev_cluster::file::FILE_NAME).exists() {
            continue;
        }
        if let Err(error) = launcher.down() {
            eprintln!("spike-bench: down {}: {error}", dir.display());
        }
    }
    let began = Instant::now();
    while !live_children().is_empty() && began.elapsed() < GRACE {
        signal_new_children(&mut signalled, Signal::TERM);
        std::thread::sleep(Duration::from_millis(20));
    }
    let began = Instant::now();
    loop {
        let live = live_children();
        if live.is_empty() {
            break;
        }
        if began.elapsed() > KILL_WAIT {
            eprintln!("spike-bench: processes {live:?} outlive SIGKILL");
            break;
        }
        for pid in live {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(code)
}

/// Sends `signal` to each live child not in `signalled` yet.
fn signal_new_children(signalled: &mut Vec<Pid>, signal: Signal) {
    for pid in live_children() {
        if !signalled.contains(&pid) {
            let _ = rustix::process::kill_process(pid, signal);
            signalled.push(pid);
        }
    }
}

/// This process's children that have not exited (zombies excluded), from
/// /proc.
fn live_children() -> Vec<Pid> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "PID (COMM) STATE PPID ...": COMM may hold anything but the
            // last ')' ends it.
            let mut fields = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let parent = fields.next().and_then(|ppid| ppid.parse::<i32>().ok());
            parent == Some(me) && state != "Z" && state != "X"
        })
        .filter_map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_found_until_they_exit() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("fits")).expect("positive");
        assert!(live_children().contains(&pid));
        child.kill().expect("killed");
        // A zombie until reaped, and no longer live either way.
        let began = Instant::now();
        while live_children().contains(&pid) {
            assert!(began.elapsed() < Duration::from_secs(5), "{pid:?} stays");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().expect("reaped");
    }
}
