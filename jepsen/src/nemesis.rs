//! Nemeses: faults injected on a schedule (a quiet spell, a fault held for
//! a while, its healing), every one healed at the end.

use std::time::Duration;

use tokio::time::Instant;

use spike_sdk::client::NexusClient;
use spike_sdk::domain::NodeId;

use anyhow::Context;

use crate::cluster::Cluster;
use crate::membership;
use crate::proxy::Impairment;
use crate::recorder::{Recorder, Rng};

/// The faults a run can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// No faults: the baseline.
    None,
    /// Cut one random replica off from the other replicas.
    PartitionOne,
    /// Cut the leader off from the other replicas.
    PartitionLeader,
    /// Split the replicas into a random minority and majority.
    PartitionHalves,
    /// Each replica reaches only its two neighbours (5 replicas to matter).
    PartitionRing,
    /// Two halves that reach each other only through one bridge replica.
    PartitionBridge,
    /// kill -9 of the leader, restarted at healing.
    KillLeader,
    /// kill -9 of a random replica.
    KillRandom,
    /// kill -9 of a majority of replicas.
    KillMajority,
    /// SIGSTOP of the leader, SIGCONT at healing.
    PauseLeader,
    /// SIGSTOP of a random replica.
    PauseRandom,
    /// kill -9 of every keeper, restarted empty at healing.
    KeepersKill,
    /// Cut every replica off from every keeper.
    KeepersPartition,
    /// Move the leader's clock a minute to a day, ahead or back (through
    /// the replicas' test clock offset), and back at healing.
    ClockJump,
    /// Drop 5 to 30 % of the packets, each way, of the leader or of every
    /// replica (iptables' random match; through the proxies, that share of
    /// chunks pays a retransmission timeout).
    LossyLinks,
    /// Cap the leader's or a random replica's bandwidth at 32 to 512
    /// kbit/s, with a queue of up to 1 s: replication and answers wait
    /// behind each other.
    SlowLinks,
    /// Delay every packet of the leader or of every replica: mostly within
    /// what the cluster's timing allows (a round trip under the heartbeat
    /// interval; runs of this nemesis tune the replicas for distance, 500
    /// ms heartbeats), one time in four up to four times beyond. Needs the
    /// proxies (`--proxies`): this kernel has no netem.
    DelayedLinks,
    /// Replace a random replica (the leader too) by a spare under a fresh
    /// id, as an operator would: remove it, stop it for good, start the
    /// spare with --join and add it. Each fault uses up one spare.
    Membership,
    /// kill -9 of the SPIRE server and every SPIRE agent (`--identity
    /// spire`), restarted at healing: the processes keep serving on the
    /// SVIDs they hold.
    SpireKill,
    /// A random one of the above for each fault (slow links instead of
    /// delayed ones in namespaces; SPIRE's fault only on SPIRE).
    Mix,
}

/// Faults `Mix` chooses from.
const MIX: [Nemesis; 18] = [
    Nemesis::PartitionOne,
    Nemesis::PartitionLeader,
    Nemesis::PartitionHalves,
    Nemesis::PartitionRing,
    Nemesis::PartitionBridge,
    Nemesis::KillLeader,
    Nemesis::KillRandom,
    Nemesis::KillMajority,
    Nemesis::PauseLeader,
    Nemesis::PauseRandom,
    Nemesis::KeepersKill,
    Nemesis::KeepersPartition,
    Nemesis::ClockJump,
    Nemesis::LossyLinks,
    Nemesis::SlowLinks,
    Nemesis::DelayedLinks,
    Nemesis::Membership,
    Nemesis::SpireKill,
];

/// The replicas' default Raft heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);

/// How long a replacement may take, removal and addition each.
const MEMBERSHIP_STEP_WITHIN: Duration = Duration::from_secs(10);

impl Nemesis {
    /// Whether it needs spare replicas.
    pub fn needs_spares(self) -> bool {
        matches!(self, Self::Membership | Self::Mix)
    }

    /// Whether it needs the harness's per-link proxies.
    pub fn needs_proxies(self) -> bool {
        self == Self::DelayedLinks
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultWindow {
    /// Which fault.
    pub fault: Nemesis,
    /// Processes it hit.
    pub targets: Vec<String>,
    /// When it was in place, ns since the run began.
    pub start_ns: u64,
    /// When it was healed.
    pub end_ns: u64,
}

/// The leader's process name, as the first replica that answers says.
pub async fn leader_name(client: &NexusClient) -> Option<String> {
    let status = client.cluster_status().await.ok()?;
    status.leader_id.map(|id| format!("nexus-{id}"))
}

/// Replica pairs to cut so that only `links` remain (by position).
fn cuts_except(
    replicas: &[String],
    connected: impl Fn(usize, usize) -> bool,
) -> Vec<(String, String)> {
    let mut cuts = Vec::new();
    for a in 0..replicas.len() {
        for b in a + 1..replicas.len() {
            if !connected(a, b) {
                cuts.push((replicas[a].clone(), replicas[b].clone()));
            }
        }
    }
    cuts
}

/// Injects `fault`; returns the targets (what healing must undo is
/// "everything", so it need not be remembered).
async fn inject(
    fault: Nemesis,
    cluster: &Cluster,
    client: &NexusClient,
    rng: &mut Rng,
) -> anyhow::Result<Vec<String>> {
    let replicas = cluster.replicas()?;
    let n = replicas.len();
    let random = replicas[rng.below(n as u64) as usize].clone();
    let leader = leader_name(client).await.unwrap_or_else(|| random.clone());
    let mut shuffled = replicas.clone();
    for i in (1..n).rev() {
        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let isolate = |target: &str| -> anyhow::Result<()> {
        for other in replicas.iter().filter(|other| *other != target) {
            cluster.cut(target, other)?;
        }
        Ok(())
    };
    Ok(match fault {
        Nemesis::None | Nemesis::Mix => Vec::new(),
        Nemesis::PartitionOne => {
            isolate(&random)?;
            vec![random]
        }
        Nemesis::PartitionLeader => {
            isolate(&leader)?;
            vec![leader]
        }
        Nemesis::PartitionHalves => {
            let minority = &shuffled[..(n - 1) / 2];
            for a in minority {
                for b in shuffled[(n - 1) / 2..].iter() {
                    cluster.cut(a, b)?;
                }
            }
            minority.to_vec()
        }
        Nemesis::PartitionRing => {
            let ring = |a: usize, b: usize| (a + 1) % n == b || (b + 1) % n == a;
            for (a, b) in cuts_except(&shuffled, ring) {
                cluster.cut(&a, &b)?;
            }
            shuffled.clone()
        }
        Nemesis::PartitionBridge => {
            // shuffled[0] is the bridge; the rest split in two halves.
            let half = (n - 1) / 2;
            let side = |i: usize| usize::from(i > half);
            let bridged = |a: usize, b: usize| a == 0 || b == 0 || side(a) == side(b);
            for (a, b) in cuts_except(&shuffled, bridged) {
                cluster.cut(&a, &b)?;
            }
            vec![shuffled[0].clone()]
        }
        Nemesis::KillLeader => {
            cluster.kill(&leader)?;
            vec![leader]
        }
        Nemesis::KillRandom => {
            cluster.kill(&random)?;
            vec![random]
        }
        Nemesis::KillMajority => {
            let majority = shuffled[..n / 2 + 1].to_vec();
            for name in &majority {
                cluster.kill(name)?;
            }
            majority
        }
        Nemesis::PauseLeader => {
            cluster.pause(&leader, true)?;
            vec![leader]
        }
        Nemesis::PauseRandom => {
            cluster.pause(&random, true)?;
            vec![random]
        }
        Nemesis::KeepersKill => {
            let keepers = cluster.keepers()?;
            for keeper in &keepers {
                cluster.kill(keeper)?;
            }
            keepers
        }
        Nemesis::ClockJump => {
            let minutes = 1 + rng.below(24 * 60) as i64;
            let sign = if rng.below(2) == 0 { 1 } else { -1 };
            cluster.set_clock_offset(&leader, sign * minutes * 60_000)?;
            vec![format!("{leader} {:+}min", sign * minutes)]
        }
        Nemesis::LossyLinks => {
            let percent = 5 + rng.below(26) as u8;
            let targets = if rng.below(2) == 0 {
                vec![leader]
            } else {
                replicas.clone()
            };
            let loss = Impairment {
                loss_percent: percent,
                ..Impairment::default()
            };
            for target in &targets {
                cluster.impair(target, loss)?;
            }
            targets
                .into_iter()
                .map(|target| format!("{target} {percent}% loss"))
                .collect()
        }
        Nemesis::SlowLinks => {
            let rate = 32 << rng.below(5);
            let target = if rng.below(2) == 0 { leader } else { random };
            let slow = Impairment {
                rate_kbit: Some(rate),
                ..Impairment::default()
            };
            cluster.impair(&target, slow)?;
            vec![format!("{target} {rate} kbit/s")]
        }
        Nemesis::DelayedLinks => {
            // Two delayed ends add up, both ways: a fifth of the heartbeat
            // each keeps the round trip within it.
            let within = (cluster.heartbeat / 5).as_millis() as u64;
            let most = if rng.below(4) == 0 {
                within * 4
            } else {
                within
            };
            let delay = Duration::from_millis(1 + rng.below(most.max(1)));
            let targets = if rng.below(2) == 0 {
                vec![leader]
            } else {
                replicas.clone()
            };
            let late = Impairment {
                delay,
                ..Impairment::default()
            };
            for target in &targets {
                cluster.impair(target, late)?;
            }
            targets
                .into_iter()
                .map(|target| format!("{target} +{}ms", delay.as_millis()))
                .collect()
        }
        Nemesis::Membership => replace(cluster, &random).await?,
        Nemesis::SpireKill => {
            let spire = cluster.spire_processes()?;
            for name in spire.iter().rev() {
                cluster.kill(name)?;
            }
            spire
        }
        Nemesis::KeepersPartition => {
            let keepers = cluster.keepers()?;
            for replica in &replicas {
                for keeper in &keepers {
                    cluster.cut(replica, keeper)?;
                }
            }
            keepers
        }
    })
}

/// Replaces replica `victim` by the next spare through the SDK, as an
/// operator would; returns what happened, for the fault window. A step
/// whose outcome is unknown (a retried removal is refused once the first
/// went through) is judged by the leader's membership.
async fn replace(cluster: &Cluster, victim: &str) -> anyhow::Result<Vec<String>> {
    let Some((spare, spare_replica)) = cluster.spares()?.into_iter().next() else {
        return Ok(vec!["no spare left".to_owned()]);
    };
    let members = cluster.members()?;
    let victim_id = members
        .iter()
        .find(|member| member.name == victim)
        .and_then(|member| member.node_id())
        .with_context(|| format!("{victim} has no id"))?;
    let (spare_id, cluster_addr, api_addr) = (
        spare_replica.id,
        spare_replica.cluster_addr,
        spare_replica.api_addr,
    );
    let (victim_node, spare_node) = (NodeId::new(victim_id)?, NodeId::new(spare_id)?);
    let endpoints = cluster.api_addresses()?;
    let admin = cluster.client(endpoints.clone()).await?;
    let membership_now = |deadline| {
        let endpoints = endpoints.clone();
        async move {
            let connect = |address| async move {
                cluster
                    .client_with(vec![address], false, "superuser")
                    .await
                    .ok()
            };
            // None when no leader answers: nothing is known then.
            membership::leader_status(&endpoints, connect, deadline)
                .await
                .ok()
                .map(|status| membership::members(&status))
        }
    };

    let deadline = Instant::now() + MEMBERSHIP_STEP_WITHIN;
    let removed = membership::until(deadline, || admin.remove_member(victim_node)).await;
    let gone = removed.is_ok()
        || membership_now(deadline)
            .await
            .is_some_and(|members| !members.iter().any(|(id, ..)| *id == victim_id));
    if !gone {
        return Ok(vec![format!(
            "{victim} stays: removal {}",
            membership::outcome(&removed)
        )]);
    }
    cluster.retire(victim)?;

    cluster.join(&spare.name)?;
    let deadline = Instant::now() + MEMBERSHIP_STEP_WITHIN;
    let added = membership::until(deadline, || {
        admin.add_member(spare_node, cluster_addr, api_addr)
    })
    .await;
    let voting = added.is_ok()
        || membership_now(deadline).await.is_some_and(|members| {
            members
                .iter()
                .any(|(id, voter, _)| *id == spare_id && *voter)
        });
    if !voting {
        // Never counted on: stopped, so convergence is not asked of it.
        cluster.retire(&spare.name)?;
    }
    Ok(vec![format!(
        "{victim} replaced by {}: removal {}, addition {}",
        spare.name,
        membership::outcome(&removed),
        membership::outcome(&added)
    )])
}

/// Undoes every fault: links healed, processes woken and started.
pub fn heal_all(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.heal_network()?;
    // The SPIRE server before its agents, the agents before the processes
    // that ask them for SVIDs.
    for name in cluster.spire_processes()? {
        cluster.start(&name)?;
    }
    for replica in cluster.replicas()? {
        cluster.set_clock_offset(&replica, 0)?;
    }
    for member in cluster.members()? {
        if member.name.starts_with("nexus-") || member.name.starts_with("keeper-") {
            cluster.pause(&member.name, false)?;
        }
    }
    // Keepers first, so restarted replicas find their shares.
    for keeper in cluster.keepers()? {
        cluster.start(&keeper)?;
    }
    for replica in cluster.replicas()? {
        cluster.start(&replica)?;
    }
    Ok(())
}

/// The schedule: until `deadline`, a quiet spell of 2 to 4 s, then a fault
/// held 3 to 6 s, then healing. Returns the windows.
pub async fn run(
    nemesis: Nemesis,
    cluster: &Cluster,
    client: &NexusClient,
    recorder: &Recorder,
    seed: u64,
    deadline: Instant,
) -> anyhow::Result<Vec<FaultWindow>> {
    let mut rng = Rng::new(seed ^ 0x6E65_6D65_7369_7321);
    let mut windows = Vec::new();
    if nemesis == Nemesis::None {
        tokio::time::sleep_until(deadline).await;
        return Ok(windows);
    }
    loop {
        let quiet = Duration::from_millis(2000 + rng.below(2000));
        let hold = Duration::from_millis(3000 + rng.below(3000));
        if Instant::now() + quiet + hold > deadline {
            break;
        }
        tokio::time::sleep(quiet).await;
        let fault = if nemesis == Nemesis::Mix {
            match *rng.pick(&MIX) {
                fault if fault.needs_proxies() && !cluster.proxied() => Nemesis::SlowLinks,
                // On the dev Workload API there is no SPIRE to kill.
                Nemesis::SpireKill if cluster.spire_processes()?.is_empty() => Nemesis::KillRandom,
                fault => fault,
            }
        } else {
            nemesis
        };
        let targets = inject(fault, cluster, client, &mut rng).await?;
        // The window opens once the fault is in place.
        let start_ns = recorder.now_ns();
        tokio::time::sleep(hold).await;
        heal_all(cluster)?;
        windows.push(FaultWindow {
            fault,
            targets,
            start_ns,
            end_ns: recorder.now_ns(),
        });
    }
    tokio::time::sleep_until(deadline).await;
    Ok(windows)
}
