//! Workloads: what each client does, through the SDK, and how a result
//! becomes a history completion. Timeouts and unreachable clusters are
//! `info` for anything that writes (it may have happened); a failed read
//! is `fail` (it changed nothing).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use spike_sdk::client::{Error, NexusClient, RetryPolicy, Settings};

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

/// Client settings for a fault-injection run: short budgets, so a fault
/// shows as an unknown (`info`) outcome within seconds. With
/// `follow_leader` false the client stays on its endpoints (pinned).
pub fn client_settings(endpoints: Vec<std::net::SocketAddr>, follow_leader: bool) -> Settings {
    let mut settings = Settings::new(endpoints);
    settings.request_timeout = std::time::Duration::from_millis(1500);
    settings.retry = RetryPolicy {
        attempts_max: 6,
        deadline: std::time::Duration::from_secs(3),
        backoff_initial: std::time::Duration::from_millis(50),
        backoff_max: std::time::Duration::from_millis(400),
    };
    settings.follow_leader = follow_leader;
    settings
}

/// How an operation ended, as its completion event records it.
struct Outcome {
    kind: EventKind,
    value: Value,
    error: Option<String>,
}

impl Outcome {
    fn ok(value: Value) -> Self {
        Self {
            kind: EventKind::Ok,
            value,
            error: None,
        }
    }

    /// A failed read: it changed nothing, so it certainly did not happen.
    fn read_failed(error: &Error) -> Self {
        Self {
            kind: EventKind::Fail,
            value: Value::Null,
            error: Some(error_text(error)),
        }
    }

    /// A failed write: `fail` only when it certainly did not happen, else
    /// `info` (timeouts, unreachable nodes, a leader that lost its quorum).
    fn write_failed(error: &Error, value: Value) -> Self {
        let kind = match error {
            Error::Denied | Error::BadRequest | Error::TooLarge | Error::Settings(_) => {
                EventKind::Fail
            }
            // A conflict or nothing to act on: certainly not applied.
            Error::Conflict | Error::NotFound => EventKind::Fail,
            _ => EventKind::Info,
        };
        Self {
            kind,
            value,
            error: Some(error_text(error)),
        }
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

/// Records `invocation`, runs `operation`, records how it ended.
async fn record(
    recorder: &Recorder,
    invocation: Invocation,
    operation: impl std::future::Future<Output = Outcome>,
) {
    recorder.invoke(&invocation);
    let outcome = operation.await;
    recorder.complete(&invocation, outcome.kind, outcome.value, outcome.error);
}

/// Reads the value of `path` (at `version`): null when there is none.
async fn read_value(client: &NexusClient, path: &str, version: Option<u64>) -> Outcome {
    match client.get_secret(path, version).await {
        Ok(found) => Outcome::ok(json!(found.get("v").and_then(|v| v.parse::<u64>().ok()))),
        Err(Error::NotFound) => Outcome::ok(Value::Null),
        Err(error) => Outcome::read_failed(&error),
    }
}

/// Writes `value` to `path` (only over version `cas`, if given).
async fn write_value(client: &NexusClient, path: &str, value: u64, cas: Option<u64>) -> Outcome {
    match client.put_secret(path, &values(value), cas).await {
        Ok(()) => Outcome::ok(json!(value)),
        Err(error) => Outcome::write_failed(&error, json!(value)),
    }
}

/// Register keys in use change every `lifetime`: key `k` of epoch `e` is
/// `e * keys + k`. Each key's history then holds only the operations (and
/// the unknown outcomes) of one epoch, so the linearizability search stays
/// small however long the run: an unknown write stays open for the rest of
/// its key's history, and a two-minute history with a hundred of them
/// defeated the search.
#[derive(Debug, Clone, Copy)]
pub struct KeyRotation {
    /// When the run began.
    pub started: Instant,
    /// How long a set of keys is used.
    pub lifetime: Duration,
}

impl KeyRotation {
    /// The epoch at `now`.
    pub fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started);
        (elapsed.as_millis() / self.lifetime.as_millis().max(1)) as u64
    }

    /// How many keys were used by `until`, `keys` at a time.
    pub fn keys_used(&self, keys: u64, until: Instant) -> u64 {
        (self.epoch(until) + 1) * keys
    }
}

/// What one client does.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec {
    /// The workload.
    pub workload: Workload,
    /// Its process number in the history.
    pub process: u64,
    /// Register keys to spread over at once.
    pub keys: u64,
    /// Whether and how register keys change over the run.
    pub key_rotation: Option<KeyRotation>,
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
        key_rotation,
        seed,
        deadline,
        pinned,
    } = spec;
    let mut rng = Rng::new(seed ^ process.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut counter = 0u64;
    // Versions this client last saw, for its compare-and-sets and version
    // reads.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    while Instant::now() < deadline {
        counter += 1;
        let unique = process * 1_000_000 + counter;
        let node = pinned
            .or_else(|| client.known_leader())
            .map(|address| address.to_string());
        let invocation = |f: &'static str, key: Option<u64>, value: Value| Invocation {
            process,
            f,
            key: key.map(|key| key.to_string()),
            value,
            node: node.clone(),
        };
        let client = &client;
        match workload {
            Workload::Register => {
                let epoch = key_rotation.map_or(0, |rotation| rotation.epoch(Instant::now()));
                let key = epoch * keys + rng.below(keys.max(1));
                let path = register_path(key);
                let expected = seen.get(&key).copied().unwrap_or(0);
                let seen = &mut seen;
                match rng.below(100) {
                    0..40 => {
                        let op = read_value(client, &path, None);
                        record(recorder, invocation("read", Some(key), Value::Null), op).await;
                    }
                    40..55 => {
                        let op = async {
                            match client.secret_metadata(&path).await {
                                Ok(metadata) => {
                                    seen.insert(key, metadata.current_version);
                                    Outcome::ok(json!(metadata.current_version))
                                }
                                Err(Error::NotFound) => {
                                    seen.insert(key, 0);
                                    Outcome::ok(json!(0))
                                }
                                Err(error) => Outcome::read_failed(&error),
                            }
                        };
                        record(recorder, invocation("version", Some(key), Value::Null), op).await;
                    }
                    55..85 => {
                        let op = write_value(client, &path, unique, None);
                        record(recorder, invocation("write", Some(key), json!(unique)), op).await;
                    }
                    _ => {
                        let argument = json!({ "expected": expected, "value": unique });
                        let op = async {
                            let mut outcome =
                                write_value(client, &path, unique, Some(expected)).await;
                            match outcome.kind {
                                EventKind::Ok => {
                                    seen.insert(key, expected + 1);
                                }
                                _ if outcome.error.as_deref() == Some("conflict") => {
                                    seen.remove(&key);
                                }
                                _ => {}
                            }
                            outcome.value = json!({ "expected": expected, "value": unique });
                            outcome
                        };
                        record(recorder, invocation("cas", Some(key), argument), op).await;
                    }
                }
            }
            Workload::Lifecycle => {
                let key = rng.below(keys.max(1));
                let path = lifecycle_path(key);
                let known = seen.get(&key).copied().unwrap_or(0);
                let version = 1 + rng.below(known.max(1));
                let numbered = json!({ "version": version });
                let seen = &mut seen;
                match rng.below(100) {
                    0..30 => {
                        let op = write_value(client, &path, unique, None);
                        record(recorder, invocation("put", Some(key), json!(unique)), op).await;
                    }
                    30..40 => {
                        let op = async {
                            match client.secret_metadata(&path).await {
                                Ok(metadata) => {
                                    seen.insert(key, metadata.current_version.max(known));
                                    Outcome::ok(json!(metadata.current_version))
                                }
                                Err(Error::NotFound) => Outcome::ok(json!(0)),
                                Err(error) => Outcome::read_failed(&error),
                            }
                        };
                        record(recorder, invocation("version", Some(key), Value::Null), op).await;
                    }
                    40..75 => {
                        let op = read_value(client, &path, Some(version));
                        record(
                            recorder,
                            invocation("read-version", Some(key), numbered),
                            op,
                        )
                        .await;
                    }
                    roll => {
                        let action = match roll {
                            75..85 => "delete",
                            85..93 => "undelete",
                            _ => "destroy",
                        };
                        let op = async {
                            let versions = [version];
                            let done = match action {
                                "delete" => client.delete_secret(&path, &versions).await,
                                "undelete" => client.undelete_secret(&path, &versions).await,
                                _ => client.destroy_secret(&path, &versions).await,
                            };
                            match done {
                                Ok(()) => Outcome::ok(Value::Null),
                                Err(error) => Outcome::write_failed(&error, Value::Null),
                            }
                        };
                        record(recorder, invocation(action, Some(key), numbered), op).await;
                    }
                }
            }
            Workload::Policy if process == 0 => {
                // The admin: grant, pause, revoke, pause, ...
                let grant = counter % 2 == 1;
                let op = async {
                    let done = if grant {
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
                    match done {
                        Ok(()) => Outcome::ok(Value::Null),
                        Err(error) => Outcome::write_failed(&error, Value::Null),
                    }
                };
                let f = if grant { "grant" } else { "revoke" };
                record(recorder, invocation(f, None, Value::Null), op).await;
                tokio::time::sleep(std::time::Duration::from_millis(50 + rng.below(200))).await;
            }
            Workload::Policy => {
                let op = async {
                    match client.get_secret(POLICY_SECRET, None).await {
                        Ok(_) => Outcome::ok(json!("allowed")),
                        Err(Error::Denied) => Outcome::ok(json!("denied")),
                        Err(error) => Outcome::read_failed(&error),
                    }
                };
                record(recorder, invocation("read-acl", None, Value::Null), op).await;
            }
            Workload::Rootkey if process == 0 => {
                // The operator: rekey, rotate, rekey, ...
                let rekey = counter % 2 == 1;
                let op = async {
                    let done = if rekey {
                        // The harness's cluster: 5 keepers, threshold 3.
                        client.rekey(5, 3).await
                    } else {
                        client.rotate_data_key().await
                    };
                    match done {
                        Ok(id) => Outcome::ok(json!(id)),
                        Err(error) => Outcome::write_failed(&error, Value::Null),
                    }
                };
                let f = if rekey { "rekey" } else { "rotate" };
                record(recorder, invocation(f, None, Value::Null), op).await;
                tokio::time::sleep(std::time::Duration::from_millis(300 + rng.below(500))).await;
            }
            Workload::Set | Workload::Rootkey => {
                let path = if workload == Workload::Set {
                    set_path(unique)
                } else {
                    rootkey_path(unique)
                };
                let op = write_value(client, &path, unique, None);
                record(recorder, invocation("add", None, json!(unique)), op).await;
            }
        }
    }
}

/// The element a path under `{PREFIX}/{kind}/` names (`set` or `rootkey`),
/// or `None` for any other path.
pub fn set_element(path: &str, kind: &str) -> Option<u64> {
    path.strip_prefix(PREFIX)?
        .strip_prefix('/')?
        .strip_prefix(kind)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

/// Metadata reads a final set read keeps in flight: a set of thousands of
/// elements is read in seconds, not one round trip after another.
const SET_READS_IN_FLIGHT: usize = 16;

/// The set as it stands: element -> versions of its path, for the paths
/// under `{PREFIX}/{kind}/` (`set` or `rootkey`).
pub async fn read_set(client: &NexusClient, kind: &str) -> Result<BTreeMap<u64, u64>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let elements: Vec<(u64, String)> = client
        .list_secrets()
        .await?
        .into_iter()
        .filter_map(|path| Some((set_element(&path, kind)?, path)))
        .collect();
    futures_util::stream::iter(elements)
        .map(|(element, path)| async move {
            let metadata = client.secret_metadata(&path).await?;
            Ok::<_, Error>((element, metadata.current_version))
        })
        .buffer_unordered(SET_READS_IN_FLIGHT)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_paths_name_their_element_and_nothing_else_does() {
        assert_eq!(set_element(&set_path(42), "set"), Some(42));
        assert_eq!(set_element(&rootkey_path(7), "rootkey"), Some(7));
        assert_eq!(set_element(&rootkey_path(7), "set"), None);
        assert_eq!(set_element("jepsen/settings/1", "set"), None);
        assert_eq!(set_element(&register_path(1), "set"), None);
        assert_eq!(set_element("jepsen/set/x", "set"), None);
    }

    #[test]
    fn key_sets_change_each_lifetime_and_every_set_is_counted() {
        let started = Instant::now();
        let rotation = KeyRotation {
            started,
            lifetime: Duration::from_secs(10),
        };
        assert_eq!(rotation.epoch(started), 0);
        assert_eq!(rotation.epoch(started + Duration::from_millis(9_999)), 0);
        assert_eq!(rotation.epoch(started + Duration::from_secs(25)), 2);
        // A clock read before the start is epoch 0, not an underflow.
        assert_eq!(rotation.epoch(started - Duration::from_millis(1)), 0);
        // 4 keys at a time over 25 s: epochs 0, 1 and 2.
        assert_eq!(rotation.keys_used(4, started + Duration::from_secs(25)), 12);
    }
}
