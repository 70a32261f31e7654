//! The SPIKE REST API on every replica.
//!
//! SPIKE's conventions: every route is `POST` to a path plus `?action=`;
//! anything else is 400 `api_bad_request`. Without the root key every route
//! but recover, restore and the cluster extensions answers 503
//! `state_not_ready`. Then, in SPIKE's order: parse the body (bad JSON:
//! 400), authorize (401), validate (400), act (404/500). Errors carry the
//! route's response shape with zero values plus `err`; every JSON answer
//! carries SPIKE's no-cache headers and a hint naming the leader.

mod authz;
mod bootstrap;
mod cipher;
mod cluster;
mod operator;
mod policies;
mod reply;
mod secrets;
mod snapshot;
mod wire;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use serde::de::DeserializeOwned;
use spike_sdk::identity::{Role, TrustRoots};
use spike_sdk::tls::PeerIdentity;

use crate::audit::{AuditEntry, AuditLog};
use crate::node::Node;
use crate::state::command::SessionRef;
use authz::{Permission, PolicySet};
pub use reply::{ApiError, Body, RouteKind};

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
    /// The compiled policies and the policy version they were built from.
    policies: Mutex<(u64, Arc<PolicySet>)>,
    /// The data key this replica last asked to rotate away from, so it asks
    /// once per key.
    rotation_requested_for: std::sync::atomic::AtomicU32,
}

impl Api {
    /// The API of `node`.
    pub fn new(node: Node, trust_roots: TrustRoots, max_versions: u32, audit: AuditLog) -> Self {
        Self {
            node,
            trust_roots,
            max_versions,
            audit,
            policies: Mutex::new((u64::MAX, PolicySet::new(Vec::new()))),
            rotation_requested_for: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The compiled policies, rebuilt only when the policy version moved.
    fn policy_set(&self) -> Result<Arc<PolicySet>, ApiError> {
        let version = self
            .node
            .state
            .cluster_meta()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .policies_version;
        let mut cached = self
            .policies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.0 != version {
            let unlocked = self.node.keys.unlocked().ok_or(ApiError::NotReady)?;
            *cached = (version, policies::compile_all(&self.node, &unlocked)?);
        }
        Ok(cached.1.clone())
    }
}

/// The API router: one dispatcher (SPIKE routes by path and action), with
/// a 1 MiB body limit everywhere but backup restores.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/v1/snapshot",
            axum::routing::any(dispatch)
                .layer(DefaultBodyLimit::max(snapshot::BACKUP_SIZE_MAX_BYTES)),
        )
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
    let kind = RouteKind::of(uri.path(), action.as_deref());
    // SPIKE's router refuses wrong methods, then anything needing the key
    // while it is missing, with a bare `{"err":..}` before any route runs.
    let early = if method != Method::POST {
        Some(ApiError::BadRequest)
    } else if kind != RouteKind::SnapshotRestore && body.len() > BODY_SIZE_MAX_BYTES {
        // A backup route other than restore, sent more than it takes.
        Some(ApiError::TooLarge)
    } else if kind.needs_root_key() && api.node.keys.unlocked().is_none() {
        Some(ApiError::NotReady)
    } else {
        None
    };
    let (shape, outcome) = match early {
        Some(error) => (RouteKind::Unknown, Err(error)),
        None => (kind, route(&api, &peer, kind, &headers, &body).await),
    };
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
            path: audit_target(kind, &body),
            result: code.to_owned(),
            status,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
        .await;
    let leader = api.node.leader().map(|leader| leader.node.api_addr);
    reply::finish(shape, outcome, leader.as_deref())
}

/// Longest target an audit line records.
const AUDIT_TARGET_LEN_MAX: usize = 512;

/// What the audit line names: the field the route acts on (decoded as the
/// handler decodes it), never values, at most 512 characters.
fn audit_target(kind: RouteKind, body: &[u8]) -> Option<String> {
    let field = match kind {
        RouteKind::SecretPut
        | RouteKind::SecretGet
        | RouteKind::SecretDelete
        | RouteKind::SecretUndelete
        | RouteKind::SecretDestroy
        | RouteKind::SecretMetadata => "path",
        RouteKind::PolicyPut => "name",
        RouteKind::PolicyGet | RouteKind::PolicyDelete => "id",
        _ => return None,
    };
    let object: serde_json::Map<String, serde_json::Value> = wire::parse(body, &[field]).ok()?;
    let mut target = object.get(field)?.as_str()?.to_owned();
    if target.len() > AUDIT_TARGET_LEN_MAX {
        let mut end = AUDIT_TARGET_LEN_MAX;
        while !target.is_char_boundary(end) {
            end -= 1;
        }
        target.truncate(end);
        target.push('…');
    }
    Some(target)
}

async fn route(
    api: &Api,
    peer: &PeerIdentity,
    kind: RouteKind,
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Result<Body, ApiError> {
    let stale = headers
        .get(STALE_READ_HEADER)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"stale"));
    // Policies decide these routes for every caller but the superuser, and
    // a replica's policies may trail the leader's: a revoked policy must
    // stop granting at once, so catch up with the leader before deciding.
    // The handler's own read barrier is then already satisfied.
    let by_policy = matches!(
        kind,
        RouteKind::SecretPut
            | RouteKind::SecretGet
            | RouteKind::SecretDelete
            | RouteKind::SecretUndelete
            | RouteKind::SecretDestroy
            | RouteKind::SecretList
            | RouteKind::SecretMetadata
            | RouteKind::PolicyPut
            | RouteKind::PolicyGet
            | RouteKind::PolicyDelete
            | RouteKind::PolicyList
            | RouteKind::CipherEncrypt
            | RouteKind::CipherDecrypt
    ) && !api
        .trust_roots
        .has_role(&peer.spiffe_id, Role::PilotSuperuser);
    if by_policy && !stale {
        api.node.linearize().await?;
    }
    let call = Call {
        api,
        peer,
        body,
        content_type: headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
        session: session_of(&peer.spiffe_id.to_string(), headers),
        stale,
        caught_up: by_policy && !stale,
    };
    match kind {
        RouteKind::SecretPut => secrets::put(call).await.map(Body::Json),
        RouteKind::SecretGet => secrets::get(call).await.map(Body::Json),
        RouteKind::SecretDelete => secrets::delete(call).await.map(Body::Json),
        RouteKind::SecretUndelete => secrets::undelete(call).await.map(Body::Json),
        RouteKind::SecretDestroy => secrets::destroy(call).await.map(Body::Json),
        RouteKind::SecretList => secrets::list(call).await.map(Body::Json),
        RouteKind::SecretMetadata => secrets::metadata(call).await.map(Body::Json),
        RouteKind::PolicyPut => policies::put(call).await.map(Body::Json),
        RouteKind::PolicyGet => policies::get(call).await.map(Body::Json),
        RouteKind::PolicyDelete => policies::delete(call).await.map(Body::Json),
        RouteKind::PolicyList => policies::list(call).await.map(Body::Json),
        RouteKind::CipherEncrypt => cipher::encrypt(call).await,
        RouteKind::CipherDecrypt => cipher::decrypt(call).await,
        RouteKind::Recover => operator::recover(call).await.map(Body::Json),
        RouteKind::Restore => operator::restore(call).await.map(Body::Json),
        RouteKind::BootstrapVerify => bootstrap::verify(call).await.map(Body::Json),
        RouteKind::Rekey => operator::rekey(call).await.map(Body::Json),
        RouteKind::Rotate => operator::rotate(call).await.map(Body::Json),
        RouteKind::ClusterStatus => cluster::status(call).await.map(Body::Json),
        RouteKind::ClusterMembers => cluster::list_members(call).await.map(Body::Json),
        RouteKind::ClusterAdd => cluster::add(call).await.map(Body::Json),
        RouteKind::ClusterRemove => cluster::remove(call).await.map(Body::Json),
        RouteKind::ClusterTransfer => cluster::transfer(call).await.map(Body::Json),
        RouteKind::SnapshotSave => snapshot::save(call).await,
        RouteKind::SnapshotRestore => snapshot::restore(call).await.map(Body::Json),
        RouteKind::Unknown => Err(ApiError::BadRequest),
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

/// The session of a write: the client's id is bound to the caller's SPIFFE
/// ID, so no caller can touch another's session.
fn session_of(caller: &str, headers: &axum::http::HeaderMap) -> Option<SessionRef> {
    use sha2::{Digest, Sha256};
    let client_id = headers.get(CLIENT_ID_HEADER)?.to_str().ok()?;
    let sequence = headers.get(SEQUENCE_HEADER)?.to_str().ok()?;
    let client_id = u128::from_str_radix(client_id, 16).ok()?;
    let mut digest = Sha256::new();
    digest.update(caller.as_bytes());
    digest.update(client_id.to_be_bytes());
    let bound: [u8; 16] = digest.finalize()[..16].try_into().ok()?;
    Some(SessionRef {
        client_id: u128::from_be_bytes(bound),
        sequence: sequence.parse().ok().filter(|sequence| *sequence > 0)?,
    })
}

/// One request as a handler sees it.
pub struct Call<'a> {
    api: &'a Api,
    peer: &'a PeerIdentity,
    body: &'a [u8],
    content_type: Option<&'a str>,
    session: Option<SessionRef>,
    stale: bool,
    /// This replica already applied everything the leader had committed
    /// when the request arrived.
    caught_up: bool,
}

impl Call<'_> {
    /// Parses the JSON body as Go would (400 when it does not parse);
    /// `fields` are the body's field names.
    fn parse<T: DeserializeOwned>(&self, fields: &[&str]) -> Result<T, ApiError> {
        wire::parse(self.body, fields)
    }

    fn has_role(&self, role: Role) -> bool {
        self.api.trust_roots.has_role(&self.peer.spiffe_id, role)
    }

    fn refuse(&self, what: &str) -> ApiError {
        tracing::info!(caller = %self.peer.spiffe_id, what, "request refused");
        ApiError::Unauthorized
    }

    /// 401 unless the caller carries `role` (operator routes).
    fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(self.refuse(role.name()))
        }
    }

    /// Secret and policy routes: the superuser always, the lite workload
    /// never, anyone else by policy.
    fn authorize_path(&self, path: &str, wants: &[Permission]) -> Result<(), ApiError> {
        if self.has_role(Role::PilotSuperuser) {
            return Ok(());
        }
        if self.has_role(Role::LiteWorkload) {
            return Err(self.refuse(path));
        }
        if self
            .api
            .policy_set()?
            .allows(&self.peer.spiffe_id.to_string(), path, wants)
        {
            Ok(())
        } else {
            Err(self.refuse(path))
        }
    }

    /// Cipher routes: the superuser, the lite workload, or by policy.
    fn authorize_cipher(&self) -> Result<(), ApiError> {
        if self.has_role(Role::LiteWorkload) {
            return Ok(());
        }
        self.authorize_path(authz::CIPHER_PATH, &[Permission::Execute])
    }
}
