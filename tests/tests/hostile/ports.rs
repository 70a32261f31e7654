//! Garbage on the Nexus-only ports (cluster and keeper) from a workload
//! and from no identity at all: refused, and the cluster does not notice.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::watch::Watch;
use crate::{cluster, phase, tls_config, turn};

/// Sends `garbage` in the clear and expects the server to hang up within
/// the TLS handshake timeout.
async fn garbage_in_the_clear(address: SocketAddr, garbage: &[u8]) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.write_all(garbage).await;
    let mut buffer = [0; 256];
    let ended = tokio::time::timeout(
        spike_sdk::tls::HANDSHAKE_TIMEOUT + Duration::from_secs(2),
        async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        },
    )
    .await;
    assert!(ended.is_ok(), "{address} kept a garbage connection open");
}

/// A workload cannot complete a handshake on the cluster or keeper ports,
/// and garbage sent in the clear is dropped; meanwhile the well-behaved
/// client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_cluster_and_keeper_ports_is_refused() {
    let _turn = turn().await;
    let cluster = cluster();
    let watch = Watch::start(&cluster).await;
    let mallory = cluster.identity("mallory").await;
    let replica = cluster.replica(1).clone();
    let keepers: Vec<SocketAddr> = cluster
        .file
        .keepers()
        .map(|(_, keeper)| keeper.api_addr)
        .collect();
    let mut ports = vec![replica.cluster_addr];
    ports.extend(keepers);
    let config = tls_config(&mallory, &[b"h2"]);
    for port in ports {
        phase(&format!("{port}: a workload's handshake, then garbage"));
        let outcome = spike_sdk::tls::connect(port, config.clone()).await;
        if let Ok((mut stream, _)) = outcome {
            // TLS 1.3: the server may refuse the client certificate after
            // the client thinks it is done; the first exchange shows it.
            let _ = stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ngarbage")
                .await;
            let mut buffer = [0; 64];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("the refusal arrives");
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "{port} talked to a workload: {read:?}"
            );
        }
        let mut noise = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        noise.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        garbage_in_the_clear(port, &noise).await;
        garbage_in_the_clear(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    }
    watch.check().await;
    for id in 1..=3 {
        assert!(cluster.ready(id), "nexus-{id} is no longer ready");
    }
}
