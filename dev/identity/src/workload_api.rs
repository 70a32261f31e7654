//! A SPIFFE Workload API server for development and tests.
//!
//! One unix socket per identity of an [`IdentityDirectory`]: whoever
//! connects to `sockets/<name>.sock` receives `<name>`'s X.509 SVID, exactly
//! as a SPIRE agent would hand it to an attested workload. SVIDs are minted
//! fresh at start, re-minted on a schedule (short TTLs exercise rotation)
//! and on demand ([`WorkloadApiServer::rotate`]); every connected client
//! gets the new SVID on its open stream.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::ca::{CaError, DevCa};
use crate::directory::{DirectoryError, IdentityDirectory, Manifest, make_private_dir};

/// Generated Workload API messages and service.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use proto::{X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse};

/// The header every Workload API request must carry (SPIFFE Workload
/// Endpoint spec), so a browser or SSRF cannot fetch SVIDs.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How the server mints and rotates SVIDs.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Lifetime of each minted SVID.
    pub svid_ttl: Duration,
    /// Re-mint every SVID this often; `None` means half the TTL.
    pub rotate_every: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            svid_ttl: crate::ca::SVID_TTL_DEFAULT,
            rotate_every: None,
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The identity directory is missing or broken.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// Minting failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A socket path longer than a unix socket address can hold.
    #[error(
        "socket path {path} is {length} bytes, over the {MAX_SOCKET_PATH}-byte limit of a unix \
         socket address; serve the sockets from a shorter directory"
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
    },
    /// No such identity.
    #[error("no identity named {0:?}")]
    UnknownIdentity(String),
}

/// The longest path a unix socket can be bound at or connected to: Linux's
/// `sun_path` holds 108 bytes, the last a terminating NUL. A longer path
/// fails only at bind time, with an error that does not name the cause.
pub const MAX_SOCKET_PATH: usize = 107;

/// Refuses a socket path that no unix socket can use.
pub fn check_socket_path(path: &Path) -> Result<(), ServeError> {
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ServeError::SocketPathTooLong {
            path: path.to_owned(),
            length,
        });
    }
    Ok(())
}

struct Feed {
    spiffe_id: String,
    socket: PathBuf,
    sender: watch::Sender<Arc<X509svidResponse>>,
}

struct Shared {
    ca: DevCa,
    svid_ttl: Duration,
    feeds: BTreeMap<String, Feed>,
}

impl Shared {
    fn mint(&self, spiffe_id: &str) -> Result<X509svidResponse, CaError> {
        let svid = self.ca.mint(spiffe_id, self.svid_ttl)?;
        Ok(X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: spiffe_id.to_owned(),
                x509_svid: svid.chain_der.concat(),
                x509_svid_key: svid.key_pkcs8_der,
                bundle: self.ca.cert_der().to_vec(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        })
    }

    fn rotate(&self, name: &str) -> Result<(), ServeError> {
        let feed = self
            .feeds
            .get(name)
            .ok_or_else(|| ServeError::UnknownIdentity(name.to_owned()))?;
        let response = self.mint(&feed.spiffe_id)?;
        feed.sender.send_replace(Arc::new(response));
        Ok(())
    }
}

/// A running dev Workload API: sockets are removed and tasks stopped on drop.
pub struct WorkloadApiServer {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkloadApiServer {
    /// Serves every identity of `directory` on its own socket, in the
    /// directory's `sockets/`.
    pub async fn start(
        directory: &IdentityDirectory,
        options: ServeOptions,
    ) -> Result<Self, ServeError> {
        Self::start_in(directory, &directory.sockets_dir(), options).await
    }

    /// Serves every identity of `directory` on its own socket in
    /// `sockets_dir` (for a directory whose own `sockets/` path is too long
    /// for a unix socket).
    pub async fn start_in(
        directory: &IdentityDirectory,
        sockets_dir: &Path,
        options: ServeOptions,
    ) -> Result<Self, ServeError> {
        let manifest: Manifest = directory.manifest()?;
        let socket_path = |name: &str| sockets_dir.join(format!("{name}.sock"));
        for spec in &manifest.identities {
            check_socket_path(&socket_path(&spec.name))?;
        }
        let ca = directory.load_ca()?;
        make_private_dir(sockets_dir)?;

        let mut feeds = BTreeMap::new();
        let mut receivers = Vec::new();
        let mut pending = Shared {
            ca,
            svid_ttl: options.svid_ttl,
            feeds: BTreeMap::new(),
        };
        for spec in &manifest.identities {
            let spiffe_id = manifest.spiffe_id(spec);
            let (sender, receiver) = watch::channel(Arc::new(pending.mint(&spiffe_id)?));
            let socket = socket_path(&spec.name);
            receivers.push((socket.clone(), receiver));
            feeds.insert(
                spec.name.clone(),
                Feed {
                    spiffe_id,
                    socket,
                    sender,
                },
            );
        }
        pending.feeds = feeds;
        let shared = Arc::new(pending);
        let bundles = X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                format!("spiffe://{}", shared.ca.trust_domain().as_str()),
                shared.ca.cert_der().to_vec(),
            )]),
        };

        let mut tasks = Vec::new();
        for (socket, receiver) in receivers {
            let listener = bind(&socket)?;
            let service = DevWorkloadApi {
                svids: receiver,
                bundles: bundles.clone(),
            };
            tasks.push(tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(SpiffeWorkloadApiServer::new(service))
                    .serve_with_incoming(UnixListenerStream::new(listener))
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "dev Workload API socket stopped");
                }
            }));
        }

        let period = options.rotate_every.unwrap_or(options.svid_ttl / 2);
        let rotating = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                interval.tick().await;
                for name in rotating.feeds.keys() {
                    if let Err(error) = rotating.rotate(name) {
                        tracing::error!(%error, name, "scheduled SVID rotation failed");
                    }
                }
            }
        }));
        Ok(Self { shared, tasks })
    }

    /// The socket serving identity `name`.
    pub fn socket_path(&self, name: &str) -> Option<&Path> {
        self.shared
            .feeds
            .get(name)
            .map(|feed| feed.socket.as_path())
    }

    /// The `SPIFFE_ENDPOINT_SOCKET` value for identity `name`.
    pub fn endpoint(&self, name: &str) -> Option<String> {
        self.socket_path(name)
            .map(|path| format!("unix://{}", path.display()))
    }

    /// Mints a new SVID for `name` now and pushes it to connected clients.
    pub fn rotate(&self, name: &str) -> Result<(), ServeError> {
        self.shared.rotate(name)
    }

    /// Rotates every identity.
    pub fn rotate_all(&self) -> Result<(), ServeError> {
        self.shared
            .feeds
            .keys()
            .try_for_each(|name| self.shared.rotate(name))
    }

    /// The names served.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shared.feeds.keys().map(String::as_str)
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for feed in self.shared.feeds.values() {
            let _ = std::fs::remove_file(&feed.socket);
        }
    }
}

fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    // A socket left by a killed server would make bind fail.
    if path.exists() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| ServeError::Bind {
        path: path.to_owned(),
        source,
    })
}

struct DevWorkloadApi {
    svids: watch::Receiver<Arc<X509svidResponse>>,
    bundles: X509BundlesResponse,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for DevWorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_security_header(&request)?;
        let stream = WatchStream::new(self.svids.clone()).map(|response| Ok((*response).clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_security_header(&request)?;
        // The dev CA never rotates: one message, then the stream stays open
        // as the protocol expects.
        let first = tokio_stream::once(Ok(self.bundles.clone()));
        let stream = first.chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_longer_than_a_unix_address_are_refused_by_name() {
        let fits = PathBuf::from(format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1)));
        check_socket_path(&fits).expect("107 bytes fit");
        let long = PathBuf::from(format!("/{}", "s".repeat(MAX_SOCKET_PATH)));
        let refused = check_socket_path(&long).expect_err("108 bytes do not");
        assert!(matches!(
            refused,
            ServeError::SocketPathTooLong { length: 108, .. }
        ));
        assert!(
            refused.to_string().contains("shorter directory"),
            "{refused}"
        );
    }

    #[test]
    fn the_kernel_agrees_on_the_limit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let room = MAX_SOCKET_PATH - dir.path().as_os_str().len() - 1;
        let at_limit = dir.path().join("a".repeat(room));
        std::os::unix::net::UnixListener::bind(&at_limit).expect("a 107-byte path binds");
        let over = dir.path().join("b".repeat(room + 1));
        assert!(std::os::unix::net::UnixListener::bind(&over).is_err());
    }
}
