//! `up`: start (or restart) the whole cluster and wait until every replica
//! serves. After a total loss the replicas wait for an operator restore,
//! unless the cluster was started with `--auto-restore-from-disk-shards`
//! (development only), which saves the shards after the first start and
//! feeds them back.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use spike_dev_identity::{IdentityDirectory, IdentitySpec};

use crate::error::Error;
use crate::file::{ClusterFile, FileError};
use crate::plan::{Shape, plan};
use crate::probe::{self, PROBE_TIMEOUT};
use crate::supervise::{self, running};
use crate::{env, operator};

/// How long the dev identities stay valid.
const IDENTITY_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a restarted cluster gets to serve on its own before the saved
/// shards are fed to it.
const RESTORE_AFTER: Duration = Duration::from_secs(3);
/// Pause between two readiness probes of one replica.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// Starts the cluster in `dir` (laid out as `shape` if the directory holds
/// none yet) from the binaries in `bin_dir`; fails if a replica does not
/// serve within `wait`. Progress goes to `out`.
pub fn up(
    dir: &Path,
    shape: Shape,
    bin_dir: &Path,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let began = Instant::now();
    let dir = crate::actions::absolute(dir)?;
    let auto_restore = shape.auto_restore_from_disk_shards;
    let (mut cluster, existed) = match ClusterFile::load(&dir) {
        Ok(existing) => (existing, true),
        Err(FileError::NoCluster { .. }) => (plan(&dir, shape)?, false),
        Err(error) => return Err(error.into()),
    };
    cluster.auto_restore_from_disk_shards |= auto_restore;
    // Nothing of the cluster runs: the keepers come back empty, so an
    // initialized cluster has lost its root key (a total loss).
    let total_restart = cluster
        .processes
        .iter()
        .all(|process| running(process).is_none());
    warn_insecure(&cluster, out)?;
    if cluster.spire.is_none() {
        create_identities(&cluster)?;
    }
    let logs = cluster.dir.join("logs");
    fs::create_dir_all(&logs).map_err(|source| Error::Directory { path: logs, source })?;
    if let Some(layout) = &cluster.netns
        && cluster
            .processes
            .iter()
            .all(|process| running(process).is_none())
    {
        layout.create(&cluster.hosts()?)?;
    }
    for index in 0..cluster.processes.len() {
        let process = &cluster.processes[index];
        if process.serves() && running(process).is_none() {
            supervise::start(&mut cluster, index, bin_dir)?;
        }
        cluster.save()?;
    }
    env::write(&cluster)?;
    let deadline = Instant::now() + wait;
    let recovery_dir = cluster.dir.join("recovery");
    let saved_shards =
        cluster.auto_restore_from_disk_shards && recovery_dir.join("spike.recovery.1.txt").exists();
    if saved_shards && !all_ready(&cluster, Instant::now() + RESTORE_AFTER)? {
        writeln!(
            out,
            "keepers restarted empty: restoring the root key from {}",
            recovery_dir.display()
        )
        .map_err(Error::Output)?;
        operator::restore(&cluster)?;
    } else if existed
        && total_restart
        && !cluster.auto_restore_from_disk_shards
        && !all_ready(&cluster, Instant::now() + RESTORE_AFTER)?
    {
        // What production does: the replicas wait (503) for an operator.
        writeln!(
            out,
            "cluster started in {}, but the keepers restarted empty: every replica waits (503) \
             for the root key.\n  Restore it with the shards saved by `spike operator recover`:\n  \
             source {}/env.restore && spike operator restore   (once per shard; {} are needed)",
            cluster.dir.display(),
            cluster.dir.display(),
            cluster.threshold
        )
        .map_err(Error::Output)?;
        return Ok(());
    }
    if !all_ready(&cluster, deadline)? {
        let stuck = cluster
            .serving_replicas()
            .find(|(_, replica)| !probe::ready(replica.health_addr, PROBE_TIMEOUT))
            .map_or_else(String::new, |(process, _)| {
                format!("{}; see {}", process.name, process.log.display())
            });
        return Err(Error::NotReady { wait, stuck });
    }
    if cluster.auto_restore_from_disk_shards && !saved_shards {
        operator::save_recovery_shards(&cluster)?;
    }
    writeln!(
        out,
        "cluster ready in {:.2}s: {} replicas, {} keepers (threshold {}) in {}",
        began.elapsed().as_secs_f64(),
        cluster.serving_replicas().count(),
        cluster.shares,
        cluster.threshold,
        cluster.dir.display()
    )
    .and_then(|()| {
        writeln!(
            out,
            "  source {}/env && spike whoami",
            cluster.dir.display()
        )
    })
    .map_err(Error::Output)
}

/// Says so when the cluster keeps its root key where anyone reading the
/// directory finds it: the shards on disk, or t = 1.
fn warn_insecure(cluster: &ClusterFile, out: &mut dyn Write) -> Result<(), Error> {
    if cluster.auto_restore_from_disk_shards {
        writeln!(
            out,
            "WARNING: --auto-restore-from-disk-shards: all {} recovery shards, that is the root key, \
             are kept in {}; development only",
            cluster.shares,
            cluster.dir.join("recovery").display()
        )
        .map_err(Error::Output)?;
    }
    if cluster.threshold == 1 {
        writeln!(
            out,
            "WARNING: threshold 1: every keeper holds the root key itself; development only"
        )
        .map_err(Error::Output)?;
    }
    Ok(())
}

/// One identity per process (`/spike/ROLE/ID`), plus the workloads asked
/// for, next to SPIKE's role identities.
fn create_identities(cluster: &ClusterFile) -> Result<(), Error> {
    let specs: Vec<IdentitySpec> = cluster
        .processes
        .iter()
        .filter_map(|process| {
            let id = process.node_id()?;
            Some(format!(
                "{}=/spike/{}/{id}",
                process.name,
                process.role.name()
            ))
        })
        .chain(cluster.workloads.iter().cloned())
        .map(|text| IdentitySpec::parse(&text))
        .collect::<Result<_, _>>()?;
    IdentityDirectory::create(
        cluster.dir.join("identities"),
        &cluster.trust_domain,
        &specs,
        IDENTITY_LIFETIME,
    )?;
    Ok(())
}

/// Waits until every serving replica is ready: false at `deadline`, an
/// error at once if one has exited.
fn all_ready(cluster: &ClusterFile, deadline: Instant) -> Result<bool, Error> {
    for (process, replica) in cluster.serving_replicas() {
        while !probe::ready(replica.health_addr, PROBE_TIMEOUT) {
            if running(process).is_none() {
                return Err(Error::Exited {
                    name: process.name.clone(),
                    last_words: supervise::last_line(&process.log)
                        .unwrap_or_else(|| "(empty log)".to_owned()),
                    log: process.log.clone(),
                });
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            sleep(PROBE_PAUSE);
        }
    }
    Ok(true)
}
