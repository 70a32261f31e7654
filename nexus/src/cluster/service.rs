//! The cluster gRPC service, a plain adapter: it takes frames off the wire
//! and hands them to the replica's Raft ([`Inbound`]) or to [`Node`]
//! (forwarded requests, read indexes), and puts the outcome back in a
//! frame.

use futures_util::StreamExt;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::LeaderOp;
use super::version::check_sender;
use crate::integrity::Integrity;
use crate::node::Node;
use crate::raft::codec::{decode, encode};
use crate::raft::format::ClusterFormat;
use crate::raft::{Inbound, InboundError};
use crate::transport::SNAPSHOT_SIZE_MAX_BYTES;
use crate::transport::proto::cluster_server::Cluster;
use crate::transport::proto::{Frame, SnapshotChunk, snapshot_chunk};

/// Serves the cluster port of one replica.
pub struct ClusterService {
    node: Node,
    inbound: Inbound,
    format: ClusterFormat,
    integrity: Integrity,
}

impl ClusterService {
    /// The service of `node`, whose Raft takes RPCs through `inbound`, in
    /// a cluster that runs `format`, answering for its state digests from
    /// `integrity`.
    pub fn new(node: Node, inbound: Inbound, format: ClusterFormat, integrity: Integrity) -> Self {
        Self {
            node,
            inbound,
            format,
            integrity,
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

fn raft_reply(outcome: Result<Vec<u8>, InboundError>) -> Result<Response<Frame>, Status> {
    match outcome {
        Ok(payload) => Ok(Response::new(Frame { payload })),
        Err(error @ InboundError::Malformed(_)) => Err(Status::invalid_argument(error.to_string())),
        Err(error @ (InboundError::Encode(_) | InboundError::Local(_))) => {
            Err(Status::internal(error.to_string()))
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        raft_reply(
            self.inbound
                .append_entries(&request.into_inner().payload)
                .await,
        )
    }

    async fn vote(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        raft_reply(self.inbound.vote(&request.into_inner().payload).await)
    }

    async fn transfer_leader(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        raft_reply(
            self.inbound
                .transfer_leader(&request.into_inner().payload)
                .await,
        )
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
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
        let header = self
            .inbound
            .snapshot_header(&header)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name = format!("{}-{}", std::process::id(), crate::clock::now_ns());
        let path = self.inbound.snapshot_path(&name);
        let installed = match receive_file(&path, &mut chunks).await {
            Ok(()) => raft_reply(self.inbound.install_snapshot(header, &path).await),
            Err(status) => Err(status),
        };
        let _ = std::fs::remove_file(&path);
        installed
    }

    async fn forward(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        let op: LeaderOp = parse("forwarded request", request)?;
        frame(&self.node.execute_forwarded(op).await)
    }

    async fn read_index(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        frame(&self.node.leader_read_index().await)
    }

    async fn version(&self, _request: Request<Frame>) -> Result<Response<Frame>, Status> {
        super::version::reply(&self.format).map(Response::new)
    }

    async fn state_digests(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        check_sender(&request)?;
        self.integrity.reply().map(Response::new)
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
