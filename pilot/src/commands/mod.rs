//! The command groups.

pub mod cipher;
pub mod cluster;
pub mod operator;
pub mod policy;
pub mod secret;
pub mod snapshot;
