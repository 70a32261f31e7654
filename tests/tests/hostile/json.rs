//! Malformed requests: deep nesting, invalid UTF-8, duplicate and
//! case-variant keys, huge regexes, and a 65 KB URI that must not break
//! the audit log.

use std::time::Duration;

use serde_json::json;
use spike_tests::ApiClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::watch::Watch;
use crate::{cluster, phase, tls, tls_config, turn};

/// Bad JSON of every kind answers 400 and changes nothing; keys repeat by
/// Go's rule (the last one in document order wins, whatever its case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_a_clear_400() {
    let _turn = turn().await;
    let cluster = cluster();
    let watch = Watch::start(&cluster).await;
    let su = ApiClient::new(&cluster.identity("superuser").await);
    let mallory = ApiClient::new(&cluster.identity("mallory").await);
    let node = cluster.api(1);
    let raw = |client: &ApiClient, path: &'static str, body: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .raw(node, "POST", path, "application/json", body)
                .await
                .expect("reply")
        }
    };

    phase("deep nesting");
    for depth in [200, 100_000] {
        let body = format!(
            r#"{{"path":"a","values":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        for client in [&su, &mallory] {
            let reply = raw(client, "/v1/store/secrets", body.clone().into_bytes()).await;
            assert_eq!(reply.status, 400, "depth {depth}");
        }
    }

    phase("invalid UTF-8");
    let mut body = br#"{"path":"a/b","values":{"k":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(br#""}}"#);
    let reply = raw(&su, "/v1/store/secrets", body).await;
    assert_eq!(reply.status, 400);

    phase("duplicate and case-variant keys: the last wins");
    let body = br#"{"path":"dup/first","values":{"k":"1"},"PATH":"dup/second","Values":{"k":"2"}}"#;
    let reply = raw(&su, "/v1/store/secrets", body.to_vec()).await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.bytes)
    );
    let list = su
        .post(node, "/v1/store/secrets?action=list", json!({}))
        .await
        .expect("list");
    assert_eq!(list.body["keys"], json!(["dup/second", "probe/x"]));
    let read = su
        .post(
            node,
            "/v1/store/secrets?action=get",
            json!({"path": "dup/second"}),
        )
        .await
        .expect("get");
    assert_eq!(read.body["data"], json!({"k": "2"}));

    watch.check().await;
}

/// Huge regexes in a policy answer 400 and leave no policy behind (how
/// large a pattern may be is the policy code's limit; here only that the
/// answer is clear and nothing is harmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_regexes_get_a_clear_400() {
    let _turn = turn().await;
    let cluster = cluster();
    let watch = Watch::start(&cluster).await;
    let su = ApiClient::new(&cluster.identity("superuser").await);
    let node = cluster.api(1);
    phase("huge regexes in a policy");
    let huge = "a".repeat(512 * 1024);
    for (spiffe, path) in [
        (format!("^spiffe://spike.ist/{huge}$"), "^x$".to_owned()),
        (
            "^spiffe://spike.ist/x$".to_owned(),
            "(a{1000}){1000}".to_owned(),
        ),
        (
            "^spiffe://spike.ist/(x{1000}){1000}$".to_owned(),
            "^x$".to_owned(),
        ),
    ] {
        let reply = su
            .post(
                node,
                "/v1/acl/policy",
                json!({"name": "huge", "spiffeidPattern": spiffe, "pathPattern": path, "permissions": ["read"]}),
            )
            .await
            .expect("policy put");
        assert_eq!(
            reply.status,
            400,
            "pattern of {} bytes accepted",
            spiffe.len() + path.len()
        );
    }
    let policies = su
        .post(node, "/v1/acl/policy?action=list", json!({}))
        .await
        .expect("list");
    assert_eq!(policies.body, json!({"policies": []}));
    watch.check().await;
}

/// A 65 KB URI over HTTP/1.1 and an 12 KB one over HTTP/2 are refused,
/// and every replica's audit log still verifies line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_uri_leaves_the_audit_log_readable() {
    let _turn = turn().await;
    let cluster = cluster();
    let mallory = cluster.identity("mallory").await;
    let node = cluster.api(1);

    phase("65 KB URI over HTTP/1.1");
    let config = tls_config(&mallory, &[b"http/1.1"]);
    let mut stream = tls(node, &config).await.expect("connect");
    let head = format!(
        "POST /{} HTTP/1.1\r\nhost: n\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(65_000)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a 65 KB URI was not refused: {answer:?}"
    );

    phase("12 KB and 7 KB paths over HTTP/2");
    let config = tls_config(&mallory, &["h2".as_bytes()]);
    let stream = tls(node, &config).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    for (length, status) in [(12_000, 414), (7_000, 400)] {
        let request = hyper::Request::post(format!("https://nexus/{}", "b".repeat(length)))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                b"{}",
            )))
            .expect("request");
        let reply = sender.send_request(request).await.expect("reply");
        assert_eq!(reply.status().as_u16(), status, "path of {length} bytes");
    }

    phase("every audit line reads");
    // Every answer waited for its record to be on disk.
    for id in 1..=3 {
        let log = cluster.data_dir(id).join("audit.log");
        let file = std::fs::File::open(&log).expect("audit log");
        let verified = spike_sdk::audit::verify(std::io::BufReader::new(file))
            .unwrap_or_else(|error| panic!("{}: {error}", log.display()));
        eprintln!("nexus-{id}: {} audit records verify", verified.records);
    }
}
