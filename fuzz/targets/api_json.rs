//! The API's bytes from the network: a request or answer body decoded by
//! Go's rules (`spike_sdk::api::decode`) as the type the first byte picks,
//! a route from a path and query, or a cipher stream frame. Properties:
//! nothing panics; a body that decodes re-encodes, as the SDK writes it,
//! to a body that decodes to the same value; a route's own path and query
//! find it again; a frame's bytes parse back to the frame.

use serde::Serialize;
use serde::de::DeserializeOwned;
use spike_sdk::api::*;

/// Decodes `body` as `T`; what decodes survives a round trip.
fn body<T: Serialize + DeserializeOwned + PartialEq>(body: &[u8]) {
    if let Ok(value) = decode::<T>(body) {
        let again: T = decode(&encode(&value)).expect("what the SDK writes decodes");
        assert!(again == value, "a body changed in a round trip");
    }
}

fn route(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    if let Some(route) = Route::from_request(path, query) {
        let (path, query) = match route.path_and_query().split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (route.path_and_query(), None),
        };
        assert_eq!(Route::from_request(path, query), Some(route));
    }
}

fn frame(bytes: &[u8]) {
    if let Ok(frame) = StreamFrame::parse(bytes) {
        assert_eq!(frame.to_bytes(), bytes, "a frame's bytes changed");
        assert_eq!(StreamFrame::parse(&frame.to_bytes()), Ok(frame));
    }
}

fn main() {
    afl::fuzz!(|bytes: &[u8]| {
        let Some((&kind, rest)) = bytes.split_first() else {
            return;
        };
        match kind % 43 {
            0 => body::<VerifyRequest>(rest),
            1 => body::<VerifyResponse>(rest),
            2 => body::<EncryptRequest>(rest),
            3 => body::<EncryptResponse>(rest),
            4 => body::<DecryptRequest>(rest),
            5 => body::<DecryptResponse>(rest),
            6 => body::<ClusterStatusRequest>(rest),
            7 => body::<ClusterStatus>(rest),
            8 => body::<ClusterMembersRequest>(rest),
            9 => body::<ClusterMembers>(rest),
            10 => body::<AddMemberRequest>(rest),
            11 => body::<RemoveMemberRequest>(rest),
            12 => body::<TransferLeaderRequest>(rest),
            13 => body::<RecoverRequest>(rest),
            14 => body::<RecoverResponse>(rest),
            15 => body::<RestoreRequest>(rest),
            16 => body::<RestoreResponse>(rest),
            17 => body::<RekeyRequest>(rest),
            18 => body::<RekeyResponse>(rest),
            19 => body::<RotateRequest>(rest),
            20 => body::<RotateResponse>(rest),
            21 => body::<PutPolicyRequest>(rest),
            22 => body::<PutPolicyResponse>(rest),
            23 => body::<GetPolicyRequest>(rest),
            24 => body::<PolicyResponse>(rest),
            25 => body::<DeletePolicyRequest>(rest),
            26 => body::<ListPoliciesRequest>(rest),
            27 => body::<ListPoliciesResponse>(rest),
            28 => body::<PutSecretRequest>(rest),
            29 => body::<GetSecretRequest>(rest),
            30 => body::<GetSecretResponse>(rest),
            31 => body::<DeleteSecretRequest>(rest),
            32 => body::<UndeleteSecretRequest>(rest),
            33 => body::<DestroySecretRequest>(rest),
            34 => body::<ListSecretsRequest>(rest),
            35 => body::<ListSecretsResponse>(rest),
            36 => body::<SecretMetadataRequest>(rest),
            37 => body::<SecretMetadataResponse>(rest),
            38 => route(rest),
            39 => body::<GetRotationRequest>(rest),
            40 => body::<SetRotationRequest>(rest),
            41 => body::<RotationResponse>(rest),
            _ => frame(rest),
        }
    });
}
