//! Development identities: nothing in the dev cluster or the tests needs
//! SPIRE or hand-made certificates.
//!
//! - [`ca`]: a dev CA that mints X.509 SVIDs for any SPIFFE ID of its trust
//!   domain (and, for tests, expired or foreign ones).
//! - [`directory`]: a directory with the CA and one SVID per SPIKE role plus
//!   any workload asked for, as PEM files.
//! - [`workload_api`]: a SPIFFE Workload API server with one unix socket
//!   per identity, short TTLs and forced rotation, so processes and tests go
//!   through the same Workload API code path as production.
//!
//! Development only: the CA key sits in a file beside the certificates.

pub mod ca;
pub mod directory;
pub mod workload_api;

pub use ca::{DevCa, MintedSvid};
pub use directory::{IdentityDirectory, IdentitySpec, Manifest};
pub use workload_api::{MAX_SOCKET_PATH, ServeOptions, WorkloadApiServer, check_socket_path};
