//! The launcher's actions on one process or on the running cluster (all
//! but `up`): start, stop, kill, join, retire, down, status, and the
//! network faults of a `--netns` cluster. Each reads `cluster.json`,
//! acts, and writes it back.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::env;
use crate::error::Error;
use crate::file::{ClusterFile, Membership};
use crate::netns::{self, Impairment, NetnsError};
use crate::supervise::{self, Signal, running};

/// `dir`, created if need be, as an absolute path (`cluster.json` records
/// it, and processes are started from anywhere).
pub fn absolute(dir: &Path) -> Result<PathBuf, Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Directory {
        path: dir.to_owned(),
        source,
    })?;
    fs::canonicalize(dir).map_err(|source| Error::Resolve {
        path: dir.to_owned(),
        source,
    })
}

fn load(dir: &Path) -> Result<ClusterFile, Error> {
    Ok(ClusterFile::load(&absolute(dir)?)?)
}

/// Signals process `index` and reports it if it ran.
fn signal(
    cluster: &mut ClusterFile,
    index: usize,
    kind: Signal,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if let Some(pid) = supervise::signal(cluster, index, kind)? {
        let name = &cluster.processes[index].name;
        writeln!(out, "{name} (pid {pid}) stopped").map_err(Error::Output)?;
    }
    Ok(())
}

/// Stops every process (SIGTERM, the replicas first), removes the
/// namespaces and a sockets directory outside the cluster's.
pub fn down(dir: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let mut cluster = load(dir)?;
    for index in (0..cluster.processes.len()).rev() {
        signal(&mut cluster, index, Signal::TERM, out)?;
    }
    if let Some(layout) = &cluster.netns {
        layout.destroy(&cluster.hosts()?);
    }
    // Not left behind in the temporary directory (the server removed its
    // sockets); one in the cluster directory stays with the identities.
    if !cluster.sockets_dir.starts_with(&cluster.dir) {
        let _ = fs::remove_dir(&cluster.sockets_dir);
    }
    Ok(cluster.save()?)
}

/// Starts process `name` (not a spare nor a retired replica).
pub fn start(dir: &Path, name: &str, bin_dir: &Path) -> Result<(), Error> {
    let mut cluster = load(dir)?;
    let index = cluster.index_of(name)?;
    match cluster.processes[index].membership {
        Membership::Spare => return Err(Error::StartSpare(name.to_owned())),
        Membership::Retired => return Err(Error::StartRetired(name.to_owned())),
        Membership::Founder | Membership::Joined => {}
    }
    supervise::start(&mut cluster, index, bin_dir)?;
    Ok(cluster.save()?)
}

/// Stops (SIGTERM) or kills (SIGKILL) process `name`.
pub fn signal_one(dir: &Path, name: &str, kind: Signal, out: &mut dyn Write) -> Result<(), Error> {
    let mut cluster = load(dir)?;
    let index = cluster.index_of(name)?;
    signal(&mut cluster, index, kind, out)?;
    Ok(cluster.save()?)
}

/// Starts spare `name` with --join and prints the `spike cluster add`
/// that adds it; the env files list it from now on.
pub fn join(dir: &Path, name: &str, bin_dir: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let mut cluster = load(dir)?;
    let index = cluster.index_of(name)?;
    let process = &cluster.processes[index];
    let Some(replica) = process
        .replica()
        .filter(|_| process.membership == Membership::Spare)
    else {
        return Err(Error::NotSpare(name.to_owned()));
    };
    let replica = replica.clone();
    cluster.processes[index].membership = Membership::Joined;
    supervise::start(&mut cluster, index, bin_dir)?;
    cluster.save()?;
    env::write(&cluster)?;
    writeln!(
        out,
        "{name} waits to be added: spike cluster add --id {} --cluster-addr {} --api-addr {}",
        replica.id, replica.cluster_addr, replica.api_addr
    )
    .map_err(Error::Output)
}

/// Stops removed replica `name` for good; the env files drop it.
pub fn retire(dir: &Path, name: &str, out: &mut dyn Write) -> Result<(), Error> {
    let mut cluster = load(dir)?;
    let index = cluster.index_of(name)?;
    if cluster.processes[index].replica().is_none() {
        return Err(Error::RetireNonReplica);
    }
    signal(&mut cluster, index, Signal::TERM, out)?;
    cluster.processes[index].membership = Membership::Retired;
    cluster.save()?;
    Ok(env::write(&cluster)?)
}

/// Prints each process and whether it runs.
pub fn status(dir: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let cluster = load(dir)?;
    let width = cluster
        .processes
        .iter()
        .map(|process| process.name.len())
        .max()
        .unwrap_or(0);
    for process in &cluster.processes {
        let state = match (running(process), process.membership) {
            (Some(pid), _) => format!("running (pid {pid})"),
            (None, Membership::Spare) => "spare".to_owned(),
            (None, Membership::Retired) => "retired".to_owned(),
            (None, _) => "stopped".to_owned(),
        };
        // A reader that stops early (`| head`) is not an error.
        match writeln!(out, "{:<width$} {state}", process.name) {
            Err(error) if error.kind() == ErrorKind::BrokenPipe => break,
            written => written.map_err(Error::Output)?,
        }
    }
    Ok(())
}

/// The namespace host of process `name`.
fn host(cluster: &ClusterFile, name: &str) -> Result<netns::Host, Error> {
    if cluster.netns.is_none() {
        return Err(NetnsError::NoNamespaces.into());
    }
    let namespace = cluster
        .process(name)?
        .netns
        .clone()
        .ok_or_else(|| NetnsError::NoNamespace(name.to_owned()))?;
    cluster
        .hosts()?
        .into_iter()
        .find(|host| host.namespace == namespace)
        .ok_or_else(|| NetnsError::NoNamespace(name.to_owned()).into())
}

/// Cuts the link between `a` and `b`, both ways.
pub fn cut(dir: &Path, a: &str, b: &str) -> Result<(), Error> {
    let cluster = load(dir)?;
    Ok(netns::cut(&host(&cluster, a)?, &host(&cluster, b)?)?)
}

/// Impairs process `name`'s link to every other.
pub fn impair(dir: &Path, name: &str, impairment: Impairment) -> Result<(), Error> {
    if impairment.loss_percent.is_none() && impairment.rate_kbit.is_none() {
        return Err(NetnsError::NoImpairment.into());
    }
    let cluster = load(dir)?;
    Ok(netns::impair(&host(&cluster, name)?, impairment)?)
}

/// Removes every cut and impairment.
pub fn heal(dir: &Path) -> Result<(), Error> {
    let cluster = load(dir)?;
    if cluster.netns.is_none() {
        return Err(NetnsError::NoNamespaces.into());
    }
    Ok(cluster.hosts()?.iter().try_for_each(netns::heal)?)
}
