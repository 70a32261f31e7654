//! The clients: the Jepsen harness's register, set, lifecycle, policy and
//! root-key workloads through the real SDK, from one simulated host, then
//! the harness's final reads and convergence checks on the healed cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spike_jepsen::check::{self, Anomaly};
use spike_jepsen::converge::{self, Replica};
use spike_jepsen::history::{Completion, Event, EventKind};
use spike_jepsen::membership::{self, outcome, until};
use spike_jepsen::op::{Op, Reply};
use spike_jepsen::perform::{self, secret_values};
use spike_jepsen::recorder::{Invocation, Recorder, Rng};
use spike_jepsen::workload::{self, ClientSpec, SetKind, Workload};
use spike_sdk::client::NexusClient;
use spike_sdk::svid::Identity;
use tokio::time::Instant;

use crate::cluster::{Identities, KEEPERS, NEXUS_HOSTS, THRESHOLD, api_addresses, nexus_addresses};

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
    /// Versions written, deleted, undeleted, destroyed and read back by
    /// number on a few keys: a destroyed version never returns, a version
    /// never changes content.
    Lifecycle,
    /// An admin grants and revokes a workload's read access while readers
    /// with that workload's SVID read: denied after every acknowledged
    /// revocation, allowed after every acknowledged grant.
    Policy,
    /// Unique adds while an operator rekeys (a new root key, shares pushed
    /// to the keepers) and rotates the data key: the set workload's check,
    /// then every replica must hold the same root key and decrypt the
    /// acknowledged secrets itself.
    Rootkey,
    /// Not a workload: each seed runs one of the five, by its number
    /// (`seed % 5`: register, set, lifecycle, policy, rootkey), as a
    /// campaign does.
    All,
}

impl SimWorkload {
    /// The workloads `All` cycles through, in order.
    pub const CYCLE: [Self; 5] = [
        Self::Register,
        Self::Set,
        Self::Lifecycle,
        Self::Policy,
        Self::Rootkey,
    ];

    /// The workload seed `seed` runs.
    pub fn for_seed(self, seed: u64) -> Self {
        match self {
            Self::All => Self::CYCLE[(seed % Self::CYCLE.len() as u64) as usize],
            workload => workload,
        }
    }

    /// The harness's workload the clients run.
    fn clients(self) -> Workload {
        match self {
            Self::Register | Self::All => Workload::Register,
            Self::Set => Workload::Set,
            Self::Lifecycle => Workload::Lifecycle,
            Self::Policy => Workload::Policy,
            Self::Rootkey => Workload::Rootkey,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Set => "set",
            Self::Lifecycle => "lifecycle",
            Self::Policy => "policy",
            Self::Rootkey => "rootkey",
            Self::All => "all",
        }
    }
}

/// Register keys the clients share: few, so operations contend.
pub const KEYS: u64 = 4;
/// Concurrent clients by default; odd ones are pinned to one replica.
pub const CLIENTS: u64 = 6;
/// How long after healing every replica has to converge.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
/// How long the policy workload's admin may take to store the secret its
/// readers read, before the clients start (the cluster elects a leader
/// and stores its root key first).
const SETUP_WITHIN: Duration = Duration::from_secs(30);
/// The process number of the policy workload's admin and the root-key
/// workload's operator (the harness's `ADMIN_PROCESS`).
const ADMIN_PROCESS: u64 = 0;
/// The operator's pause after each rekey or rotation: 300 ms and up to
/// this much more (as the harness's operator).
const OPERATOR_PAUSE_SPREAD_MS: u64 = 500;

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
    /// The set or root-key workload's final read (element -> versions),
    /// if it had one.
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
    client_as(identities, &identities.superuser, endpoints, follow)
}

fn client_as(
    identities: &Identities,
    identity: &Identity,
    endpoints: Vec<std::net::SocketAddr>,
    follow: bool,
) -> NexusClient {
    let settings = workload::client_settings(endpoints, follow);
    NexusClient::new(identity.clone(), identities.trust_roots.clone(), settings)
        .unwrap_or_else(|error| panic!("client settings are valid: {error}"))
}

/// Runs the clients for `run_for`, then the final reads and the
/// convergence check, and leaves the findings in `findings`.
pub async fn run(
    identities: Identities,
    workload: SimWorkload,
    clients: u64,
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
    if workload == SimWorkload::Policy {
        // The secret the readers read; its absence would make every read
        // "not found" rather than allowed or denied.
        let admin = client(&identities, endpoints.clone(), true);
        let secret = workload::policy_secret();
        let values = secret_values(1);
        if let Err(error) =
            converge::retry(SETUP_WITHIN, || admin.put_secret(&secret, &values, None)).await
        {
            panic!("the policy workload's secret was never stored: {error}");
        }
    }
    let mut workers = Vec::new();
    for process in 0..clients {
        let node = endpoints[process as usize % endpoints.len()];
        let pinned = process % 2 == 1;
        // The policy workload's readers act as the workload it grants and
        // revokes; its admin and every other client as the superuser.
        let identity = if workload == SimWorkload::Policy && process != ADMIN_PROCESS {
            &identities.app
        } else {
            &identities.superuser
        };
        let client = if pinned {
            client_as(&identities, identity, vec![node], false)
        } else {
            let mut order = endpoints.clone();
            let shift = process as usize % order.len();
            order.rotate_left(shift);
            client_as(&identities, identity, order, true)
        };
        if workload == SimWorkload::Rootkey && process == ADMIN_PROCESS {
            let recorder = recorder.clone();
            workers.push(tokio::spawn(async move {
                rekey_and_rotate(client, &recorder, seed, deadline).await;
            }));
            continue;
        }
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
    let (final_set, anomalies) =
        final_checks(&identities, workload, clients, seed, &recorder).await;
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
/// reads go into the history), then every voter must converge to them;
/// under the root-key workload every voter must also hold the same root
/// key and decrypt the acknowledged secrets itself.
async fn final_checks(
    identities: &Identities,
    workload: SimWorkload,
    clients: u64,
    seed: u64,
    recorder: &Recorder,
) -> (Option<BTreeMap<u64, u64>>, Vec<Anomaly>) {
    let reader = client(identities, api_addresses(), true);
    let mut anomalies = Vec::new();
    let final_set = match workload {
        SimWorkload::Register => {
            match converge::final_register_reads(&reader, KEYS, clients, recorder, CONVERGE_WITHIN)
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
        SimWorkload::Set | SimWorkload::Rootkey => {
            let kind = if workload == SimWorkload::Set {
                SetKind::Set
            } else {
                SetKind::Rootkey
            };
            match converge::final_set(&reader, kind, CONVERGE_WITHIN).await {
                Ok(elements) => {
                    let listed: BTreeSet<u64> = elements.keys().copied().collect();
                    let voters = voters(identities, &mut anomalies).await;
                    let diverged =
                        converge::set_converges(&voters, kind, &listed, CONVERGE_WITHIN).await;
                    anomalies.extend(diverged);
                    if kind == SetKind::Rootkey {
                        match converge::root_keys_converge(
                            &voters,
                            &elements,
                            seed,
                            CONVERGE_WITHIN,
                        )
                        .await
                        {
                            Ok((_, diverged)) => anomalies.extend(diverged),
                            Err(error) => anomalies.push(error.anomaly()),
                        }
                    }
                    Some(elements)
                }
                Err(error) => {
                    anomalies.push(error.anomaly());
                    None
                }
            }
        }
        // Their checkers judge the history alone (as in the harness).
        SimWorkload::Lifecycle | SimWorkload::Policy | SimWorkload::All => None,
    };
    (final_set, anomalies)
}

/// The root-key workload's operator: rekeys (a new root key split into
/// one share per keeper of this cluster, the harness's operator assumes
/// five) and rotates the data key in turn, each followed by a pause, until
/// `deadline`; recorded like every other client.
async fn rekey_and_rotate(nexus: NexusClient, recorder: &Recorder, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed ^ ADMIN_PROCESS.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut rekey = true;
    // Rekeys and rotations name no secret; the path is unused.
    let unused = workload::policy_secret();
    while Instant::now() < deadline {
        let op = if rekey { Op::Rekey } else { Op::Rotate };
        let invocation = Invocation {
            process: ADMIN_PROCESS,
            op,
            key: None,
            node: nexus.known_leader().map(|address| address.to_string()),
        };
        if rekey {
            recorder.invoke(&invocation);
            let done = match nexus.rekey(KEEPERS as u8, THRESHOLD as u8).await {
                Ok(id) => Completion::Ok(Reply::Rekey(Some(id))),
                Err(error) => perform::write_failed(&error, Reply::Rekey(None)),
            };
            recorder.complete(&invocation, done);
        } else {
            perform::record(recorder, &invocation, &nexus, &unused).await;
        }
        rekey = !rekey;
        let pause_ms = 300 + rng.below(OPERATOR_PAUSE_SPREAD_MS);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
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
