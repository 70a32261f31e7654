//! Every metric a replica exports, in one registry served on the health
//! port's `/metrics` (docs/metrics.md lists them with alert thresholds).
//!
//! Two kinds. Events (requests, writes, applies, fsyncs, keeper calls,
//! audit commits) are counted where they happen, in the families of
//! [`Metrics`]: prometheus-client's atomics behind `Arc`s, so a component
//! keeps a clone of its group and records without a lock or an allocation
//! (a family's label set is a small `Copy` struct). State (Raft's view,
//! the root key, sessions, the SVID's expiry, the listeners' counts) is
//! read when scraped, by `crate::scrape::ReplicaState`, so it is never stale.
//!
//! Every name is prefixed `spike_` and every series labelled with the
//! replica's `node`. Components built elsewhere add their own metrics at
//! start-up with a `register_metrics(&mut Registry)` of their own, before
//! the registry is frozen behind an `Arc` for the health listener.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spike_sdk::api::Route;

/// A label value enum: its variants and their texts, encoded without
/// allocating.
macro_rules! label_value {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$variant_meta])* $variant,)* }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                let text = match self { $(Self::$variant => $text,)* };
                std::fmt::Write::write_str(encoder, text)
            }
        }
    };
}

/// The prefix of every metric name (`spike_...`).
pub const PREFIX: &str = "spike";
/// The content type of [`encode`]'s text: OpenMetrics, which Prometheus
/// asks for first and parses (`# EOF` ends it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets: 0.5 ms to about 16 s, doubling. A Raft write or an
/// fsync on a healthy disk lands in the first few; the top ones catch a
/// stalled disk or a request held up to the 30 s request timeout.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// A family of latency histograms.
type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency)
}

fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64()
}

/// The families every component records into; clones share them.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// SPIKE API requests (api::dispatch, edge).
    pub api: ApiMetrics,
    /// Raft writes, applies, log syncs, snapshots, leader changes.
    pub raft: RaftMetrics,
    /// Keeper share calls.
    pub keepers: KeeperMetrics,
    /// The audit writer.
    pub audit: AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh families, registered nowhere yet (tests record into these).
    pub fn new() -> Self {
        Self {
            api: ApiMetrics::new(),
            raft: RaftMetrics::new(),
            keepers: KeeperMetrics::new(),
            audit: AuditMetrics::new(),
        }
    }

    /// The registry of replica `node`: the `spike_` prefix, the `node`
    /// label on every series, and these families in it.
    pub fn registry(&self, node: u64) -> Registry {
        let labels = [("node".into(), node.to_string().into())];
        let mut registry = Registry::with_prefix_and_labels(PREFIX, labels.into_iter());
        self.register_metrics(&mut registry);
        registry
    }

    /// Registers every family in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.api.register_metrics(registry);
        self.raft.register_metrics(registry);
        self.keepers.register_metrics(registry);
        self.audit.register_metrics(registry);
    }
}

/// The OpenMetrics text of `registry`, ending in `# EOF`.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// A route as a label: its path and action, never the raw URI (bounded:
/// the route table, plus `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// `Route::path_and_query`, or `unknown`.
    route: &'static str,
}

/// A route and the HTTP status it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    route: &'static str,
    code: u16,
}

/// Why the edge refused a request before it reached a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    reason: EdgeRefusal,
}

label_value! {
    /// The edge's refusals (see `edge`).
    pub enum EdgeRefusal {
        /// The URI is over `--max-uri-bytes` (414).
        UriTooLong => "uri_too_long",
        /// The caller has `--max-requests-per-peer` requests in progress (503).
        PeerRequests => "peer_requests",
        /// The request ran past `--request-timeout` (503).
        Timeout => "timeout",
    }
}

/// API request counts and latencies.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: LatencyFamily<RouteLabels>,
    refused: Family<RefusalLabels, Counter>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    fn new() -> Self {
        let refused = Family::<RefusalLabels, Counter>::default();
        for reason in [
            EdgeRefusal::UriTooLong,
            EdgeRefusal::PeerRequests,
            EdgeRefusal::Timeout,
        ] {
            let _ = refused.get_or_create(&RefusalLabels { reason });
        }
        Self {
            requests: Family::default(),
            duration: latency_family(),
            refused,
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "api_requests",
            "API requests answered, by route and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from a request's arrival to its answer (audit record durable), by route",
            self.duration.clone(),
        );
        registry.register(
            "api_refused",
            "API requests the edge refused before any route ran, by reason",
            self.refused.clone(),
        );
    }

    /// One answered request: `route` as matched (`None`: no route).
    pub fn answered(&self, route: Option<Route>, status: u16, elapsed: Duration) {
        let route = route.map_or("unknown", Route::path_and_query);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                code: status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(seconds(elapsed));
    }

    /// One request the edge refused.
    pub fn refused(&self, reason: EdgeRefusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}

/// What a snapshot timing or size is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SnapshotLabels {
    operation: SnapshotOperation,
}

label_value! {
    /// Building one here, or installing the leader's.
    pub enum SnapshotOperation {
        /// Built from the local state (log compaction).
        Build => "build",
        /// Received from the leader and installed.
        Install => "install",
    }
}

/// Raft's events.
#[derive(Debug, Clone)]
pub struct RaftMetrics {
    write_duration: Histogram,
    apply_duration: Histogram,
    log_sync_duration: Histogram,
    snapshot_duration: LatencyFamily<SnapshotLabels>,
    snapshot_size: Family<SnapshotLabels, Gauge>,
    leader_changes: Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftMetrics {
    fn new() -> Self {
        let snapshot_size = Family::<SnapshotLabels, Gauge>::default();
        let snapshot_duration = latency_family::<SnapshotLabels>();
        // Exported from the start, at 0, so an alert on them has a series.
        for operation in [SnapshotOperation::Build, SnapshotOperation::Install] {
            let labels = SnapshotLabels { operation };
            let _ = snapshot_size.get_or_create(&labels);
            let _ = snapshot_duration.get_or_create(&labels);
        }
        Self {
            write_duration: latency(),
            apply_duration: latency(),
            log_sync_duration: latency(),
            snapshot_duration,
            snapshot_size,
            leader_changes: Counter::default(),
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "raft_write_duration_seconds",
            "Leader writes from proposal to commit and apply here",
            self.write_duration.clone(),
        );
        registry.register(
            "raft_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state database",
            self.apply_duration.clone(),
        );
        registry.register(
            "raft_log_sync_duration_seconds",
            "Time of one fsynced commit of the Raft log (append, vote, truncate, purge)",
            self.log_sync_duration.clone(),
        );
        registry.register(
            "raft_snapshot_duration_seconds",
            "Time to build a snapshot here or install the leader's",
            self.snapshot_duration.clone(),
        );
        registry.register(
            "raft_snapshot_size_bytes",
            "Size of the last snapshot built or installed",
            self.snapshot_size.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times this replica saw a new leader (or one again after none)",
            self.leader_changes.clone(),
        );
    }

    /// One leader write, proposed `elapsed` ago, committed and applied.
    pub fn written(&self, elapsed: Duration) {
        self.write_duration.observe(seconds(elapsed));
    }

    /// One batch applied in `elapsed`.
    pub fn applied(&self, elapsed: Duration) {
        self.apply_duration.observe(seconds(elapsed));
    }

    /// One fsynced log commit that took `elapsed`.
    pub fn log_synced(&self, elapsed: Duration) {
        self.log_sync_duration.observe(seconds(elapsed));
    }

    /// A snapshot of `bytes` built or installed in `elapsed`.
    pub fn snapshot(&self, operation: SnapshotOperation, elapsed: Duration, bytes: u64) {
        let labels = SnapshotLabels { operation };
        self.snapshot_duration
            .get_or_create(&labels)
            .observe(seconds(elapsed));
        self.snapshot_size
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// This replica saw a new leader.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }
}

/// A keeper call and how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeeperLabels {
    operation: KeeperOperation,
    outcome: KeeperOutcome,
}

label_value! {
    /// Which keeper call.
    pub enum KeeperOperation {
        /// Storing a share on a keeper.
        Push => "push",
        /// Fetching a share back (unlocking the root key).
        Fetch => "fetch",
    }
}

label_value! {
    /// How a keeper call went.
    pub enum KeeperOutcome {
        /// Stored, or a usable share came back.
        Ok => "ok",
        /// The call failed (unreachable, refused, no such share, timeout).
        Error => "error",
        /// A share came back that is not the one asked for (ignored).
        Unusable => "unusable",
    }
}

/// Keeper share calls.
#[derive(Debug, Clone)]
pub struct KeeperMetrics {
    calls: Family<KeeperLabels, Counter>,
}

impl Default for KeeperMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KeeperMetrics {
    fn new() -> Self {
        let calls = Family::<KeeperLabels, Counter>::default();
        for (operation, outcome) in [
            (KeeperOperation::Push, KeeperOutcome::Ok),
            (KeeperOperation::Push, KeeperOutcome::Error),
            (KeeperOperation::Fetch, KeeperOutcome::Ok),
            (KeeperOperation::Fetch, KeeperOutcome::Error),
            (KeeperOperation::Fetch, KeeperOutcome::Unusable),
        ] {
            let _ = calls.get_or_create(&KeeperLabels { operation, outcome });
        }
        Self { calls }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "keeper_share_calls",
            "Keeper share pushes and fetches, by outcome",
            self.calls.clone(),
        );
    }

    /// One keeper call.
    pub fn called(&self, operation: KeeperOperation, outcome: KeeperOutcome) {
        self.calls
            .get_or_create(&KeeperLabels { operation, outcome })
            .inc();
    }
}

/// The audit writer's commits.
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    write_failures: Counter,
    commit_duration: Histogram,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditMetrics {
    fn new() -> Self {
        Self {
            write_failures: Counter::default(),
            commit_duration: latency(),
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "audit_write_failures",
            "Audit log writes or fsyncs that failed (requests are refused until one succeeds)",
            self.write_failures.clone(),
        );
        registry.register(
            "audit_commit_duration_seconds",
            "Time to write and fdatasync one group of audit records",
            self.commit_duration.clone(),
        );
    }

    /// One group commit that succeeded in `elapsed`.
    pub fn committed(&self, elapsed: Duration) {
        self.commit_duration.observe(seconds(elapsed));
    }

    /// One write or sync that failed.
    pub fn failed(&self) {
        self.write_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_prefix_node_label_and_eof() {
        let metrics = Metrics::new();
        let registry = metrics.registry(7);
        metrics
            .api
            .answered(Some(Route::SecretGet), 200, Duration::from_millis(3));
        metrics.api.answered(None, 400, Duration::from_millis(1));
        metrics
            .keepers
            .called(KeeperOperation::Push, KeeperOutcome::Ok);
        let text = encode(&registry).expect("encodes");
        let get = Route::SecretGet.path_and_query();
        assert!(
            text.contains(&format!(
                "spike_api_requests_total{{node=\"7\",route=\"{get}\",code=\"200\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "spike_api_request_duration_seconds_count{{node=\"7\",route=\"{get}\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains("spike_api_requests_total{node=\"7\",route=\"unknown\",code=\"400\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "spike_keeper_share_calls_total{node=\"7\",operation=\"push\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "spike_keeper_share_calls_total{node=\"7\",operation=\"fetch\",outcome=\"error\"} 0"
            ),
            "every outcome is exported from the start: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
