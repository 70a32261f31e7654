//! The clients: Jepsen's register or set workload through the real SDK,
//! from one simulated host, then the checks that need the healed cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use spike_jepsen::history::{Event, EventKind};
use spike_jepsen::membership::{self, outcome, until};
use spike_jepsen::recorder::{Invocation, Recorder};
use spike_jepsen::workload::{self, ClientSpec, Workload};
use spike_sdk::client::{Error, NexusClient};
use tokio::time::Instant;

use crate::cluster::{Identities, NEXUS_HOSTS, api_addresses, nexus_addresses};

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimWorkload {
    /// Read, version, write and compare-and-set on a few keys; checked for
    /// linearizability per key.
    Register,
    /// Unique adds; after healing every acknowledged add must be there
    /// exactly once (crashes with power loss must not lose one, retries
    /// must not apply one twice).
    Set,
}

impl SimWorkload {
    /// The harness's workload the clients run.
    fn clients(self) -> Workload {
        match self {
            Self::Register => Workload::Register,
            Self::Set => Workload::Set,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Set => "set",
        }
    }
}

/// Register keys the clients share: few, so operations contend.
pub const KEYS: u64 = 4;
/// Concurrent clients; odd ones are pinned to one replica.
pub const CLIENTS: u64 = 6;
/// How long after healing every replica has to converge.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// Replacements the operator carries out: (start, end, removed replica
/// host, added spare host), times from the start of the run.
pub type Replacements = Vec<(Duration, Duration, usize, usize)>;

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Observed {
    /// What the operator's membership changes came to.
    pub membership: Vec<String>,
    /// The history, invocations and completions in order.
    pub events: Vec<Event>,
    /// Problems found after healing: divergent replicas, no recovery.
    pub problems: Vec<String>,
    /// The set workload's final read (element -> versions), if it had one.
    pub final_set: Option<BTreeMap<u64, u64>>,
    /// Simulated time of the last acknowledged write, from the start.
    pub last_write_ok: Option<Duration>,
}

/// Where the workload host leaves its findings for the driver.
pub type Findings = Arc<Mutex<Option<Observed>>>;

fn client(
    identities: &Identities,
    endpoints: Vec<std::net::SocketAddr>,
    follow: bool,
) -> NexusClient {
    let settings = workload::client_settings(endpoints, follow);
    NexusClient::new(
        identities.superuser.clone(),
        identities.trust_roots.clone(),
        settings,
    )
    .unwrap_or_else(|error| panic!("client settings are valid: {error}"))
}

/// Runs the clients for `run_for`, then the final reads and the
/// convergence check, and leaves the findings in `findings`.
pub async fn run(
    identities: Identities,
    workload: SimWorkload,
    seed: u64,
    run_for: Duration,
    replacements: Replacements,
    findings: Findings,
) {
    let endpoints = api_addresses();
    let recorder = Arc::new(Recorder::new());
    let began = Instant::now();
    let operator = tokio::spawn(operate(identities.clone(), began, replacements));
    let deadline = began + run_for;
    let mut workers = Vec::new();
    for process in 0..CLIENTS {
        let node = endpoints[process as usize % endpoints.len()];
        let pinned = process % 2 == 1;
        let client = if pinned {
            client(&identities, vec![node], false)
        } else {
            let mut order = endpoints.clone();
            let shift = process as usize % order.len();
            order.rotate_left(shift);
            client(&identities, order, true)
        };
        let spec = ClientSpec {
            workload: workload.clients(),
            process,
            keys: KEYS,
            // Runs are short: four keys for the whole run.
            key_rotation: None,
            seed,
            deadline,
            pinned: pinned.then_some(node),
        };
        let recorder = recorder.clone();
        workers.push(tokio::spawn(async move {
            workload::client_loop(spec, client, &recorder).await;
        }));
    }
    for worker in workers {
        if let Err(error) = worker.await {
            panic!("a client task failed: {error}");
        }
    }
    let membership = operator
        .await
        .unwrap_or_else(|error| panic!("the operator task failed: {error}"));
    let mut problems = Vec::new();
    let final_set = match workload {
        SimWorkload::Register => {
            let finals = final_reads(&identities, &recorder, &mut problems).await;
            converge(&identities, &finals, &mut problems).await;
            None
        }
        SimWorkload::Set => {
            let final_set = final_set(&identities, &mut problems).await;
            if let Some(elements) = &final_set {
                converge_set(&identities, elements, &mut problems).await;
            }
            final_set
        }
    };
    let events = recorder.events();
    let last_write_ok = last_acknowledged_write(&events);
    *findings.lock().unwrap_or_else(PoisonError::into_inner) = Some(Observed {
        membership,
        events,
        problems,
        final_set,
        last_write_ok,
    });
}

/// The operator: replaces voters as scheduled, through the SDK, retrying
/// each step until the fault's end. Returns what each came to.
async fn operate(
    identities: Identities,
    began: Instant,
    replacements: Replacements,
) -> Vec<String> {
    let admin = client(&identities, api_addresses(), true);
    let mut notes = Vec::new();
    for (start, end, remove, add) in replacements {
        tokio::time::sleep_until(began + start).await;
        let deadline = began + end;
        let removed = until(deadline, || admin.remove_member(remove as u64 + 1)).await;
        let (cluster, api) = nexus_addresses(add);
        let added = until(deadline, || admin.add_member(add as u64 + 1, cluster, api)).await;
        notes.push(format!(
            "replace nexus-{} by nexus-{}: removal {}, addition {}",
            remove + 1,
            add + 1,
            outcome(&removed),
            outcome(&added)
        ));
    }
    notes
}

/// When (since the start) the last write, successful CAS or add was
/// acknowledged.
fn last_acknowledged_write(events: &[Event]) -> Option<Duration> {
    events
        .iter()
        .filter(|event| {
            event.kind == EventKind::Ok && matches!(event.f.as_str(), "write" | "cas" | "add")
        })
        .map(|event| Duration::from_nanos(event.time_ns))
        .max()
}

/// A linearizable read of every key through the leader, recorded in the
/// history so the checker judges it with the rest.
async fn final_reads(
    identities: &Identities,
    recorder: &Recorder,
    problems: &mut Vec<String>,
) -> BTreeMap<u64, Option<u64>> {
    let reader = client(identities, api_addresses(), true);
    let mut finals = BTreeMap::new();
    for key in 0..KEYS {
        let path = workload::register_path(key);
        let invocation = Invocation {
            process: CLIENTS,
            f: "read",
            key: Some(key.to_string()),
            value: Value::Null,
            node: None,
        };
        let give_up = Instant::now() + CONVERGE_WITHIN;
        loop {
            recorder.invoke(&invocation);
            match reader.get_secret(&path, None).await {
                Ok(found) => {
                    let value = found.get("v").and_then(|v| v.parse::<u64>().ok());
                    recorder.complete(&invocation, EventKind::Ok, json!(value), None);
                    finals.insert(key, value);
                    break;
                }
                Err(Error::NotFound) => {
                    recorder.complete(&invocation, EventKind::Ok, Value::Null, None);
                    finals.insert(key, None);
                    break;
                }
                Err(error) => {
                    recorder.complete(
                        &invocation,
                        EventKind::Fail,
                        Value::Null,
                        Some(error.to_string()),
                    );
                    if Instant::now() > give_up {
                        problems.push(format!(
                            "no linearizable read of key {key} after healing: {error}"
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    finals
}

/// The API addresses of the voters, as the leader sees them.
async fn voters(identities: &Identities, problems: &mut Vec<String>) -> Vec<std::net::SocketAddr> {
    let hosts: Vec<std::net::SocketAddr> = (0..NEXUS_HOSTS)
        .map(|index| nexus_addresses(index).1)
        .collect();
    let connect = |address| async move { Some(client(identities, vec![address], false)) };
    match membership::leader_status(&hosts, connect, Instant::now() + CONVERGE_WITHIN).await {
        Ok(status) => membership::members(&status)
            .into_iter()
            .filter_map(|(_, voter, address)| address.filter(|_| voter))
            .collect(),
        Err(status) => {
            problems.push(format!(
                "no leader reported the membership after healing: {status:?}"
            ));
            Vec::new()
        }
    }
}

/// Every voter, read alone and without a read index, must come to hold the
/// final values.
async fn converge(
    identities: &Identities,
    finals: &BTreeMap<u64, Option<u64>>,
    problems: &mut Vec<String>,
) {
    for endpoint in voters(identities, problems).await {
        let alone = client(identities, vec![endpoint], false);
        for (key, expected) in finals {
            let path = workload::register_path(*key);
            let give_up = Instant::now() + CONVERGE_WITHIN;
            loop {
                let seen = match alone.get_secret_stale(&path, None).await {
                    Ok(found) => Some(found.get("v").and_then(|v| v.parse::<u64>().ok())),
                    Err(Error::NotFound) => Some(None),
                    Err(_) => None,
                };
                if seen.as_ref() == Some(expected) {
                    break;
                }
                if Instant::now() > give_up {
                    problems.push(format!(
                        "the voter at {endpoint} holds {seen:?} for key {key}, the cluster {expected:?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The whole set, read through the leader once the cluster has healed.
async fn final_set(
    identities: &Identities,
    problems: &mut Vec<String>,
) -> Option<BTreeMap<u64, u64>> {
    let reader = client(identities, api_addresses(), true);
    let give_up = Instant::now() + CONVERGE_WITHIN;
    loop {
        match workload::read_set(&reader, "set").await {
            Ok(elements) => return Some(elements),
            Err(error) if Instant::now() > give_up => {
                problems.push(format!("no final read of the set after healing: {error}"));
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Every voter, asked alone, must come to list exactly the final set's
/// elements (its own state, after it caught up through a read index).
async fn converge_set(
    identities: &Identities,
    finals: &BTreeMap<u64, u64>,
    problems: &mut Vec<String>,
) {
    let expected: BTreeSet<u64> = finals.keys().copied().collect();
    for endpoint in voters(identities, problems).await {
        let alone = client(identities, vec![endpoint], false);
        let give_up = Instant::now() + CONVERGE_WITHIN;
        loop {
            let listed = alone.list_secrets().await.map(|paths| {
                paths
                    .iter()
                    .filter_map(|path| workload::set_element(path, "set"))
                    .collect::<BTreeSet<u64>>()
            });
            match listed {
                Ok(elements) if elements == expected => break,
                seen if Instant::now() > give_up => {
                    let seen = seen.map(|elements| elements.len());
                    problems.push(format!(
                        "the voter at {endpoint} lists {seen:?} set elements, the cluster {}",
                        expected.len()
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
