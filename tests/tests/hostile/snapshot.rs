//! Malformed backups uploaded by the superuser (security review finding
//! 13): each is refused with a 400 naming its first bad record, and the
//! store, every replica included, stays as it was.

use sha2::{Digest, Sha256};
use spike_tests::{ApiClient, LocalCluster, get, put, save_backup, value_of};

/// A backup cut into its parts: everything before the tables (magic,
/// format, metadata), then each table's rows in file order (metadata,
/// secrets, policies, sessions, session expiry). The layout is the one
/// `nexus/src/raft/snapshot.rs` documents.
struct Backup {
    head: Vec<u8>,
    tables: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

const SECRETS: usize = 1;

fn part(bytes: &[u8], at: &mut usize) -> Vec<u8> {
    let length = u32::from_be_bytes(bytes[*at..*at + 4].try_into().expect("4 bytes")) as usize;
    let part = bytes[*at + 4..*at + 4 + length].to_vec();
    *at += 4 + length;
    part
}

impl Backup {
    fn parse(bytes: &[u8]) -> Self {
        let mut at = 12;
        part(bytes, &mut at);
        let head = bytes[..at].to_vec();
        let mut tables = Vec::new();
        for _ in 0..5 {
            let mut rows = Vec::new();
            loop {
                let tag = bytes[at];
                at += 1;
                if tag == 0 {
                    break;
                }
                let key = part(bytes, &mut at);
                rows.push((key, part(bytes, &mut at)));
            }
            tables.push(rows);
        }
        assert_eq!(at + 32, bytes.len(), "tables, then the digest");
        Self { head, tables }
    }

    /// The file, with a digest that matches: the digest is integrity, not
    /// authenticity, so anyone can write one.
    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        for rows in &self.tables {
            for (key, value) in rows {
                out.push(1);
                for part in [key, value] {
                    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    out.extend_from_slice(part);
                }
            }
            out.push(0);
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }
}

/// Postcard's unsigned varint.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A secret record (postcard, field by field) whose one live version is
/// `version`: consistent, but a next put would need `version + 1`.
fn record_at(version: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for counter in [version, version, version, 1, 1] {
        varint(counter, &mut out); // current, oldest, highest, created, updated
    }
    varint(10, &mut out); // max_versions
    varint(1, &mut out); // one version
    varint(version, &mut out);
    varint(40, &mut out); // its ciphertext
    out.extend_from_slice(&[7; 40]);
    varint(1, &mut out); // created_at
    out.push(0); // not deleted
    out.push(0); // not destroyed
    out
}

async fn restore(
    superuser: &ApiClient,
    cluster: &LocalCluster,
    backup: Vec<u8>,
) -> (u16, serde_json::Value) {
    let reply = superuser
        .raw(
            cluster.api(2),
            "POST",
            "/v1/snapshot?action=restore",
            "application/octet-stream",
            backup,
        )
        .await
        .expect("restore reaches the node");
    let body = serde_json::from_slice(&reply.bytes).unwrap_or_default();
    (reply.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_backup_is_refused_naming_its_record_and_changes_nothing() {
    let _turn = crate::turn().await;
    let cluster = LocalCluster::up(&["--replicas", "3", "--keepers", "3", "--threshold", "2"]);
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let written = put(&superuser, cluster.api(1), "apps/db", "kept").await;
    assert_eq!(written.status, 200, "{:?}", written.body);
    let saved = save_backup(&superuser, cluster.api(1)).await;
    assert_eq!(saved.status, 200);
    let original = Backup::parse(&saved.bytes);
    assert_eq!(original.tables[SECRETS][0].0, b"apps/db");

    let mut overflow = Backup::parse(&saved.bytes);
    overflow.tables[SECRETS][0].1 = record_at(u64::MAX);
    let mut twice = Backup::parse(&saved.bytes);
    let row = twice.tables[SECRETS][0].clone();
    twice.tables[SECRETS].push(row);
    let mut bad_path = Backup::parse(&saved.bytes);
    bad_path.tables[SECRETS][0].0 = b"apps/../db x".to_vec();
    let cases = [
        (
            overflow,
            "backup record secret \"apps/db\": its highest version is above 2^63 - 1",
        ),
        (twice, "backup record secret \"apps/db\": it appears twice"),
        (bad_path, "backup record secret \"apps/../db x\": "),
    ];
    for (backup, expected) in cases {
        let (status, body) = restore(&superuser, &cluster, backup.bytes()).await;
        assert_eq!(status, 400, "{expected}: {body}");
        assert_eq!(body["err"], "api_bad_request", "{body}");
        let refused = body["refused"].as_str().unwrap_or_default();
        assert!(
            refused.starts_with(expected),
            "{refused:?} is not {expected:?}"
        );
    }

    // Nothing changed, on any replica, and the secret still takes writes.
    for node in 1..=3 {
        assert_eq!(
            value_of(&get(&superuser, cluster.api(node), "apps/db").await).as_deref(),
            Some("kept"),
            "replica {node}"
        );
    }
    let written = put(&superuser, cluster.api(3), "apps/db", "next").await;
    assert_eq!(written.status, 200, "{:?}", written.body);
    assert_eq!(
        value_of(&get(&superuser, cluster.api(1), "apps/db").await).as_deref(),
        Some("next")
    );
}
