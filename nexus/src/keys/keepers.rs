//! Talking to the keepers: push a key's shares to every keeper, fetch the
//! shares of a key back. All keepers are asked concurrently; each call is
//! bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::{KeyCheck, KeyShare, SecretBytes, ShareIndex};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::keeper_api::keeper_client::KeeperClient;
use spike_sdk::keeper_api::{
    FetchShareRequest, MESSAGE_SIZE_MAX_BYTES, ShareKind, StoreShareRequest,
};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{ChannelOptions, TlsConfigError, client_config, grpc_channel};
use tonic::transport::Channel;
use zeroize::Zeroize;

/// Longest one keeper call may take.
pub const KEEPER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The keepers of the cluster, in share-index order: keeper `i` (from 1)
/// holds share `i`.
#[derive(Clone)]
pub struct Keepers {
    keepers: Vec<(SocketAddr, KeeperClient<Channel>)>,
}

impl Keepers {
    /// Clients for `addresses`, accepting only servers with the Keeper role.
    pub fn new(
        addresses: &[SocketAddr],
        identity: Identity,
        trust_roots: TrustRoots,
    ) -> Result<Self, TlsConfigError> {
        let config = client_config(identity, PeerAuthorizer::role(trust_roots, Role::Keeper))?;
        let options = ChannelOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: KEEPER_CALL_TIMEOUT,
            keepalive_interval: Duration::from_secs(5),
        };
        let keepers = addresses
            .iter()
            .map(|address| {
                let client = KeeperClient::new(grpc_channel(*address, config.clone(), options))
                    .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
                    .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES);
                (*address, client)
            })
            .collect();
        Ok(Self { keepers })
    }

    /// How many keepers there are.
    pub fn len(&self) -> usize {
        self.keepers.len()
    }

    /// Sends share `i` to keeper `i`, all at once, as shares of a key of
    /// `kind`; returns how many keepers acknowledged holding their share.
    pub async fn push(
        &self,
        root_key_id: RootKeyId,
        key_check: KeyCheck,
        shares: &[KeyShare],
        kind: ShareKind,
    ) -> usize {
        let calls = self.keepers.iter().zip(shares).map(|((address, client), share)| {
            let mut client = client.clone();
            // Named step: the share leaves its wrapper for the wire.
            let mut request = StoreShareRequest {
                root_key_id: root_key_id.0,
                key_check: key_check.as_bytes().to_vec(),
                index: u32::from(share.index().get()),
                share: share.expose_secret().to_vec(),
                committed: kind.committed_flag(),
            };
            async move {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(KEEPER_CALL_TIMEOUT);
                request.share.zeroize();
                match client.store_share(call).await {
                    Ok(_) => true,
                    Err(status) => {
                        tracing::debug!(keeper = %address, %root_key_id, code = ?status.code(), message = status.message(), "keeper did not take its share");
                        false
                    }
                }
            }
        });
        join_all(calls)
            .await
            .into_iter()
            .filter(|acked| *acked)
            .count()
    }

    /// The newest committed root key id each reachable keeper holds: a new
    /// key must take an id above all of them, or keepers would refuse it.
    pub async fn committed_ids(&self) -> Vec<u64> {
        let calls = self.keepers.iter().map(|(_, client)| {
            let mut client = client.clone();
            async move {
                let mut call = tonic::Request::new(FetchShareRequest {
                    root_key_id: 0,
                    key_check: Vec::new(),
                });
                call.set_timeout(KEEPER_CALL_TIMEOUT);
                let mut reply = client.fetch_share(call).await.ok()?.into_inner();
                reply.share.zeroize();
                Some(reply.root_key_id)
            }
        });
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Fetches the shares of the key named by id and check from every keeper
    /// that holds one.
    pub async fn fetch(&self, root_key_id: RootKeyId, key_check: KeyCheck) -> Vec<KeyShare> {
        let calls = self.keepers.iter().map(|(address, client)| {
            let mut client = client.clone();
            async move {
                let mut call = tonic::Request::new(FetchShareRequest {
                    root_key_id: root_key_id.0,
                    key_check: key_check.as_bytes().to_vec(),
                });
                call.set_timeout(KEEPER_CALL_TIMEOUT);
                let mut reply = match client.fetch_share(call).await {
                    Ok(reply) => reply.into_inner(),
                    Err(status) => {
                        tracing::debug!(keeper = %address, %root_key_id, code = ?status.code(), "keeper has no share");
                        return None;
                    }
                };
                let share = SecretBytes::<32>::from_slice(&reply.share);
                reply.share.zeroize();
                let index = u8::try_from(reply.index).ok().and_then(|i| ShareIndex::new(i).ok());
                let answered_other_key = reply.root_key_id != root_key_id.0
                    || reply.key_check.as_slice() != key_check.as_bytes();
                match (index, share) {
                    (Some(index), Ok(value)) if !answered_other_key => Some(KeyShare::new(index, value)),
                    _ => {
                        tracing::warn!(keeper = %address, "keeper answered with a malformed share; ignored");
                        None
                    }
                }
            }
        });
        join_all(calls).await.into_iter().flatten().collect()
    }
}
