//! Workloads: what each client does, through the SDK, and how a result
//! becomes a history completion. Timeouts and unreachable clusters are
//! `info` for anything that writes (it may have happened); a failed read
//! is `fail` (it changed nothing).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{Value, json};
use spike_sdk::client::{Error, NexusClient};

use crate::history::EventKind;
use crate::recorder::{Invocation, Recorder, Rng};

/// The workloads a run can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Read, version, write and compare-and-set on a few keys; checked for
    /// linearizability per key.
    Register,
    /// Unique adds (one new path each); the final read must hold every
    /// acknowledged add once.
    Set,
    /// Versions written, deleted, undeleted and destroyed on a few keys,
    /// and read back by number: a destroyed version never returns, a
    /// version never changes content.
    Lifecycle,
    /// One admin grants and revokes a workload's read access (a policy);
    /// the workload's readers must be denied after every acknowledged
    /// revocation and allowed after every acknowledged grant.
    Policy,
    /// Unique adds while an operator rekeys and rotates the data key: every
    /// acknowledged secret must still decrypt on every replica, and every
    /// replica must end with the same root key.
    Rootkey,
}

/// The policy workload's name for its grant.
pub const POLICY_NAME: &str = "jepsen-grant";
/// The secret the policy workload's readers read.
pub const POLICY_SECRET: &str = "jepsen/policy/secret";
/// The workload identity the policy workload grants and revokes.
pub const POLICY_SPIFFE_ID_PATTERN: &str = "^spiffe://spike\\.ist/app/jepsen$";

/// Path prefix of every key a run writes.
pub const PREFIX: &str = "jepsen";

/// The path of register key `key`.
pub fn register_path(key: u64) -> String {
    format!("{PREFIX}/register/{key}")
}

/// The path of lifecycle key `key`.
pub fn lifecycle_path(key: u64) -> String {
    format!("{PREFIX}/lifecycle/{key}")
}

/// The path of set element `element`.
pub fn set_path(element: u64) -> String {
    format!("{PREFIX}/set/{element}")
}

/// The path of root-key workload element `element`.
pub fn rootkey_path(element: u64) -> String {
    format!("{PREFIX}/rootkey/{element}")
}

fn values(value: u64) -> BTreeMap<String, String> {
    BTreeMap::from([("v".to_owned(), value.to_string())])
}

/// How a write's error reads in the history: `fail` only when it certainly
/// did not happen.
fn write_outcome(error: &Error) -> EventKind {
    match error {
        Error::Denied | Error::BadRequest | Error::TooLarge | Error::Settings(_) => EventKind::Fail,
        _ => EventKind::Info,
    }
}

fn error_text(error: &Error) -> String {
    match error {
        Error::Conflict => "conflict".to_owned(),
        Error::NotFound => "not-found".to_owned(),
        Error::NotReady(_) => "not-ready".to_owned(),
        Error::Unreachable(_) => "unreachable".to_owned(),
        other => other.to_string(),
    }
}

/// What one client does.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec {
    /// The workload.
    pub workload: Workload,
    /// Its process number in the history.
    pub process: u64,
    /// Register keys to spread over.
    pub keys: u64,
    /// The run's seed.
    pub seed: u64,
    /// When to stop.
    pub deadline: Instant,
    /// The node it is pinned to, if it does not follow the leader.
    pub pinned: Option<std::net::SocketAddr>,
}

/// One client: runs its workload until its deadline.
pub async fn client_loop(spec: ClientSpec, client: NexusClient, recorder: &Recorder) {
    let ClientSpec {
        workload,
        process,
        keys,
        seed,
        deadline,
        pinned,
    } = spec;
    let mut rng = Rng::new(seed ^ process.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut counter = 0u64;
    // Versions this client last saw, for its compare-and-sets.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    while Instant::now() < deadline {
        counter += 1;
        let unique = process * 1_000_000 + counter;
        let node = pinned
            .or_else(|| client.known_leader())
            .map(|address| address.to_string());
        match workload {
            Workload::Register => {
                let key = rng.below(keys.max(1));
                let path = register_path(key);
                let roll = rng.below(100);
                let (f, value) = match roll {
                    0..40 => ("read", Value::Null),
                    40..55 => ("version", Value::Null),
                    55..85 => ("write", json!(unique)),
                    _ => (
                        "cas",
                        json!({ "expected": seen.get(&key).copied().unwrap_or(0), "value": unique }),
                    ),
                };
                let invocation = Invocation {
                    process,
                    f,
                    key: Some(key.to_string()),
                    value,
                    node,
                };
                recorder.invoke(&invocation);
                let (kind, result, error) = match f {
                    "read" => match client.get_secret(&path, None).await {
                        Ok(found) => {
                            let value = found.get("v").and_then(|v| v.parse::<u64>().ok());
                            (EventKind::Ok, json!(value), None)
                        }
                        Err(Error::NotFound) => (EventKind::Ok, Value::Null, None),
                        Err(error) => (EventKind::Fail, Value::Null, Some(error_text(&error))),
                    },
                    "version" => match client.secret_metadata(&path).await {
                        Ok(metadata) => {
                            seen.insert(key, metadata.current_version);
                            (EventKind::Ok, json!(metadata.current_version), None)
                        }
                        Err(Error::NotFound) => {
                            seen.insert(key, 0);
                            (EventKind::Ok, json!(0), None)
                        }
                        Err(error) => (EventKind::Fail, Value::Null, Some(error_text(&error))),
                    },
                    "write" => match client.put_secret(&path, &values(unique), None).await {
                        Ok(()) => (EventKind::Ok, json!(unique), None),
                        Err(error) => (
                            write_outcome(&error),
                            json!(unique),
                            Some(error_text(&error)),
                        ),
                    },
                    _ => {
                        let expected = invocation.value["expected"].as_u64().unwrap_or(0);
                        match client
                            .put_secret(&path, &values(unique), Some(expected))
                            .await
                        {
                            Ok(()) => {
                                seen.insert(key, expected + 1);
                                (EventKind::Ok, invocation.value.clone(), None)
                            }
                            Err(Error::Conflict) => {
                                seen.remove(&key);
                                (
                                    EventKind::Fail,
                                    invocation.value.clone(),
                                    Some("conflict".to_owned()),
                                )
                            }
                            Err(error) => (
                                write_outcome(&error),
                                invocation.value.clone(),
                                Some(error_text(&error)),
                            ),
                        }
                    }
                };
                recorder.complete(&invocation, kind, result, error);
            }
            Workload::Lifecycle => {
                let key = rng.below(keys.max(1));
                let path = lifecycle_path(key);
                let known = seen.get(&key).copied().unwrap_or(0);
                let version = 1 + rng.below(known.max(1));
                let roll = rng.below(100);
                let (f, value) = match roll {
                    0..30 => ("put", json!(unique)),
                    30..40 => ("version", Value::Null),
                    40..75 => ("read-version", json!({ "version": version })),
                    75..85 => ("delete", json!({ "version": version })),
                    85..93 => ("undelete", json!({ "version": version })),
                    _ => ("destroy", json!({ "version": version })),
                };
                let invocation = Invocation {
                    process,
                    f,
                    key: Some(key.to_string()),
                    value,
                    node,
                };
                recorder.invoke(&invocation);
                let (kind, result, error) = match f {
                    "put" => match client.put_secret(&path, &values(unique), None).await {
                        Ok(()) => (EventKind::Ok, json!(unique), None),
                        Err(error) => (
                            write_outcome(&error),
                            json!(unique),
                            Some(error_text(&error)),
                        ),
                    },
                    "version" => match client.secret_metadata(&path).await {
                        Ok(metadata) => {
                            seen.insert(key, metadata.current_version.max(known));
                            (EventKind::Ok, json!(metadata.current_version), None)
                        }
                        Err(Error::NotFound) => (EventKind::Ok, json!(0), None),
                        Err(error) => (EventKind::Fail, Value::Null, Some(error_text(&error))),
                    },
                    "read-version" => match client.get_secret(&path, Some(version)).await {
                        Ok(found) => {
                            let value = found.get("v").and_then(|v| v.parse::<u64>().ok());
                            (EventKind::Ok, json!(value), None)
                        }
                        Err(Error::NotFound) => (EventKind::Ok, Value::Null, None),
                        Err(error) => (EventKind::Fail, Value::Null, Some(error_text(&error))),
                    },
                    action => {
                        let versions = [version];
                        let outcome = match action {
                            "delete" => client.delete_secret(&path, &versions).await,
                            "undelete" => client.undelete_secret(&path, &versions).await,
                            _ => client.destroy_secret(&path, &versions).await,
                        };
                        match outcome {
                            Ok(()) => (EventKind::Ok, Value::Null, None),
                            // Nothing to act on: certainly not applied.
                            Err(Error::NotFound) => {
                                (EventKind::Fail, Value::Null, Some("not-found".to_owned()))
                            }
                            Err(error) => {
                                (write_outcome(&error), Value::Null, Some(error_text(&error)))
                            }
                        }
                    }
                };
                recorder.complete(&invocation, kind, result, error);
            }
            Workload::Policy if process == 0 => {
                // The admin: grant, pause, revoke, pause, ...
                let f = if counter % 2 == 1 { "grant" } else { "revoke" };
                let invocation = Invocation {
                    process,
                    f,
                    key: None,
                    value: Value::Null,
                    node,
                };
                recorder.invoke(&invocation);
                let outcome = if f == "grant" {
                    client
                        .put_policy(
                            POLICY_NAME,
                            POLICY_SPIFFE_ID_PATTERN,
                            "^jepsen/policy/.*$",
                            &["read"],
                        )
                        .await
                } else {
                    client.delete_policy(POLICY_NAME).await
                };
                let (kind, error) = match outcome {
                    Ok(()) => (EventKind::Ok, None),
                    Err(Error::NotFound) => (EventKind::Fail, Some("not-found".to_owned())),
                    Err(error) => (write_outcome(&error), Some(error_text(&error))),
                };
                recorder.complete(&invocation, kind, Value::Null, error);
                tokio::time::sleep(std::time::Duration::from_millis(50 + rng.below(200))).await;
            }
            Workload::Policy => {
                let invocation = Invocation {
                    process,
                    f: "read-acl",
                    key: None,
                    value: Value::Null,
                    node,
                };
                recorder.invoke(&invocation);
                let (kind, result, error) = match client.get_secret(POLICY_SECRET, None).await {
                    Ok(_) => (EventKind::Ok, json!("allowed"), None),
                    Err(Error::Denied) => (EventKind::Ok, json!("denied"), None),
                    Err(error) => (EventKind::Fail, Value::Null, Some(error_text(&error))),
                };
                recorder.complete(&invocation, kind, result, error);
            }
            Workload::Rootkey if process == 0 => {
                // The operator: rekey, rotate, rekey, ...
                let f = if counter % 2 == 1 { "rekey" } else { "rotate" };
                let invocation = Invocation {
                    process,
                    f,
                    key: None,
                    value: Value::Null,
                    node,
                };
                recorder.invoke(&invocation);
                let outcome = if f == "rekey" {
                    // The harness's cluster: 5 keepers, threshold 3.
                    client.rekey(5, 3).await
                } else {
                    client.rotate_data_key().await
                };
                let (kind, result, error) = match outcome {
                    Ok(id) => (EventKind::Ok, json!(id), None),
                    Err(error) => (write_outcome(&error), Value::Null, Some(error_text(&error))),
                };
                recorder.complete(&invocation, kind, result, error);
                tokio::time::sleep(std::time::Duration::from_millis(300 + rng.below(500))).await;
            }
            Workload::Set | Workload::Rootkey => {
                let path = if workload == Workload::Set {
                    set_path(unique)
                } else {
                    rootkey_path(unique)
                };
                let invocation = Invocation {
                    process,
                    f: "add",
                    key: None,
                    value: json!(unique),
                    node,
                };
                recorder.invoke(&invocation);
                let (kind, error) = match client.put_secret(&path, &values(unique), None).await {
                    Ok(()) => (EventKind::Ok, None),
                    Err(error) => (write_outcome(&error), Some(error_text(&error))),
                };
                recorder.complete(&invocation, kind, json!(unique), error);
            }
        }
    }
}

/// The set as it stands: element -> versions of its path, for the paths
/// under `{PREFIX}/{kind}/` (`set` or `rootkey`).
pub async fn read_set(client: &NexusClient, kind: &str) -> Result<BTreeMap<u64, u64>, Error> {
    let prefix = format!("{PREFIX}/{kind}/");
    let mut found = BTreeMap::new();
    for path in client.list_secrets().await? {
        let Some(element) = path
            .strip_prefix(&prefix)
            .and_then(|rest| rest.parse::<u64>().ok())
        else {
            continue;
        };
        let metadata = client.secret_metadata(&path).await?;
        found.insert(element, metadata.current_version);
    }
    Ok(found)
}
