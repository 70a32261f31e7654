//! The leader's autopilot, as Vault's and Consul's operators know it:
//! each member's health (recent contact and a short log lag), how long it
//! has been so, the cluster's failure tolerance, promotion of a new
//! replica to voter once it has been healthy for the stabilization time,
//! and (opt-in) removal of a voter that has been dead for a set time.
//!
//! The decisions are pure functions of one observation ([`judge`],
//! [`decide`]); [`Autopilot`] keeps the "since when" per member, and
//! its loop ([`act`]) acts on the node. Only the leader observes (openraft keeps replication metrics
//! only there); a new leader starts every member's clock afresh, so a
//! learner waits the full stabilization time again after a leader change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::raft::{Leadership, NexusNode, Replication};
use crate::state::store::StateReader;
use spike_sdk::domain::NodeId;

mod act;

/// A member not heard from for longer than this is unhealthy. Forty
/// default heartbeats: a slow machine does not flap, a dead replica shows
/// within seconds.
pub const LAST_CONTACT_MAX: Duration = Duration::from_secs(2);
/// A member further behind the leader's log than this is unhealthy
/// (Vault's `max_trailing_logs` default).
pub const LOG_LAG_MAX: u64 = 1_000;
/// How often the leader looks at its members.
const TICK: Duration = Duration::from_millis(250);

/// The autopilot's settings (`--autopilot-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutopilotConfig {
    /// How long a learner must stay healthy before it votes.
    pub stabilization_time: Duration,
    /// Remove a voter unhealthy this long; `None`: never.
    pub cleanup_dead_after: Option<Duration>,
    /// Fewest voters cleanup leaves.
    pub min_quorum: usize,
}

/// Whether a member with `last_contact` and `log_lag` is healthy.
pub fn judge(last_contact: Option<Duration>, log_lag: u64) -> bool {
    last_contact.is_some_and(|contact| contact <= LAST_CONTACT_MAX) && log_lag <= LOG_LAG_MAX
}

/// How many voters may fail with a quorum of healthy voters left.
pub fn failure_tolerance(voters: usize, healthy_voters: usize) -> usize {
    healthy_voters.saturating_sub(voters / 2 + 1)
}

/// One member's health as the leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Its id.
    pub id: u64,
    /// Its addresses.
    pub node: NexusNode,
    /// Whether it votes.
    pub voter: bool,
    /// Whether it is a permanent non-voter (a read replica the autopilot
    /// never promotes).
    pub non_voter: bool,
    /// Whether it is the leader (the one reporting).
    pub leader: bool,
    /// Milliseconds since it last acknowledged the leader; `None`: not in
    /// this leader's term.
    pub last_contact_ms: Option<u64>,
    /// Entries behind the leader's log.
    pub log_lag: u64,
    /// Contacted within [`LAST_CONTACT_MAX`] and at most [`LOG_LAG_MAX`]
    /// behind.
    pub healthy: bool,
    /// Milliseconds it has been healthy (or unhealthy) without a change,
    /// as this leader has watched it.
    pub stable_for_ms: u64,
}

/// The leader's health report of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The leader's id.
    pub leader_id: u64,
    /// Every member healthy.
    pub healthy: bool,
    /// Voters that may fail with a quorum of healthy voters left.
    pub failure_tolerance: u64,
    /// Voters.
    pub voters: u64,
    /// Healthy voters.
    pub healthy_voters: u64,
    /// Every member.
    pub members: Vec<MemberHealth>,
}

/// What the autopilot does next, at most one membership change a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make this learner a voter.
    Promote(u64),
    /// Remove this dead voter and retire its id.
    RemoveDead(u64),
}

/// The next action for `report`: first a learner healthy for the stabilization time (more
/// voters, more tolerance), else the voter dead longest past the cleanup
/// time, if removing it keeps `min_quorum` voters and a quorum of
/// healthy voters, before and after. Never the leader.
pub fn decide(report: &HealthReport, config: &AutopilotConfig) -> Option<Action> {
    let promote = report
        .members
        .iter()
        .filter(|member| !member.voter && !member.non_voter && member.healthy)
        .filter(|member| Duration::from_millis(member.stable_for_ms) >= config.stabilization_time)
        .min_by_key(|member| member.id);
    if let Some(member) = promote {
        return Some(Action::Promote(member.id));
    }
    let after = config.cleanup_dead_after?;
    let voters = usize::try_from(report.voters).ok()?;
    let healthy = usize::try_from(report.healthy_voters).ok()?;
    let remaining = voters.checked_sub(1)?;
    if remaining < config.min_quorum || healthy < voters / 2 + 1 || healthy < remaining / 2 + 1 {
        return None;
    }
    report
        .members
        .iter()
        .filter(|member| member.voter && !member.leader && !member.healthy)
        .filter(|member| Duration::from_millis(member.stable_for_ms) >= after)
        .max_by_key(|member| (member.stable_for_ms, std::cmp::Reverse(member.id)))
        .map(|member| Action::RemoveDead(member.id))
}

/// How long each member has been as it is, in one leader's term.
#[derive(Debug, Default)]
struct Watched {
    /// The term these clocks began in.
    term: u64,
    /// Per member: healthy or not, since when.
    since: BTreeMap<u64, (bool, Instant)>,
}

/// Counts and gauges of the autopilot, for `/metrics`.
#[derive(Debug, Default, Clone)]
struct AutopilotMetrics {
    promotions: Counter,
    dead_removed: Counter,
    failure_tolerance: Gauge,
    healthy: Gauge,
    unhealthy_members: Gauge,
}

impl AutopilotMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "autopilot_promotions",
            "Learners the leader's autopilot made voters after the stabilization time",
            self.promotions.clone(),
        );
        registry.register(
            "autopilot_dead_voters_removed",
            "Dead voters the leader's autopilot removed and retired (SPIKE_NEXUS_AUTOPILOT_CLEANUP_DEAD_AFTER)",
            self.dead_removed.clone(),
        );
        registry.register(
            "autopilot_failure_tolerance",
            "Voters that may fail with a quorum of healthy voters left, on the leader (-1 on other replicas)",
            self.failure_tolerance.clone(),
        );
        registry.register(
            "autopilot_healthy",
            "1 when the leader finds every member healthy, else 0 (-1 on other replicas)",
            self.healthy.clone(),
        );
        registry.register(
            "autopilot_unhealthy_members",
            "Members the leader finds unhealthy (-1 on other replicas)",
            self.unhealthy_members.clone(),
        );
    }
}

/// The leader's autopilot. Cheap to share.
pub struct Autopilot {
    leadership: Leadership,
    config: AutopilotConfig,
    watched: Mutex<Watched>,
    state: StateReader,
    metrics: AutopilotMetrics,
}

impl std::fmt::Debug for Autopilot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autopilot")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Autopilot {
    /// The autopilot of the replica `leadership` leads (or will), with
    /// `state` to read which members are permanent non-voters.
    pub fn new(leadership: Leadership, config: AutopilotConfig, state: StateReader) -> Self {
        Self {
            leadership,
            config,
            watched: Mutex::new(Watched::default()),
            state,
            metrics: AutopilotMetrics::default(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> AutopilotConfig {
        self.config
    }

    /// Registers the autopilot's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The health report, while this replica leads.
    pub fn report(&self) -> Option<HealthReport> {
        let replication = self.leadership.progress()?;
        let now = Instant::now();
        // Unreadable: every learner counts as a non-voter, so none is
        // promoted by mistake.
        let non_voters = self.state.non_voters().map_or_else(
            |error| {
                tracing::warn!(%error, "autopilot: cannot read the non-voters");
                None
            },
            |ids| Some(ids.into_iter().map(NodeId::get).collect()),
        );
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(observe(
            &mut watched,
            &replication,
            non_voters.as_ref(),
            self.leadership.term(),
            now,
        ))
    }

    fn record(&self, report: &HealthReport) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics
            .failure_tolerance
            .set(gauge(report.failure_tolerance));
        self.metrics.healthy.set(i64::from(report.healthy));
        let unhealthy = report.members.iter().filter(|m| !m.healthy).count();
        self.metrics
            .unhealthy_members
            .set(i64::try_from(unhealthy).unwrap_or(i64::MAX));
    }
}

fn stable_ms(report: &HealthReport, id: u64) -> u64 {
    report
        .members
        .iter()
        .find(|member| member.id == id)
        .map_or(0, |member| member.stable_for_ms)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Updates `watched` with one observation at `now` and reports it.
fn observe(
    watched: &mut Watched,
    replication: &Replication,
    non_voters: Option<&BTreeSet<u64>>,
    term: u64,
    now: Instant,
) -> HealthReport {
    if watched.term != term {
        *watched = Watched {
            term,
            since: BTreeMap::new(),
        };
    }
    let view = &replication.view;
    watched
        .since
        .retain(|id, _| view.members.iter().any(|member| member.id == *id));
    let members: Vec<MemberHealth> = view
        .members
        .iter()
        .map(|member| {
            let progress = replication.progress.get(&member.id);
            let last_contact = progress.and_then(|progress| progress.last_contact);
            let log_lag = progress.map_or(u64::MAX, |progress| progress.log_lag);
            let healthy = judge(last_contact, log_lag);
            let since = watched
                .since
                .entry(member.id)
                .and_modify(|(was, since)| {
                    if *was != healthy {
                        *was = healthy;
                        *since = now;
                    }
                })
                .or_insert((healthy, now))
                .1;
            MemberHealth {
                id: member.id,
                node: member.node,
                voter: member.voter,
                non_voter: !member.voter
                    && non_voters.is_none_or(|non_voters| non_voters.contains(&member.id)),
                leader: member.id == view.node_id,
                last_contact_ms: last_contact.map(millis),
                log_lag,
                healthy,
                stable_for_ms: millis(now.saturating_duration_since(since)),
            }
        })
        .collect();
    let voters = members.iter().filter(|member| member.voter).count();
    let healthy_voters = members
        .iter()
        .filter(|member| member.voter && member.healthy)
        .count();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    HealthReport {
        leader_id: view.node_id,
        healthy: members.iter().all(|member| member.healthy),
        failure_tolerance: count(failure_tolerance(voters, healthy_voters)),
        voters: count(voters),
        healthy_voters: count(healthy_voters),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, voter: bool, healthy: bool, stable_for_ms: u64) -> MemberHealth {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1000));
        MemberHealth {
            id,
            node: NexusNode {
                cluster_addr: address,
                api_addr: address,
            },
            voter,
            non_voter: false,
            leader: id == 1,
            last_contact_ms: Some(0),
            log_lag: 0,
            healthy,
            stable_for_ms,
        }
    }

    fn report(members: Vec<MemberHealth>) -> HealthReport {
        let voters = members.iter().filter(|m| m.voter).count();
        let healthy_voters = members.iter().filter(|m| m.voter && m.healthy).count();
        HealthReport {
            leader_id: 1,
            healthy: members.iter().all(|m| m.healthy),
            failure_tolerance: failure_tolerance(voters, healthy_voters) as u64,
            voters: voters as u64,
            healthy_voters: healthy_voters as u64,
            members,
        }
    }

    const CONFIG: AutopilotConfig = AutopilotConfig {
        stabilization_time: Duration::from_secs(10),
        cleanup_dead_after: Some(Duration::from_secs(30)),
        min_quorum: 3,
    };

    #[test]
    fn metrics_are_registered_under_their_names() {
        let metrics = AutopilotMetrics::default();
        let mut registry = Registry::with_prefix("spike");
        metrics.register(&mut registry);
        metrics.promotions.inc();
        metrics.failure_tolerance.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "spike_autopilot_promotions_total 1",
            "spike_autopilot_dead_voters_removed_total 0",
            "spike_autopilot_failure_tolerance 1",
            "spike_autopilot_healthy 0",
            "spike_autopilot_unhealthy_members 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn health_needs_recent_contact_and_a_short_lag() {
        assert!(judge(Some(Duration::from_millis(100)), 0));
        assert!(judge(Some(LAST_CONTACT_MAX), LOG_LAG_MAX));
        assert!(!judge(None, 0), "never heard from");
        assert!(!judge(Some(LAST_CONTACT_MAX + Duration::from_millis(1)), 0));
        assert!(!judge(Some(Duration::ZERO), LOG_LAG_MAX + 1));
    }

    #[test]
    fn tolerance_counts_healthy_voters_beyond_a_quorum() {
        assert_eq!(failure_tolerance(3, 3), 1);
        assert_eq!(failure_tolerance(3, 2), 0);
        assert_eq!(failure_tolerance(3, 1), 0, "floored at 0");
        assert_eq!(failure_tolerance(5, 5), 2);
        assert_eq!(failure_tolerance(4, 4), 1);
        assert_eq!(failure_tolerance(1, 1), 0);
    }

    #[test]
    fn a_learner_is_promoted_only_after_the_stabilization_time() {
        let waiting = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, true, 60_000),
            member(4, false, true, 9_999),
        ]);
        assert_eq!(decide(&waiting, &CONFIG), None);
        let ready = report(vec![
            member(1, true, true, 60_000),
            member(4, false, true, 10_000),
        ]);
        assert_eq!(decide(&ready, &CONFIG), Some(Action::Promote(4)));
        let unhealthy = report(vec![
            member(1, true, true, 60_000),
            member(4, false, false, 60_000),
        ]);
        assert_eq!(decide(&unhealthy, &CONFIG), None);
    }

    #[test]
    fn a_permanent_non_voter_is_never_promoted() {
        let mut read_replica = member(4, false, true, 600_000);
        read_replica.non_voter = true;
        let cluster = report(vec![member(1, true, true, 60_000), read_replica]);
        assert_eq!(decide(&cluster, &CONFIG), None);
    }

    #[test]
    fn a_voter_dead_past_the_cleanup_time_is_removed_above_the_minimum_quorum() {
        let cluster = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, true, 60_000),
            member(4, true, false, 30_000),
        ]);
        assert_eq!(decide(&cluster, &CONFIG), Some(Action::RemoveDead(4)));
        let not_yet = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, true, 60_000),
            member(4, true, false, 29_999),
        ]);
        assert_eq!(decide(&not_yet, &CONFIG), None);
        let disabled = AutopilotConfig {
            cleanup_dead_after: None,
            ..CONFIG
        };
        assert_eq!(decide(&cluster, &disabled), None);
    }

    #[test]
    fn cleanup_never_goes_below_the_minimum_quorum() {
        let three = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, false, 600_000),
        ]);
        assert_eq!(decide(&three, &CONFIG), None);
    }

    #[test]
    fn cleanup_never_removes_when_that_would_lose_the_quorum_of_healthy_voters() {
        // Five voters, three dead: two healthy are no quorum of five or four.
        let cluster = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, false, 600_000),
            member(4, true, false, 600_000),
            member(5, true, false, 600_000),
        ]);
        assert_eq!(decide(&cluster, &CONFIG), None);
        // Five voters, two dead: the one dead longest goes first.
        let cluster = report(vec![
            member(1, true, true, 60_000),
            member(2, true, true, 60_000),
            member(3, true, true, 60_000),
            member(4, true, false, 100_000),
            member(5, true, false, 200_000),
        ]);
        assert_eq!(decide(&cluster, &CONFIG), Some(Action::RemoveDead(5)));
    }

    #[test]
    fn the_leader_is_never_removed() {
        let mut leader = member(1, true, false, 600_000);
        leader.leader = true;
        let cluster = report(vec![
            leader,
            member(2, true, true, 60_000),
            member(3, true, true, 60_000),
            member(4, true, true, 60_000),
            member(5, true, true, 60_000),
        ]);
        assert_eq!(decide(&cluster, &CONFIG), None);
    }
}
