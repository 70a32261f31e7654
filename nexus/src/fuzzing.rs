//! Entry points for the fuzz targets in `fuzz/` (built with the `fuzzing`
//! feature only): each takes untrusted bytes as a replica reads them from
//! the network or its disk, and panics only when a property fails, so a
//! panic is a finding.

use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::cluster::{ForwardError, LeaderOp, LeaderReply};
use crate::raft::codec::{decode, encode};
use crate::raft::format::{FORMAT_NEWEST, decode_stamped, encode_stamped};
use crate::raft::snapshot::{self, read_backup, restore_and_write};
use crate::raft::{EntryOf, SnapshotMetaOf, TypeConfig, VoteOf};
use crate::state::store::StateReader;

/// `bytes` with their SHA-256 appended: the digest is integrity, not a
/// secret, so the fuzzer skips it and reaches what comes after.
fn digested(bytes: &[u8]) -> Vec<u8> {
    let mut whole = bytes.to_vec();
    whole.extend_from_slice(&Sha256::digest(bytes));
    whole
}

/// An uploaded backup (`bytes` without its digest): [`read_backup`] never
/// panics, and whatever it accepts restores and takes writes without a
/// panic or a storage error.
pub fn backup(bytes: &[u8]) {
    if let Ok(backup) = read_backup(&digested(bytes))
        && let Err(error) = restore_and_write(backup)
    {
        panic!("an accepted backup failed to apply: {error}");
    }
}

/// A snapshot file (`bytes` without its digest) from a peer or the data
/// directory, installed into a fresh store and read back: no panic.
pub fn snapshot_file(bytes: &[u8]) {
    let body = digested(bytes);
    let Ok(db) =
        redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
    else {
        return;
    };
    let db = std::sync::Arc::new(db);
    let Ok(txn) = db.begin_write() else { return };
    if snapshot::load_from(&txn, &mut body.as_slice(), || "fuzz".to_owned()).is_err() {
        return;
    }
    if txn.commit().is_err() {
        return;
    }
    let reader = StateReader::new(db);
    let _ = reader.cluster_meta();
    let _ = reader.secret_paths();
    let _ = reader.policies();
}

/// Bytes Raft reads: a stored log entry (stamped) or a cluster-port frame,
/// picked by the first byte. Decoding never panics, and what decodes
/// encodes to bytes that decode to the same encoding.
pub fn raft_message(bytes: &[u8]) {
    let Some((&kind, bytes)) = bytes.split_first() else {
        return;
    };
    match kind % 12 {
        0 => {
            let subject = || "log entry".to_owned();
            if let Ok(entry) = decode_stamped::<EntryOf<TypeConfig>>(subject, bytes) {
                let encoded =
                    encode_stamped(FORMAT_NEWEST, &entry).expect("a decoded entry encodes");
                let again: EntryOf<TypeConfig> =
                    decode_stamped(subject, &encoded).expect("an encoded entry decodes");
                assert_eq!(
                    encode_stamped(FORMAT_NEWEST, &again).expect("encodes"),
                    encoded,
                    "a log entry changed in a round trip"
                );
            }
        }
        1 => round_trip::<AppendEntriesRequest<TypeConfig>>("append entries", bytes),
        2 => round_trip::<VoteRequest<TypeConfig>>("vote", bytes),
        3 => round_trip::<TransferLeaderRequest<TypeConfig>>("transfer leader", bytes),
        4 => {
            round_trip::<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>)>("snapshot header", bytes)
        }
        5 => round_trip::<LeaderOp>("forwarded request", bytes),
        6 => round_trip::<Result<LeaderReply, ForwardError>>("forward reply", bytes),
        7 => round_trip::<Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>>(
            "raft reply",
            bytes,
        ),
        8 => round_trip::<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>>(
            "raft reply",
            bytes,
        ),
        9 => round_trip::<Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>>>(
            "raft reply",
            bytes,
        ),
        10 => round_trip::<Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>>>(
            "snapshot reply",
            bytes,
        ),
        11 => round_trip::<Result<u64, ForwardError>>("read index reply", bytes),
        _ => unreachable!("a kind modulo 12"),
    }
}

/// Decoding `bytes` as `T` never panics; what decodes re-encodes stably.
fn round_trip<T: Serialize + DeserializeOwned>(what: &str, bytes: &[u8]) {
    if let Ok(value) = decode::<T>(what, bytes) {
        let encoded = encode(&value).expect("a decoded value encodes");
        let again: T = decode(what, &encoded).expect("an encoded value decodes");
        assert_eq!(
            encode(&again).expect("encodes"),
            encoded,
            "{what} changed in a round trip"
        );
    }
}

/// Seed inputs made as a replica makes them, `(target, name, bytes)`: a
/// backup and a snapshot file of a small store (without their digests),
/// and Raft's log entries and frames carrying its commands.
pub fn seeds() -> std::io::Result<Vec<(&'static str, String, Vec<u8>)>> {
    use openraft::entry::RaftEntry;
    use openraft::testing::{blank_ent, log_id};
    use spike_sdk::domain::{DataKeyId, PolicyId, RootKeyId};

    use crate::state::command::{
        Command, KeyCommand, PolicyCommand, Request, Response, RootKeyRecord, RotationSettings,
        SecretCommand, SessionRef, SettingsCommand,
    };
    use crate::state::secret::Written;
    use crate::state::store::Batch;

    let put = |path: &str, ciphertext: u8| {
        Command::Secret(SecretCommand::Put {
            path: path.parse().expect("a valid path"),
            ciphertext: vec![ciphertext; 40],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 3,
        })
    };
    let commands = vec![
        Command::Keys(KeyCommand::Initialize(RootKeyRecord {
            root_key_id: RootKeyId(1),
            key_check: [1; 32],
            wrapped_keyring: vec![2; 80],
            shares: 3,
            threshold: 2,
        })),
        put("apps/db", 3),
        put("apps/db", 4),
        put("apps/db", 5),
        put("apps/db", 6),
        put("apps/cache", 7),
        Command::Secret(SecretCommand::Delete {
            path: "apps/cache".parse().expect("a valid path"),
            versions: vec![1],
        }),
        Command::Secret(SecretCommand::Destroy {
            path: "apps/db".parse().expect("a valid path"),
            versions: vec![2],
        }),
        Command::Policy(PolicyCommand::Put {
            id: PolicyId::from_bytes([8; 16]),
            name: "readers".parse().expect("a valid name"),
            ciphertext: vec![9; 60],
            data_key_id: DataKeyId(1),
        }),
        Command::Settings(SettingsCommand::SetRotation(RotationSettings {
            data_key_rotate_after_ops: 1_000,
            data_key_max_age_ns: 3_600_000_000_000,
            root_key_max_age_ns: 0,
            reencrypt_per_second: 10,
        })),
        Command::Secret(SecretCommand::Reseal {
            path: "apps/db".parse().expect("a valid path"),
            version: 4,
            previous_digest: [0; 32],
            ciphertext: vec![10; 40],
            data_key_id: DataKeyId(2),
        }),
    ];
    let requests: Vec<Request> = (1..)
        .zip(commands)
        .map(|(time_ns, command)| Request {
            command,
            session: (time_ns % 2 == 0).then_some(SessionRef {
                client_id: u128::from(time_ns),
                sequence: 1,
            }),
            time_ns,
        })
        .collect();

    let failed = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(|e| failed(&e))?;
    let txn = db.begin_write().map_err(|e| failed(&e))?;
    let mut batch = Batch::begin(&txn).map_err(|e| failed(&e))?;
    for (index, request) in (1..).zip(&requests) {
        batch.apply(index, request).map_err(|e| failed(&e))?;
    }
    batch.finish().map_err(|e| failed(&e))?;
    txn.commit().map_err(|e| failed(&e))?;
    let path = std::env::temp_dir().join(format!("spike-fuzz-seed-{}.snap", std::process::id()));
    let read = redb::ReadableDatabase::begin_read(&db).map_err(|e| failed(&e))?;
    snapshot::write(&read, &SnapshotMetaOf::<TypeConfig>::default(), &path)?;
    let mut file = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    file.truncate(file.len() - 32);

    let mut seeds = vec![
        ("backup", "store".to_owned(), file.clone()),
        ("snapshot_file", "store".to_owned(), file),
    ];
    let mut frame = |kind: u8, name: String, bytes: Vec<u8>| {
        let mut framed = vec![kind];
        framed.extend_from_slice(&bytes);
        seeds.push(("raft_message", name, framed));
    };
    let entries: Vec<EntryOf<TypeConfig>> = std::iter::once(blank_ent::<TypeConfig>(1, 1, 1))
        .chain((2..).zip(&requests).map(|(index, request)| {
            EntryOf::<TypeConfig>::new_normal(log_id::<TypeConfig>(1, 1, index), request.clone())
        }))
        .collect();
    for (number, entry) in entries.iter().enumerate() {
        frame(
            0,
            format!("entry-{number}"),
            encode_stamped(FORMAT_NEWEST, entry)?,
        );
    }
    let vote = || VoteOf::<TypeConfig>::new_committed(1, 1);
    frame(
        1,
        "append".to_owned(),
        encode(&AppendEntriesRequest::<TypeConfig> {
            vote: vote(),
            prev_log_id: Some(log_id::<TypeConfig>(1, 1, 1)),
            entries: entries[1..4].to_vec(),
            leader_commit: Some(log_id::<TypeConfig>(1, 1, 2)),
        })?,
    );
    frame(
        2,
        "vote".to_owned(),
        encode(&VoteRequest::<TypeConfig> {
            vote: VoteOf::<TypeConfig>::new(2, 3),
            last_log_id: Some(log_id::<TypeConfig>(1, 1, 9)),
            leadership_transfer: false,
        })?,
    );
    frame(
        4,
        "snapshot-header".to_owned(),
        encode(&(vote(), SnapshotMetaOf::<TypeConfig>::default()))?,
    );
    frame(
        5,
        "forward-write".to_owned(),
        encode(&LeaderOp::Write(requests[1].clone()))?,
    );
    frame(
        6,
        "forward-reply".to_owned(),
        encode(&Ok::<_, ForwardError>(LeaderReply::Written(
            Response::Written(Written { version: 4 }),
        )))?,
    );
    frame(
        11,
        "read-index".to_owned(),
        encode(&Ok::<u64, ForwardError>(42))?,
    );
    Ok(seeds)
}
