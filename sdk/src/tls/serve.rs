//! An axum router served on a [`TlsListener`]: `axum::serve` with the
//! peer's identity as connect info, and each connection retired at its
//! maximum age, gracefully (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`),
//! so that clients reconnect and are verified again before the listener
//! ends the connection.

use std::future::Future;
use std::pin::pin;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{PeerIdentity, TlsListener};

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// connections finish (as `axum::serve(..).with_graceful_shutdown`).
/// Handlers get the verified peer as `ConnectInfo<PeerIdentity>`.
pub async fn serve_router(
    mut listener: TlsListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    // Dropping the sender tells every connection to shut down; each holds a
    // receiver of `closed` until it is done.
    let (stop, stopping) = watch::channel(());
    let (closed, _) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => break,
            connection = listener.accept() => match connection {
                Some(connection) => connection,
                None => break,
            },
        };
        let peer = connection.peer().clone();
        let retire_at = connection.retire_at();
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<PeerIdentity>(peer.clone()));
                request.map(axum::body::Body::new)
            });
        let mut stopping = stopping.clone();
        let done = closed.subscribe();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let mut served = pin!(
                builder
                    .serve_connection(TokioIo::new(connection), TowerToHyperService::new(service))
            );
            let mut retire = pin!(tokio::time::sleep_until(retire_at));
            let mut retiring = false;
            loop {
                tokio::select! {
                    result = served.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!(%error, "connection failed");
                        }
                        break;
                    }
                    () = &mut retire, if !retiring => {
                        retiring = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = stopping.changed(), if !retiring => {
                        retiring = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    drop(stop);
    closed.closed().await;
}
