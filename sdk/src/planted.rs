//! Planted bugs: deliberate defects that prove the checkers catch what they
//! claim to (docs/planted-bugs.md). Compiled only with the `planted-bugs`
//! feature, which no release build has; without it [`crate::planted!`] is
//! the constant `false` and neither this module nor its environment
//! variable exist.
//!
//! One bug at most is active in a process, named by
//! `SPIKE_UNSAFE_PLANTED_BUG` and read once. Child processes inherit it, so
//! a test that starts a cluster plants the bug in every replica and keeper.
//! An unknown name stops the process: a typo must not pass for a bug that
//! nothing caught.

use std::sync::OnceLock;

/// The environment variable naming the active bug.
pub const ENV: &str = "SPIKE_UNSAFE_PLANTED_BUG";

macro_rules! bugs {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// One planted defect; each is one `planted!` test at a real code path.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Bug {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Bug {
            /// Every bug, in the catalog's order.
            pub const ALL: &[Bug] = &[$(Bug::$variant,)*];

            /// The name `SPIKE_UNSAFE_PLANTED_BUG` takes.
            pub fn name(self) -> &'static str {
                match self {
                    $(Bug::$variant => $name,)*
                }
            }
        }
    };
}

bugs! {
    /// Linearizable reads served from local state, without a read index
    /// (the same path as nexus `--unsafe-local-reads`).
    LocalReads = "local-reads",
    /// The leader answers a read index from its own commit index, without
    /// the heartbeat round that proves it still leads.
    ReadIndexWithoutQuorum = "read-index-without-quorum",
    /// Raft log appends are acknowledged before they are fsynced.
    AckBeforeFsync = "ack-before-fsync",
    /// Apply forgets to record a session's sequence and result, so a
    /// retried write applies again (exactly-once broken).
    LostSessionRecord = "lost-session-record",
    /// The session id is not bound to the caller's SPIFFE ID, so two
    /// callers with the same client id share one session.
    SessionIgnoresCaller = "session-ignores-caller",
    /// Shamir recovery returns whatever the shares combine to, without
    /// comparing it with the committed key check.
    SkippedKeyCheck = "skipped-key-check",
    /// A new root key is committed first and its shares pushed to the
    /// keepers after, whether or not t of them took them.
    SharesPushedAfterCommit = "shares-pushed-after-commit",
    /// The compiled policy cache keeps policies that were deleted.
    PolicyCacheIgnoresRevocation = "policy-cache-ignores-revocation",
    /// An operator restore rebuilds the key from t-1 shards.
    RestoreShortOfThreshold = "restore-short-of-threshold",
    /// A snapshot (and so a backup) leaves out each secret's newest version.
    SnapshotDropsNewestVersion = "snapshot-drops-newest-version",
    /// A keeper answers a fetch with its share under another index.
    KeeperReturnsOtherIndex = "keeper-returns-other-index",
    /// The corruption check's verdict compares no digests: every replica
    /// agrees with the majority.
    CorruptionCheckComparesNothing = "corruption-check-compares-nothing",
    /// A forwarded write whose outcome is unknown is sent again, so a
    /// write without a session can apply twice.
    UnknownOutcomeRetried = "unknown-outcome-retried",
    /// A follower's forwarded key or membership command is taken by the
    /// leader, so a peer could commit a key no keeper holds shares of.
    PeerForwardsKeyCommands = "peer-forwards-key-commands",
    /// A request is answered even when its audit record could not be made
    /// durable (the record is no longer a precondition of the answer).
    AuditAfterAnswer = "audit-after-answer",
}

impl std::str::FromStr for Bug {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Bug::ALL
            .iter()
            .copied()
            .find(|bug| bug.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
                format!(
                    "{ENV}={name:?} names no planted bug; one of: {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Bug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bug this process plants, from [`ENV`] (read once).
///
/// # Panics
///
/// If [`ENV`] names no bug.
pub fn planted() -> Option<Bug> {
    static PLANTED: OnceLock<Option<Bug>> = OnceLock::new();
    *PLANTED.get_or_init(|| {
        let name = std::env::var(ENV).ok().filter(|name| !name.is_empty())?;
        let bug = name
            .parse::<Bug>()
            .unwrap_or_else(|error| panic!("{error}"));
        tracing::warn!(bug = bug.name(), "UNSAFE: a planted bug is active");
        Some(bug)
    })
}

/// Whether `bug` is the one this process plants.
pub fn active(bug: Bug) -> bool {
    planted() == Some(bug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_bug_and_names_are_unique() {
        for bug in Bug::ALL {
            assert_eq!(bug.name().parse::<Bug>(), Ok(*bug));
        }
        let mut names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Bug::ALL.len());
        assert!("no-such-bug".parse::<Bug>().is_err());
    }
}
