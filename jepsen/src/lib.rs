//! Jepsen-style testing of a SPIKE cluster.
//!
//! A run has clients that turn operations into requests, a generator that
//! mixes operations, a nemesis that injects faults, and checkers that judge
//! the recorded [`history`]. This crate starts with the history: the record
//! every other part writes to and every checker reads.

pub mod history;
