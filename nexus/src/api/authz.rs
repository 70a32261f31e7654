//! Authorization, exactly as SPIKE defines it.
//!
//! - The Pilot superuser may use every secret, policy and cipher route.
//! - The lite workload may use the cipher routes only.
//! - Recover, restore and bootstrap verify belong to their exact roles.
//! - Everyone else needs a policy whose SPIFFE ID pattern and path pattern
//!   both match (unanchored regular expressions, as Go's `MatchString`) and
//!   whose permissions include `super` or every permission wanted.
//! - The reserved paths `spike/system/acl`, `spike/system/secret` and
//!   `spike/system/cipher/exec` are reachable only by policies whose path
//!   pattern matches them fully and whose SPIFFE ID pattern is anchored at
//!   both ends; such policies are refused when written, ignored if found.
//!
//! Policies are compiled once per policy change, not per request.

use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// Reserved paths: the ACL itself, the secret list, the cipher routes.
pub const RESERVED_PATHS: [&str; 3] = [
    "spike/system/acl",
    "spike/system/secret",
    "spike/system/cipher/exec",
];
/// Path checked for policy routes.
pub const ACL_PATH: &str = RESERVED_PATHS[0];
/// Path checked for listing secrets.
pub const SECRET_LIST_PATH: &str = RESERVED_PATHS[1];
/// Path checked for cipher routes.
pub const CIPHER_PATH: &str = RESERVED_PATHS[2];
/// Most memory one compiled pattern may take, and its lazy DFA's cache per
/// thread: far above what a SPIFFE ID or path pattern needs, and it keeps
/// the worst case (every policy at the limit) bounded. A pattern past it
/// (large counted repetitions) is refused as not compiling.
pub const PATTERN_COMPILED_SIZE_MAX: usize = 64 * 1024;

/// Compiles `pattern` within [`PATTERN_COMPILED_SIZE_MAX`].
fn bounded_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_COMPILED_SIZE_MAX)
        .dfa_size_limit(PATTERN_COMPILED_SIZE_MAX)
        .build()
}

pub use spike_sdk::domain::Permission;

/// A policy's body as stored (sealed) in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBody {
    /// Regular expression over caller SPIFFE IDs.
    pub spiffeid_pattern: String,
    /// Regular expression over secret paths.
    pub path_pattern: String,
    /// What it grants.
    pub permissions: Vec<Permission>,
}

/// A policy that cannot be used, with SPIKE's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A pattern is not a valid regular expression.
    #[error("{which} pattern does not compile: {reason}")]
    Regex {
        /// `SPIFFE ID` or `path`.
        which: &'static str,
        /// The compiler's reason.
        reason: String,
    },
    /// The policy reaches a reserved path without being narrow enough.
    #[error(
        "a policy that reaches {0} must match it exactly and anchor its SPIFFE ID pattern with ^ and $"
    )]
    ReservedPath(&'static str),
}

/// A policy ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    spiffe_id: Regex,
    path: Regex,
    permissions: Vec<Permission>,
    /// Whether it may grant access to reserved paths.
    reaches_reserved: bool,
}

impl CompiledPolicy {
    /// Compiles `body`; refuses a policy that reaches a reserved path it may
    /// not (SPIKE refuses it at upsert).
    pub fn compile(body: &PolicyBody) -> Result<Self, PolicyError> {
        let spiffe_id = bounded_regex(&body.spiffeid_pattern).map_err(|e| PolicyError::Regex {
            which: "SPIFFE ID",
            reason: e.to_string(),
        })?;
        let path = bounded_regex(&body.path_pattern).map_err(|e| PolicyError::Regex {
            which: "path",
            reason: e.to_string(),
        })?;
        let reaches_reserved = may_reach_reserved(body);
        if let Some(reserved) = RESERVED_PATHS
            .iter()
            .find(|reserved| path.is_match(reserved))
            && !reaches_reserved
        {
            return Err(PolicyError::ReservedPath(reserved));
        }
        Ok(Self {
            spiffe_id,
            path,
            permissions: body.permissions.clone(),
            reaches_reserved,
        })
    }

    fn grants(&self, peer: &str, path: &str, wants: &[Permission]) -> bool {
        if !self.spiffe_id.is_match(peer) || !self.path.is_match(path) {
            return false;
        }
        if RESERVED_PATHS.contains(&path) && !self.reaches_reserved {
            return false;
        }
        self.permissions.contains(&Permission::Super)
            || wants.iter().all(|want| self.permissions.contains(want))
    }
}

/// SPIKE's rule: the path pattern, anchored, matches a reserved path fully,
/// and the SPIFFE ID pattern is anchored at both ends.
fn may_reach_reserved(body: &PolicyBody) -> bool {
    let anchored_id =
        body.spiffeid_pattern.starts_with('^') && body.spiffeid_pattern.ends_with('$');
    let full_path = bounded_regex(&format!("^(?:{})$", body.path_pattern)).is_ok_and(|full| {
        RESERVED_PATHS
            .iter()
            .any(|reserved| full.is_match(reserved))
    });
    anchored_id && full_path
}

/// Every policy of the cluster, compiled.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
}

impl PolicySet {
    /// A set of compiled policies.
    #[cfg(test)]
    pub fn new(policies: Vec<CompiledPolicy>) -> Arc<Self> {
        Self::from_shared(policies.into_iter().map(Arc::new).collect())
    }

    /// A set of compiled policies, shared with the cache they came from.
    pub fn from_shared(policies: Vec<Arc<CompiledPolicy>>) -> Arc<Self> {
        Arc::new(Self { policies })
    }

    /// Whether some policy grants `wants` on `path` to `peer`.
    pub fn allows(&self, peer: &str, path: &str, wants: &[Permission]) -> bool {
        self.policies
            .iter()
            .any(|policy| policy.grants(peer, path, wants))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        id: &str,
        path: &str,
        permissions: &[Permission],
    ) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::compile(&PolicyBody {
            spiffeid_pattern: id.to_owned(),
            path_pattern: path.to_owned(),
            permissions: permissions.to_vec(),
        })
    }

    const APP: &str = "spiffe://spike.ist/app/billing";

    #[test]
    fn patterns_are_unanchored_like_go() {
        let set = PolicySet::new(vec![
            policy("app/billing", "db", &[Permission::Read]).expect("valid"),
        ]);
        assert!(set.allows(APP, "apps/db/password", &[Permission::Read]));
        assert!(!set.allows(APP, "apps/db/password", &[Permission::Write]));
        assert!(!set.allows(
            "spiffe://spike.ist/app/other",
            "apps/db",
            &[Permission::Read]
        ));
    }

    #[test]
    fn super_grants_everything_and_all_wanted_permissions_are_needed() {
        let set = PolicySet::new(vec![
            policy(
                "^spiffe://spike.ist/app/billing$",
                "^x$",
                &[Permission::Super],
            )
            .expect("valid"),
            policy(APP, "^y$", &[Permission::Read, Permission::List]).expect("valid"),
        ]);
        assert!(set.allows(APP, "x", &[Permission::Write, Permission::Execute]));
        assert!(set.allows(APP, "y", &[Permission::Read, Permission::List]));
        assert!(!set.allows(APP, "y", &[Permission::Read, Permission::Write]));
    }

    #[test]
    fn reserved_paths_need_an_exact_path_and_an_anchored_id() {
        assert_eq!(
            policy(APP, ".*", &[Permission::Super]).err(),
            Some(PolicyError::ReservedPath("spike/system/acl"))
        );
        assert!(
            policy(
                "^spiffe://spike.ist/app/billing$",
                ".*",
                &[Permission::Super]
            )
            .is_ok()
        );
        let narrow = policy(
            "^spiffe://spike.ist/app/billing$",
            "^spike/system/acl$",
            &[Permission::Write],
        )
        .expect("valid");
        let set = PolicySet::new(vec![narrow]);
        assert!(set.allows(APP, "spike/system/acl", &[Permission::Write]));
        assert!(!set.allows(APP, "spike/system/secret", &[Permission::List]));
        // A pattern that only touches part of a reserved path never reaches it.
        let partial = policy(APP, "^apps/", &[Permission::Super]).expect("valid");
        assert!(!PolicySet::new(vec![partial]).allows(
            APP,
            "spike/system/acl",
            &[Permission::Read]
        ));
    }

    #[test]
    fn patterns_that_compile_too_large_are_refused() {
        // 500 characters, the path pattern limit, that expand far past it.
        let huge = "(a{100}){100}";
        assert!(matches!(
            policy(APP, huge, &[Permission::Read]),
            Err(PolicyError::Regex { which: "path", .. })
        ));
        assert!(matches!(
            policy(&format!("^spiffe://x/{huge}$"), "^x$", &[Permission::Read]),
            Err(PolicyError::Regex {
                which: "SPIFFE ID",
                ..
            })
        ));
    }

    #[test]
    fn patterns_that_do_not_compile_are_refused() {
        assert!(matches!(
            policy(APP, "a(", &[Permission::Read]),
            Err(PolicyError::Regex { which: "path", .. })
        ));
    }
}
