//! The application client: give it one or more Nexus endpoints and an SVID,
//! and it finds the leader, follows leadership changes, retries within a
//! bounded budget, and applies each write at most once.
//!
//! - Leader discovery: every Nexus answer carries an `X-Spike-Leader` hint;
//!   writes and linearizable reads go to the last known leader, or to the
//!   endpoints in turn until one names it. Followers forward too, so a stale
//!   hint costs a hop, not an error.
//! - Exactly-once writes: see [`super::session`].
//! - Errors say what to do: [`Error::is_retryable`] separates "not ready,
//!   try later" from "denied", "not found" and bad input.
//!
//! Requests and answers are the typed contract of [`crate::api`]; the
//! operations themselves are in [`super::operations`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use super::pool::Pool;
use super::session::{Session, Sessions};
use super::{Error, RESPONSE_SIZE_MAX_BYTES, Request};
use crate::api::{self, ApiRequest, ApiResponse, Route, header};
use crate::identity::{PeerAuthorizer, Role, TrustRoots};
use crate::svid::Identity;
use crate::tls::client_config;

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
    /// new leader by up to the pause itself.
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
    /// Longest a connection (TCP and TLS) may take to open: a node that
    /// does not answer is given up on this fast, and the next one tried.
    pub connect_timeout: Duration,
    /// Longest one HTTP exchange may take once connected.
    pub request_timeout: Duration,
    /// Largest response body accepted in memory.
    pub response_limit: usize,
    /// Longest one exchange that streams a backup to or from a file may
    /// take (`snapshot_save_to`, `snapshot_restore_file`): far longer
    /// than `request_timeout`, since a backup may be gigabytes.
    pub transfer_timeout: Duration,
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
    /// Defaults for `endpoints`: 2 s to connect, 5 s per exchange, 8 MiB
    /// answers, an hour per backup transfer, the default retry budget,
    /// following the leader.
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            response_limit: RESPONSE_SIZE_MAX_BYTES,
            transfer_timeout: TRANSFER_TIMEOUT_DEFAULT,
            retry: RetryPolicy::default(),
            follow_leader: true,
        }
    }
}

/// Longest a backup transfer to or from a file may take by default.
pub const TRANSFER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);

/// Where a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consistency {
    /// Through the leader, linearizable (writes and default reads).
    Leader,
    /// From whichever node answers first in endpoint order, possibly behind.
    Stale,
}

/// One request as the retry loop sends it.
pub(crate) struct Operation<'a> {
    pub(crate) route: Route,
    pub(crate) content_type: &'a str,
    pub(crate) body: Zeroizing<Vec<u8>>,
    pub(crate) consistency: Consistency,
    /// Send this file as the body instead of `body` (a backup restore).
    pub(crate) upload: Option<&'a Path>,
    /// Write a 200 answer's body to this file, up to this many bytes,
    /// instead of memory (a backup save).
    pub(crate) download: Option<(&'a Path, u64)>,
}

impl<'a> Operation<'a> {
    /// An operation with `body` in memory and its answer read to memory.
    pub(crate) fn new(
        route: Route,
        content_type: &'a str,
        body: Zeroizing<Vec<u8>>,
        consistency: Consistency,
    ) -> Self {
        Self {
            route,
            content_type,
            body,
            consistency,
            upload: None,
            download: None,
        }
    }
}

/// A SPIKE Nexus cluster as one application sees it.
pub struct NexusClient {
    pool: Pool,
    endpoints: Vec<SocketAddr>,
    retry: RetryPolicy,
    transfer_timeout: Duration,
    follow_leader: bool,
    leader: Mutex<Option<SocketAddr>>,
    cursor: AtomicUsize,
    sessions: Sessions,
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
            pool: Pool::new(
                config,
                settings.connect_timeout,
                settings.request_timeout,
                settings.response_limit,
            ),
            endpoints: settings.endpoints,
            retry: settings.retry,
            transfer_timeout: settings.transfer_timeout,
            follow_leader: settings.follow_leader,
            leader: Mutex::new(None),
            cursor: AtomicUsize::new(0),
            sessions: Sessions::default(),
        })
    }

    /// The leader as last seen, if known.
    pub fn known_leader(&self) -> Option<SocketAddr> {
        *lock(&self.leader)
    }

    /// Sends `request` to its route and decodes the answer; a write goes
    /// under a session for its whole life, retries included.
    pub async fn call<R: ApiRequest>(&self, request: &R) -> Result<R::Response, Error> {
        self.call_with(request, Consistency::Leader).await
    }

    pub(crate) async fn call_with<R: ApiRequest>(
        &self,
        request: &R,
        consistency: Consistency,
    ) -> Result<R::Response, Error> {
        // Named step: a write's body may hold secret values.
        let body = Zeroizing::new(api::encode(request));
        let bytes = self
            .send(Operation::new(R::ROUTE, header::JSON, body, consistency))
            .await?;
        // The decoder's error names no part of the body, which may be secret.
        let answer: R::Response =
            api::decode(&bytes).map_err(|error| Error::Decode(error.to_string()))?;
        match answer.error() {
            Some(code) => Err(Error::from(code)),
            None => Ok(answer),
        }
    }

    /// Sends one operation, following the leader and retrying within the
    /// budget; returns the body of the first successful answer. A write
    /// borrows a session for its whole life.
    pub(crate) async fn send(&self, operation: Operation<'_>) -> Result<Zeroizing<Vec<u8>>, Error> {
        let session = operation.route.is_write().then(|| self.sessions.take());
        let outcome = self.send_with(&operation, session).await;
        if let Some(session) = session {
            self.sessions.give_back(session);
        }
        outcome
    }

    async fn send_with(
        &self,
        operation: &Operation<'_>,
        session: Option<Session>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let session_headers = session.map(|session| session.headers());
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some((client_id, sequence)) = &session_headers {
            headers.push((header::CLIENT_ID, client_id));
            headers.push((header::SEQUENCE, sequence));
        }
        if operation.consistency == Consistency::Stale {
            headers.push((header::CONSISTENCY, header::STALE));
        }
        let deadline = Instant::now() + self.retry.deadline;
        let mut backoff = self.retry.backoff_initial;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let target = self.target(operation.consistency);
            let request = Request {
                method: "POST",
                path_and_query: operation.route.path_and_query(),
                content_type: operation.content_type,
                body: operation.body.to_vec(),
                headers: &headers,
            };
            let last = match self.attempt(target, request, operation).await {
                Ok(mut reply) => {
                    let hint = reply
                        .header(header::LEADER)
                        .and_then(header::parse_leader_hint);
                    let moved = hint.is_some_and(|leader| leader != target);
                    if hint.is_some() {
                        *lock(&self.leader) = hint;
                    }
                    let body = Zeroizing::new(std::mem::take(&mut reply.bytes));
                    if reply.status == 200 {
                        return Ok(body);
                    }
                    match Error::from_reply(reply.status, &body, |name| reply.header(name)) {
                        Error::NotReady(reason) if moved => {
                            // A fresh leader hint: try it at once.
                            if attempt < self.retry.attempts_max && Instant::now() < deadline {
                                continue;
                            }
                            Error::NotReady(reason)
                        }
                        error if error.is_retryable() => {
                            if hint.is_none() {
                                // It names no leader (an election, or a
                                // leader cut off from its quorum): ask
                                // another node next.
                                self.forget_leader(target);
                            }
                            error
                        }
                        definitive => return Err(definitive),
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

    /// One attempt of `operation` on `target`: through the pool's
    /// in-memory path, or streaming a file up or down (each attempt
    /// reads the upload from its start and rewrites the download).
    async fn attempt(
        &self,
        target: SocketAddr,
        request: Request<'_>,
        operation: &Operation<'_>,
    ) -> Result<super::RawReply, super::ClientError> {
        if operation.upload.is_none() && operation.download.is_none() {
            return self.pool.send(target, request).await;
        }
        let local = |what: &str, path: &Path, error: std::io::Error| super::ClientError::Exchange {
            address: target,
            reason: format!("cannot {what} {}: {error}", path.display()),
        };
        let body = match operation.upload {
            Some(path) => Some(super::transfer::RequestBody::File(
                super::transfer::FileBody::open(path)
                    .await
                    .map_err(|e| local("read", path, e))?,
            )),
            None => None,
        };
        let mut out = match operation.download {
            Some((path, limit)) => Some((
                super::transfer::create_private(path)
                    .await
                    .map_err(|e| local("write", path, e))?,
                limit,
            )),
            None => None,
        };
        let out = out.as_mut().map(|(file, limit)| (file, *limit));
        self.pool
            .send_within(target, request, body, out, self.transfer_timeout)
            .await
            .map(|(reply, _)| reply)
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
