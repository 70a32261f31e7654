//! The gRPC service: validates each request fully before touching the store.

use std::sync::Mutex;

use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::{KeyCheck, KeyShare, SecretBytes, ShareIndex};
use spike_sdk::keeper_api::check_version;
use spike_sdk::keeper_api::keeper_server::Keeper;
use spike_sdk::keeper_api::{
    FetchShareRequest, FetchShareResponse, HeldKey, ShareKind, StoreShareRequest,
    StoreShareResponse,
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

fn parse_key_check(bytes: &[u8]) -> Result<KeyCheck, Status> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "a key check is 32 bytes, this one has {}",
            bytes.len()
        ))
    })?;
    Ok(KeyCheck::from_bytes(bytes))
}

struct ParsedStore {
    root_key_id: RootKeyId,
    key_check: KeyCheck,
    share: KeyShare,
}

fn parse_store_request(request: &mut StoreShareRequest) -> Result<ParsedStore, Status> {
    // Take the share out first so it is wiped whatever else is wrong.
    let mut raw_share = std::mem::take(&mut request.share);
    let value = SecretBytes::<32>::from_slice(&raw_share);
    raw_share.zeroize();
    if request.root_key_id == 0 {
        return Err(Status::invalid_argument("root_key_id must be at least 1"));
    }
    let key_check = parse_key_check(&request.key_check)?;
    let index = u8::try_from(request.index)
        .ok()
        .and_then(|index| ShareIndex::new(index).ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("share index {} is not in 1..=255", request.index))
        })?;
    let value = value.map_err(|length| {
        Status::invalid_argument(format!("a share is 32 bytes, this one has {length}"))
    })?;
    Ok(ParsedStore {
        root_key_id: RootKeyId(request.root_key_id),
        key_check,
        share: KeyShare::new(index, value),
    })
}

#[tonic::async_trait]
impl Keeper for KeeperService {
    async fn store_share(
        &self,
        mut request: Request<StoreShareRequest>,
    ) -> Result<Response<StoreShareResponse>, Status> {
        check_version(&request)?;
        let caller = caller(&request);
        let kind = ShareKind::from_committed_flag(request.get_ref().committed);
        let parsed = parse_store_request(request.get_mut())?;
        let (root_key_id, key_check, index) =
            (parsed.root_key_id, parsed.key_check, parsed.share.index());
        let held = self
            .store()?
            .store(root_key_id, key_check, parsed.share, kind)
            .map_err(|error| {
                tracing::warn!(%caller, %root_key_id, %key_check, %index, %error, "share refused");
                match error {
                    StoreError::Conflict(_) => Status::already_exists(error.to_string()),
                    StoreError::Stale(_) => Status::failed_precondition(error.to_string()),
                }
            })?;
        tracing::debug!(%caller, %root_key_id, %key_check, %index, ?kind, "share stored");
        Ok(Response::new(StoreShareResponse {
            held: held
                .into_iter()
                .map(|held| HeldKey {
                    root_key_id: held.root_key_id.0,
                    key_check: held.key_check.as_bytes().to_vec(),
                    committed: held.kind.committed_flag(),
                })
                .collect(),
        }))
    }

    async fn fetch_share(
        &self,
        request: Request<FetchShareRequest>,
    ) -> Result<Response<FetchShareResponse>, Status> {
        check_version(&request)?;
        let caller = caller(&request);
        let wanted = match (
            request.get_ref().root_key_id,
            request.get_ref().key_check.is_empty(),
        ) {
            (0, true) => None,
            (0, false) => return Err(Status::invalid_argument("a key check needs a root_key_id")),
            (id, _) => Some((
                RootKeyId(id),
                parse_key_check(&request.get_ref().key_check)?,
            )),
        };
        let held = self.store()?.fetch(wanted).ok_or_else(|| match wanted {
            Some((id, check)) => {
                Status::not_found(format!("no share held for root key {id} ({check})"))
            }
            None => Status::not_found("no committed share held"),
        })?;
        tracing::debug!(%caller, root_key_id = %held.root_key_id, "share fetched");
        // The response buffer is the one copy we cannot wipe: tonic owns it
        // once returned.
        // PLANTED BUG keeper-returns-other-index: the share under the
        // next keeper's index.
        let index = u32::from(held.share.index().get());
        let index = if spike_sdk::planted!(KeeperReturnsOtherIndex) {
            index % 255 + 1
        } else {
            index
        };
        Ok(Response::new(FetchShareResponse {
            root_key_id: held.root_key_id.0,
            key_check: held.key_check.as_bytes().to_vec(),
            index,
            share: held.share.expose_secret().to_vec(),
            committed: held.kind.committed_flag(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spike_sdk::keeper_api::versioned;

    fn store_request(index: u32, committed: bool) -> StoreShareRequest {
        StoreShareRequest {
            root_key_id: 1,
            key_check: vec![9; 32],
            index,
            share: vec![index as u8; 32],
            committed,
        }
    }

    #[tokio::test]
    async fn a_fetch_answers_the_share_under_the_index_it_was_stored_with() {
        for index in [1, 2, 5, 255] {
            let service = KeeperService::default();
            service
                .store_share(versioned(store_request(index, true)))
                .await
                .expect("stored");
            let fetched = service
                .fetch_share(versioned(FetchShareRequest {
                    root_key_id: 1,
                    key_check: vec![9; 32],
                }))
                .await
                .expect("fetched")
                .into_inner();
            assert_eq!(fetched.index, index);
            assert_eq!(fetched.share, vec![index as u8; 32]);
            assert_eq!((fetched.root_key_id, fetched.committed), (1, true));
        }
    }
}
