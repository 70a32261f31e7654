//! The SPIKE REST API on every replica, on the contract of
//! [`spike_sdk::api`].
//!
//! SPIKE's conventions: every route is `POST` to a path plus `?action=`;
//! anything else is 400 `api_bad_request`. Without the root key every route
//! but recover, restore and the cluster extensions answers 503
//! `state_not_ready`. Then, in SPIKE's order: decode the body as Go would
//! (bad JSON: 400), authorize (401), validate (400), act (404/500). A
//! failure answers the route's zero answer plus `err`; every JSON answer
//! carries SPIKE's no-cache headers and a hint naming the leader. Every
//! request is audited, in a span naming the caller, route, node and leader:
//! its record is durable before it is answered, and while the audit log
//! cannot be written every request is refused before it runs (503
//! `audit_unavailable`, see [`crate::audit`]).

mod authz;
mod bootstrap;
mod cipher;
mod cluster;
mod operator;
mod policies;
mod reply;
mod secrets;
mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use spike_sdk::api::{
    ApiRequest, BACKUP_SIZE_MAX_BYTES, BODY_SIZE_MAX_BYTES, EmptyResponse, ErrorCode, Route, header,
};
use spike_sdk::identity::{Role, TrustRoots};
use spike_sdk::tls::PeerIdentity;
use tracing::Instrument;

use crate::audit::{AuditEntry, AuditLog};
use crate::node::Node;
use crate::state::command::SessionRef;
use authz::{Permission, PolicySet};
pub use reply::ApiError;
use reply::Reply;

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
            let unlocked = self.node.keys.unlocked().ok_or(ApiError::NOT_READY)?;
            *cached = (version, policies::compile_all(&self.node, &unlocked)?);
        }
        Ok(cached.1.clone())
    }

    /// The leader's API address, for the hint every answer carries.
    fn leader_api(&self) -> Option<SocketAddr> {
        self.node.leader().map(|leader| leader.node.api_addr)
    }
}

/// The API router: one dispatcher (SPIKE routes by path and action), with
/// a body limit everywhere ([`BODY_SIZE_MAX_BYTES`]) but backup restores
/// ([`BACKUP_SIZE_MAX_BYTES`]).
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            Route::SnapshotRestore.path(),
            axum::routing::any(dispatch).layer(DefaultBodyLimit::max(BACKUP_SIZE_MAX_BYTES)),
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let route = Route::from_request(uri.path(), uri.query());
    let leader = api.leader_api();
    let span = tracing::info_span!(
        "request",
        caller = %peer.spiffe_id,
        route = %uri.path(),
        action = route.and_then(Route::action).unwrap_or_default(),
        node = api.node.id,
        leader = leader.map(tracing::field::display),
    );
    // Fail closed: while the audit log takes no writes nothing runs, and
    // no answer leaves before the request's record is on disk.
    if !api.audit.is_healthy() {
        span.in_scope(|| tracing::warn!("refused: the audit log cannot be written"));
        return audit_unavailable().into_response(leader.as_ref());
    }
    let (reply, target) = handle(&api, &peer, method, route, &headers, &body)
        .instrument(span.clone())
        .await;
    let recorded = api
        .audit
        .record(AuditEntry {
            caller: peer.spiffe_id.to_string(),
            route: uri.path().to_owned(),
            action: route.and_then(Route::action).unwrap_or_default().to_owned(),
            path: target,
            result: reply.code.to_owned(),
            status: reply.status.as_u16(),
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
        .await;
    let reply = match recorded {
        Ok(()) => reply,
        Err(_) => {
            span.in_scope(|| {
                tracing::warn!(
                    result = reply.code,
                    "ran, but its audit record is not durable yet: answered audit_unavailable"
                );
            });
            audit_unavailable()
        }
    };
    reply.into_response(api.leader_api().or(leader).as_ref())
}

/// 503 `audit_unavailable`.
fn audit_unavailable() -> Reply {
    Reply::failed::<EmptyResponse>(ApiError::Code(ErrorCode::AuditUnavailable))
}

/// SPIKE's router refuses wrong methods, unknown routes, and anything
/// needing the key while it is missing, with a bare `{"err":..}` before
/// any route runs; then the route's handler.
async fn handle(
    api: &Api,
    peer: &PeerIdentity,
    method: Method,
    route: Option<Route>,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Reply, Option<String>) {
    let refused = |error| (Reply::failed::<EmptyResponse>(error), None);
    let Some(route) = route.filter(|_| method == Method::POST) else {
        return refused(ApiError::BAD_REQUEST);
    };
    if route != Route::SnapshotRestore && body.len() > BODY_SIZE_MAX_BYTES {
        // A backup route other than restore, sent more than it takes.
        return refused(ApiError::Code(ErrorCode::TooLarge));
    }
    if route.needs_root_key() && api.node.keys.unlocked().is_none() {
        return refused(ApiError::NOT_READY);
    }
    serve(api, peer, route, headers, body).await
}

async fn serve(
    api: &Api,
    peer: &PeerIdentity,
    route: Route,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Reply, Option<String>) {
    let stale = headers.get(header::CONSISTENCY).is_some_and(|value| {
        value
            .as_bytes()
            .eq_ignore_ascii_case(header::STALE.as_bytes())
    });
    // Policies decide these routes for every caller but the superuser, and
    // a replica's policies may trail the leader's: a revoked policy must
    // stop granting at once, so the handler catches up with the leader
    // before deciding (`Call::policy_barrier`), and its own read barrier
    // is then already satisfied.
    let by_policy = decided_by_policy(route)
        && !api
            .trust_roots
            .has_role(&peer.spiffe_id, Role::PilotSuperuser);
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
    match route {
        Route::SecretPut => json(call, secrets::put).await,
        Route::SecretGet => json(call, secrets::get).await,
        Route::SecretDelete => json(call, secrets::delete).await,
        Route::SecretUndelete => json(call, secrets::undelete).await,
        Route::SecretDestroy => json(call, secrets::destroy).await,
        Route::SecretList => json(call, secrets::list).await,
        Route::SecretMetadata => json(call, secrets::metadata).await,
        Route::PolicyPut => json(call, policies::put).await,
        Route::PolicyGet => json(call, policies::get).await,
        Route::PolicyDelete => json(call, policies::delete).await,
        Route::PolicyList => json(call, policies::list).await,
        Route::CipherEncrypt => (cipher::encrypt(call).await, None),
        Route::CipherDecrypt => (cipher::decrypt(call).await, None),
        Route::Recover => json(call, operator::recover).await,
        Route::Restore => json(call, operator::restore).await,
        Route::BootstrapVerify => json(call, bootstrap::verify).await,
        Route::Rekey => json(call, operator::rekey).await,
        Route::Rotate => json(call, operator::rotate).await,
        Route::ClusterStatus => json(call, cluster::status).await,
        Route::ClusterMembers => json(call, cluster::members).await,
        Route::ClusterAdd => json(call, cluster::add).await,
        Route::ClusterRemove => json(call, cluster::remove).await,
        Route::ClusterTransfer => json(call, cluster::transfer).await,
        Route::SnapshotSave => (snapshot::save(call).await, None),
        Route::SnapshotRestore => (snapshot::restore(call).await, None),
    }
}

/// Routes whose authorization may come from policies (every caller but
/// the superuser).
fn decided_by_policy(route: Route) -> bool {
    matches!(
        route,
        Route::SecretPut
            | Route::SecretGet
            | Route::SecretDelete
            | Route::SecretUndelete
            | Route::SecretDestroy
            | Route::SecretList
            | Route::SecretMetadata
            | Route::PolicyPut
            | Route::PolicyGet
            | Route::PolicyDelete
            | Route::PolicyList
            | Route::CipherEncrypt
            | Route::CipherDecrypt
    )
}

/// Longest target an audit line records.
const AUDIT_TARGET_LEN_MAX: usize = 512;

/// What an audit line names for a request: the secret path or policy it
/// acts on, never a value.
trait Audited {
    fn audit_target(&self) -> Option<&str> {
        None
    }
}

/// A JSON route: decodes the body as Go would (400 when it does not),
/// runs `handler`, and answers its answer type, or its zero value with
/// `err` on failure. Returns the reply and the audit target.
async fn json<'a, R, F, Fut>(call: Call<'a>, handler: F) -> (Reply, Option<String>)
where
    R: ApiRequest + Audited,
    F: FnOnce(Call<'a>, R) -> Fut,
    Fut: Future<Output = Result<R::Response, ApiError>>,
{
    if let Err(error) = call.policy_barrier().await {
        return (Reply::failed::<R::Response>(error), None);
    }
    let request: R = match spike_sdk::api::decode(call.body) {
        Ok(request) => request,
        Err(_) => return (Reply::failed::<R::Response>(ApiError::BAD_REQUEST), None),
    };
    let target = request.audit_target().map(audit_excerpt);
    let reply = match handler(call, request).await {
        Ok(answer) => Reply::json(&answer),
        Err(error) => Reply::failed::<R::Response>(error),
    };
    (reply, target)
}

/// At most [`AUDIT_TARGET_LEN_MAX`] bytes of `target`, cut at a character.
fn audit_excerpt(target: &str) -> String {
    if target.len() <= AUDIT_TARGET_LEN_MAX {
        return target.to_owned();
    }
    let mut end = AUDIT_TARGET_LEN_MAX;
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &target[..end])
}

/// The session of a write: the client's id is bound to the caller's SPIFFE
/// ID, so no caller can touch another's session.
fn session_of(caller: &str, headers: &HeaderMap) -> Option<SessionRef> {
    use sha2::{Digest, Sha256};
    let client_id = headers.get(header::CLIENT_ID)?.to_str().ok()?;
    let sequence = headers.get(header::SEQUENCE)?.to_str().ok()?;
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
    /// Policies decide this request, so the replica catches up with the
    /// leader before deciding; reads after that need no barrier of their
    /// own.
    caught_up: bool,
}

impl Call<'_> {
    fn has_role(&self, role: Role) -> bool {
        self.api.trust_roots.has_role(&self.peer.spiffe_id, role)
    }

    fn refuse(&self, what: &str) -> ApiError {
        tracing::info!(what, "request refused");
        ApiError::UNAUTHORIZED
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

    /// Before a decision by policy: waits until this replica has applied
    /// everything the leader had committed (unless the caller asked for a
    /// stale read).
    async fn policy_barrier(&self) -> Result<(), ApiError> {
        if self.caught_up {
            self.api.node.linearize().await?;
        }
        Ok(())
    }

    /// Waits, unless the caller asked for a stale read or the policy check
    /// already did, until this replica has applied everything the leader
    /// had committed: a read after it is linearizable.
    async fn read_barrier(&self) -> Result<(), ApiError> {
        if self.stale || self.caught_up {
            return Ok(());
        }
        self.api.node.linearize().await.map_err(ApiError::from)
    }
}
