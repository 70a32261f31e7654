//! Faults, chosen and timed by the seed: partitions, lossy and slow links,
//! held messages, crashes with power loss, keepers restarted empty. One
//! fault at a time during the safety phase; everything is healed before the
//! healing phase.

use std::path::Path;
use std::time::Duration;

use spike_jepsen::recorder::Rng;

use crate::cluster::{
    KEEPERS, NEXUS_HOSTS, REPLICAS, keeper_name, keeper_names, nexus_name, nexus_names,
};
use crate::disk::SimDisk;

/// The host the workload's clients run on.
pub const WORKLOAD_HOST: &str = "workload";

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A replica cut off from everyone, clients included.
    Isolate(usize),
    /// A replica cut off from the other replicas only: clients still reach
    /// both sides.
    SplitReplicas(usize),
    /// Two replicas cannot talk; the third still talks to both.
    Bridge(usize, usize),
    /// A replica's links drop messages (they fail and come back at random).
    Lossy(usize),
    /// A replica's links deliver messages late, up to the given delay.
    Slow(usize, Duration),
    /// Everything a replica sends or receives is held, then released at
    /// once.
    Hold(usize),
    /// Replicas lose power (kill -9 and every unsynced write lost), and
    /// restart when the fault ends.
    Crash(Vec<usize>),
    /// Every keeper restarts empty.
    KeepersRestart,
    /// Fewer keepers than the threshold are up (the others are down until
    /// the fault ends, and come back empty).
    KeepersDown(Vec<usize>),
    /// The operator replaces a voter: removes replica `remove`, then adds
    /// the spare `add` (a fresh id). The workload host's operator does it
    /// through the SDK, retrying until the fault's end.
    Replace {
        /// The replica host removed.
        remove: usize,
        /// The spare host added.
        add: usize,
    },
    /// The replicas cannot reach the keepers.
    KeepersCut,
}

impl Fault {
    /// Picks a fault against the replicas in `members`; `spare` is the next
    /// spare host a replacement may add.
    fn pick(rng: &mut Rng, members: &[usize], spare: Option<usize>) -> Self {
        let replica = *rng.pick(members);
        let others: Vec<usize> = members.iter().copied().filter(|m| *m != replica).collect();
        let other = *rng.pick(&others);
        match rng.below(13) {
            0 => Self::Isolate(replica),
            1 => Self::SplitReplicas(replica),
            2 => Self::Bridge(replica, other),
            3 => Self::Lossy(replica),
            4 => Self::Slow(replica, Duration::from_millis(50 + rng.below(400))),
            5 => Self::Hold(replica),
            6 | 7 => Self::Crash(vec![replica]),
            8 => Self::Crash(vec![replica, other]),
            9 => Self::Crash(members.to_vec()),
            10 => match spare {
                Some(add) => Self::Replace {
                    remove: replica,
                    add,
                },
                None => Self::Crash(vec![replica]),
            },
            11 => {
                let up = rng.below(KEEPERS as u64) as usize;
                let down = (0..KEEPERS).filter(|keeper| *keeper != up).collect();
                Self::KeepersDown(down)
            }
            _ => {
                if rng.below(2) == 0 {
                    Self::KeepersRestart
                } else {
                    Self::KeepersCut
                }
            }
        }
    }

    /// Puts the fault in place.
    pub fn start(&self, sim: &mut turmoil::Sim<'_>, disk: &SimDisk, root: &Path) {
        match self {
            Self::Isolate(replica) => {
                let name = nexus_name(*replica);
                for other in everyone_but(&name) {
                    sim.partition(name.as_str(), other.as_str());
                }
            }
            Self::SplitReplicas(replica) => {
                let name = nexus_name(*replica);
                for other in nexus_names().iter().filter(|other| **other != name) {
                    sim.partition(name.as_str(), other.as_str());
                }
            }
            Self::Bridge(a, b) => {
                sim.partition(nexus_name(*a).as_str(), nexus_name(*b).as_str());
            }
            Self::Lossy(replica) => {
                let name = nexus_name(*replica);
                for other in everyone_but(&name) {
                    sim.set_link_fail_rate(name.as_str(), other.as_str(), 0.05);
                }
            }
            Self::Slow(replica, delay) => {
                let name = nexus_name(*replica);
                for other in everyone_but(&name) {
                    sim.set_link_max_message_latency(name.as_str(), other.as_str(), *delay);
                }
            }
            Self::Hold(replica) => {
                let name = nexus_name(*replica);
                for other in everyone_but(&name) {
                    sim.hold(name.as_str(), other.as_str());
                }
            }
            Self::Crash(replicas) => {
                for replica in replicas {
                    let name = nexus_name(*replica);
                    // Power first: what the dying process flushes on its way
                    // down must reach nothing.
                    disk.power_cut(&crate::cluster::data_dir(root, &name));
                    sim.crash(name.as_str());
                }
            }
            Self::KeepersRestart => {
                for keeper in keeper_names() {
                    sim.bounce(keeper.as_str());
                }
            }
            Self::KeepersDown(keepers) => {
                for keeper in keepers {
                    sim.crash(keeper_name(*keeper).as_str());
                }
            }
            // The operator in the workload host carries it out.
            Self::Replace { .. } => {}
            Self::KeepersCut => {
                for replica in nexus_names() {
                    for keeper in keeper_names() {
                        sim.partition(replica.as_str(), keeper.as_str());
                    }
                }
            }
        }
    }
}

/// Every host but `name`.
fn everyone_but(name: &str) -> Vec<String> {
    nexus_names()
        .into_iter()
        .chain(keeper_names())
        .chain([WORKLOAD_HOST.to_owned()])
        .filter(|other| other != name)
        .collect()
}

/// Heals everything: links repaired, held messages released, latency and
/// loss back to normal, crashed replicas restarted.
pub fn heal_all(sim: &mut turmoil::Sim<'_>, base_latency: Duration) {
    let hosts: Vec<String> = everyone_but("");
    for a in &hosts {
        for b in &hosts {
            if a < b {
                sim.repair(a.as_str(), b.as_str());
                sim.release(a.as_str(), b.as_str());
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), base_latency);
            }
        }
    }
    for host in nexus_names().into_iter().chain(keeper_names()) {
        if !sim.is_host_running(host.as_str()) {
            sim.bounce(host.as_str());
        }
    }
}

/// The faults of a run and when they start and end.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// (start, end, fault), in order, never overlapping.
    pub faults: Vec<(Duration, Duration, Fault)>,
}

impl Schedule {
    /// Faults from `first` until `until`: each held 0.5-4 s, then 0.5-2 s
    /// of quiet. Replacements are held long enough for a replica to join.
    pub fn new(seed: u64, first: Duration, until: Duration) -> Self {
        let mut rng = Rng::new(seed ^ 0x006e_656d_6573_6973);
        let mut faults = Vec::new();
        // The voters as planned (a replacement that fails leaves the
        // cluster otherwise; faults aimed at a non-member then do less).
        let mut members: Vec<usize> = (0..REPLICAS).collect();
        let mut spares = REPLICAS..NEXUS_HOSTS;
        let mut at = first;
        loop {
            let spare = spares.clone().next();
            let fault = Fault::pick(&mut rng, &members, spare);
            let hold = match fault {
                Fault::Replace { .. } => Duration::from_secs(4),
                _ => Duration::from_millis(500 + rng.below(3_500)),
            };
            if at + hold > until {
                break;
            }
            if let Fault::Replace { remove, add } = fault {
                spares.next();
                members.retain(|member| *member != remove);
                members.push(add);
            }
            faults.push((at, at + hold, fault));
            at += hold + Duration::from_millis(500 + rng.below(1_500));
        }
        Self { faults }
    }

    /// The replacements, for the operator: (start, end, removed replica
    /// host, added spare host).
    pub fn replacements(&self) -> Vec<(Duration, Duration, usize, usize)> {
        self.faults
            .iter()
            .filter_map(|(start, end, fault)| match fault {
                Fault::Replace { remove, add } => Some((*start, *end, *remove, *add)),
                _ => None,
            })
            .collect()
    }
}
