//! The clients: Jepsen's register or set workload through the real SDK,
//! from one simulated host, then the harness's final reads and
//! convergence checks on the healed cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spike_jepsen::check::{self, Anomaly};
use spike_jepsen::converge::{self, Replica};
use spike_jepsen::history::{Event, EventKind};
use spike_jepsen::membership::{self, outcome, until};
use spike_jepsen::recorder::Recorder;
use spike_jepsen::workload::{self, ClientSpec, SetKind, Workload};
use spike_sdk::client::NexusClient;
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
    /// Found after healing: divergent replicas, no recovery.
    pub anomalies: Vec<Anomaly>,
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
    let (final_set, anomalies) = final_checks(&identities, workload, &recorder).await;
    let events = recorder.events();
    let last_write_ok = last_acknowledged_write(&events);
    *findings.lock().unwrap_or_else(PoisonError::into_inner) = Some(Observed {
        membership,
        events,
        anomalies,
        final_set,
        last_write_ok,
    });
}

/// After healing: the final reads through the leader (the register
/// reads go into the history), then every voter must converge to them.
async fn final_checks(
    identities: &Identities,
    workload: SimWorkload,
    recorder: &Recorder,
) -> (Option<BTreeMap<u64, u64>>, Vec<Anomaly>) {
    let reader = client(identities, api_addresses(), true);
    let mut anomalies = Vec::new();
    let final_set = match workload {
        SimWorkload::Register => {
            match converge::final_register_reads(&reader, KEYS, CLIENTS, recorder, CONVERGE_WITHIN)
                .await
            {
                Ok(finals) => {
                    let voters = voters(identities, &mut anomalies).await;
                    let diverged =
                        converge::registers_converge(&voters, &finals, CONVERGE_WITHIN).await;
                    anomalies.extend(diverged);
                }
                Err(error) => anomalies.push(error.anomaly()),
            }
            None
        }
        SimWorkload::Set => match converge::final_set(&reader, SetKind::Set, CONVERGE_WITHIN).await
        {
            Ok(elements) => {
                let listed: BTreeSet<u64> = elements.keys().copied().collect();
                let voters = voters(identities, &mut anomalies).await;
                let diverged =
                    converge::set_converges(&voters, SetKind::Set, &listed, CONVERGE_WITHIN).await;
                anomalies.extend(diverged);
                Some(elements)
            }
            Err(error) => {
                anomalies.push(error.anomaly());
                None
            }
        },
    };
    (final_set, anomalies)
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
        // Replica i is node i + 1: never 0.
        let node = |index: usize| {
            spike_sdk::domain::NodeId::new(index as u64 + 1).expect("replica ids start at 1")
        };
        let (removed_id, added_id) = (node(remove), node(add));
        let removed = until(deadline, || admin.remove_member(removed_id)).await;
        let (cluster, api) = nexus_addresses(add);
        let added = until(deadline, || admin.add_member(added_id, cluster, api)).await;
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

/// When (since the start) the last write was acknowledged; `None` also
/// when the history does not pair (the checkers report that).
fn last_acknowledged_write(events: &[Event]) -> Option<Duration> {
    check::pair(events)
        .ok()?
        .iter()
        .filter(|operation| operation.op.is_write() && operation.outcome() == EventKind::Ok)
        .filter_map(|operation| operation.completion)
        .map(|completion| Duration::from_nanos(completion.time_ns))
        .max()
}

/// The voters as the leader sees them, each with a client bound to it
/// alone.
async fn voters(identities: &Identities, anomalies: &mut Vec<Anomaly>) -> Vec<Replica> {
    let hosts: Vec<std::net::SocketAddr> = (0..NEXUS_HOSTS)
        .map(|index| nexus_addresses(index).1)
        .collect();
    let connect = |address| async move { Some(client(identities, vec![address], false)) };
    match membership::leader_status(&hosts, connect, Instant::now() + CONVERGE_WITHIN).await {
        Ok(status) => membership::members(&status)
            .into_iter()
            .filter_map(|(_, voter, address)| address.filter(|_| voter))
            .map(|address| Replica {
                name: address.to_string(),
                nexus: client(identities, vec![address], false),
            })
            .collect(),
        Err(status) => {
            anomalies.push(Anomaly::NotRecovered {
                detail: format!("no leader reported the membership after healing: {status:?}"),
            });
            Vec::new()
        }
    }
}
