//! One gRPC channel per peer address, shared by Raft replication and
//! forwarding, so connections (and their TLS sessions) are reused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{ChannelOptions, TlsConfigError, client_config, grpc_channel};
use tonic::transport::Channel;

use super::MESSAGE_SIZE_MAX_BYTES;
use super::proto::cluster_client::ClusterClient;
use crate::raft::format::{ClusterFormat, FORMAT_OLDEST};

/// The gRPC metadata key of the sender's cluster format (checked by
/// `version::check_sender`).
pub const FORMAT_HEADER: &str = "spike-format";

/// Puts the sender's cluster `format` on an outgoing cluster RPC.
pub fn stamp<T>(request: &mut tonic::Request<T>, format: u32) {
    request
        .metadata_mut()
        .insert(FORMAT_HEADER, tonic::metadata::MetadataValue::from(format));
}

/// Channels to the other replicas.
/// Ordered, so they are dropped (and their connections closed) in the
/// same order every time: the deterministic simulator depends on it.
#[derive(Clone)]
pub struct Peers {
    tls: rustls::ClientConfig,
    channels: Arc<Mutex<BTreeMap<SocketAddr, Channel>>>,
    /// The cluster's on-disk format, stamped on every request.
    format: ClusterFormat,
}

impl Peers {
    /// Peers we reach as `identity`, accepting only servers that carry the
    /// Nexus role under `trust_roots`.
    pub fn new(identity: Identity, trust_roots: TrustRoots) -> Result<Self, TlsConfigError> {
        let authorizer = PeerAuthorizer::role(trust_roots, Role::Nexus);
        Ok(Self {
            tls: client_config(identity, authorizer)?,
            channels: Arc::new(Mutex::new(BTreeMap::new())),
            // Raised by the state machine to the format the cluster runs.
            format: ClusterFormat::new(FORMAT_OLDEST),
        })
    }

    /// The cluster's on-disk format as this replica applied it.
    pub fn format(&self) -> &ClusterFormat {
        &self.format
    }

    /// `message` as a request stamped with the cluster's format.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        stamp(&mut request, self.format.get());
        request
    }

    /// A client for the replica at `address` (a cluster address).
    pub fn client(&self, socket: SocketAddr) -> ClusterClient<Channel> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = channels
            .entry(socket)
            .or_insert_with(|| {
                grpc_channel(
                    socket,
                    self.tls.clone(),
                    ChannelOptions {
                        connect_timeout: Duration::from_millis(500),
                        request_timeout: super::FORWARD_TIMEOUT,
                        keepalive_interval: Duration::from_secs(2),
                    },
                )
            })
            .clone();
        ClusterClient::new(channel)
            .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
            .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES)
    }
}
