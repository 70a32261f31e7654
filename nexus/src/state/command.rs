//! What the Raft log carries: commands with their leader-assigned time and
//! optional client session, and the responses apply produces.
//!
//! Everything here is public metadata or ciphertext. A command is built on
//! the node that received the request (which parses identifiers and seals
//! any values with the keyring first); apply never encrypts, decrypts,
//! reads a clock or draws a random number. Commands are grouped by family,
//! and each family has its own apply function.

use serde::{Deserialize, Serialize};
use spike_sdk::api::RateLimits;
use spike_sdk::domain::{
    DataKeyId, NodeId, PolicyId, PolicyName, PolicyRef, RootKeyId, SecretPath,
};

use super::secret::{SecretError, SecretRecord, TimeNs, Written};
use super::store::{ClusterMeta, CustomMetadataRecord, PolicyRecord};

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
    /// Cluster-wide settings every leader acts on. Format 3 and up.
    Settings(SettingsCommand),
    /// Scheduled backups. Format 3 and up.
    Backup(BackupCommand),
    /// Cluster-wide limits the superuser sets. Format 3 and up.
    Limits(LimitsCommand),
}

/// Cluster-wide settings, replicated so every leader applies one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsCommand {
    /// Replace the key rotation settings (they override the leader's flags).
    SetRotation(RotationSettings),
}

/// When keys are replaced and how fast old ciphertext moves to the newest
/// data key. Public metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationSettings {
    /// Encryptions (cluster-wide) after which the active data key is
    /// replaced; 1 to `ENCRYPTIONS_ROTATE_AT`.
    pub data_key_rotate_after_ops: u64,
    /// Age after which the active data key is replaced; 0: never by age.
    pub data_key_max_age_ns: u64,
    /// Age after which the root key is replaced; 0: never by age.
    pub root_key_max_age_ns: u64,
    /// Secret versions the leader re-seals under the newest data key per
    /// second; 0: no background re-encryption.
    pub reencrypt_per_second: u32,
}

/// The shortest key age a setting may ask for: a keyring holds at most
/// `KEYS_MAX` data keys, and each rotation re-replicates it.
pub const KEY_MAX_AGE_MIN_NS: u64 = 1_000_000_000;
/// The longest key age a setting may name (about 100 years).
pub const KEY_MAX_AGE_MAX_NS: u64 = 100 * 366 * 24 * 3600 * 1_000_000_000;
/// The fastest background re-encryption (each version is a log entry).
pub const REENCRYPT_PER_SECOND_MAX: u32 = 10_000;

impl RotationSettings {
    /// Why a leader could not follow these settings, if it could not.
    pub fn check(&self) -> Result<(), String> {
        let ops_max = spike_sdk::crypto::keyring::ENCRYPTIONS_ROTATE_AT;
        if !(1..=ops_max).contains(&self.data_key_rotate_after_ops) {
            return Err(format!(
                "dataKeyRotateAfterOps must be 1 to {ops_max}, not {}",
                self.data_key_rotate_after_ops
            ));
        }
        for (name, age) in [
            ("dataKeyMaxAge", self.data_key_max_age_ns),
            ("rootKeyMaxAge", self.root_key_max_age_ns),
        ] {
            if age != 0 && !(KEY_MAX_AGE_MIN_NS..=KEY_MAX_AGE_MAX_NS).contains(&age) {
                return Err(format!(
                    "{name} must be 0 (off) or 1s to 100 years, not {age} ns"
                ));
            }
        }
        if self.reencrypt_per_second > REENCRYPT_PER_SECOND_MAX {
            return Err(format!(
                "reencryptPerSecond must be at most {REENCRYPT_PER_SECOND_MAX}, not {}",
                self.reencrypt_per_second
            ));
        }
        Ok(())
    }
}

/// Cluster-wide limits, enforced by every replica at its API edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitsCommand {
    /// Replace the rate limits (validated by the replica that took the
    /// request, and again by apply).
    Set(RateLimits),
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
    /// Replace the custom metadata of an existing secret. Format 3 and up.
    PutCustomMetadata {
        /// The secret's path.
        path: SecretPath,
        /// The pairs as JSON, sealed with the path in the associated data.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The data key that sealed them (for the per-key counter).
        data_key_id: DataKeyId,
    },
    /// One kept version re-sealed (same values) under a newer data key by
    /// the leader's background re-encryption. A compare-and-set: refused
    /// unless the version still holds exactly the ciphertext it was built
    /// from, so nothing written or destroyed since is ever overwritten.
    /// Format 3 and up.
    Reseal {
        /// The secret's path.
        path: SecretPath,
        /// The version re-sealed.
        version: u64,
        /// SHA-256 of the ciphertext it replaces.
        previous_digest: [u8; 32],
        /// The same values, sealed under `data_key_id`.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The data key that sealed them (for the per-key counter).
        data_key_id: DataKeyId,
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
    /// One piece of a backup's custom metadata, after the secrets it
    /// belongs to. Format 3 and up.
    CustomMetadataRows {
        /// The restore in progress.
        restore_id: u64,
        /// Custom metadata by secret path.
        rows: Vec<(SecretPath, CustomMetadataRecord)>,
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
    /// Changes nothing: every replica that applies it records the digest
    /// of its state as of this entry (`state::digest`), and replicas
    /// compare their digests at it to find one whose state diverged
    /// (`crate::integrity`). Proposed by the leader now and then. Format 3.
    DigestCheckpoint,
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

/// Scheduled backups (`crate::backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupCommand {
    /// A leader wrote the backup of a schedule slot: record it, unless a
    /// slot starting at or after this one's start is already recorded
    /// (then another leader took it, and this one deletes its file).
    Completed(BackupRecord),
}

/// The last completed scheduled backup, as the replicated state records
/// it: public facts only (the file holds ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The schedule slot: floor(leader time / interval).
    pub slot: u64,
    /// The interval the slot is counted in, milliseconds (at least 1).
    pub interval_ms: u64,
    /// The last log index the backup holds.
    pub index: u64,
    /// The root key its data is sealed under.
    pub root_key_id: RootKeyId,
    /// The file's name in the writer's backup directory.
    pub file: String,
    /// The replica that wrote it (then the leader).
    pub node: NodeId,
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

impl BackupRecord {
    /// When the slot starts, milliseconds since the Unix epoch: what
    /// orders slots even across a change of the interval.
    pub fn slot_start_ms(&self) -> u128 {
        u128::from(self.slot) * u128::from(self.interval_ms)
    }
}

impl Request {
    /// The oldest on-disk format whose readers decode this request: 1 for
    /// everything the first release knew, 2 and 3 for what those formats
    /// added.
    /// Variants are only ever appended, so an older variant encodes the
    /// same bytes in every format.
    pub fn format_needed(&self) -> u32 {
        match self.command {
            Command::Backup(_) => 3,
            Command::Membership(MembershipCommand::SwitchFormat { .. }) => 2,
            Command::Secret(SecretCommand::PutCustomMetadata { .. })
            | Command::Restore(RestoreCommand::CustomMetadataRows { .. })
            | Command::Settings(_)
            | Command::Secret(SecretCommand::Reseal { .. })
            | Command::Membership(MembershipCommand::DigestCheckpoint)
            | Command::Limits(_) => 3,
            Command::Membership(MembershipCommand::SetNonVoter { .. }) => 3,
            _ => 1,
        }
    }

    /// Whether applying this request records a state digest.
    pub fn is_digest_checkpoint(&self) -> bool {
        matches!(
            self.command,
            Command::Membership(MembershipCommand::DigestCheckpoint)
        )
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
    // Appended variants (format 3): never reorder.
    /// A re-seal of a secret version that changed (or went) since the
    /// re-seal was built: a newer write wins.
    #[error("secret version changed since its re-seal was built")]
    ResealStale,
    /// Rotation settings no leader could follow.
    #[error("invalid rotation settings: {0}")]
    InvalidSettings(String),
    /// A backup record for a slot that does not start after the last one
    /// recorded: another leader took it.
    #[error(
        "backup slot {proposed} (starting at {proposed_start_ms} ms) does not follow the recorded slot {recorded} (starting at {recorded_start_ms} ms)"
    )]
    BackupSlotTaken {
        /// The slot proposed.
        proposed: u64,
        /// When it starts, milliseconds since the Unix epoch.
        proposed_start_ms: u128,
        /// The last slot recorded.
        recorded: u64,
        /// When that one starts.
        recorded_start_ms: u128,
    },
    /// A backup record whose interval is 0 or whose file name is not a
    /// plain name of at most [`BACKUP_FILE_NAME_MAX_BYTES`] bytes.
    #[error("malformed backup record: {0}")]
    BackupRecordMalformed(String),
    /// Limits that break a rule (a replica of another release may
    /// validate differently); nothing changed. Format 3 and up.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
}

/// Longest file name a backup record carries.
pub const BACKUP_FILE_NAME_MAX_BYTES: usize = 128;

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
            Command::Secret(SecretCommand::PutCustomMetadata { path, .. }) => {
                write!(f, "put-custom-metadata({path})")
            }
            Command::Secret(SecretCommand::Reseal { path, version, .. }) => {
                write!(f, "reseal-secret({path} v{version})")
            }
            Command::Settings(SettingsCommand::SetRotation(_)) => write!(f, "set-rotation"),
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
            Command::Restore(RestoreCommand::CustomMetadataRows { restore_id, rows }) => write!(
                f,
                "restore-custom-metadata({restore_id}: {} secrets)",
                rows.len()
            ),
            Command::Membership(MembershipCommand::RetireNode { id }) => {
                write!(f, "retire-node({id})")
            }
            Command::Membership(MembershipCommand::SwitchFormat { format }) => {
                write!(f, "switch-format({format})")
            }
            Command::Backup(BackupCommand::Completed(record)) => {
                write!(f, "backup-completed(slot {}: {})", record.slot, record.file)
            }
            Command::Membership(MembershipCommand::DigestCheckpoint) => {
                f.write_str("digest-checkpoint")
            }
            Command::Membership(MembershipCommand::SetNonVoter { id, non_voter }) => {
                write!(f, "set-non-voter({id}, {non_voter})")
            }
            Command::Limits(LimitsCommand::Set(limits)) => {
                write!(f, "set-limits({} rules)", limits.rules.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: Command) -> Request {
        Request {
            command,
            session: None,
            time_ns: 0,
        }
    }

    #[test]
    fn custom_metadata_commands_need_format_3_and_older_commands_keep_theirs() {
        let path: SecretPath = "a/b".parse().expect("a path");
        let custom = request(Command::Secret(SecretCommand::PutCustomMetadata {
            path: path.clone(),
            ciphertext: vec![1],
            data_key_id: DataKeyId(1),
        }));
        assert_eq!(custom.format_needed(), 3);
        let rows = request(Command::Restore(RestoreCommand::CustomMetadataRows {
            restore_id: 1,
            rows: Vec::new(),
        }));
        assert_eq!(rows.format_needed(), 3);
        let destroy = request(Command::Secret(SecretCommand::Destroy {
            path,
            versions: vec![],
        }));
        assert_eq!(destroy.format_needed(), 1);
        let switch = request(Command::Membership(MembershipCommand::SwitchFormat {
            format: 3,
        }));
        assert_eq!(switch.format_needed(), 2);
        assert_eq!(switch.switches_format_to(), Some(3));
    }

    #[test]
    fn a_digest_checkpoint_needs_format_3() {
        let checkpoint = request(Command::Membership(MembershipCommand::DigestCheckpoint));
        assert_eq!(checkpoint.format_needed(), 3);
        assert!(checkpoint.is_digest_checkpoint());
        assert_eq!(checkpoint.to_string(), "digest-checkpoint");
    }
}
