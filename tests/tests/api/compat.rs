//! Every SPIKE client that exists, on every route it calls: the exact bytes
//! SPIKE's Go clients send (taken from their source: SPIKE 0.8.0 with Go
//! SDK v0.16.4, the release Debian packages; SPIKE's development line with
//! Go SDK v0.19.9), sent the way they send them ([`GoClient`]), and the
//! fields each reads from the answer, checked as Go would read them. Each
//! cell of the README's compatibility table is a phase here, named
//! `<version> / <route>`.
//!
//! The two lines send identical bytes on every route but the policy
//! lookups: 0.8.0 names a policy by the id it finds in the whole-policy
//! list (or is given), the development line by its name, in the same `id`
//! field.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sha2::Digest;
use spike_sdk::crypto::shamir::recover;
use spike_sdk::crypto::{KeyCheck, KeyShare, SecretBytes, ShareIndex};
use spike_tests::LocalCluster;

use crate::go_client::{Answer, GoClient};
use crate::{cluster, phase};

/// The release line.
const RELEASE: &str = "0.8.0";
/// The development line.
const DEVELOPMENT: &str = "development";

/// Go's `time.Time` accepts only strict RFC 3339.
fn is_go_time(value: &Value) -> bool {
    value.as_str().is_some_and(|text| {
        let bytes = text.as_bytes();
        bytes.len() >= 20
            && bytes[10] == b'T'
            && (text.ends_with('Z') || bytes[bytes.len() - 3] == b':')
            && time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_ok()
    })
}

fn is_uuid(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| text.parse::<spike_sdk::domain::PolicyId>().is_ok())
}

/// A Go client reads a 200 answer: it must be JSON with no `err`.
fn ok(cell: &str, answer: &Answer) -> Value {
    assert_eq!(answer.status, 200, "{cell}: {answer:?}");
    let body = answer.json();
    assert!(
        body.is_object() && body.get("err").is_none_or(|err| err == ""),
        "{cell}: a Go client reads {body} as a failure"
    );
    body
}

/// One client line's JSON requests to one node, each checked as a Go
/// client reads a 200 answer.
struct Cells<'a> {
    line: &'a str,
    pilot: &'a GoClient,
    node: std::net::SocketAddr,
}

impl Cells<'_> {
    /// Sends `body` to `path_and_query` for the cell `route`.
    async fn ok(&self, route: &str, path_and_query: &str, body: &str) -> Value {
        let answer = self.pilot.post(self.node, path_and_query, body).await;
        ok(&format!("{} / {route}", self.line), &answer)
    }
}

const SECRETS: &str = "/v1/store/secrets";
const GET: &str = "/v1/store/secrets?action=get";
const DELETE: &str = "/v1/store/secrets?action=delete";
const UNDELETE: &str = "/v1/store/secrets?action=undelete";
const METADATA: &str = "/v1/store/secrets/metadata?action=get";

/// The cells both lines share: every secret route.
async fn secret_cells(line: &str, cluster: &LocalCluster, pilot: &GoClient) {
    let node = cluster.api(2);
    let cells = Cells { line, pilot, node };
    let db = r#"{"path":"apps/db"}"#;

    phase(&format!("{line} / secret put"));
    let put = pilot
        .post(
            node,
            SECRETS,
            r#"{"path":"apps/db","values":{"pass":"s3cr\u003cet\u003e\u0026","user":"admin"}}"#,
        )
        .await;
    ok(&format!("{line} / secret put"), &put);
    assert_eq!(put.header("content-type"), Some("application/json"));
    assert_eq!(
        put.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, private")
    );
    let second = r#"{"path":"apps/db","values":{"user":"root"}}"#;
    cells.ok("secret put", SECRETS, second).await;

    phase(&format!("{line} / secret get"));
    let got = cells.ok("secret get", GET, db).await;
    assert_eq!(got["data"], serde_json::json!({"user": "root"}));
    let first = r#"{"path":"apps/db","version":1}"#;
    let first = cells.ok("secret get", GET, first).await;
    assert_eq!(first["data"]["pass"], "s3cr<et>&");
    let missing = pilot
        .post(node, GET, r#"{"path":"apps/db","version":9}"#)
        .await;
    assert_eq!(missing.status, 404, "{line} / secret get: {missing:?}");

    phase(&format!("{line} / secret list"));
    let listed = cells
        .ok("secret list", "/v1/store/secrets?action=list", "{}")
        .await;
    assert_eq!(listed["keys"], serde_json::json!(["apps/db"]));

    phase(&format!("{line} / secret metadata get"));
    let metadata = cells.ok("secret metadata get", METADATA, db).await;
    let meta = &metadata["metadata"];
    for field in ["currentVersion", "oldestVersion", "maxVersions"] {
        assert!(
            meta[field].is_u64(),
            "{line} / secret metadata get: {field}"
        );
    }
    assert_eq!(meta["currentVersion"], 2);
    for field in ["createdTime", "updatedTime"] {
        assert!(
            is_go_time(&meta[field]),
            "{line} / secret metadata get: {field}"
        );
    }
    let versions = metadata["versions"].as_object().expect("versions");
    assert_eq!(versions.keys().collect::<Vec<_>>(), vec!["1", "2"]);
    for version in versions.values() {
        assert!(is_go_time(&version["createdTime"]));
        assert!(version["deletedTime"].is_null());
    }

    phase(&format!("{line} / secret delete"));
    // The CLI's default is the current version, 0.
    let current = r#"{"path":"apps/db","versions":[0]}"#;
    cells.ok("secret delete", DELETE, current).await;
    let back_to_first = cells.ok("secret delete", GET, db).await;
    assert_eq!(back_to_first["data"]["user"], "admin");
    let deleted = cells.ok("secret delete", METADATA, db).await;
    assert!(is_go_time(&deleted["versions"]["2"]["deletedTime"]));

    phase(&format!("{line} / secret undelete"));
    // The CLI's defaults, `spike secret delete PATH` then `undelete PATH`,
    // both send [0]: the one version comes back.
    let solo = r#"{"path":"apps/solo","versions":[0]}"#;
    let solo_value = r#"{"path":"apps/solo","values":{"k":"v"}}"#;
    cells.ok("secret undelete", SECRETS, solo_value).await;
    cells.ok("secret undelete", DELETE, solo).await;
    cells.ok("secret undelete", UNDELETE, solo).await;
    cells
        .ok("secret undelete", GET, r#"{"path":"apps/solo"}"#)
        .await;
    let second = r#"{"path":"apps/db","versions":[2]}"#;
    cells.ok("secret undelete", UNDELETE, second).await;
    let undeleted = cells.ok("secret undelete", GET, db).await;
    assert_eq!(undeleted["data"]["user"], "root");
    // An empty list is the current version; with none current, undelete
    // takes the highest deleted one. The SDK sends an empty list as [].
    let empty = r#"{"path":"apps/db","versions":[]}"#;
    cells.ok("secret delete", DELETE, empty).await;
    cells.ok("secret delete", DELETE, empty).await;
    cells.ok("secret undelete", UNDELETE, empty).await;
    let highest = cells.ok("secret undelete", GET, db).await;
    assert_eq!(highest["data"]["user"], "root");
}

/// The policy every test puts, as both CLIs send it.
const POLICY_PUT: &str = r#"{"name":"db-access","spiffeidPattern":"^spiffe://spike\\.ist/app/billing$","pathPattern":"^apps/db/.*$","permissions":["read","write"]}"#;

/// `spike policy create|apply`: the same put in both lines (create lists
/// first and refuses a name that exists; apply upserts).
async fn policy_put_cell(line: &str, cluster: &LocalCluster, pilot: &GoClient) -> Value {
    let cell = format!("{line} / policy put");
    phase(&cell);
    let node = cluster.api(1);
    let empty = ok(
        &cell,
        &pilot
            .post(
                node,
                "/v1/acl/policy?action=list",
                r#"{"spiffeidPattern":"","pathPattern":""}"#,
            )
            .await,
    );
    assert!(
        empty["policies"]
            .as_array()
            .is_none_or(|policies| policies.is_empty()),
        "{cell}: {empty}"
    );
    let created = ok(&cell, &pilot.post(node, "/v1/acl/policy", POLICY_PUT).await);
    assert!(is_uuid(&created["id"]), "{cell}: {created}");
    let applied = ok(&cell, &pilot.post(node, "/v1/acl/policy", POLICY_PUT).await);
    assert_eq!(
        applied["id"], created["id"],
        "{cell}: an upsert keeps the id"
    );
    created
}

/// The whole-policy list as 0.8.0 reads it: every field of `data.Policy`.
fn assert_whole_policy(cell: &str, policy: &Value) {
    assert!(is_uuid(&policy["id"]), "{cell}: id in {policy}");
    assert_eq!(policy["name"], "db-access", "{cell}");
    assert_eq!(
        policy["spiffiedPattern"], "^spiffe://spike\\.ist/app/billing$",
        "{cell}: the misspelt key is the one SPIKE's clients read"
    );
    assert_eq!(policy["pathPattern"], "^apps/db/.*$", "{cell}");
    assert_eq!(policy["permissions"], serde_json::json!(["read", "write"]));
    assert!(is_go_time(&policy["createdAt"]), "{cell}");
    assert!(is_go_time(&policy["updatedAt"]), "{cell}");
}

/// The cipher routes, in both modes; identical in both lines.
async fn cipher_cells(line: &str, cluster: &LocalCluster, pilot: &GoClient) {
    let node = cluster.api(3);
    let cell = |route: &str| format!("{line} / {route}");

    phase(&cell("cipher encrypt (JSON)"));
    let sealed = ok(
        &cell("cipher encrypt (JSON)"),
        &pilot
            .post(node, "/v1/cipher/encrypt", r#"{"plaintext":"aGVsbG8="}"#)
            .await,
    );
    assert_eq!(sealed["version"], 1);
    let nonce = sealed["nonce"].as_str().expect("nonce");
    let ciphertext = sealed["ciphertext"].as_str().expect("ciphertext");
    assert_eq!(STANDARD.decode(nonce).map(|n| n.len()).ok(), Some(12));
    assert!(STANDARD.decode(ciphertext).is_ok());
    let with_algorithm = pilot
        .post(
            node,
            "/v1/cipher/encrypt",
            r#"{"plaintext":"aGVsbG8=","algorithm":"AES-GCM"}"#,
        )
        .await;
    ok(&cell("cipher encrypt (JSON)"), &with_algorithm);

    phase(&cell("cipher decrypt (JSON)"));
    let opened = ok(
        &cell("cipher decrypt (JSON)"),
        &pilot
            .post(
                node,
                "/v1/cipher/decrypt",
                &format!(r#"{{"version":1,"nonce":"{nonce}","ciphertext":"{ciphertext}"}}"#),
            )
            .await,
    );
    assert_eq!(opened["plaintext"], "aGVsbG8=");

    phase(&cell("cipher encrypt (stream)"));
    let frame = pilot
        .post_stream(node, "/v1/cipher/encrypt", b"hello stream")
        .await;
    assert_eq!(
        frame.status,
        200,
        "{}: {frame:?}",
        cell("cipher encrypt (stream)")
    );
    assert_eq!(frame.body[0], 1, "the frame starts with its version");
    assert_eq!(frame.body.len(), 1 + 12 + 12 + 16);

    phase(&cell("cipher decrypt (stream)"));
    let plain = pilot
        .post_stream(node, "/v1/cipher/decrypt", &frame.body)
        .await;
    assert_eq!(
        (plain.status, plain.body.as_slice()),
        (200, b"hello stream".as_slice()),
        "{}",
        cell("cipher decrypt (stream)")
    );
    let empty = pilot.post_stream(node, "/v1/cipher/encrypt", b"").await;
    assert_eq!(empty.status, 200, "empty stdin is sent as one empty chunk");
}

/// SPIKE Bootstrap: seals a random 64-hex text under the root key (no
/// associated data) and wants its SHA-256 back. Identical in both lines
/// (the development line's key is the same 32 bytes but for a 2^-32
/// chance).
async fn bootstrap_cell(line: &str, cluster: &LocalCluster, shares: &[KeyShare]) {
    let cell = format!("{line} / bootstrap verify");
    phase(&cell);
    let su = GoClient::new(&cluster.identity("superuser").await);
    let status = ok(
        &cell,
        &su.post(cluster.api(1), "/v1/cluster?action=status", "{}")
            .await,
    );
    let check = hex::decode(status["rootKey"]["keyCheck"].as_str().expect("key check"))
        .expect("hex key check");
    let check: [u8; 32] = check.try_into().expect("32 bytes");
    let root = recover(shares, &KeyCheck::from_bytes(check)).expect("root key");
    let text: String = (0..64)
        .map(|i| char::from(b"0123456789abcdef"[i % 16]))
        .collect();
    let (nonce, ciphertext) =
        spike_sdk::crypto::aead::seal_unframed(root.expose_secret(), &[], text.as_bytes())
            .expect("seal");
    assert_eq!(ciphertext.len(), 80, "64 bytes of text and a 16-byte tag");
    let bootstrap = GoClient::new(&cluster.identity("bootstrap").await);
    let verified = bootstrap
        .post(
            cluster.api(2),
            "/v1/bootstrap/verify",
            &format!(
                r#"{{"nonce":"{}","ciphertext":"{}"}}"#,
                STANDARD.encode(nonce),
                STANDARD.encode(ciphertext)
            ),
        )
        .await;
    let answer = ok(&cell, &verified);
    assert_eq!(
        answer["hash"],
        hex::encode(sha2::Sha256::digest(text.as_bytes())),
        "{cell}"
    );
}

/// `spike operator recover` and `restore` as the development line sends
/// them; returns the shares.
async fn operator_cells(line: &str, cluster: &LocalCluster) -> Vec<KeyShare> {
    let cell = format!("{line} / operator recover");
    phase(&cell);
    let recoverer = GoClient::new(&cluster.identity("recover").await);
    let recovered = ok(
        &cell,
        &recoverer
            .post(cluster.api(3), "/v1/operator/recover", "{}")
            .await,
    );
    let shards = recovered["shards"].as_object().expect("shards");
    assert_eq!(shards.keys().collect::<Vec<_>>(), vec!["1", "2", "3"]);
    let shares: Vec<KeyShare> = shards
        .iter()
        .map(|(index, shard)| {
            let bytes: Vec<u8> = shard
                .as_array()
                .expect("a [32]byte is an array of numbers")
                .iter()
                .map(|byte| {
                    byte.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .expect("byte")
                })
                .collect();
            KeyShare::new(
                ShareIndex::new(index.parse().expect("index")).expect("index"),
                SecretBytes::from_slice(&bytes).expect("32 bytes"),
            )
        })
        .collect();

    let cell = format!("{line} / operator restore");
    phase(&cell);
    let restorer = GoClient::new(&cluster.identity("restore").await);
    let shard = &shards["2"];
    let restored = ok(
        &cell,
        &restorer
            .post(
                cluster.api(1),
                "/v1/operator/restore",
                &format!(r#"{{"id":2,"shard":{shard}}}"#),
            )
            .await,
    );
    assert!(restored["collected"].is_u64() && restored["remaining"].is_u64());
    assert_eq!(
        restored["restored"], true,
        "{cell}: the key is held already"
    );
    shares
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_0_8_0_clients_are_served_on_every_route() {
    let cluster = cluster();
    let pilot = GoClient::new(&cluster.identity("superuser").await);
    secret_cells(RELEASE, &cluster, &pilot).await;
    let created = policy_put_cell(RELEASE, &cluster, &pilot).await;

    let cell = format!("{RELEASE} / policy list");
    phase(&cell);
    let listed = ok(
        &cell,
        &pilot
            .post(
                cluster.api(3),
                "/v1/acl/policy?action=list",
                r#"{"spiffeidPattern":"","pathPattern":""}"#,
            )
            .await,
    );
    let policies = listed["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{cell}");
    assert_whole_policy(&cell, &policies[0]);
    let filtered = ok(
        &cell,
        &pilot
            .post(
                cluster.api(3),
                "/v1/acl/policy?action=list",
                r#"{"spiffeidPattern":"^spiffe://spike\\.ist/app/billing$","pathPattern":""}"#,
            )
            .await,
    );
    assert_eq!(filtered["policies"].as_array().map(Vec::len), Some(1));

    let cell = format!("{RELEASE} / policy get");
    phase(&cell);
    // `spike policy get --name db-access`: the id of the first list item
    // with that name.
    let id = policies
        .iter()
        .find(|policy| policy["name"] == "db-access")
        .and_then(|policy| policy["id"].as_str())
        .expect("the list names the policy");
    assert_eq!(created["id"], id);
    let got = ok(
        &cell,
        &pilot
            .post(
                cluster.api(2),
                "/v1/acl/policy?action=get",
                &format!(r#"{{"id":"{id}"}}"#),
            )
            .await,
    );
    assert_whole_policy(&cell, &got);
    // `spike policy get <id>` sends the id as typed; it checks it only
    // after lowercasing.
    let upper = ok(
        &cell,
        &pilot
            .post(
                cluster.api(2),
                "/v1/acl/policy?action=get",
                &format!(r#"{{"id":"{}"}}"#, id.to_uppercase()),
            )
            .await,
    );
    assert_eq!(upper["id"], id);

    let cell = format!("{RELEASE} / policy delete");
    phase(&cell);
    ok(
        &cell,
        &pilot
            .post(
                cluster.api(3),
                "/v1/acl/policy?action=delete",
                &format!(r#"{{"id":"{id}"}}"#),
            )
            .await,
    );
    let gone = pilot
        .post(
            cluster.api(1),
            "/v1/acl/policy?action=get",
            &format!(r#"{{"id":"{id}"}}"#),
        )
        .await;
    assert_eq!(gone.status, 404, "{cell}");

    cipher_cells(RELEASE, &cluster, &pilot).await;
    // 0.8.0's CLI never sends recover or restore (its CLI wants the
    // recover or restore role, its SDK the superuser's); the bytes it would
    // send are the development line's, tested there. Its Bootstrap does
    // call verify.
    let shares = operator_cells(DEVELOPMENT, &cluster).await;
    bootstrap_cell(RELEASE, &cluster, &shares).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_development_line_clients_are_served_on_every_route() {
    let cluster = cluster();
    let pilot = GoClient::new(&cluster.identity("superuser").await);
    secret_cells(DEVELOPMENT, &cluster, &pilot).await;
    policy_put_cell(DEVELOPMENT, &cluster, &pilot).await;

    let list = |node| {
        pilot.post(
            node,
            "/v1/acl/policy?action=list",
            r#"{"spiffeidPattern":"","pathPattern":""}"#,
        )
    };
    let cell = format!("{DEVELOPMENT} / policy list");
    phase(&cell);
    let listed = ok(&cell, &list(cluster.api(2)).await);
    let names: Vec<&Value> = listed["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|policy| {
            assert!(policy["id"].is_string(), "{cell}: id");
            &policy["name"]
        })
        .collect();
    assert_eq!(names, vec!["db-access"]);

    let cell = format!("{DEVELOPMENT} / policy get");
    phase(&cell);
    // The development line lists to check the name, then sends the name
    // in `id`.
    ok(&cell, &list(cluster.api(1)).await);
    let got = ok(
        &cell,
        &pilot
            .post(
                cluster.api(1),
                "/v1/acl/policy?action=get",
                r#"{"id":"db-access"}"#,
            )
            .await,
    );
    assert_eq!(got["name"], "db-access");
    assert_eq!(got["spiffiedPattern"], "^spiffe://spike\\.ist/app/billing$");
    assert_eq!(got["permissions"], serde_json::json!(["read", "write"]));
    assert!(is_go_time(&got["createdAt"]) && is_go_time(&got["updatedAt"]));

    let cell = format!("{DEVELOPMENT} / policy delete");
    phase(&cell);
    ok(&cell, &list(cluster.api(3)).await);
    ok(
        &cell,
        &pilot
            .post(
                cluster.api(3),
                "/v1/acl/policy?action=delete",
                r#"{"id":"db-access"}"#,
            )
            .await,
    );
    let gone = pilot
        .post(
            cluster.api(2),
            "/v1/acl/policy?action=get",
            r#"{"id":"db-access"}"#,
        )
        .await;
    assert_eq!(gone.status, 404, "{cell}");

    cipher_cells(DEVELOPMENT, &cluster, &pilot).await;
    let shares = operator_cells(DEVELOPMENT, &cluster).await;
    bootstrap_cell(DEVELOPMENT, &cluster, &shares).await;
}
