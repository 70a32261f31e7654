//! The cluster gRPC service: the receiving side of Raft RPCs, snapshot
//! installation and forwarded client requests.

use futures_util::StreamExt;
use openraft::ReadPolicy;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::Snapshot;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::proto::cluster_server::Cluster;
use super::proto::{Frame, SnapshotChunk, snapshot_chunk};
use super::{ForwardError, LeaderOp, SNAPSHOT_SIZE_MAX_BYTES};
use crate::node::Node;
use crate::raft::codec::{decode, encode};
use crate::raft::snapshot::SnapshotFile;
use crate::raft::state_machine::StateMachine;
use crate::raft::{NexusRaft, SnapshotMetaOf, TypeConfig, VoteOf};
use crate::state::command;

/// Serves the cluster port of one replica.
pub struct ClusterService {
    node: Node,
    raft: NexusRaft,
    state_machine: StateMachine,
}

impl ClusterService {
    /// The service of `node`.
    pub fn new(node: Node, state_machine: StateMachine) -> Self {
        Self {
            raft: node.raft.clone(),
            node,
            state_machine,
        }
    }
}

fn frame<T: Serialize>(value: &T) -> Result<Response<Frame>, Status> {
    encode(value)
        .map(|payload| Response::new(Frame { payload }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, request: Request<Frame>) -> Result<T, Status> {
    decode(what, &request.into_inner().payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The leader as this replica knows it.
pub fn known_leader(raft: &NexusRaft) -> Option<(u64, crate::raft::NexusNode)> {
    use openraft::async_runtime::WatchReceiver;
    let lost_after = quorum_lost_after(raft.config());
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let leader = metrics.current_leader?;
    if leader == metrics.id && !quorum_fresh(&metrics, lost_after) {
        return None;
    }
    let node = metrics
        .membership_config
        .membership()
        .get_node(&leader)?
        .clone();
    Some((leader, node))
}

/// How long a leader may go without a quorum acknowledging it before it
/// stops calling itself the leader ("check quorum"): the longest election
/// timeout and four heartbeats more (500 ms by default), by when the others
/// are electing a new one. Requests then fail at once with 503 and no
/// leader hint, so clients move to another node instead of waiting out
/// their timeout on a leader cut off from its followers.
pub fn quorum_lost_after(config: &openraft::Config) -> std::time::Duration {
    std::time::Duration::from_millis(config.election_timeout_max + 4 * config.heartbeat_interval)
}

/// Whether this node, as leader, heard from a quorum within `lost_after`.
fn quorum_fresh(
    metrics: &openraft::RaftMetrics<TypeConfig>,
    lost_after: std::time::Duration,
) -> bool {
    use openraft::async_runtime::Instant as _;
    if metrics.membership_config.membership().voter_ids().count() <= 1 {
        return true;
    }
    metrics
        .last_quorum_acked
        .as_ref()
        .is_some_and(|acked| acked.elapsed() < lost_after)
}

/// Whether Raft calls this node the leader but a quorum has not answered
/// it for [`quorum_lost_after`].
pub fn leader_without_quorum(raft: &NexusRaft) -> bool {
    use openraft::async_runtime::WatchReceiver;
    let lost_after = quorum_lost_after(raft.config());
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics.current_leader == Some(metrics.id) && !quorum_fresh(&metrics, lost_after)
}

/// Resolves once this leader has lost its quorum (checked every 50 ms).
async fn quorum_lost(raft: &NexusRaft) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if leader_without_quorum(raft) {
            return;
        }
    }
}

/// Applies `request` through Raft on this replica, which must be the
/// leader; the leader's clock stamps it. If the leader loses its quorum
/// while the entry is in flight, the caller gets an unknown outcome at
/// once (the entry may still commit if the partition heals in time, so a
/// retry must carry the same session to stay exactly-once).
pub async fn leader_write(
    raft: &NexusRaft,
    mut request: command::Request,
) -> Result<command::Response, ForwardError> {
    request.time_ns = crate::clock::now_ns();
    let written = tokio::select! {
        written = raft.client_write(request) => written,
        () = quorum_lost(raft) => {
            return Err(ForwardError::Unavailable(
                "the leader lost its quorum; the write may or may not apply".to_owned(),
            ));
        }
    };
    match written {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ForwardError::NotLeader {
                leader: forward.leader_id.zip(forward.leader_node),
            })
        }
        Err(error) => Err(ForwardError::Unavailable(error.to_string())),
    }
}

/// The leader's read index: once a replica has applied it, a read there is
/// linearizable.
pub async fn leader_read_index(raft: &NexusRaft) -> Result<u64, ForwardError> {
    let linearizer = tokio::select! {
        linearizer = raft.get_read_linearizer(ReadPolicy::ReadIndex) => linearizer,
        () = quorum_lost(raft) => {
            return Err(ForwardError::NotLeader { leader: None });
        }
    };
    match linearizer {
        Ok(linearizer) => Ok(linearizer.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
            Err(ForwardError::NotLeader {
                leader: forward.leader_id.zip(forward.leader_node),
            })
        }
        Err(error) => Err(ForwardError::Unavailable(error.to_string())),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = parse("append entries", request)?;
        frame(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: VoteRequest<TypeConfig> = parse("vote", request)?;
        frame(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = parse("transfer leader", request)?;
        let outcome: Result<_, RaftError<TypeConfig>> = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(RaftError::Fatal);
        frame(&outcome)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Frame>, Status> {
        let mut chunks = request.into_inner();
        let header = match chunks.next().await {
            Some(Ok(SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream starts with its header",
                ));
            }
        };
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            decode("snapshot header", &header)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = format!("{}-{}", std::process::id(), crate::clock::now_ns());
        let path = self.state_machine.incoming_path(&name);
        let written = receive_file(&path, &mut chunks).await;
        if let Err(status) = written {
            let _ = std::fs::remove_file(&path);
            return Err(status);
        }
        let file = SnapshotFile::open(&path).map_err(|e| Status::internal(e.to_string()))?;
        let outcome: Result<_, RaftError<TypeConfig>> = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await
            .map_err(RaftError::Fatal);
        let _ = std::fs::remove_file(&path);
        frame(&outcome)
    }

    async fn forward(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let op: LeaderOp = parse("forwarded request", request)?;
        frame(&self.node.execute_here(op).await)
    }

    async fn read_index(&self, _request: Request<Frame>) -> Result<Response<Frame>, Status> {
        frame(&self.node.leader_read_index().await)
    }
}

async fn receive_file(
    path: &std::path::Path,
    chunks: &mut Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    use crate::raft::run_blocking;
    let internal = |e: std::io::Error| Status::internal(e.to_string());
    let path = path.to_owned();
    let mut file = run_blocking("create snapshot file", move || std::fs::File::create(path))
        .await
        .and_then(|created| created)
        .map_err(internal)?;
    let mut received: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let Some(snapshot_chunk::Part::Data(data)) = chunk?.part else {
            return Err(Status::invalid_argument(
                "only data chunks may follow the header",
            ));
        };
        received += data.len() as u64;
        if received > SNAPSHOT_SIZE_MAX_BYTES {
            return Err(Status::resource_exhausted(format!(
                "snapshot larger than {SNAPSHOT_SIZE_MAX_BYTES} bytes"
            )));
        }
        file = run_blocking("write snapshot", move || {
            std::io::Write::write_all(&mut file, &data).map(|()| file)
        })
        .await
        .and_then(|written| written)
        .map_err(internal)?;
    }
    run_blocking("sync snapshot", move || file.sync_all())
        .await
        .and_then(|synced| synced)
        .map_err(internal)
}
