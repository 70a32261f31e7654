//! The wire contract of the SPIKE API, in one place: routes, headers,
//! error codes with their HTTP status, and a typed request and answer for
//! every route, SPIKE's and ours. The Nexus server, the application client,
//! the `spike` CLI, the benchmark and the fault-injection harness all use
//! these types, so a change to the contract is a change to one file that
//! the compiler carries everywhere.
//!
//! SPIKE compatibility: the JSON names and shapes are SPIKE's (0.8.0 and
//! its development line), quirks included (`spiffiedPattern`; `[32]byte`
//! shards as arrays of numbers; times as Go writes them; the route's zero
//! answer plus `err` on failure). Bodies are decoded as Go's
//! `encoding/json` decodes them ([`decode`]), so every Go client is
//! understood exactly as SPIKE understands it. Requests are written byte
//! for byte as SPIKE's Go SDK writes them.
//!
//! Conventions SPIKE sets: every route is `POST` to an exact path plus an
//! `?action=` ([`Route`]); any other method, path or action is 400
//! `api_bad_request`; success is 200 with SPIKE's no-cache headers
//! ([`header::NO_CACHE`]).

mod bootstrap;
mod cipher;
mod cluster;
pub mod encoding;
mod error;
mod go_json;
pub mod header;
mod operator;
mod policies;
mod route;
mod secrets;
mod snapshot;
mod time;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bootstrap::{VerifyRequest, VerifyResponse};
pub use cipher::{
    CIPHER_SIZE_MAX_BYTES, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse,
    FORMAT_VERSION, FrameError, NONCE_LEN, StreamFrame,
};
pub use cluster::{
    AddMemberRequest, BackupSchedule, ClusterHealth, ClusterHealthRequest, ClusterLimits,
    ClusterLimitsRequest, ClusterMembers, ClusterMembersRequest, ClusterStatus,
    ClusterStatusRequest, LastBackup, Member, MemberHealth, RATE_LIMIT_ID_LEN_MAX, RATE_LIMIT_MAX,
    RATE_LIMIT_RULES_MAX, RaftRole, RateLimitRule, RateLimits, RemoveMemberRequest, RootKeyState,
    RootKeyStatus, SetLimitsRequest, TransferLeaderRequest,
};
pub use encoding::Shard;
pub use error::ErrorCode;
pub use go_json::{DecodeError, decode};
pub use operator::{
    GetRotationRequest, RecoverRequest, RecoverResponse, RekeyRequest, RekeyResponse,
    RestoreRequest, RestoreResponse, RotateRequest, RotateResponse, RotationResponse,
    RotationSettings, SetRotationRequest,
};
pub use policies::{
    DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, ListPoliciesResponse, Policy,
    PolicyResponse, PutPolicyRequest, PutPolicyResponse,
};
pub use route::Route;
pub use secrets::{
    CUSTOM_METADATA_KEY_MAX_BYTES, CUSTOM_METADATA_KEYS_MAX, CUSTOM_METADATA_VALUE_MAX_BYTES,
    CustomMetadata, DeleteSecretRequest, DestroySecretRequest, EmptyResponse, GetSecretRequest,
    GetSecretResponse, ListSecretsRequest, ListSecretsResponse, PutSecretMetadataRequest,
    PutSecretRequest, SECRET_SIZE_MAX_BYTES, SecretMetadata, SecretMetadataRequest,
    SecretMetadataResponse, SecretValues, SecretVersions, UndeleteSecretRequest, VersionInfo,
};
pub use snapshot::{BACKUP_SIZE_MAX_BYTES, BACKUP_UNMETERED_MAX_BYTES, SnapshotRestoreResponse};
pub use time::Timestamp;

/// Largest request body of every route but backup restores, in bytes
/// (SPIKE sets none; past it the answer is 413).
pub const BODY_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// A JSON request: the route it goes to and the answer it gets.
pub trait ApiRequest: Serialize + DeserializeOwned {
    /// Where it is sent.
    const ROUTE: Route;
    /// What comes back.
    type Response: ApiResponse;
}

/// A JSON answer: on failure, its zero value with `err` set (SPIKE's
/// shape: Go's response struct, marshalled empty).
pub trait ApiResponse: Serialize + DeserializeOwned + Default {
    /// The failed answer with `code`.
    fn failed(code: ErrorCode) -> Self;
    /// The error a 200 answer carries, if any (SPIKE's clients treat one
    /// as a failure).
    fn error(&self) -> Option<ErrorCode>;
}

/// Implements [`ApiResponse`] for answers with an `err` field.
macro_rules! responses {
    ($($type:ty),* $(,)?) => {$(
        impl $crate::api::ApiResponse for $type {
            // Some answers have no field but `err`.
            #[allow(clippy::needless_update)]
            fn failed(code: $crate::api::ErrorCode) -> Self {
                Self {
                    err: Some(code),
                    ..Self::default()
                }
            }

            fn error(&self) -> Option<$crate::api::ErrorCode> {
                self.err
            }
        }
    )*};
}
use responses;

/// A request's body as SPIKE's Go SDK writes it.
pub fn encode<T: Serialize>(request: &T) -> Vec<u8> {
    // Our request types are maps, strings and numbers: writing them into a
    // vector cannot fail, and if it ever did the server would answer 400.
    serde_json::to_vec(request).unwrap_or_default()
}
