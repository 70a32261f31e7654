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
