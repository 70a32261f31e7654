//! The replicated state in redb tables, and apply.
//!
//! Apply runs inside the caller's write transaction, so a batch of entries,
//! their effects and the last-applied log id commit together or not at all.
//! It is deterministic: it reads only the tables and the request (whose
//! time the leader set), never a clock or a random source.

use std::collections::BTreeMap;

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::command::{Command, Refusal, Request, Response, RootKeyRecord, SessionRef};
use super::secret::{SecretError, SecretRecord, TimeNs};

/// Secret path -> [`SecretRecord`].
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Policy name -> [`PolicyRecord`].
pub const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// Client id -> [`SessionRecord`].
pub const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");
/// (last used log index, client id), to expire sessions oldest first.
pub const SESSION_EXPIRY: TableDefinition<(u64, u128), ()> = TableDefinition::new("session_expiry");
/// Cluster metadata and Raft's applied state, by key.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `META` key of the [`ClusterMeta`].
pub const META_CLUSTER: &str = "cluster";
/// `META` key of Raft's last applied log id (written by the state machine).
pub const META_APPLIED: &str = "applied";
/// `META` key of Raft's last applied membership (written by the state machine).
pub const META_MEMBERSHIP: &str = "membership";

/// Most client sessions kept; past it the least recently used is evicted.
pub const SESSIONS_MAX: u64 = 65_536;
/// Most policies a cluster holds.
pub const POLICIES_MAX: u64 = 10_000;
/// A session unused for this many log entries is forgotten. By log
/// position, not time: a leader whose clock jumps a day ahead stamps a day
/// of log time on one entry, and expiry by time would forget every session
/// at once, so a write retried across that jump would apply twice. A
/// million entries outlast any retry budget (the SDK's is 15 s, 150,000
/// entries at 10,000 writes per second).
pub const SESSION_IDLE_ENTRIES: u64 = 1_000_000;
/// Most sessions expired by one apply, so apply time stays bounded.
const SESSIONS_EXPIRED_PER_APPLY_MAX: usize = 64;

/// Cluster-wide metadata: public, replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// The committed root key (its id, key check, wrapped keyring), once
    /// initialized.
    pub root_key: Option<RootKeyRecord>,
    /// Bumped on every change of the root key or wrapped keyring, so
    /// replicas know when to unwrap the keyring again.
    pub keyring_version: u64,
    /// Encryptions recorded per data key id (for rotation before the AES-GCM
    /// random-nonce limit).
    pub encryptions: BTreeMap<u32, u64>,
    /// Bumped on every policy change, so replicas know when to recompile.
    pub policies_version: u64,
    /// A backup restore in progress, by id: the store is incomplete.
    pub restoring: Option<u64>,
    /// Ids of removed replicas, never to be used again.
    pub retired_node_ids: std::collections::BTreeSet<u64>,
    /// Log time: the highest leader time applied so far. Never goes back,
    /// even when a new leader's clock is behind.
    pub log_time_ns: TimeNs,
}

/// A policy as stored: its body is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The sealed policy body.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// When first created.
    pub created_at: TimeNs,
    /// When last replaced.
    pub updated_at: TimeNs,
}

/// The last write of one client, for exactly-once retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The last sequence number applied.
    pub last_sequence: u64,
    /// What it returned.
    pub response: Response,
    /// Log index of that write.
    pub last_used_index: u64,
}

/// A failure of the storage underneath apply (never a refusal: those are
/// [`Response::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("state store {action}: {source}")]
    Storage {
        /// What was being done.
        action: &'static str,
        /// redb's error.
        source: redb::Error,
    },
    /// A stored record does not decode: corruption or a version mismatch.
    #[error("state store record {what} does not decode: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoder's reason.
        reason: String,
    },
}

pub(crate) fn storage(action: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Storage { action, source }
}

macro_rules! redb_try {
    ($action:expr, $expr:expr) => {
        $expr.map_err(|e| storage($action)(e.into()))
    };
}

/// Encodes a record (postcard: compact, deterministic).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_else(|e| unreachable!("postcard encoding failed: {e}"))
}

/// Decodes a record, naming it in the error.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Applies a batch of requests inside one write transaction. The cluster
/// metadata is decoded once when the batch begins and written back once by
/// [`Batch::finish`], not per request: it carries the wrapped keyring and
/// counters, and re-encoding it for every write was a measurable share of
/// the apply cost.
pub struct Batch<'t> {
    txn: &'t WriteTransaction,
    meta: ClusterMeta,
    /// Opened on first use and kept for the batch (opening a table is a
    /// b-tree lookup of its root); closed around restores, which open them
    /// themselves.
    tables: Option<Tables<'t>>,
}

/// The tables ordinary commands touch.
struct Tables<'t> {
    secrets: redb::Table<'t, &'static str, &'static [u8]>,
    policies: redb::Table<'t, &'static str, &'static [u8]>,
    sessions: redb::Table<'t, u128, &'static [u8]>,
    expiry: redb::Table<'t, (u64, u128), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            secrets: redb_try!("open secrets", txn.open_table(SECRETS))?,
            policies: redb_try!("open policies", txn.open_table(POLICIES))?,
            sessions: redb_try!("open sessions", txn.open_table(SESSIONS))?,
            expiry: redb_try!("open session expiry", txn.open_table(SESSION_EXPIRY))?,
        })
    }
}

impl<'t> Batch<'t> {
    /// Starts a batch in `txn`.
    pub fn begin(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta_table = redb_try!("open meta", txn.open_table(META))?;
        let meta = match redb_try!("read cluster meta", meta_table.get(META_CLUSTER))? {
            Some(bytes) => decode("cluster meta", bytes.value())?,
            None => ClusterMeta::default(),
        };
        Ok(Self {
            txn,
            meta,
            tables: None,
        })
    }

    /// Applies one request, the entry at log `index`.
    pub fn apply(&mut self, index: u64, request: &Request) -> Result<Response, StoreError> {
        let txn = self.txn;
        let meta = &mut self.meta;
        meta.log_time_ns = meta.log_time_ns.max(request.time_ns);
        let now = meta.log_time_ns;

        // A restore replaces the session tables too, so it runs before they
        // are opened below (and sessions do not apply to it).
        if matches!(
            request.command,
            Command::BeginRestore { .. }
                | Command::RestoreRows { .. }
                | Command::FinishRestore { .. }
        ) {
            self.tables = None;
            return Ok(match apply_restore(txn, meta, &request.command)? {
                Ok(response) => response,
                Err(refusal) => Response::Refused(refusal),
            });
        }

        let tables = match self.tables {
            Some(ref mut tables) => tables,
            None => self.tables.insert(Tables::open(txn)?),
        };
        expire_sessions(&mut tables.sessions, &mut tables.expiry, index)?;

        if let Some(session) = request.session
            && let Some(bytes) = redb_try!("read session", tables.sessions.get(session.client_id))?
        {
            let record: SessionRecord = decode("session", bytes.value())?;
            if session.sequence == record.last_sequence {
                return Ok(record.response);
            }
            if session.sequence < record.last_sequence {
                return Ok(Response::Refused(Refusal::StaleSequence {
                    sequence: session.sequence,
                    last: record.last_sequence,
                }));
            }
        }

        let response = match apply_command(tables, meta, &request.command, now)? {
            Ok(response) => response,
            Err(refusal) => Response::Refused(refusal),
        };
        if let Some(session) = request.session {
            record_session(
                &mut tables.sessions,
                &mut tables.expiry,
                session,
                &response,
                index,
            )?;
        }
        Ok(response)
    }

    /// Writes the cluster metadata back; the caller then commits.
    pub fn finish(self) -> Result<(), StoreError> {
        let mut meta_table = redb_try!("open meta", self.txn.open_table(META))?;
        redb_try!(
            "write cluster meta",
            meta_table.insert(META_CLUSTER, encode(&self.meta).as_slice())
        )?;
        Ok(())
    }
}

/// Applies one request inside `txn` (a batch of one).
#[cfg(test)]
pub fn apply(
    txn: &WriteTransaction,
    index: u64,
    request: &Request,
) -> Result<Response, StoreError> {
    let mut batch = Batch::begin(txn)?;
    let response = batch.apply(index, request)?;
    batch.finish()?;
    Ok(response)
}

fn apply_command(
    tables: &mut Tables<'_>,
    meta: &mut ClusterMeta,
    command: &Command,
    now: TimeNs,
) -> Result<Result<Response, Refusal>, StoreError> {
    match command {
        Command::RetireNode { id } => {
            meta.retired_node_ids.insert(*id);
            return Ok(Ok(Response::Done));
        }
        _ if meta.restoring.is_some() => return Ok(Err(Refusal::Restoring)),
        _ => {}
    }
    let initialized = meta.root_key.is_some();
    match command {
        Command::Initialize(record) => {
            if initialized {
                return Ok(Err(Refusal::AlreadyInitialized));
            }
            meta.root_key = Some(record.clone());
            meta.keyring_version += 1;
            return Ok(Ok(Response::Done));
        }
        _ if !initialized => return Ok(Err(Refusal::NotInitialized)),
        _ => {}
    }
    let current = meta
        .root_key
        .as_ref()
        .map_or(0, |record| record.root_key_id);
    match command {
        Command::Initialize(_)
        | Command::RetireNode { .. }
        | Command::BeginRestore { .. }
        | Command::RestoreRows { .. }
        | Command::FinishRestore { .. } => unreachable!("handled above"),
        Command::Rekey {
            record,
            keyring_version,
        } => {
            if record.root_key_id <= current {
                return Ok(Err(Refusal::RootKeyOutOfOrder {
                    current,
                    proposed: record.root_key_id,
                }));
            }
            if *keyring_version != meta.keyring_version {
                return Ok(Err(Refusal::KeyringChanged {
                    current: meta.keyring_version,
                    proposed: *keyring_version,
                }));
            }
            meta.root_key = Some(record.clone());
            meta.keyring_version += 1;
            Ok(Ok(Response::Done))
        }
        Command::ReplaceKeyring {
            root_key_id,
            wrapped_keyring,
            keyring_version,
        } => {
            if *root_key_id != current {
                return Ok(Err(Refusal::RootKeyOutOfOrder {
                    current,
                    proposed: *root_key_id,
                }));
            }
            if *keyring_version != meta.keyring_version {
                return Ok(Err(Refusal::KeyringChanged {
                    current: meta.keyring_version,
                    proposed: *keyring_version,
                }));
            }
            if let Some(record) = meta.root_key.as_mut() {
                record.wrapped_keyring = wrapped_keyring.clone();
            }
            meta.keyring_version += 1;
            Ok(Ok(Response::Done))
        }
        Command::PutSecret {
            path,
            ciphertext,
            data_key_id,
            cas,
            max_versions,
        } => {
            let table = &mut tables.secrets;
            let existing = match redb_try!("read secret", table.get(path.as_str()))? {
                Some(bytes) => Some(decode::<SecretRecord>(path, bytes.value())?),
                None => None,
            };
            match SecretRecord::put(existing, ciphertext.clone(), *cas, *max_versions, now) {
                Ok((record, written)) => {
                    redb_try!(
                        "write secret",
                        table.insert(path.as_str(), encode(&record).as_slice())
                    )?;
                    *meta.encryptions.entry(*data_key_id).or_default() += 1;
                    Ok(Ok(Response::Written(written)))
                }
                Err(error) => Ok(Err(error.into())),
            }
        }
        Command::DeleteSecret { path, versions }
        | Command::UndeleteSecret { path, versions }
        | Command::DestroySecret { path, versions } => {
            let table = &mut tables.secrets;
            let Some(bytes) = redb_try!("read secret", table.get(path.as_str()))? else {
                return Ok(Err(SecretError::NotFound.into()));
            };
            let mut record: SecretRecord = decode(path, bytes.value())?;
            drop(bytes);
            let outcome = match command {
                Command::DeleteSecret { .. } => {
                    record.delete(versions, now);
                    Ok(())
                }
                Command::UndeleteSecret { .. } => record.undelete(versions, now),
                _ => record.destroy(versions, now),
            };
            if let Err(error) = outcome {
                return Ok(Err(error.into()));
            }
            redb_try!(
                "write secret",
                table.insert(path.as_str(), encode(&record).as_slice())
            )?;
            Ok(Ok(Response::Done))
        }
        Command::PutPolicy {
            name,
            ciphertext,
            data_key_id,
        } => {
            let table = &mut tables.policies;
            let created_at = match redb_try!("read policy", table.get(name.as_str()))? {
                Some(bytes) => decode::<PolicyRecord>(name, bytes.value())?.created_at,
                None if redb_try!("count policies", table.len())? >= POLICIES_MAX => {
                    return Ok(Err(Refusal::PolicyLimit(POLICIES_MAX)));
                }
                None => now,
            };
            let record = PolicyRecord {
                ciphertext: ciphertext.clone(),
                created_at,
                updated_at: now,
            };
            redb_try!(
                "write policy",
                table.insert(name.as_str(), encode(&record).as_slice())
            )?;
            *meta.encryptions.entry(*data_key_id).or_default() += 1;
            // Replicas recompile their policies when this moves.
            meta.policies_version += 1;
            Ok(Ok(Response::Done))
        }
        Command::DeletePolicy { name } => {
            let table = &mut tables.policies;
            match redb_try!("delete policy", table.remove(name.as_str()))? {
                Some(_) => {
                    meta.policies_version += 1;
                    Ok(Ok(Response::Done))
                }
                None => Ok(Err(Refusal::PolicyNotFound)),
            }
        }
    }
}

/// Replacing the store with a backup, in three kinds of steps.
fn apply_restore(
    txn: &WriteTransaction,
    meta: &mut ClusterMeta,
    command: &Command,
) -> Result<Result<Response, Refusal>, StoreError> {
    match command {
        Command::BeginRestore { restore_id } => {
            redb_try!(
                "clear secrets",
                redb_try!("open secrets", txn.open_table(SECRETS))?.retain(|_, _| false)
            )?;
            redb_try!(
                "clear policies",
                redb_try!("open policies", txn.open_table(POLICIES))?.retain(|_, _| false)
            )?;
            redb_try!(
                "clear sessions",
                redb_try!("open sessions", txn.open_table(SESSIONS))?.retain(|_, _| false)
            )?;
            redb_try!(
                "clear sessions",
                redb_try!("open sessions", txn.open_table(SESSION_EXPIRY))?.retain(|_, _| false)
            )?;
            meta.restoring = Some(*restore_id);
            meta.root_key = None;
            meta.keyring_version += 1;
            meta.policies_version += 1;
            Ok(Ok(Response::Done))
        }
        Command::RestoreRows {
            restore_id,
            secrets,
            policies,
        } => {
            if meta.restoring != Some(*restore_id) {
                return Ok(Err(Refusal::RestoreNotInProgress(*restore_id)));
            }
            let mut table = redb_try!("open secrets", txn.open_table(SECRETS))?;
            for (path, record) in secrets {
                redb_try!(
                    "restore secret",
                    table.insert(path.as_str(), record.as_slice())
                )?;
            }
            let mut table = redb_try!("open policies", txn.open_table(POLICIES))?;
            for (name, record) in policies {
                redb_try!(
                    "restore policy",
                    table.insert(name.as_str(), record.as_slice())
                )?;
            }
            Ok(Ok(Response::Done))
        }
        Command::FinishRestore {
            restore_id,
            cluster,
        } => {
            if meta.restoring != Some(*restore_id) {
                return Ok(Err(Refusal::RestoreNotInProgress(*restore_id)));
            }
            // Bytes from a request: a decode failure is the request's fault,
            // never a storage failure that would stop the replica.
            let backup: ClusterMeta = match decode("backup cluster meta", cluster) {
                Ok(backup) => backup,
                Err(error) => return Ok(Err(Refusal::BadBackup(error.to_string()))),
            };
            meta.root_key = backup.root_key;
            meta.encryptions = backup.encryptions;
            meta.keyring_version = meta.keyring_version.max(backup.keyring_version) + 1;
            meta.policies_version = meta.policies_version.max(backup.policies_version) + 1;
            meta.retired_node_ids.extend(backup.retired_node_ids);
            meta.restoring = None;
            Ok(Ok(Response::Done))
        }
        _ => unreachable!("only restore commands come here"),
    }
}

fn expire_sessions(
    sessions: &mut redb::Table<u128, &[u8]>,
    expiry: &mut redb::Table<(u64, u128), ()>,
    index: u64,
) -> Result<(), StoreError> {
    let cutoff = index.saturating_sub(SESSION_IDLE_ENTRIES);
    for _ in 0..SESSIONS_EXPIRED_PER_APPLY_MAX {
        let oldest = redb_try!("read session expiry", expiry.first())?.map(|(key, _)| key.value());
        match oldest {
            Some((last_used, client_id)) if last_used < cutoff => {
                redb_try!("expire session", expiry.remove((last_used, client_id)))?;
                redb_try!("expire session", sessions.remove(client_id))?;
            }
            _ => break,
        }
    }
    Ok(())
}

fn record_session(
    sessions: &mut redb::Table<u128, &[u8]>,
    expiry: &mut redb::Table<(u64, u128), ()>,
    session: SessionRef,
    response: &Response,
    index: u64,
) -> Result<(), StoreError> {
    let previous = match redb_try!("read session", sessions.get(session.client_id))? {
        Some(bytes) => Some(decode::<SessionRecord>("session", bytes.value())?.last_used_index),
        None => None,
    };
    match previous {
        Some(last_used) => {
            redb_try!(
                "update session expiry",
                expiry.remove((last_used, session.client_id))
            )?;
        }
        None if redb_try!("count sessions", sessions.len())? >= SESSIONS_MAX => {
            let oldest =
                redb_try!("read session expiry", expiry.first())?.map(|(key, _)| key.value());
            if let Some((last_used, evicted)) = oldest {
                redb_try!("evict session", expiry.remove((last_used, evicted)))?;
                redb_try!("evict session", sessions.remove(evicted))?;
            }
        }
        None => {}
    }
    let record = SessionRecord {
        last_sequence: session.sequence,
        response: response.clone(),
        last_used_index: index,
    };
    redb_try!(
        "write session",
        sessions.insert(session.client_id, encode(&record).as_slice())
    )?;
    redb_try!(
        "write session expiry",
        expiry.insert((index, session.client_id), ())
    )?;
    Ok(())
}

/// Opens `table` for reading; `None` if it was never created.
fn open_existing(
    txn: &ReadTransaction,
    table: TableDefinition<&'static str, &'static [u8]>,
    action: &'static str,
) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage(action)(e.into())),
    }
}

/// Read access to the applied state (a consistent MVCC view per call).
#[derive(Clone)]
pub struct StateReader {
    db: std::sync::Arc<redb::Database>,
}

impl StateReader {
    /// Reads from `db`.
    pub fn new(db: std::sync::Arc<redb::Database>) -> Self {
        Self { db }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        redb_try!("begin read", self.db.begin_read())
    }

    /// The cluster metadata.
    pub fn cluster_meta(&self) -> Result<ClusterMeta, StoreError> {
        let txn = self.read()?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(ClusterMeta::default()),
            Err(e) => return Err(storage("open meta")(e.into())),
        };
        match redb_try!("read cluster meta", table.get(META_CLUSTER))? {
            Some(bytes) => decode("cluster meta", bytes.value()),
            None => Ok(ClusterMeta::default()),
        }
    }

    /// The record of secret `path`.
    pub fn secret(&self, path: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.get(SECRETS, "open secrets", path)
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        action: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.read()?;
        let Some(table) = open_existing(&txn, table, action)? else {
            return Ok(None);
        };
        match redb_try!("read record", table.get(key))? {
            Some(bytes) => decode(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The record of policy `name`.
    pub fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        self.get(POLICIES, "open policies", name)
    }

    /// Every policy by name, sorted.
    pub fn policies(&self) -> Result<Vec<(String, PolicyRecord)>, StoreError> {
        let txn = self.read()?;
        let Some(table) = open_existing(&txn, POLICIES, "open policies")? else {
            return Ok(Vec::new());
        };
        let mut policies = Vec::new();
        for row in redb_try!("list policies", table.iter())? {
            let (key, value) = redb_try!("list policies", row)?;
            policies.push((key.value().to_owned(), decode(key.value(), value.value())?));
        }
        Ok(policies)
    }

    /// Paths that have a current version, sorted (SPIKE's list).
    pub fn secret_paths(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.read()?;
        let Some(table) = open_existing(&txn, SECRETS, "open secrets")? else {
            return Ok(Vec::new());
        };
        let mut paths = Vec::new();
        for row in redb_try!("list secrets", table.iter())? {
            let (key, value) = redb_try!("list secrets", row)?;
            let record: SecretRecord = decode(key.value(), value.value())?;
            if !record.is_empty() {
                paths.push(key.value().to_owned());
            }
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::secret::Written;

    fn database() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("state.redb")).expect("create");
        (dir, db)
    }

    thread_local! {
        /// The next log index a test applies at.
        static NEXT_INDEX: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    }

    fn run(db: &redb::Database, request: Request) -> Response {
        let index = NEXT_INDEX.replace(NEXT_INDEX.get() + 1);
        run_at(db, index, request)
    }

    fn run_at(db: &redb::Database, index: u64, request: Request) -> Response {
        NEXT_INDEX.set(index + 1);
        let txn = db.begin_write().expect("write");
        let response = apply(&txn, index, &request).expect("apply");
        txn.commit().expect("commit");
        response
    }

    fn request(command: Command, session: Option<SessionRef>, time_ns: u64) -> Request {
        Request {
            command,
            session,
            time_ns,
        }
    }

    fn initialize() -> Command {
        Command::Initialize(RootKeyRecord {
            root_key_id: 1,
            key_check: [7; 32],
            wrapped_keyring: vec![1, 2, 3],
            shares: 5,
            threshold: 3,
        })
    }

    fn put(path: &str) -> Command {
        Command::PutSecret {
            path: path.to_owned(),
            ciphertext: vec![9; 16],
            data_key_id: 1,
            cas: None,
            max_versions: 10,
        }
    }

    #[test]
    fn data_commands_wait_for_initialize_and_initialize_happens_once() {
        let (_dir, db) = database();
        assert_eq!(
            run(&db, request(put("a"), None, 1)),
            Response::Refused(Refusal::NotInitialized)
        );
        assert_eq!(run(&db, request(initialize(), None, 2)), Response::Done);
        assert_eq!(
            run(&db, request(initialize(), None, 3)),
            Response::Refused(Refusal::AlreadyInitialized)
        );
        assert_eq!(
            run(&db, request(put("a"), None, 4)),
            Response::Written(Written { version: 1 })
        );
        let reader = StateReader::new(std::sync::Arc::new(db));
        assert_eq!(reader.secret_paths().expect("list"), vec!["a".to_owned()]);
        assert_eq!(
            reader.cluster_meta().expect("meta").encryptions.get(&1),
            Some(&1)
        );
    }

    #[test]
    fn a_retried_write_returns_the_first_result_and_applies_once() {
        let (_dir, db) = database();
        run(&db, request(initialize(), None, 1));
        let session = SessionRef {
            client_id: 42,
            sequence: 1,
        };
        let first = run(&db, request(put("p"), Some(session), 2));
        let retry = run(&db, request(put("p"), Some(session), 3));
        assert_eq!(first, Response::Written(Written { version: 1 }));
        assert_eq!(retry, first, "the retry answers like the original");
        let next = run(
            &db,
            request(
                put("p"),
                Some(SessionRef {
                    sequence: 2,
                    ..session
                }),
                4,
            ),
        );
        assert_eq!(next, Response::Written(Written { version: 2 }));
        let stale = run(&db, request(put("p"), Some(session), 5));
        assert_eq!(
            stale,
            Response::Refused(Refusal::StaleSequence {
                sequence: 1,
                last: 2
            })
        );
        let reader = StateReader::new(std::sync::Arc::new(db));
        assert_eq!(
            reader
                .secret("p")
                .expect("read")
                .expect("exists")
                .current_version,
            2
        );
    }

    #[test]
    fn sessions_expire_by_log_position() {
        let (_dir, db) = database();
        run(&db, request(initialize(), None, 1));
        let session = SessionRef {
            client_id: 7,
            sequence: 5,
        };
        let first = run_at(&db, 10, request(put("p"), Some(session), 10));
        assert_eq!(first, Response::Written(Written { version: 1 }));
        // Still remembered just before the limit: the retry gets the
        // original answer, nothing is applied.
        run_at(&db, 9 + SESSION_IDLE_ENTRIES, request(put("q"), None, 11));
        let retried = run(&db, request(put("p"), Some(session), 12));
        assert_eq!(retried, first);
        // Forgotten past it: the same sequence applies again.
        run_at(
            &db,
            20 + 2 * SESSION_IDLE_ENTRIES,
            request(put("q"), None, 13),
        );
        let again = run(&db, request(put("p"), Some(session), 14));
        assert_eq!(again, Response::Written(Written { version: 2 }));
    }

    /// Regression (clock-jump nemesis): a leader whose clock jumps a day
    /// ahead must not make the sessions expire, or a write retried across
    /// the jump applies twice.
    #[test]
    fn a_clock_jump_forgets_no_session() {
        let (_dir, db) = database();
        run(&db, request(initialize(), None, 1));
        let session = SessionRef {
            client_id: 9,
            sequence: 1,
        };
        let day_ns = 24 * 60 * 60 * 1_000_000_000;
        let first = run(&db, request(put("p"), Some(session), 100));
        run(&db, request(put("q"), None, 100 + day_ns));
        run(&db, request(put("q"), None, 100 + 2 * day_ns));
        let retried = run(&db, request(put("p"), Some(session), 100 + 2 * day_ns));
        assert_eq!(retried, first, "the retry was applied a second time");
    }

    #[test]
    fn every_policy_change_moves_the_policy_version() {
        let (_dir, db) = database();
        run(&db, request(initialize(), None, 1));
        let put = |body: u8| Command::PutPolicy {
            name: "p".to_owned(),
            ciphertext: vec![body],
            data_key_id: 1,
        };
        let db = std::sync::Arc::new(db);
        let version = || {
            StateReader::new(db.clone())
                .cluster_meta()
                .expect("meta")
                .policies_version
        };
        let start = version();
        run(&db, request(put(1), None, 2));
        assert_eq!(version(), start + 1, "create");
        run(&db, request(put(2), None, 3));
        assert_eq!(version(), start + 2, "replace");
        run(
            &db,
            request(
                Command::DeletePolicy {
                    name: "p".to_owned(),
                },
                None,
                4,
            ),
        );
        assert_eq!(version(), start + 3, "delete");
    }

    #[test]
    fn rekey_must_follow_the_current_root_key() {
        let (_dir, db) = database();
        run(&db, request(initialize(), None, 1));
        let rekey = |id, keyring_version| Command::Rekey {
            record: RootKeyRecord {
                root_key_id: id,
                key_check: [8; 32],
                wrapped_keyring: vec![4],
                shares: 3,
                threshold: 2,
            },
            keyring_version,
        };
        assert_eq!(
            run(&db, request(rekey(1, 1), None, 2)),
            Response::Refused(Refusal::RootKeyOutOfOrder {
                current: 1,
                proposed: 1
            })
        );
        assert_eq!(
            run(&db, request(rekey(3, 0), None, 3)),
            Response::Refused(Refusal::KeyringChanged {
                current: 1,
                proposed: 0
            }),
            "built from a stale keyring"
        );
        assert_eq!(run(&db, request(rekey(3, 1), None, 4)), Response::Done);
    }
}
