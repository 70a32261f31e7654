//! The SPIKE SDK: everything that clients and servers of the SPIKE secrets
//! store share, and nothing that only a replica needs (no Raft, no storage).
//!
//! - [`api`]: the wire contract of the SPIKE API: routes, headers, error
//!   codes, typed requests and answers, Go-compatible decoding.
//! - [`identity`]: SPIFFE IDs, the roles SPIKE gives them and the trust roots
//!   each role is accepted from.
//! - [`svid`]: where a process gets its X.509 SVID and trust bundles: the
//!   SPIFFE Workload API (rotating without restart) or PEM files (reloaded on
//!   change).
//! - [`tls`]: rustls configurations that verify peers against the bundle and
//!   authorize them by SPIFFE ID, and a listener that hands the verified peer
//!   ID to axum and tonic handlers.
//! - [`net`]: where connections come from: TCP, or a simulator's network.
//! - [`crypto`]: AES-256-GCM envelope encryption, the data-key keyring, Shamir
//!   sharing of the root key, the key check value and SPIKE's recovery lines.
//!   Secret material lives in types that zeroize on drop and never print.
//! - [`hardening`]: no core dumps, no ptrace, locked memory for processes
//!   that hold key material.
//! - `keeper_api` (feature `tonic`): the Keeper gRPC protocol.
//! - [`audit`]: the hash-chained audit log format and its verifier.
//! - `client` (feature `client`): a minimal HTTPS JSON client for the API.
//! - `cli` (feature `cli`): shared start-up flags, logging and exit codes.
//! - [`domain`]: identifiers parsed once at the edge: secret paths, policy
//!   names and ids, permissions, node ids, root and data key ids.
//! - [`duration`]: the one duration grammar every binary reads (Go's).
//! - [`environment`]: configuration read through a trait, so tests pass a map
//!   instead of touching the process environment.

pub mod api;
pub mod audit;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod crypto;
pub mod domain;
pub mod duration;
pub mod environment;
pub mod hardening;
pub mod identity;
#[cfg(feature = "tonic")]
pub mod keeper_api;
pub mod net;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod size;
pub mod svid;
pub mod tls;

/// Whether the planted bug named by its `planted::Bug` variant is active
/// (docs/planted-bugs.md): with the `planted-bugs` feature, whether
/// `SPIKE_UNSAFE_PLANTED_BUG` names it.
#[cfg(feature = "planted-bugs")]
#[macro_export]
macro_rules! planted {
    ($bug:ident) => {
        $crate::planted::active($crate::planted::Bug::$bug)
    };
}

/// Whether a planted bug is active: never, in a build without the
/// `planted-bugs` feature (the defect's code is dead and compiled out).
#[cfg(not(feature = "planted-bugs"))]
#[macro_export]
macro_rules! planted {
    ($bug:ident) => {
        false
    };
}

/// Exit code for a configuration or identity problem found at start-up,
/// before any port is bound (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;
