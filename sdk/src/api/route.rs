//! Every route of the API: SPIKE's, by path and `?action=`, and ours.

use std::fmt;

/// A route: an exact path plus the value of the `action` query parameter
/// (none for the default action). Every route is `POST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Store a new version of a secret.
    SecretPut,
    /// Read a version of a secret.
    SecretGet,
    /// Mark versions of a secret deleted.
    SecretDelete,
    /// Clear deletion marks.
    SecretUndelete,
    /// Destroy versions for good (extension).
    SecretDestroy,
    /// List secret paths.
    SecretList,
    /// A secret's versions and metadata, without values.
    SecretMetadata,
    /// Create or replace a policy (upsert by name).
    PolicyPut,
    /// Read a policy, by id or name.
    PolicyGet,
    /// Delete a policy, by id or name.
    PolicyDelete,
    /// List policies.
    PolicyList,
    /// Encrypt with the cluster's data key.
    CipherEncrypt,
    /// Decrypt what encrypt returned.
    CipherDecrypt,
    /// The recovery shards of the root key.
    Recover,
    /// Feed one restore shard to the leader.
    Restore,
    /// SPIKE Bootstrap's proof that the replica holds the root key.
    BootstrapVerify,
    /// Replace the root key (extension).
    Rekey,
    /// Start a new data key (extension).
    Rotate,
    /// Cluster status as the contacted replica sees it (extension).
    ClusterStatus,
    /// Every replica and whether it votes (extension).
    ClusterMembers,
    /// Add a replica (extension).
    ClusterAdd,
    /// Remove a replica and retire its id (extension).
    ClusterRemove,
    /// Hand leadership to another voter (extension).
    ClusterTransfer,
    /// The leader's autopilot health report (extension).
    ClusterHealth,
    /// Download a backup of the encrypted store (extension).
    SnapshotSave,
    /// Replace the store with a backup (extension).
    SnapshotRestore,
    /// Set a secret's custom metadata (extension).
    SecretMetadataPut,
    /// The key rotation settings in force and the keys' state (extension).
    RotationGet,
    /// Set the replicated key rotation settings (extension).
    RotationSet,
    /// The replicated rate limits (extension).
    ClusterLimits,
    /// Replace the replicated rate limits (extension).
    ClusterSetLimits,
}

/// Each route's path, action and the two joined, in one table.
const TABLE: [(Route, &str, Option<&str>, &str); 31] = [
    (
        Route::SecretPut,
        "/v1/store/secrets",
        None,
        "/v1/store/secrets",
    ),
    (
        Route::SecretGet,
        "/v1/store/secrets",
        Some("get"),
        "/v1/store/secrets?action=get",
    ),
    (
        Route::SecretDelete,
        "/v1/store/secrets",
        Some("delete"),
        "/v1/store/secrets?action=delete",
    ),
    (
        Route::SecretUndelete,
        "/v1/store/secrets",
        Some("undelete"),
        "/v1/store/secrets?action=undelete",
    ),
    (
        Route::SecretDestroy,
        "/v1/store/secrets",
        Some("destroy"),
        "/v1/store/secrets?action=destroy",
    ),
    (
        Route::SecretList,
        "/v1/store/secrets",
        Some("list"),
        "/v1/store/secrets?action=list",
    ),
    (
        Route::SecretMetadata,
        "/v1/store/secrets/metadata",
        Some("get"),
        "/v1/store/secrets/metadata?action=get",
    ),
    (Route::PolicyPut, "/v1/acl/policy", None, "/v1/acl/policy"),
    (
        Route::PolicyGet,
        "/v1/acl/policy",
        Some("get"),
        "/v1/acl/policy?action=get",
    ),
    (
        Route::PolicyDelete,
        "/v1/acl/policy",
        Some("delete"),
        "/v1/acl/policy?action=delete",
    ),
    (
        Route::PolicyList,
        "/v1/acl/policy",
        Some("list"),
        "/v1/acl/policy?action=list",
    ),
    (
        Route::CipherEncrypt,
        "/v1/cipher/encrypt",
        None,
        "/v1/cipher/encrypt",
    ),
    (
        Route::CipherDecrypt,
        "/v1/cipher/decrypt",
        None,
        "/v1/cipher/decrypt",
    ),
    (
        Route::Recover,
        "/v1/operator/recover",
        None,
        "/v1/operator/recover",
    ),
    (
        Route::Restore,
        "/v1/operator/restore",
        None,
        "/v1/operator/restore",
    ),
    (
        Route::BootstrapVerify,
        "/v1/bootstrap/verify",
        None,
        "/v1/bootstrap/verify",
    ),
    (
        Route::Rekey,
        "/v1/operator/rekey",
        None,
        "/v1/operator/rekey",
    ),
    (
        Route::Rotate,
        "/v1/operator/rotate",
        None,
        "/v1/operator/rotate",
    ),
    (
        Route::ClusterStatus,
        "/v1/cluster",
        Some("status"),
        "/v1/cluster?action=status",
    ),
    (
        Route::ClusterMembers,
        "/v1/cluster",
        Some("members"),
        "/v1/cluster?action=members",
    ),
    (
        Route::ClusterAdd,
        "/v1/cluster",
        Some("add"),
        "/v1/cluster?action=add",
    ),
    (
        Route::ClusterRemove,
        "/v1/cluster",
        Some("remove"),
        "/v1/cluster?action=remove",
    ),
    (
        Route::ClusterTransfer,
        "/v1/cluster",
        Some("transfer"),
        "/v1/cluster?action=transfer",
    ),
    (
        Route::ClusterHealth,
        "/v1/cluster",
        Some("health"),
        "/v1/cluster?action=health",
    ),
    (
        Route::SnapshotSave,
        "/v1/snapshot",
        Some("save"),
        "/v1/snapshot?action=save",
    ),
    (
        Route::SnapshotRestore,
        "/v1/snapshot",
        Some("restore"),
        "/v1/snapshot?action=restore",
    ),
    (
        Route::SecretMetadataPut,
        "/v1/store/secrets/metadata",
        Some("put"),
        "/v1/store/secrets/metadata?action=put",
    ),
    (
        Route::RotationGet,
        "/v1/operator/rotation",
        Some("get"),
        "/v1/operator/rotation?action=get",
    ),
    (
        Route::RotationSet,
        "/v1/operator/rotation",
        Some("set"),
        "/v1/operator/rotation?action=set",
    ),
    (
        Route::ClusterLimits,
        "/v1/cluster",
        Some("limits"),
        "/v1/cluster?action=limits",
    ),
    (
        Route::ClusterSetLimits,
        "/v1/cluster",
        Some("set-limits"),
        "/v1/cluster?action=set-limits",
    ),
];

impl Route {
    /// Every route.
    pub const ALL: [Route; 31] = {
        let mut all = [Route::SecretPut; 31];
        let mut index = 0;
        while index < TABLE.len() {
            all[index] = TABLE[index].0;
            index += 1;
        }
        all
    };

    fn row(self) -> &'static (Route, &'static str, Option<&'static str>, &'static str) {
        // TABLE lists the variants in declaration order.
        &TABLE[self as usize]
    }

    /// The exact URL path.
    pub fn path(self) -> &'static str {
        self.row().1
    }

    /// The `action` query value; `None` for the default action.
    pub fn action(self) -> Option<&'static str> {
        self.row().2
    }

    /// Path and query as a client sends them.
    pub fn path_and_query(self) -> &'static str {
        self.row().3
    }

    /// The route a request names, by its path and query string, as SPIKE's
    /// router matches them: the exact path, and the first `action`
    /// parameter (percent-decoded; empty or absent is the default action).
    pub fn from_request(path: &str, query: Option<&str>) -> Option<Route> {
        let action = query.and_then(action_of);
        let action = action.as_deref().filter(|action| !action.is_empty());
        TABLE
            .iter()
            .find(|(_, route_path, route_action, _)| *route_path == path && *route_action == action)
            .map(|(route, ..)| *route)
    }

    /// Whether SPIKE defines this route (the rest are our extensions,
    /// which SPIKE's clients never call).
    pub fn is_spike(self) -> bool {
        !matches!(
            self,
            Route::SecretDestroy
                | Route::Rekey
                | Route::Rotate
                | Route::ClusterStatus
                | Route::ClusterMembers
                | Route::ClusterAdd
                | Route::ClusterRemove
                | Route::ClusterTransfer
                | Route::ClusterHealth
                | Route::SnapshotSave
                | Route::SnapshotRestore
                | Route::SecretMetadataPut
                | Route::RotationGet
                | Route::RotationSet
                | Route::ClusterLimits
                | Route::ClusterSetLimits
        )
    }

    /// Whether the route answers 503 `state_not_ready` until the replica
    /// holds the root key. SPIKE keeps recover and restore reachable; we
    /// also keep the cluster routes and backup restores reachable, so an
    /// operator can see why and repair it.
    pub fn needs_root_key(self) -> bool {
        !matches!(
            self,
            Route::Recover
                | Route::Restore
                | Route::ClusterStatus
                | Route::ClusterMembers
                | Route::ClusterAdd
                | Route::ClusterRemove
                | Route::ClusterTransfer
                | Route::ClusterHealth
                | Route::SnapshotRestore
                | Route::ClusterLimits
                | Route::ClusterSetLimits
        )
    }

    /// Whether the route changes the store (the client then gives it an
    /// exactly-once session, and retries it only under that session).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Route::SecretPut
                | Route::SecretDelete
                | Route::SecretUndelete
                | Route::SecretDestroy
                | Route::SecretMetadataPut
                | Route::PolicyPut
                | Route::PolicyDelete
        )
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path_and_query())
    }
}

/// The first `action` parameter of a query string, decoded as Go's
/// `url.ParseQuery` decodes it (`+` is a space, `%XX` a byte).
fn action_of(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == "action")
            .then(|| percent_decode(value))
            .flatten()
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = tail.get(..2)?;
                let high = char::from(hex[0]).to_digit(16)?;
                let low = char::from(hex[1]).to_digit(16)?;
                bytes.push(u8::try_from(high * 16 + low).ok()?);
                rest = &tail[2..];
                continue;
            }
            other => bytes.push(other),
        }
        rest = tail;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_by_its_own_path_and_query() {
        for (index, route) in Route::ALL.iter().enumerate() {
            assert_eq!(TABLE[index].0, *route, "TABLE is in declaration order");
            let (path, query) = match route.path_and_query().split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (route.path_and_query(), None),
            };
            assert_eq!(Route::from_request(path, query), Some(*route), "{route}");
        }
    }

    #[test]
    fn the_action_is_matched_like_go_reads_it() {
        let secrets = "/v1/store/secrets";
        assert_eq!(
            Route::from_request(secrets, Some("action=")),
            Some(Route::SecretPut)
        );
        assert_eq!(
            Route::from_request(secrets, Some("x=1&action=get")),
            Some(Route::SecretGet)
        );
        assert_eq!(
            Route::from_request(secrets, Some("action=g%65t")),
            Some(Route::SecretGet)
        );
        assert_eq!(
            Route::from_request(secrets, Some("action=get&action=list")),
            Some(Route::SecretGet)
        );
        assert_eq!(Route::from_request(secrets, Some("action=GET")), None);
        assert_eq!(Route::from_request("/v1/store/secrets/", None), None);
        assert_eq!(
            Route::from_request("/v1/operator/recover", Some("action=get")),
            None
        );
        // Go skips a pair that does not decode: the default action.
        assert_eq!(
            Route::from_request(secrets, Some("action=%zz")),
            Some(Route::SecretPut)
        );
    }

    #[test]
    fn spike_keeps_recover_and_restore_reachable_without_the_root_key() {
        let reachable: Vec<Route> = Route::ALL
            .into_iter()
            .filter(|route| route.is_spike() && !route.needs_root_key())
            .collect();
        assert_eq!(reachable, vec![Route::Recover, Route::Restore]);
    }
}
