//! Real binaries: a bad identity or configuration stops start-up with exit
//! code 64 and one clear line; a good one serves, and only to the right
//! peers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use spike_dev_identity::ServeOptions;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::keeper_api::keeper_client::KeeperClient;
use spike_sdk::keeper_api::{FetchShareRequest, StoreShareRequest};
use spike_sdk::tls::{ChannelOptions, client_config, connect, grpc_channel};
use spike_tests::{ChildGuard, DevIdentities, binary, free_port, wait_for_port};

/// Runs `program` with exactly `env` (plus PATH) and returns its output.
/// A nexus also gets a valid one-replica configuration, so what is under
/// test is the identity alone.
async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    if program == "nexus" {
        all.extend(standalone_nexus(free_port(), data_dir.path()));
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    tokio::process::Command::from(command(program, &all, env))
        .output()
        .await
        .expect("run binary")
}

/// `program` with exactly `env` (plus PATH), no stdin.
pub(crate) fn command(program: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary(program));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Flags for a one-replica nexus on loopback whose single keeper does not
/// exist: it starts, but never gets a root key.
pub(crate) fn standalone_nexus(api_port: u16, data_dir: &Path) -> Vec<String> {
    let cluster_port = free_port();
    [
        "--peers".to_owned(),
        format!("1=127.0.0.1:{cluster_port}/127.0.0.1:{api_port}"),
        "--keepers".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--shares=1".to_owned(),
        "--threshold=1".to_owned(),
        "--allow-insecure-threshold".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ]
    .to_vec()
}

/// Asserts a start-up failure: exit 64 and one line on stderr naming `needle`.
fn assert_config_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
    assert!(!stderr.contains("listening"), "a port was bound: {stderr}");
}

fn spawn(program: &str, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let child = command(program, args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    ChildGuard(Some(child))
}

#[tokio::test]
async fn processes_refuse_to_start_with_a_bad_identity() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let port = free_port().to_string();

    let missing_socket = "unix:///nonexistent/agent.sock";
    assert_config_error(
        &run(
            "keeper",
            &["--port", &port],
            &[("SPIFFE_ENDPOINT_SOCKET", missing_socket)],
        )
        .await,
        "does not exist",
    );
    assert_config_error(&run("nexus", &[], &[]).await, "no SVID source");

    let nexus_socket = dev.endpoint("nexus");
    assert_config_error(
        &run(
            "keeper",
            &["--port", &port],
            &[("SPIFFE_ENDPOINT_SOCKET", &nexus_socket)],
        )
        .await,
        "is not a SPIKE keeper identity",
    );
    let keeper_socket = dev.endpoint("keeper");
    assert_config_error(
        &run("nexus", &[], &[("SPIFFE_ENDPOINT_SOCKET", &keeper_socket)]).await,
        "is not a SPIKE nexus identity",
    );
    assert_config_error(
        &run(
            "nexus",
            &[],
            &[
                ("SPIFFE_ENDPOINT_SOCKET", &dev.endpoint("nexus")),
                ("SPIKE_TRUST_ROOT_NEXUS", "spiffe://not/a/domain"),
            ],
        )
        .await,
        "SPIKE_TRUST_ROOT_NEXUS",
    );
}

#[tokio::test]
async fn a_release_nexus_refuses_threshold_one_and_has_no_test_switches() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let flags: Vec<String> = standalone_nexus(free_port(), data_dir.path())
        .into_iter()
        .filter(|flag| flag != "--allow-insecure-threshold")
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let output = tokio::process::Command::from(command("nexus", &flags, &[]))
        .output()
        .await
        .expect("run nexus");
    assert_config_error(&output, "SPIKE_NEXUS_SHAMIR_THRESHOLD is 1");

    // target/debug/nexus as `cargo build --workspace --bins` leaves it
    // (jepsen/run rebuilds it with the fault-injection feature).
    for switch in ["--unsafe-local-reads", "--test-clock-offset"] {
        let output = tokio::process::Command::from(command("nexus", &[switch], &[]))
            .output()
            .await
            .expect("run nexus");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{switch} accepted: {stderr}");
        assert!(stderr.contains("unexpected argument"), "{stderr}");
    }
}

#[tokio::test]
async fn processes_refuse_malformed_or_missing_svid_files() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let cert = dev.directory.cert_path("nexus");
    let key = dev.directory.key_path("nexus");
    let bundle = dev.directory.bundle_path("nexus");
    let text = |path: &Path| path.to_string_lossy().into_owned();

    let garbage = dev.dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let with_files = async |cert: &str, key: &str, bundle: &str| {
        run(
            "nexus",
            &[
                "--svid-cert",
                cert,
                "--svid-key",
                key,
                "--svid-bundle",
                bundle,
            ],
            &[],
        )
        .await
    };
    assert_config_error(
        &with_files(&text(&garbage), &text(&key), &text(&bundle)).await,
        "malformed",
    );
    assert_config_error(
        &with_files("/nonexistent/cert.pem", &text(&key), &text(&bundle)).await,
        "cannot read certificate file /nonexistent/cert.pem",
    );
    // The key of another identity does not match the certificate.
    let other_key = dev.directory.key_path("keeper");
    assert_config_error(
        &with_files(&text(&cert), &text(&other_key), &text(&bundle)).await,
        "does not match",
    );
    assert_config_error(
        &run("nexus", &["--svid-cert", &text(&cert)], &[]).await,
        "SPIKE_SVID_KEY_FILE is not set",
    );
    // Secrets never reach the message: the key file's body is not echoed.
    let key_pem = std::fs::read_to_string(&key).expect("key");
    let body_line = key_pem.lines().nth(1).expect("PEM body");
    let output = with_files(&text(&key), &text(&key), &text(&bundle)).await;
    assert!(!String::from_utf8_lossy(&output.stderr).contains(body_line));
}

/// A replica never runs on bytes it might misread: a data directory
/// written in an on-disk format this build does not read (here its
/// current snapshot, in format 99) stops start-up, naming the file.
#[tokio::test]
async fn a_data_directory_of_an_unknown_format_stops_start_up() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let data_dir = tempfile::tempdir().expect("data dir");
    let snapshots = data_dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).expect("snapshot dir");
    let snapshot = snapshots.join("snapshot-00000000000000000007.snap");
    let mut bytes = b"SPKSNAPV".to_vec();
    bytes.extend_from_slice(&99u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 64]);
    std::fs::write(&snapshot, &bytes).expect("write snapshot");
    let flags = standalone_nexus(free_port(), data_dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let endpoint = dev.endpoint("nexus");
    let output = tokio::process::Command::from(command(
        "nexus",
        &flags,
        &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)],
    ))
    .output()
    .await
    .expect("run nexus");
    assert_config_error(
        &output,
        &format!(
            "{} is in on-disk format 99; this build reads formats 1, 2",
            snapshot.display()
        ),
    );
}

#[tokio::test]
async fn a_keeper_serves_shares_to_nexus_only_and_forgets_them_on_restart() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let port = free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let keeper_env = [("SPIFFE_ENDPOINT_SOCKET", dev.endpoint("keeper"))];
    let keeper_env: Vec<(&str, &str)> = keeper_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["--bind", "127.0.0.1", "--port", &port.to_string()];
    let args: Vec<&str> = args.iter().map(|arg| &**arg).collect();
    let mut keeper = spawn("keeper", &args, &keeper_env);
    wait_for_port(address).await;

    let roots = TrustRoots::from_environment(&[]).expect("defaults");
    let nexus = dev.identity("nexus").await;
    let config =
        client_config(nexus, PeerAuthorizer::role(roots.clone(), Role::Keeper)).expect("config");
    let mut client = KeeperClient::new(grpc_channel(address, config, ChannelOptions::default()));

    eprintln!("--- store and fetch a share as nexus");
    let share = vec![7u8; 32];
    let check = vec![5u8; 32];
    let store = |index: u32, share: Vec<u8>| StoreShareRequest {
        root_key_id: 1,
        key_check: check.clone(),
        index,
        share,
        committed: true,
    };
    let stored = client
        .store_share(store(2, share.clone()))
        .await
        .expect("store");
    let held: Vec<u64> = stored
        .into_inner()
        .held
        .iter()
        .map(|held| held.root_key_id)
        .collect();
    assert_eq!(held, vec![1]);
    let fetched = client
        .fetch_share(FetchShareRequest {
            root_key_id: 0,
            key_check: Vec::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(
        (fetched.root_key_id, fetched.index, fetched.share.as_slice()),
        (1, 2, share.as_slice())
    );

    eprintln!("--- bad shares are refused and change nothing");
    for (index, value) in [
        (2u32, vec![1u8; 31]),
        (2, vec![1u8; 33]),
        (0, vec![1u8; 32]),
        (256, vec![1u8; 32]),
        (2, vec![9u8; 32]),
    ] {
        let refused = client.store_share(store(index, value)).await;
        assert!(refused.is_err(), "index {index} accepted");
    }
    let still = client
        .fetch_share(FetchShareRequest {
            root_key_id: 1,
            key_check: check.clone(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(still.share, share);

    eprintln!("--- a pilot is refused at TLS");
    let pilot = dev.identity("superuser").await;
    let config =
        client_config(pilot, PeerAuthorizer::role(roots.clone(), Role::Keeper)).expect("config");
    let mut intruder = KeeperClient::new(grpc_channel(address, config, ChannelOptions::default()));
    assert!(
        intruder
            .fetch_share(FetchShareRequest {
                root_key_id: 0,
                key_check: Vec::new()
            })
            .await
            .is_err()
    );

    eprintln!("--- a restarted keeper holds nothing");
    keeper.kill();
    let _keeper = spawn("keeper", &args, &keeper_env);
    wait_for_port(address).await;
    let nexus = dev.identity("nexus").await;
    let config = client_config(nexus, PeerAuthorizer::role(roots, Role::Keeper)).expect("config");
    let mut client = KeeperClient::new(grpc_channel(address, config, ChannelOptions::default()));
    let empty = client
        .fetch_share(FetchShareRequest {
            root_key_id: 0,
            key_check: Vec::new(),
        })
        .await
        .expect_err("empty keeper");
    assert_eq!(empty.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_nexus_without_the_root_key_answers_state_not_ready() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let port = free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let endpoint = dev.endpoint("nexus");
    let data_dir = tempfile::tempdir().expect("data dir");
    let flags = standalone_nexus(port, data_dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _nexus = spawn("nexus", &flags, &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)]);
    wait_for_port(address).await;

    let roots = TrustRoots::from_environment(&[]).expect("defaults");
    let pilot = dev.identity("superuser").await;
    let mut config =
        client_config(pilot, PeerAuthorizer::role(roots, Role::Nexus)).expect("config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = std::sync::Arc::new(config);

    for (method, status, body) in [
        ("POST", 503, r#"{"err":"state_not_ready"}"#),
        ("GET", 400, r#"{"err":"api_bad_request"}"#),
    ] {
        let (stream, _) = connect(address, config.clone()).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("http handshake");
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri("/v1/store/secrets?action=get")
            .header("host", "nexus")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("no-store, no-cache, must-revalidate, private")
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(bytes.as_ref(), body.as_bytes());
    }
}

#[tokio::test]
async fn spike_whoami_names_the_identity_and_its_role() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let endpoint = dev.endpoint("recover");
    let output = run(
        "spike",
        &["whoami", "--format", "json"],
        &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json output");
    assert_eq!(
        json["spiffeId"],
        "spiffe://spike.ist/spike/pilot/role/recover"
    );
    assert_eq!(json["role"], "recover");
}
