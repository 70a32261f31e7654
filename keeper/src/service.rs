//! The gRPC service: validates each request fully before touching the store.

use std::sync::Mutex;

use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::{KeyShare, SecretBytes, ShareIndex};
use spike_sdk::keeper_api::keeper_server::Keeper;
use spike_sdk::keeper_api::{
    FetchShareRequest, FetchShareResponse, StoreShareRequest, StoreShareResponse,
};
use spike_sdk::tls::PeerIdentity;
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::share_store::{ShareStore, StoreError};

/// The keeper's gRPC service.
#[derive(Debug, Default)]
pub struct KeeperService {
    store: Mutex<ShareStore>,
}

impl KeeperService {
    fn store(&self) -> Result<std::sync::MutexGuard<'_, ShareStore>, Status> {
        // A panic while holding the lock would be a bug; refuse service
        // rather than serve shares from a store in an unknown state.
        self.store
            .lock()
            .map_err(|_| Status::internal("share store unavailable"))
    }
}

fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerIdentity>()
        .map(|peer| peer.spiffe_id.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn parse_store_request(request: &mut StoreShareRequest) -> Result<(RootKeyId, KeyShare), Status> {
    if request.root_key_id == 0 {
        return Err(Status::invalid_argument("root_key_id must be at least 1"));
    }
    let index = u8::try_from(request.index)
        .ok()
        .and_then(|index| ShareIndex::new(index).ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("share index {} is not in 1..=255", request.index))
        })?;
    let value = SecretBytes::<32>::from_slice(&request.share).map_err(|length| {
        Status::invalid_argument(format!("a share is 32 bytes, this one has {length}"))
    });
    request.share.zeroize();
    Ok((RootKeyId(request.root_key_id), KeyShare::new(index, value?)))
}

#[tonic::async_trait]
impl Keeper for KeeperService {
    async fn store_share(
        &self,
        mut request: Request<StoreShareRequest>,
    ) -> Result<Response<StoreShareResponse>, Status> {
        let caller = caller(&request);
        let (root_key_id, share) = parse_store_request(request.get_mut())?;
        let index = share.index();
        let held = self.store()?.store(root_key_id, share).map_err(|error| {
            tracing::warn!(%caller, %root_key_id, %index, %error, "share refused");
            match error {
                StoreError::Conflict(_) => Status::already_exists(error.to_string()),
                StoreError::Stale(_) => Status::failed_precondition(error.to_string()),
            }
        })?;
        tracing::info!(%caller, %root_key_id, %index, "share stored");
        Ok(Response::new(StoreShareResponse {
            held_root_key_ids: held.into_iter().map(|id| id.0).collect(),
        }))
    }

    async fn fetch_share(
        &self,
        request: Request<FetchShareRequest>,
    ) -> Result<Response<FetchShareResponse>, Status> {
        let caller = caller(&request);
        let wanted = match request.get_ref().root_key_id {
            0 => None,
            id => Some(RootKeyId(id)),
        };
        let store = self.store()?;
        let (root_key_id, share) = store.fetch(wanted).ok_or_else(|| match wanted {
            Some(id) => Status::not_found(format!("no share held for root key {id}")),
            None => Status::not_found("no share held"),
        })?;
        tracing::debug!(%caller, %root_key_id, "share fetched");
        // The response buffer is the one copy we cannot wipe: tonic owns it
        // once returned.
        Ok(Response::new(FetchShareResponse {
            root_key_id: root_key_id.0,
            index: u32::from(share.index().get()),
            share: share.expose_secret().to_vec(),
        }))
    }
}
