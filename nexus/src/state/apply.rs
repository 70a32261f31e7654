//! What each command does to the state: one function per command family,
//! so the compiler proves every command is handled.
//!
//! Each returns `Ok(Ok(response))` for a change made, `Ok(Err(refusal))`
//! for a change refused (deterministically, with nothing changed), and
//! `Err` only when the storage underneath fails.

use std::collections::BTreeSet;

use redb::{ReadableTable, ReadableTableMetadata};
use sha2::{Digest, Sha256};
use spike_sdk::crypto::keyring::ENCRYPTIONS_MAX;
use spike_sdk::domain::{DataKeyId, NodeId, PolicyId, PolicyName, PolicyRef, SecretPath};

use super::command::{
    BACKUP_FILE_NAME_MAX_BYTES, BackupCommand, BackupRecord, Command, KeyCommand, LimitsCommand,
    MembershipCommand, PolicyCommand, Refusal, Response, RestoreCommand, SecretCommand,
    SettingsCommand,
};
use super::secret::{SecretError, SecretRecord, TimeNs};
use super::store::{
    ClusterMeta, CustomMetadataRecord, META_BACKUP, META_LIMITS, POLICIES_MAX, PolicyRecord,
    RotationMeta, StoreError, Tables, decode, encode, id_key, last_backup_in, redb_try,
};

/// A change made, or refused.
pub(super) type Applied = Result<Response, Refusal>;

/// Applies `command` at log time `now`.
pub(super) fn apply_command(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    rotation: &mut RotationMeta,
    command: &Command,
    now: TimeNs,
) -> Result<Applied, StoreError> {
    match command {
        Command::Membership(command) => Ok(apply_membership(meta, command)),
        Command::Settings(command) => Ok(apply_settings(rotation, command)),
        // A record of a file already written: kept even during a restore.
        Command::Backup(command) => apply_backup(tables, command),
        // Settings, not data: they apply during a restore too.
        Command::Limits(command) => apply_limits(tables, command),
        Command::Restore(command) => apply_restore(tables, meta, command),
        _ if meta.restoring.is_some() => Ok(Err(Refusal::Restoring)),
        Command::Keys(command) => Ok(apply_keys(meta, command)),
        Command::Secret(command) => apply_secret(tables, meta, command, now),
        Command::Policy(command) => apply_policy(tables, meta, command, now),
    }
}

/// Records the limits in the `META` table; refused if they break a rule.
fn apply_limits(tables: &mut Tables<'_>, command: &LimitsCommand) -> Result<Applied, StoreError> {
    let LimitsCommand::Set(limits) = command;
    if let Err(reason) = limits.validate() {
        return Ok(Err(Refusal::InvalidLimits(reason)));
    }
    redb_try!(
        "write limits",
        tables
            .meta_rows
            .insert(META_LIMITS, encode(limits)?.as_slice())
    )?;
    Ok(Ok(Response::Done))
}

/// Applies even during a restore: a removed replica stays retired.
fn apply_membership(meta: &mut ClusterMeta, command: &MembershipCommand) -> Applied {
    match command {
        MembershipCommand::RetireNode { id } => {
            meta.retired_node_ids.insert(*id);
        }
        // Recorded by the state machine, with the database's stamp, in
        // the same transaction.
        MembershipCommand::SwitchFormat { .. } | MembershipCommand::DigestCheckpoint => {}
        // Kept under their own key ([`apply_non_voters`]).
        MembershipCommand::SetNonVoter { .. } => {}
    }
    Ok(Response::Done)
}

/// Settings apply even during a restore: they are not part of a backup.
fn apply_settings(rotation: &mut RotationMeta, command: &SettingsCommand) -> Applied {
    match command {
        SettingsCommand::SetRotation(settings) => {
            settings.check().map_err(Refusal::InvalidSettings)?;
            rotation.settings = Some(*settings);
        }
    }
    Ok(Response::Done)
}

/// Records a completed backup only for a slot that starts after the last
/// one recorded, so each slot is recorded at most once whoever leads.
fn apply_backup(tables: &mut Tables<'_>, command: &BackupCommand) -> Result<Applied, StoreError> {
    let BackupCommand::Completed(record) = command;
    if let Err(reason) = check_backup_record(record) {
        return Ok(Err(Refusal::BackupRecordMalformed(reason)));
    }
    if let Some(last) = last_backup_in(&tables.meta_rows)?
        && record.slot_start_ms() <= last.slot_start_ms()
    {
        return Ok(Err(Refusal::BackupSlotTaken {
            proposed: record.slot,
            proposed_start_ms: record.slot_start_ms(),
            recorded: last.slot,
            recorded_start_ms: last.slot_start_ms(),
        }));
    }
    redb_try!(
        "write last backup",
        tables
            .meta_rows
            .insert(META_BACKUP, encode(record)?.as_slice())
    )?;
    Ok(Ok(Response::Done))
}

fn check_backup_record(record: &BackupRecord) -> Result<(), String> {
    if record.interval_ms == 0 {
        return Err("the interval is 0".to_owned());
    }
    let name = &record.file;
    if name.is_empty()
        || name.len() > BACKUP_FILE_NAME_MAX_BYTES
        || name.contains('/')
        || name.starts_with('.')
    {
        return Err(format!(
            "file name {name:?} is not a plain name of 1 to {BACKUP_FILE_NAME_MAX_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Applies `command` to the set of permanent non-voters; whether it
/// changed. A retired id is dropped: it never returns.
pub fn apply_non_voters(non_voters: &mut BTreeSet<NodeId>, command: &MembershipCommand) -> bool {
    match command {
        MembershipCommand::SetNonVoter {
            id,
            non_voter: true,
        } => non_voters.insert(*id),
        MembershipCommand::SetNonVoter {
            id,
            non_voter: false,
        }
        | MembershipCommand::RetireNode { id } => non_voters.remove(id),
        MembershipCommand::SwitchFormat { .. } | MembershipCommand::DigestCheckpoint => false,
    }
}

fn keyring_unchanged(current: u64, proposed: u64) -> Result<(), Refusal> {
    if proposed == current {
        Ok(())
    } else {
        Err(Refusal::KeyringChanged { current, proposed })
    }
}

fn apply_keys(meta: &mut ClusterMeta, command: &KeyCommand) -> Applied {
    match command {
        KeyCommand::ReserveEncryptions { data_key_id, count } => {
            if meta.root_key.is_none() {
                return Err(Refusal::NotInitialized);
            }
            let used = meta.encryptions.get(data_key_id).copied().unwrap_or(0);
            let total = used
                .checked_add(*count)
                .filter(|total| *total <= ENCRYPTIONS_MAX)
                .ok_or(Refusal::EncryptionsSpent {
                    data_key_id: *data_key_id,
                    used,
                })?;
            meta.encryptions.insert(*data_key_id, total);
            // Counting changes no key: the keyring version stays.
            return Ok(Response::Done);
        }
        KeyCommand::Initialize(record) => {
            if meta.root_key.is_some() {
                return Err(Refusal::AlreadyInitialized);
            }
            meta.root_key = Some(record.clone());
        }
        KeyCommand::Rekey {
            record,
            keyring_version,
        } => {
            let current = meta.root_key_id().ok_or(Refusal::NotInitialized)?;
            if record.root_key_id <= current {
                return Err(Refusal::RootKeyOutOfOrder {
                    current,
                    proposed: record.root_key_id,
                });
            }
            keyring_unchanged(meta.keyring_version, *keyring_version)?;
            meta.root_key = Some(record.clone());
        }
        KeyCommand::ReplaceKeyring {
            root_key_id,
            wrapped_keyring,
            keyring_version,
        } => {
            let current = meta.root_key.as_mut().ok_or(Refusal::NotInitialized)?;
            if *root_key_id != current.root_key_id {
                return Err(Refusal::RootKeyOutOfOrder {
                    current: current.root_key_id,
                    proposed: *root_key_id,
                });
            }
            keyring_unchanged(meta.keyring_version, *keyring_version)?;
            current.wrapped_keyring = wrapped_keyring.clone();
        }
    }
    meta.keyring_version += 1;
    Ok(Response::Done)
}

fn apply_secret(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    command: &SecretCommand,
    now: TimeNs,
) -> Result<Applied, StoreError> {
    if meta.root_key.is_none() {
        return Ok(Err(Refusal::NotInitialized));
    }
    match command {
        SecretCommand::Put {
            path,
            ciphertext,
            data_key_id,
            cas,
            max_versions,
        } => {
            let existing = read_secret(tables, path)?;
            match SecretRecord::put(existing, ciphertext.clone(), *cas, *max_versions, now) {
                Ok((record, written)) => {
                    write_secret(tables, path, &record)?;
                    count_encryption(meta, *data_key_id);
                    Ok(Ok(Response::Written(written)))
                }
                Err(error) => Ok(Err(error.into())),
            }
        }
        SecretCommand::Delete { path, versions } => change_versions(tables, path, |record| {
            record.delete(versions, now);
            Ok(())
        }),
        SecretCommand::Undelete { path, versions } => {
            change_versions(tables, path, |record| record.undelete(versions, now))
        }
        SecretCommand::Destroy { path, versions } => {
            change_versions(tables, path, |record| record.destroy(versions, now))
        }
        SecretCommand::PutCustomMetadata {
            path,
            ciphertext,
            data_key_id,
        } => {
            if read_secret(tables, path)?.is_none() {
                return Ok(Err(SecretError::NotFound.into()));
            }
            let record = CustomMetadataRecord {
                ciphertext: ciphertext.clone(),
                updated_at: now,
            };
            redb_try!(
                "write secret metadata",
                tables
                    .secret_metadata()?
                    .insert(path.as_str(), encode(&record)?.as_slice())
            )?;
            count_encryption(meta, *data_key_id);
            Ok(Ok(Response::Done))
        }
        SecretCommand::Reseal {
            path,
            version,
            previous_digest,
            ciphertext,
            data_key_id,
        } => {
            let Some(mut record) = read_secret(tables, path)? else {
                return Ok(Err(Refusal::ResealStale));
            };
            // Only the ciphertext changes: times, marks and numbers stay,
            // so a reader sees the same version with the same values.
            let Some(kept) = record.versions.get_mut(version) else {
                return Ok(Err(Refusal::ResealStale));
            };
            if kept.destroyed || Sha256::digest(&kept.ciphertext).as_slice() != previous_digest {
                return Ok(Err(Refusal::ResealStale));
            }
            kept.ciphertext.clone_from(ciphertext);
            write_secret(tables, path, &record)?;
            count_encryption(meta, *data_key_id);
            Ok(Ok(Response::Done))
        }
    }
}

fn count_encryption(meta: &mut ClusterMeta, data_key_id: DataKeyId) {
    let count = meta.encryptions.entry(data_key_id).or_default();
    *count = count.saturating_add(1);
}

fn read_secret(tables: &Tables<'_>, path: &SecretPath) -> Result<Option<SecretRecord>, StoreError> {
    match redb_try!("read secret", tables.secrets.get(path.as_str()))? {
        Some(bytes) => decode(path.as_str(), bytes.value()).map(Some),
        None => Ok(None),
    }
}

fn write_secret(
    tables: &mut Tables<'_>,
    path: &SecretPath,
    record: &SecretRecord,
) -> Result<(), StoreError> {
    redb_try!(
        "write secret",
        tables
            .secrets
            .insert(path.as_str(), encode(record)?.as_slice())
    )?;
    Ok(())
}

/// Delete, undelete or destroy versions of the secret at `path`.
fn change_versions(
    tables: &mut Tables<'_>,
    path: &SecretPath,
    change: impl FnOnce(&mut SecretRecord) -> Result<(), SecretError>,
) -> Result<Applied, StoreError> {
    let Some(mut record) = read_secret(tables, path)? else {
        return Ok(Err(SecretError::NotFound.into()));
    };
    if let Err(error) = change(&mut record) {
        return Ok(Err(error.into()));
    }
    write_secret(tables, path, &record)?;
    Ok(Ok(Response::Done))
}

fn apply_policy(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    command: &PolicyCommand,
    now: TimeNs,
) -> Result<Applied, StoreError> {
    if meta.root_key.is_none() {
        return Ok(Err(Refusal::NotInitialized));
    }
    let applied = match command {
        PolicyCommand::Put {
            id,
            name,
            ciphertext,
            data_key_id,
        } => {
            let stored = put_policy(tables, *id, name, ciphertext, now)?;
            if stored.is_ok() {
                count_encryption(meta, *data_key_id);
            }
            stored
        }
        PolicyCommand::Delete { policy } => delete_policy(tables, policy)?,
    };
    if applied.is_ok() {
        // Replicas recompile their policies when this moves.
        meta.policies_version += 1;
    }
    Ok(applied)
}

/// Creates the policy `name` with id `proposed`, or replaces its body,
/// keeping its id and creation time.
fn put_policy(
    tables: &mut Tables<'_>,
    proposed: PolicyId,
    name: &PolicyName,
    ciphertext: &[u8],
    now: TimeNs,
) -> Result<Applied, StoreError> {
    let existing = match redb_try!("read policy", tables.policies.get(name.as_str()))? {
        Some(bytes) => Some(decode::<PolicyRecord>(name.as_str(), bytes.value())?),
        None => None,
    };
    let record = match existing {
        Some(existing) => PolicyRecord {
            ciphertext: ciphertext.to_vec(),
            updated_at: now,
            ..existing
        },
        None => {
            if redb_try!("count policies", tables.policies.len())? >= POLICIES_MAX {
                return Ok(Err(Refusal::PolicyLimit(POLICIES_MAX)));
            }
            if redb_try!("read policy id", tables.policy_ids.get(id_key(proposed)))?.is_some() {
                return Ok(Err(Refusal::PolicyIdTaken(proposed)));
            }
            redb_try!(
                "index policy",
                tables.policy_ids.insert(id_key(proposed), name.as_str())
            )?;
            PolicyRecord {
                id: proposed,
                ciphertext: ciphertext.to_vec(),
                created_at: now,
                updated_at: now,
            }
        }
    };
    redb_try!(
        "write policy",
        tables
            .policies
            .insert(name.as_str(), encode(&record)?.as_slice())
    )?;
    Ok(Ok(Response::PolicyStored(record.id)))
}

/// Removes the policy `policy` names: by id first, then by name.
fn delete_policy(tables: &mut Tables<'_>, policy: &PolicyRef) -> Result<Applied, StoreError> {
    let by_id = match policy.id() {
        Some(id) => redb_try!("read policy id", tables.policy_ids.get(id_key(id)))?
            .map(|name| name.value().to_owned()),
        None => None,
    };
    let Some(name) = by_id.or_else(|| policy.name().map(|name| name.as_str().to_owned())) else {
        return Ok(Err(Refusal::PolicyNotFound));
    };
    let removed = match redb_try!("delete policy", tables.policies.remove(name.as_str()))? {
        Some(bytes) => decode::<PolicyRecord>(&name, bytes.value())?,
        None => return Ok(Err(Refusal::PolicyNotFound)),
    };
    redb_try!(
        "unindex policy",
        tables.policy_ids.remove(id_key(removed.id))
    )?;
    Ok(Ok(Response::Done))
}

/// Replacing the store with a backup. Sessions do not survive it: they
/// belong to the clients of the cluster the backup came from.
fn apply_restore(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    command: &RestoreCommand,
) -> Result<Applied, StoreError> {
    match command {
        RestoreCommand::Begin { restore_id } => {
            redb_try!("clear secrets", tables.secrets.retain(|_, _| false))?;
            redb_try!("clear policies", tables.policies.retain(|_, _| false))?;
            redb_try!("clear policy ids", tables.policy_ids.retain(|_, _| false))?;
            redb_try!("clear sessions", tables.sessions.retain(|_, _| false))?;
            redb_try!("clear session expiry", tables.expiry.retain(|_, _| false))?;
            redb_try!("clear session owners", tables.owners.retain(|_, _| false))?;
            tables.clear_secret_metadata()?;
            meta.restoring = Some(*restore_id);
            meta.root_key = None;
            meta.keyring_version += 1;
            meta.policies_version += 1;
            Ok(Ok(Response::Done))
        }
        RestoreCommand::Rows {
            restore_id,
            secrets,
            policies,
        } => {
            if meta.restoring != Some(*restore_id) {
                return Ok(Err(Refusal::RestoreNotInProgress(*restore_id)));
            }
            if let Err(refusal) = check_restored_policies(tables, policies)? {
                return Ok(Err(refusal));
            }
            for (path, record) in secrets {
                write_secret(tables, path, record)?;
            }
            for (name, record) in policies {
                restore_policy(tables, name, record)?;
            }
            Ok(Ok(Response::Done))
        }
        RestoreCommand::CustomMetadataRows { restore_id, rows } => {
            if meta.restoring != Some(*restore_id) {
                return Ok(Err(Refusal::RestoreNotInProgress(*restore_id)));
            }
            // Custom metadata belongs to a secret: a piece naming a path the
            // restore did not bring is refused whole.
            for (path, _) in rows {
                if read_secret(tables, path)?.is_none() {
                    return Ok(Err(SecretError::NotFound.into()));
                }
            }
            for (path, record) in rows {
                redb_try!(
                    "restore secret metadata",
                    tables
                        .secret_metadata()?
                        .insert(path.as_str(), encode(record)?.as_slice())
                )?;
            }
            Ok(Ok(Response::Done))
        }
        RestoreCommand::Finish {
            restore_id,
            cluster,
        } => {
            if meta.restoring != Some(*restore_id) {
                return Ok(Err(Refusal::RestoreNotInProgress(*restore_id)));
            }
            meta.root_key = cluster.root_key.clone();
            meta.encryptions = cluster.encryptions.clone();
            meta.keyring_version = meta.keyring_version.max(cluster.keyring_version) + 1;
            meta.policies_version = meta.policies_version.max(cluster.policies_version) + 1;
            meta.retired_node_ids
                .extend(cluster.retired_node_ids.iter().copied());
            meta.restoring = None;
            Ok(Ok(Response::Done))
        }
    }
}

/// Refuses a piece of policies that would break the id index or the
/// policy limit, before anything of it is written.
fn check_restored_policies(
    tables: &Tables<'_>,
    policies: &[(PolicyName, PolicyRecord)],
) -> Result<Result<(), Refusal>, StoreError> {
    let mut ids = BTreeSet::new();
    let mut new_names = BTreeSet::new();
    for (name, record) in policies {
        if !ids.insert(record.id) {
            return Ok(Err(Refusal::BackupPolicyIdTwice(record.id)));
        }
        if let Some(holder) = redb_try!("read policy id", tables.policy_ids.get(id_key(record.id)))?
            && holder.value() != name.as_str()
        {
            return Ok(Err(Refusal::BackupPolicyIdTwice(record.id)));
        }
        if redb_try!("read policy", tables.policies.get(name.as_str()))?.is_none() {
            new_names.insert(name);
        }
    }
    let count = redb_try!("count policies", tables.policies.len())?;
    if count + new_names.len() as u64 > POLICIES_MAX {
        return Ok(Err(Refusal::PolicyLimit(POLICIES_MAX)));
    }
    Ok(Ok(()))
}

/// Writes one restored policy and its index entry (dropping the entry of a
/// policy of the same name it replaces).
fn restore_policy(
    tables: &mut Tables<'_>,
    name: &PolicyName,
    record: &PolicyRecord,
) -> Result<(), StoreError> {
    let replaced = match redb_try!(
        "restore policy",
        tables
            .policies
            .insert(name.as_str(), encode(record)?.as_slice())
    )? {
        Some(bytes) => Some(decode::<PolicyRecord>(name.as_str(), bytes.value())?.id),
        None => None,
    };
    if let Some(old) = replaced.filter(|old| *old != record.id) {
        redb_try!("unindex policy", tables.policy_ids.remove(id_key(old)))?;
    }
    redb_try!(
        "index policy",
        tables.policy_ids.insert(id_key(record.id), name.as_str())
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use spike_sdk::domain::{NodeId, RootKeyId};

    use super::*;
    use crate::state::command::{Request, RootKeyRecord, RotationSettings};
    use crate::state::secret::Written;
    use crate::state::store::StateReader;
    use crate::state::store::tests::{database, initialize, path, put, root_key, run};

    fn name(text: &str) -> PolicyName {
        text.parse().expect("a valid name")
    }

    fn policy_id(byte: u8) -> PolicyId {
        PolicyId::from_bytes([byte; 16])
    }

    fn put_policy(id: PolicyId, policy_name: &str, body: u8) -> Command {
        Command::Policy(PolicyCommand::Put {
            id,
            name: name(policy_name),
            ciphertext: vec![body],
            data_key_id: DataKeyId(1),
        })
    }

    fn delete_policy(policy: impl Into<PolicyRef>) -> Command {
        Command::Policy(PolicyCommand::Delete {
            policy: policy.into(),
        })
    }

    fn versions(command: fn(SecretPath, Vec<u64>) -> SecretCommand, versions: &[u64]) -> Command {
        Command::Secret(command(path("p"), versions.to_vec()))
    }

    #[test]
    fn limits_are_recorded_replaced_and_refused_when_invalid_and_need_format_3() {
        use spike_sdk::api::{RateLimitRule, RateLimits};
        let (_dir, db) = database();
        let reader = StateReader::new(db.clone());
        assert_eq!(reader.limits().expect("read"), RateLimits::default());
        let limits = RateLimits {
            rules: vec![RateLimitRule {
                spiffe_id: "spiffe://a.org/noisy".to_owned(),
                route: "*".to_owned(),
                rate_per_second: 5,
                burst: 10,
            }],
        };
        let set = |limits: &RateLimits| Command::Limits(LimitsCommand::Set(limits.clone()));
        let request = Request {
            command: set(&limits),
            session: None,
            time_ns: 1,
        };
        assert_eq!(request.format_needed(), 3);
        // Settings, not data: before initialize too.
        assert_eq!(run(&db, set(&limits), 1), Response::Done);
        assert_eq!(reader.limits().expect("read"), limits);
        let mut invalid = limits.clone();
        invalid.rules[0].spiffe_id = "nope".to_owned();
        assert!(matches!(
            run(&db, set(&invalid), 2),
            Response::Refused(Refusal::InvalidLimits(_))
        ));
        assert_eq!(reader.limits().expect("read"), limits);
        assert_eq!(run(&db, set(&RateLimits::default()), 3), Response::Done);
        assert_eq!(reader.limits().expect("read"), RateLimits::default());
    }

    #[test]
    fn data_commands_wait_for_initialize_and_initialize_happens_once() {
        let (_dir, db) = database();
        let not_initialized = Response::Refused(Refusal::NotInitialized);
        assert_eq!(run(&db, put("a"), 1), not_initialized);
        assert_eq!(
            run(&db, put_policy(policy_id(1), "p", 1), 1),
            not_initialized
        );
        assert_eq!(run(&db, initialize(), 2), Response::Done);
        assert_eq!(
            run(&db, initialize(), 3),
            Response::Refused(Refusal::AlreadyInitialized)
        );
        assert_eq!(
            run(&db, put("a"), 4),
            Response::Written(Written { version: 1 })
        );
        let reader = StateReader::new(db);
        assert_eq!(reader.secret_paths().expect("list"), vec![path("a")]);
        let meta = reader.cluster_meta().expect("meta");
        assert_eq!(meta.encryptions.get(&DataKeyId(1)), Some(&1));
        assert_eq!(meta.keyring_version, 1);
    }

    #[test]
    fn rekey_must_follow_the_current_root_key() {
        let (_dir, db) = database();
        let rekey = |id, keyring_version| {
            Command::Keys(KeyCommand::Rekey {
                record: RootKeyRecord {
                    wrapped_keyring: vec![4],
                    ..root_key(id)
                },
                keyring_version,
            })
        };
        assert_eq!(
            run(&db, rekey(2, 0), 1),
            Response::Refused(Refusal::NotInitialized)
        );
        run(&db, initialize(), 1);
        assert_eq!(
            run(&db, rekey(1, 1), 2),
            Response::Refused(Refusal::RootKeyOutOfOrder {
                current: RootKeyId(1),
                proposed: RootKeyId(1)
            })
        );
        assert_eq!(
            run(&db, rekey(3, 0), 3),
            Response::Refused(Refusal::KeyringChanged {
                current: 1,
                proposed: 0
            }),
            "built from a stale keyring"
        );
        assert_eq!(run(&db, rekey(3, 1), 4), Response::Done);
        let meta = StateReader::new(db).cluster_meta().expect("meta");
        assert_eq!(
            (meta.root_key_id(), meta.keyring_version),
            (Some(RootKeyId(3)), 2)
        );
    }

    #[test]
    fn a_keyring_is_replaced_only_under_the_current_root_key_and_keyring() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        let replace = |id, keyring_version| {
            Command::Keys(KeyCommand::ReplaceKeyring {
                root_key_id: RootKeyId(id),
                wrapped_keyring: vec![5, 5],
                keyring_version,
            })
        };
        assert_eq!(
            run(&db, replace(2, 1), 2),
            Response::Refused(Refusal::RootKeyOutOfOrder {
                current: RootKeyId(1),
                proposed: RootKeyId(2)
            })
        );
        assert_eq!(
            run(&db, replace(1, 0), 3),
            Response::Refused(Refusal::KeyringChanged {
                current: 1,
                proposed: 0
            })
        );
        assert_eq!(run(&db, replace(1, 1), 4), Response::Done);
        let meta = StateReader::new(db).cluster_meta().expect("meta");
        let record = meta.root_key.expect("initialized");
        assert_eq!(
            (record.wrapped_keyring, meta.keyring_version),
            (vec![5, 5], 2)
        );
    }

    fn put_custom_metadata(path_text: &str, ciphertext: u8) -> Command {
        Command::Secret(SecretCommand::PutCustomMetadata {
            path: path(path_text),
            ciphertext: vec![ciphertext],
            data_key_id: DataKeyId(1),
        })
    }

    fn custom_metadata_of(db: &std::sync::Arc<redb::Database>, path_text: &str) -> Option<Vec<u8>> {
        StateReader::new(db.clone())
            .secret_and_custom_metadata(&path(path_text))
            .expect("read")
            .and_then(|(_, custom)| custom)
            .map(|custom| custom.ciphertext)
    }

    #[test]
    fn custom_metadata_belongs_to_an_existing_secret_and_a_restore_clears_it() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        assert_eq!(
            run(&db, put_custom_metadata("p", 7), 2),
            Response::Refused(Refusal::Secret(SecretError::NotFound)),
            "no secret at the path"
        );
        run(&db, put("p"), 3);
        assert_eq!(run(&db, put_custom_metadata("p", 7), 4), Response::Done);
        assert_eq!(run(&db, put_custom_metadata("p", 8), 5), Response::Done);
        assert_eq!(custom_metadata_of(&db, "p"), Some(vec![8]), "replaced");
        let meta = StateReader::new(db.clone()).cluster_meta().expect("meta");
        assert_eq!(
            meta.encryptions.get(&DataKeyId(1)),
            Some(&3),
            "one put and two metadata puts sealed under data key 1"
        );

        let begin = Command::Restore(RestoreCommand::Begin { restore_id: 9 });
        assert_eq!(run(&db, begin, 6), Response::Done);
        let rows = |path_text: &str| {
            Command::Restore(RestoreCommand::CustomMetadataRows {
                restore_id: 9,
                rows: vec![(
                    path(path_text),
                    CustomMetadataRecord {
                        ciphertext: vec![1],
                        updated_at: 1,
                    },
                )],
            })
        };
        assert_eq!(
            run(&db, rows("p"), 7),
            Response::Refused(Refusal::Secret(SecretError::NotFound)),
            "the restore brought no secret at p yet"
        );
        assert_eq!(custom_metadata_of(&db, "p"), None, "cleared by the restore");
        let record = StateReader::new(db.clone())
            .secret(&path("p"))
            .expect("read");
        assert!(record.is_none());
    }

    #[test]
    fn secret_versions_are_deleted_undeleted_and_destroyed_through_apply() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        run(&db, put("p"), 2);
        run(&db, put("p"), 3);
        let delete = |path, versions| SecretCommand::Delete { path, versions };
        let undelete = |path, versions| SecretCommand::Undelete { path, versions };
        let destroy = |path, versions| SecretCommand::Destroy { path, versions };
        assert_eq!(run(&db, versions(delete, &[2]), 4), Response::Done);
        let reader = StateReader::new(db.clone());
        let current = || {
            reader
                .secret(&path("p"))
                .expect("read")
                .expect("exists")
                .current_version
        };
        assert_eq!(current(), 1);
        assert_eq!(run(&db, versions(undelete, &[2]), 5), Response::Done);
        assert_eq!(current(), 2);
        assert_eq!(run(&db, versions(destroy, &[]), 6), Response::Done);
        assert_eq!(current(), 1);
        assert_eq!(
            run(&db, versions(undelete, &[2]), 7),
            Response::Refused(Refusal::Secret(SecretError::NotFound)),
            "a destroyed version stays destroyed"
        );
        let missing = Command::Secret(SecretCommand::Delete {
            path: path("nowhere"),
            versions: Vec::new(),
        });
        assert_eq!(
            run(&db, missing, 8),
            Response::Refused(Refusal::Secret(SecretError::NotFound))
        );
    }

    #[test]
    fn every_policy_change_moves_the_policy_version() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        let reader = StateReader::new(db.clone());
        let version = || reader.cluster_meta().expect("meta").policies_version;
        let start = version();
        run(&db, put_policy(policy_id(1), "p", 1), 2);
        assert_eq!(version(), start + 1, "create");
        run(&db, put_policy(policy_id(2), "p", 2), 3);
        assert_eq!(version(), start + 2, "replace");
        run(&db, delete_policy(name("p")), 4);
        assert_eq!(version(), start + 3, "delete");
        run(&db, delete_policy(name("p")), 5);
        assert_eq!(version(), start + 3, "a refused delete changes nothing");
    }

    #[test]
    fn a_created_policy_gets_the_proposed_id_and_a_replaced_one_keeps_its_id_and_creation_time() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        assert_eq!(
            run(&db, put_policy(policy_id(1), "readers", 1), 10),
            Response::PolicyStored(policy_id(1))
        );
        assert_eq!(
            run(&db, put_policy(policy_id(2), "readers", 2), 20),
            Response::PolicyStored(policy_id(1)),
            "the proposed id is ignored on a replace"
        );
        let reader = StateReader::new(db);
        let (found, record) = reader
            .policy(&PolicyRef::from(policy_id(1)))
            .expect("read")
            .expect("found by id");
        assert_eq!(found, name("readers"));
        assert_eq!(
            (
                record.id,
                record.ciphertext,
                record.created_at,
                record.updated_at
            ),
            (policy_id(1), vec![2], 10, 20)
        );
        assert_eq!(
            reader.policy(&PolicyRef::from(policy_id(2))).expect("read"),
            None,
            "the ignored id names nothing"
        );
    }

    #[test]
    fn a_new_policy_whose_proposed_id_is_taken_is_refused_and_nothing_changes() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        run(&db, put_policy(policy_id(1), "first", 1), 2);
        let reader = StateReader::new(db.clone());
        let version = reader.cluster_meta().expect("meta").policies_version;
        assert_eq!(
            run(&db, put_policy(policy_id(1), "second", 2), 3),
            Response::Refused(Refusal::PolicyIdTaken(policy_id(1)))
        );
        assert_eq!(
            reader.cluster_meta().expect("meta").policies_version,
            version
        );
        let names: Vec<PolicyName> = reader
            .policies()
            .expect("list")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec![name("first")]);
        assert_eq!(
            run(&db, put_policy(policy_id(2), "second", 2), 4),
            Response::PolicyStored(policy_id(2)),
            "a fresh id goes through"
        );
    }

    #[test]
    fn a_policy_is_deleted_by_id_or_by_name() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        run(&db, put_policy(policy_id(1), "by-id", 1), 2);
        run(&db, put_policy(policy_id(2), "by-name", 2), 3);
        assert_eq!(run(&db, delete_policy(policy_id(1)), 4), Response::Done);
        assert_eq!(run(&db, delete_policy(name("by-name")), 5), Response::Done);
        assert_eq!(
            run(&db, delete_policy(policy_id(2)), 6),
            Response::Refused(Refusal::PolicyNotFound)
        );
        let reader = StateReader::new(db);
        assert_eq!(reader.policies().expect("list"), Vec::new());
        assert_eq!(
            reader.policy(&PolicyRef::from(policy_id(2))).expect("read"),
            None
        );
    }

    /// A delete by id names the policy that holds the id when it applies:
    /// a policy deleted and re-created under the same name since has a new
    /// id and survives.
    #[test]
    fn a_delete_by_id_never_hits_a_policy_re_created_under_the_same_name() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        run(&db, put_policy(policy_id(1), "p", 1), 2);
        run(&db, delete_policy(name("p")), 3);
        run(&db, put_policy(policy_id(2), "p", 2), 4);
        assert_eq!(
            run(&db, delete_policy(policy_id(1)), 5),
            Response::Refused(Refusal::PolicyNotFound)
        );
        let reader = StateReader::new(db);
        let (_, record) = reader
            .policy(&PolicyRef::from(name("p")))
            .expect("read")
            .expect("still there");
        assert_eq!(record.id, policy_id(2));
    }

    /// A name may look like an id: the id of another policy wins, and a
    /// name nobody holds as an id is looked up as a name.
    #[test]
    fn a_reference_is_resolved_by_id_first_then_by_name() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        let uuid_like = policy_id(7).to_string();
        run(&db, put_policy(policy_id(1), &uuid_like, 1), 2);
        let reference: PolicyRef = uuid_like.parse().expect("a reference");
        let reader = StateReader::new(db.clone());
        let (found, _) = reader.policy(&reference).expect("read").expect("by name");
        assert_eq!(found.as_str(), uuid_like);
        run(&db, put_policy(policy_id(7), "holder", 2), 3);
        let (found, _) = reader.policy(&reference).expect("read").expect("by id");
        assert_eq!(found, name("holder"));
        assert_eq!(run(&db, delete_policy(reference), 4), Response::Done);
        let names: Vec<PolicyName> = reader
            .policies()
            .expect("list")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec![name(&uuid_like)], "the id's holder went");
    }

    #[test]
    fn the_policy_limit_holds() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        let txn = db.begin_write().expect("write");
        let mut batch = super::super::store::Batch::begin(&txn).expect("batch");
        for number in 0..POLICIES_MAX {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&number.to_be_bytes());
            let command = put_policy(PolicyId::from_bytes(id), &format!("p{number}"), 1);
            let request = super::super::command::Request {
                command,
                session: None,
                time_ns: 2,
            };
            let response = batch.apply(2 + number, &request).expect("apply");
            assert!(
                matches!(response, Response::PolicyStored(_)),
                "{response:?}"
            );
        }
        batch.finish().expect("finish");
        txn.commit().expect("commit");
        assert_eq!(
            run(&db, put_policy(policy_id(0xff), "one-more", 1), 3),
            Response::Refused(Refusal::PolicyLimit(POLICIES_MAX))
        );
        assert!(
            matches!(
                run(&db, put_policy(policy_id(0xff), "p0", 1), 4),
                Response::PolicyStored(_)
            ),
            "a replace needs no room"
        );
    }

    fn record(id: u8, created_at: TimeNs) -> PolicyRecord {
        PolicyRecord {
            id: policy_id(id),
            ciphertext: vec![id],
            created_at,
            updated_at: created_at,
        }
    }

    fn rows(
        restore_id: u64,
        secrets: Vec<(SecretPath, SecretRecord)>,
        policies: Vec<(PolicyName, PolicyRecord)>,
    ) -> Command {
        Command::Restore(RestoreCommand::Rows {
            restore_id,
            secrets,
            policies,
        })
    }

    #[test]
    fn a_restore_replaces_everything_and_keeps_the_policy_index() {
        let (_dir, db) = database();
        run(&db, initialize(), 1);
        run(&db, put("old"), 2);
        run(&db, put_policy(policy_id(1), "old", 1), 3);
        let reader = StateReader::new(db.clone());
        let before = reader.cluster_meta().expect("meta");
        let secret = reader.secret(&path("old")).expect("read").expect("exists");

        let begin = Command::Restore(RestoreCommand::Begin { restore_id: 9 });
        assert_eq!(run(&db, begin, 4), Response::Done);
        assert_eq!(
            run(&db, put("new"), 5),
            Response::Refused(Refusal::Restoring)
        );
        assert_eq!(reader.policies().expect("list"), Vec::new());
        assert_eq!(
            run(&db, rows(8, Vec::new(), Vec::new()), 5),
            Response::Refused(Refusal::RestoreNotInProgress(8))
        );
        let piece = rows(
            9,
            vec![(path("restored"), secret)],
            vec![(name("a"), record(2, 7)), (name("b"), record(3, 8))],
        );
        assert_eq!(run(&db, piece, 6), Response::Done);
        // Same name again, another id: the old id leaves the index.
        assert_eq!(
            run(&db, rows(9, Vec::new(), vec![(name("a"), record(4, 9))]), 7),
            Response::Done
        );
        let backup = ClusterMeta {
            root_key: Some(root_key(1)),
            keyring_version: 1,
            policies_version: 1,
            retired_node_ids: [NodeId::new(4).expect("valid")].into(),
            ..ClusterMeta::default()
        };
        let finish = Command::Restore(RestoreCommand::Finish {
            restore_id: 9,
            cluster: Box::new(backup),
        });
        assert_eq!(run(&db, finish, 8), Response::Done);

        let after = reader.cluster_meta().expect("meta");
        assert!(after.keyring_version > before.keyring_version);
        assert!(after.policies_version > before.policies_version);
        assert_eq!(after.restoring, None);
        assert_eq!(reader.secret_paths().expect("list"), vec![path("restored")]);
        let found = |id| {
            reader
                .policy(&PolicyRef::from(policy_id(id)))
                .expect("read")
        };
        assert_eq!(found(1), None, "the old policy went");
        assert_eq!(found(2), None, "replaced within the restore");
        assert_eq!(found(3).map(|(name, _)| name), Some(name("b")));
        assert_eq!(found(4).map(|(name, _)| name), Some(name("a")));
        assert_eq!(
            run(&db, put_policy(policy_id(3), "c", 1), 9),
            Response::Refused(Refusal::PolicyIdTaken(policy_id(3))),
            "restored ids are indexed"
        );
    }

    #[test]
    fn a_restore_piece_whose_policies_share_an_id_is_refused_whole() {
        let (_dir, db) = database();
        run(
            &db,
            Command::Restore(RestoreCommand::Begin { restore_id: 1 }),
            1,
        );
        let twice = rows(
            1,
            Vec::new(),
            vec![(name("a"), record(2, 1)), (name("b"), record(2, 1))],
        );
        assert_eq!(
            run(&db, twice, 2),
            Response::Refused(Refusal::BackupPolicyIdTwice(policy_id(2)))
        );
        run(&db, rows(1, Vec::new(), vec![(name("a"), record(2, 1))]), 3);
        let clash = rows(
            1,
            vec![(
                path("s"),
                SecretRecord::put(None, vec![1], None, 10, 1)
                    .expect("put")
                    .0,
            )],
            vec![(name("b"), record(2, 1))],
        );
        assert_eq!(
            run(&db, clash, 4),
            Response::Refused(Refusal::BackupPolicyIdTwice(policy_id(2)))
        );
        let reader = StateReader::new(db);
        assert_eq!(reader.policies().expect("list").len(), 1);
        assert_eq!(
            reader.secret(&path("s")).expect("read"),
            None,
            "nothing of a refused piece is written"
        );
    }

    #[test]
    fn a_retired_node_stays_retired_even_during_a_restore() {
        let (_dir, db) = database();
        let retire = |id| {
            Command::Membership(MembershipCommand::RetireNode {
                id: NodeId::new(id).expect("valid"),
            })
        };
        assert_eq!(run(&db, retire(2), 1), Response::Done);
        run(
            &db,
            Command::Restore(RestoreCommand::Begin { restore_id: 5 }),
            2,
        );
        assert_eq!(run(&db, retire(3), 3), Response::Done);
        let retired = StateReader::new(db)
            .cluster_meta()
            .expect("meta")
            .retired_node_ids;
        assert_eq!(
            retired.into_iter().map(NodeId::get).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    /// Records `format` as the cluster's format (the state machine does
    /// this when a switch commits).
    fn switch_to(db: &redb::Database, format: u32) {
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn
                .open_table(crate::state::store::META)
                .expect("open meta");
            table
                .insert(
                    crate::state::store::META_FORMAT,
                    encode(&format).expect("encode").as_slice(),
                )
                .expect("insert");
        }
        txn.commit().expect("commit");
    }

    fn settings(ops: u64, data_age_ns: u64) -> RotationSettings {
        RotationSettings {
            data_key_rotate_after_ops: ops,
            data_key_max_age_ns: data_age_ns,
            root_key_max_age_ns: 0,
            reencrypt_per_second: 0,
        }
    }

    fn replace_keyring(keyring_version: u64) -> Command {
        Command::Keys(KeyCommand::ReplaceKeyring {
            root_key_id: RootKeyId(1),
            wrapped_keyring: vec![5, 5],
            keyring_version,
        })
    }

    #[test]
    fn rotation_settings_are_replicated_and_invalid_ones_refused() {
        let (_dir, db) = database();
        let good = settings(1_000, 2_000_000_000);
        let set = |settings| Command::Settings(SettingsCommand::SetRotation(settings));
        assert_eq!(run(&db, set(good), 1), Response::Done);
        for bad in [
            settings(0, 0),
            settings(1_000, 5),
            settings(1_000, u64::MAX),
        ] {
            assert!(
                matches!(
                    run(&db, set(bad), 2),
                    Response::Refused(Refusal::InvalidSettings(_))
                ),
                "{bad:?}"
            );
        }
        let reader = StateReader::new(db);
        assert_eq!(reader.rotation_meta().expect("read").settings, Some(good));
    }

    #[test]
    fn key_activation_times_are_recorded_from_format_3_on_and_only_for_key_changes() {
        let (_dir, db) = database();
        let reader = StateReader::new(db.clone());
        run(&db, initialize(), 10);
        // Format 1: an older replica applying the same entries records
        // nothing, so neither may this one.
        assert_eq!(
            reader.rotation_meta().expect("read"),
            RotationMeta::default()
        );
        switch_to(&db, 3);
        run(&db, put("a"), 20);
        let meta = reader.rotation_meta().expect("read");
        assert_eq!(
            meta.data_key_since,
            Some(20),
            "a key older than format 3 counts from then"
        );
        assert_eq!(meta.root_key_since, Some((RootKeyId(1), 20)));
        run(&db, put("b"), 30);
        assert_eq!(
            reader.rotation_meta().expect("read").data_key_since,
            Some(20)
        );
        // A refused rotation (stale keyring) changes nothing.
        run(&db, replace_keyring(0), 40);
        assert_eq!(
            reader.rotation_meta().expect("read").data_key_since,
            Some(20)
        );
        assert_eq!(run(&db, replace_keyring(1), 50), Response::Done);
        assert_eq!(
            reader.rotation_meta().expect("read").data_key_since,
            Some(50)
        );
        // A rekey keeps the data keys: only the root key's time moves.
        let rekey = Command::Keys(KeyCommand::Rekey {
            record: root_key(2),
            keyring_version: 2,
        });
        assert_eq!(run(&db, rekey, 60), Response::Done);
        let meta = reader.rotation_meta().expect("read");
        assert_eq!(meta.data_key_since, Some(50));
        assert_eq!(meta.root_key_since, Some((RootKeyId(2), 60)));
    }

    fn reseal(previous: &[u8], ciphertext: Vec<u8>, version: u64) -> Command {
        Command::Secret(SecretCommand::Reseal {
            path: path("a"),
            version,
            previous_digest: Sha256::digest(previous).into(),
            ciphertext,
            data_key_id: DataKeyId(2),
        })
    }

    #[test]
    fn a_reseal_replaces_only_the_exact_ciphertext_it_was_built_from() {
        let (_dir, db) = database();
        let reader = StateReader::new(db.clone());
        run(&db, initialize(), 1);
        run(&db, put("a"), 2);
        let before = reader.secret(&path("a")).expect("read").expect("stored");
        // put() seals [9; 16].
        assert_eq!(
            run(&db, reseal(&[9; 16], vec![4; 16], 1), 3),
            Response::Done
        );
        let after = reader.secret(&path("a")).expect("read").expect("stored");
        let (old, new) = (&before.versions[&1], &after.versions[&1]);
        assert_eq!(new.ciphertext, vec![4; 16]);
        assert_eq!(
            (new.created_at, new.deleted_at),
            (old.created_at, old.deleted_at)
        );
        assert_eq!(after.current_version, before.current_version);
        assert_eq!(after.updated_at, before.updated_at);
        assert_eq!(
            reader
                .cluster_meta()
                .expect("meta")
                .encryptions
                .get(&DataKeyId(2)),
            Some(&1)
        );
        // Built from the old ciphertext again: stale, nothing changes.
        let stale = Response::Refused(Refusal::ResealStale);
        assert_eq!(run(&db, reseal(&[9; 16], vec![6; 16], 1), 4), stale);
        // A version that is gone or destroyed is never brought back.
        assert_eq!(run(&db, reseal(&[4; 16], vec![6; 16], 7), 5), stale);
        let destroy = SecretCommand::Destroy {
            path: path("a"),
            versions: vec![1],
        };
        run(&db, Command::Secret(destroy), 6);
        assert_eq!(run(&db, reseal(&[], vec![6; 16], 1), 7), stale);
        let destroyed = reader.secret(&path("a")).expect("read").expect("stored");
        assert!(destroyed.versions[&1].destroyed);
        assert!(destroyed.versions[&1].ciphertext.is_empty());
    }

    fn completed(slot: u64, interval_ms: u64, node: u64) -> Command {
        Command::Backup(BackupCommand::Completed(BackupRecord {
            slot,
            interval_ms,
            index: slot * 10,
            root_key_id: RootKeyId(1),
            file: format!("backup-{slot}-{node}.snap"),
            node: NodeId::new(node).expect("valid"),
            size_bytes: 100,
            sha256: [7; 32],
        }))
    }

    #[test]
    fn a_backup_slot_is_recorded_once_and_only_after_the_last_one() {
        let (_dir, db) = database();
        let request = crate::state::command::Request {
            command: completed(5, 1_000, 1),
            session: None,
            time_ns: 0,
        };
        assert_eq!(
            request.format_needed(),
            3,
            "older releases cannot decode it"
        );
        assert_eq!(run(&db, completed(5, 1_000, 1), 1), Response::Done);
        let taken = |proposed, recorded| {
            Response::Refused(Refusal::BackupSlotTaken {
                proposed,
                proposed_start_ms: u128::from(proposed) * 1_000,
                recorded,
                recorded_start_ms: u128::from(recorded) * 1_000,
            })
        };
        assert_eq!(
            run(&db, completed(5, 1_000, 2), 2),
            taken(5, 5),
            "a second leader's record of the same slot is refused"
        );
        assert_eq!(run(&db, completed(4, 1_000, 2), 3), taken(4, 5));
        assert_eq!(run(&db, completed(7, 1_000, 2), 4), Response::Done);
        // Slots are ordered by their start, so a changed interval cannot
        // take a slot that starts before the last one recorded.
        assert!(matches!(
            run(&db, completed(3, 2_000, 1), 5),
            Response::Refused(Refusal::BackupSlotTaken { .. })
        ));
        assert_eq!(run(&db, completed(4, 2_000, 1), 6), Response::Done);
        let last = StateReader::new(db)
            .last_backup()
            .expect("read")
            .expect("recorded");
        assert_eq!(
            (last.slot, last.interval_ms, last.node.get()),
            (4, 2_000, 1)
        );
    }

    #[test]
    fn a_backup_record_is_recorded_even_during_a_restore_and_a_malformed_one_never() {
        let (_dir, db) = database();
        run(
            &db,
            Command::Restore(RestoreCommand::Begin { restore_id: 5 }),
            1,
        );
        assert_eq!(run(&db, completed(1, 1_000, 1), 2), Response::Done);
        let Command::Backup(BackupCommand::Completed(mut record)) = completed(2, 1_000, 1) else {
            unreachable!("a backup command")
        };
        for file in ["", "../escape.snap", ".hidden", &"x".repeat(129)] {
            record.file = file.to_owned();
            assert!(matches!(
                run(
                    &db,
                    Command::Backup(BackupCommand::Completed(record.clone())),
                    3
                ),
                Response::Refused(Refusal::BackupRecordMalformed(_))
            ));
        }
        record.file = "ok.snap".to_owned();
        record.interval_ms = 0;
        assert!(matches!(
            run(&db, Command::Backup(BackupCommand::Completed(record)), 4),
            Response::Refused(Refusal::BackupRecordMalformed(_))
        ));
        assert_eq!(
            StateReader::new(db)
                .last_backup()
                .expect("read")
                .map(|r| r.slot),
            Some(1)
        );
    }
}
