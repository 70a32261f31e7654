//! Connection-level authorization of a verified peer by its SPIFFE ID.

use std::fmt;
use std::sync::Arc;

use spiffe::SpiffeId;

use super::{Role, TrustRoots};

/// A verified peer whose SPIFFE ID the authorizer refused. It travels inside
/// the rustls error so both sides of a refused handshake can say why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("peer {peer} is not {expected}")]
pub struct PeerRejected {
    /// The peer's (verified) SPIFFE ID.
    pub peer: String,
    /// What was expected, in words.
    pub expected: String,
}

type Rule = dyn Fn(&SpiffeId) -> bool + Send + Sync;

/// Decides which verified SPIFFE IDs may complete a TLS handshake.
///
/// The chain has already been verified against the bundle of the peer's
/// trust domain when the authorizer runs; it only judges the ID.
#[derive(Clone)]
pub struct PeerAuthorizer {
    rule: Arc<Rule>,
    expected: Arc<str>,
}

impl PeerAuthorizer {
    /// Any peer whose chain verified against one of our bundles, whatever its
    /// ID. Routes then authorize per request (the API port does this).
    pub fn any_verified() -> Self {
        Self {
            rule: Arc::new(|_| true),
            expected: "any SPIFFE ID from a trusted bundle".into(),
        }
    }

    /// Peers that carry `role` under `trust_roots`.
    pub fn role(trust_roots: TrustRoots, role: Role) -> Self {
        Self::roles(trust_roots, &[role])
    }

    /// Peers that carry one of `roles` under `trust_roots`.
    pub fn roles(trust_roots: TrustRoots, roles: &[Role]) -> Self {
        let roles = roles.to_vec();
        let names: Vec<&str> = roles.iter().map(|role| role.name()).collect();
        let expected = format!("a SPIKE {}", names.join(" or "));
        Self {
            rule: Arc::new(move |id| roles.iter().any(|role| trust_roots.has_role(id, *role))),
            expected: expected.into(),
        }
    }

    /// Exactly the peer `id`.
    pub fn exact(id: SpiffeId) -> Self {
        let expected = format!("{id}");
        Self {
            rule: Arc::new(move |peer| *peer == id),
            expected: expected.into(),
        }
    }

    /// Admits `id` or says why not.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), PeerRejected> {
        if (self.rule)(id) {
            Ok(())
        } else {
            Err(PeerRejected {
                peer: id.to_string(),
                expected: self.expected.to_string(),
            })
        }
    }
}

impl fmt::Debug for PeerAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerAuthorizer")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_authorizer_admits_the_role_and_names_it_when_refusing() {
        let roots = TrustRoots::from_environment(&[]).expect("defaults");
        let only_nexus = PeerAuthorizer::role(roots, Role::Nexus);
        let nexus = SpiffeId::new("spiffe://spike.ist/spike/nexus/2").expect("id");
        let keeper = SpiffeId::new("spiffe://spike.ist/spike/keeper").expect("id");
        assert!(only_nexus.authorize(&nexus).is_ok());
        let refusal = only_nexus
            .authorize(&keeper)
            .expect_err("keeper is not nexus");
        assert_eq!(
            refusal.to_string(),
            "peer spiffe://spike.ist/spike/keeper is not a SPIKE nexus"
        );
    }
}
