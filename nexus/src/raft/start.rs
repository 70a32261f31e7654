//! Starting Raft on a replica: open the log and the state machine, note
//! where the log stood, and start openraft with our timing.

use std::io;
use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{Config, SnapshotPolicy};

use super::contact::LeaderContact;
use super::format::ClusterFormat;
use super::inbound::Inbound;
use super::leadership::{Leadership, LogAtStart};
use super::log_store::LogStore;
use super::network::Network;
use super::state_machine::StateMachine;
use crate::metrics::RaftMetrics;
use crate::transport::peers::Peers;

/// What Raft is started with (validated configuration).
#[derive(Debug, Clone, Copy)]
pub struct RaftSettings {
    /// This replica's id.
    pub node_id: u64,
    /// Interval between the leader's heartbeats.
    pub heartbeat_interval: Duration,
    /// Shortest election timeout; the longest is twice this.
    pub election_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot.
    pub logs_kept: u64,
}

/// Why Raft did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The timing settings are inconsistent (the operator's settings).
    #[error("invalid raft settings: {0}")]
    Settings(String),
    /// The log or state database cannot be opened (the data directory).
    #[error(transparent)]
    Open(io::Error),
    /// Raft could not read its log or start.
    #[error("raft did not start: {0}")]
    Failed(String),
}

/// A running Raft: its leadership, its inbound RPCs and its state machine.
pub struct Started {
    /// Leadership and leader-side work.
    pub leadership: Leadership,
    /// The receiving side of Raft RPCs.
    pub inbound: Inbound,
    /// The applied state.
    pub machine: StateMachine,
    /// The cluster's on-disk format, as applied here.
    pub format: ClusterFormat,
}

/// Raft timing, by default heartbeats every 50 ms and elections after
/// 150-300 ms of silence. Followers honour the old leader's lease (the
/// maximum election timeout) before voting, so a failed leader is replaced
/// in roughly 0.3-0.6 s. Shorter would risk elections on a busy machine
/// that merely delayed a few heartbeats. openraft gives a heartbeat one
/// interval to come back, so replicas further apart than that need both
/// raised (--heartbeat-interval, --election-timeout).
fn raft_config(settings: &RaftSettings) -> Result<Config, StartError> {
    let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let election_timeout = millis(settings.election_timeout);
    Config {
        cluster_name: "spike".to_owned(),
        heartbeat_interval: millis(settings.heartbeat_interval),
        election_timeout_min: election_timeout,
        election_timeout_max: election_timeout.saturating_mul(2),
        install_snapshot_timeout: 2_000,
        max_payload_entries: 256,
        // A leader's own copy of an entry is fsynced while the entry is on
        // its way to the followers (`log_writer`), so a crash can take from
        // a leader an entry a quorum acknowledged: restarted, it must not
        // go on leading in its old term, where it would write another
        // entry under the same log id. It stands for election instead.
        enable_leader_restore: Some(false),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.logs_kept,
        ..Default::default()
    }
    .validate()
    .map_err(|error| StartError::Settings(error.to_string()))
}

/// Opens the log and state databases under `data_dir` and starts Raft,
/// reaching the other replicas through `peers`; digests at checkpoints go
/// to `integrity`.
pub async fn start(
    settings: RaftSettings,
    data_dir: &Path,
    peers: Peers,
    metrics: RaftMetrics,
    integrity: crate::integrity::Integrity,
) -> Result<Started, StartError> {
    let config = raft_config(&settings)?;
    // Raised to the cluster's format by the state machine as it opens and
    // applies; until then (a new replica), the oldest this build writes.
    let format = peers.format().clone();
    let mut log_store = LogStore::open(&data_dir.join("log.redb"), format.clone())
        .map_err(StartError::Open)?
        .with_metrics(metrics.clone());
    let failed = |error: &dyn std::fmt::Display| StartError::Failed(error.to_string());
    // The read floor: see `Leadership::read_index`.
    let log_at_start = LogAtStart {
        term: log_store
            .read_vote()
            .await
            .map_err(|e| failed(&e))?
            .map_or(0, |vote| vote.leader_id().term),
        last_index: log_store
            .get_log_state()
            .await
            .map_err(|e| failed(&e))?
            .last_log_id
            .map_or(0, |log_id| log_id.index),
    };
    let machine = StateMachine::open(
        &data_dir.join("state.redb"),
        &data_dir.join("snapshots"),
        format.clone(),
        integrity,
    )
    .map_err(StartError::Open)?
    .with_metrics(metrics.clone());
    let raft = openraft::Raft::new(
        settings.node_id,
        std::sync::Arc::new(config),
        Network::new(peers),
        log_store,
        machine.clone(),
    )
    .await
    .map_err(|e| failed(&e))?;
    let contact = LeaderContact::default();
    Ok(Started {
        leadership: Leadership::new(
            raft.clone(),
            settings.node_id,
            log_at_start,
            contact.clone(),
            format.clone(),
            metrics,
        ),
        inbound: Inbound::new(raft, machine.clone(), contact),
        machine,
        format,
    })
}
