//! Golden wire tests: SPIKE's request and response bodies, field by field,
//! errors included.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use sha2::Digest;
use spike_sdk::crypto::shamir::recover;
use spike_sdk::crypto::{KeyCheck, KeyShare, SecretBytes, ShareIndex};

use crate::{client, cluster, grant_billing, object, phase};

const NO_CACHE: &str = "no-store, no-cache, must-revalidate, private";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_routes_answer_in_spikes_shapes() {
    let cluster = cluster();
    let su = client(&cluster, "superuser").await;
    let node = cluster.api(3);

    phase("put, get");
    let put = su
        .post(
            node,
            "/v1/store/secrets",
            json!({"path": "a/1", "values": {"user": "u", "pass": "p"}}),
        )
        .await
        .expect("put");
    assert_eq!((put.status, &put.body), (200, &json!({})));
    let raw = su
        .raw(
            node,
            "POST",
            "/v1/store/secrets?action=get",
            "application/json",
            br#"{"path":"a/1"}"#.to_vec(),
        )
        .await
        .expect("raw get");
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("content-type"), Some("application/json"));
    assert_eq!(raw.header("cache-control"), Some(NO_CACHE));
    assert_eq!(raw.header("pragma"), Some("no-cache"));
    assert_eq!(raw.header("expires"), Some("0"));
    let got: serde_json::Value = serde_json::from_slice(&raw.bytes).expect("json");
    assert_eq!(got, json!({"data": {"user": "u", "pass": "p"}}));
    let missing = su
        .post(
            node,
            "/v1/store/secrets?action=get",
            json!({"path": "a/none"}),
        )
        .await
        .expect("get");
    assert_eq!(
        (missing.status, &missing.body),
        (404, &json!({"data": null, "err": "api_not_found"}))
    );

    phase("list, metadata");
    su.post(
        node,
        "/v1/store/secrets",
        json!({"path": "a/1", "values": {"user": "u2"}}),
    )
    .await
    .expect("put v2");
    su.post(
        node,
        "/v1/store/secrets",
        json!({"path": "a/0", "values": {"x": "y"}}),
    )
    .await
    .expect("put");
    let list = su
        .post(node, "/v1/store/secrets?action=list", json!({}))
        .await
        .expect("list");
    assert_eq!(list.body, json!({"keys": ["a/0", "a/1"]}));
    let deleted = su
        .post(
            node,
            "/v1/store/secrets?action=delete",
            json!({"path": "a/1", "versions": [1]}),
        )
        .await
        .expect("delete");
    assert_eq!((deleted.status, &deleted.body), (200, &json!({})));
    let meta = su
        .post(
            node,
            "/v1/store/secrets/metadata?action=get",
            json!({"path": "a/1"}),
        )
        .await
        .expect("metadata");
    let versions = object(&meta.body["versions"]);
    assert_eq!(versions.keys().collect::<Vec<_>>(), vec!["1", "2"]);
    assert_eq!(versions["2"]["version"], 2);
    assert!(versions["2"]["deletedTime"].is_null());
    assert!(
        versions["1"]["deletedTime"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );
    assert!(
        versions["1"]["createdTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let metadata = object(&meta.body["metadata"]);
    assert_eq!(
        metadata.keys().collect::<Vec<_>>(),
        vec![
            "createdTime",
            "currentVersion",
            "maxVersions",
            "oldestVersion",
            "updatedTime"
        ]
    );
    assert_eq!(
        (
            metadata["currentVersion"].as_u64(),
            metadata["oldestVersion"].as_u64(),
            metadata["maxVersions"].as_u64()
        ),
        (Some(2), Some(1), Some(10))
    );
    let undelete_none = su
        .post(
            node,
            "/v1/store/secrets?action=undelete",
            json!({"path": "a/0", "versions": [1]}),
        )
        .await
        .expect("undelete");
    assert_eq!(
        (undelete_none.status, &undelete_none.body),
        (404, &json!({"err": "api_not_found"}))
    );
    let meta_missing = su
        .post(
            node,
            "/v1/store/secrets/metadata?action=get",
            json!({"path": "nope"}),
        )
        .await
        .expect("metadata");
    assert_eq!(meta_missing.status, 404);
    assert_eq!(
        meta_missing.body["metadata"]["createdTime"],
        "0001-01-01T00:00:00Z"
    );
    assert_eq!(meta_missing.body["err"], "api_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_routes_answer_in_spikes_shapes() {
    let cluster = cluster();
    let su = client(&cluster, "superuser").await;
    let node = cluster.api(2);
    grant_billing(&su, &cluster).await;

    let got = su
        .post(node, "/v1/acl/policy?action=get", json!({"id": "billing"}))
        .await
        .expect("get");
    assert_eq!(got.status, 200);
    let fields = object(&got.body);
    assert_eq!(
        fields.keys().collect::<Vec<_>>(),
        vec![
            "createdAt",
            "id",
            "name",
            "pathPattern",
            "permissions",
            "spiffiedPattern",
            "updatedAt"
        ]
    );
    let id = got.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        (id.len(), id.as_bytes()[14]),
        (36, b'4'),
        "a version 4 UUID: {id}"
    );
    assert_eq!(got.body["name"], "billing");
    assert_eq!(
        got.body["spiffiedPattern"],
        "^spiffe://spike\\.ist/app/billing$"
    );
    assert_eq!(got.body["permissions"], json!(["read", "write"]));

    let list = su
        .post(node, "/v1/acl/policy?action=list", json!({}))
        .await
        .expect("list");
    // Whole policies, as SPIKE 0.8.0's clients read them.
    assert_eq!(list.body, json!({"policies": [got.body.clone()]}));
    let by_id = su
        .post(node, "/v1/acl/policy?action=get", json!({"id": id}))
        .await
        .expect("get by id");
    assert_eq!(
        (by_id.status, &by_id.body["name"]),
        (200, &json!("billing"))
    );
    let filtered = su
        .post(
            node,
            "/v1/acl/policy?action=list",
            json!({"spiffeidPattern": "^spiffe://spike\\.ist/app/other$"}),
        )
        .await
        .expect("list");
    assert_eq!(filtered.body, json!({"policies": []}));

    let missing = su
        .post(node, "/v1/acl/policy?action=get", json!({"id": "nope"}))
        .await
        .expect("get");
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({"id": "", "name": "", "spiffiedPattern": "", "pathPattern": "", "permissions": null,
               "createdAt": "0001-01-01T00:00:00Z", "updatedAt": "0001-01-01T00:00:00Z", "err": "api_not_found"})
    );
    let deleted = su
        .post(node, "/v1/acl/policy?action=delete", json!({"id": id}))
        .await
        .expect("delete by id");
    assert_eq!((deleted.status, &deleted.body), (200, &json!({})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_routes_work_in_json_and_stream_modes() {
    let cluster = cluster();
    let lite = client(&cluster, "lite-workload").await;
    let node = cluster.api(1);

    phase("JSON mode");
    let sealed = lite
        .post(
            node,
            "/v1/cipher/encrypt",
            json!({"plaintext": STANDARD.encode(b"attack at dawn"), "algorithm": "x"}),
        )
        .await
        .expect("encrypt");
    assert_eq!(sealed.status, 200, "{:?}", sealed.body);
    assert_eq!(
        object(&sealed.body).keys().collect::<Vec<_>>(),
        vec!["ciphertext", "nonce", "version"]
    );
    assert_eq!(sealed.body["version"], 1);
    assert_eq!(
        STANDARD
            .decode(sealed.body["nonce"].as_str().expect("nonce"))
            .expect("b64")
            .len(),
        12
    );
    let opened = lite
        .post(node, "/v1/cipher/decrypt", json!({"version": 1, "nonce": sealed.body["nonce"], "ciphertext": sealed.body["ciphertext"]}))
        .await
        .expect("decrypt");
    assert_eq!(
        opened.body,
        json!({"plaintext": STANDARD.encode(b"attack at dawn")})
    );
    let tampered = lite
        .post(node, "/v1/cipher/decrypt", json!({"version": 1, "nonce": STANDARD.encode([0u8; 12]), "ciphertext": sealed.body["ciphertext"]}))
        .await
        .expect("decrypt");
    assert_eq!(
        (tampered.status, &tampered.body),
        (
            500,
            &json!({"plaintext": null, "err": "api_internal_error"})
        )
    );
    let wrong_version = lite
        .post(node, "/v1/cipher/decrypt", json!({"version": 2, "nonce": sealed.body["nonce"], "ciphertext": sealed.body["ciphertext"]}))
        .await
        .expect("decrypt");
    assert_eq!(wrong_version.status, 400);

    phase("stream mode");
    let stream = lite
        .raw(
            node,
            "POST",
            "/v1/cipher/encrypt",
            "application/octet-stream",
            b"raw bytes \x00\x01".to_vec(),
        )
        .await
        .expect("encrypt stream");
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(stream.bytes[0], 1);
    assert_eq!(stream.bytes.len(), 1 + 12 + 12 + 16);
    let back = lite
        .raw(
            node,
            "POST",
            "/v1/cipher/decrypt",
            "application/octet-stream",
            stream.bytes.clone(),
        )
        .await
        .expect("decrypt stream");
    assert_eq!(
        (back.status, back.bytes.as_slice()),
        (200, &b"raw bytes \x00\x01"[..])
    );
    let mut bad = stream.bytes.clone();
    bad[0] = 2;
    let refused = lite
        .raw(
            node,
            "POST",
            "/v1/cipher/decrypt",
            "application/octet-stream",
            bad,
        )
        .await
        .expect("decrypt stream");
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(refused.bytes, b"crypto_unsupported_version\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_bootstrap_routes_answer_in_spikes_shapes() {
    let cluster = cluster();
    let recover_client = client(&cluster, "recover").await;
    let restore_client = client(&cluster, "restore").await;
    let bootstrap = client(&cluster, "bootstrap").await;
    let su = client(&cluster, "superuser").await;
    let node = cluster.api(1);

    let shards = recover_client
        .post(node, "/v1/operator/recover", json!({}))
        .await
        .expect("recover");
    assert_eq!(shards.status, 200);
    let map = object(&shards.body["shards"]);
    assert_eq!(map.keys().collect::<Vec<_>>(), vec!["1", "2", "3"]);
    assert!(
        map.values()
            .all(|shard| shard.as_array().is_some_and(|bytes| bytes.len() == 32))
    );

    let restore = restore_client
        .post(
            node,
            "/v1/operator/restore",
            json!({"id": 1, "shard": map["1"]}),
        )
        .await
        .expect("restore");
    assert_eq!(
        restore.body,
        json!({"collected": 2, "remaining": 0, "restored": true})
    );

    phase("bootstrap verify opens a text sealed with the root key");
    let status = su
        .post(node, "/v1/cluster?action=status", json!({}))
        .await
        .expect("status");
    let check_hex = status.body["rootKey"]["keyCheck"]
        .as_str()
        .expect("key check");
    let mut check = [0u8; 32];
    hex_decode(check_hex, &mut check);
    let shares: Vec<KeyShare> = map
        .iter()
        .map(|(index, bytes)| {
            let bytes: Vec<u8> = bytes
                .as_array()
                .expect("array")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect();
            KeyShare::new(
                ShareIndex::new(index.parse().expect("index")).expect("index"),
                SecretBytes::from_slice(&bytes).expect("32"),
            )
        })
        .collect();
    let root = recover(&shares, &KeyCheck::from_bytes(check)).expect("root key");
    let text = b"random bootstrap text";
    let (nonce, ciphertext) =
        spike_sdk::crypto::aead::seal_unframed(root.expose_secret(), &[], text).expect("seal");
    let verified = bootstrap
        .post(
            node,
            "/v1/bootstrap/verify",
            json!({"nonce": STANDARD.encode(nonce), "ciphertext": STANDARD.encode(ciphertext)}),
        )
        .await
        .expect("verify");
    let expected = hex_encode(&sha2::Sha256::digest(text));
    assert_eq!(verified.body, json!({"hash": expected}));
    let short = bootstrap
        .post(
            node,
            "/v1/bootstrap/verify",
            json!({"nonce": STANDARD.encode([0u8; 11]), "ciphertext": ""}),
        )
        .await
        .expect("verify");
    assert_eq!(
        (short.status, &short.body),
        (400, &json!({"hash": "", "err": "api_bad_request"}))
    );
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_decode(text: &str, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex");
    }
}
