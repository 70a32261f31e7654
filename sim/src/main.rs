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
//! register workload (the history is checked for linearizability per key)
//! or the set workload (every acknowledged add is found exactly once);
//! either way the cluster must take writes again after healing, and every
//! replica must converge.

mod clock;
mod cluster;
mod disk;
mod entropy;
mod nemesis;
mod network;
mod workload;

use std::cell::RefCell;
use std::io::Write;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use spike_jepsen::check::{self, SEARCH_STEPS_MAX};
use spike_jepsen::history::{Event, EventKind, write_event};

use crate::cluster::{Identities, ReplicaOptions};
use crate::disk::SimDisk;
use crate::nemesis::{Fault, Schedule, WORKLOAD_HOST, heal_all};
use crate::workload::{Findings, Observed, SimWorkload};

/// The first fault comes once the cluster has had time to elect a leader
/// and store its root key with the keepers.
const FIRST_FAULT: Duration = Duration::from_secs(3);
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
}

struct SeedReport {
    verdict: Verdict,
    lines: Vec<String>,
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
/// its replay command reproduces it.
fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.one {
        return run_one(args);
    }
    let executable = std::env::current_exe().context("find this executable")?;
    let mut worst = Verdict::Valid;
    let mut caught = 0;
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let began = Instant::now();
        let mut child = std::process::Command::new(&executable);
        child
            .arg("--one")
            .args(["--seed", &seed.to_string()])
            .args(["--workload", args.workload.name()])
            .args(["--fault-secs", &args.fault_secs.to_string()])
            .args(["--heal-secs", &args.heal_secs.to_string()]);
        if args.unsafe_local_reads {
            child.arg("--unsafe-local-reads");
        }
        if args.unsafe_lying_disk {
            child.arg("--unsafe-lying-disk");
        }
        if let Some(out) = &args.out {
            child.arg("--out").arg(out);
        }
        let status = child.status().context("run a seed")?;
        let verdict = match status.code() {
            Some(0) => Verdict::Valid,
            Some(1) => Verdict::Anomalies,
            Some(2) => Verdict::Unknown,
            _ => anyhow::bail!("seed {seed} failed ({status}): {}", replay(seed, args)),
        };
        if verdict == Verdict::Anomalies {
            caught += 1;
        }
        worst = worst.max(verdict);
        println!("  ({:.1} s)", began.elapsed().as_secs_f64());
        if verdict != Verdict::Valid && !args.expects_anomalies() {
            println!("  replay: {}", replay(seed, args));
        }
    }

    if args.expects_anomalies() {
        println!(
            "deliberately unsafe run: {caught} of {} seeds found anomalies",
            args.seeds
        );
        return Ok(if caught > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    Ok(verdict_code(worst))
}

fn verdict_code(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Valid => ExitCode::SUCCESS,
        Verdict::Anomalies => ExitCode::from(1),
        Verdict::Unknown => ExitCode::from(2),
    }
}

/// One seed, in this process; the exit status is its verdict.
fn run_one(args: &Args) -> anyhow::Result<ExitCode> {
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
    let root = std::env::temp_dir().join(format!("spike-sim-{}-{seed}", std::process::id()));
    let outcome = run_seed(seed, args, &identities, &disk, &root);
    clock::end_run();
    let _ = std::fs::remove_dir_all(&root);
    let report = outcome?;
    let mut stdout = std::io::stdout().lock();
    for line in &report.lines {
        writeln!(stdout, "{line}")?;
    }
    Ok(verdict_code(report.verdict))
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
        args.workload.name(),
        args.fault_secs,
        args.heal_secs
    );
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
    args: &Args,
    identities: &Identities,
    disk: &SimDisk,
    root: &Path,
) -> anyhow::Result<SeedReport> {
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
    let schedule = Schedule::new(seed, FIRST_FAULT, fault_phase);
    let findings = Findings::default();
    {
        let identities = identities.clone();
        let findings = findings.clone();
        let replacements = schedule.replacements();
        let workload = args.workload;
        sim.client(WORKLOAD_HOST, async move {
            workload::run(identities, workload, seed, run_for, replacements, findings).await;
            Ok(())
        });
    }

    RUNNING.with(|running| {
        *running.borrow_mut() = Some(Running {
            seed,
            workload: args.workload,
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
    drop(sim);

    let observed = findings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .context("the workload left no findings")?;
    if let Some(out) = &args.out {
        write_history(&out.join(format!("history-{seed}.jsonl")), &observed.events)?;
    }
    Ok(judge(
        seed,
        args.workload,
        &schedule.faults,
        fault_phase,
        observed,
    ))
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
            Some(panic_report(
                running.seed,
                running.workload,
                &running.faults,
                message,
            ))
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
                (SimWorkload::Set, None) => (Vec::new(), None),
                (SimWorkload::Set, Some(elements)) => {
                    let report = check::set::check(&operations, elements);
                    let undecided =
                        (report.acknowledged == 0).then(|| "no add was acknowledged".to_owned());
                    (described(&report.anomalies), undecided)
                }
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
    lines.push(format!(
        "seed {seed} {}: {} · {} ok, {} info, {} fail · {} faults · fingerprint {:016x}",
        workload.name(),
        match verdict {
            Verdict::Valid => "valid",
            Verdict::Unknown => "NO VERDICT",
            Verdict::Anomalies => "ANOMALIES",
        },
        count(EventKind::Ok),
        count(EventKind::Info),
        count(EventKind::Fail),
        faults.len(),
        fingerprint(&events),
    ));
    lines.extend(membership.iter().map(|note| format!("  {note}")));
    if verdict != Verdict::Valid {
        push_faults(&mut lines, faults);
        for anomaly in anomalies.iter().take(20) {
            lines.push(format!("  {anomaly}"));
        }
    }
    SeedReport { verdict, lines }
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
