//! SPIKE's fixed roles and the SPIFFE ID path each one is recognised by.

use std::fmt;

/// A role SPIKE recognises by SPIFFE ID path.
///
/// An ID has a role when its trust domain is one of the role's trust roots
/// and its path is the role's path exactly, or the role's path followed by
/// `/` and more (so `/spike/nexus/node-2` is a Nexus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A Nexus replica (`/spike/nexus`).
    Nexus,
    /// A Keeper holding one share of the root key (`/spike/keeper`).
    Keeper,
    /// Pilot with unrestricted access to secrets, policies and ciphers.
    PilotSuperuser,
    /// Pilot allowed to fetch recovery shards.
    PilotRecover,
    /// Pilot allowed to feed recovery shards back.
    PilotRestore,
    /// The bootstrap job that verifies a freshly initialised Nexus.
    Bootstrap,
    /// A workload allowed the cipher routes only.
    LiteWorkload,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 7] = [
        Role::Nexus,
        Role::Keeper,
        Role::PilotSuperuser,
        Role::PilotRecover,
        Role::PilotRestore,
        Role::Bootstrap,
        Role::LiteWorkload,
    ];

    /// The SPIFFE ID path that identifies the role.
    pub const fn path(self) -> &'static str {
        match self {
            Role::Nexus => "/spike/nexus",
            Role::Keeper => "/spike/keeper",
            Role::PilotSuperuser => "/spike/pilot/role/superuser",
            Role::PilotRecover => "/spike/pilot/role/recover",
            Role::PilotRestore => "/spike/pilot/role/restore",
            Role::Bootstrap => "/spike/bootstrap",
            Role::LiteWorkload => "/spike/workload/role/lite",
        }
    }

    /// The environment variable naming the trust roots of the role (SPIKE's
    /// names: the three Pilot roles share one).
    pub const fn trust_root_variable(self) -> &'static str {
        match self {
            Role::Nexus => "SPIKE_TRUST_ROOT_NEXUS",
            Role::Keeper => "SPIKE_TRUST_ROOT_KEEPER",
            Role::PilotSuperuser | Role::PilotRecover | Role::PilotRestore => {
                "SPIKE_TRUST_ROOT_PILOT"
            }
            Role::Bootstrap => "SPIKE_TRUST_ROOT_BOOTSTRAP",
            Role::LiteWorkload => "SPIKE_TRUST_ROOT_LITE_WORKLOAD",
        }
    }

    /// A short lowercase name, used in file names, flags and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Nexus => "nexus",
            Role::Keeper => "keeper",
            Role::PilotSuperuser => "superuser",
            Role::PilotRecover => "recover",
            Role::PilotRestore => "restore",
            Role::Bootstrap => "bootstrap",
            Role::LiteWorkload => "lite-workload",
        }
    }

    /// Whether `path` is the role's path or lies below it.
    pub fn matches_path(self, path: &str) -> bool {
        let role_path = self.path();
        match path.strip_prefix(role_path) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_matches_its_path_and_paths_below_it_only() {
        assert!(Role::Nexus.matches_path("/spike/nexus"));
        assert!(Role::Nexus.matches_path("/spike/nexus/node-1"));
        assert!(Role::Nexus.matches_path("/spike/nexus/a/b"));
        assert!(!Role::Nexus.matches_path("/spike/nexus-evil"));
        assert!(!Role::Nexus.matches_path("/spike/nexu"));
        assert!(!Role::Nexus.matches_path("/spike"));
        assert!(!Role::Nexus.matches_path("/x/spike/nexus"));
        assert!(!Role::PilotSuperuser.matches_path("/spike/pilot/role/recover"));
    }

    #[test]
    fn role_paths_are_distinct_and_none_is_below_another() {
        for a in Role::ALL {
            for b in Role::ALL {
                if a != b {
                    assert!(!a.matches_path(b.path()), "{a} matches {b}");
                }
            }
        }
    }
}
