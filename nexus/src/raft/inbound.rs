//! The receiving side of the Raft RPCs that [`super::network`] sends: each
//! takes a request as the cluster service received it (encoded) and
//! returns the encoded outcome to send back. A request that does not
//! decode is the sender's fault; everything Raft says, failures included,
//! travels back as the outcome.

use std::io;
use std::path::{Path, PathBuf};

use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use openraft::storage::Snapshot;
use serde::Serialize;

use super::codec::{CodecError, decode, encode};
use super::contact::LeaderContact;
use super::snapshot::SnapshotFile;
use super::state_machine::StateMachine;
use super::{NexusRaft, SnapshotMetaOf, TypeConfig, VoteOf};

/// Why an incoming Raft RPC got no outcome to send back.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The request does not decode (the sender's fault).
    #[error("malformed request: {0}")]
    Malformed(CodecError),
    /// This replica could not encode its outcome.
    #[error("{0}")]
    Encode(CodecError),
    /// This replica could not open a received snapshot file.
    #[error("{0}")]
    Local(io::Error),
}

/// Hands incoming Raft RPCs to this replica's Raft.
#[derive(Clone)]
pub struct Inbound {
    raft: NexusRaft,
    machine: StateMachine,
    contact: LeaderContact,
}

impl Inbound {
    pub(super) fn new(raft: NexusRaft, machine: StateMachine, contact: LeaderContact) -> Self {
        Self {
            raft,
            machine,
            contact,
        }
    }

    /// An append-entries (or heartbeat) request. One this replica accepts
    /// (the sender leads its term) is remembered in [`LeaderContact`].
    pub async fn append_entries(&self, request: &[u8]) -> Result<Vec<u8>, InboundError> {
        let rpc: AppendEntriesRequest<TypeConfig> = parse("append entries", request)?;
        let leader_commit = rpc.leader_commit.as_ref().map_or(0, |log_id| log_id.index);
        let handled = self.raft.append_entries(rpc).await;
        if let Ok(
            AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict,
        ) = &handled
        {
            self.contact.heard(leader_commit);
        }
        outcome(&handled)
    }

    /// A vote request.
    pub async fn vote(&self, request: &[u8]) -> Result<Vec<u8>, InboundError> {
        let rpc: VoteRequest<TypeConfig> = parse("vote", request)?;
        outcome(&self.raft.vote(rpc).await)
    }

    /// The leader hands leadership to this replica.
    pub async fn transfer_leader(&self, request: &[u8]) -> Result<Vec<u8>, InboundError> {
        let rpc: TransferLeaderRequest<TypeConfig> = parse("transfer leader", request)?;
        let handled: Result<_, RaftError<TypeConfig>> = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(RaftError::Fatal);
        outcome(&handled)
    }

    /// Where to write an incoming snapshot file called `name` (the same
    /// file system as the snapshots, so installing it is a rename).
    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        self.machine.incoming_path(name)
    }

    /// Reads the header an incoming snapshot stream starts with (the
    /// vote and snapshot metadata), before its data is received.
    pub fn snapshot_header(&self, header: &[u8]) -> Result<SnapshotHeader, InboundError> {
        let (vote, meta) = parse("snapshot header", header)?;
        Ok(SnapshotHeader { vote, meta })
    }

    /// Installs the snapshot received whole at `path`.
    pub async fn install_snapshot(
        &self,
        header: SnapshotHeader,
        path: &Path,
    ) -> Result<Vec<u8>, InboundError> {
        let file = SnapshotFile::open(path).map_err(InboundError::Local)?;
        let installed: Result<_, RaftError<TypeConfig>> = self
            .raft
            .install_full_snapshot(
                header.vote,
                Snapshot {
                    meta: header.meta,
                    snapshot: file,
                },
            )
            .await
            .map_err(RaftError::Fatal);
        outcome(&installed)
    }
}

/// What an incoming snapshot is: the sender's vote and the metadata.
pub struct SnapshotHeader {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, InboundError> {
    decode(what, bytes).map_err(InboundError::Malformed)
}

fn outcome<T: Serialize>(value: &T) -> Result<Vec<u8>, InboundError> {
    encode(value).map_err(InboundError::Encode)
}
