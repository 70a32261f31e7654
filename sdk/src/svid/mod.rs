//! Where a process gets its X.509 SVID and the trust bundles it verifies
//! peers against.
//!
//! Two sources, one result: the SPIFFE Workload API ([`workload_api`]), whose
//! SVIDs and bundles rotate without a restart, and PEM files ([`files`]) that
//! spiffe-helper or cert-manager keep fresh and that are reloaded when they
//! change. Both publish validated [`SvidMaterial`] through an [`Identity`]
//! handle; a rotated SVID is checked before anything uses it.

mod error;
pub mod files;
mod material;
mod source;
pub mod workload_api;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use error::IdentityError;
pub use material::SvidMaterial;
#[cfg(feature = "cli")]
pub use source::SvidArgs;
pub use source::{SvidFiles, SvidSource, WORKLOAD_API_TIMEOUT_DEFAULT};

use crate::identity::{Role, SpiffeId, TrustRoots};

/// A process's own identity: the current SVID and bundles, kept fresh in the
/// background. Cheap to clone; the refresher stops when the last clone drops.
#[derive(Clone)]
pub struct Identity {
    material: watch::Receiver<Arc<SvidMaterial>>,
    _refresher: Arc<RefresherGuard>,
}

struct RefresherGuard(Option<AbortHandle>);

impl Drop for RefresherGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

impl Identity {
    /// An identity that never changes (tests, one-shot tools).
    pub fn fixed(material: SvidMaterial) -> Self {
        let (_sender, receiver) = watch::channel(Arc::new(material));
        Self {
            material: receiver,
            _refresher: Arc::new(RefresherGuard(None)),
        }
    }

    /// An identity fed by a background task that owns `sender`.
    pub(crate) fn refreshed(
        receiver: watch::Receiver<Arc<SvidMaterial>>,
        refresher: AbortHandle,
    ) -> Self {
        Self {
            material: receiver,
            _refresher: Arc::new(RefresherGuard(Some(refresher))),
        }
    }

    /// The material in force now. New handshakes call this, so a rotation
    /// takes effect on the next connection.
    pub fn current(&self) -> Arc<SvidMaterial> {
        self.material.borrow().clone()
    }

    /// The SPIFFE ID of the current SVID.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.current().spiffe_id().clone()
    }

    /// A receiver that wakes on every rotation.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SvidMaterial>> {
        self.material.clone()
    }

    /// Fails unless the current SVID carries `role` under `trust_roots`;
    /// binaries call this before binding any port.
    pub fn require_role(&self, trust_roots: &TrustRoots, role: Role) -> Result<(), IdentityError> {
        let id = self.spiffe_id();
        if trust_roots.has_role(&id, role) {
            Ok(())
        } else {
            Err(IdentityError::WrongRole {
                spiffe_id: id.to_string(),
                expected: role,
            })
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id().to_string())
            .finish_non_exhaustive()
    }
}
