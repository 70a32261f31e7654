//! Which trust domains each role is accepted from.

use std::collections::BTreeMap;

use spiffe::{SpiffeId, TrustDomain};

use super::Role;
use crate::environment::Environment;

/// SPIKE's default trust domain, used for every role that no variable names.
pub const DEFAULT_TRUST_ROOT: &str = "spike.ist";

/// The variable that sets the trust roots of every role not set on its own.
pub const TRUST_ROOT_VARIABLE: &str = "SPIKE_TRUST_ROOT";

/// A trust-root variable that does not hold a list of trust domains.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {value:?} is not a comma-separated list of trust domain names: {reason}")]
pub struct TrustRootError {
    variable: &'static str,
    value: String,
    reason: String,
}

/// The trust domains each role is accepted from.
///
/// Read from `SPIKE_TRUST_ROOT_<ROLE>` (comma-separated lists allowed), falling
/// back to `SPIKE_TRUST_ROOT`, then to `spike.ist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoots {
    by_role: BTreeMap<Role, Vec<TrustDomain>>,
}

impl TrustRoots {
    /// Reads the trust roots of every role from `env`.
    pub fn from_environment(env: &impl Environment) -> Result<Self, TrustRootError> {
        let base = match env.non_blank(TRUST_ROOT_VARIABLE) {
            Some(value) => parse_list(TRUST_ROOT_VARIABLE, &value)?,
            None => parse_list(TRUST_ROOT_VARIABLE, DEFAULT_TRUST_ROOT)?,
        };
        let mut by_role = BTreeMap::new();
        for role in Role::ALL {
            let variable = role.trust_root_variable();
            let domains = match env.non_blank(variable) {
                Some(value) => parse_list(variable, &value)?,
                None => base.clone(),
            };
            by_role.insert(role, domains);
        }
        Ok(Self { by_role })
    }

    /// Every role trusted from the single trust domain `domain`.
    pub fn single(domain: TrustDomain) -> Self {
        let by_role = Role::ALL
            .into_iter()
            .map(|role| (role, vec![domain.clone()]))
            .collect();
        Self { by_role }
    }

    /// The trust domains `role` is accepted from.
    pub fn domains(&self, role: Role) -> &[TrustDomain] {
        self.by_role.get(&role).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether `id` carries `role`.
    pub fn has_role(&self, id: &SpiffeId, role: Role) -> bool {
        role.matches_path(id.path())
            && self
                .domains(role)
                .iter()
                .any(|domain| domain.as_str() == id.trust_domain_name())
    }

    /// The role `id` carries, if any. Role paths never overlap, so there is
    /// at most one.
    pub fn role_of(&self, id: &SpiffeId) -> Option<Role> {
        Role::ALL.into_iter().find(|role| self.has_role(id, *role))
    }
}

fn parse_list(variable: &'static str, value: &str) -> Result<Vec<TrustDomain>, TrustRootError> {
    let error = |reason: String| TrustRootError {
        variable,
        value: value.to_owned(),
        reason,
    };
    let mut domains = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(error("empty entry".to_owned()));
        }
        // A trust root is a bare name; `TrustDomain::new` would also accept
        // a whole SPIFFE ID and quietly take its trust domain.
        if item.contains(':') || item.contains('/') {
            return Err(error(format!("{item:?} is not a bare trust domain name")));
        }
        let domain = TrustDomain::new(item).map_err(|e| error(e.to_string()))?;
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    Ok(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).expect("valid test id")
    }

    #[test]
    fn defaults_to_spike_ist_for_every_role() {
        let roots = TrustRoots::from_environment(&[]).expect("defaults parse");
        for role in Role::ALL {
            assert_eq!(roots.domains(role)[0].as_str(), "spike.ist");
        }
        assert_eq!(
            roots.role_of(&id("spiffe://spike.ist/spike/nexus")),
            Some(Role::Nexus)
        );
    }

    #[test]
    fn role_variable_overrides_base_and_accepts_lists() {
        let env = [
            ("SPIKE_TRUST_ROOT", "base.org"),
            ("SPIKE_TRUST_ROOT_NEXUS", "a.org, b.org"),
        ];
        let roots = TrustRoots::from_environment(&env).expect("valid lists");
        assert!(roots.has_role(&id("spiffe://a.org/spike/nexus"), Role::Nexus));
        assert!(roots.has_role(&id("spiffe://b.org/spike/nexus/n2"), Role::Nexus));
        assert!(!roots.has_role(&id("spiffe://base.org/spike/nexus"), Role::Nexus));
        assert!(roots.has_role(&id("spiffe://base.org/spike/keeper"), Role::Keeper));
        assert!(!roots.has_role(&id("spiffe://a.org/spike/keeper"), Role::Keeper));
    }

    #[test]
    fn pilot_roles_share_one_variable() {
        let env = [("SPIKE_TRUST_ROOT_PILOT", "ops.org")];
        let roots = TrustRoots::from_environment(&env).expect("valid");
        assert_eq!(
            roots.role_of(&id("spiffe://ops.org/spike/pilot/role/recover")),
            Some(Role::PilotRecover)
        );
        assert_eq!(
            roots.role_of(&id("spiffe://spike.ist/spike/pilot/role/superuser")),
            None
        );
    }

    #[test]
    fn workload_ids_and_foreign_domains_have_no_role() {
        let roots = TrustRoots::from_environment(&[]).expect("defaults");
        assert_eq!(roots.role_of(&id("spiffe://spike.ist/app/billing")), None);
        assert_eq!(roots.role_of(&id("spiffe://evil.org/spike/nexus")), None);
        assert_eq!(
            roots.role_of(&id("spiffe://spike.ist/spike/nexusx")),
            None,
            "a prefix that is not a path segment is not the role"
        );
    }

    #[test]
    fn malformed_lists_are_rejected_with_the_variable_named() {
        for bad in [
            "a.org,,b.org",
            "spiffe://a.org",
            "bad domain.org",
            "a.org/x",
        ] {
            let env = [("SPIKE_TRUST_ROOT_KEEPER", bad)];
            let error = TrustRoots::from_environment(&env).expect_err(bad);
            assert!(
                error.to_string().contains("SPIKE_TRUST_ROOT_KEEPER"),
                "{error}"
            );
        }
    }
}
