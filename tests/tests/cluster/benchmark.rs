//! Timing figures for operators, printed rather than asserted (tests assert
//! behaviour). Run with release binaries:
//!
//! ```sh
//! cargo build --release --bins
//! cargo test --release -p spike-tests --test cluster -- --ignored --nocapture benchmark
//! ```
//!
//! `SPIKE_BENCH_TRIALS` sets the number of trials (default 7).

use std::time::{Duration, Instant};

use spike_tests::LocalCluster;

use crate::support::{Operators, RECOVERY_LIMIT, get, leader, put, put_until_ok, value_of};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{name:<44} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   ({} trials)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run explicitly with --ignored"]
async fn benchmark_cluster_start_failover_and_restart() {
    let trials: usize = std::env::var("SPIKE_BENCH_TRIALS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(7);
    let (mut ready, mut failover, mut restart_ready, mut restart_serving) =
        (vec![], vec![], vec![], vec![]);
    for trial in 0..trials {
        let began = Instant::now();
        let mut cluster = LocalCluster::up(&[]);
        ready.push(began.elapsed());
        let ops = Operators::of(&cluster).await;
        assert_eq!(
            put(&ops.superuser, cluster.api(1), "bench", "0")
                .await
                .status,
            200
        );

        let old = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
        let survivor = [1, 2, 3]
            .into_iter()
            .find(|id| *id != old)
            .expect("survivor");
        cluster.act("kill", &format!("nexus-{old}"));
        failover.push(
            put_until_ok(
                &ops.superuser,
                cluster.api(survivor),
                "bench",
                &trial.to_string(),
            )
            .await,
        );

        let started = Instant::now();
        cluster.act("start", &format!("nexus-{old}"));
        cluster.wait_ready(old, RECOVERY_LIMIT).await;
        restart_ready.push(started.elapsed());
        loop {
            let read = get(&ops.superuser, cluster.api(old), "bench").await;
            if value_of(&read).is_some() {
                break;
            }
            assert!(started.elapsed() < RECOVERY_LIMIT);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        restart_serving.push(started.elapsed());
    }
    eprintln!();
    summary("cluster up (3 replicas, 5 keepers) to ready", ready);
    summary("kill -9 leader to next acknowledged write", failover);
    summary("restarted replica: start to root key held", restart_ready);
    summary("restarted replica: start to first read", restart_serving);
}

/// The isolation benchmark (`spike-bench isolation`) at a tiny scale: it
/// runs its three phases and prints the quiet identity's figures. No
/// timing is asserted; the figures come from a full run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_benchmark_runs_at_a_tiny_scale() {
    // A block of loopback ports below the tests' own (10,000 and up).
    let base_port = (5_000..9_800)
        .step_by(200)
        .find(|base: &u16| {
            (0..200).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
        })
        .expect("a free block of ports")
        .to_string();
    let output = tokio::process::Command::new(spike_tests::binary("spike-bench"))
        .args([
            "isolation",
            "--duration",
            "1s",
            "--noisy-clients",
            "2",
            "--quiet-rate",
            "10",
            "--noisy-limit",
            "5",
            "--base-port",
            &base_port,
        ])
        .output()
        .await
        .expect("spike-bench runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let phases: serde_json::Value =
        serde_json::from_str(said.lines().last().expect("a line")).expect("the phases as JSON");
    let names: Vec<&str> = phases
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|phase| phase["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "quiet alone",
            "beside noisy, no limit",
            "beside noisy, noisy limited"
        ]
    );
    for phase in phases.as_array().expect("a list") {
        assert!(phase["quiet_reads"].as_u64() > Some(0), "{phase}");
    }
    // The limit bites: the noisy identity got 429s only once limited.
    assert_eq!(phases[1]["noisy_limited_per_second"], 0.0);
    assert!(phases[2]["noisy_limited_per_second"].as_f64() > Some(0.0));
}

/// A block of 200 loopback ports below the tests' own (10,000 and up),
/// searched from the top so it rarely meets the isolation test's block.
fn free_port_block() -> u16 {
    (5_000..9_800)
        .step_by(200)
        .rev()
        .find(|base: &u16| {
            (0..200).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
        })
        .expect("a free block of ports")
}

/// What a terminated benchmark must not leave behind: its process (killed
/// if still there) and the cluster it started (`spike-dev-cluster down`).
struct Leftovers {
    bench: std::process::Child,
    cluster_dir: Option<std::path::PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if matches!(self.bench.try_wait(), Ok(None)) {
            let _ = self.bench.kill();
            let _ = self.bench.wait();
        }
        if let Some(dir) = &self.cluster_dir {
            let _ = spike_dev_cluster::Launcher::new(
                spike_tests::binary("spike-dev-cluster")
                    .parent()
                    .expect("a binary directory"),
                dir,
            )
            .down();
        }
    }
}

/// `spike-bench compare` stops every process it started when it is sent
/// SIGTERM (as `bench/run` is when someone kills it), and says so by
/// exiting with 128 + 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_benchmark_takes_its_cluster_down() {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let log_path = scratch.path().join("bench.log");
    let log = std::fs::File::create(&log_path).expect("the log");
    // Its work directory (and so its cluster) goes where TMPDIR says.
    let temp = scratch.path().join("tmp");
    std::fs::create_dir(&temp).expect("a temporary directory");
    let bench = std::process::Command::new(spike_tests::binary("spike-bench"))
        .args([
            "compare",
            "--targets",
            "nexus",
            "--workloads",
            "put",
            "--clients",
            "1",
            "--keys",
            "10",
            "--duration",
            "2m",
            "--failover-trials",
            "0",
            "--base-port",
            &free_port_block().to_string(),
            "--out",
        ])
        .arg(scratch.path().join("out"))
        .env("TMPDIR", &temp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spike-bench starts");
    let mut leftovers = Leftovers {
        bench,
        cluster_dir: None,
    };

    // Up and under load: its preload is done.
    let began = Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("keys written")
    {
        let exited = leftovers.bench.try_wait().expect("its status");
        assert!(
            exited.is_none() && began.elapsed() < Duration::from_secs(60),
            "the benchmark never got its cluster under load ({exited:?}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let work = std::fs::read_dir(&temp)
        .expect("TMPDIR")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("spike-bench"))
        })
        .expect("the benchmark's work directory");
    let cluster_dir = work.join("nexus");
    leftovers.cluster_dir = Some(cluster_dir.clone());
    let cluster = spike_dev_cluster::ClusterFile::load(&cluster_dir).expect("cluster.json");
    let running: Vec<&spike_dev_cluster::Process> = cluster
        .processes
        .iter()
        .filter(|process| spike_dev_cluster::supervise::running(process).is_some())
        .collect();
    assert!(
        running
            .iter()
            .filter(|process| process.name.starts_with("nexus-"))
            .count()
            == 3
            && running
                .iter()
                .any(|process| process.name.starts_with("keeper-")),
        "the cluster runs: {:?}",
        running
            .iter()
            .map(|process| &process.name)
            .collect::<Vec<_>>()
    );

    let pid = rustix::process::Pid::from_raw(
        i32::try_from(leftovers.bench.id()).expect("a pid fits an i32"),
    )
    .expect("a pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM sent");
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = leftovers.bench.try_wait().expect("its status") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "the benchmark still runs 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "exit status after SIGTERM:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let still: Vec<&String> = running
        .iter()
        .filter(|process| spike_dev_cluster::supervise::running(process).is_some())
        .map(|process| &process.name)
        .collect();
    assert!(
        still.is_empty(),
        "still running after the benchmark exited: {still:?}"
    );
    assert!(
        !work.exists(),
        "its work directory stays: {}",
        work.display()
    );
}
