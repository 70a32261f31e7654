//! The SPIKE REST API on every replica.
//!
//! SPIKE's conventions: every route is `POST` to a path plus `?action=`;
//! anything else is 400 `api_bad_request`. Checks run in SPIKE's order:
//! parse the body (bad JSON: 400), authorize (401), validate (400), act
//! (404/500). Without the root key, secret routes answer 503
//! `state_not_ready`; recover, restore and the cluster routes stay
//! reachable. Every answer carries SPIKE's no-cache headers and a hint
//! naming the leader's API address.

mod cluster;
mod operator;
mod reply;
mod secrets;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use spike_sdk::identity::{Role, TrustRoots};
use spike_sdk::tls::PeerIdentity;

use crate::audit::{AuditEntry, AuditLog};
use crate::node::Node;
use crate::state::command::SessionRef;
pub use reply::ApiError;

/// Largest request body accepted (SPIKE sets none; we answer 413 past it).
pub const BODY_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// What every handler needs.
pub struct Api {
    /// This replica.
    pub node: Node,
    /// Who carries which role.
    pub trust_roots: TrustRoots,
    /// Versions kept per secret (`SPIKE_NEXUS_MAX_SECRET_VERSIONS`).
    pub max_versions: u32,
    /// Where every request is recorded.
    pub audit: AuditLog,
}

/// The API router.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(BODY_SIZE_MAX_BYTES))
        .with_state(api)
}

async fn dispatch(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerIdentity>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let action = action_of(&uri);
    let outcome = route(
        &api,
        &peer,
        &method,
        &uri,
        action.as_deref(),
        &headers,
        &body,
    )
    .await;
    let (status, code) = match &outcome {
        Ok(_) => (200, "ok"),
        Err(error) => {
            let (status, code) = error.status_and_code();
            (status.as_u16(), code)
        }
    };
    api.audit
        .record(AuditEntry {
            caller: peer.spiffe_id.to_string(),
            route: uri.path().to_owned(),
            action: action.unwrap_or_default(),
            path: audit_target(&body),
            result: code.to_owned(),
            status,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
        .await;
    let leader = api.node.leader().map(|(_, node)| node.api_addr);
    reply::finish(outcome, leader.as_deref())
}

/// What the audit line names: the secret path or policy name, never values.
fn audit_target(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Target {
        path: Option<String>,
        name: Option<String>,
        id: Option<serde_json::Value>,
    }
    let target: Target = serde_json::from_slice(body).ok()?;
    target
        .path
        .or(target.name)
        .or_else(|| target.id.and_then(|id| id.as_str().map(str::to_owned)))
}

async fn route(
    api: &Api,
    peer: &PeerIdentity,
    method: &Method,
    uri: &Uri,
    action: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Value, ApiError> {
    if method != Method::POST {
        return Err(ApiError::BadRequest);
    }
    let path = uri.path();
    // SPIKE answers 503 before anything else on routes that need the key.
    if path.starts_with("/v1/store/") && api.node.keys.unlocked().is_none() {
        return Err(ApiError::NotReady);
    }
    let request = Call {
        api,
        peer,
        body,
        session: session_of(headers),
        stale: headers
            .get(STALE_READ_HEADER)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"stale")),
    };
    match (path, action) {
        ("/v1/store/secrets", None) => secrets::put(request).await,
        ("/v1/store/secrets", Some("get")) => secrets::get(request).await,
        ("/v1/store/secrets", Some("delete")) => secrets::delete(request).await,
        ("/v1/store/secrets", Some("undelete")) => secrets::undelete(request).await,
        ("/v1/store/secrets", Some("destroy")) => secrets::destroy(request).await,
        ("/v1/store/secrets", Some("list")) => secrets::list(request).await,
        ("/v1/store/secrets/metadata", Some("get")) => secrets::metadata(request).await,
        ("/v1/operator/recover", None) => operator::recover(request).await,
        ("/v1/operator/restore", None) => operator::restore(request).await,
        ("/v1/operator/rekey", None) => operator::rekey(request).await,
        ("/v1/operator/rotate", None) => operator::rotate(request).await,
        ("/v1/cluster", Some("status")) => cluster::status(request).await,
        ("/v1/cluster", Some("members")) => cluster::list_members(request).await,
        ("/v1/cluster", Some("add")) => cluster::add(request).await,
        ("/v1/cluster", Some("remove")) => cluster::remove(request).await,
        ("/v1/cluster", Some("transfer")) => cluster::transfer(request).await,
        _ => Err(ApiError::BadRequest),
    }
}

/// Header a client sets to `stale` to read this replica's state without the
/// linearizable round trip.
pub const STALE_READ_HEADER: &str = "x-spike-consistency";

fn action_of(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == "action")
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// Headers an SDK sets so a retried write applies at most once: a random
/// 128-bit client id (32 hex digits) and a per-client sequence number.
pub const CLIENT_ID_HEADER: &str = "x-spike-client-id";
/// See [`CLIENT_ID_HEADER`].
pub const SEQUENCE_HEADER: &str = "x-spike-sequence";

fn session_of(headers: &axum::http::HeaderMap) -> Option<SessionRef> {
    let client_id = headers.get(CLIENT_ID_HEADER)?.to_str().ok()?;
    let sequence = headers.get(SEQUENCE_HEADER)?.to_str().ok()?;
    Some(SessionRef {
        client_id: u128::from_str_radix(client_id, 16).ok()?,
        sequence: sequence.parse().ok().filter(|sequence| *sequence > 0)?,
    })
}

/// One request as a handler sees it.
pub struct Call<'a> {
    api: &'a Api,
    peer: &'a PeerIdentity,
    body: &'a [u8],
    session: Option<SessionRef>,
    stale: bool,
}

impl Call<'_> {
    /// Parses the JSON body (400 when it does not parse).
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            self.body
        };
        serde_json::from_slice(body).map_err(|_| ApiError::BadRequest)
    }

    /// 401 unless the caller carries `role`.
    fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.api.trust_roots.has_role(&self.peer.spiffe_id, role) {
            Ok(())
        } else {
            tracing::info!(caller = %self.peer.spiffe_id, required = %role, "request refused");
            Err(ApiError::Unauthorized)
        }
    }
}
