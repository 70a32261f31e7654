//! openraft's network over the cluster gRPC service.

use std::future::Future;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use openraft::OptionalSend;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::codec::{decode, encode};
use super::snapshot::SnapshotFile;
use super::{NexusNode, NexusSnapshot, TypeConfig, VoteOf};
use crate::transport::SNAPSHOT_CHUNK_BYTES;
use crate::transport::peers::Peers;
use crate::transport::proto::cluster_client::ClusterClient;
use crate::transport::proto::{Frame, SnapshotChunk, snapshot_chunk};

/// openraft gives an append one heartbeat interval (50 ms), the whole
/// round trip included: a peer further away than that, or a batch larger
/// than the link carries in that time, would never be replicated, and the
/// cluster would stop committing (the harness's delayed-links nemesis found
/// it: 25 ms each way stalled every write). Appends get at least this...
const APPEND_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// ...and a second more per this many bytes (a slow link). A partitioned
/// follower's replication waits this long before it is retried; the
/// others' replication and heartbeats go on meanwhile.
const APPEND_BYTES_PER_SECOND: usize = 8 * 1024 * 1024;

/// The timeout of an append of `payload` bytes that openraft asked to
/// finish within `asked`.
fn append_timeout(asked: Duration, payload: usize) -> Duration {
    let for_size = Duration::from_millis((payload as u64 * 1000) / APPEND_BYTES_PER_SECOND as u64);
    asked.max(APPEND_TIMEOUT_MIN + for_size)
}

/// Hands openraft a connection per peer.
pub struct Network {
    peers: Peers,
}

impl Network {
    /// Connects through `peers`.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    target: u64,
    client: ClusterClient<Channel>,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &NexusNode) -> PeerConnection {
        PeerConnection {
            target,
            client: self.peers.client(node.cluster_addr),
            peers: self.peers.clone(),
        }
    }
}

fn to_rpc_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::from_string(status.message().to_owned()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "{}: {}",
            status.code(),
            status.message()
        ))),
    }
}

impl PeerConnection {
    /// Sends `message` to `method` and decodes the remote `Result`;
    /// `timeout` is given the encoded size.
    async fn call<Req, Resp, F, Fut>(
        &self,
        message: &Req,
        timeout: impl FnOnce(usize) -> Duration,
        method: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(ClusterClient<Channel>, tonic::Request<Frame>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Frame>, tonic::Status>>,
    {
        let payload = encode(message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = timeout(payload.len());
        let mut request = self.peers.request(Frame { payload });
        request.set_timeout(timeout);
        let reply = method(self.client.clone(), request)
            .await
            .map_err(to_rpc_error)?;
        let outcome: Result<Resp, RaftError<TypeConfig>> =
            decode("raft reply", &reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The remote side failed fatally (shut down, storage error): to us
        // it is a peer we cannot use right now.
        outcome.map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "node {}: {e}",
                self.target
            )))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let asked = option.hard_ttl();
        self.call(
            &rpc,
            |payload| append_timeout(asked, payload),
            |mut client, request| async move { client.append_entries(request).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            &rpc,
            |_| option.hard_ttl(),
            |mut client, request| async move { client.vote(request).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            &request,
            |_| option.hard_ttl(),
            |mut client, request| async move { client.transfer_leader(request).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: NexusSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let file = snapshot
            .snapshot
            .reader()
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        // Chunks are read on demand: the file never sits in memory whole.
        let chunks = stream::unfold(Some(file), |state| async move {
            let reader = state?;
            let (reader, buffer) = super::run_blocking("read snapshot", move || {
                let mut reader = reader;
                let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let read = std::io::Read::read(&mut reader, &mut buffer)?;
                buffer.truncate(read);
                Ok::<_, std::io::Error>((reader, buffer))
            })
            .await
            .ok()?
            .ok()?;
            if buffer.is_empty() {
                return None;
            }
            Some((
                SnapshotChunk {
                    part: Some(snapshot_chunk::Part::Data(buffer)),
                },
                Some(reader),
            ))
        });
        let first = SnapshotChunk {
            part: Some(snapshot_chunk::Part::Header(header)),
        };
        let outgoing = stream::iter([first]).chain(chunks);
        let mut client = self.client.clone();
        let request = self.peers.request(outgoing);
        let send = async move { client.install_snapshot(request).await };
        let reply = tokio::select! {
            reply = send => reply.map_err(|status| StreamingError::from(to_rpc_error(status)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let outcome: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
            decode("snapshot reply", &reply.into_inner().payload)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        outcome.map_err(|e| {
            StreamingError::Network(NetworkError::from_string(format!(
                "node {}: {e}",
                self.target
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_get_time_for_distance_and_size_beyond_a_heartbeat() {
        let heartbeat = Duration::from_millis(50);
        assert_eq!(append_timeout(heartbeat, 200), APPEND_TIMEOUT_MIN);
        assert_eq!(
            append_timeout(heartbeat, 16 * 1024 * 1024),
            APPEND_TIMEOUT_MIN + Duration::from_secs(2)
        );
        let generous = Duration::from_secs(30);
        assert_eq!(append_timeout(generous, 200), generous);
    }
}
