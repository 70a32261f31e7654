//! What the Raft log carries: commands with their leader-assigned time and
//! optional client session, and the responses apply produces.
//!
//! Everything here is public metadata or ciphertext. A command is built on
//! the node that received the request (which parses identifiers and seals
//! any values with the keyring first); apply never encrypts, decrypts,
//! reads a clock or draws a random number. Commands are grouped by family,
//! and each family has its own apply function.

use serde::{Deserialize, Serialize};
use spike_sdk::domain::{
    DataKeyId, NodeId, PolicyId, PolicyName, PolicyRef, RootKeyId, SecretPath,
};

use super::secret::{SecretError, SecretRecord, TimeNs, Written};
use super::store::{ClusterMeta, PolicyRecord};

/// A client's identity and the number of this write, for exactly-once
/// application of retried writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session's id: the caller identity's digest in the high 64 bits
    /// ([`SessionRef::owner`]), the digest of the caller and the id the
    /// client chose in the low 64.
    pub client_id: u128,
    /// Strictly increasing per client, from 1.
    pub sequence: u64,
}

impl SessionRef {
    /// Whose session this is: a digest of the caller's SPIFFE ID, so the
    /// sessions of one caller can be bounded without touching others'.
    pub fn owner(&self) -> u64 {
        (self.client_id >> 64) as u64
    }
}

/// A replicated request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Set for writes that must apply at most once.
    pub session: Option<SessionRef>,
    /// The proposing leader's clock, nanoseconds since the Unix epoch. The
    /// only time apply ever uses.
    pub time_ns: TimeNs,
}

/// The root key the cluster uses, as the log records it: its id, its key
/// check and the keyring it wraps. Never the key itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootKeyRecord {
    /// Generation of the root key, from 1.
    pub root_key_id: RootKeyId,
    /// `KeyCheck` of the root key.
    pub key_check: [u8; 32],
    /// The keyring sealed under the root key.
    #[serde(with = "serde_bytes")]
    pub wrapped_keyring: Vec<u8>,
    /// Shamir n.
    pub shares: u8,
    /// Shamir t.
    pub threshold: u8,
}

impl std::fmt::Debug for RootKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKeyRecord")
            .field("root_key_id", &self.root_key_id)
            .field("key_check", &hex_prefix(&self.key_check))
            .field("shares", &self.shares)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A state change, by family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The root key and the keyring.
    Keys(KeyCommand),
    /// Secrets and their versions.
    Secret(SecretCommand),
    /// Access policies.
    Policy(PolicyCommand),
    /// Replacing the whole store with a backup.
    Restore(RestoreCommand),
    /// Facts about the cluster's replicas (membership itself is Raft's).
    Membership(MembershipCommand),
}

/// The root key and the keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyCommand {
    /// The first root key; succeeds only on an uninitialized cluster.
    Initialize(RootKeyRecord),
    /// A new root key; its id must be above the current one.
    Rekey {
        /// The new key's record (its keyring re-wrapped).
        record: RootKeyRecord,
        /// The keyring version it was built from: refused if the keyring
        /// changed since, so no data key is ever lost.
        keyring_version: u64,
    },
    /// The keyring re-wrapped after a data-key rotation, under the current
    /// root key.
    ReplaceKeyring {
        /// Root key that wraps it (must be current).
        root_key_id: RootKeyId,
        /// The sealed keyring.
        #[serde(with = "serde_bytes")]
        wrapped_keyring: Vec<u8>,
        /// The keyring version it was built from (refused if stale).
        keyring_version: u64,
    },
    /// A replica reserves `count` encryptions under a data key before it
    /// makes them (the cipher routes, which write nothing to the log), so
    /// the per-key counter that drives rotation is cluster-wide and
    /// survives restarts. Refused past
    /// [`spike_sdk::crypto::keyring::ENCRYPTIONS_MAX`].
    ReserveEncryptions {
        /// The data key.
        data_key_id: DataKeyId,
        /// Encryptions reserved.
        count: u64,
    },
}

/// Secrets and their versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretCommand {
    /// A new version of a secret.
    Put {
        /// The secret's path.
        path: SecretPath,
        /// Its values, sealed.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The data key that sealed them (for the per-key counter).
        data_key_id: DataKeyId,
        /// Check-and-set: write only over this current version.
        cas: Option<u64>,
        /// Versions to keep.
        max_versions: u32,
    },
    /// Mark versions deleted.
    Delete {
        /// The secret's path.
        path: SecretPath,
        /// Versions (empty or 0: current).
        versions: Vec<u64>,
    },
    /// Clear deletion marks.
    Undelete {
        /// The secret's path.
        path: SecretPath,
        /// Versions (empty: current or highest deleted).
        versions: Vec<u64>,
    },
    /// Destroy versions for good.
    Destroy {
        /// The secret's path.
        path: SecretPath,
        /// Versions (empty or 0: current).
        versions: Vec<u64>,
    },
}

/// Access policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyCommand {
    /// Create or replace the policy named `name`. Replacing keeps its id
    /// and creation time.
    Put {
        /// The id the policy gets if it is created; chosen at random by the
        /// replica that took the request, as apply may not draw one.
        /// Ignored on a replace; refused if another policy holds it.
        id: PolicyId,
        /// The policy's name.
        name: PolicyName,
        /// The policy body, sealed.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The data key that sealed it.
        data_key_id: DataKeyId,
    },
    /// Remove a policy, found at apply time (by id first, then by name), so
    /// a policy re-created since the request was taken is not hit by its
    /// id.
    Delete {
        /// The policy, as the client named it.
        policy: PolicyRef,
    },
}

/// Replacing the store with a backup, in three kinds of steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreCommand {
    /// Start: clears secrets, policies and sessions; the cluster is
    /// unusable until `Finish`.
    Begin {
        /// Names this restore, so pieces of another cannot mix in.
        restore_id: u64,
    },
    /// One piece of a backup's records (their values already sealed).
    Rows {
        /// The restore in progress.
        restore_id: u64,
        /// Secrets by path.
        secrets: Vec<(SecretPath, SecretRecord)>,
        /// Policies by name.
        policies: Vec<(PolicyName, PolicyRecord)>,
    },
    /// End: the backup's root key record and counters.
    Finish {
        /// The restore in progress.
        restore_id: u64,
        /// The backup's cluster metadata.
        cluster: Box<ClusterMeta>,
    },
}

/// Facts about the cluster's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipCommand {
    /// Record that a removed replica's id may never be used again.
    RetireNode {
        /// The replica's id.
        id: NodeId,
    },
    /// From this entry on, the cluster writes on-disk format `format`
    /// (`raft::format`): proposed by the leader once every member reads it.
    /// Never lowers the format. Format 2 and up.
    SwitchFormat {
        /// The format switched to.
        format: u32,
    },
    /// Whether member `id` is a permanent non-voter (a read replica the
    /// leader's autopilot never promotes), set before it is added as a
    /// learner and cleared when it is added again as a voter-to-be. A
    /// replicated fact, so every later leader knows it. Format 3.
    SetNonVoter {
        /// The replica's id.
        id: NodeId,
        /// Whether it stays a non-voter.
        non_voter: bool,
    },
}

impl Request {
    /// The oldest on-disk format whose readers decode this request: 1 for
    /// everything the first release knew, 2 and 3 for what those added.
    /// Variants are only ever appended, so an older variant encodes the
    /// same bytes in every format.
    pub fn format_needed(&self) -> u32 {
        match self.command {
            Command::Membership(MembershipCommand::SwitchFormat { .. }) => 2,
            Command::Membership(MembershipCommand::SetNonVoter { .. }) => 3,
            _ => 1,
        }
    }

    /// The format this request switches the cluster to, if it does.
    pub fn switches_format_to(&self) -> Option<u32> {
        match self.command {
            Command::Membership(MembershipCommand::SwitchFormat { format }) => Some(format),
            _ => None,
        }
    }
}

/// What applying a request produced. Cached per client session, so a
/// retried write returns exactly what the first attempt returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The change was made.
    Done,
    /// A secret version was written.
    Written(Written),
    /// A policy was created or replaced; this is its id.
    PolicyStored(PolicyId),
    /// The change was refused; nothing changed.
    Refused(Refusal),
}

/// Why apply changed nothing. Deterministic: every replica refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// A secret operation failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The policy does not exist.
    #[error("policy not found")]
    PolicyNotFound,
    /// The cluster holds the most policies it may.
    #[error("the cluster already holds {0} policies, the maximum")]
    PolicyLimit(u64),
    /// A new policy's proposed id is another policy's: the replica that
    /// proposed it draws another.
    #[error("policy id {0} is taken")]
    PolicyIdTaken(PolicyId),
    /// `Initialize` on an initialized cluster.
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    /// A data command before `Initialize`.
    #[error("the cluster is not initialized")]
    NotInitialized,
    /// A root-key command for the wrong generation.
    #[error("root key {proposed} does not follow the current root key {current}")]
    RootKeyOutOfOrder {
        /// The current root key id.
        current: RootKeyId,
        /// The one proposed.
        proposed: RootKeyId,
    },
    /// A key change built from a keyring that has changed since.
    #[error(
        "the keyring changed (version {current}) since this change was built (version {proposed})"
    )]
    KeyringChanged {
        /// The current keyring version.
        current: u64,
        /// The version the change was built from.
        proposed: u64,
    },
    /// A restore piece for a restore that is not in progress.
    #[error("restore {0} is not in progress")]
    RestoreNotInProgress(u64),
    /// A backup's policies share an id; nothing was changed by this step.
    #[error("the backup holds policy id {0} twice")]
    BackupPolicyIdTwice(PolicyId),
    /// The store is being replaced by a backup.
    #[error("a backup is being restored")]
    Restoring,
    /// A data key's encryption budget is spent: it must be rotated first.
    #[error("data key {data_key_id} has made {used} encryptions, its limit")]
    EncryptionsSpent {
        /// The data key.
        data_key_id: DataKeyId,
        /// Encryptions counted under it.
        used: u64,
    },
    /// A retried write older than the client's last one.
    #[error("sequence {sequence} is older than this client's last write {last}")]
    StaleSequence {
        /// The sequence sent.
        sequence: u64,
        /// The last one applied.
        last: u64,
    },
}

impl std::fmt::Display for Request {
    /// A one-line summary for openraft's logs: the command kind and its
    /// public target, never values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Command::Keys(KeyCommand::Initialize(record)) => {
                write!(f, "initialize(root key {})", record.root_key_id)
            }
            Command::Keys(KeyCommand::Rekey { record, .. }) => {
                write!(f, "rekey(root key {})", record.root_key_id)
            }
            Command::Keys(KeyCommand::ReplaceKeyring { root_key_id, .. }) => {
                write!(f, "replace-keyring(root key {root_key_id})")
            }
            Command::Keys(KeyCommand::ReserveEncryptions { data_key_id, count }) => {
                write!(f, "reserve-encryptions(data key {data_key_id}: {count})")
            }
            Command::Secret(SecretCommand::Put { path, .. }) => write!(f, "put-secret({path})"),
            Command::Secret(SecretCommand::Delete { path, .. }) => {
                write!(f, "delete-secret({path})")
            }
            Command::Secret(SecretCommand::Undelete { path, .. }) => {
                write!(f, "undelete-secret({path})")
            }
            Command::Secret(SecretCommand::Destroy { path, .. }) => {
                write!(f, "destroy-secret({path})")
            }
            Command::Policy(PolicyCommand::Put { name, .. }) => write!(f, "put-policy({name})"),
            Command::Policy(PolicyCommand::Delete { policy }) => {
                write!(f, "delete-policy({policy})")
            }
            Command::Restore(RestoreCommand::Begin { restore_id }) => {
                write!(f, "begin-restore({restore_id})")
            }
            Command::Restore(RestoreCommand::Rows {
                restore_id,
                secrets,
                policies,
            }) => write!(
                f,
                "restore-rows({restore_id}: {} secrets, {} policies)",
                secrets.len(),
                policies.len()
            ),
            Command::Restore(RestoreCommand::Finish { restore_id, .. }) => {
                write!(f, "finish-restore({restore_id})")
            }
            Command::Membership(MembershipCommand::RetireNode { id }) => {
                write!(f, "retire-node({id})")
            }
            Command::Membership(MembershipCommand::SwitchFormat { format }) => {
                write!(f, "switch-format({format})")
            }
            Command::Membership(MembershipCommand::SetNonVoter { id, non_voter }) => {
                write!(f, "set-non-voter({id}, {non_voter})")
            }
        }
    }
}
