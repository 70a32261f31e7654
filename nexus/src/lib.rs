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
//! and, if configured, plain-HTTP health and metrics.

mod api;
mod audit;
mod clock;
mod cluster;
pub mod config;
mod health;
mod keys;
mod node;
mod raft;
mod state;

pub use clock::install as install_wall_clock;
pub use raft::disk;
pub use raft::runtime::seeded;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use openraft::Config as RaftConfig;
use openraft::SnapshotPolicy;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use spike_sdk::cli::{StartupError, listen};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{PeerIdentity, server_config};

use crate::cluster::peers::Peers;
use crate::cluster::proto::cluster_server::ClusterServer;
use crate::cluster::service::ClusterService;
use crate::config::NexusConfig;
use crate::keys::KeyState;
use crate::keys::keepers::Keepers;
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::raft::{NexusNode, NexusRaft};

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

/// Raft timing, by default heartbeats every 50 ms and elections after
/// 150-300 ms of silence. Followers honour the old leader's lease (the
/// maximum election timeout) before voting, so a failed leader is replaced
/// in roughly 0.3-0.6 s (kill -9 to the next acknowledged write: 0.75 s
/// median in `bench/run`, against 1.02 s with 200-400 ms). Shorter would
/// risk elections on a busy machine that merely delayed a few heartbeats.
/// openraft gives a heartbeat one interval to come back, so replicas
/// further apart than that need both raised (--heartbeat-interval,
/// --election-timeout).
fn raft_config(config: &NexusConfig) -> Result<RaftConfig, StartupError> {
    let millis = |duration: std::time::Duration| duration.as_millis() as u64;
    RaftConfig {
        cluster_name: "spike".to_owned(),
        heartbeat_interval: millis(config.heartbeat_interval),
        election_timeout_min: millis(config.election_timeout),
        election_timeout_max: millis(config.election_timeout) * 2,
        install_snapshot_timeout: 2_000,
        max_payload_entries: 256,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.logs_kept,
        ..Default::default()
    }
    .validate()
    .map_err(StartupError::config)
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
    let api_listen = config.api_listen().map_err(StartupError::config)?;
    let cluster_listen = config.cluster_listen().map_err(StartupError::config)?;
    let raft_config = Arc::new(raft_config(&config)?);
    if test_clock_offset {
        let path = config.data_dir.join("clock-offset-ms");
        tracing::warn!(path = %path.display(), "TEST: the clock follows the offset in this file");
        clock::offset_from(path);
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        StartupError::config(format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let mut log_store =
        LogStore::open(&config.data_dir.join("log.redb")).map_err(StartupError::config)?;
    // The read floor: see `Node::leader_read_index`.
    let log_at_start = node::LogAtStart {
        term: log_store
            .read_vote()
            .await
            .map_err(StartupError::failed)?
            .map_or(0, |vote| vote.leader_id().term),
        last_index: log_store
            .get_log_state()
            .await
            .map_err(StartupError::failed)?
            .last_log_id
            .map_or(0, |log_id| log_id.index),
    };
    let state_machine = StateMachine::open(
        &config.data_dir.join("state.redb"),
        &config.data_dir.join("snapshots"),
    )
    .map_err(StartupError::config)?;

    let audit_log = audit::AuditLog::open(&config.audit_log, config.node_id).map_err(|e| {
        StartupError::config(format!(
            "cannot open audit log {}: {e}",
            config.audit_log.display()
        ))
    })?;
    let peers = Peers::new(identity.clone(), trust_roots.clone()).map_err(StartupError::failed)?;
    let raft: NexusRaft = openraft::Raft::new(
        config.node_id,
        raft_config,
        Network::new(peers.clone()),
        log_store,
        state_machine.clone(),
    )
    .await
    .map_err(StartupError::failed)?;

    let keepers = Keepers::new(&config.keepers, identity.clone(), trust_roots.clone())
        .map_err(StartupError::failed)?;
    let keys = Arc::new(KeyState::default());
    let key_manager = Arc::new(KeyManager::new(
        config.node_id,
        raft.clone(),
        state_machine.reader(),
        keepers,
        keys.clone(),
        config.shamir,
        config.keeper_update_interval,
    ));
    let node = Node::new(
        config.node_id,
        raft.clone(),
        state_machine.clone(),
        keys,
        key_manager.clone(),
        peers,
        node::ReadSettings {
            log_at_start,
            unsafe_local_reads: config.unsafe_local_reads,
        },
    );

    // Listeners: cluster first, so peers can reach us as soon as we vote.
    let mut cluster_tls = server_config(
        identity.clone(),
        PeerAuthorizer::role(trust_roots.clone(), Role::Nexus),
    )
    .map_err(StartupError::failed)?;
    cluster_tls.alpn_protocols = vec![b"h2".to_vec()];
    let cluster_listener = listen(cluster_listen, cluster_tls, &identity).await?;
    let mut api_tls = server_config(identity.clone(), PeerAuthorizer::any_verified())
        .map_err(StartupError::failed)?;
    api_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let api_listener = listen(api_listen, api_tls, &identity).await?;
    let health_listener = match config.health_addr {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(|e| {
            StartupError::failed(format!("cannot listen on {address} (health): {e}"))
        })?),
        None => None,
    };

    found_cluster(&raft, &config).await;
    let manager_task = tokio::spawn(key_manager.run(state_machine.applied()));

    tracing::info!(
        node_id = config.node_id,
        spiffe_id = %identity.spiffe_id(),
        api = %api_listener.local_address(),
        cluster = %cluster_listener.local_address(),
        health = ?config.health_addr,
        ?hardening,
        "nexus listening"
    );

    let cluster_service = ClusterServer::new(ClusterService::new(node.clone(), state_machine))
        .max_decoding_message_size(cluster::MESSAGE_SIZE_MAX_BYTES)
        .max_encoding_message_size(cluster::MESSAGE_SIZE_MAX_BYTES);
    let cluster_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        .add_service(cluster_service)
        .serve_with_incoming_shutdown(cluster_listener.into_stream(), stopping());
    let api = Arc::new(api::Api::new(
        node.clone(),
        trust_roots,
        config.max_versions,
        audit_log,
    ));
    let api_server = axum::serve(
        api_listener,
        api::router(api).into_make_service_with_connect_info::<PeerIdentity>(),
    )
    .with_graceful_shutdown(stopping());
    let health = async {
        match health_listener {
            Some(listener) => health::serve(listener, node.clone(), stopping()).await,
            None => {
                stopping().await;
                Ok(())
            }
        }
    };

    let outcome = tokio::try_join!(
        async { cluster_server.await.map_err(StartupError::failed) },
        async { api_server.await.map_err(StartupError::failed) },
        async { health.await.map_err(StartupError::failed) },
    );
    manager_task.abort();
    if let Err(error) = raft.shutdown().await {
        tracing::warn!(%error, "raft did not shut down cleanly");
    }
    outcome.map(|_| ())
}

/// The lowest-id founder initializes Raft on first start; everyone else,
/// and every later start, finds the membership in the log.
async fn found_cluster(raft: &NexusRaft, config: &NexusConfig) {
    let Some((&first, _)) = config.founders.first_key_value() else {
        return;
    };
    if first != config.node_id {
        return;
    }
    match raft.is_initialized().await {
        Ok(true) => {}
        Ok(false) => {
            let members: BTreeMap<u64, NexusNode> = config.founders.clone();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(voters = config.founders.len(), "cluster founded"),
                Err(error) => tracing::warn!(%error, "cluster not founded (already initialized?)"),
            }
        }
        Err(error) => tracing::error!(%error, "cannot tell whether the cluster is initialized"),
    }
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
