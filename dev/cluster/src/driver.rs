//! Driving a cluster from another program (the tests, the Jepsen harness,
//! the benchmark): the `spike-dev-cluster` binary runs each action, so the
//! processes belong to it (their own process group, pids in
//! `cluster.json`) and outlive the caller's panics; the caller reads the
//! file back through [`ClusterFile`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::file::{ClusterFile, FileError};

/// The launcher binary's file name.
pub const BINARY: &str = "spike-dev-cluster";

/// An action on one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it.
    Start,
    /// Stop it gracefully (SIGTERM).
    Stop,
    /// Kill it (SIGKILL).
    Kill,
    /// Start a spare with --join.
    Join,
    /// Stop a removed replica for good.
    Retire,
}

impl Action {
    /// The subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Kill => "kill",
            Self::Join => "join",
            Self::Retire => "retire",
        }
    }
}

/// The launcher failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The binary is missing (`cargo build --bins` first).
    #[error("cannot run {}: {source}", binary.display())]
    Run {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The launcher refused or failed; it says why.
    #[error("{BINARY} {command} failed: {complaint}")]
    Failed {
        /// The arguments, space separated.
        command: String,
        /// What it printed on stderr.
        complaint: String,
    },
    /// `cluster.json` cannot be read back.
    #[error(transparent)]
    File(#[from] FileError),
}

/// One cluster directory and the launcher that runs it.
#[derive(Debug, Clone)]
pub struct Launcher {
    binary: PathBuf,
    dir: PathBuf,
}

impl Launcher {
    /// The cluster in `dir`, run by the `spike-dev-cluster` in `bin_dir`
    /// (next to the nexus and keeper binaries it starts).
    pub fn new(bin_dir: &Path, dir: &Path) -> Self {
        Self {
            binary: bin_dir.join(BINARY),
            dir: dir.to_owned(),
        }
    }

    /// Runs `spike-dev-cluster ARGS --dir DIR`: what it printed, or its
    /// complaint.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, DriverError> {
        let output = Command::new(&self.binary)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .map_err(|source| DriverError::Run {
                binary: self.binary.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(DriverError::Failed {
                command: args
                    .iter()
                    .map(|arg| arg.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                complaint: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `up` with extra flags; returns the file of the cluster now serving.
    pub fn up<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<ClusterFile, DriverError> {
        let mut all = vec![OsStr::new("up")];
        all.extend(args.iter().map(AsRef::as_ref));
        self.run(&all)?;
        self.load()
    }

    /// `ACTION NAME`: what it printed.
    pub fn act(&self, action: Action, name: &str) -> Result<String, DriverError> {
        self.run(&[action.as_str(), name])
    }

    /// `down`: every process stopped.
    pub fn down(&self) -> Result<(), DriverError> {
        self.run(&["down"]).map(drop)
    }

    /// `cluster.json` as it is now.
    pub fn load(&self) -> Result<ClusterFile, DriverError> {
        Ok(ClusterFile::load(&self.dir)?)
    }
}
