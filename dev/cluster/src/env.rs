//! The env files: `source DIR/env` (or `env.recover`, `env.restore`) to
//! act as that SPIKE role against the cluster with `spike`.
//!
//! `SPIKE_NEXUS_API_URL` names one replica, as SPIKE's own clients read
//! it; `SPIKE_NEXUS_API_URLS` names every replica in the cluster, comma
//! separated in node-id order, for clients that fail over. Both follow the
//! membership: `join` and `retire` write the files again.

use std::fs;
use std::path::PathBuf;

use spike_sdk::identity::SpiffeId;
use spike_sdk::svid::SvidSource;

use crate::file::{ClusterFile, FileError};
use crate::spire;

/// Each env file and the identity it acts as.
const FILES: [(&str, &str); 3] = [
    ("env", "superuser"),
    ("env.recover", "recover"),
    ("env.restore", "restore"),
];

/// The cluster has no replica to point the files at (every one retired).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No founding or joined replica is left.
    #[error("no nexus")]
    NoReplica,
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] FileError),
}

impl ClusterFile {
    /// Where a client on this host acting as identity `name` (a role such
    /// as `superuser`, a `--workload`'s name, or a process name) gets its
    /// SVID: the dev Workload API's socket for it, or this host's SPIRE
    /// agent, asked for the identity's SPIFFE ID (the agent offers every
    /// client identity to the user who ran `up`).
    pub fn svid_source(&self, name: &str) -> Result<SvidSource, FileError> {
        let (endpoint, spiffe_id) = self.workload_api(name)?;
        Ok(SvidSource::WorkloadApi {
            endpoint,
            spiffe_id,
        })
    }

    /// The same as `SPIFFE_ENDPOINT_SOCKET` and, on SPIRE,
    /// `SPIKE_SPIFFE_ID`.
    pub fn workload_api(&self, name: &str) -> Result<(String, Option<SpiffeId>), FileError> {
        if self.spire.is_none() {
            let socket = self.socket(name);
            return Ok((format!("unix://{}", socket.display()), None));
        }
        let client = self.client_side();
        let (side, path) = self
            .client_identities()
            .into_iter()
            .find(|spec| spec.name == name)
            .map(|spec| (client, spec.path))
            .or_else(|| {
                let path = spire::process_path(self.process(name).ok()?)?;
                Some((spire::Side::Cluster, path))
            })
            .ok_or_else(|| FileError::NoIdentity(name.to_owned()))?;
        let text = format!("spiffe://{}{path}", self.spire_domain(side));
        let spiffe_id = SpiffeId::new(&text).map_err(|_| FileError::NoIdentity(name.to_owned()))?;
        let socket = self.agent_socket(&side.client_agent());
        Ok((format!("unix://{}", socket.display()), Some(spiffe_id)))
    }

    /// The trust roots every process and env file sets: `SPIKE_TRUST_ROOT`
    /// and one `SPIKE_TRUST_ROOT_<ROLE>` per role, each the trust domain
    /// the role is accepted from (the clients' own domain for the client
    /// roles, when they have one).
    pub fn trust_roots(&self) -> Vec<(String, String)> {
        let clients = self
            .spire
            .as_ref()
            .and_then(|spire| spire.pilot_domain.clone())
            .unwrap_or_else(|| self.trust_domain.clone());
        let mut roots = vec![("SPIKE_TRUST_ROOT".to_owned(), self.trust_domain.clone())];
        for role in spike_sdk::identity::Role::ALL {
            let domain = match role {
                spike_sdk::identity::Role::Nexus | spike_sdk::identity::Role::Keeper => {
                    self.trust_domain.clone()
                }
                _ => clients.clone(),
            };
            let variable = role.trust_root_variable().to_owned();
            // The three pilot roles share one variable.
            if !roots.iter().any(|(known, _)| *known == variable) {
                roots.push((variable, domain));
            }
        }
        roots
    }
}

/// The API URL of every replica in the cluster (founders and joined ones),
/// in node-id order.
fn api_urls(cluster: &ClusterFile) -> Vec<String> {
    let mut replicas: Vec<_> = cluster.serving_replicas().map(|(_, r)| r).collect();
    replicas.sort_by_key(|replica| replica.id);
    replicas
        .into_iter()
        .map(|replica| format!("https://{}", replica.api_addr))
        .collect()
}

/// The text of the env file acting as `identity`.
pub fn render(cluster: &ClusterFile, identity: &str) -> Result<String, EnvError> {
    let urls = api_urls(cluster);
    let first = urls.first().ok_or(EnvError::NoReplica)?;
    let mut text =
        format!("# source this file to act as the SPIKE {identity} against the local cluster\n");
    text += &format!("export SPIKE_NEXUS_API_URL={first}\n");
    text += &format!("export SPIKE_NEXUS_API_URLS={}\n", urls.join(","));
    let (endpoint, spiffe_id) = cluster.workload_api(identity)?;
    text += &format!("export SPIFFE_ENDPOINT_SOCKET={endpoint}\n");
    if let Some(spiffe_id) = spiffe_id {
        text += &format!("export SPIKE_SPIFFE_ID={spiffe_id}\n");
    }
    for (variable, domain) in cluster.trust_roots() {
        text += &format!("export {variable}={domain}\n");
    }
    Ok(text)
}

/// Writes every env file into the cluster directory.
pub fn write(cluster: &ClusterFile) -> Result<(), EnvError> {
    for (file, identity) in FILES {
        let path: PathBuf = cluster.dir.join(file);
        let text = render(cluster, identity)?;
        fs::write(&path, text).map_err(|source| FileError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::Membership;
    use crate::plan::{Shape, plan};
    use std::path::Path;

    #[test]
    fn every_serving_replica_is_listed_in_id_order_and_the_first_stays_alone() {
        let mut cluster = plan(
            Path::new("/c"),
            Shape {
                replicas: 3,
                spares: 2,
                base_port: 20_000,
                ..Shape::default()
            },
        )
        .expect("plan");
        let text = render(&cluster, "superuser").expect("env");
        assert!(text.contains("export SPIKE_NEXUS_API_URL=https://127.0.0.1:20000\n"));
        assert!(text.contains(
            "export SPIKE_NEXUS_API_URLS=https://127.0.0.1:20000,https://127.0.0.1:20010,https://127.0.0.1:20020\n"
        ));

        // nexus-4 joins, nexus-1 retires: the first URL moves on.
        let set = |cluster: &mut ClusterFile, name: &str, membership| {
            let index = cluster.index_of(name).expect("known");
            cluster.processes[index].membership = membership;
        };
        set(&mut cluster, "nexus-4", Membership::Joined);
        set(&mut cluster, "nexus-1", Membership::Retired);
        let text = render(&cluster, "recover").expect("env");
        assert!(text.contains("export SPIKE_NEXUS_API_URL=https://127.0.0.1:20010\n"));
        assert!(text.contains(
            "export SPIKE_NEXUS_API_URLS=https://127.0.0.1:20010,https://127.0.0.1:20020,https://127.0.0.1:20030\n"
        ));
        assert!(text.contains("/c/identities/sockets/recover.sock"));
    }
}
