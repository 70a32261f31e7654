//! The application client: give it one or more Nexus endpoints and an SVID,
//! and it finds the leader, follows leadership changes, retries within a
//! bounded budget, and applies each write at most once.
//!
//! - Leader discovery: every Nexus reply carries an `X-Spike-Leader` hint;
//!   writes and linearizable reads go to the last known leader, or to the
//!   endpoints in turn until one names it. Followers forward too, so a stale
//!   hint costs a hop, not an error.
//! - Exactly-once writes: a write borrows a session (a random client id and
//!   its next sequence number) for its whole life, retries included. The
//!   replicated state machine keeps the last result per session, so a retry
//!   after a timeout or failover returns the original result instead of
//!   applying twice. Sessions are reused by later writes, so their number is
//!   bounded by the number of writes in flight.
//! - Errors say what to do: [`Error::is_retryable`] separates "not ready,
//!   try later" from "denied", "not found" and bad input.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::pool::Pool;
use super::{ClientError, RESPONSE_SIZE_MAX_BYTES, Request};
use crate::identity::{PeerAuthorizer, Role, TrustRoots};
use crate::svid::Identity;
use crate::tls::{TlsConfigError, client_config};

/// Header carrying the leader's API address (`https://host:port`).
const LEADER_HEADER: &str = "x-spike-leader";
/// Headers naming a write's session (see the Nexus API).
const CLIENT_ID_HEADER: &str = "x-spike-client-id";
const SEQUENCE_HEADER: &str = "x-spike-sequence";
/// Header asking for a read of the contacted node's own state.
const CONSISTENCY_HEADER: &str = "x-spike-consistency";

/// How hard the client tries before giving up on one operation.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Most attempts, the first included.
    pub attempts_max: u32,
    /// Longest one operation may take, retries and back-off included.
    pub deadline: Duration,
    /// First pause between attempts; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Up to 15 s per operation. The pause is capped at 200 ms, not more:
    /// an election takes 0.4-0.8 s, and a longer pause would overshoot the
    /// new leader by up to the pause itself (with a 1 s cap, kill -9 of the
    /// leader to the next acknowledged write was 1.08 s median; the pause,
    /// not the election, was the difference).
    fn default() -> Self {
        Self {
            attempts_max: 100,
            deadline: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_millis(200),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Nexus API endpoints; any node of the cluster will do.
    pub endpoints: Vec<SocketAddr>,
    /// Longest one HTTP exchange may take.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub response_limit: usize,
    /// Retry budget per operation.
    pub retry: RetryPolicy,
    /// Send writes and linearizable reads straight to the leader (the
    /// default). When false the client only ever talks to its endpoints,
    /// which forward writes and serve linearizable reads after a read
    /// index: a client pinned to one node, say for locality, or to test
    /// that path.
    pub follow_leader: bool,
}

impl Settings {
    /// Defaults for `endpoints`: 5 s per exchange, 8 MiB responses, the
    /// default retry budget.
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            request_timeout: Duration::from_secs(5),
            response_limit: RESPONSE_SIZE_MAX_BYTES,
            retry: RetryPolicy::default(),
            follow_leader: true,
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster has no leader or no root key yet: retry later.
    #[error("SPIKE Nexus is not ready: {0}")]
    NotReady(String),
    /// No node could be reached within the retry budget: retry later.
    #[error("no SPIKE Nexus node answered: {0}")]
    Unreachable(#[source] ClientError),
    /// The caller's SPIFFE ID may not do this.
    #[error("access denied")]
    Denied,
    /// No such secret, version or policy.
    #[error("not found")]
    NotFound,
    /// The request was malformed or out of limits.
    #[error("bad request")]
    BadRequest,
    /// Compare-and-set lost: the current version is not the expected one.
    #[error("the current version is not the one expected")]
    Conflict,
    /// The request is too large for the server.
    #[error("request too large")]
    TooLarge,
    /// Any other answer.
    #[error("SPIKE Nexus answered {status} {code}")]
    Server {
        /// HTTP status.
        status: u16,
        /// SPIKE's error code.
        code: String,
    },
    /// The reply did not have the expected shape.
    #[error("unexpected reply: {0}")]
    Decode(String),
    /// The settings cannot work.
    #[error("invalid client settings: {0}")]
    Settings(String),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotReady(_) | Self::Unreachable(_))
    }
}

impl From<TlsConfigError> for Error {
    fn from(error: TlsConfigError) -> Self {
        Self::Settings(error.to_string())
    }
}

/// Where a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    /// Through the leader, linearizable (writes and default reads).
    Leader,
    /// From whichever node answers first in endpoint order, possibly behind.
    Stale,
}

/// One request as the retry loop sends it.
struct Operation<'a> {
    path_and_query: &'a str,
    content_type: &'a str,
    body: Vec<u8>,
    consistency: Consistency,
    session: Option<Session>,
}

/// A client id and the sequence number its next write uses.
#[derive(Debug, Clone, Copy)]
struct Session {
    client_id: u128,
    next_sequence: u64,
}

/// A SPIKE Nexus cluster as one application sees it.
pub struct NexusClient {
    pool: Pool,
    endpoints: Vec<SocketAddr>,
    retry: RetryPolicy,
    follow_leader: bool,
    leader: Mutex<Option<SocketAddr>>,
    cursor: AtomicUsize,
    idle_sessions: Mutex<Vec<Session>>,
}

/// A secret's versions in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMetadata {
    /// The newest version.
    pub current_version: u64,
    /// The oldest version still kept.
    pub oldest_version: u64,
    /// The raw metadata document (timestamps, per-version state).
    pub document: Value,
}

impl NexusClient {
    /// A client presenting `identity` to the nodes at `settings.endpoints`,
    /// accepting only servers with the Nexus role under `trust_roots`.
    pub fn new(
        identity: Identity,
        trust_roots: TrustRoots,
        settings: Settings,
    ) -> Result<Self, Error> {
        if settings.endpoints.is_empty() {
            return Err(Error::Settings("no Nexus endpoint given".into()));
        }
        if settings.retry.attempts_max == 0 {
            return Err(Error::Settings("attempts_max must be at least 1".into()));
        }
        let config = client_config(identity, PeerAuthorizer::role(trust_roots, Role::Nexus))?;
        Ok(Self {
            pool: Pool::new(config, settings.request_timeout, settings.response_limit),
            endpoints: settings.endpoints,
            retry: settings.retry,
            follow_leader: settings.follow_leader,
            leader: Mutex::new(None),
            cursor: AtomicUsize::new(0),
            idle_sessions: Mutex::new(Vec::new()),
        })
    }

    /// The leader as last seen, if known.
    pub fn known_leader(&self) -> Option<SocketAddr> {
        *lock(&self.leader)
    }

    /// Stores a new version of the secret at `path`; with `cas`, only if the
    /// current version is `cas` (0: only if absent).
    pub async fn put_secret(
        &self,
        path: &str,
        values: &BTreeMap<String, String>,
        cas: Option<u64>,
    ) -> Result<(), Error> {
        let mut body = json!({ "path": path, "values": values });
        if let Some(cas) = cas {
            body["cas"] = json!(cas);
        }
        self.write("/v1/store/secrets", body).await?;
        Ok(())
    }

    /// The values of `path` at `version` (None: the current one),
    /// linearizable.
    pub async fn get_secret(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<BTreeMap<String, String>, Error> {
        self.read_secret(path, version, Consistency::Leader).await
    }

    /// Like [`Self::get_secret`], from the first node that answers, which
    /// may be behind the leader.
    pub async fn get_secret_stale(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<BTreeMap<String, String>, Error> {
        self.read_secret(path, version, Consistency::Stale).await
    }

    async fn read_secret(
        &self,
        path: &str,
        version: Option<u64>,
        consistency: Consistency,
    ) -> Result<BTreeMap<String, String>, Error> {
        let body = json!({ "path": path, "version": version.unwrap_or(0) });
        let reply = self
            .call("/v1/store/secrets?action=get", body, consistency, None)
            .await?;
        // serde's message could quote a value: say only what was wrong.
        serde_json::from_value(reply["data"].clone())
            .map_err(|_| Error::Decode("secret values are not a map of strings".into()))
    }

    /// Marks `versions` of `path` deleted (empty: the current one).
    pub async fn delete_secret(&self, path: &str, versions: &[u64]) -> Result<(), Error> {
        self.versions_command("delete", path, versions).await
    }

    /// Brings deleted `versions` back (empty: the current one).
    pub async fn undelete_secret(&self, path: &str, versions: &[u64]) -> Result<(), Error> {
        self.versions_command("undelete", path, versions).await
    }

    /// Drops `versions` for good (extension; empty: the current one).
    pub async fn destroy_secret(&self, path: &str, versions: &[u64]) -> Result<(), Error> {
        self.versions_command("destroy", path, versions).await
    }

    async fn versions_command(
        &self,
        action: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<(), Error> {
        let body = json!({ "path": path, "versions": versions });
        self.write(&format!("/v1/store/secrets?action={action}"), body)
            .await?;
        Ok(())
    }

    /// Every secret path the caller may list.
    pub async fn list_secrets(&self) -> Result<Vec<String>, Error> {
        let reply = self
            .call(
                "/v1/store/secrets?action=list",
                json!({}),
                Consistency::Leader,
                None,
            )
            .await;
        match reply {
            Ok(reply) => serde_json::from_value(reply["keys"].clone())
                .map_err(|e| Error::Decode(e.to_string())),
            // SPIKE answers an empty store with 404.
            Err(Error::NotFound) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// The versions of `path`.
    pub async fn secret_metadata(&self, path: &str) -> Result<SecretMetadata, Error> {
        let body = json!({ "path": path, "version": 0 });
        let reply = self
            .call(
                "/v1/store/secrets/metadata?action=get",
                body,
                Consistency::Leader,
                None,
            )
            .await?;
        let number = |field: &str| {
            reply["metadata"][field]
                .as_u64()
                .ok_or_else(|| Error::Decode(format!("metadata without {field}")))
        };
        Ok(SecretMetadata {
            current_version: number("currentVersion")?,
            oldest_version: number("oldestVersion")?,
            document: reply,
        })
    }

    /// Creates or replaces the policy `name`.
    pub async fn put_policy(
        &self,
        name: &str,
        spiffe_id_pattern: &str,
        path_pattern: &str,
        permissions: &[&str],
    ) -> Result<(), Error> {
        let body = json!({
            "name": name,
            "spiffeidPattern": spiffe_id_pattern,
            "pathPattern": path_pattern,
            "permissions": permissions,
        });
        self.write("/v1/acl/policy", body).await?;
        Ok(())
    }

    /// Every policy, as SPIKE's JSON documents.
    pub async fn list_policies(&self) -> Result<Vec<Value>, Error> {
        let reply = self
            .call(
                "/v1/acl/policy?action=list",
                json!({}),
                Consistency::Leader,
                None,
            )
            .await?;
        Ok(reply["policies"].as_array().cloned().unwrap_or_default())
    }

    /// Deletes the policy `id` (SPIKE names a policy by its name).
    pub async fn delete_policy(&self, id: &str) -> Result<(), Error> {
        self.write("/v1/acl/policy?action=delete", json!({ "id": id }))
            .await?;
        Ok(())
    }

    /// The policy `id` (its name) as SPIKE's JSON document.
    pub async fn get_policy(&self, id: &str) -> Result<Value, Error> {
        self.call(
            "/v1/acl/policy?action=get",
            json!({ "id": id }),
            Consistency::Leader,
            None,
        )
        .await
    }

    /// Seals `plaintext` under the cluster's current data key (the cipher
    /// route, binary mode); returns the self-describing sealed frame. Any
    /// node holding the root key serves it, so it is spread over the
    /// endpoints rather than sent to the leader.
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let sealed = self
            .send(Operation {
                path_and_query: "/v1/cipher/encrypt",
                content_type: "application/octet-stream",
                body: plaintext.to_vec(),
                consistency: Consistency::Stale,
                session: None,
            })
            .await?;
        Ok(sealed.to_vec())
    }

    /// Opens a frame [`Self::encrypt`] returned; the plaintext zeroizes on
    /// drop.
    pub async fn decrypt(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.send(Operation {
            path_and_query: "/v1/cipher/decrypt",
            content_type: "application/octet-stream",
            body: sealed.to_vec(),
            consistency: Consistency::Stale,
            session: None,
        })
        .await
    }

    /// The cluster's status as the contacted node sees it (superusers).
    pub async fn cluster_status(&self) -> Result<Value, Error> {
        self.call(
            "/v1/cluster?action=status",
            json!({}),
            Consistency::Stale,
            None,
        )
        .await
    }

    /// Adds a replica (extension, superusers): it joins as a learner,
    /// catches up, then votes. `id` must be new (ids of removed replicas
    /// are retired); the replica must already run with `--join` at these
    /// addresses.
    pub async fn add_member(
        &self,
        id: u64,
        cluster_addr: SocketAddr,
        api_addr: SocketAddr,
    ) -> Result<(), Error> {
        let body = json!({
            "id": id,
            "clusterAddr": cluster_addr.to_string(),
            "apiAddr": api_addr.to_string(),
        });
        self.call("/v1/cluster?action=add", body, Consistency::Leader, None)
            .await
            .map(|_| ())
    }

    /// Removes a voter (extension, superusers); its id is retired. A retry
    /// of a removal that already happened is refused as a bad request.
    pub async fn remove_member(&self, id: u64) -> Result<(), Error> {
        let body = json!({ "id": id });
        self.call("/v1/cluster?action=remove", body, Consistency::Leader, None)
            .await
            .map(|_| ())
    }

    /// Replaces the root key (extension, superusers): the leader makes a
    /// new one, re-wraps the keyring and hands the keepers new shares, with
    /// `shares` and `threshold` as the new n and t. Returns the new root
    /// key's id.
    pub async fn rekey(&self, shares: u8, threshold: u8) -> Result<u64, Error> {
        let body = json!({ "shares": shares, "threshold": threshold });
        let reply = self
            .call("/v1/operator/rekey", body, Consistency::Leader, None)
            .await?;
        reply["rootKeyId"]
            .as_u64()
            .ok_or_else(|| Error::Decode("rekey reply without rootKeyId".into()))
    }

    /// Starts a new data key for new writes (extension, superusers);
    /// returns its id.
    pub async fn rotate_data_key(&self) -> Result<u64, Error> {
        let reply = self
            .call("/v1/operator/rotate", json!({}), Consistency::Leader, None)
            .await?;
        reply["dataKeyId"]
            .as_u64()
            .ok_or_else(|| Error::Decode("rotate reply without dataKeyId".into()))
    }

    /// One write, under a session for its whole life.
    async fn write(&self, path_and_query: &str, body: Value) -> Result<Value, Error> {
        let mut session = self.take_session();
        let outcome = self
            .call(path_and_query, body, Consistency::Leader, Some(session))
            .await;
        // Whatever happened, this sequence number is spent: a late copy of
        // it is refused, never applied after a newer one.
        session.next_sequence += 1;
        lock(&self.idle_sessions).push(session);
        outcome
    }

    fn take_session(&self) -> Session {
        lock(&self.idle_sessions).pop().unwrap_or_else(|| Session {
            client_id: u128::from_be_bytes(crate::crypto::random::array().unwrap_or_else(|_| {
                // Without OS randomness, time and address still make
                // collisions between clients vanishingly unlikely.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                (now ^ (self as *const Self as u128)).to_be_bytes()
            })),
            next_sequence: 1,
        })
    }

    /// One JSON operation; the body of the answer as JSON.
    async fn call(
        &self,
        path_and_query: &str,
        body: Value,
        consistency: Consistency,
        session: Option<Session>,
    ) -> Result<Value, Error> {
        let operation = Operation {
            path_and_query,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            consistency,
            session,
        };
        let bytes = self.send(operation).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Sends one operation, following the leader and retrying within the
    /// budget; returns the body of the first successful answer.
    async fn send(&self, operation: Operation<'_>) -> Result<Zeroizing<Vec<u8>>, Error> {
        let Operation {
            path_and_query,
            content_type,
            body,
            consistency,
            session,
        } = operation;
        let client_id = session.map(|s| format!("{:032x}", s.client_id));
        let sequence = session.map(|s| s.next_sequence.to_string());
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let (Some(client_id), Some(sequence)) = (&client_id, &sequence) {
            headers.push((CLIENT_ID_HEADER, client_id));
            headers.push((SEQUENCE_HEADER, sequence));
        }
        if consistency == Consistency::Stale {
            headers.push((CONSISTENCY_HEADER, "stale"));
        }
        let deadline = Instant::now() + self.retry.deadline;
        let mut backoff = self.retry.backoff_initial;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let target = self.target(consistency);
            let request = Request {
                method: "POST",
                path_and_query,
                content_type,
                body: body.to_vec(),
                headers: &headers,
            };
            let last = match self.pool.send(target, request).await {
                Ok(reply) => {
                    let hint = reply.header(LEADER_HEADER).and_then(parse_leader);
                    let moved = hint.is_some_and(|leader| leader != target);
                    if hint.is_some() {
                        *lock(&self.leader) = hint;
                    }
                    match answer(reply.status, Zeroizing::new(reply.bytes)) {
                        Err(Error::NotReady(reason)) if moved => {
                            // A fresh leader hint: try it at once.
                            if attempt < self.retry.attempts_max && Instant::now() < deadline {
                                continue;
                            }
                            Error::NotReady(reason)
                        }
                        Err(error) if error.is_retryable() => {
                            if hint.is_none() {
                                // It names no leader (an election, or a
                                // leader cut off from its quorum): ask
                                // another node next.
                                self.forget_leader(target);
                            }
                            error
                        }
                        definitive => return definitive,
                    }
                }
                Err(error) => {
                    self.forget_leader(target);
                    Error::Unreachable(error)
                }
            };
            let now = Instant::now();
            if attempt >= self.retry.attempts_max || now + backoff >= deadline {
                return Err(last);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.backoff_max);
        }
    }

    /// The node to ask next: the leader when known and wanted, else the
    /// endpoints in turn.
    fn target(&self, consistency: Consistency) -> SocketAddr {
        if consistency == Consistency::Leader
            && self.follow_leader
            && let Some(leader) = self.known_leader()
        {
            return leader;
        }
        let index = self.cursor.load(Ordering::Relaxed) % self.endpoints.len();
        self.endpoints[index]
    }

    fn forget_leader(&self, unreachable: SocketAddr) {
        let mut leader = lock(&self.leader);
        if *leader == Some(unreachable) {
            *leader = None;
        }
        drop(leader);
        // Move on, so the next try asks another endpoint.
        self.cursor.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `https://host:port` to an address (only literal IP addresses: a hint is
/// an address the cluster was configured with, never looked up).
fn parse_leader(hint: &str) -> Option<SocketAddr> {
    hint.strip_prefix("https://")?.parse().ok()
}

/// Turns a status and body into a result; error bodies are SPIKE's JSON
/// with an `err` code.
fn answer(status: u16, body: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, Error> {
    if status == 200 {
        return Ok(body);
    }
    let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = document["err"].as_str().unwrap_or_default().to_owned();
    match status {
        400 => Err(Error::BadRequest),
        401 | 403 => Err(Error::Denied),
        404 => Err(Error::NotFound),
        409 => Err(Error::Conflict),
        413 => Err(Error::TooLarge),
        503 => Err(Error::NotReady(if code.is_empty() {
            "unavailable".into()
        } else {
            code
        })),
        _ => Err(Error::Server { status, code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errors_that_say_what_to_do() {
        let body = |value: Value| Zeroizing::new(value.to_string().into_bytes());
        assert!(answer(200, body(json!({"data": {}}))).is_ok());
        assert!(matches!(answer(401, body(Value::Null)), Err(Error::Denied)));
        assert!(matches!(
            answer(404, Zeroizing::new(Vec::new())),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            answer(409, body(Value::Null)),
            Err(Error::Conflict)
        ));
        let not_ready =
            answer(503, body(json!({"err": "state_not_ready"}))).expect_err("503 is an error");
        assert!(not_ready.is_retryable());
        assert!(!Error::Denied.is_retryable());
        assert!(matches!(
            answer(500, body(json!({"err": "x"}))),
            Err(Error::Server { status: 500, .. })
        ));
    }

    #[test]
    fn leader_hints_are_literal_https_addresses() {
        assert_eq!(
            parse_leader("https://127.0.0.1:8553"),
            Some("127.0.0.1:8553".parse().expect("address"))
        );
        assert_eq!(parse_leader("http://127.0.0.1:8553"), None);
        assert_eq!(parse_leader("https://nexus.example:8553"), None);
    }
}
