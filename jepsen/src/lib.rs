//! Jepsen-style testing of a SPIKE cluster.
//!
//! A [`run`] has clients that run a [`workload`] of typed operations
//! ([`op`]) through the SDK ([`perform`]), a nemesis that injects faults
//! on a schedule ([`nemesis`]), a cluster of real processes, each on a host
//! (network namespace) of its own ([`cluster`]), a [`history`] of every
//! invocation and completion, the final reads and convergence checks after
//! healing ([`converge`]), and checkers that judge it all ([`check`]), with
//! an availability [`timeline`] among the [`artifacts`]. The `spike-jepsen`
//! binary is a thin command line over [`run`]; the simulator (`sim/`) runs
//! the same workloads, final reads and checkers on a simulated cluster.

pub mod artifacts;
pub mod check;
pub mod cluster;
pub mod converge;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod op;
pub mod perform;
pub mod proxy;
pub mod recorder;
pub mod run;
pub mod self_running;
pub mod timeline;
pub mod workload;
