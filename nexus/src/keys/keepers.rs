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
    FetchShareRequest, FetchShareResponse, MESSAGE_SIZE_MAX_BYTES, ShareKind, StoreShareRequest,
};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{ChannelOptions, TlsConfigError, client_config, grpc_channel};
use tonic::transport::Channel;
use zeroize::Zeroize;

use crate::metrics::{KeeperMetrics, KeeperOperation, KeeperOutcome};

/// Longest one keeper call may take.
pub const KEEPER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The keepers of the cluster, in share-index order: keeper `i` (from 1)
/// holds share `i`.
#[derive(Clone)]
pub struct Keepers {
    keepers: Vec<(SocketAddr, KeeperClient<Channel>)>,
    metrics: KeeperMetrics,
}

impl Keepers {
    /// Clients for `addresses`, accepting only servers with the Keeper
    /// role; every push and fetch is counted in `metrics`.
    pub fn new(
        addresses: &[SocketAddr],
        identity: Identity,
        trust_roots: TrustRoots,
        metrics: KeeperMetrics,
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
        Ok(Self { keepers, metrics })
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
            // Named step: the share leaves its wrapper for the wire (the
            // message wipes it when tonic drops it).
            let request = StoreShareRequest {
                root_key_id: root_key_id.0,
                key_check: key_check.as_bytes().to_vec(),
                index: u32::from(share.index().get()),
                share: share.expose_secret().to_vec(),
                committed: kind.committed_flag(),
            };
            let metrics = &self.metrics;
            async move {
                let mut call = spike_sdk::keeper_api::versioned(request);
                call.set_timeout(KEEPER_CALL_TIMEOUT);
                match client.store_share(call).await {
                    Ok(_) => {
                        metrics.called(KeeperOperation::Push, KeeperOutcome::Ok);
                        true
                    }
                    Err(status) => {
                        metrics.called(KeeperOperation::Push, KeeperOutcome::Error);
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
                let mut call = spike_sdk::keeper_api::versioned(FetchShareRequest {
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
    /// that holds one. Keeper `i` must answer with share `i`: a share under
    /// another index (a lying keeper, or one keeper listed under two
    /// addresses) is dropped, so it cannot stand in for an honest keeper's.
    pub async fn fetch(&self, root_key_id: RootKeyId, key_check: KeyCheck) -> Vec<KeyShare> {
        let calls = self.keepers.iter().enumerate().map(|(position, (address, client))| {
            let mut client = client.clone();
            let metrics = &self.metrics;
            async move {
                let mut call = spike_sdk::keeper_api::versioned(FetchShareRequest {
                    root_key_id: root_key_id.0,
                    key_check: key_check.as_bytes().to_vec(),
                });
                call.set_timeout(KEEPER_CALL_TIMEOUT);
                let reply = match client.fetch_share(call).await {
                    Ok(reply) => reply.into_inner(),
                    Err(status) => {
                        metrics.called(KeeperOperation::Fetch, KeeperOutcome::Error);
                        tracing::debug!(keeper = %address, %root_key_id, code = ?status.code(), "keeper has no share");
                        return None;
                    }
                };
                let share = share_of_reply(position, root_key_id, key_check, &reply)
                    .map_err(|reason| tracing::warn!(keeper = %address, %reason, "keeper answered with an unusable share; ignored"))
                    .ok();
                let outcome = if share.is_some() { KeeperOutcome::Ok } else { KeeperOutcome::Unusable };
                metrics.called(KeeperOperation::Fetch, outcome);
                share
            }
        });
        join_all(calls).await.into_iter().flatten().collect()
    }
}

/// The share in `reply` from the keeper at `position` (from 0), if it is
/// well formed, of the key asked for, and under that keeper's own index.
fn share_of_reply(
    position: usize,
    root_key_id: RootKeyId,
    key_check: KeyCheck,
    reply: &FetchShareResponse,
) -> Result<KeyShare, String> {
    let value = SecretBytes::<32>::from_slice(&reply.share)
        .map_err(|length| format!("a share is 32 bytes, this one has {length}"))?;
    if reply.root_key_id != root_key_id.0 || reply.key_check.as_slice() != key_check.as_bytes() {
        return Err(format!(
            "asked for root key {root_key_id}, answered with root key {}",
            reply.root_key_id
        ));
    }
    let expected = position + 1;
    if usize::try_from(reply.index).ok() != Some(expected) {
        return Err(format!(
            "keeper {expected} answered with share index {}",
            reply.index
        ));
    }
    let index = u8::try_from(reply.index)
        .ok()
        .and_then(|index| ShareIndex::new(index).ok())
        .ok_or_else(|| format!("share index {} is not in 1..=255", reply.index))?;
    Ok(KeyShare::new(index, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(index: u32, root_key_id: u64, check: KeyCheck) -> FetchShareResponse {
        FetchShareResponse {
            root_key_id,
            key_check: check.as_bytes().to_vec(),
            index,
            share: vec![5; 32],
            committed: true,
        }
    }

    #[test]
    fn a_keeper_answers_only_with_its_own_share_index() {
        // Regression (review #8): the index was taken from the reply as is,
        // so one keeper could answer with another's index, or one keeper
        // listed twice answered twice with the same index.
        let check = KeyCheck::from_bytes([3; 32]);
        let id = RootKeyId(4);
        let share = share_of_reply(1, id, check, &reply(2, 4, check)).expect("keeper 2, share 2");
        assert_eq!(share.index().get(), 2);
        assert!(share_of_reply(0, id, check, &reply(2, 4, check)).is_err());
        assert!(share_of_reply(2, id, check, &reply(2, 4, check)).is_err());
        assert!(share_of_reply(1, id, check, &reply(2, 5, check)).is_err());
        assert!(share_of_reply(1, id, KeyCheck::from_bytes([9; 32]), &reply(2, 4, check)).is_err());
        let mut short = reply(2, 4, check);
        short.share.truncate(31);
        assert!(share_of_reply(1, id, check, &short).is_err());
        assert!(share_of_reply(255, id, check, &reply(256, 4, check)).is_err());
    }
}
