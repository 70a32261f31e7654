//! Entry point for the keeper fuzz target in `fuzz/` (built with the
//! `fuzzing` feature only): bytes as they reach the keeper's gRPC service,
//! a panic is a finding.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use prost::Message;
use spike_sdk::keeper_api::{
    FetchShareRequest, FetchShareResponse, HeldKey, StoreShareRequest, StoreShareResponse,
};

use crate::service::KeeperService;
use crate::share_store::{COMMITTED_KEYS_MAX, PENDING_KEYS_MAX};
use spike_sdk::keeper_api::keeper_server::Keeper;

/// A run of messages, each `kind ‖ length (u16, big-endian) ‖ protobuf`,
/// decoded as the message `kind` names and, for requests, served by one
/// keeper in order. Properties: decoding never panics and what decodes
/// encodes and decodes to itself; a store that succeeds is then fetched
/// back unchanged; the keeper never holds more than its bounds.
pub fn messages(bytes: &[u8]) {
    let service = KeeperService::default();
    let mut rest = bytes;
    while let [kind, high, low, tail @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (message, tail) = tail.split_at(length);
        rest = tail;
        match kind % 5 {
            0 => {
                if let Some(request) = round_trip::<StoreShareRequest>(message) {
                    store(&service, request);
                }
            }
            1 => {
                if let Some(request) = round_trip::<FetchShareRequest>(message) {
                    let _ = ready(service.fetch_share(tonic::Request::new(request)));
                }
            }
            2 => {
                round_trip::<FetchShareResponse>(message);
            }
            3 => {
                round_trip::<StoreShareResponse>(message);
            }
            _ => {
                round_trip::<HeldKey>(message);
            }
        }
    }
}

fn store(service: &KeeperService, request: StoreShareRequest) {
    let wanted = FetchShareRequest {
        root_key_id: request.root_key_id,
        key_check: request.key_check.clone(),
    };
    let (index, share) = (request.index, request.share.clone());
    let Ok(stored) = ready(service.store_share(tonic::Request::new(request))) else {
        return;
    };
    let held = stored.into_inner().held;
    let committed = held.iter().filter(|key| key.committed).count();
    assert!(
        committed <= COMMITTED_KEYS_MAX,
        "{committed} committed keys held"
    );
    assert!(
        held.len() - committed <= PENDING_KEYS_MAX,
        "{} pending keys held",
        held.len() - committed
    );
    let fetched = ready(service.fetch_share(tonic::Request::new(wanted)))
        .expect("a share just stored is fetched back")
        .into_inner();
    assert!(
        fetched.index == index && fetched.share == share,
        "a stored share came back different"
    );
}

/// Decodes `bytes` as `M`; what decodes must encode to bytes that decode
/// to the same message.
fn round_trip<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("an encoded message decodes");
    assert!(again == message, "a message changed in a round trip");
    Some(message)
}

/// The keeper's handlers never wait (their lock is not async): polled
/// once, they are done.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a keeper handler waited"),
    }
}

/// Seed inputs, `(name, bytes)`: runs of messages as a leader sends them
/// (pushes of committed and pending shares, fetches) and the keeper's
/// answers.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let store = |root_key_id: u64, index: u32, committed: bool| StoreShareRequest {
        root_key_id,
        key_check: vec![root_key_id as u8; 32],
        index,
        share: vec![index as u8; 32],
        committed,
    };
    let fetch = |root_key_id: u64| FetchShareRequest {
        root_key_id,
        key_check: if root_key_id == 0 {
            Vec::new()
        } else {
            vec![root_key_id as u8; 32]
        },
    };
    let mut run = Vec::new();
    let mut push = |kind: u8, message: Vec<u8>| {
        run.push(kind);
        run.extend_from_slice(&(message.len() as u16).to_be_bytes());
        run.extend_from_slice(&message);
    };
    push(0, store(1, 1, true).encode_to_vec());
    push(1, fetch(0).encode_to_vec());
    push(0, store(2, 1, false).encode_to_vec());
    push(1, fetch(2).encode_to_vec());
    push(0, store(2, 1, true).encode_to_vec());
    push(0, store(3, 2, true).encode_to_vec());
    push(1, fetch(1).encode_to_vec());
    push(
        2,
        FetchShareResponse {
            root_key_id: 3,
            key_check: vec![3; 32],
            index: 2,
            share: vec![2; 32],
            committed: true,
        }
        .encode_to_vec(),
    );
    push(
        3,
        StoreShareResponse {
            held: vec![HeldKey {
                root_key_id: 3,
                key_check: vec![3; 32],
                committed: true,
            }],
        }
        .encode_to_vec(),
    );
    vec![("leader".to_owned(), run)]
}
