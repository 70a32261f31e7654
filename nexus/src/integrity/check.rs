//! The corruption checks' loop on every replica (see the parent module):
//! the leader proposes checkpoints, every replica compares its digests
//! with the voters', and a corrupt one hands leadership away. Apart from
//! the record and the judging, which the state machine uses, so that
//! Raft's state machine does not depend on Raft's leadership.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::atomic::Ordering;

use super::{ASK_TIMEOUT, Alarm, COMPARE_DELAY_MAX, DigestsReply, Integrity, Verdict, hex, judge};
use crate::raft::codec::decode;
use crate::raft::{LeaderError, Leadership};
use crate::state::command::{Command, MembershipCommand, Request};
use crate::transport::peers::{Peers, stamp};
use crate::transport::proto::Frame;

/// Asks the replica at `address` for its digests: `None` if it cannot be
/// reached or predates the check.
async fn ask(peers: &Peers, address: std::net::SocketAddr) -> Option<DigestsReply> {
    let mut client = peers.client(address);
    let mut request = tonic::Request::new(Frame {
        payload: Vec::new(),
    });
    request.set_timeout(ASK_TIMEOUT);
    stamp(&mut request, peers.format().get());
    match client.state_digests(request).await {
        Ok(reply) => decode("state digests", &reply.into_inner().payload).ok(),
        Err(_) => None,
    }
}

/// The checks of one replica, every `interval` (never if zero): as the
/// leader, propose a checkpoint; then compare with the voters. While
/// corrupt, it hands leadership to another voter whenever it finds itself
/// leading (checked at every change of leader, not only every interval:
/// a leader answers forwarded writes from its own state).
pub async fn run(integrity: Integrity, leadership: Leadership, peers: Peers, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_diverged = Vec::new();
    let mut transfers = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if leadership.is_leader() && !integrity.is_corrupt() {
                    propose(&leadership).await;
                    tokio::time::sleep((interval / 2).min(COMPARE_DELAY_MAX)).await;
                }
                compare(&integrity, &leadership, &peers, &mut last_diverged).await;
            }
            () = leadership.changes().changed() => {}
        }
        if integrity.is_corrupt() && leadership.is_leader() {
            hand_leadership_away(&leadership, transfers).await;
            transfers = transfers.wrapping_add(1);
        }
    }
}

async fn propose(leadership: &Leadership) {
    let request = Request {
        command: Command::Membership(MembershipCommand::DigestCheckpoint),
        session: None,
        time_ns: 0,
    };
    match leadership.write(request).await {
        Ok(_) => {}
        // A new cluster writes format 3 a few seconds after it starts; a
        // cluster mid-upgrade, once every replica reads it.
        Err(LeaderError::FormatNotYet { .. }) => {
            tracing::debug!("digest checkpoints wait for on-disk format 3");
        }
        Err(LeaderError::NotLeader { .. }) => {}
        Err(error) => tracing::debug!(%error, "proposing a digest checkpoint"),
    }
}

async fn compare(
    integrity: &Integrity,
    leadership: &Leadership,
    peers: &Peers,
    last_diverged: &mut Vec<u64>,
) {
    let ours = integrity.checkpoints();
    if ours.is_empty() {
        return;
    }
    let view = leadership.view();
    let mut voters = BTreeMap::new();
    for member in view.members.iter().filter(|member| member.voter) {
        let checkpoints = if member.id == view.node_id {
            Some(ours.clone())
        } else {
            ask(peers, member.node.cluster_addr)
                .await
                .map(|reply| reply.checkpoints)
        };
        voters.insert(member.id, checkpoints.unwrap_or_default());
    }
    if voters.is_empty() {
        return;
    }
    match judge(view.node_id, &ours, &voters) {
        Verdict::Undecided => {}
        Verdict::Agrees { index, diverged } => {
            integrity.inner.metrics.comparisons.inc();
            integrity.inner.agreed.fetch_max(index, Ordering::SeqCst);
            integrity
                .inner
                .metrics
                .peers_diverged
                .set(i64::try_from(diverged.len()).unwrap_or(i64::MAX));
            if !diverged.is_empty() && diverged != *last_diverged {
                tracing::warn!(
                    index,
                    replicas = ?diverged,
                    "replicas whose state differs from the cluster's at this checkpoint"
                );
            }
            *last_diverged = diverged;
        }
        Verdict::Differs {
            index,
            ours,
            theirs,
            holders,
        } => {
            integrity.inner.metrics.comparisons.inc();
            integrity.raise(Alarm {
                index,
                reason: format!(
                    "at log index {index} this replica's state digest is {}…, and {holders} of {} voters hold {}…",
                    hex(&ours),
                    voters.len(),
                    hex(&theirs)
                ),
            });
        }
    }
}

/// Asks Raft to make another voter the leader: the `attempt`-th of them
/// in turn, so one that is down does not hold the transfer up for good.
async fn hand_leadership_away(leadership: &Leadership, attempt: usize) {
    let view = leadership.view();
    let others: Vec<_> = view
        .members
        .iter()
        .filter(|member| member.voter && member.id != view.node_id)
        .collect();
    let Some(to) = others.get(attempt % others.len().max(1)) else {
        return;
    };
    tracing::warn!(
        to = to.id,
        "this replica is corrupt: handing leadership away"
    );
    if let Err(error) = leadership.transfer_leader(to.id).await {
        tracing::warn!(%error, to = to.id, "handing leadership away");
    }
}
