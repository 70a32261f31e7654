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
//! `audit_unavailable`, see [`crate::audit`]). A replica that raised the
//! corruption alarm answers those same routes 503 `state_corrupt`
//! ([`crate::integrity`]).

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
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use spike_sdk::api::{
    ApiRequest, BACKUP_SIZE_MAX_BYTES, BACKUP_UNMETERED_MAX_BYTES, BODY_SIZE_MAX_BYTES,
    EmptyResponse, ErrorCode, Route, header,
};
use spike_sdk::identity::{Role, TrustRoots};
use spike_sdk::tls::PeerIdentity;
use tracing::Instrument;

use crate::audit::{AuditEntry, AuditLog};
use crate::limits::NotAdmitted;
use crate::metrics::ApiMetrics;
use crate::node::Node;
use crate::state::command::SessionRef;
use authz::Permission;
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
    /// Request counts and latencies.
    pub metrics: ApiMetrics,
    /// Oldest state a stale read is answered from
    /// (`SPIKE_NEXUS_STALE_READ_MAX`).
    pub stale_read_max: std::time::Duration,
    /// The compiled policies.
    policies: policies::PolicyCache,
    /// Cipher-route encryptions reserved cluster-wide and not yet made.
    encryptions: cipher::EncryptionBudget,
    /// The backup schedule, when on (for status).
    pub backups: Option<Arc<crate::backup::Backups>>,
}

/// The API's settings, from the replica's flags.
#[derive(Debug, Clone, Copy)]
pub struct ApiSettings {
    /// Versions kept per secret (`SPIKE_NEXUS_MAX_SECRET_VERSIONS`).
    pub max_versions: u32,
    /// Oldest state a stale read is answered from
    /// (`SPIKE_NEXUS_STALE_READ_MAX`).
    pub stale_read_max: std::time::Duration,
    /// Encryptions after which the data key rotates
    /// (`SPIKE_NEXUS_DATA_KEY_ROTATE_AFTER`): sizes the cipher routes'
    /// reservations.
    pub data_key_rotate_after: u64,
}

impl Api {
    /// The API of `node`.
    pub fn new(
        node: Node,
        trust_roots: TrustRoots,
        settings: ApiSettings,
        audit: AuditLog,
        metrics: ApiMetrics,
        backups: Option<Arc<crate::backup::Backups>>,
    ) -> Self {
        Self {
            backups,
            node,
            trust_roots,
            max_versions: settings.max_versions,
            audit,
            metrics,
            stale_read_max: settings.stale_read_max,
            policies: policies::PolicyCache::default(),
            encryptions: cipher::EncryptionBudget::new(settings.data_key_rotate_after),
        }
    }

    /// Refuses (503) a stale read while this replica's state may be older
    /// than [`Api::stale_read_max`]: a replica cut off from the leader, or
    /// far behind it, stops answering from its old state.
    fn stale_within_bound(&self) -> Result<(), ApiError> {
        match self.node.staleness() {
            Some(age) if age <= self.stale_read_max => Ok(()),
            age => Err(ApiError::Unavailable(format!(
                "stale read refused: state may be older than {:?} (is {age:?})",
                self.stale_read_max
            ))),
        }
    }

    /// Takes a token for the caller on `route` (429 when its rate limit is
    /// spent). Unknown routes are not limited (they are refused anyway),
    /// nor is the superuser on the cluster routes, so it can always lift a
    /// limit.
    async fn admit(&self, peer: &PeerIdentity, route: Option<Route>) -> Result<(), ApiError> {
        let Some(route) = route else {
            return Ok(());
        };
        if crate::limits::superuser_exempt(route)
            && self
                .trust_roots
                .has_role(&peer.spiffe_id, Role::PilotSuperuser)
        {
            return Ok(());
        }
        let caller = peer.spiffe_id.to_string();
        let limiter = self.node.limiter();
        let mut held = false;
        loop {
            // The index first: the rules then read are at least that new.
            let applied = self.node.applied_index();
            let read_rules = || self.node.state.limits_bytes();
            let now = std::time::Instant::now();
            match limiter.admit(&caller, route, applied, read_rules, now) {
                Ok(()) => return Ok(()),
                Err(NotAdmitted::Unreadable(error)) => {
                    return Err(ApiError::Internal(error.to_string()));
                }
                // Held once at most: back early, it waits for the moment
                // it was given, then asks again.
                Err(NotAdmitted::Limited(limited)) if !held && limiter.hold(limited).await => {
                    held = true;
                }
                Err(NotAdmitted::Limited(limited)) => {
                    limiter.refused(route);
                    return Err(ApiError::RateLimited(limited.retry_after_secs()));
                }
            }
        }
    }

    /// The leader's API address, for the hint every answer carries.
    fn leader_api(&self) -> Option<SocketAddr> {
        self.node.leader().map(|leader| leader.node.api_addr)
    }
}

/// The API router: one dispatcher (SPIKE routes by path and action).
pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(dispatch).with_state(api)
}

/// How a request's body is taken, decided before any of it is read, so
/// no caller but the superuser restoring a backup can make a replica hold
/// more than [`BODY_SIZE_MAX_BYTES`] per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLimit {
    /// In memory, up to this many bytes.
    Buffered(usize),
    /// To a private file in the scratch directory, up to this many bytes:
    /// a backup restore by the superuser.
    Spooled(u64),
}

/// Most bytes a restore may upload: the larger of
/// [`BACKUP_SIZE_MAX_BYTES`] and the storage quota (a backup of a store
/// within its quota is smaller than the store), or
/// [`BACKUP_UNMETERED_MAX_BYTES`] without a quota
/// (`SPIKE_NEXUS_STORAGE_QUOTA=0`).
fn restore_size_max(quota: u64) -> u64 {
    if quota == 0 {
        BACKUP_UNMETERED_MAX_BYTES
    } else {
        quota.max(BACKUP_SIZE_MAX_BYTES as u64)
    }
}

fn body_limit(api: &Api, peer: &PeerIdentity, method: &Method, route: Option<Route>) -> BodyLimit {
    let restore = *method == Method::POST && route == Some(Route::SnapshotRestore);
    if restore
        && api
            .trust_roots
            .has_role(&peer.spiffe_id, Role::PilotSuperuser)
    {
        BodyLimit::Spooled(restore_size_max(api.node.quota().quota()))
    } else {
        BodyLimit::Buffered(BODY_SIZE_MAX_BYTES)
    }
}

/// The declared length, when there is one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

/// The body, or `None` when it is over `limit` (a declared length over it
/// is refused before reading) or broke off.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Option<Bytes> {
    if declared_length(headers).is_some_and(|declared| declared > limit as u64) {
        return None;
    }
    axum::body::to_bytes(body, limit).await.ok()
}

/// A request body spooled to a temporary file in the scratch directory:
/// readable by this user alone (0600), removed when dropped, however the
/// request ends.
pub struct Upload {
    file: tempfile::NamedTempFile,
    size_bytes: u64,
}

impl Upload {
    /// Its length in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// A new handle on the file, from its start.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        self.file.reopen()
    }
}

/// Writes `body` to a new [`Upload`] in `dir`: 413 once it passes `limit`
/// (a declared length over it before a byte is read), 400 when it breaks
/// off, 500 when the file cannot be written.
async fn spool_body(
    dir: &std::path::Path,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Upload, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    if declared_length(headers).is_some_and(|declared| declared > limit) {
        return Err(ApiError::Code(ErrorCode::TooLarge));
    }
    let unwritable = |e: std::io::Error| ApiError::Internal(format!("cannot spool the body: {e}"));
    let file = tempfile::Builder::new()
        .prefix(crate::raft::state_machine::SCRATCH_UPLOAD_PREFIX)
        .suffix(crate::raft::state_machine::SCRATCH_SUFFIX)
        .tempfile_in(dir)
        .map_err(unwritable)?;
    let mut out = tokio::fs::File::from_std(file.reopen().map_err(unwritable)?);
    let mut size_bytes = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| ApiError::BAD_REQUEST)?;
        size_bytes += chunk.len() as u64;
        if size_bytes > limit {
            return Err(ApiError::Code(ErrorCode::TooLarge));
        }
        out.write_all(&chunk).await.map_err(unwritable)?;
    }
    out.flush().await.map_err(unwritable)?;
    Ok(Upload { file, size_bytes })
}

/// Serves one request and counts it, by route and status.
async fn dispatch(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<PeerIdentity>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let route = Route::from_request(uri.path(), uri.query());
    let answered = |response: Response| {
        api.metrics
            .answered(route, response.status().as_u16(), started.elapsed());
        response
    };
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
        return answered(audit_unavailable().into_response(leader.as_ref()));
    }
    let limit = body_limit(&api, &peer, &method, route);
    let (reply, target) = async {
        // Before the body is read: a limited caller costs no more than
        // its headers.
        if let Err(error) = api.admit(&peer, route).await {
            return (Reply::failed::<EmptyResponse>(error), None);
        }
        let (body, upload) = match limit {
            BodyLimit::Buffered(limit) => match read_body(&headers, body, limit).await {
                Some(body) => (body, None),
                None => {
                    return (
                        Reply::failed::<EmptyResponse>(ApiError::Code(ErrorCode::TooLarge)),
                        None,
                    );
                }
            },
            BodyLimit::Spooled(limit) => {
                match spool_body(&api.node.scratch_dir(), &headers, body, limit).await {
                    Ok(upload) => (Bytes::new(), Some(upload)),
                    Err(error) => return (Reply::failed::<EmptyResponse>(error), None),
                }
            }
        };
        let request = Received {
            headers: &headers,
            body: &body,
            upload: upload.as_ref(),
        };
        let handled = handle(&api, &peer, method, route, request).await;
        // The body may hold secret values or a restore shard: wipe it once
        // handled, when this is its only owner (it always is: it was
        // collected for this request alone).
        if let Ok(mut body) = body.try_into_mut() {
            zeroize::Zeroize::zeroize(body.as_mut());
        }
        handled
    }
    .instrument(span.clone())
    .await;
    // Every field a caller chose is capped, so no request can make a line
    // the verifier refuses.
    let recorded = api
        .audit
        .record(AuditEntry {
            caller: audit_excerpt(&peer.spiffe_id.to_string()),
            route: audit_excerpt(uri.path()),
            action: route.and_then(Route::action).unwrap_or_default().to_owned(),
            path: target,
            result: reply.code.to_owned(),
            status: reply.status.as_u16(),
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
        .await;
    let reply = match recorded {
        Ok(()) => reply,
        // PLANTED BUG audit-after-answer: answered though its record is
        // not durable.
        Err(_) if spike_sdk::planted!(AuditAfterAnswer) => reply,
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
    answered(reply.into_response(api.leader_api().or(leader).as_ref()))
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
    request: Received<'_>,
) -> (Reply, Option<String>) {
    let refused = |error| (Reply::failed::<EmptyResponse>(error), None);
    let Some(route) = route.filter(|_| method == Method::POST) else {
        return refused(ApiError::BAD_REQUEST);
    };
    if route.needs_root_key() && api.node.keys.unlocked().is_none() {
        return refused(ApiError::NOT_READY);
    }
    // A replica whose state diverged answers nothing from it: not a read
    // (it may be wrong), not a write (its outcome would be read from it).
    if route.needs_root_key() && api.node.integrity().is_corrupt() {
        return refused(ApiError::Code(ErrorCode::StateCorrupt));
    }
    serve(api, peer, route, request).await
}

/// What a request sent: headers, and its body in memory, or spooled to a
/// file ([`BodyLimit::Spooled`]).
struct Received<'a> {
    headers: &'a HeaderMap,
    body: &'a Bytes,
    upload: Option<&'a Upload>,
}

async fn serve(
    api: &Api,
    peer: &PeerIdentity,
    route: Route,
    request: Received<'_>,
) -> (Reply, Option<String>) {
    let Received {
        headers,
        body,
        upload,
    } = request;
    let superuser = api
        .trust_roots
        .has_role(&peer.spiffe_id, Role::PilotSuperuser);
    let call = Call {
        api,
        peer,
        body,
        upload,
        content_type: headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
        session: session_of(&peer.spiffe_id.to_string(), headers),
        freshness: Freshness::of(route, asks_stale(headers), superuser),
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
        Route::RotationGet => json(call, operator::get_rotation).await,
        Route::RotationSet => json(call, operator::set_rotation).await,
        Route::ClusterStatus => json(call, cluster::status).await,
        Route::ClusterMembers => json(call, cluster::members).await,
        Route::ClusterAdd => json(call, cluster::add).await,
        Route::ClusterRemove => json(call, cluster::remove).await,
        Route::ClusterTransfer => json(call, cluster::transfer).await,
        Route::ClusterHealth => json(call, cluster::health).await,
        Route::SnapshotSave => (snapshot::save(call).await, None),
        Route::SnapshotRestore => (snapshot::restore(call).await, None),
        Route::SecretMetadataPut => json(call, secrets::metadata_put).await,
        Route::ClusterLimits => json(call, cluster::limits).await,
        Route::ClusterSetLimits => json(call, cluster::set_limits).await,
    }
}

/// Whether the caller asked for a stale read (`X-Spike-Consistency:
/// stale`).
fn asks_stale(headers: &HeaderMap) -> bool {
    headers.get(header::CONSISTENCY).is_some_and(|value| {
        value
            .as_bytes()
            .eq_ignore_ascii_case(header::STALE.as_bytes())
    })
}

/// How fresh the state must be that a request is decided and served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Policies decide it and may trail the leader's on this replica: a
    /// revoked grant must stop at once, so the replica catches up with the
    /// leader's read index before deciding (every write, and every read
    /// that did not ask to be stale). Reads after that need no barrier of
    /// their own.
    CaughtUpBeforeDecision,
    /// Linearizable: a read waits for the leader's read index itself.
    Linearizable,
    /// A stale read of secrets, policies or the cipher: decided and served
    /// on this replica's state, which must be no older than the bound
    /// (`SPIKE_NEXUS_STALE_READ_MAX`), or the request is refused.
    StaleWithinBound,
    /// A stale read of this replica's own view of the cluster (status,
    /// members): always served, a leader or not, for diagnosis.
    StaleLocal,
}

impl Freshness {
    /// A caller's `stale` asks only relax reads: writes, and everything
    /// policies decide for a write, never run on stale state.
    fn of(route: Route, asks_stale: bool, superuser: bool) -> Self {
        let stale = asks_stale && reads_only(route);
        match (decided_by_policy(route), stale) {
            (true, true) => Freshness::StaleWithinBound,
            (true, false) if !superuser => Freshness::CaughtUpBeforeDecision,
            (false, true) => Freshness::StaleLocal,
            _ => Freshness::Linearizable,
        }
    }
}

/// Routes that change nothing, where a stale answer may be asked for.
fn reads_only(route: Route) -> bool {
    matches!(
        route,
        Route::SecretGet
            | Route::SecretList
            | Route::SecretMetadata
            | Route::PolicyGet
            | Route::PolicyList
            | Route::CipherEncrypt
            | Route::CipherDecrypt
            | Route::ClusterStatus
            | Route::ClusterMembers
            | Route::ClusterHealth
    )
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
            | Route::SecretMetadataPut
            | Route::PolicyPut
            | Route::PolicyGet
            | Route::PolicyDelete
            | Route::PolicyList
            | Route::CipherEncrypt
            | Route::CipherDecrypt
    )
}

/// Longest caller-chosen field (target, route, caller) an audit line
/// records: with every field at this length a line stays far below
/// [`spike_sdk::audit::LINE_LEN_MAX`].
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
/// ID, so no caller can touch another's session, and carries the caller's
/// digest on top, so the store bounds each caller's sessions
/// ([`SessionRef::owner`]).
fn session_of(caller: &str, headers: &HeaderMap) -> Option<SessionRef> {
    use sha2::{Digest, Sha256};
    // PLANTED BUG session-ignores-caller: every caller is the same one.
    let caller = if spike_sdk::planted!(SessionIgnoresCaller) {
        ""
    } else {
        caller
    };
    let client_id = headers.get(header::CLIENT_ID)?.to_str().ok()?;
    let sequence = headers.get(header::SEQUENCE)?.to_str().ok()?;
    let client_id = u128::from_str_radix(client_id, 16).ok()?;
    let first_8 = |digest: &[u8]| -> Option<u64> {
        Some(u64::from_be_bytes(digest.get(..8)?.try_into().ok()?))
    };
    let owner = first_8(&Sha256::digest(caller.as_bytes()))?;
    let mut bound = Sha256::new();
    bound.update(caller.as_bytes());
    bound.update(client_id.to_be_bytes());
    let bound = first_8(&bound.finalize())?;
    Some(SessionRef {
        client_id: (u128::from(owner) << 64) | u128::from(bound),
        sequence: sequence.parse().ok().filter(|sequence| *sequence > 0)?,
    })
}

/// One request as a handler sees it.
pub struct Call<'a> {
    api: &'a Api,
    peer: &'a PeerIdentity,
    body: &'a [u8],
    /// The body of a backup restore, spooled to a file.
    upload: Option<&'a Upload>,
    content_type: Option<&'a str>,
    session: Option<SessionRef>,
    freshness: Freshness,
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
    async fn authorize_path(&self, path: &str, wants: &[Permission]) -> Result<(), ApiError> {
        if self.has_role(Role::PilotSuperuser) {
            return Ok(());
        }
        if self.has_role(Role::LiteWorkload) {
            return Err(self.refuse(path));
        }
        if self.api.policies.get(&self.api.node).await?.allows(
            &self.peer.spiffe_id.to_string(),
            path,
            wants,
        ) {
            Ok(())
        } else {
            Err(self.refuse(path))
        }
    }

    /// Cipher routes: the superuser, the lite workload, or by policy.
    async fn authorize_cipher(&self) -> Result<(), ApiError> {
        if self.has_role(Role::LiteWorkload) {
            return Ok(());
        }
        self.authorize_path(authz::CIPHER_PATH, &[Permission::Execute])
            .await
    }

    /// Before any decision: waits until this replica has applied
    /// everything the leader had committed, or for a stale read, refuses
    /// (503) if this replica's state may be older than the bound.
    async fn policy_barrier(&self) -> Result<(), ApiError> {
        match self.freshness {
            Freshness::CaughtUpBeforeDecision => Ok(self.api.node.linearize().await?),
            Freshness::StaleWithinBound => self.api.stale_within_bound(),
            Freshness::Linearizable | Freshness::StaleLocal => Ok(()),
        }
    }

    /// Before a linearizable read: waits, unless the policy barrier already
    /// did or the read is stale, until this replica has applied everything
    /// the leader had committed.
    async fn read_barrier(&self) -> Result<(), ApiError> {
        match self.freshness {
            Freshness::Linearizable => Ok(self.api.node.linearize().await?),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_takes_the_quota_at_least_64_mib_and_a_fixed_cap_without_one() {
        let mib = 1024 * 1024;
        assert_eq!(restore_size_max(0), BACKUP_UNMETERED_MAX_BYTES);
        assert_eq!(restore_size_max(6 * mib), 64 * mib);
        assert_eq!(restore_size_max(2048 * mib), 2048 * mib);
    }

    /// A body of `chunks` with no declared length, as a streaming client
    /// sends it.
    fn streamed(chunks: Vec<Vec<u8>>) -> Body {
        Body::from_stream(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk))),
        ))
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).expect("read dir").count()
    }

    #[tokio::test]
    async fn a_spooled_body_is_private_bounded_and_removed_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let upload = spool_body(
            dir.path(),
            &HeaderMap::new(),
            streamed(vec![vec![1; 1000], vec![2; 24]]),
            1024,
        )
        .await
        .expect("within the limit");
        assert_eq!(upload.size_bytes(), 1024);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut upload.open().expect("open"), &mut bytes).expect("read");
        assert_eq!(bytes.len(), 1024);
        assert_eq!(&bytes[998..1002], &[1, 1, 2, 2]);
        let entry = std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .expect("the spool file")
            .expect("entry");
        let mode = entry.metadata().expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner alone");
        drop(upload);
        assert_eq!(files_in(dir.path()), 0, "removed when dropped");

        // One byte over, counted as it arrives: 413, nothing left behind.
        let over = spool_body(
            dir.path(),
            &HeaderMap::new(),
            streamed(vec![vec![0; 1000], vec![0; 25]]),
            1024,
        )
        .await;
        assert!(
            matches!(over, Err(ApiError::Code(ErrorCode::TooLarge))),
            "413 past the limit"
        );
        assert_eq!(files_in(dir.path()), 0);

        // Declared over the limit: refused before a byte is read.
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_LENGTH,
            axum::http::HeaderValue::from_static("1025"),
        );
        let declared = spool_body(dir.path(), &headers, streamed(vec![]), 1024).await;
        assert!(matches!(declared, Err(ApiError::Code(ErrorCode::TooLarge))));
        assert_eq!(files_in(dir.path()), 0);
    }

    #[test]
    fn a_session_is_bound_to_its_caller_and_groups_under_the_callers_owner() {
        let headers = |client_id: &'static str, sequence: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CLIENT_ID,
                axum::http::HeaderValue::from_static(client_id),
            );
            headers.insert(
                header::SEQUENCE,
                axum::http::HeaderValue::from_static(sequence),
            );
            headers
        };
        let alice = "spiffe://example.org/workload/alice";
        let bob = "spiffe://example.org/workload/bob";
        let same = headers("00112233445566778899aabbccddeeff", "7");
        let of_alice = session_of(alice, &same).expect("a session");
        let of_bob = session_of(bob, &same).expect("a session");
        assert_eq!(of_alice.sequence, 7);
        // The same client id from another caller is another session, in
        // another caller's block of the id space.
        assert_ne!(of_alice.client_id, of_bob.client_id);
        assert_ne!(of_alice.owner(), of_bob.owner());
        let other = session_of(alice, &headers("1", "7")).expect("a session");
        assert_ne!(other.client_id, of_alice.client_id);
        assert_eq!(other.owner(), of_alice.owner());
        assert!(
            session_of(alice, &headers("1", "0")).is_none(),
            "sequences start at 1"
        );
    }

    #[test]
    fn asking_for_stale_relaxes_reads_only_and_never_a_write() {
        let writes = [
            Route::SecretPut,
            Route::SecretDelete,
            Route::SecretUndelete,
            Route::SecretDestroy,
            Route::PolicyPut,
            Route::PolicyDelete,
        ];
        for route in writes {
            assert_eq!(
                Freshness::of(route, true, false),
                Freshness::CaughtUpBeforeDecision,
                "{route:?}"
            );
            assert_eq!(
                Freshness::of(route, true, true),
                Freshness::Linearizable,
                "{route:?} by the superuser"
            );
        }
        for route in [Route::SecretGet, Route::PolicyList, Route::CipherEncrypt] {
            assert_eq!(
                Freshness::of(route, false, false),
                Freshness::CaughtUpBeforeDecision
            );
            assert_eq!(
                Freshness::of(route, true, false),
                Freshness::StaleWithinBound
            );
            assert_eq!(
                Freshness::of(route, true, true),
                Freshness::StaleWithinBound
            );
        }
        assert_eq!(
            Freshness::of(Route::ClusterStatus, true, true),
            Freshness::StaleLocal
        );
        for route in [Route::Rekey, Route::ClusterAdd, Route::SnapshotRestore] {
            assert_eq!(Freshness::of(route, true, true), Freshness::Linearizable);
        }
    }
}
