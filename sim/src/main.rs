//! `spike-sim`: deterministic simulation of a SPIKE cluster.
//!
//! The real Nexus and Keeper code (`spike_nexus::serve`,
//! `spike_keeper::serve`, with their mTLS, Raft, redb stores and key
//! manager) and the real SDK clients run as turmoil hosts in one thread:
//! simulated network ([`network`]), simulated clock (tokio's paused time)
//! and a simulated disk that loses unsynced writes on a crash ([`disk`]).
//! Everything random that steers the run (message latencies and loss,
//! tokio's `select!`, Raft's election timeouts, the workload, the faults)
//! comes from the seed, so a seed replays the same run; the fingerprint of
//! its history shows it.
//!
//! A run has a safety phase (faults one after another, [`nemesis`]) and a
//! healing phase (everything repaired and restarted). The clients run the
//! register workload (the history is checked for linearizability per key),
//! the set workload (every acknowledged add is found exactly once), the
//! lifecycle workload (destroyed versions never return, versions never
//! change), the policy workload (revocations and grants hold) or the
//! root-key workload (adds under rekeys and rotations: every replica ends
//! with one root key and decrypts every acknowledged secret); either way
//! the cluster must take writes again after healing, and every replica
//! must converge.
//!
//! The driver runs each seed in a process of its own, `--jobs` at once,
//! and ends with totals: seeds, simulated time, time under faults,
//! operations checked, failures with their seeds and fingerprints, and the
//! simulator's speed (simulated seconds per wall second per core).

mod clock;
mod cluster;
mod disk;
mod entropy;
mod nemesis;
mod network;
mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use spike_jepsen::check::{self, SEARCH_STEPS_MAX};
use spike_jepsen::history::{Event, EventKind, write_event};

use crate::cluster::{Identities, ReplicaOptions};
use crate::disk::SimDisk;
use crate::nemesis::{Fault, Schedule, WORKLOAD_HOST, heal_all};
use crate::workload::{Findings, Observed, SimWorkload};

/// Message latency on a healthy link: 0 to this, per message.
const BASE_LATENCY: Duration = Duration::from_millis(5);
/// Segments a simulated socket may buffer.
const TCP_CAPACITY: usize = 16_384;
/// The simulated wall clock starts at 2027-01-01T00:00:00Z in every run
/// (seconds since the Unix epoch).
const EPOCH_SECS: u64 = 1_798_761_600;
/// Simulated time allowed beyond the two phases for the final checks.
const CHECKS_SLACK: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    about = "Deterministic simulation of a SPIKE cluster: the real Nexus and Keeper code on turmoil"
)]
struct Args {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = SimWorkload::Register)]
    workload: SimWorkload,
    /// Simulated seconds of faults (the safety phase).
    #[arg(long, default_value_t = 20)]
    fault_secs: u64,
    /// Simulated seconds of clients on the healed cluster.
    #[arg(long, default_value_t = 8)]
    heal_secs: u64,
    /// Simulated milliseconds before the first fault: by default the
    /// cluster has had time to elect a leader and store its root key with
    /// the keepers; shorter, faults meet the cluster's start.
    #[arg(long, default_value_t = 3000)]
    first_fault_ms: u64,
    /// Concurrent clients (at least 2: the policy and root-key workloads'
    /// admin, and someone who reads or adds); odd ones are pinned to one
    /// replica. Fewer clients make a simulated second cheaper.
    #[arg(long, default_value_t = workload::CLIENTS, value_parser = clap::value_parser!(u64).range(2..=64))]
    clients: u64,
    /// Run the replicas with the deliberately unsafe --unsafe-local-reads;
    /// then the simulation must find anomalies, and succeeds only if it
    /// does.
    #[arg(long)]
    unsafe_local_reads: bool,
    /// Give the replicas a disk whose fsyncs persist nothing; then power
    /// losses must lose acknowledged writes, and the simulation succeeds
    /// only if it finds anomalies.
    #[arg(long)]
    unsafe_lying_disk: bool,
    /// Write each seed's history to DIR/history-SEED.jsonl.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seeds run at once, each in a process of its own (default: one per
    /// core). Reports still come in seed order.
    #[arg(long)]
    jobs: Option<usize>,
    /// Print a running total every this many seeds (0: only at the end).
    #[arg(long, default_value_t = 0)]
    progress: u64,
    /// Run only --seed, in this process, and exit with its verdict (how
    /// the driver runs each seed).
    #[arg(long, hide = true)]
    one: bool,
}

impl Args {
    /// Whether a deliberately unsafe setting is on, so anomalies are the
    /// expected outcome.
    fn expects_anomalies(&self) -> bool {
        self.unsafe_local_reads || self.unsafe_lying_disk
    }
}

/// How a seed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Valid,
    Unknown,
    Anomalies,
    /// The simulation itself failed (exit status 3, or a signal).
    Failed,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Unknown => "NO VERDICT",
            Self::Anomalies => "ANOMALIES",
            Self::Failed => "SIMULATION FAILED",
        }
    }
}

/// The line through which a seed's process tells the driver what it
/// covered: `@stats SIMULATED_NS FAULTED_NS OPERATIONS FINGERPRINT
/// SETUP_NS RUN_NS CHECK_NS` (the last three are wall time).
const STATS: &str = "@stats";

/// What one seed covered, as its `@stats` line says.
#[derive(Debug, Default, Clone, Copy)]
struct SeedStats {
    /// Simulated time the seed ran.
    simulated: Duration,
    /// Simulated time with a fault in place.
    faulted: Duration,
    /// Operations in the checked history.
    operations: u64,
    /// The history's fingerprint.
    fingerprint: Option<u64>,
    /// Wall time of the seed's set-up (SVIDs, seams).
    setup: Duration,
    /// Wall time of its simulation.
    run: Duration,
    /// Wall time of its checks.
    check: Duration,
}

impl SeedStats {
    fn line(&self) -> String {
        format!(
            "{STATS} {} {} {} {} {} {} {}",
            self.simulated.as_nanos(),
            self.faulted.as_nanos(),
            self.operations,
            self.fingerprint.map_or_else(
                || "-".to_owned(),
                |fingerprint| format!("{fingerprint:016x}")
            ),
            self.setup.as_nanos(),
            self.run.as_nanos(),
            self.check.as_nanos(),
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.strip_prefix(STATS)?.split_whitespace();
        let mut nanos =
            || -> Option<Duration> { Some(Duration::from_nanos(fields.next()?.parse().ok()?)) };
        let simulated = nanos()?;
        let faulted = nanos()?;
        let operations = fields.next()?.parse().ok()?;
        let fingerprint = u64::from_str_radix(fields.next()?, 16).ok();
        let mut nanos =
            || -> Option<Duration> { Some(Duration::from_nanos(fields.next()?.parse().ok()?)) };
        Some(Self {
            simulated,
            faulted,
            operations,
            fingerprint,
            setup: nanos()?,
            run: nanos()?,
            check: nanos()?,
        })
    }
}

struct SeedReport {
    verdict: Verdict,
    lines: Vec<String>,
    /// Operations in the checked history.
    operations: u64,
    fingerprint: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Ok(filter) = std::env::var("SPIKE_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .init();
    }
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("spike-sim: {error:#}");
            ExitCode::from(3)
        }
    }
}

/// Runs every seed in a process of its own (this executable with
/// `--one`), so no state of one run (thread-local RNGs, counters, caches)
/// can steer the next: a seed runs the same alone as among others, and
/// its replay command reproduces it. `--jobs` seeds run at once; their
/// reports are printed in seed order.
fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.one {
        return run_one(args);
    }
    let executable = std::env::current_exe().context("find this executable")?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, usize::try_from(args.seeds).unwrap_or(usize::MAX).max(1));
    let end = args.seed.saturating_add(args.seeds);
    let next = AtomicU64::new(args.seed);
    let began = Instant::now();
    let cpu_before = clock::children_cpu();
    let mut totals = Totals::default();
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        for _ in 0..jobs {
            let sender = sender.clone();
            let (next, executable) = (&next, &executable);
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let started = Instant::now();
                    let output = seed_command(executable, seed, args).output();
                    if sender.send((seed, started.elapsed(), output)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        // Finished seeds wait here until every earlier one is reported.
        let mut waiting = BTreeMap::new();
        let mut due = args.seed;
        for (seed, wall, output) in receiver {
            waiting.insert(seed, (wall, output));
            while let Some((wall, output)) = waiting.remove(&due) {
                report_seed(due, wall, output, args, &mut totals);
                due += 1;
                let done = due - args.seed;
                if args.progress > 0 && done.is_multiple_of(args.progress) && due < end {
                    println!(
                        "{}",
                        totals.progress(
                            args.seeds,
                            began.elapsed(),
                            jobs,
                            args.expects_anomalies()
                        )
                    );
                }
            }
        }
    });
    let wall = began.elapsed();
    let cpu = clock::children_cpu().saturating_sub(cpu_before);
    println!(
        "{}",
        totals.summary(wall, cpu, jobs, args.expects_anomalies())
    );

    if args.expects_anomalies() {
        println!(
            "deliberately unsafe run: {} of {} seeds found anomalies",
            totals.count(Verdict::Anomalies),
            args.seeds
        );
        return Ok(if totals.count(Verdict::Failed) > 0 {
            ExitCode::from(3)
        } else if totals.count(Verdict::Anomalies) > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    Ok(verdict_code(totals.worst()))
}

/// The process that runs `seed` alone.
fn seed_command(executable: &Path, seed: u64, args: &Args) -> std::process::Command {
    let mut child = std::process::Command::new(executable);
    child
        .arg("--one")
        .args(["--seed", &seed.to_string()])
        .args(["--workload", args.workload.for_seed(seed).name()])
        .args(["--fault-secs", &args.fault_secs.to_string()])
        .args(["--heal-secs", &args.heal_secs.to_string()])
        .args(["--first-fault-ms", &args.first_fault_ms.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .stdin(std::process::Stdio::null());
    if args.unsafe_local_reads {
        child.arg("--unsafe-local-reads");
    }
    if args.unsafe_lying_disk {
        child.arg("--unsafe-lying-disk");
    }
    if let Some(out) = &args.out {
        child.arg("--out").arg(out);
    }
    child
}

/// Prints a finished seed's report and adds it to the totals.
fn report_seed(
    seed: u64,
    wall: Duration,
    output: std::io::Result<std::process::Output>,
    args: &Args,
    totals: &mut Totals,
) {
    let workload = args.workload.for_seed(seed);
    let (verdict, stats) = match output {
        Ok(output) => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let mut stats = None;
            for line in stdout.lines() {
                match SeedStats::parse(line) {
                    Some(parsed) => stats = Some(parsed),
                    None => println!("{line}"),
                }
            }
            let verdict = match output.status.code() {
                Some(0) => Verdict::Valid,
                Some(1) => Verdict::Anomalies,
                Some(2) => Verdict::Unknown,
                _ => {
                    println!(
                        "seed {seed} {}: SIMULATION FAILED ({})",
                        workload.name(),
                        output.status
                    );
                    Verdict::Failed
                }
            };
            (verdict, stats.unwrap_or_default())
        }
        Err(error) => {
            println!(
                "seed {seed} {}: SIMULATION FAILED (could not run it: {error})",
                workload.name()
            );
            (Verdict::Failed, SeedStats::default())
        }
    };
    println!("  ({:.1} s)", wall.as_secs_f64());
    if verdict != Verdict::Valid && !args.expects_anomalies() {
        println!("  replay: {}", replay(seed, args));
    }
    totals.add(seed, workload, verdict, &stats, args);
}

/// What a run of seeds came to.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    verdicts: BTreeMap<Verdict, u64>,
    workloads: BTreeMap<&'static str, u64>,
    simulated: Duration,
    faulted: Duration,
    operations: u64,
    setup: Duration,
    run: Duration,
    check: Duration,
    /// One line per seed that was not valid.
    failures: Vec<String>,
}

impl Totals {
    fn add(
        &mut self,
        seed: u64,
        workload: SimWorkload,
        verdict: Verdict,
        stats: &SeedStats,
        args: &Args,
    ) {
        self.seeds += 1;
        *self.verdicts.entry(verdict).or_default() += 1;
        *self.workloads.entry(workload.name()).or_default() += 1;
        self.simulated += stats.simulated;
        self.faulted += stats.faulted;
        self.operations += stats.operations;
        self.setup += stats.setup;
        self.run += stats.run;
        self.check += stats.check;
        if verdict != Verdict::Valid {
            self.failures.push(format!(
                "seed {seed} {}: {} · fingerprint {} · {}",
                workload.name(),
                verdict.name(),
                stats.fingerprint.map_or_else(
                    || "none".to_owned(),
                    |fingerprint| format!("{fingerprint:016x}")
                ),
                replay(seed, args)
            ));
        }
    }

    fn count(&self, verdict: Verdict) -> u64 {
        self.verdicts.get(&verdict).copied().unwrap_or(0)
    }

    fn worst(&self) -> Verdict {
        self.verdicts
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Verdict::Valid)
    }

    /// Simulated seconds per wall second per core.
    fn speed(&self, wall: Duration, jobs: usize) -> f64 {
        self.simulated.as_secs_f64() / (wall.as_secs_f64() * jobs as f64).max(1e-9)
    }

    /// The running total a long run prints now and then.
    fn progress(&self, planned: u64, wall: Duration, jobs: usize, expected: bool) -> String {
        let remaining = planned.saturating_sub(self.seeds) as f64;
        let eta = wall.as_secs_f64() / self.seeds.max(1) as f64 * remaining;
        format!(
            "[{} of {planned} seeds · {} {} · {:.2} simulated h, {:.2} h of faults · {} operations · {:.2} simulated s per wall s per core · {:.0} min elapsed, about {:.0} min to go]",
            self.seeds,
            self.seeds - self.count(Verdict::Valid),
            if expected { "caught" } else { "failures" },
            self.simulated.as_secs_f64() / 3600.0,
            self.faulted.as_secs_f64() / 3600.0,
            self.operations,
            self.speed(wall, jobs),
            wall.as_secs_f64() / 60.0,
            eta / 60.0,
        )
    }

    /// The totals, in a form to paste into a report.
    fn summary(&self, wall: Duration, cpu: Duration, jobs: usize, expected: bool) -> String {
        let per_seed = |total: Duration| total.as_secs_f64() / self.seeds.max(1) as f64;
        let workloads: Vec<String> = self
            .workloads
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        let mut lines = vec![
            "=== spike-sim totals".to_owned(),
            format!("seeds            {} ({})", self.seeds, workloads.join(", ")),
            format!(
                "verdicts         {} valid, {} no verdict, {} anomalies, {} simulation failures",
                self.count(Verdict::Valid),
                self.count(Verdict::Unknown),
                self.count(Verdict::Anomalies),
                self.count(Verdict::Failed)
            ),
            format!(
                "simulated time   {:.1} s ({:.3} h), {:.1} s of it under faults ({:.3} h)",
                self.simulated.as_secs_f64(),
                self.simulated.as_secs_f64() / 3600.0,
                self.faulted.as_secs_f64(),
                self.faulted.as_secs_f64() / 3600.0
            ),
            format!("operations       {} checked", self.operations),
            format!(
                "wall time        {:.1} s with {jobs} jobs; the seeds' processes used {:.1} s of CPU",
                wall.as_secs_f64(),
                cpu.as_secs_f64()
            ),
            format!(
                "speed            {:.2} simulated s per wall s per core ({:.2} per CPU s)",
                self.speed(wall, jobs),
                self.simulated.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
            ),
            format!(
                "per seed (wall)  set-up {:.2} s, simulation {:.2} s, checks {:.2} s",
                per_seed(self.setup),
                per_seed(self.run),
                per_seed(self.check)
            ),
        ];
        let label = if expected {
            "caught (expected)"
        } else {
            "failures"
        };
        if self.failures.is_empty() {
            lines.push(format!("{label:<16} none"));
        } else {
            lines.push(format!("{label:<16} {}", self.failures.len()));
            lines.extend(self.failures.iter().map(|failure| format!("  {failure}")));
        }
        lines.join("\n")
    }
}

fn verdict_code(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Valid => ExitCode::SUCCESS,
        Verdict::Anomalies => ExitCode::from(1),
        Verdict::Unknown => ExitCode::from(2),
        Verdict::Failed => ExitCode::from(3),
    }
}

/// One seed, in this process; the exit status is its verdict.
fn run_one(args: &Args) -> anyhow::Result<ExitCode> {
    // Wall time: `Instant` reads the simulated clock while a run is on.
    let began = clock::real_now();
    install_panic_hook();
    let disk = if args.unsafe_lying_disk {
        SimDisk::lying()
    } else {
        SimDisk::default()
    };
    spike_sdk::net::install(Box::new(network::SimNetwork))?;
    spike_nexus::disk::install(Box::new(disk.clone()))?;
    spike_nexus::install_wall_clock(simulated_wall_clock);
    let identities = Identities::mint()?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    }
    let seed = args.seed;
    let workload = args.workload.for_seed(seed);
    let root = data_root().join(format!("spike-sim-{}-{seed}", std::process::id()));
    let setup = clock::real_now().saturating_sub(began);
    let outcome = run_seed(seed, workload, args, &identities, &disk, &root);
    clock::end_run();
    let _ = std::fs::remove_dir_all(&root);
    let (report, mut stats) = outcome?;
    stats.setup = setup;
    let mut stdout = std::io::stdout().lock();
    for line in &report.lines {
        writeln!(stdout, "{line}")?;
    }
    writeln!(stdout, "{}", stats.line())?;
    Ok(verdict_code(report.verdict))
}

/// Where a seed keeps what stays on the real disk (snapshot files, the
/// audit log): `/dev/shm` when there is one and `TMPDIR` names no other
/// place. The audit writer fsyncs every record; on a disk those fsyncs
/// took more wall time than the simulation itself, on tmpfs they cost
/// nothing, and the directory is gone when the seed ends anyway.
fn data_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The replicas' wall clock: the simulation's (the real one outside it).
fn simulated_wall_clock() -> u64 {
    let since_epoch = turmoil::since_epoch().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    });
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// The command that replays `seed` as it just ran.
fn replay(seed: u64, args: &Args) -> String {
    let mut command = format!(
        "sim/run --seed {seed} --workload {} --fault-secs {} --heal-secs {}",
        args.workload.for_seed(seed).name(),
        args.fault_secs,
        args.heal_secs
    );
    if args.first_fault_ms != 3000 {
        command.push_str(&format!(" --first-fault-ms {}", args.first_fault_ms));
    }
    if args.clients != workload::CLIENTS {
        command.push_str(&format!(" --clients {}", args.clients));
    }
    if args.unsafe_local_reads {
        command.push_str(" --unsafe-local-reads");
    }
    if args.unsafe_lying_disk {
        command.push_str(" --unsafe-lying-disk");
    }
    command.push_str(" --out sim-results");
    command
}

fn run_seed(
    seed: u64,
    workload: SimWorkload,
    args: &Args,
    identities: &Identities,
    disk: &SimDisk,
    root: &Path,
) -> anyhow::Result<(SeedReport, SeedStats)> {
    let began = clock::real_now();
    let fault_phase = Duration::from_secs(args.fault_secs);
    let run_for = fault_phase + Duration::from_secs(args.heal_secs);
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    entropy::reseed(seed);
    clock::start_run();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(run_for + CHECKS_SLACK)
        .tick_duration(Duration::from_millis(1))
        .max_message_latency(BASE_LATENCY)
        .repair_rate(0.2)
        .tcp_capacity(TCP_CAPACITY)
        .build();
    let options = ReplicaOptions {
        unsafe_local_reads: args.unsafe_local_reads,
    };
    cluster::add_hosts(&mut sim, identities, root, seed, options);
    let schedule = Schedule::new(
        seed,
        Duration::from_millis(args.first_fault_ms),
        fault_phase,
    );
    let findings = Findings::default();
    {
        let identities = identities.clone();
        let findings = findings.clone();
        let replacements = schedule.replacements();
        let clients = args.clients;
        sim.client(WORKLOAD_HOST, async move {
            workload::run(
                identities,
                workload,
                clients,
                seed,
                run_for,
                replacements,
                findings,
            )
            .await;
            Ok(())
        });
    }

    RUNNING.with(|running| {
        *running.borrow_mut() = Some(Running {
            seed,
            workload,
            faults: schedule.faults.clone(),
            now: Duration::ZERO,
            root: root.to_owned(),
        });
    });
    let mut upcoming = schedule.faults.iter().peekable();
    let mut active: Option<Duration> = None;
    let mut healed = false;
    loop {
        let now = sim.elapsed();
        clock::set_elapsed(now);
        if active.is_some_and(|end| now >= end) {
            heal_all(&mut sim, BASE_LATENCY);
            active = None;
        }
        if active.is_none()
            && let Some((_, end, fault)) = upcoming.next_if(|(start, _, _)| now >= *start)
        {
            fault.start(&mut sim, disk, root);
            active = Some(*end);
        }
        if !healed && now >= fault_phase {
            heal_all(&mut sim, BASE_LATENCY);
            healed = true;
        }
        RUNNING.with(|running| {
            if let Some(running) = running.borrow_mut().as_mut() {
                running.now = now;
            }
        });
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => anyhow::bail!("the simulation failed: {error}"),
        }
    }
    RUNNING.with(|running| running.borrow_mut().take());
    let simulated = sim.elapsed();
    drop(sim);
    let run = clock::real_now().saturating_sub(began);

    let observed = findings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .context("the workload left no findings")?;
    if let Some(out) = &args.out {
        write_history(&out.join(format!("history-{seed}.jsonl")), &observed.events)?;
    }
    let report = judge(seed, workload, &schedule.faults, fault_phase, observed);
    let stats = SeedStats {
        simulated,
        faulted: faulted(&schedule.faults, simulated),
        operations: report.operations,
        fingerprint: Some(report.fingerprint),
        setup: Duration::ZERO,
        run,
        check: clock::real_now().saturating_sub(began + run),
    };
    Ok((report, stats))
}

/// Simulated time with a fault in place, up to `until`.
fn faulted(faults: &[(Duration, Duration, Fault)], until: Duration) -> Duration {
    faults
        .iter()
        .map(|(start, end, _)| (*end).min(until).saturating_sub(*start))
        .sum()
}

/// A seed under way, as the panic hook needs it.
struct Running {
    seed: u64,
    workload: SimWorkload,
    faults: Vec<(Duration, Duration, Fault)>,
    /// Simulated time of the step under way.
    now: Duration,
    /// The seed's data directory.
    root: PathBuf,
}

thread_local! {
    /// Set while a seed's simulation steps.
    static RUNNING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

/// A panic while a seed runs is a panic of the code under test (an
/// assertion of openraft's, say; turmoil turns a panicking task into the
/// end of its host's runtime): the seed's verdict is "anomalies". The hook
/// reports it and ends the process at once, with the first message: the
/// runtime's shutdown that would follow drops half-dead tasks, and their
/// destructors panic again until the process aborts, which would lose the
/// report. Each seed runs in a process of its own, so nothing else is cut
/// short. Outside a run, a panic is the simulator's own and reported as
/// usual.
fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let report = RUNNING.with(|running| {
            let running = running.try_borrow().ok()?;
            let running = running.as_ref()?;
            let message = format!("at {:.3} s: {info}", running.now.as_secs_f64());
            let _ = std::fs::remove_dir_all(&running.root);
            let mut report = panic_report(running.seed, running.workload, &running.faults, message);
            let stats = SeedStats {
                simulated: running.now,
                faulted: faulted(&running.faults, running.now),
                ..SeedStats::default()
            };
            report.push(stats.line());
            Some(report)
        });
        let Some(report) = report else {
            return default(info);
        };
        let mut stdout = std::io::stdout().lock();
        for line in &report {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
        // The exit status of `Verdict::Anomalies` (see `verdict_code`).
        std::process::exit(1);
    }));
}

/// The report of a run stopped by a panic in the code under test.
fn panic_report(
    seed: u64,
    workload: SimWorkload,
    faults: &[(Duration, Duration, Fault)],
    message: String,
) -> Vec<String> {
    let mut lines = vec![format!(
        "seed {seed} {}: ANOMALIES · the code under test panicked",
        workload.name()
    )];
    push_faults(&mut lines, faults);
    lines.push(format!("  {message}"));
    lines
}

fn push_faults(lines: &mut Vec<String>, faults: &[(Duration, Duration, Fault)]) {
    for (start, end, fault) in faults {
        lines.push(format!(
            "  fault {:>6.2}-{:>6.2} s: {fault:?}",
            start.as_secs_f64(),
            end.as_secs_f64()
        ));
    }
}

/// Checks the history and the findings after healing.
fn judge(
    seed: u64,
    workload: SimWorkload,
    faults: &[(Duration, Duration, Fault)],
    fault_phase: Duration,
    observed: Observed,
) -> SeedReport {
    let Observed {
        membership,
        events,
        anomalies: mut after_healing,
        final_set,
        last_write_ok,
    } = observed;
    if last_write_ok.is_none_or(|at| at < fault_phase) {
        after_healing.push(check::Anomaly::NotRecovered {
            detail: "no write was acknowledged after healing".to_owned(),
        });
    }
    let mut lines = Vec::new();
    let (verdict, anomalies) = match check::pair(&events) {
        Err(error) => (
            Verdict::Unknown,
            vec![format!("unpairable history: {error}")],
        ),
        Ok(operations) => {
            // Anomalies, and why there is no verdict if there is none.
            let (mut found, undecided) = match (workload, &final_set) {
                (SimWorkload::Register, _) => {
                    let report = check::check_registers(&operations, SEARCH_STEPS_MAX);
                    let undecided = (!report.unknown_keys.is_empty())
                        .then(|| format!("no verdict for keys {:?}", report.unknown_keys));
                    (described(&report.anomalies), undecided)
                }
                // No final read: `after_healing` says why.
                (SimWorkload::Set | SimWorkload::Rootkey, None) => (Vec::new(), None),
                (SimWorkload::Set | SimWorkload::Rootkey, Some(elements)) => {
                    let report = check::set::check(&operations, elements);
                    let undecided =
                        (report.acknowledged == 0).then(|| "no add was acknowledged".to_owned());
                    (described(&report.anomalies), undecided)
                }
                (SimWorkload::Lifecycle, _) => {
                    let report = check::lifecycle::check(&operations);
                    let undecided = (report.reads_with_value == 0)
                        .then(|| "no version read returned a value".to_owned());
                    (described(&report.anomalies), undecided)
                }
                (SimWorkload::Policy, _) => {
                    let report = check::policy::check(&operations);
                    let undecided =
                        (report.reads_judged == 0).then(|| "no read could be judged".to_owned());
                    (described(&report.anomalies), undecided)
                }
                (SimWorkload::All, _) => (
                    Vec::new(),
                    Some("no workload: `all` names one per seed".to_owned()),
                ),
            };
            found.extend(described(&after_healing));
            let verdict = if !found.is_empty() {
                Verdict::Anomalies
            } else if let Some(reason) = undecided {
                found.push(reason);
                Verdict::Unknown
            } else {
                Verdict::Valid
            };
            (verdict, found)
        }
    };
    let count = |kind| events.iter().filter(|event| event.kind() == kind).count();
    let fingerprint = fingerprint(&events);
    lines.push(format!(
        "seed {seed} {}: {} · {} ok, {} info, {} fail · {} faults · fingerprint {fingerprint:016x}",
        workload.name(),
        verdict.name(),
        count(EventKind::Ok),
        count(EventKind::Info),
        count(EventKind::Fail),
        faults.len(),
    ));
    lines.extend(membership.iter().map(|note| format!("  {note}")));
    if verdict != Verdict::Valid {
        push_faults(&mut lines, faults);
        for anomaly in anomalies.iter().take(20) {
            lines.push(format!("  {anomaly}"));
        }
    }
    SeedReport {
        verdict,
        lines,
        operations: count(EventKind::Invoke) as u64,
        fingerprint,
    }
}

/// The anomalies as the report lists them.
fn described(anomalies: &[check::Anomaly]) -> Vec<String> {
    anomalies
        .iter()
        .map(|anomaly| format!("{anomaly:?}"))
        .collect()
}

/// FNV-1a over the history's JSON lines: two runs of a seed print the same
/// fingerprint exactly when they saw the same history, times included.
fn fingerprint(events: &[Event]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut line = Vec::new();
    for event in events {
        line.clear();
        if write_event(&mut line, event).is_err() {
            continue;
        }
        for byte in &line {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn write_history(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    for event in events {
        write_event(&mut out, event)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use spike_jepsen::history::Completion;
    use spike_jepsen::op::{Access, Op, Reply, VersionNumber};
    use spike_jepsen::recorder::{Invocation, Recorder};

    use super::*;

    /// A history of operations run one after another.
    fn history(operations: &[(Option<&str>, Op, Completion)]) -> Vec<Event> {
        let recorder = Recorder::new();
        for (key, op, done) in operations {
            let invocation = Invocation {
                process: 1,
                op: *op,
                key: key.map(str::to_owned),
                node: None,
            };
            recorder.invoke(&invocation);
            recorder.complete(&invocation, *done);
        }
        recorder.events()
    }

    fn verdict_of(
        workload: SimWorkload,
        events: Vec<Event>,
        final_set: Option<BTreeMap<u64, u64>>,
    ) -> Verdict {
        let observed = Observed {
            events,
            final_set,
            // The write after healing the judge requires.
            last_write_ok: Some(Duration::from_secs(1)),
            ..Observed::default()
        };
        judge(1, workload, &[], Duration::ZERO, observed).verdict
    }

    fn ok(reply: Reply) -> Completion {
        Completion::Ok(reply)
    }

    #[test]
    fn a_read_allowed_after_an_acknowledged_revocation_is_an_anomaly() {
        let read = |access| (None, Op::ReadAcl, ok(Reply::ReadAcl(Some(access))));
        let mut operations = vec![
            (None, Op::Grant, ok(Reply::Grant)),
            read(Access::Allowed),
            (None, Op::Revoke, ok(Reply::Revoke)),
            read(Access::Denied),
        ];
        assert_eq!(
            verdict_of(SimWorkload::Policy, history(&operations), None),
            Verdict::Valid
        );
        operations.push(read(Access::Allowed));
        assert_eq!(
            verdict_of(SimWorkload::Policy, history(&operations), None),
            Verdict::Anomalies
        );
    }

    #[test]
    fn a_destroyed_version_read_back_is_an_anomaly() {
        let version = VersionNumber { version: 1 };
        let read = (
            Some("0"),
            Op::ReadVersion(version),
            ok(Reply::ReadVersion(Some(7))),
        );
        let mut operations = vec![(Some("0"), Op::Put(7), ok(Reply::Put(7))), read];
        assert_eq!(
            verdict_of(SimWorkload::Lifecycle, history(&operations), None),
            Verdict::Valid
        );
        operations.push((Some("0"), Op::Destroy(version), ok(Reply::Destroy)));
        operations.push(read);
        assert_eq!(
            verdict_of(SimWorkload::Lifecycle, history(&operations), None),
            Verdict::Anomalies
        );
    }

    #[test]
    fn an_acknowledged_secret_lost_across_a_rekey_is_an_anomaly() {
        let operations = [
            (None, Op::Add(1), ok(Reply::Add(1))),
            (None, Op::Rekey, ok(Reply::Rekey(Some(2)))),
            (None, Op::Add(2), ok(Reply::Add(2))),
            (None, Op::Rotate, ok(Reply::Rotate(Some(2)))),
        ];
        let all = BTreeMap::from([(1, 1), (2, 1)]);
        assert_eq!(
            verdict_of(SimWorkload::Rootkey, history(&operations), Some(all)),
            Verdict::Valid
        );
        let lost = BTreeMap::from([(1, 1)]);
        assert_eq!(
            verdict_of(SimWorkload::Rootkey, history(&operations), Some(lost)),
            Verdict::Anomalies
        );
    }

    #[test]
    fn a_cluster_that_takes_no_write_after_healing_is_an_anomaly() {
        let operations = [(None, Op::Add(1), ok(Reply::Add(1)))];
        let observed = Observed {
            events: history(&operations),
            final_set: Some(BTreeMap::from([(1, 1)])),
            last_write_ok: None,
            ..Observed::default()
        };
        let report = judge(1, SimWorkload::Rootkey, &[], Duration::ZERO, observed);
        assert_eq!(report.verdict, Verdict::Anomalies);
    }

    #[test]
    fn every_workload_runs_in_a_campaign_and_stats_lines_round_trip() {
        let cycled: Vec<SimWorkload> = (10..15)
            .map(|seed| SimWorkload::All.for_seed(seed))
            .collect();
        for workload in SimWorkload::CYCLE {
            assert!(cycled.contains(&workload), "{workload:?} never runs");
        }
        assert_eq!(SimWorkload::Set.for_seed(3), SimWorkload::Set);
        let stats = SeedStats {
            simulated: Duration::from_millis(28_123),
            faulted: Duration::from_secs(9),
            operations: 4242,
            fingerprint: Some(0x00ab_cdef_0123_4567),
            setup: Duration::from_millis(12),
            run: Duration::from_secs(11),
            check: Duration::from_millis(300),
        };
        let parsed = SeedStats::parse(&stats.line()).expect("a stats line parses");
        assert_eq!(parsed.line(), stats.line());
        assert!(SeedStats::parse("seed 1 register: valid").is_none());
    }
}
