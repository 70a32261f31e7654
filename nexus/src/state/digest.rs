//! A digest of the replicated state, to compare replicas at one log index
//! (etcd's corruption check): SHA-256 over every replicated row, table by
//! table, in key order.
//!
//! What goes in is exactly what a snapshot carries and apply writes alike
//! on every replica: the cluster metadata row, secrets and their custom
//! metadata, policies, client sessions and their expiry (a table that was
//! never created hashes as an empty one). What stays out is derived or this replica's
//! own: the policy id index and the session owner counts (rebuilt from the
//! rows above), Raft's applied log id and membership (Raft's, and rewritten
//! on a snapshot install), the recorded cluster format and the databases'
//! format stamps (written when a replica learns of a switch, which differs
//! between a replica that applied it and one that installed a snapshot),
//! and the digests this replica recorded.

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use sha2::{Digest, Sha256};

use super::store::{
    META, META_CLUSTER, POLICIES, SECRET_METADATA, SECRETS, SESSION_EXPIRY, SESSIONS, StoreError,
    redb_try, storage,
};

/// This replica's digests at its last checkpoints: log index -> digest.
/// Its own, like the format stamp: neither hashed nor in snapshots.
pub const RECORDED: TableDefinition<u64, &[u8]> = TableDefinition::new("state_digests");

/// The digest of a replica's state at one log index.
pub type StateDigest = [u8; 32];

/// Domain label in front of every digest (its version: a change of what
/// goes in changes it, so replicas of two builds never compare digests
/// made two ways as equal by accident).
const LABEL: &[u8] = b"spike state digest v1\0";

/// The state digest as the write transaction `txn` sees it.
pub fn of_write(txn: &WriteTransaction) -> Result<StateDigest, StoreError> {
    let mut hasher = Sha256::new();
    hasher.update(LABEL);
    hash_cluster_row(&mut hasher, &redb_try!("open meta", txn.open_table(META))?)?;
    hash_str_rows(
        &mut hasher,
        b"secrets",
        &redb_try!("open secrets", txn.open_table(SECRETS))?,
    )?;
    // Made by its first command only (store::Tables), so not made here.
    let has_metadata = redb_try!("list tables", txn.list_tables())?
        .any(|table| table.name() == SECRET_METADATA.name());
    if has_metadata {
        hash_str_rows(
            &mut hasher,
            b"secret_metadata",
            &redb_try!("open secret metadata", txn.open_table(SECRET_METADATA))?,
        )?;
    } else {
        hash_empty(&mut hasher, b"secret_metadata");
    }
    hash_str_rows(
        &mut hasher,
        b"policies",
        &redb_try!("open policies", txn.open_table(POLICIES))?,
    )?;
    hash_sessions(
        &mut hasher,
        &redb_try!("open sessions", txn.open_table(SESSIONS))?,
    )?;
    hash_expiry(
        &mut hasher,
        &redb_try!("open session expiry", txn.open_table(SESSION_EXPIRY))?,
    )?;
    Ok(finish(hasher))
}

/// The state digest as the read transaction `txn` sees it (a table that
/// was never created hashes as an empty one).
pub fn of_read(txn: &ReadTransaction) -> Result<StateDigest, StoreError> {
    let mut hasher = Sha256::new();
    hasher.update(LABEL);
    match open(txn, META)? {
        Some(table) => hash_cluster_row(&mut hasher, &table)?,
        None => hasher.update([0]),
    }
    for (label, table) in [
        (&b"secrets"[..], SECRETS),
        (b"secret_metadata", SECRET_METADATA),
        (b"policies", POLICIES),
    ] {
        match open(txn, table)? {
            Some(table) => hash_str_rows(&mut hasher, label, &table)?,
            None => hash_empty(&mut hasher, label),
        }
    }
    match open(txn, SESSIONS)? {
        Some(table) => hash_sessions(&mut hasher, &table)?,
        None => hash_empty(&mut hasher, b"sessions"),
    }
    match open(txn, SESSION_EXPIRY)? {
        Some(table) => hash_expiry(&mut hasher, &table)?,
        None => hash_empty(&mut hasher, b"session_expiry"),
    }
    Ok(finish(hasher))
}

fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage("open table for the state digest")(e.into())),
    }
}

fn finish(hasher: Sha256) -> StateDigest {
    let mut digest = [0; 32];
    digest.copy_from_slice(&hasher.finalize());
    digest
}

/// A field with its length in front, so no two row sequences hash alike.
fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn hash_empty(hasher: &mut Sha256, label: &[u8]) {
    field(hasher, label);
    hasher.update(0u64.to_be_bytes());
}

fn hash_cluster_row(
    hasher: &mut Sha256,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(), StoreError> {
    match redb_try!("read cluster meta", meta.get(META_CLUSTER))? {
        Some(row) => {
            hasher.update([1]);
            field(hasher, row.value());
        }
        None => hasher.update([0]),
    }
    Ok(())
}

fn hash_str_rows(
    hasher: &mut Sha256,
    label: &[u8],
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(), StoreError> {
    field(hasher, label);
    let mut rows = 0u64;
    for row in redb_try!("read rows for the state digest", table.iter())? {
        let (key, value) = redb_try!("read rows for the state digest", row)?;
        field(hasher, key.value().as_bytes());
        field(hasher, value.value());
        rows += 1;
    }
    hasher.update(rows.to_be_bytes());
    Ok(())
}

fn hash_sessions(
    hasher: &mut Sha256,
    table: &impl ReadableTable<u128, &'static [u8]>,
) -> Result<(), StoreError> {
    field(hasher, b"sessions");
    let mut rows = 0u64;
    for row in redb_try!("read sessions for the state digest", table.iter())? {
        let (key, value) = redb_try!("read sessions for the state digest", row)?;
        field(hasher, &key.value().to_be_bytes());
        field(hasher, value.value());
        rows += 1;
    }
    hasher.update(rows.to_be_bytes());
    Ok(())
}

fn hash_expiry(
    hasher: &mut Sha256,
    table: &impl ReadableTable<(u64, u128), ()>,
) -> Result<(), StoreError> {
    field(hasher, b"session_expiry");
    let mut rows = 0u64;
    for row in redb_try!("read session expiry for the state digest", table.iter())? {
        let (key, _) = redb_try!("read session expiry for the state digest", row)?;
        let (last_used, client_id) = key.value();
        hasher.update(last_used.to_be_bytes());
        hasher.update(client_id.to_be_bytes());
        rows += 1;
    }
    hasher.update(rows.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::tests::{database, initialize, put, run};
    use redb::ReadableDatabase;

    fn digest_now(db: &redb::Database) -> StateDigest {
        of_read(&db.begin_read().expect("read")).expect("digest")
    }

    #[test]
    fn equal_histories_give_equal_digests_and_any_row_change_shows() {
        let (_a_dir, a) = database();
        let (_b_dir, b) = database();
        for db in [&a, &b] {
            run(db, initialize(), 1);
            run(db, put("apps/db"), 2);
        }
        assert_eq!(digest_now(&a), digest_now(&b));
        let txn = a.begin_write().expect("write");
        assert_eq!(
            of_write(&txn).expect("digest"),
            digest_now(&a),
            "both ways agree"
        );
        {
            let mut secrets = txn.open_table(SECRETS).expect("secrets");
            let mut row = secrets
                .get("apps/db")
                .expect("get")
                .expect("exists")
                .value()
                .to_vec();
            let last = row.len() - 1;
            row[last] ^= 1;
            secrets.insert("apps/db", row.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        assert_ne!(digest_now(&a), digest_now(&b));
    }

    #[test]
    fn a_missing_table_hashes_as_an_empty_one_and_a_metadata_row_shows() {
        let (_a_dir, a) = database();
        let (_b_dir, b) = database();
        for db in [&a, &b] {
            run(db, initialize(), 1);
        }
        let txn = b.begin_write().expect("write");
        txn.open_table(SECRET_METADATA).expect("create it empty");
        txn.commit().expect("commit");
        assert_eq!(digest_now(&a), digest_now(&b));
        let txn = a.begin_write().expect("write");
        assert_eq!(of_write(&txn).expect("digest"), digest_now(&b));
        drop(txn);
        let txn = b.begin_write().expect("write");
        txn.open_table(SECRET_METADATA)
            .expect("metadata")
            .insert("apps/db", [1u8, 2].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        assert_ne!(digest_now(&a), digest_now(&b));
    }
}
