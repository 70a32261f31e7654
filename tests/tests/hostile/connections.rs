//! Connections: ten thousand that never speak, idle ones that finished
//! their handshake, and slowloris heads.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::watch::Watch;
use crate::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, cluster, phase, tls, tls_config, turn};

/// The hostile client's source address: its own, so a limit per address
/// can tell it from the well-behaved client on 127.0.0.1.
const MALLORY_ADDRESS: [u8; 4] = [127, 0, 0, 2];

async fn raw_connection(server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((MALLORY_ADDRESS, 0))).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(server))
        .await
        .ok()?
        .ok()
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_within<S: AsyncReadExt + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buffer = [0; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// 10,000 TCP connections from one address that never start TLS, 300
/// idle HTTP/2 connections of one workload, and 50 slowloris heads: the
/// well-behaved client is served throughout, a workload holds no more
/// connections than its share, idle ones close after the idle timeout and
/// slow heads after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_heads_are_bounded() {
    let _turn = turn().await;
    let limit = spike_sdk::tls::raise_descriptor_limit().unwrap_or(0);
    assert!(
        limit >= 12_000,
        "this test needs 12,000 open files, the limit is {limit}"
    );
    let cluster = cluster();
    let node = cluster.api(1);
    let mallory = cluster.identity("mallory").await;
    let watch = Watch::start(&cluster).await;

    phase("10,000 silent TCP connections from 127.0.0.2");
    let mut silent = Vec::new();
    for batch in 0..20 {
        let connecting: Vec<_> = (0..500)
            .map(|_| tokio::spawn(raw_connection(node)))
            .collect();
        for connecting in connecting {
            if let Ok(Some(stream)) = connecting.await {
                silent.push(stream);
            }
        }
        if batch == 0 {
            assert!(!silent.is_empty(), "no connection from 127.0.0.2 at all");
        }
    }
    eprintln!("{} silent connections open", silent.len());

    phase("300 idle HTTP/2 connections of one workload");
    let config = tls_config(&mallory, &[b"h2"]);
    let mut idle = Vec::new();
    for _ in 0..300 {
        let Ok(stream) = tls(node, &config).await else {
            continue;
        };
        if let Ok((sender, connection)) = hyper::client::conn::http2::handshake::<
            _,
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(TokioExecutor::new(), TokioIo::new(stream))
        .await
        {
            idle.push((sender, tokio::spawn(connection)));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = idle.iter().filter(|(_, task)| !task.is_finished()).count();
    eprintln!("{open} of {} idle connections still open", idle.len());
    assert!(
        open <= spike_sdk::tls::CONNECTIONS_PER_PEER_MAX_DEFAULT,
        "{open} connections of one workload are open"
    );

    phase("50 slowloris heads");
    let config = tls_config(&mallory, &[b"http/1.1"]);
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = tls(node, &config).await.expect("connect");
        stream
            .write_all(b"POST /v1/store/secrets?action=get HTTP/1.1\r\nhost: n\r\n")
            .await
            .expect("first line");
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        let mut closed = 0;
        // One header byte per stream every 250 ms, far longer than the timeout.
        for _ in 0..40 {
            for stream in &mut slow {
                let _ = stream.write_all(b"x").await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for stream in &mut slow {
            if closed_within(stream, Duration::from_millis(100)).await {
                closed += 1;
            }
        }
        closed
    });
    let closed = trickle.await.expect("trickle");
    assert_eq!(
        closed, 50,
        "slow heads still open {} s after a {HEADER_READ_TIMEOUT:?} header timeout",
        10
    );

    phase("idle connections close after the idle timeout");
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(2)).await;
    let open = idle.iter().filter(|(_, task)| !task.is_finished()).count();
    assert_eq!(
        open, 0,
        "{open} idle connections outlived the {IDLE_TIMEOUT:?} idle timeout"
    );
    watch.check().await;
    drop(silent);
}
