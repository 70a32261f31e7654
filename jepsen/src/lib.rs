//! Jepsen-style testing of a SPIKE cluster.
//!
//! A run has clients that turn operations into requests ([`workload`]), a
//! nemesis that injects faults on a schedule ([`nemesis`]), a cluster of
//! real processes, each on a host (network namespace) of its own
//! ([`cluster`]), a [`history`] of every invocation and completion, and
//! checkers that judge it ([`check`]), with an availability [`timeline`].
//! The `spike-jepsen` binary ties them together.

pub mod check;
pub mod cluster;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod proxy;
pub mod recorder;
pub mod timeline;
pub mod workload;
