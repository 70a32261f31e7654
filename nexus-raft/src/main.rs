//! SPIKE Nexus: one replica of the Raft-replicated secret store.
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
mod config;
mod health;
mod keys;
mod node;
mod raft;
mod state;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use openraft::Config as RaftConfig;
use openraft::SnapshotPolicy;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use spike_sdk::cli::{StartupError, listen, load_role_identity, run_server, shutdown_signal};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role};
use spike_sdk::tls::{PeerIdentity, server_config};

use crate::cluster::peers::Peers;
use crate::cluster::proto::cluster_server::ClusterServer;
use crate::cluster::service::ClusterService;
use crate::config::{Args, NexusConfig};
use crate::keys::KeyState;
use crate::keys::keepers::Keepers;
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::raft::{NexusNode, NexusRaft};

fn main() -> ExitCode {
    let args = Args::parse();
    let lock_memory = args.lock_memory;
    run_server("nexus", lock_memory, |hardening| serve(args, hardening))
}

/// Raft timing: heartbeats every 50 ms and elections after 150-300 ms of
/// silence. Followers honour the old leader's lease (the maximum election
/// timeout) before voting, so a failed leader is replaced in roughly
/// 0.3-0.6 s (kill -9 to the next acknowledged write: 0.75 s median in
/// `bench/run`, against 1.02 s with 200-400 ms). Shorter would risk
/// elections on a busy machine that merely delayed a few heartbeats.
fn raft_config(config: &NexusConfig) -> Result<RaftConfig, StartupError> {
    RaftConfig {
        cluster_name: "spike".to_owned(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        install_snapshot_timeout: 2_000,
        max_payload_entries: 256,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.logs_kept,
        ..Default::default()
    }
    .validate()
    .map_err(StartupError::config)
}

async fn serve(args: Args, hardening: Hardening) -> Result<(), StartupError> {
    let config = NexusConfig::from_args(&args).map_err(StartupError::config)?;
    let api_listen = config.api_listen().map_err(StartupError::config)?;
    let cluster_listen = config.cluster_listen().map_err(StartupError::config)?;
    let raft_config = Arc::new(raft_config(&config)?);
    if args.test_clock_offset {
        let path = config.data_dir.join("clock-offset-ms");
        tracing::warn!(path = %path.display(), "TEST: the clock follows the offset in this file");
        clock::offset_from(path);
    }
    let (trust_roots, identity) = load_role_identity(&args.svid, Role::Nexus).await?;

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
        .serve_with_incoming_shutdown(cluster_listener.into_stream(), shutdown_signal());
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
    .with_graceful_shutdown(shutdown_signal());
    let health = async {
        match health_listener {
            Some(listener) => health::serve(listener, node.clone()).await,
            None => {
                shutdown_signal().await;
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
