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
    /// No such identity.
    #[error("no identity named {0:?}")]
    UnknownIdentity(String),
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
    /// Serves every identity of `directory` on its own socket.
    pub async fn start(
        directory: &IdentityDirectory,
        options: ServeOptions,
    ) -> Result<Self, ServeError> {
        let manifest: Manifest = directory.manifest()?;
        let ca = directory.load_ca()?;
        make_private_dir(&directory.sockets_dir())?;

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
            let socket = directory.socket_path(&spec.name);
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
