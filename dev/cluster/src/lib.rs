//! A local SPIKE cluster on loopback, everything under one directory: dev
//! identities, the dev Workload API, keepers and Nexus replicas.
//!
//! `up` creates dev identities (one per process) and starts the dev
//! Workload API, the keepers and the Nexus replicas, then waits until every
//! replica holds the root key; it writes `cluster.json` ([`file`]) and the
//! env files ([`env`]). The Workload API sockets live in
//! `DIR/identities/sockets`, or, when `DIR` is so deep that a socket path
//! there would pass the 107-byte limit of a unix socket address, in a
//! private `spike-sockets-*` directory of the system's temporary directory
//! ([`sockets`]; `cluster.json` names it; `down` removes it). A second
//! `up` restarts the same cluster on its existing data. `start`, `stop`
//! and `kill` act on one process by name (`nexus-2`, `keeper-4`,
//! `workload-api`); `down` stops them all. `up --spares K` also plans K
//! spare replicas (fresh ids, addresses and identities) that stay down
//! until `join` starts one with `--join`, for an operator to add; `retire`
//! stops a removed replica for good. Only processes recorded in
//! `cluster.json` are ever signalled, and only while they still run the
//! binary recorded for them ([`supervise`]).
//!
//! Keepers hold shares in memory only, so after `down` the restarted
//! cluster cannot rebuild its root key by itself: that is a total loss, and
//! as in production the replicas wait (503) for an operator restore; `up`
//! says so and how. Only with `up --auto-restore-from-disk-shards`
//! (development convenience, with a warning at every `up`) does the first
//! `up` save the recovery shards (as `spike operator recover` would) under
//! `DIR/recovery`, and a later `up` that finds the replicas locked feed
//! them back through `restore` ([`operator`]): the root key is then on
//! disk. A production deployment never keeps shards next to the data.
//!
//! The modules:
//! - [`file`]: `cluster.json`'s model ([`ClusterFile`], [`Process`],
//!   [`Role`], [`Membership`]), read by every program that drives a
//!   cluster;
//! - [`plan`]: the port plan of a new cluster;
//! - [`command`], [`supervise`]: what each process runs, starting and
//!   signalling it;
//! - [`probe`]: the one readiness probe (`GET /readyz`);
//! - [`up`], [`actions`]: what each subcommand of the binary does;
//! - [`driver`]: running the binary from another program;
//! - [`netns`]: hosts of their own and network faults (`up --netns`).

pub mod actions;
pub mod command;
pub mod driver;
pub mod env;
pub mod error;
pub mod file;
pub mod netns;
pub mod operator;
mod pid;
pub mod plan;
pub mod probe;
pub mod sockets;
pub mod spire;
pub mod supervise;
pub mod up;

pub use driver::{Action, DriverError, Launcher};
pub use error::Error;
pub use file::{ClusterFile, Keeper, Membership, Process, Replica, Role};
