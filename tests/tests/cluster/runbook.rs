//! The operator's runbook (`docs/operations.md`), procedure by procedure.
//! Each `runbook_*` test runs the commands its section shows, in its
//! order, as the operator does (`source` an env file, then `spike ...`;
//! `spike-dev-cluster` stands in for `systemctl` on the local cluster),
//! and checks the outcome the section promises. Two checks need no
//! cluster and keep the runbook from going stale: every test or script it
//! names exists, and every `spike` command it shows parses with the real
//! CLI.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use spike_dev_cluster::file::Role;
use spike_dev_cluster::probe;
use spike_tests::{ApiClient, LocalCluster, binary, free_port};

use crate::support::{RECOVERY_LIMIT, get, leader, phase, voter_ids};

/// The runbook, relative to the repository root.
const RUNBOOK: &str = "docs/operations.md";

/// What starts each line naming the tests and scripts behind a section.
const EXERCISED_BY: &str = "Exercised by:";

/// Sections that describe rather than instruct: they name no procedure.
const REFERENCE_SECTIONS: [&str; 2] = ["What you are running", "Sizing"];

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

fn runbook_text() -> String {
    let path = repository_root().join(RUNBOOK);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The operator's shell on the local cluster: `source DIR/ENV_FILE`, then
/// `spike ...`, with a home of its own (recovery shards land in
/// `~/.spike/recover`). The env file is read at every command, as the
/// launcher rewrites it when the membership changes.
struct Shell {
    cluster_dir: PathBuf,
    home: tempfile::TempDir,
}

impl Shell {
    fn of(cluster: &LocalCluster) -> Self {
        Self {
            cluster_dir: cluster.dir.path().to_owned(),
            home: tempfile::tempdir().expect("a home directory"),
        }
    }

    /// The variables `source DIR/ENV_FILE` exports.
    fn sourced(&self, env_file: &str) -> Vec<(String, String)> {
        let path = self.cluster_dir.join(env_file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|assignment| assignment.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// `source ENV_FILE && spike ARGS < STDIN`.
    async fn run(&self, env_file: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = tokio::process::Command::new(binary("spike"));
        command
            .env_clear()
            .envs(self.sourced(env_file))
            .env("HOME", self.home.path())
            .args(args);
        spike_tests::output_with_stdin(command, stdin).await
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, env_file: &str, args: &[&str]) -> String {
        let output = self.run(env_file, args, b"").await;
        spike_tests::stdout_of_success(&output, &format!("spike {args:?} ({env_file})"))
    }

    /// `spike cluster status -f json` through the replica at `api`.
    async fn status_of(&self, api: std::net::SocketAddr) -> Value {
        let url = format!("https://{api}");
        let text = self
            .ok(
                "env",
                &[
                    "--api-url",
                    &url,
                    "--api-urls",
                    &url,
                    "cluster",
                    "status",
                    "-f",
                    "json",
                ],
            )
            .await;
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
    }

    /// Where `spike operator recover` wrote the shard files, in index order.
    fn shard_files(&self) -> Vec<PathBuf> {
        let dir = self.home.path().join(".spike").join("recover");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
            .flatten()
            .map(|entry| entry.path())
            .collect();
        files.sort();
        files
    }

    /// `spike operator restore < FILE`, one shard file after another
    /// (from the first again if need be), until one answers that the
    /// cluster is restored; returns what each said. Progress lives in the
    /// leader's memory for its term, so a leader change midway starts the
    /// count again, and more than t shards are then needed.
    async fn restore_until_restored(&self, files: &[PathBuf]) -> Vec<String> {
        let mut said = Vec::new();
        for file in files.iter().cycle().take(2 * files.len()) {
            let shard = std::fs::read(file).expect("a shard file");
            let output = self
                .run("env.restore", &["operator", "restore"], &shard)
                .await;
            assert!(
                output.status.success(),
                "restore {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            said.push(String::from_utf8_lossy(&output.stdout).into_owned());
            if said
                .last()
                .is_some_and(|last| last.contains("restored and ready to use"))
            {
                return said;
            }
        }
        panic!("never restored: {said:#?}");
    }
}

/// The voters `spike cluster members -f json` lists.
async fn voters(shell: &Shell) -> Vec<u64> {
    let members: Value =
        serde_json::from_str(&shell.ok("env", &["cluster", "members", "-f", "json"]).await)
            .expect("members as JSON");
    voter_ids(&members)
}

/// The `spike cluster add ...` line `spike-dev-cluster join` prints, as
/// arguments.
fn printed_add_command(printed: &str) -> Vec<String> {
    let command = printed
        .split_once("spike ")
        .map(|(_, rest)| rest.lines().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("join printed no spike command: {printed}"));
    command.split_whitespace().map(str::to_owned).collect()
}

/// Waits until `check` holds, or fails the test after [`RECOVERY_LIMIT`].
async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let began = tokio::time::Instant::now();
    while !check().await {
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "{what}: not after {RECOVERY_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gauge(cluster: &LocalCluster, id: u64, name: &str) -> Option<u64> {
    probe::gauge(cluster.replica(id).health_addr, name, probe::PROBE_TIMEOUT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_add_and_remove_a_replica() {
    let mut cluster = LocalCluster::up(&["--spares", "2"]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=before"])
        .await;

    phase("grow from 3 to 5 voters, one replica at a time");
    for (name, id) in [("nexus-4", 4), ("nexus-5", 5)] {
        let printed = cluster.try_act("join", name).expect("join");
        let add = printed_add_command(&printed);
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        assert_eq!(&add[..2], ["cluster", "add"], "{printed}");
        let said = shell.ok("env", &add).await;
        assert!(said.contains(&format!("Node {id} added")), "{said}");
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
        wait_until("the autopilot promotes it", async || {
            voters(&shell).await.contains(&id)
        })
        .await;
    }
    assert_eq!(voters(&shell).await, vec![1, 2, 3, 4, 5]);
    let status = shell.status_of(cluster.api(5)).await;
    assert_eq!(status["rootKey"]["status"], "ready", "{status}");
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let read = get(&superuser, cluster.api(5), "apps/db").await;
    assert_eq!(read.body["data"]["pass"], "before", "{:?}", read.body);

    phase("shrink back to 3: hand leadership away, remove, retire");
    let current = leader(&superuser, &cluster, &[1, 2, 3, 4, 5]).await;
    if current >= 4 {
        let said = shell
            .ok("env", &["cluster", "transfer-leader", "--id", "1"])
            .await;
        assert!(said.contains("handed to node 1"), "{said}");
        wait_until("leadership on node 1", async || {
            leader(&superuser, &cluster, &[1, 2, 3]).await == 1
        })
        .await;
    }
    for (name, id) in [("nexus-5", "5"), ("nexus-4", "4")] {
        let said = shell.ok("env", &["cluster", "remove", "--id", id]).await;
        assert!(said.contains("its id is retired"), "{said}");
        cluster.act("retire", name);
    }
    assert_eq!(voters(&shell).await, vec![1, 2, 3]);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=after"])
        .await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "after\n"
    );
    let refused = shell
        .run(
            "env",
            &[
                "cluster",
                "add",
                "--id",
                "4",
                "--cluster-addr",
                "127.0.0.1:1",
                "--api-addr",
                "127.0.0.1:2",
            ],
            b"",
        )
        .await;
    assert_eq!(refused.status.code(), Some(1), "a retired id came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_replace_a_dead_replica() {
    let mut cluster = LocalCluster::up(&["--spares", "1"]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=kept"])
        .await;
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let dead = leader(&superuser, &cluster, &[1, 2, 3]).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != dead).collect();

    phase("the leader's host dies with its disk");
    cluster.act("kill", &format!("nexus-{dead}"));
    std::fs::remove_dir_all(cluster.data_dir(dead)).expect("the disk is gone");

    phase("remove the dead replica; its id is retired");
    let said = shell
        .ok("env", &["cluster", "remove", "--id", &dead.to_string()])
        .await;
    assert!(said.contains("its id is retired"), "{said}");
    cluster.act("retire", &format!("nexus-{dead}"));
    assert_eq!(voters(&shell).await, survivors);

    phase("a fresh replica on an empty data directory joins under a new id");
    assert!(!cluster.data_dir(4).join("state.redb").exists());
    let printed = cluster.try_act("join", "nexus-4").expect("join");
    let add = printed_add_command(&printed);
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    shell.ok("env", &add).await;
    cluster.wait_ready(4, RECOVERY_LIMIT).await;
    let mut expected = survivors.clone();
    expected.push(4);
    wait_until("the autopilot promotes it", async || {
        voters(&shell).await == expected
    })
    .await;
    let read = get(&superuser, cluster.api(4), "apps/db").await;
    assert_eq!(read.body["data"]["pass"], "kept", "{:?}", read.body);

    phase("the new replica votes: with one founder down, writes still commit");
    cluster.act("stop", &format!("nexus-{}", survivors[0]));
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=new"])
        .await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "new\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_replace_a_keeper() {
    let mut cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=kept"])
        .await;

    phase("keeper-2's host dies; its replacement gets a new address");
    cluster.act("kill", "keeper-2");
    let index = cluster.file.index_of("keeper-2").expect("keeper-2");
    let new_address: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    match &mut cluster.file.processes[index].role {
        Role::Keeper(keeper) => keeper.api_addr = new_address,
        other => panic!("keeper-2 is a {other:?}"),
    }
    cluster.file.save().expect("cluster.json");
    cluster.act("start", "keeper-2");

    phase("every replica learns the new keeper list: followers first, one at a time");
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let first_leader = leader(&superuser, &cluster, &[1, 2, 3]).await;
    let mut order: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != first_leader)
        .collect();
    order.push(first_leader);
    for id in order {
        cluster.act("stop", &format!("nexus-{id}"));
        cluster.act("start", &format!("nexus-{id}"));
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
        assert!(
            runs_with(&cluster, id, &new_address.to_string()),
            "nexus-{id} was not restarted with the new keeper list"
        );
    }

    phase("the new keeper holds its share: a replica rebuilds the key with only t keepers");
    for name in ["keeper-4", "keeper-5"] {
        cluster.act("stop", name);
    }
    let current = leader(&superuser, &cluster, &[1, 2, 3]).await;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != current)
        .expect("a follower");
    cluster.act("kill", &format!("nexus-{follower}"));
    cluster.act("start", &format!("nexus-{follower}"));
    cluster.wait_ready(follower, RECOVERY_LIMIT).await;
    let read = get(&superuser, cluster.api(follower), "apps/db").await;
    assert_eq!(read.body["data"]["pass"], "kept", "{:?}", read.body);
}

/// Whether replica `id` runs with `text` in its command line.
fn runs_with(cluster: &LocalCluster, id: u64, text: &str) -> bool {
    cluster
        .process(&format!("nexus-{id}"))
        .pid
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .is_some_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_lose_a_majority() {
    let mut cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=before"])
        .await;

    phase("two of three replicas go down; the survivor says there is no leader");
    for id in [1, 2] {
        cluster.act("kill", &format!("nexus-{id}"));
    }
    wait_until("the survivor's no-leader alert", async || {
        gauge(&cluster, 3, "spike_raft_leader_id") == Some(0)
    })
    .await;
    let status = shell.status_of(cluster.api(3)).await;
    assert!(status["leaderId"].is_null(), "{status}");
    assert_eq!(
        gauge(&cluster, 3, "spike_root_key_ready"),
        Some(1),
        "the survivor keeps the root key"
    );
    let refused = shell
        .run("env", &["secret", "put", "apps/db", "pass=lost"], b"")
        .await;
    assert_eq!(refused.status.code(), Some(1), "a write without a quorum");

    phase("the two come back on their own data: the cluster serves, nothing is lost");
    for id in [1, 2] {
        cluster.act("start", &format!("nexus-{id}"));
    }
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
    }
    wait_until("a leader again", async || {
        gauge(&cluster, 3, "spike_raft_leader_id").is_some_and(|id| id != 0)
    })
    .await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "before\n"
    );
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=after"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_total_loss_and_restore() {
    let mut cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=kept"])
        .await;

    phase("while healthy: save the recovery shards");
    let said = shell.ok("env.recover", &["operator", "recover"]).await;
    assert!(said.contains("SPIKE Recovery shards saved"), "{said}");
    let shards = shell.shard_files();
    assert_eq!(shards.len(), 5, "one shard per keeper");

    phase("every replica and keeper goes down, then starts again");
    let everything: Vec<String> = cluster
        .replica_names()
        .into_iter()
        .chain(cluster.keeper_names())
        .collect();
    for name in &everything {
        cluster.act("kill", name);
    }
    for name in cluster
        .keeper_names()
        .iter()
        .chain(&cluster.replica_names())
    {
        cluster.act("start", name);
    }
    wait_until("replicas locked, waiting for shards", async || {
        (1..=3).all(|id| gauge(&cluster, id, "spike_root_key_ready") == Some(0))
    })
    .await;
    leader(
        &ApiClient::new(&cluster.identity("superuser").await),
        &cluster,
        &[1, 2, 3],
    )
    .await;
    let status = shell.status_of(cluster.api(1)).await;
    assert_eq!(status["rootKey"]["status"], "locked", "{status}");

    phase("feed back shards one at a time until restored (three: the threshold)");
    let said = shell.restore_until_restored(&shards).await;
    assert!(said[0].contains("Shards remaining:  2"), "{said:#?}");
    assert!(
        said.len() >= 3,
        "restored with fewer than t shards: {said:#?}"
    );
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
    }
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "kept\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_restore_a_backup_into_a_fresh_cluster() {
    let old = LocalCluster::up(&[]);
    let old_shell = Shell::of(&old);
    old_shell
        .ok("env", &["secret", "put", "apps/db", "pass=from-backup"])
        .await;
    old_shell
        .ok(
            "env",
            &[
                "policy",
                "create",
                "--name",
                "billing",
                "--path-pattern",
                "^apps/billing/",
                "--spiffeid-pattern",
                "^spiffe://spike\\.ist/app/billing$",
                "--permissions",
                "read,write",
            ],
        )
        .await;

    phase("take a backup and the shards of its root key");
    let backup = old_shell.home.path().join("spike-backup.snap");
    let backup_arg = backup.display().to_string();
    let said = old_shell
        .ok("env", &["snapshot", "save", "-o", &backup_arg])
        .await;
    assert!(said.contains("Backup saved"), "{said}");
    let mode = std::fs::metadata(&backup)
        .expect("backup")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a backup is the operator's only");
    old_shell.ok("env.recover", &["operator", "recover"]).await;
    let shards = old_shell.shard_files();
    drop(old);

    phase("a fresh cluster takes the backup, then the backup's shards");
    let mut fresh = LocalCluster::up(&[]);
    let shell = Shell::of(&fresh);
    let said = shell
        .ok("env", &["snapshot", "restore", "-f", &backup_arg])
        .await;
    assert!(said.contains("1 secrets, 1 policies"), "{said}");
    shell.restore_until_restored(&shards).await;
    for id in 1..=3 {
        fresh.wait_ready(id, RECOVERY_LIMIT).await;
    }
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "from-backup\n"
    );
    let policies = shell.ok("env", &["policy", "list", "-f", "json"]).await;
    assert!(policies.contains("billing"), "{policies}");

    phase("save the new cluster's own shards, and they bring it back");
    shell.ok("env.recover", &["operator", "recover"]).await;
    let new_shards = shell.shard_files();
    for name in fresh
        .replica_names()
        .into_iter()
        .chain(fresh.keeper_names())
    {
        fresh.act("kill", &name);
    }
    for name in fresh.keeper_names().iter().chain(&fresh.replica_names()) {
        fresh.act("start", name);
    }
    let superuser = ApiClient::new(&fresh.identity("superuser").await);
    leader(&superuser, &fresh, &[1, 2, 3]).await;
    shell.restore_until_restored(&new_shards).await;
    fresh.wait_ready(1, RECOVERY_LIMIT).await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "from-backup\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_automatic_rotation() {
    let cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=old"])
        .await;

    phase("the flags are the settings until an operator sets them");
    let said = shell.ok("env", &["operator", "rotation", "get"]).await;
    assert!(said.contains("flags of the answering replica"), "{said}");
    assert!(
        said.contains("data key max age:           2592000s"),
        "{said}"
    );

    phase("replicated settings: data keys age out after 2 s");
    // Setting needs format 3, which a new cluster writes ~2 s after start.
    let mut set = None;
    wait_until("rotation set accepted", async || {
        let output = shell
            .run(
                "env",
                &["operator", "rotation", "set", "--data-key-max-age", "2s"],
                b"",
            )
            .await;
        set = output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned());
        set.is_some()
    })
    .await;
    let set = set.unwrap_or_default();
    assert!(set.contains("Settings (replicated)"), "{set}");
    assert!(set.contains("data key max age:           2s"), "{set}");
    let key_of = |said: &str| -> u64 {
        said.split("active data key ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no data key in {said}"))
    };
    let first = key_of(&set);
    wait_until("two more data keys", async || {
        key_of(&shell.ok("env", &["operator", "rotation", "get"]).await) >= first + 2
    })
    .await;
    shell
        .ok(
            "env",
            &["operator", "rotation", "set", "--data-key-max-age", "0"],
        )
        .await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "old\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_rekey_and_rotate_the_data_key() {
    let cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=old"])
        .await;
    shell.ok("env.recover", &["operator", "recover"]).await;
    let old_shards: Vec<String> = shell
        .shard_files()
        .iter()
        .map(|file| std::fs::read_to_string(file).expect("shard"))
        .collect();

    phase("rekey: a new root key, same n and t");
    let said = shell
        .ok(
            "env",
            &["operator", "rekey", "--shares", "5", "--threshold", "3"],
        )
        .await;
    assert!(said.contains("now root key 2"), "{said}");
    for id in 1..=3 {
        let api = cluster.api(id);
        wait_until(&format!("nexus-{id} on root key 2"), async || {
            let status = shell.status_of(api).await;
            status["rootKey"]["rootKeyId"] == 2 && status["rootKey"]["status"] == "ready"
        })
        .await;
    }

    phase("save the new shards at once: the old ones rebuild a key no longer used");
    shell.ok("env.recover", &["operator", "recover"]).await;
    let new_shards: Vec<String> = shell
        .shard_files()
        .iter()
        .map(|file| std::fs::read_to_string(file).expect("shard"))
        .collect();
    assert_eq!(new_shards.len(), 5);
    assert!(
        new_shards.iter().all(|shard| !old_shards.contains(shard)),
        "recover still hands out the old key's shards"
    );

    phase("rotate the data key; old and new data open");
    let said = shell.ok("env", &["operator", "rotate"]).await;
    assert!(said.contains("data key 2"), "{said}");
    shell
        .ok("env", &["secret", "put", "apps/new", "pass=new"])
        .await;
    assert_eq!(
        shell.ok("env", &["secret", "get", "apps/db", "pass"]).await,
        "old\n"
    );
    assert_eq!(
        shell
            .ok("env", &["secret", "get", "apps/new", "pass"])
            .await,
        "new\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_alert_metrics_are_exported_with_healthy_values() {
    let cluster = LocalCluster::up(&[]);
    let named: std::collections::BTreeSet<String> = metric_names(&runbook_text());
    assert!(
        named.len() >= 5,
        "the runbook's alerts name too few metrics: {named:?}"
    );

    phase("every metric the alerts name is exported by every replica");
    for id in 1..=3 {
        for name in &named {
            assert!(
                gauge(&cluster, id, name).is_some(),
                "nexus-{id} exports no {name}"
            );
        }
    }

    phase("a healthy cluster trips none of them");
    let leaders: Vec<Option<u64>> = (1..=3)
        .map(|id| gauge(&cluster, id, "spike_raft_leader_id"))
        .collect();
    assert!(
        leaders
            .iter()
            .all(|leader| *leader == leaders[0] && *leader != Some(0)),
        "{leaders:?}"
    );
    let leading: u64 = (1..=3)
        .filter_map(|id| gauge(&cluster, id, "spike_raft_is_leader"))
        .sum();
    assert_eq!(leading, 1);
    for id in 1..=3 {
        assert_eq!(gauge(&cluster, id, "spike_root_key_ready"), Some(1));
        assert_eq!(gauge(&cluster, id, "spike_raft_voters"), Some(3));
        let last = gauge(&cluster, id, "spike_raft_last_log_index").expect("last log index");
        let applied = gauge(&cluster, id, "spike_raft_applied_index").expect("applied index");
        assert!(
            last - applied < 1000,
            "nexus-{id} lags: {last} vs {applied}"
        );
        assert_eq!(gauge(&cluster, id, "spike_build_info"), Some(1));
    }
    // A new cluster of one release switches to its newest format within a
    // few of the leader's 0.5 s checks, on every replica.
    let newest =
        gauge(&cluster, 1, "spike_build_format_newest").expect("the build's newest format");
    let began = std::time::Instant::now();
    loop {
        let formats: Vec<Option<u64>> = (1..=3)
            .map(|id| gauge(&cluster, id, "spike_cluster_format"))
            .collect();
        if formats.iter().all(|format| *format == Some(newest)) {
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "the cluster format did not settle at {newest}: {formats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Every `spike_...` metric name in the runbook's `promql` blocks.
fn metric_names(markdown: &str) -> std::collections::BTreeSet<String> {
    fenced_blocks(markdown, "promql")
        .iter()
        .flat_map(|block| {
            block
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("spike_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_rotate_and_verify_the_audit_log() {
    let mut cluster = LocalCluster::up(&[]);
    let shell = Shell::of(&cluster);
    shell
        .ok("env", &["secret", "put", "apps/db", "pass=x"])
        .await;
    let log = cluster.data_dir(1).join("audit.log");
    let rotated = cluster.data_dir(1).join("audit.log.1");

    phase("rotate: stop the replica, move the file away, start it");
    cluster.act("stop", "nexus-1");
    std::fs::rename(&log, &rotated).expect("move the audit log away");
    cluster.act("start", "nexus-1");
    cluster.wait_ready(1, RECOVERY_LIMIT).await;
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let read = get(&superuser, cluster.api(1), "apps/db").await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    cluster.act("stop", "nexus-1");

    phase("both files verify from their genesis records");
    for file in [&rotated, &log] {
        let said = shell
            .ok("env", &["audit", "verify", &file.display().to_string()])
            .await;
        assert!(said.contains("chain intact from its genesis"), "{said}");
    }
    let text = std::fs::read_to_string(&log).expect("the new audit log");
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(records[0]["kind"], "genesis");
    assert_eq!(records[0]["node"], 1);
    assert_eq!(
        records[0]["root_key_id"], "1",
        "the new file names the key it started under"
    );

    phase("the fields the runbook's queries read are on every request record");
    let read = records
        .iter()
        .find(|record| record["kind"] == "request" && record["path"] == "apps/db")
        .unwrap_or_else(|| panic!("no record of the read: {text}"));
    for field in [
        "time",
        "seq",
        "node",
        "caller",
        "route",
        "action",
        "result",
        "status",
        "duration_us",
        "prev",
    ] {
        assert!(!read[field].is_null(), "no {field} in {read}");
    }
    assert_eq!(
        read["caller"],
        "spiffe://spike.ist/spike/pilot/role/superuser"
    );
    assert_eq!(read["result"], "ok");

    phase("an edited line is found");
    let edited = text.replacen("spike/nexus/1", "spike/nexus/9", 1);
    let tampered = cluster.dir.path().join("audit-edited.log");
    std::fs::write(&tampered, edited).expect("write");
    let output = shell
        .run(
            "env",
            &["audit", "verify", &tampered.display().to_string()],
            b"",
        )
        .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("chain broken"),
        "{output:?}"
    );
}

/// The bodies of every fenced block of `language` (```` ```sh ````, ...).
fn fenced_blocks(markdown: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(info)) if info.trim() == language => current = Some(String::new()),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every reference on the runbook's "Exercised by:" lines: the
/// backquoted items after the colon.
fn exercised_references(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter_map(|line| line.trim().strip_prefix(EXERCISED_BY))
        .flat_map(|rest| {
            rest.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Why `reference` names nothing under `root`, if it does not: a script
/// (`deploy/systemd/check`) must be an executable file; a test
/// (`BINARY::MODULE::NAME`, or `BINARY::NAME` for one in the binary's
/// main.rs) must be a function with a test attribute in
/// `tests/tests/BINARY/MODULE.rs`.
fn missing(reference: &str, root: &Path) -> Option<String> {
    if reference.contains('/') {
        let path = root.join(reference);
        let executable = std::fs::metadata(&path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        return (!executable).then(|| format!("{reference}: no executable script there"));
    }
    let parts: Vec<&str> = reference.split("::").collect();
    let (binary, module, name) = match parts[..] {
        [binary, name] => (binary, "main", name),
        [binary, module, name] => (binary, module, name),
        _ => {
            return Some(format!(
                "{reference}: neither BINARY::MODULE::NAME nor a script path"
            ));
        }
    };
    let file = root
        .join("tests/tests")
        .join(binary)
        .join(format!("{module}.rs"));
    let Ok(source) = std::fs::read_to_string(&file) else {
        return Some(format!("{reference}: no file {}", file.display()));
    };
    let lines: Vec<&str> = source.lines().collect();
    let signature = format!("fn {name}(");
    let Some(at) = lines.iter().position(|line| line.contains(&signature)) else {
        return Some(format!("{reference}: no fn {name} in {}", file.display()));
    };
    // The attributes and doc comments right above the function.
    let is_test = lines[..at]
        .iter()
        .rev()
        .take_while(|line| {
            let line = line.trim_start();
            line.starts_with("#[") || line.starts_with("///") || line.starts_with("//")
        })
        .any(|line| line.trim_start().starts_with("#[") && line.contains("test"));
    (!is_test).then(|| format!("{reference}: fn {name} is not a test"))
}

/// Every problem with the runbook's references: names that resolve to
/// nothing, and procedure sections (`## ` headings) without an
/// "Exercised by:" line.
fn reference_problems(markdown: &str, root: &Path) -> Vec<String> {
    let mut problems: Vec<String> = exercised_references(markdown)
        .iter()
        .filter_map(|reference| missing(reference, root))
        .collect();
    for section in markdown.split("\n## ").skip(1) {
        let title = section.lines().next().unwrap_or_default().trim();
        if !REFERENCE_SECTIONS.contains(&title) && !section.contains(EXERCISED_BY) {
            problems.push(format!("section {title:?}: no {EXERCISED_BY} line"));
        }
    }
    problems
}

#[test]
fn runbook_names_only_tests_that_exist() {
    let root = repository_root();

    // The check can fail: a wrong name, a wrong module, a script that is
    // not there, a helper that is no test, a section naming none.
    let wrong = "intro\n\n## Replace a dead replica\n\nExercised by: \
        `cluster::runbook::runbook_replace_a_ghost`, `cluster::nowhere::runbook_replace_a_keeper`, \
        `deploy/nowhere/check`, `cluster::runbook::runbook_text`\n\n## Lose everything\n\nNothing.\n";
    let found = reference_problems(wrong, &root);
    assert_eq!(found.len(), 5, "{found:#?}");
    for expected in [
        "no fn runbook_replace_a_ghost",
        "cluster::nowhere::runbook_replace_a_keeper: no file",
        "deploy/nowhere/check: no executable script",
        "fn runbook_text is not a test",
        "section \"Lose everything\": no Exercised by: line",
    ] {
        assert!(
            found.iter().any(|problem| problem.contains(expected)),
            "{expected:?} not among {found:#?}"
        );
    }
    assert!(
        missing(
            "cluster::runbook::runbook_names_only_tests_that_exist",
            &root
        )
        .is_none(),
        "the check does not find itself"
    );

    let markdown = runbook_text();
    let references = exercised_references(&markdown);
    assert!(
        references.len() >= 15,
        "the runbook names too few tests: {references:?}"
    );
    let problems = reference_problems(&markdown, &root);
    assert!(
        problems.is_empty(),
        "{RUNBOOK} is stale:\n{}",
        problems.join("\n")
    );
}

/// Words of one shell command line, quotes removed; stops at the first
/// redirection, pipe, `&&`, `;` or comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '<' | '>' | '|' | ';' | '&' | '#') if !in_word => break,
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Every `spike ...` command in the runbook's `sh` blocks (continuation
/// lines joined), as words after `spike`.
fn spike_commands(markdown: &str) -> Vec<Vec<String>> {
    fenced_blocks(markdown, "sh")
        .iter()
        .flat_map(|block| {
            let joined = block.replace("\\\n", " ");
            joined
                .lines()
                .flat_map(|line| line.split("&&"))
                .map(str::trim)
                .filter_map(|command| command.strip_prefix("spike "))
                .map(shell_words)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `spike SUBCOMMANDS... --help`, run once per subcommand path.
struct HelpPages {
    spike: PathBuf,
    pages: HashMap<Vec<String>, String>,
}

impl HelpPages {
    fn page(&mut self, path: &[String]) -> Result<&str, String> {
        if !self.pages.contains_key(path) {
            let output = std::process::Command::new(&self.spike)
                .env_clear()
                .args(path)
                .arg("--help")
                .output()
                .expect("run spike --help");
            if !output.status.success() {
                return Err(format!(
                    "`spike {} --help`: {}",
                    path.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            self.pages.insert(path.to_vec(), text);
        }
        Ok(&self.pages[path])
    }
}

/// The subcommands a help page lists under "Commands:".
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// How an option appears in a help page: `Some(takes_value)` if it does.
fn option_in(help: &str, flag: &str) -> Option<bool> {
    help.lines().find_map(|line| {
        let spec = line.trim_start();
        if !spec.starts_with('-') {
            return None;
        }
        // "-f, --format <FORMAT>  Output ..." : the flags before the text.
        let head = spec.split("  ").next().unwrap_or_default();
        let mut words = head.split([',', ' ']).filter(|word| !word.is_empty());
        let mut found = false;
        let mut takes_value = false;
        for word in words.by_ref() {
            if word == flag {
                found = true;
            } else if word.starts_with('<') || word.starts_with("[<") {
                takes_value = true;
            }
        }
        found.then_some(takes_value)
    })
}

/// How many positional arguments a leaf command's "Usage:" line allows
/// (`usize::MAX` for a variadic one).
fn positionals_allowed(help: &str) -> usize {
    let usage = help
        .lines()
        .find_map(|line| line.strip_prefix("Usage: "))
        .unwrap_or_default();
    let mut allowed = 0usize;
    let mut previous = "";
    for word in usage.split_whitespace() {
        let an_option_value = previous.starts_with('-');
        previous = word;
        if an_option_value
            || word == "[OPTIONS]"
            || !(word.starts_with('<') || word.starts_with('['))
        {
            continue;
        }
        if word.ends_with("...") {
            return usize::MAX;
        }
        allowed += 1;
    }
    allowed
}

/// Why `spike WORDS` would not parse, if it would not: each subcommand
/// must exist, the command must end at a leaf, each option must be one
/// the help of the command it follows lists (with its value, if it takes
/// one), and the positional arguments must fit the leaf's usage.
fn parse_problem(words: &[String], pages: &mut HelpPages) -> Option<String> {
    let line = format!("spike {}", words.join(" "));
    let mut path: Vec<String> = Vec::new();
    let mut positionals = 0usize;
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        let help = match pages.page(&path) {
            Ok(help) => help,
            Err(problem) => return Some(format!("{line}: {problem}")),
        };
        let command = format!("spike {}", path.join(" "));
        if word.starts_with('-') && word.len() > 1 {
            let (flag, inline_value) = match word.split_once('=') {
                Some((flag, _)) => (flag, true),
                None => (word.as_str(), false),
            };
            match option_in(help, flag) {
                None => return Some(format!("{line}: no option {flag} in `{command} --help`")),
                Some(true) if !inline_value && rest.next().is_none() => {
                    return Some(format!("{line}: {flag} needs a value"));
                }
                Some(_) => {}
            }
        } else if subcommands(help).is_empty() {
            positionals += 1;
        } else if subcommands(help).contains(word) {
            path.push(word.clone());
        } else {
            return Some(format!("{line}: `{command}` has no subcommand {word:?}"));
        }
    }
    let help = match pages.page(&path) {
        Ok(help) => help,
        Err(problem) => return Some(format!("{line}: {problem}")),
    };
    let command = format!("spike {}", path.join(" "));
    if !subcommands(help).is_empty() {
        return Some(format!("{line}: `{command}` wants a subcommand"));
    }
    let allowed = positionals_allowed(help);
    (positionals > allowed)
        .then(|| format!("{line}: {positionals} arguments, `{command}` takes {allowed}"))
}

#[test]
fn runbook_spike_commands_parse() {
    let mut pages = HelpPages {
        spike: binary("spike"),
        pages: HashMap::new(),
    };
    let commands = spike_commands(&runbook_text());
    assert!(
        commands.len() >= 20,
        "the runbook shows too few spike commands: {commands:?}"
    );
    let problems: Vec<String> = commands
        .iter()
        .filter_map(|words| parse_problem(words, &mut pages))
        .collect();
    assert!(
        problems.is_empty(),
        "{RUNBOOK} shows commands the CLI refuses:\n{}",
        problems.join("\n")
    );

    // The check itself can fail: each of these is a usage error.
    let wrong = "```sh\nspike clusterr status\nspike cluster add --idd 4 --cluster-addr a --api-addr b\n\
        spike cluster status extra\nspike operator\nspike snapshot save -o\n\
        spike secret get apps/db -f json && spike cluster  members  --format\n```\n";
    let found: Vec<String> = spike_commands(wrong)
        .iter()
        .filter_map(|words| parse_problem(words, &mut pages))
        .collect();
    assert_eq!(found.len(), 6, "{found:#?}");
    for expected in [
        "`spike ` has no subcommand \"clusterr\"",
        "no option --idd in `spike cluster add --help`",
        "1 arguments, `spike cluster status` takes 0",
        "`spike operator` wants a subcommand",
        "-o needs a value",
        "spike cluster members --format: --format needs a value",
    ] {
        assert!(
            found.iter().any(|problem| problem.contains(expected)),
            "{expected:?} not among {found:#?}"
        );
    }
}
