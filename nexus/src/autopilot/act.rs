//! The autopilot's loop on the leader: observe, decide, and act through
//! the node exactly as an operator would. Apart from the judging (in the
//! parent module) so that the node, which serves the health report, does
//! not depend on what acts on it.

use std::sync::Arc;

use spike_sdk::domain::NodeId;

use super::{Action, Autopilot, HealthReport, TICK, decide, stable_ms};
use crate::cluster::{LeaderOp, LeaderReply};
use crate::node::Node;

impl Autopilot {
    /// The leader's loop: every [`TICK`], while leading, observe and take
    /// at most one action. Membership changes go through `node` exactly
    /// as an operator's would.
    pub async fn run(self: Arc<Self>, node: Node) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(report) = self.report() else {
                self.metrics.failure_tolerance.set(-1);
                self.metrics.healthy.set(-1);
                self.metrics.unhealthy_members.set(-1);
                continue;
            };
            self.record(&report);
            match decide(&report, &self.config) {
                Some(Action::Promote(id)) => self.promote(&node, id, &report).await,
                Some(Action::RemoveDead(id)) => self.remove_dead(&node, id, &report).await,
                None => {}
            }
        }
    }

    async fn promote(&self, node: &Node, id: u64, report: &HealthReport) {
        // A learner whose removal was cut short after its id was retired
        // waits to be removed, never to vote.
        let retired = NodeId::new(id).is_ok_and(|node_id| {
            node.state
                .cluster_meta()
                .is_ok_and(|meta| meta.retired_node_ids.contains(&node_id))
        });
        if retired {
            return;
        }
        let stable_ms = stable_ms(report, id);
        match self.leadership.add_voter(id).await {
            Ok(()) => {
                self.metrics.promotions.inc();
                tracing::info!(
                    node_id = id,
                    healthy_for_ms = stable_ms,
                    "autopilot: a learner healthy for the stabilization time is now a voter"
                );
            }
            Err(error) => tracing::warn!(node_id = id, %error, "autopilot: promotion failed"),
        }
    }

    async fn remove_dead(&self, node: &Node, id: u64, report: &HealthReport) {
        let Ok(node_id) = NodeId::new(id) else {
            return;
        };
        let dead_ms = stable_ms(report, id);
        tracing::warn!(
            node_id = id,
            unhealthy_for_ms = dead_ms,
            voters = report.voters,
            healthy_voters = report.healthy_voters,
            "autopilot: removing a dead voter and retiring its id"
        );
        match node
            .execute_here(LeaderOp::RemoveNode { id: node_id })
            .await
        {
            Ok(LeaderReply::Done) => {
                self.metrics.dead_removed.inc();
                tracing::warn!(node_id = id, "autopilot: dead voter removed, id retired");
            }
            Ok(other) => tracing::warn!(node_id = id, ?other, "autopilot: unexpected reply"),
            Err(error) => {
                tracing::warn!(node_id = id, %error, "autopilot: removing a dead voter failed");
            }
        }
    }
}
