//! Identity and mutual TLS, end to end: who may connect to whom, SVIDs that
//! rotate under live servers, identities that lapse under open connections
//! and cached sessions, and processes that refuse to start with a bad
//! identity.

mod authorization;
mod logs;
mod raw_tls;
mod resumption;
mod rotation;
mod startup;
