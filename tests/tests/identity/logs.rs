//! Logs fit files, pipes and the journal: a server whose stderr is not a
//! terminal writes plain text without colour sequences, and with
//! `--log-format json` (or `SPIKE_LOG_FORMAT=json`) one JSON object per
//! line, configuration errors included.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use spike_dev_identity::ServeOptions;
use spike_tests::{DevIdentities, free_port, wait_for_port};

use crate::startup::{command, standalone_nexus};

/// How long a started server runs before it is stopped: long enough for a
/// nexus without its keeper to log its first complaints.
const RUN_BEFORE_STOP: Duration = Duration::from_millis(500);

/// Starts `program` with stderr piped, waits until it listens on `address`,
/// lets it run, stops it with SIGTERM and returns what it logged.
async fn log_of_a_run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    address: SocketAddr,
) -> String {
    let child = tokio::process::Command::from(command(program, args, env))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    wait_for_port(address).await;
    tokio::time::sleep(RUN_BEFORE_STOP).await;
    let pid = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
        .expect("pid of a running child");
    kill_process(pid, Signal::TERM).expect("SIGTERM");
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("stops within 10 s of SIGTERM")
        .expect("output");
    assert!(output.status.success(), "{program}: {:?}", output.status);
    String::from_utf8(output.stderr).expect("logs are UTF-8")
}

/// Every line of `log` is a JSON object with a level and a message.
fn assert_json_lines(log: &str) -> Vec<Value> {
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            assert!(event["level"].is_string(), "no level: {line}");
            assert!(event["message"].is_string(), "no message: {line}");
            event
        })
        .collect();
    assert!(!lines.is_empty(), "nothing logged");
    lines
}

fn messages(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|event| event["message"].as_str())
        .collect()
}

#[tokio::test]
async fn logs_in_a_pipe_carry_no_colour_and_json_lines_parse() {
    let dev = DevIdentities::start("spike.ist", &[], ServeOptions::default()).await;
    let keeper_endpoint = dev.endpoint("keeper");
    let nexus_endpoint = dev.endpoint("nexus");

    eprintln!("--- text logs in a pipe are plain");
    let port = free_port();
    let keeper_args = ["--bind", "127.0.0.1", "--port", &port.to_string()];
    let keeper_args: Vec<&str> = keeper_args.iter().map(|arg| &**arg).collect();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_plain_log("keeper", &keeper_args, &keeper_endpoint, address).await;

    let data_dir = tempfile::tempdir().expect("data dir");
    let api_port = free_port();
    let nexus_args = standalone_nexus(api_port, data_dir.path());
    let nexus_args: Vec<&str> = nexus_args.iter().map(String::as_str).collect();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    assert_plain_log("nexus", &nexus_args, &nexus_endpoint, api).await;

    eprintln!("--- the variable and the flag both select JSON");
    let port = free_port();
    let keeper_args = ["--bind", "127.0.0.1", "--port", &port.to_string()];
    let keeper_args: Vec<&str> = keeper_args.iter().map(|arg| &**arg).collect();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = log_of_a_run(
        "keeper",
        &keeper_args,
        &[
            ("SPIFFE_ENDPOINT_SOCKET", &keeper_endpoint),
            ("SPIKE_LOG_FORMAT", "json"),
        ],
        address,
    )
    .await;
    let events = assert_json_lines(&log);
    assert!(messages(&events).contains(&"keeper listening"), "{log}");
    assert_eq!(messages(&events).last(), Some(&"keeper stopped"), "{log}");

    let data_dir = tempfile::tempdir().expect("data dir");
    let api_port = free_port();
    let mut nexus_args = standalone_nexus(api_port, data_dir.path());
    nexus_args.extend(["--log-format".to_owned(), "json".to_owned()]);
    let nexus_args: Vec<&str> = nexus_args.iter().map(String::as_str).collect();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    let log = log_of_a_run(
        "nexus",
        &nexus_args,
        &[("SPIFFE_ENDPOINT_SOCKET", &nexus_endpoint)],
        api,
    )
    .await;
    let events = assert_json_lines(&log);
    assert!(messages(&events).contains(&"nexus listening"), "{log}");

    eprintln!("--- a configuration error is one JSON line too");
    let output = tokio::process::Command::from(command(
        "keeper",
        &["--log-format=json", "--port", &free_port().to_string()],
        &[("SPIFFE_ENDPOINT_SOCKET", "unix:///nonexistent/agent.sock")],
    ))
    .output()
    .await
    .expect("run keeper");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{log}");
    let events = assert_json_lines(&log);
    assert_eq!(events.len(), 1, "{log}");
    assert_eq!(events[0]["level"], "ERROR", "{log}");
    assert!(messages(&events)[0].contains("does not exist"), "{log}");
}

/// Runs `binary` in a pipe until it serves at `address`: its log says it
/// listens, with no colour sequence in it.
async fn assert_plain_log(binary: &str, args: &[&str], endpoint: &str, address: SocketAddr) {
    let log = log_of_a_run(
        binary,
        args,
        &[("SPIFFE_ENDPOINT_SOCKET", endpoint)],
        address,
    )
    .await;
    assert!(log.contains(&format!("{binary} listening")), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour sequences in a pipe: {log:?}"
    );
}
