//! What a replica reports of its state when `/metrics` is scraped: read
//! at that moment from the node, its identity, the audit writer and the
//! listeners, so it is never stale (the event metrics live in
//! [`crate::metrics`], which knows none of these).

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use spike_sdk::svid::Identity;
use spike_sdk::tls::{HandshakeFailure, LimitRefusal, ListenerStats};

use crate::audit::AuditLog;
use crate::keys::KeyStatus;
use crate::node::Node;

/// What a replica reports of its state when scraped: Raft's view, the root
/// key, the cluster format, sessions, the SVID's expiry, the audit queue
/// and the listeners' counts.
pub struct ReplicaState {
    /// This replica.
    pub node: Node,
    /// Its SVID.
    pub identity: Identity,
    /// Its audit writer.
    pub audit: AuditLog,
    /// Its TLS listeners, by name (`api`, `cluster`).
    pub listeners: Vec<(&'static str, Arc<ListenerStats>)>,
}

impl std::fmt::Debug for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaState")
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

/// Encodes one gauge or counter without labels (beyond the registry's).
/// Unlike `Registry::register`, a collector's help is printed as given:
/// it ends in a full stop like the registered ones'.
fn constant(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Seconds from now until `at` (negative once past).
fn seconds_until(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::now()) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => i64::try_from(past.duration().as_secs()).map_or(i64::MIN, |past| -past),
    }
}

impl Collector for ReplicaState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let view = self.node.cluster_view();
        let voters = u64::try_from(view.voter_count()).unwrap_or(u64::MAX);
        let ready = matches!(self.node.keys.status(), KeyStatus::Ready { .. });
        for (name, help, value) in [
            ("raft_term", "Current Raft term.", view.term),
            (
                "raft_leader_id",
                "Id of the known leader (0: none).",
                view.leader.as_ref().map_or(0, |leader| leader.id),
            ),
            (
                "raft_is_leader",
                "1 if this replica leads.",
                u64::from(view.is_leader()),
            ),
            (
                "raft_last_log_index",
                "Index of the last log entry.",
                view.last_log_index.unwrap_or(0),
            ),
            (
                "raft_applied_index",
                "Index of the last applied entry.",
                view.applied_index.unwrap_or(0),
            ),
            ("raft_voters", "Voters in the membership.", voters),
            (
                "root_key_ready",
                "1 if this replica holds the root key.",
                u64::from(ready),
            ),
            (
                "cluster_format",
                "On-disk format the cluster writes, as applied here.",
                u64::from(self.node.state.cluster_format().unwrap_or(0)),
            ),
            (
                "build_format_newest",
                "Newest on-disk format this replica's build reads.",
                u64::from(crate::raft::format::FORMAT_NEWEST),
            ),
            (
                "client_sessions",
                "Exactly-once client sessions held in the replicated state.",
                self.node.state.session_count().unwrap_or(0),
            ),
            (
                "audit_queue_depth",
                "Audit records waiting for the writer.",
                self.audit.queue_depth(),
            ),
            (
                "audit_writable",
                "1 while the audit log takes writes (0: every request is refused).",
                u64::from(self.audit.is_healthy()),
            ),
        ] {
            constant(&mut encoder, name, help, &gauge(value))?;
        }
        constant(
            &mut encoder,
            "audit_forward_dropped",
            "Audit lines the forward destination (--audit-forward) did not take.",
            &ConstCounter::new(self.audit.forward_dropped()),
        )?;
        if let Some(expires_at) = self.identity.current().expires_at() {
            constant(
                &mut encoder,
                "svid_expiry_seconds",
                "Seconds until this replica's SVID expires (negative: expired).",
                &ConstGauge::new(seconds_until(expires_at)),
            )?;
        }
        let build = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "build_info",
            "This replica's release.",
            None,
            build.metric_type(),
        )?;
        build.encode(family.encode_family(&[("release", crate::cluster::version::RELEASE)])?)?;
        self.encode_listeners(&mut encoder)
    }
}

impl ReplicaState {
    fn encode_listeners(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut open = encoder.encode_descriptor(
            "connections_open",
            "Established TLS connections, by listener.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (listener, stats) in &self.listeners {
            let value = ConstGauge::new(i64::try_from(stats.open()).unwrap_or(i64::MAX));
            value.encode(open.encode_family(&[("listener", *listener)])?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "connections_refused",
            "Connections closed by a limit (--max-connections, --max-connections-per-peer, \
             --max-handshakes-per-address), by listener and limit.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (listener, stats) in &self.listeners {
            for limit in LimitRefusal::ALL {
                let value = ConstCounter::new(stats.refused(limit));
                value.encode(
                    refused.encode_family(&[("listener", *listener), ("limit", limit.as_str())])?,
                )?;
            }
        }
        let mut failures = encoder.encode_descriptor(
            "tls_handshake_failures",
            "TLS handshakes that failed, by listener and reason.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (listener, stats) in &self.listeners {
            for reason in HandshakeFailure::ALL {
                let value = ConstCounter::new(stats.handshake_failures(reason));
                value.encode(
                    failures
                        .encode_family(&[("listener", *listener), ("reason", reason.as_str())])?,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seconds_until_is_negative_once_past() {
        let now = SystemTime::now();
        assert!((3_598..=3_600).contains(&seconds_until(now + Duration::from_secs(3_600))));
        assert!((-61..=-60).contains(&seconds_until(now - Duration::from_secs(60))));
    }
}
