//! The API and cluster servers' edge: a limit on everything a client can
//! make a replica hold. Connections (in total, per SPIFFE ID, handshakes
//! per address) are counted by the listener; here are the HTTP limits and
//! the API's connection loop, which axum's `serve` cannot configure.
//!
//! | limit | default | flag / variable |
//! |---|---|---|
//! | connections, per listener | 4096 | `--max-connections` |
//! | connections per SPIFFE ID | 256 | `--max-connections-per-peer` |
//! | TLS handshakes in progress per IP | 32 | `--max-handshakes-per-address` |
//! | HTTP/2 streams per API connection | 100 | `--max-streams-per-connection` |
//! | API requests in progress per SPIFFE ID | 128 | `--max-requests-per-peer` |
//! | request header bytes | 16 KiB | `--max-header-bytes` |
//! | request URI bytes | 8 KiB | `--max-uri-bytes` |
//! | time to send request headers | 10s | `--header-read-timeout` |
//! | time for a whole request | 30s | `--request-timeout` |
//! | time for a backup restore by the superuser | 15m | `--restore-timeout` |
//! | idle connection | 120s | `--idle-timeout` |
//!
//! A request over the in-progress cap or the time limit answers 503
//! `state_not_ready` (try again later; a write that timed out may or may
//! not have applied, like any 503 of a write); an over-long URI 414.
//! Bodies are capped per route in `api` (1 MiB; a backup restore by the
//! superuser is spooled to a file, up to the larger of 64 MiB and the
//! storage quota). A restore's connection still ends at its maximum age
//! plus grace ([`spike_sdk::tls::CONNECTION_AGE_GRACE`]), at least 20
//! minutes after a fresh connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use spike_sdk::api::Route;
use spike_sdk::identity::{Role, SpiffeId, TrustRoots};
use spike_sdk::tls::{ConnectionLimits, TlsListener};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::metrics::{ApiMetrics, EdgeRefusal};

/// Flags and SPIKE variables of the edge limits.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Most connections each of the API and cluster ports holds.
    #[arg(long, env = "SPIKE_NEXUS_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections one SPIFFE ID holds on each port.
    #[arg(
        long,
        env = "SPIKE_NEXUS_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_connections_per_peer: usize,
    /// Most TLS handshakes in progress from one IP address on each port.
    #[arg(
        long,
        env = "SPIKE_NEXUS_MAX_HANDSHAKES_PER_ADDRESS",
        default_value_t = 32
    )]
    pub max_handshakes_per_address: usize,
    /// Most concurrent HTTP/2 streams on one API connection.
    #[arg(
        long,
        env = "SPIKE_NEXUS_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_streams_per_connection: u32,
    /// Most API requests in progress for one SPIFFE ID; more answer 503.
    #[arg(long, env = "SPIKE_NEXUS_MAX_REQUESTS_PER_PEER", default_value_t = 128)]
    pub max_requests_per_peer: usize,
    /// Most bytes of request headers (HTTP/1.1 head, HTTP/2 header list).
    #[arg(long, env = "SPIKE_NEXUS_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    /// Longest request URI (path and query) in bytes; longer answers 414.
    #[arg(long, env = "SPIKE_NEXUS_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    pub max_uri_bytes: usize,
    /// Time a client has to send a request's headers (slowloris).
    #[arg(
        long,
        env = "SPIKE_NEXUS_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_parser = spike_sdk::duration::parse
    )]
    pub header_read_timeout: Duration,
    /// Time a request may take from its headers to its answer, body
    /// included.
    #[arg(
        long,
        env = "SPIKE_NEXUS_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = spike_sdk::duration::parse
    )]
    pub request_timeout: Duration,
    /// Time a backup restore by the superuser may take from its headers to
    /// its answer: its upload (up to the storage quota), its check and its
    /// proposal through Raft.
    #[arg(
        long,
        env = "SPIKE_NEXUS_RESTORE_TIMEOUT",
        default_value = "15m",
        value_parser = spike_sdk::duration::parse
    )]
    pub restore_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[arg(
        long,
        env = "SPIKE_NEXUS_IDLE_TIMEOUT",
        default_value = "120s",
        value_parser = spike_sdk::duration::parse
    )]
    pub idle_timeout: Duration,
}

/// The validated edge limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Connection counts, for both listeners.
    pub connections: ConnectionLimits,
    /// HTTP/2 streams per API connection.
    pub streams_per_connection: u32,
    /// API requests in progress per SPIFFE ID.
    pub requests_per_peer: usize,
    /// Header bytes.
    pub header_bytes: u32,
    /// URI bytes.
    pub uri_bytes: usize,
    /// Time to send headers.
    pub header_read_timeout: Duration,
    /// Time per request.
    pub request_timeout: Duration,
    /// Time per backup restore by the superuser.
    pub restore_timeout: Duration,
    /// Time a connection may sit idle.
    pub idle_timeout: Duration,
}

/// hyper's HTTP/1.1 read buffer cannot be smaller.
const HTTP1_BUFFER_MIN_BYTES: u32 = 8192;

impl EdgeArgs {
    /// Validates the limits: none may be zero (that would refuse
    /// everything, or mean "never"); headers need room for a URI.
    pub fn limits(&self) -> Result<EdgeLimits, String> {
        let counts = [
            ("SPIKE_NEXUS_MAX_CONNECTIONS", self.max_connections),
            (
                "SPIKE_NEXUS_MAX_CONNECTIONS_PER_PEER",
                self.max_connections_per_peer,
            ),
            (
                "SPIKE_NEXUS_MAX_HANDSHAKES_PER_ADDRESS",
                self.max_handshakes_per_address,
            ),
            (
                "SPIKE_NEXUS_MAX_REQUESTS_PER_PEER",
                self.max_requests_per_peer,
            ),
            (
                "SPIKE_NEXUS_MAX_STREAMS_PER_CONNECTION",
                self.max_streams_per_connection as usize,
            ),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        let times = [
            ("SPIKE_NEXUS_HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("SPIKE_NEXUS_REQUEST_TIMEOUT", self.request_timeout),
            ("SPIKE_NEXUS_RESTORE_TIMEOUT", self.restore_timeout),
            ("SPIKE_NEXUS_IDLE_TIMEOUT", self.idle_timeout),
        ];
        if let Some((name, _)) = times.iter().find(|(_, value)| value.is_zero()) {
            return Err(format!("{name} must be more than 0"));
        }
        if self.max_header_bytes < HTTP1_BUFFER_MIN_BYTES {
            return Err(format!(
                "SPIKE_NEXUS_MAX_HEADER_BYTES must be at least {HTTP1_BUFFER_MIN_BYTES}"
            ));
        }
        if self.max_uri_bytes == 0 || self.max_uri_bytes > self.max_header_bytes as usize {
            return Err(
                "SPIKE_NEXUS_MAX_URI_BYTES must be 1 to SPIKE_NEXUS_MAX_HEADER_BYTES".to_owned(),
            );
        }
        Ok(EdgeLimits {
            connections: ConnectionLimits {
                connections_max: self.max_connections,
                connections_per_peer_max: self.max_connections_per_peer,
                handshakes_per_address_max: self.max_handshakes_per_address,
            },
            streams_per_connection: self.max_streams_per_connection,
            requests_per_peer: self.max_requests_per_peer,
            header_bytes: self.max_header_bytes,
            uri_bytes: self.max_uri_bytes,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            restore_timeout: self.restore_timeout,
            idle_timeout: self.idle_timeout,
        })
    }
}

/// Makes sure the process may open enough files for its connection caps
/// (two listeners, plus room for storage, peers and keepers); warns if
/// not, since the OS would then refuse connections before the caps do.
pub fn check_descriptor_limit(limits: &EdgeLimits) {
    let needed = (2 * limits.connections.connections_max + 1024) as u64;
    match spike_sdk::tls::raise_descriptor_limit() {
        Some(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what the connection caps allow; \
             raise it or lower SPIKE_NEXUS_MAX_CONNECTIONS"
        ),
        _ => {}
    }
}

/// API requests in progress per SPIFFE ID.
#[derive(Debug, Default)]
struct PeerRequests {
    max: usize,
    counts: Mutex<HashMap<SpiffeId, usize>>,
}

/// One request's place under [`PeerRequests`]; gives it back when dropped.
struct RequestPermit {
    requests: Arc<PeerRequests>,
    peer: SpiffeId,
}

impl PeerRequests {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(self: &Arc<Self>, peer: &SpiffeId) -> Option<RequestPermit> {
        let mut counts = self.counts();
        let count = counts.entry(peer.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(RequestPermit {
            requests: self.clone(),
            peer: peer.clone(),
        })
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let mut counts = self.requests.counts();
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Requests in progress on one connection and when the last one ended,
/// for the idle timeout.
struct Activity {
    in_progress: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    fn idle_since(&self) -> Option<Instant> {
        (self.in_progress.load(Ordering::SeqCst) == 0).then(|| {
            *self
                .last_end
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
    }
}

/// Counts one request on its connection while it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A bare answer from the edge, before any route runs, in SPIKE's error
/// shape.
fn refusal(status: StatusCode) -> Response<axum::body::Body> {
    let code = spike_sdk::api::ErrorCode::from_status(status.as_u16())
        .map(|code| code.as_str())
        .unwrap_or("api_bad_request");
    let mut response = Response::new(axum::body::Body::from(format!(r#"{{"err":"{code}"}}"#)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(spike_sdk::api::header::JSON),
    );
    response
}

/// Whether `request` from `peer` is a backup restore by the superuser:
/// the one request given [`EdgeLimits::restore_timeout`], since its body
/// may be as large as the storage quota.
fn is_superuser_restore(
    trust_roots: &TrustRoots,
    peer: &SpiffeId,
    request: &Request<Incoming>,
) -> bool {
    request.method() == Method::POST
        && Route::from_request(request.uri().path(), request.uri().query())
            == Some(Route::SnapshotRestore)
        && trust_roots.has_role(peer, Role::PilotSuperuser)
}

/// Serves `router` on `listener` under `limits` until `stopping`
/// resolves; open connections then finish their requests. `trust_roots`
/// say who the superuser is, whose restores get the restore timeout.
pub async fn serve_api(
    mut listener: TlsListener,
    router: Router,
    limits: EdgeLimits,
    trust_roots: TrustRoots,
    metrics: ApiMetrics,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<(), Infallible> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_bytes as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams_per_connection)
        .max_header_list_size(limits.header_bytes);
    let builder = Arc::new(builder);
    let trust_roots = Arc::new(trust_roots);
    let requests = Arc::new(PeerRequests {
        max: limits.requests_per_peer,
        counts: Mutex::default(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(stopping);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            connection = listener.accept() => connection,
            () = &mut stopping => break,
            // Reap finished connection tasks as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(connection) = connection else { break };
        let peer = connection.peer().clone();
        // Retired gracefully (GOAWAY, `Connection: close`) at its maximum
        // age, so the client reconnects and is verified again before the
        // listener ends the connection.
        let retire_at = connection.retire_at();
        let activity = Arc::new(Activity {
            in_progress: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        });
        let service = {
            let (router, requests, activity, metrics, trust_roots) = (
                router.clone(),
                requests.clone(),
                activity.clone(),
                metrics.clone(),
                trust_roots.clone(),
            );
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let busy = Busy::new(&activity);
                let permit = requests.admit(&peer.spiffe_id);
                let timeout = if is_superuser_restore(&trust_roots, &peer.spiffe_id, &request) {
                    limits.restore_timeout
                } else {
                    limits.request_timeout
                };
                request.extensions_mut().insert(ConnectInfo(peer.clone()));
                let router = router.clone();
                let metrics = metrics.clone();
                async move {
                    let _busy = busy;
                    let uri_bytes = request
                        .uri()
                        .path_and_query()
                        .map_or(0, |whole| whole.as_str().len());
                    if uri_bytes > limits.uri_bytes {
                        metrics.refused(EdgeRefusal::UriTooLong);
                        return Ok::<_, Infallible>(refusal(StatusCode::URI_TOO_LONG));
                    }
                    let Some(_permit) = permit else {
                        tracing::debug!("too many requests in progress for this peer");
                        metrics.refused(EdgeRefusal::PeerRequests);
                        return Ok(refusal(StatusCode::SERVICE_UNAVAILABLE));
                    };
                    let answer = router.oneshot(request.map(axum::body::Body::new));
                    match tokio::time::timeout(timeout, answer).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            tracing::info!("request timed out");
                            metrics.refused(EdgeRefusal::Timeout);
                            Ok(refusal(StatusCode::SERVICE_UNAVAILABLE))
                        }
                    }
                }
            })
        };
        let builder = builder.clone();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let serving = builder.serve_connection(TokioIo::new(connection), service);
            tokio::pin!(serving);
            let idle_timeout = limits.idle_timeout;
            let mut retire = std::pin::pin!(tokio::time::sleep_until(retire_at));
            let mut closing = false;
            loop {
                let idle_check = async {
                    match activity.idle_since() {
                        Some(since) => tokio::time::sleep_until(since + idle_timeout).await,
                        None => tokio::time::sleep(idle_timeout).await,
                    }
                };
                tokio::select! {
                    _ = serving.as_mut() => break,
                    _ = stopped.changed(), if !closing => {
                        closing = true;
                        serving.as_mut().graceful_shutdown();
                    }
                    () = &mut retire, if !closing => {
                        tracing::debug!("connection retired at its maximum age");
                        closing = true;
                        serving.as_mut().graceful_shutdown();
                    }
                    () = idle_check, if !closing => {
                        if activity
                            .idle_since()
                            .is_some_and(|since| since.elapsed() >= idle_timeout)
                        {
                            tracing::debug!("idle connection closed");
                            closing = true;
                            serving.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    fn limits(argv: &[&str]) -> Result<EdgeLimits, String> {
        let mut all = vec!["nexus"];
        all.extend_from_slice(argv);
        Flags::try_parse_from(all)
            .expect("flags parse")
            .edge
            .limits()
    }

    #[test]
    fn defaults_are_limits_and_zero_is_refused() {
        let defaults = limits(&[]).expect("defaults");
        assert_eq!(defaults.connections, ConnectionLimits::DEFAULT);
        assert_eq!(defaults.streams_per_connection, 100);
        assert_eq!(defaults.request_timeout, Duration::from_secs(30));
        assert_eq!(defaults.restore_timeout, Duration::from_secs(15 * 60));
        for refused in [
            &["--max-connections", "0"][..],
            &["--max-requests-per-peer", "0"],
            &["--idle-timeout", "0s"],
            &["--restore-timeout", "0s"],
            &["--max-header-bytes", "100"],
            &["--max-uri-bytes", "20000"],
        ] {
            assert!(limits(refused).is_err(), "{refused:?} accepted");
        }
        let tight = limits(&[
            "--request-timeout",
            "2s",
            "--max-streams-per-connection",
            "8",
        ])
        .expect("tight");
        assert_eq!(
            (tight.request_timeout, tight.streams_per_connection),
            (Duration::from_secs(2), 8)
        );
    }
}
