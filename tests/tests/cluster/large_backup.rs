//! Backups larger than a request held in memory (64 MiB): `spike snapshot
//! save` streams one to its file, `spike snapshot restore` streams it back
//! into a fresh cluster, which spools it to a private file, checks it
//! whole and proposes it piece by piece; a damaged copy is refused naming
//! why and leaves the store as it was; an upload past the replica's limit
//! is refused (413) from its declared length.

use std::time::Instant;

use spike_tests::LocalCluster;

use crate::backup::{restore_root_key, small_cluster};
use crate::quotas::spike;
use crate::support::{Operators, get, phase, put, recovery_shards, value_of};

/// Secrets written: with [`VALUE_BYTES`] each, a backup of about 68 MiB.
const SECRETS: usize = 140;
/// Each secret's value: under the 512 KiB a secret may hold.
const VALUE_BYTES: usize = 510_000;

/// The value of secret `index`: distinct per secret, so a restore that
/// mixed them up would show.
fn value(index: usize) -> String {
    let stamp = format!("secret-{index:03}-");
    stamp.chars().cycle().take(VALUE_BYTES).collect()
}

/// The largest resident set (VmHWM, KiB) each of the cluster's replicas
/// reached so far.
fn peak_memory_kib(cluster: &LocalCluster) -> Vec<u64> {
    (1..=3)
        .filter_map(|id| {
            let pid = cluster.process(&format!("nexus-{id}")).pid?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .collect()
}

/// Restore uploads spooled under `dir` (`upload-*.tmp`), at any depth.
fn spooled_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry.file_name().to_string_lossy().starts_with("upload-") {
                found.push(path);
            }
        }
    }
    found
}

fn stdout_and_stderr(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_over_64_mib_saves_restores_and_is_refused_when_damaged() {
    let a = small_cluster();
    let ops = Operators::of(&a).await;
    phase("write about 68 MiB of secrets");
    let began = Instant::now();
    for index in 0..SECRETS {
        let path = format!("big/{index:03}");
        let reply = put(&ops.superuser, a.api(1), &path, &value(index)).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    }
    eprintln!("wrote {SECRETS} secrets in {:?}", began.elapsed());

    phase("spike snapshot save streams the backup to its file");
    eprintln!(
        "before the save, replicas' peak memory (KiB): {:?}",
        peak_memory_kib(&a)
    );
    let files = tempfile::tempdir().expect("tempdir");
    let backup = files.path().join("large.snap");
    let backup_arg = backup.to_str().expect("a UTF-8 path");
    let began = Instant::now();
    let saved = spike(&a, &["snapshot", "save", "-o", backup_arg]).await;
    assert!(saved.status.success(), "{}", stdout_and_stderr(&saved));
    let size = std::fs::metadata(&backup).expect("the backup").len();
    eprintln!(
        "saved a backup of {size} bytes in {:?}; replicas' peak memory (KiB): {:?}",
        began.elapsed(),
        peak_memory_kib(&a)
    );
    assert!(size > 64 * 1024 * 1024, "{size} bytes: over 64 MiB");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup)
            .expect("the backup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the backup is its owner's alone");
    }
    assert!(
        !files.path().join("large.snap.partial").exists(),
        "the partial file was renamed"
    );
    let shards = recovery_shards(&ops.recover, a.api(1)).await;
    drop(a);

    let b = small_cluster();
    let ops_b = Operators::of(&b).await;
    assert_eq!(
        put(&ops_b.superuser, b.api(1), "kept/here", "b's own")
            .await
            .status,
        200
    );

    phase("a cut or damaged copy is refused, naming why, and the store stays");
    let bytes = std::fs::read(&backup).expect("read the backup");
    let truncated = files.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 3;
    flipped[middle] ^= 0x20;
    let damaged = files.path().join("damaged.snap");
    std::fs::write(&damaged, &flipped).expect("write");
    drop((bytes, flipped));
    for file in [&truncated, &damaged] {
        let refused = spike(
            &b,
            &["snapshot", "restore", "-f", file.to_str().expect("UTF-8")],
        )
        .await;
        let said = stdout_and_stderr(&refused);
        assert!(!refused.status.success(), "{said}");
        assert!(
            said.contains("the backup was refused") && said.contains("digest mismatch"),
            "{}: {said}",
            file.display()
        );
    }

    phase("an upload over the replica's limit is refused (413)");
    // Sparse: its declared length is refused before a byte is read. The
    // replicas' limit is their storage quota (2 GiB by default).
    let huge = files.path().join("huge.snap");
    std::fs::File::create(&huge)
        .and_then(|file| file.set_len(2 * 1024 * 1024 * 1024 + 1))
        .expect("a sparse file");
    let over = spike(
        &b,
        &["snapshot", "restore", "-f", huge.to_str().expect("UTF-8")],
    )
    .await;
    let said = stdout_and_stderr(&over);
    assert!(
        !over.status.success() && said.contains("larger than SPIKE Nexus takes"),
        "{said}"
    );
    assert_eq!(
        value_of(&get(&ops_b.superuser, b.api(2), "kept/here").await).as_deref(),
        Some("b's own"),
        "the store is untouched"
    );
    for id in 1..=3 {
        let left = spooled_files(&b.data_dir(id));
        assert!(left.is_empty(), "spool files left behind: {left:?}");
    }

    phase("spike snapshot restore streams it into the fresh cluster");
    eprintln!(
        "before the restore, replicas' peak memory (KiB): {:?}",
        peak_memory_kib(&b)
    );
    let began = Instant::now();
    let restored = spike(&b, &["snapshot", "restore", "-f", backup_arg]).await;
    let said = stdout_and_stderr(&restored);
    assert!(restored.status.success(), "{said}");
    assert!(said.contains(&format!("{SECRETS} secrets")), "{said}");
    eprintln!(
        "restored {size} bytes in {:?}; replicas' peak memory (KiB): {:?}",
        began.elapsed(),
        peak_memory_kib(&b)
    );
    assert_eq!(get(&ops_b.superuser, b.api(2), "big/000").await.status, 503);
    restore_root_key(&ops_b, &b, shards).await;
    for index in [0, SECRETS / 2, SECRETS - 1] {
        let path = format!("big/{index:03}");
        assert_eq!(
            value_of(&get(&ops_b.superuser, b.api(3), &path).await),
            Some(value(index)),
            "{path}"
        );
    }
    assert_eq!(
        get(&ops_b.superuser, b.api(1), "kept/here").await.status,
        404
    );
}
