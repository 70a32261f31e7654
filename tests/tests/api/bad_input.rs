//! Bad input: the documented 4xx answer, no panic, no state change.

use serde_json::json;

use crate::{client, cluster, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let cluster = cluster();
    let su = client(&cluster, "superuser").await;
    let restore = client(&cluster, "restore").await;
    let node = cluster.api(1);
    su.post(
        node,
        "/v1/store/secrets",
        json!({"path": "keep/me", "values": {"k": "v"}}),
    )
    .await
    .expect("put");

    phase("wrong method, unknown action, bad JSON");
    let get = su
        .raw(
            node,
            "GET",
            "/v1/store/secrets?action=get",
            "application/json",
            Vec::new(),
        )
        .await
        .expect("GET");
    assert_eq!(
        (get.status, get.bytes.as_slice()),
        (400, &br#"{"err":"api_bad_request"}"#[..])
    );
    let unknown = su
        .post(node, "/v1/store/secrets?action=explode", json!({}))
        .await
        .expect("unknown");
    assert_eq!(
        (unknown.status, &unknown.body),
        (400, &json!({"err": "api_bad_request"}))
    );
    for body in [
        &b"{"[..],
        b"",
        b"[1]",
        b"{\"path\":\"keep/me\"} trailing",
        b"{\"path\":7}",
    ] {
        let reply = su
            .raw(
                node,
                "POST",
                "/v1/store/secrets?action=get",
                "application/json",
                body.to_vec(),
            )
            .await
            .expect("bad json");
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(body));
        let parsed: serde_json::Value =
            serde_json::from_slice(&reply.bytes).expect("json error body");
        assert_eq!(parsed, json!({"data": null, "err": "api_bad_request"}));
    }

    phase("invalid paths, names, patterns and permissions");
    let cases = [
        (
            "/v1/store/secrets",
            json!({"path": "has space", "values": {"k": "v"}}),
        ),
        (
            "/v1/store/secrets",
            json!({"path": "", "values": {"k": "v"}}),
        ),
        (
            "/v1/store/secrets",
            json!({"path": "x".repeat(501), "values": {"k": "v"}}),
        ),
        (
            "/v1/store/secrets",
            json!({"path": "ok/path", "values": {"bad.key": "v"}}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "bad/name", "spiffeidPattern": "^spiffe://a/b$", "pathPattern": "^x$", "permissions": ["read"]}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "no-scheme", "pathPattern": "^x$", "permissions": ["read"]}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "^spiffe://a/b$", "pathPattern": "has space", "permissions": ["read"]}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "^spiffe://a/b$", "pathPattern": "^x$", "permissions": []}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "^spiffe://a/b$", "pathPattern": "^x$", "permissions": ["fly"]}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "^spiffe://a/b$", "pathPattern": "a(", "permissions": ["read"]}),
        ),
        (
            "/v1/acl/policy",
            json!({"name": "p", "spiffeidPattern": "spiffe://a/b", "pathPattern": ".*", "permissions": ["super"]}),
        ),
        ("/v1/cipher/encrypt", json!({"plaintext": "not base64!"})),
        (
            "/v1/cipher/decrypt",
            json!({"version": 1, "nonce": "AAAA", "ciphertext": ""}),
        ),
    ];
    for (path, body) in cases {
        let reply = su.post(node, path, body.clone()).await.expect("reply");
        assert_eq!(reply.status, 400, "{path} {body}: {:?}", reply.body);
        assert_eq!(reply.body["err"], "api_bad_request");
    }

    phase("shards of 31 and 33 bytes, index 0");
    for (id, length) in [(1, 31), (1, 33), (0, 32), (256, 32)] {
        let reply = restore
            .post(
                node,
                "/v1/operator/restore",
                json!({"id": id, "shard": vec![7u8; length]}),
            )
            .await
            .expect("restore");
        assert_eq!(reply.status, 400, "id {id}, {length} bytes");
        assert_eq!(
            reply.body,
            json!({"collected": 0, "remaining": 0, "restored": false, "err": "api_bad_request"})
        );
    }

    phase("an oversize body is refused whole");
    let huge = format!(
        r#"{{"path":"big","values":{{"k":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let reply = su
        .raw(
            node,
            "POST",
            "/v1/store/secrets",
            "application/json",
            huge.into_bytes(),
        )
        .await;
    match reply {
        Ok(reply) => assert_eq!(reply.status, 413),
        // The server may answer 413 and close before the client has
        // written the whole body; the client then sees its write fail.
        // Either way nothing was stored (checked below).
        Err(error) => assert!(
            error.to_string().contains("error writing a body"),
            "oversize: {error}"
        ),
    }

    phase("nothing changed");
    let list = su
        .post(node, "/v1/store/secrets?action=list", json!({}))
        .await
        .expect("list");
    assert_eq!(list.body, json!({"keys": ["keep/me"]}));
    let policies = su
        .post(node, "/v1/acl/policy?action=list", json!({}))
        .await
        .expect("list");
    assert_eq!(policies.body, json!({"policies": []}));
}
