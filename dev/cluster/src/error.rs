//! What a launcher action can fail with: the modules' own errors, and the
//! refusals and failures of the actions themselves.

use std::path::PathBuf;
use std::time::Duration;

use spike_dev_identity::directory::DirectoryError;

use crate::env::EnvError;
use crate::file::FileError;
use crate::netns::NetnsError;
use crate::operator::OperatorError;
use crate::plan::PlanError;
use crate::supervise::SuperviseError;

/// A launcher action failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing `cluster.json`.
    #[error(transparent)]
    File(#[from] FileError),
    /// Laying out a new cluster.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Starting or signalling a process.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The network namespaces.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Saving or restoring the recovery shards.
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// Writing the env files.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Creating the dev identities.
    #[error(transparent)]
    Identities(#[from] DirectoryError),
    /// The cluster directory (or its `logs`) cannot be made or resolved.
    #[error("cannot create {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster directory cannot be resolved to an absolute path.
    #[error("cannot resolve {}: {source}", path.display())]
    Resolve {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The caller started a spare, which only `join` starts.
    #[error("{0} is a spare: start it with `join`")]
    StartSpare(String),
    /// The caller started a retired replica.
    #[error("{0} was retired; its id is never reused")]
    StartRetired(String),
    /// The caller joined a process that is not a spare replica.
    #[error("{0} is not a spare replica")]
    NotSpare(String),
    /// The caller retired a keeper or the Workload API.
    #[error("only replicas are retired")]
    RetireNonReplica,
    /// A replica exited while `up` waited for it (its log says why).
    #[error("{name} exited: {last_words}\n(see {})", log.display())]
    Exited {
        /// The replica.
        name: String,
        /// The last line of its log.
        last_words: String,
        /// Its log.
        log: PathBuf,
    },
    /// A replica runs but did not become ready in time.
    #[error("not every replica became ready in {wait:?}: {stuck}")]
    NotReady {
        /// How long `up` waited.
        wait: Duration,
        /// The first replica not ready, and its log.
        stuck: String,
    },
    /// The report could not be written (stdout closed).
    #[error("cannot write the report: {0}")]
    Output(std::io::Error),
}
