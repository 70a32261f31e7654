//! What each command does to the state: one function per command family,
//! so the compiler proves every command is handled.
//!
//! Each returns `Ok(Ok(response))` for a change made, `Ok(Err(refusal))`
//! for a change refused (deterministically, with nothing changed), and
//! `Err` only when the storage underneath fails.

use std::collections::BTreeSet;

use redb::{ReadableTable, ReadableTableMetadata};
use spike_sdk::crypto::keyring::ENCRYPTIONS_MAX;
use spike_sdk::domain::{DataKeyId, NodeId, PolicyId, PolicyName, PolicyRef, SecretPath};

use super::command::{
    Command, KeyCommand, MembershipCommand, PolicyCommand, Refusal, Response, RestoreCommand,
    SecretCommand,
};
use super::secret::{SecretError, SecretRecord, TimeNs};
use super::store::{
    ClusterMeta, POLICIES_MAX, PolicyRecord, StoreError, Tables, decode, encode, id_key, redb_try,
};

/// A change made, or refused.
pub(super) type Applied = Result<Response, Refusal>;

/// Applies `command` at log time `now`.
pub(super) fn apply_command(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    command: &Command,
    now: TimeNs,
) -> Result<Applied, StoreError> {
    match command {
        Command::Membership(command) => Ok(apply_membership(meta, command)),
        Command::Restore(command) => apply_restore(tables, meta, command),
        _ if meta.restoring.is_some() => Ok(Err(Refusal::Restoring)),
        Command::Keys(command) => Ok(apply_keys(meta, command)),
        Command::Secret(command) => apply_secret(tables, meta, command, now),
        Command::Policy(command) => apply_policy(tables, meta, command, now),
    }
}

/// Applies even during a restore: a removed replica stays retired.
fn apply_membership(meta: &mut ClusterMeta, command: &MembershipCommand) -> Applied {
    match command {
        MembershipCommand::RetireNode { id } => {
            meta.retired_node_ids.insert(*id);
        }
        // Recorded by the state machine, with the database's stamp, in
        // the same transaction.
        MembershipCommand::SwitchFormat { .. } => {}
        // Kept under their own key ([`apply_non_voters`]).
        MembershipCommand::SetNonVoter { .. } => {}
    }
    Ok(Response::Done)
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
        MembershipCommand::SwitchFormat { .. } => false,
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
    use crate::state::command::RootKeyRecord;
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
}
