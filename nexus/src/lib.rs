//! SPIKE Nexus: one replica of the Raft-replicated secret store, as a
//! library. The `nexus` binary reads flags and an SVID and calls [`serve`];
//! the deterministic simulator calls it too, on its own network
//! ([`spike_sdk::net`]) and disk ([`disk`]), so it runs this very code.
//!
//! Start-up order is fixed: flags and environment, then the SVID (which
//! must carry the Nexus role), then storage, and only then are ports bound;
//! any problem before binding exits with code 64 and a one-line reason.
//!
//! Three listeners: the SPIKE API (mTLS, any trusted SVID, per-route
//! authorization), the cluster port (mTLS, Nexus only: Raft and forwarding)
//! and, if configured, plain-HTTP health and metrics ([`metrics`]).

mod api;
mod audit;
pub mod autopilot;
mod backup;
mod clock;
mod cluster;
pub mod config;
pub mod edge;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod integrity;
mod keys;
mod limits;
pub mod metrics;
mod node;
mod quota;
mod raft;
mod scrape;
mod state;
mod transport;

pub use clock::install as install_wall_clock;
pub use raft::disk;
pub use raft::runtime::seeded;

use std::future::Future;
use std::sync::Arc;

use spike_sdk::cli::{StartupError, listen_limited};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{PeerIdentity, server_config};

use crate::cluster::forward::Forwarder;
use crate::cluster::service::ClusterService;
use crate::config::NexusConfig;
use crate::keys::KeyState;
use crate::keys::keepers::Keepers;
use crate::keys::manager::{KeyManager, KeySettings};
use crate::metrics::Metrics;
use crate::node::{Node, Reads};
use crate::raft::{RaftSettings, StartError};
use crate::transport::peers::Peers;
use crate::transport::proto::cluster_server::ClusterServer;

/// Everything a replica starts from.
pub struct Startup {
    /// The validated configuration.
    pub config: NexusConfig,
    /// Our SVID, which carries the Nexus role.
    pub identity: Identity,
    /// Trust domains per role.
    pub trust_roots: TrustRoots,
    /// What process hardening took effect (logged).
    pub hardening: Hardening,
    /// TEST ONLY: follow the clock offset in `DATA_DIR/clock-offset-ms`.
    pub test_clock_offset: bool,
}

/// Raft's settings from the validated configuration.
fn raft_settings(config: &NexusConfig) -> RaftSettings {
    RaftSettings {
        node_id: config.node_id.get(),
        heartbeat_interval: config.heartbeat_interval,
        election_timeout: config.election_timeout,
        snapshot_every: config.snapshot_every,
        logs_kept: config.logs_kept,
    }
}

/// A span per cluster RPC, naming the RPC and the calling replica.
fn cluster_rpc_span(request: &axum::http::Request<()>) -> tracing::Span {
    let rpc = request.uri().path().rsplit('/').next().unwrap_or_default();
    let peer = request
        .extensions()
        .get::<PeerIdentity>()
        .map(|peer| peer.spiffe_id.to_string());
    tracing::info_span!("cluster_rpc", rpc, peer)
}

/// Creates `dir` (and its parents) as the replica's own: mode 0700, also
/// when it exists from before, so no other local user reads the files in
/// it (secret paths, policy names, times, membership).
pub(crate) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Runs a replica until `shutdown` resolves.
pub async fn serve(
    startup: Startup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let Startup {
        config,
        identity,
        trust_roots,
        hardening,
        test_clock_offset,
    } = startup;
    let stopping = stop_signal(shutdown);
    let api_listen = config.api_listen();
    let cluster_listen = config.cluster_listen();
    if test_clock_offset {
        let path = config.data_dir.join("clock-offset-ms");
        tracing::warn!(path = %path.display(), "TEST: the clock follows the offset in this file");
        clock::offset_from(path);
    }
    private_dir(&config.data_dir).map_err(|e| {
        StartupError::config(format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    if config.compact_on_start {
        // Before Raft opens the files: compaction needs them to itself.
        let compacted = raft::compact_databases(&config.data_dir)
            .map_err(|e| StartupError::failed(format!("cannot compact the databases: {e}")))?;
        for (file, before, after) in compacted {
            tracing::info!(file, before, after, "compacted");
        }
    }
    let peers = Peers::new(identity.clone(), trust_roots.clone()).map_err(StartupError::failed)?;
    // Built once; each component keeps a clone of its group.
    let metrics = Metrics::new();
    let mut registry = metrics.registry(config.node_id.get());
    if let Some(path) = &config.test_diverge {
        tracing::warn!(%path, "UNSAFE TEST: this replica stores writes of this secret altered");
    }
    let integrity = integrity::Integrity::new(config.test_diverge.clone());
    let raft::Started {
        leadership,
        inbound,
        machine,
        format,
    } = raft::start(
        raft_settings(&config),
        &config.data_dir,
        peers.clone(),
        metrics.raft.clone(),
        integrity.clone(),
    )
    .await
    .map_err(|error| match error {
        StartError::Settings(_) | StartError::Open(_) => StartupError::config(error),
        StartError::Failed(_) => StartupError::failed(error),
    })?;

    // After the state: a new audit file's genesis record names the
    // cluster's committed root key id.
    let root_key_id = machine
        .reader()
        .cluster_meta()
        .map_err(StartupError::failed)?
        .root_key
        .map(|record| record.root_key_id.0);
    let origin = audit::Origin {
        node: config.node_id.get(),
        spiffe_id: identity.spiffe_id().to_string(),
        root_key_id,
    };
    let audit_log = audit::AuditLog::open(
        &config.audit_log,
        origin,
        config.audit_forward.clone(),
        config.audit_durability,
        metrics.audit.clone(),
    )
    .map_err(|e| {
        StartupError::config(format!(
            "cannot open audit log {}: {e}",
            config.audit_log.display()
        ))
    })?;
    let keepers = Keepers::new(
        &config.keepers,
        identity.clone(),
        trust_roots.clone(),
        metrics.keepers.clone(),
    )
    .map_err(StartupError::failed)?;
    let keys = Arc::new(KeyState::default());
    let key_manager = Arc::new(KeyManager::new(
        leadership.clone(),
        machine.reader(),
        keepers,
        keys.clone(),
        KeySettings {
            params: config.shamir,
            allow_insecure_threshold: config.allow_insecure_threshold,
            policy: keys::lifecycle::Policy {
                push_interval: config.keeper_update_interval,
            },
            rotation_defaults: config.rotation_defaults,
        },
        audit_log.clone(),
    ));
    // PLANTED BUG local-reads: the `--unsafe-local-reads` path.
    let reads = if config.unsafe_local_reads || spike_sdk::planted!(LocalReads) {
        Reads::UnsafeLocal
    } else {
        Reads::Linearizable
    };
    let autopilot = Arc::new(autopilot::Autopilot::new(
        leadership.clone(),
        config.autopilot,
        machine.reader(),
    ));
    let storage_quota = Arc::new(quota::StorageQuota::new(config.storage_quota));
    let quota_task = tokio::spawn(storage_quota.clone().run(machine.clone()));
    let node = Node::new(
        leadership.clone(),
        machine.clone(),
        keys,
        key_manager.clone(),
        Forwarder::new(peers.clone()),
        reads,
        autopilot.clone(),
    )
    .with_bounds(node::Bounds {
        quota: storage_quota,
        limiter: Arc::new(limits::RateLimiter::default()),
    });

    // Listeners: cluster first, so peers can reach us as soon as we vote.
    let mut cluster_tls = server_config(
        identity.clone(),
        PeerAuthorizer::role(trust_roots.clone(), Role::Nexus),
    )
    .map_err(StartupError::failed)?;
    cluster_tls.alpn_protocols = vec![b"h2".to_vec()];
    edge::check_descriptor_limit(&config.edge);
    let max_age = config.max_connection_age;
    let limits = config.edge.connections;
    let cluster_listener =
        listen_limited(cluster_listen, cluster_tls, &identity, max_age, limits).await?;
    let mut api_tls = server_config(identity.clone(), PeerAuthorizer::any_verified())
        .map_err(StartupError::failed)?;
    api_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let api_listener = listen_limited(api_listen, api_tls, &identity, max_age, limits).await?;
    registry.register_collector(Box::new(scrape::ReplicaState {
        node: node.clone(),
        identity: identity.clone(),
        audit: audit_log.clone(),
        listeners: vec![
            ("api", api_listener.stats()),
            ("cluster", cluster_listener.stats()),
        ],
    }));
    // A component with metrics of its own adds them here, one line each:
    // `component.register_metrics(&mut registry);` (names without the
    // `spike_` prefix, which the registry adds; list them in
    // docs/metrics.md). Then the registry is frozen: scrapes read it
    // without a lock.
    key_manager.register_metrics(&mut registry);
    integrity.register_metrics(&mut registry);
    autopilot.register_metrics(&mut registry);
    node.register_metrics(&mut registry);
    let backup_metrics = backup::BackupMetrics::default();
    backup_metrics.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let health_listener = match config.health_addr {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(|e| {
            StartupError::failed(format!("cannot listen on {address} (health): {e}"))
        })?),
        None => None,
    };

    // The lowest-id founder founds the cluster on first start; everyone
    // else, and every later start, finds the membership in the log.
    if config.founders.first_key_value().map(|(id, _)| *id) == Some(config.node_id) {
        let founders = config.founders.iter().map(|(id, node)| (id.get(), *node));
        leadership.found_cluster(&founders.collect()).await;
    }
    let reencryption_task = tokio::spawn(key_manager.clone().run_reencryption());
    let backups = config.backup.clone().map(|settings| {
        Arc::new(backup::Backups::new(
            settings,
            config.node_id,
            leadership.clone(),
            machine.clone(),
            audit_log.clone(),
            backup_metrics,
        ))
    });
    let backup_task = backups.clone().map(|backups| tokio::spawn(backups.run()));
    let manager_task = tokio::spawn(key_manager.run(machine.applied()));
    let leader_changes_task = tokio::spawn(leadership.clone().count_leader_changes());
    let autopilot_task = tokio::spawn(autopilot.run(node.clone()));
    let format_task = tokio::spawn(cluster::version::switch_when_every_member_reads(
        leadership.clone(),
        peers.clone(),
        format.clone(),
    ));
    let integrity_task = tokio::spawn(integrity::check::run(
        integrity.clone(),
        leadership.clone(),
        peers,
        config.corruption_check_interval,
    ));

    tracing::info!(
        node_id = %config.node_id,
        spiffe_id = %identity.spiffe_id(),
        api = %api_listener.local_address(),
        cluster = %cluster_listener.local_address(),
        health = ?config.health_addr,
        ?hardening,
        "nexus listening"
    );
    spike_sdk::cli::warn_if_unlocked(hardening);

    let cluster_service = ClusterServer::new(ClusterService::new(
        node.clone(),
        inbound,
        format,
        integrity,
    ))
    .max_decoding_message_size(transport::MESSAGE_SIZE_MAX_BYTES)
    .max_encoding_message_size(transport::MESSAGE_SIZE_MAX_BYTES);
    let cluster_server = tonic::transport::Server::builder()
        .trace_fn(cluster_rpc_span)
        // Only Nexus peers get this far; they multiplex Raft and forwarded
        // requests, so streams keep hyper's default.
        .timeout(config.edge.request_timeout)
        .http2_max_header_list_size(config.edge.header_bytes)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        // GOAWAY at the maximum age; the listener ends the connection a
        // grace period later.
        .max_connection_age(max_age)
        .add_service(cluster_service)
        .serve_with_incoming_shutdown(cluster_listener.into_stream(), stopping());
    let api = Arc::new(api::Api::new(
        node.clone(),
        trust_roots.clone(),
        api::ApiSettings {
            max_versions: config.max_versions,
            stale_read_max: config.stale_read_max,
            data_key_rotate_after: config.data_key_rotate_after,
        },
        audit_log,
        metrics.api.clone(),
        backups,
    ));
    let api_server = edge::serve_api(
        api_listener,
        api::router(api),
        config.edge,
        trust_roots,
        metrics.api,
        stopping(),
    );
    let health = async {
        match health_listener {
            Some(listener) => health::serve(listener, node.clone(), registry, stopping()).await,
            None => {
                stopping().await;
                Ok(())
            }
        }
    };

    let outcome = tokio::try_join!(
        async { cluster_server.await.map_err(StartupError::failed) },
        async {
            api_server.await;
            Ok(())
        },
        async { health.await.map_err(StartupError::failed) },
    );
    manager_task.abort();
    reencryption_task.abort();
    format_task.abort();
    leader_changes_task.abort();
    if let Some(task) = backup_task {
        task.abort();
    }
    integrity_task.abort();
    autopilot_task.abort();
    quota_task.abort();
    leadership.shutdown().await;
    outcome.map(|_| ())
}

/// Turns one shutdown future into as many as the servers need.
fn stop_signal(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop);
    });
    move || {
        let mut stopped = stopped.clone();
        Box::pin(async move {
            // Resolves once the sender is gone.
            while stopped.changed().await.is_ok() {}
        })
    }
}
