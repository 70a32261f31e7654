//! The Keeper gRPC protocol (`spike.keeper.v1`), generated from
//! `sdk/proto/keeper.proto`: the keeper serves it, Nexus replicas call it.
//!
//! Shares cross this boundary as bytes; callers copy them into
//! [`crate::crypto::KeyShare`] at once and wipe the message buffers.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/spike.keeper.v1.rs"));

/// Largest keeper message, either way: a share and a few integers.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 1024;
