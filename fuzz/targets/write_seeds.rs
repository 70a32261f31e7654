//! Writes the seed corpora under `fuzz/corpus/<target>/` from inputs made
//! by the real code (a store's backup and snapshot, Raft entries and
//! frames, keeper messages, the SDK's request bodies, routes, frames and
//! recovery lines). `fuzz/run seeds` runs it; the files are committed.

use std::path::Path;

use spike_sdk::api::*;
use spike_sdk::crypto::recovery_line;
use spike_sdk::crypto::{KeyShare, SecretBytes, ShareIndex};

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut seeds: Vec<(&str, String, Vec<u8>)> = spike_nexus::fuzzing::seeds()?;
    for (name, bytes) in spike_keeper::fuzzing::seeds() {
        seeds.push(("keeper_message", name, bytes));
    }
    let mut api = |kind: u8, name: &str, body: Vec<u8>| {
        let mut framed = vec![kind];
        framed.extend_from_slice(&body);
        seeds.push(("api_json", name.to_owned(), framed));
    };
    api(
        2,
        "encrypt",
        encode(&EncryptRequest {
            plaintext: b"hello".to_vec().into(),
            algorithm: "AES-GCM".to_owned(),
        }),
    );
    api(
        10,
        "add-member",
        br#"{"id":4,"apiAddr":"127.0.0.1:8553","clusterAddr":"127.0.0.1:8554"}"#.to_vec(),
    );
    api(15, "restore", br#"{"id":1,"shard":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32]}"#.to_vec());
    api(17, "rekey", br#"{"shares":5,"threshold":3}"#.to_vec());
    api(21, "put-policy", br#"{"name":"readers","spiffeidPattern":"^spiffe://spike\\.ist/app/x$","pathPattern":"^apps/","permissions":["read","list"]}"#.to_vec());
    api(
        23,
        "get-policy",
        br#"{"id":"03030303-0303-0303-0303-030303030303"}"#.to_vec(),
    );
    api(
        28,
        "put-secret",
        br#"{"path":"apps/db","values":{"user":"admin","pass":"x"},"cas":2}"#.to_vec(),
    );
    api(
        28,
        "put-secret-case",
        br#"{"PATH":"a","Path":"b","values":{"k":"v"},"Values":null}"#.to_vec(),
    );
    api(
        29,
        "get-secret",
        br#"{"path":"apps/db","version":3}"#.to_vec(),
    );
    api(
        30,
        "get-secret-answer",
        br#"{"data":{"user":"admin"},"versions":{}}"#.to_vec(),
    );
    api(
        31,
        "delete-secret",
        br#"{"path":"apps/db","versions":[0,1,2]}"#.to_vec(),
    );
    api(37, "metadata-answer", br#"{"metadata":{"currentVersion":3,"oldestVersion":1,"createdTime":"2026-01-02T03:04:05.123456789Z","updatedTime":"2026-01-02T03:04:05Z","maxVersions":10},"versions":{"3":{"version":3,"createdTime":"2026-01-02T03:04:05Z","deletedTime":null}}}"#.to_vec());
    api(38, "route", b"/v1/store/secrets?action=delete".to_vec());
    api(38, "route-default", b"/v1/store/secrets".to_vec());
    api(39, "frame", {
        let frame = StreamFrame {
            version: FORMAT_VERSION,
            nonce: [7; NONCE_LEN],
            ciphertext: vec![1; 24],
        };
        frame.to_bytes()
    });
    let share = KeyShare::new(
        ShareIndex::new(2).expect("index 2"),
        SecretBytes::from_array(&mut [0xab; 32]),
    );
    seeds.push((
        "recovery_line",
        "line".to_owned(),
        format!("{}\n", recovery_line::format(&share).as_str()).into_bytes(),
    ));
    for (target, name, bytes) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
