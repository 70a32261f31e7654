//! Bodies: too large, and many slow ones at once over HTTP/2.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::watch::Watch;
use crate::{cluster, phase, tls, tls_config, turn};

/// A body that sends `total` bytes in 64 KiB pieces and then never ends.
struct Endless {
    left: usize,
}

const PIECE: &[u8] = &[b' '; 64 * 1024];

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            // Never woken: the stream stays open, its body unfinished.
            return Poll::Pending;
        }
        let piece = self.left.min(PIECE.len());
        self.left -= piece;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PIECE[..piece])))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// A workload (not the superuser) announces a 60 MiB backup and sends 2
/// MiB of it: the replica answers 413 at once instead of buffering the
/// upload before it asks who is sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_refused_before_it_is_read() {
    let _turn = turn().await;
    let cluster = cluster();
    let mallory = cluster.identity("mallory").await;
    let config = tls_config(&mallory, &[b"http/1.1"]);
    let node = cluster.api(1);
    for (path, length) in [
        ("/v1/snapshot?action=restore", 60 * 1024 * 1024),
        ("/v1/store/secrets", 8 * 1024 * 1024),
    ] {
        phase(&format!("{length} bytes announced to {path}"));
        let mut stream = tls(node, &config).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: nexus\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        // Some of the body; a server that buffers before deciding waits for the rest.
        for _ in 0..32 {
            if stream.write_all(PIECE).await.is_err() {
                break;
            }
        }
        let mut answer = vec![0; 512];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("no answer within 5 s: the body is being buffered")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer:?}");
    }
}

/// Many HTTP/2 connections, each with as many streams as the client may
/// open, every stream sending an almost 1 MiB body that never ends: a
/// replica holds at most the per-peer share of them, for at most the
/// request timeout, and the well-behaved client is not slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_with_endless_bodies_is_bounded() {
    let _turn = turn().await;
    let cluster = cluster();
    let watch = Watch::start(&cluster).await;
    let mallory = cluster.identity("mallory").await;
    let config = tls_config(&mallory, &[b"h2"]);
    let node = cluster.api(1);
    phase("6 connections x 200 streams x (1 MiB - 1 KiB)");
    let mut streams = Vec::new();
    for _ in 0..6 {
        let stream = tls(node, &config).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        streams.push(tokio::spawn(connection));
        for _ in 0..200 {
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move {
                let request = hyper::Request::post("https://nexus/v1/store/secrets")
                    .header("content-type", "application/json")
                    .body(Endless {
                        left: 1024 * 1024 - 1024,
                    })
                    .expect("request");
                if sender.ready().await.is_ok() {
                    let _ = sender.send_request(request).await;
                }
                Ok::<(), hyper::Error>(())
            }));
        }
    }
    // Long enough for every body to arrive, short of the request timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    watch.check().await;
    for stream in streams {
        stream.abort();
    }
}
