//! The `spike` CLI end to end against a real cluster: every command, every
//! output format, and the exit codes (0 success, 1 failed operation, 2 usage
//! error, 64 no identity).

use std::path::Path;
use std::process::Output;

use base64::Engine;
use spike_tests::{LocalCluster, binary};

struct Cli<'a> {
    cluster: &'a LocalCluster,
    home: &'a Path,
}

impl Cli<'_> {
    /// Runs `spike ARGS` as `role` with `stdin`, pointed at replica 2.
    async fn run(&self, role: &str, args: &[&str], stdin: &[u8]) -> Output {
        let api_url = format!("https://{}", self.cluster.api(2));
        self.run_at(role, &[("SPIKE_NEXUS_API_URL", &api_url)], args, stdin)
            .await
    }

    /// Runs `spike ARGS` as `role` with `stdin` and the variables `env`.
    async fn run_at(
        &self,
        role: &str,
        env: &[(&str, &str)],
        args: &[&str],
        stdin: &[u8],
    ) -> Output {
        let mut command = self.cluster.spike_as(role);
        command
            .envs(env.iter().copied())
            .env("SPIKE_PILOT_RECOVERY_DIR", self.home)
            .env("HOME", self.home)
            .args(args);
        spike_tests::output_with_stdin(command, stdin).await
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, role: &str, args: &[&str]) -> String {
        let output = self.run(role, args, b"").await;
        spike_tests::stdout_of_success(&output, &format!("spike {args:?}"))
    }

    /// Runs and expects `code`; returns stderr.
    async fn fails(&self, role: &str, args: &[&str], code: i32) -> String {
        let output = self.run(role, args, b"").await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "spike {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn cluster() -> LocalCluster {
    LocalCluster::up(&["--keepers", "3", "--threshold", "2"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_commands_in_every_format() {
    let cluster = cluster();
    let home = tempfile::tempdir().expect("home");
    let cli = Cli {
        cluster: &cluster,
        home: home.path(),
    };

    assert_eq!(
        cli.ok(
            "superuser",
            &["secret", "put", "apps/db", "user=admin", "pass=s3=cr3t"]
        )
        .await,
        "OK\n"
    );
    let human = cli.ok("superuser", &["secret", "get", "apps/db"]).await;
    assert!(
        human.contains("user: admin\n") && human.contains("pass: s3=cr3t\n"),
        "{human}"
    );
    assert_eq!(
        json(
            &cli.ok("superuser", &["secret", "get", "apps/db", "-f", "json"])
                .await
        ),
        serde_json::json!({"user": "admin", "pass": "s3=cr3t"})
    );
    assert!(
        cli.ok("superuser", &["secret", "get", "apps/db", "-f", "yaml"])
            .await
            .contains("user: admin\n")
    );
    assert_eq!(
        cli.ok("superuser", &["secret", "get", "apps/db", "user"])
            .await,
        "admin\n"
    );

    assert_eq!(
        cli.ok("superuser", &["secret", "list"]).await,
        "- apps/db\n"
    );
    assert_eq!(
        json(&cli.ok("superuser", &["secret", "list", "-f", "j"]).await),
        serde_json::json!(["apps/db"])
    );
    assert_eq!(
        cli.ok("superuser", &["secret", "list", "-f", "y"]).await,
        "- apps/db\n"
    );

    let metadata = cli
        .ok("superuser", &["secret", "metadata", "get", "apps/db"])
        .await;
    assert!(metadata.contains("Current Version : 1"), "{metadata}");
    let metadata = json(
        &cli.ok(
            "superuser",
            &["secret", "metadata", "get", "apps/db", "-f", "json"],
        )
        .await,
    );
    assert_eq!(metadata["metadata"]["currentVersion"], 1);
    assert!(
        cli.ok(
            "superuser",
            &["secret", "metadata", "get", "apps/db", "-f", "yaml"]
        )
        .await
        .contains("currentVersion: 1")
    );

    // Custom metadata (extension): set, shown, replaced whole, cleared.
    let metadata_put = |pairs: &'static [&'static str]| {
        let mut args = vec!["secret", "metadata", "put", "apps/db"];
        args.extend_from_slice(pairs);
        args
    };
    assert_eq!(
        cli.ok(
            "superuser",
            &metadata_put(&["owner=team-a", "ticket=OPS=1"])
        )
        .await,
        "OK\n"
    );
    let human = cli
        .ok("superuser", &["secret", "metadata", "get", "apps/db"])
        .await;
    assert!(
        human.contains("Custom Metadata:") && human.contains("ticket : OPS=1\n"),
        "{human}"
    );
    assert_eq!(
        cli.ok("superuser", &metadata_put(&["owner=team-b"])).await,
        "OK\n"
    );
    let metadata_json = async || {
        json(
            &cli.ok(
                "superuser",
                &["secret", "metadata", "get", "apps/db", "-f", "json"],
            )
            .await,
        )
    };
    assert_eq!(
        metadata_json().await["customMetadata"],
        serde_json::json!({"owner": "team-b"}),
        "a put replaces every pair"
    );
    assert_eq!(
        cli.ok("superuser", &metadata_put(&["--clear"])).await,
        "OK\n"
    );
    let metadata = metadata_json().await;
    assert!(metadata.get("customMetadata").is_none(), "{metadata}");
    let missing = cli
        .fails(
            "superuser",
            &["secret", "metadata", "put", "apps/none", "owner=x"],
            1,
        )
        .await;
    assert!(missing.contains("Resource not found"), "{missing}");
    let bad_pair = cli.fails("superuser", &metadata_put(&["owner"]), 1).await;
    assert!(bad_pair.contains("Invalid key-value pair"), "{bad_pair}");
    let long_key = format!("{}=v", "k".repeat(129));
    let too_long = cli
        .fails(
            "superuser",
            &["secret", "metadata", "put", "apps/db", &long_key],
            1,
        )
        .await;
    assert!(too_long.contains("1 to 128 bytes"), "{too_long}");

    let conflict = cli
        .fails(
            "superuser",
            &["secret", "put", "apps/db", "user=x", "--cas", "5"],
            1,
        )
        .await;
    assert!(conflict.contains("check-and-set"), "{conflict}");
    assert_eq!(
        cli.ok(
            "superuser",
            &["secret", "put", "apps/db", "user=root", "--cas", "1"]
        )
        .await,
        "OK\n"
    );

    assert_eq!(
        cli.ok("superuser", &["secret", "delete", "apps/db", "-v", "2"])
            .await,
        "OK\n"
    );
    assert_eq!(
        cli.ok("superuser", &["secret", "get", "apps/db", "user"])
            .await,
        "admin\n"
    );
    assert_eq!(
        cli.ok("superuser", &["secret", "undelete", "apps/db", "-v", "2"])
            .await,
        "OK\n"
    );
    assert_eq!(
        cli.ok("superuser", &["secret", "destroy", "apps/db", "-v", "1,2"])
            .await,
        "OK\n"
    );
    let gone = cli
        .fails("superuser", &["secret", "get", "apps/db"], 1)
        .await;
    assert!(gone.contains("Resource not found"), "{gone}");

    let denied = cli.fails("lite-workload", &["secret", "list"], 1).await;
    assert!(denied.contains("Unauthorized"), "{denied}");
    cli.fails("superuser", &["secret", "put"], 2).await;
    cli.fails("superuser", &["secret", "get", "apps/db", "-f", "xml"], 2)
        .await;
    let bad_version = cli
        .fails("superuser", &["secret", "delete", "apps/db", "-v", "x"], 1)
        .await;
    assert!(
        bad_version.contains("Invalid version number: x"),
        "{bad_version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_commands_in_every_format() {
    let cluster = cluster();
    let home = tempfile::tempdir().expect("home");
    let cli = Cli {
        cluster: &cluster,
        home: home.path(),
    };
    let create = [
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
    ];
    assert_eq!(
        cli.ok("superuser", &create).await,
        "Policy created successfully.\n"
    );
    assert!(
        cli.fails("superuser", &create, 1)
            .await
            .contains("already exists")
    );
    let missing = cli
        .fails("superuser", &["policy", "create", "--name", "x"], 1)
        .await;
    assert!(
        missing.contains("All flags are required.")
            && missing.contains("--path-pattern is missing"),
        "{missing}"
    );

    let file = home.path().join("policy.yaml");
    std::fs::write(
        &file,
        "name: readers\nspiffeidPattern: \"^spiffe://spike\\\\.ist/app/.*$\"\npathPattern: \"^apps/\"\npermissions:\n  - read\n  - list\n",
    )
    .expect("policy file");
    let applied = cli
        .ok(
            "superuser",
            &["policy", "apply", "--file", &file.display().to_string()],
        )
        .await;
    assert_eq!(applied, "Policy 'readers' applied successfully\n");

    let list = cli.ok("superuser", &["policy", "list"]).await;
    assert!(
        list.starts_with("POLICIES\n========\n\n")
            && list.contains("Name: billing\n")
            && list.contains("Name: readers\n"),
        "{list}"
    );
    let listed = json(&cli.ok("superuser", &["policy", "list", "-f", "json"]).await);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(
        cli.ok("superuser", &["policy", "list", "-f", "yaml"])
            .await
            .contains("name: billing")
    );
    let only = json(
        &cli.ok(
            "superuser",
            &["policy", "list", "--path-pattern", "^apps/", "-f", "json"],
        )
        .await,
    );
    let readers_id = only[0]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(readers_id.len(), 36, "a UUID: {only}");
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    assert_eq!(only[0]["name"], "readers");
    assert_eq!(only[0]["pathPattern"], "^apps/");
    assert_eq!(only[0]["permissions"], serde_json::json!(["read", "list"]));
    let by_id = cli
        .ok("superuser", &["policy", "get", &readers_id, "-f", "json"])
        .await;
    assert_eq!(
        json(&by_id)["name"],
        "readers",
        "a policy is found by its id"
    );
    assert!(
        list.contains(&format!("ID: {readers_id}\n")),
        "the list shows ids: {list}"
    );

    let details = cli.ok("superuser", &["policy", "get", "billing"]).await;
    assert!(
        details.contains("POLICY DETAILS") && details.contains("Permissions: read, write"),
        "{details}"
    );
    let got = json(
        &cli.ok(
            "superuser",
            &["policy", "get", "--name", "billing", "-f", "json"],
        )
        .await,
    );
    assert_eq!(got["spiffiedPattern"], "^spiffe://spike\\.ist/app/billing$");
    assert!(
        cli.ok("superuser", &["policy", "get", "billing", "-f", "yaml"])
            .await
            .contains("pathPattern: \"^apps/billing/\"")
    );

    let canceled = cli
        .run("superuser", &["policy", "delete", "billing"], b"n\n")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&canceled.stdout),
        "Operation canceled.\n"
    );
    let confirmed = cli
        .run("superuser", &["policy", "delete", "billing"], b"y\n")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&confirmed.stdout),
        "Policy deleted successfully.\n"
    );
    assert_eq!(
        cli.ok("superuser", &["policy", "delete", "readers", "--yes"])
            .await,
        "Policy deleted successfully.\n"
    );
    assert_eq!(
        cli.ok("superuser", &["policy", "list"]).await,
        "No policies found.\n"
    );
    cli.fails(
        "superuser",
        &[
            "policy",
            "list",
            "--path-pattern",
            "a",
            "--spiffeid-pattern",
            "b",
        ],
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_operator_and_cluster_commands() {
    let cluster = cluster();
    let home = tempfile::tempdir().expect("home");
    let cli = Cli {
        cluster: &cluster,
        home: home.path(),
    };

    let input = home.path().join("plain.bin");
    let sealed = home.path().join("sealed.bin");
    let opened = home.path().join("opened.bin");
    std::fs::write(&input, b"top secret bytes").expect("input");
    let path = |p: &Path| p.display().to_string();
    cli.ok(
        "lite-workload",
        &[
            "cipher",
            "encrypt",
            "-f",
            &path(&input),
            "-o",
            &path(&sealed),
        ],
    )
    .await;
    cli.ok(
        "lite-workload",
        &[
            "cipher",
            "decrypt",
            "-f",
            &path(&sealed),
            "-o",
            &path(&opened),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&opened).expect("opened"), b"top secret bytes");
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"json mode");
    let framed = cli
        .run(
            "superuser",
            &["cipher", "encrypt", "--plaintext", &b64],
            b"",
        )
        .await;
    assert!(framed.status.success());
    let back = cli
        .run("superuser", &["cipher", "decrypt"], &framed.stdout)
        .await;
    assert_eq!(back.stdout, b"json mode");

    let saved = cli.ok("recover", &["operator", "recover"]).await;
    assert!(saved.contains("SPIKE Recovery shards saved"), "{saved}");
    let dir = home.path().join("recover");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("recover dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    use std::os::unix::fs::PermissionsExt;
    for file in &files {
        let mode = std::fs::metadata(file)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        assert!(
            std::fs::read_to_string(file)
                .expect("shard")
                .starts_with("spike:")
        );
    }
    let shard = std::fs::read(&files[0]).expect("shard");
    let restored = cli.run("restore", &["operator", "restore"], &shard).await;
    assert!(
        String::from_utf8_lossy(&restored.stdout).contains("restored and ready"),
        "{restored:?}"
    );
    let garbage = cli
        .run("restore", &["operator", "restore"], b"spike:1:nothex\n")
        .await;
    assert_eq!(garbage.status.code(), Some(1));
    let not_recover = cli.fails("superuser", &["operator", "recover"], 1).await;
    assert!(not_recover.contains("Unauthorized"), "{not_recover}");

    let status = json(
        &cli.ok("superuser", &["cluster", "status", "-f", "json"])
            .await,
    );
    assert_eq!(status["nodeId"], 2);
    assert_eq!(status["rootKey"]["status"], "ready");
    let text = cli.ok("superuser", &["cluster", "status"]).await;
    assert!(text.contains("root key:  ready"), "{text}");
    assert!(
        text.contains("backup:    none recorded\nschedule:  off on this replica\n"),
        "{text}"
    );
    assert!(status.get("lastBackup").is_none(), "{status}");
    let members = json(
        &cli.ok("superuser", &["cluster", "members", "-f", "json"])
            .await,
    );
    assert_eq!(members.as_array().map(Vec::len), Some(3));
    assert!(
        cli.ok("superuser", &["cluster", "members", "-f", "yaml"])
            .await
            .contains("voter: true")
    );
    // Replica 2 forwards to the leader, which answers.
    let health = json(
        &cli.ok("superuser", &["cluster", "health", "-f", "json"])
            .await,
    );
    assert_eq!(health["voters"], 3, "{health}");
    assert_eq!(health["members"].as_array().map(Vec::len), Some(3));
    let leaders: Vec<&serde_json::Value> = health["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| member["leader"] == true)
        .collect();
    assert_eq!(leaders.len(), 1, "{health}");
    assert_eq!(leaders[0]["id"], health["leaderId"], "{health}");
    let table = cli.ok("superuser", &["cluster", "health"]).await;
    assert!(table.contains("failure tolerance:"), "{table}");
    assert!(table.contains("last contact"), "{table}");
    let refused = cli.fails("recover", &["cluster", "health"], 1).await;
    assert!(refused.contains("Unauthorized"), "{refused}");
    assert!(
        cli.ok("superuser", &["operator", "rotate"])
            .await
            .contains("data key 2")
    );

    let whoami = json(&cli.ok("recover", &["whoami", "-f", "json"]).await);
    assert_eq!(whoami["role"], "recover");
    assert!(
        cli.ok("superuser", &["completions", "bash"])
            .await
            .contains("spike")
    );
}

/// Regression: with the env file's `SPIKE_NEXUS_API_URL` naming the leader,
/// killed with -9, every command failed until the operator edited it. The
/// CLI now also reads `SPIKE_NEXUS_API_URLS` and fails over, and its write
/// is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_over_when_the_replica_it_names_is_killed() {
    let mut cluster = cluster();
    let home = tempfile::tempdir().expect("home");
    let cli = Cli {
        cluster: &cluster,
        home: home.path(),
    };
    let status = json(
        &cli.ok("superuser", &["cluster", "status", "-f", "json"])
            .await,
    );
    let leader = status["leaderId"].as_u64().expect("a leader");
    let first = format!("https://{}", cluster.api(leader));
    let every: Vec<String> = (1..=3)
        .map(|id| format!("https://{}", cluster.api(id)))
        .collect();
    let every = every.join(",");
    let env = [
        ("SPIKE_NEXUS_API_URL", first.as_str()),
        ("SPIKE_NEXUS_API_URLS", every.as_str()),
    ];
    let put = cli
        .run_at("superuser", &env, &["secret", "put", "ops/a", "v=1"], b"")
        .await;
    assert!(put.status.success(), "{put:?}");

    cluster.act("kill", &format!("nexus-{leader}"));
    let cli = Cli {
        cluster: &cluster,
        home: home.path(),
    };
    let alone = cli
        .run_at(
            "superuser",
            &[("SPIKE_NEXUS_API_URL", first.as_str())],
            &["secret", "get", "ops/a"],
            b"",
        )
        .await;
    assert_eq!(alone.status.code(), Some(1), "only the dead leader named");
    let put = cli
        .run_at("superuser", &env, &["secret", "put", "ops/a", "v=2"], b"")
        .await;
    assert!(put.status.success(), "failover: {put:?}");
    let metadata = cli
        .run_at(
            "superuser",
            &env,
            &["secret", "metadata", "get", "ops/a", "-f", "json"],
            b"",
        )
        .await;
    assert!(metadata.status.success(), "{metadata:?}");
    let metadata = json(&String::from_utf8_lossy(&metadata.stdout));
    assert_eq!(
        metadata["metadata"]["currentVersion"], 2,
        "the write applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_the_cli_exits_64() {
    let output = tokio::process::Command::new(binary("spike"))
        .env_clear()
        .args(["secret", "list"])
        .output()
        .await
        .expect("run spike");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no SVID source"));
}
