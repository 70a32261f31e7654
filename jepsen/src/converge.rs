//! After healing: the final reads through the leader, then every replica,
//! asked alone, must come to agree with them. The harness and the
//! simulator both end their runs with these.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use spike_sdk::client::{Error, NexusClient};
use tokio::time::Instant;

use crate::check::Anomaly;
use crate::history::Completion;
use crate::op::{Op, Reply};
use crate::perform::{list_elements, read_set, read_value_stale, record};
use crate::recorder::{Invocation, Recorder, Rng};
use crate::workload::{SetKind, register_path};

/// Pause between attempts of a final read.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause between polls of a replica that has not caught up yet.
const POLL_PAUSE: Duration = Duration::from_millis(100);
/// Acknowledged root-key elements every replica must decrypt itself.
const ROOTKEY_SAMPLE_MAX: usize = 500;

/// A replica as the convergence checks ask it: its name in reports and a
/// client bound to it alone.
pub struct Replica {
    /// How reports name it.
    pub name: String,
    /// A client that talks to this replica only.
    pub nexus: NexusClient,
}

/// A final read that did not succeed in the time allowed: the cluster did
/// not recover.
#[derive(Debug, thiserror::Error)]
pub enum FinalReadError {
    /// No linearizable read of a register key.
    #[error("no final read of register key {key} after healing (the last attempt: {ended:?})")]
    Register {
        /// The key.
        key: u64,
        /// How the last attempt ended.
        ended: Completion,
    },
    /// No read of the whole set.
    #[error("no final read of the {kind:?} elements after healing: {error}")]
    Set {
        /// Which set.
        kind: SetKind,
        /// The last attempt's error.
        error: Error,
    },
    /// A replica did not report its status.
    #[error("no status of {replica} after healing: {error}")]
    Status {
        /// The replica.
        replica: String,
        /// The last attempt's error.
        error: Error,
    },
}

impl FinalReadError {
    /// The anomaly this is when the cluster had time to recover.
    pub fn anomaly(&self) -> Anomaly {
        Anomaly::NotRecovered {
            detail: self.to_string(),
        }
    }
}

/// Retries `read` for up to `within`; the last error if it never
/// succeeds.
pub async fn retry<T, E, F, Fut>(within: Duration, mut read: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match read().await {
            Err(_) if Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
            done => return done,
        }
    }
}

/// One linearizable read of each register key `0..keys` through `reader`,
/// recorded in the history as `process` (so the checker judges it with the
/// rest), each retried for up to `within`.
pub async fn final_register_reads(
    reader: &NexusClient,
    keys: u64,
    process: u64,
    recorder: &Recorder,
    within: Duration,
) -> Result<BTreeMap<u64, Option<u64>>, FinalReadError> {
    let mut finals = BTreeMap::new();
    for key in 0..keys {
        let path = register_path(key);
        let deadline = Instant::now() + within;
        loop {
            let invocation = Invocation {
                process,
                op: Op::Read,
                key: Some(key.to_string()),
                node: reader.known_leader().map(|address| address.to_string()),
            };
            let ended = record(recorder, &invocation, reader, &path).await;
            if let Completion::Ok(Reply::Read(value)) = ended {
                finals.insert(key, value);
                break;
            }
            if Instant::now() > deadline {
                return Err(FinalReadError::Register { key, ended });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    Ok(finals)
}

/// Every replica, read without a read index, must come to hold the final
/// values within `within`.
pub async fn registers_converge(
    replicas: &[Replica],
    finals: &BTreeMap<u64, Option<u64>>,
    within: Duration,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for replica in replicas {
        let deadline = Instant::now() + within;
        for (key, expected) in finals {
            let path = register_path(*key);
            loop {
                let seen = read_value_stale(&replica.nexus, &path).await.ok();
                if seen.as_ref() == Some(expected) {
                    break;
                }
                if Instant::now() > deadline {
                    anomalies.push(Anomaly::Divergence {
                        replica: replica.name.clone(),
                        detail: format!("holds {seen:?} for key {key}, the cluster {expected:?}"),
                    });
                    break;
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        }
    }
    anomalies
}

/// The whole set (element -> versions) through `reader`, retried for up
/// to `within`.
pub async fn final_set(
    reader: &NexusClient,
    kind: SetKind,
    within: Duration,
) -> Result<BTreeMap<u64, u64>, FinalReadError> {
    retry(within, || read_set(reader, kind))
        .await
        .map_err(|error| FinalReadError::Set { kind, error })
}

/// Every replica, asked alone, must come to list exactly `expected`
/// within `within` (its own state, once it caught up through a read
/// index).
pub async fn set_converges(
    replicas: &[Replica],
    kind: SetKind,
    expected: &BTreeSet<u64>,
    within: Duration,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for replica in replicas {
        let deadline = Instant::now() + within;
        loop {
            let listed = list_elements(&replica.nexus, kind)
                .await
                .map(BTreeSet::from_iter);
            match listed {
                Ok(elements) if elements == *expected => break,
                listed if Instant::now() > deadline => {
                    let detail = match listed {
                        Ok(elements) => format!(
                            "lists {} elements, the cluster {}: {} missing, {} extra",
                            elements.len(),
                            expected.len(),
                            expected.difference(&elements).count(),
                            elements.difference(expected).count()
                        ),
                        Err(error) => format!("lists no elements: {error}"),
                    };
                    anomalies.push(Anomaly::Divergence {
                        replica: replica.name.clone(),
                        detail,
                    });
                    break;
                }
                _ => tokio::time::sleep(POLL_PAUSE).await,
            }
        }
    }
    anomalies
}

/// For the root-key workload: every replica must come to report the same
/// root key (id and key check) within `within`, and decrypt a sample of
/// the acknowledged elements itself (a stale read is served from its own
/// state with its own keyring). Returns the root keys seen, for the
/// report, and the anomalies.
pub async fn root_keys_converge(
    replicas: &[Replica],
    elements: &BTreeMap<u64, u64>,
    seed: u64,
    within: Duration,
) -> Result<(Value, Vec<Anomaly>), FinalReadError> {
    let mut anomalies = Vec::new();
    let settle = Instant::now() + within;
    let keys = loop {
        let mut keys = Vec::new();
        for replica in replicas {
            let status = retry(within, || replica.nexus.cluster_status())
                .await
                .map_err(|error| FinalReadError::Status {
                    replica: replica.name.clone(),
                    error,
                })?;
            let key = (status.root_key.root_key_id, status.root_key.key_check);
            keys.push((replica.name.clone(), key));
        }
        let Some((first_name, first)) = keys.first().cloned() else {
            break keys;
        };
        let differing: Vec<_> = keys.iter().filter(|(_, key)| *key != first).collect();
        if differing.is_empty() || Instant::now() > settle {
            for (name, (id, check)) in differing {
                anomalies.push(Anomaly::Divergence {
                    replica: name.clone(),
                    detail: format!(
                        "holds root key {id:?} (key check {check:?}), {first_name} {:?} ({:?})",
                        first.0, first.1
                    ),
                });
            }
            break keys;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    };

    let mut rng = Rng::new(seed ^ 0x726f_6f74);
    let all: Vec<u64> = elements.keys().copied().collect();
    let sample: Vec<u64> = if all.len() <= ROOTKEY_SAMPLE_MAX {
        all
    } else {
        (0..ROOTKEY_SAMPLE_MAX).map(|_| *rng.pick(&all)).collect()
    };
    for replica in replicas {
        let deadline = Instant::now() + within;
        for element in &sample {
            let path = SetKind::Rootkey.path(*element);
            loop {
                let read = read_value_stale(&replica.nexus, &path).await;
                if matches!(read, Ok(Some(value)) if value == *element) {
                    break;
                }
                if Instant::now() > deadline {
                    anomalies.push(Anomaly::Divergence {
                        replica: replica.name.clone(),
                        detail: format!("cannot read {path} after rekeys: {read:?}"),
                    });
                    break;
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        }
    }
    let report = keys
        .into_iter()
        .map(|(replica, (id, check))| {
            json!({ "replica": replica, "rootKeyId": id, "keyCheck": check })
        })
        .collect();
    Ok((Value::Array(report), anomalies))
}
