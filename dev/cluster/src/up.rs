//! `up`: start (or restart) the whole cluster and wait until every replica
//! serves, restoring the root key from the saved shards after a total
//! loss and saving them after the first start.

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
    let mut cluster = match ClusterFile::load(&dir) {
        Ok(existing) => existing,
        Err(FileError::NoCluster { .. }) => plan(&dir, shape)?,
        Err(error) => return Err(error.into()),
    };
    create_identities(&cluster)?;
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
    let saved_shards = recovery_dir.join("spike.recovery.1.txt").exists();
    if saved_shards && !all_ready(&cluster, Instant::now() + RESTORE_AFTER)? {
        writeln!(
            out,
            "keepers restarted empty: restoring the root key from {}",
            recovery_dir.display()
        )
        .map_err(Error::Output)?;
        operator::restore(&cluster)?;
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
    if !saved_shards {
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
