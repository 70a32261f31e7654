//! A client that speaks to Nexus the way SPIKE's Go clients do, byte for
//! byte: a fresh mTLS connection per call, no ALPN (so HTTP/1.1), Go's
//! request head in Go's order, JSON bodies with a `Content-Length`, stream
//! bodies chunked. The request heads are those SPIKE's Go SDK (v0.16.4 and
//! v0.19.9) was seen to send.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::Identity;
use spike_sdk::tls::{client_config, connect};
use spike_tests::STEP_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read.
const ANSWER_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// An answer as a Go client receives it.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One caller, as a Go client.
pub struct GoClient {
    config: Arc<rustls::ClientConfig>,
}

impl GoClient {
    /// A Go client presenting `identity`, accepting only a Nexus.
    pub fn new(identity: &Identity) -> Self {
        let roots = TrustRoots::from_environment(&[]).expect("default trust roots");
        let config = client_config(identity.clone(), PeerAuthorizer::role(roots, Role::Nexus))
            .expect("client config");
        Self {
            config: Arc::new(config),
        }
    }

    /// `net.Post`: a JSON body with its length.
    pub async fn post(&self, address: SocketAddr, path_and_query: &str, body: &str) -> Answer {
        let head = format!(
            "POST {path_and_query} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
            body.len()
        );
        self.exchange(address, [head.as_bytes(), body.as_bytes()].concat())
            .await
    }

    /// `net.StreamPost`: raw bytes, chunked.
    pub async fn post_stream(&self, address: SocketAddr, path: &str, body: &[u8]) -> Answer {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: Go-http-client/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        .into_bytes();
        if !body.is_empty() {
            request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            request.extend_from_slice(body);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        self.exchange(address, request).await
    }

    async fn exchange(&self, address: SocketAddr, request: Vec<u8>) -> Answer {
        tokio::time::timeout(STEP_TIMEOUT, async {
            let (mut stream, _) = connect(address, self.config.clone())
                .await
                .expect("mTLS connection");
            stream.write_all(&request).await.expect("send request");
            read_answer(&mut stream).await
        })
        .await
        .expect("an answer in time")
    }
}

/// Reads one HTTP/1.1 answer with a `Content-Length` (the connection stays
/// open, as Go keeps it).
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin)) -> Answer {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(buffer.len() < ANSWER_SIZE_MAX_BYTES, "answer head too long");
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.expect("read answer");
        assert!(read > 0, "connection closed before the answer's head");
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .expect("a content-length");
    assert!(length <= ANSWER_SIZE_MAX_BYTES, "answer too long");
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.expect("read body");
        assert!(read > 0, "connection closed inside the body");
        buffer.extend_from_slice(&chunk[..read]);
    }
    Answer {
        status,
        headers,
        body: buffer[head_end..head_end + length].to_vec(),
    }
}
