//! Who a peer is: SPIFFE IDs, SPIKE roles and the trust roots they come from.
//!
//! The ID types are the `spiffe` crate's (parsed, validated, never a raw
//! string); this module adds SPIKE's role rules on top.

mod authorizer;
mod role;
mod trust_roots;

pub use authorizer::{PeerAuthorizer, PeerRejected};
pub use role::Role;
pub use spiffe::{SpiffeId, TrustDomain};
pub use trust_roots::{DEFAULT_TRUST_ROOT, TrustRootError, TrustRoots};
