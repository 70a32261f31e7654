//! Workloads: what each client does, one step function per workload. The
//! operations go through [`crate::perform`], which records them.

use spike_sdk::domain::SecretPath;
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use spike_sdk::client::{NexusClient, RetryPolicy, Settings};

use crate::history::{Completion, Failure};
use crate::op::{Cas, ErrorKind, Op, Reply, VersionNumber};
use crate::perform::record;
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
    /// Unique adds while the cluster runs itself: leaders rotate data keys
    /// (each second) and the root key (every 3 s) and re-encrypt old
    /// versions, the leader takes a scheduled backup every second, the
    /// replicas compare state digests every 2 s, and the autopilot promotes
    /// replicas the membership nemesis adds after 1 s. The root-key
    /// workload's checks, plus: every backup slot completed once across
    /// every replica's audit log, every backup file on disk matches its
    /// checksum, and no replica raised the corruption alarm. No operator in
    /// the loop but the one who sets the rotation schedule.
    SelfRunning,
}

impl Workload {
    /// The elements it adds, for the workloads that add.
    pub fn set_kind(self) -> Option<SetKind> {
        match self {
            Self::Set => Some(SetKind::Set),
            Self::Rootkey | Self::SelfRunning => Some(SetKind::Rootkey),
            Self::Register | Self::Lifecycle | Self::Policy => None,
        }
    }
}

/// The policy workload's name for its grant.
pub const POLICY_NAME: &str = "jepsen-grant";
/// The secret the policy workload's readers read.
pub const POLICY_SECRET: &str = "jepsen/policy/secret";
/// The paths the policy workload's grant covers.
pub const POLICY_PATH_PATTERN: &str = "^jepsen/policy/.*$";
/// The workload identity the policy workload grants and revokes.
pub const POLICY_SPIFFE_ID_PATTERN: &str = "^spiffe://spike\\.ist/app/jepsen$";

/// Path prefix of every key a run writes.
pub const PREFIX: &str = "jepsen";

/// The process of the policy workload's admin and of the root-key
/// workload's operator; every other process reads or adds.
const ADMIN_PROCESS: u64 = 0;
/// The key under which the operator of the self-running workload notes
/// (in its `seen` map, unused otherwise there) that the schedule is set.
const SCHEDULE_SET: u64 = u64::MAX;
/// The admin's pause after each grant or revoke: 50 ms and up to this
/// much more.
const ADMIN_PAUSE_SPREAD_MS: u64 = 200;
/// The operator's pause after each rekey or rotation: 300 ms and up to
/// this much more.
const OPERATOR_PAUSE_SPREAD_MS: u64 = 500;

/// A path the harness makes: its prefix, a kind and a number follow the
/// path rule by construction.
fn harness_path(text: String) -> SecretPath {
    SecretPath::try_from(text).expect("the harness's paths follow SPIKE's path rule")
}

/// The path of register key `key`.
pub fn register_path(key: u64) -> SecretPath {
    harness_path(format!("{PREFIX}/register/{key}"))
}

/// The path of lifecycle key `key`.
pub fn lifecycle_path(key: u64) -> SecretPath {
    harness_path(format!("{PREFIX}/lifecycle/{key}"))
}

/// The secret the policy workload's readers read.
pub fn policy_secret() -> SecretPath {
    harness_path(POLICY_SECRET.to_owned())
}

/// The workloads that add elements, each under a path prefix of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// The set workload's elements.
    Set,
    /// The root-key workload's elements.
    Rootkey,
}

impl SetKind {
    fn name(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Rootkey => "rootkey",
        }
    }

    /// The path of `element`.
    pub fn path(self, element: u64) -> SecretPath {
        harness_path(format!("{PREFIX}/{}/{element}", self.name()))
    }

    /// The element `path` names, or `None` for any other path.
    pub fn element(self, path: &str) -> Option<u64> {
        path.strip_prefix(PREFIX)?
            .strip_prefix('/')?
            .strip_prefix(self.name())?
            .strip_prefix('/')?
            .parse()
            .ok()
    }
}

/// Client settings for a fault-injection run: short budgets, so a fault
/// shows as an unknown (`info`) outcome within seconds. With
/// `follow_leader` false the client stays on its endpoints (pinned).
pub fn client_settings(endpoints: Vec<std::net::SocketAddr>, follow_leader: bool) -> Settings {
    let mut settings = Settings::new(endpoints);
    settings.request_timeout = Duration::from_millis(1500);
    settings.retry = RetryPolicy {
        attempts_max: 6,
        deadline: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    };
    settings.follow_leader = follow_leader;
    settings
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

/// One client's state between its steps.
struct Client<'r> {
    spec: ClientSpec,
    nexus: NexusClient,
    recorder: &'r Recorder,
    rng: Rng,
    /// Steps taken so far.
    steps: u64,
    /// Versions this client last saw, per key, for its compare-and-sets
    /// and version reads.
    seen: HashMap<u64, u64>,
}

impl Client<'_> {
    /// A value (or element) no other operation of the run writes.
    fn unique(&self) -> u64 {
        self.spec.process * 1_000_000 + self.steps
    }

    /// Runs `op` on `path` (`key` in the history), recorded.
    async fn invoke(&self, key: Option<u64>, op: Op, path: &SecretPath) -> Completion {
        let node = self
            .spec
            .pinned
            .or_else(|| self.nexus.known_leader())
            .map(|address| address.to_string());
        let invocation = Invocation {
            process: self.spec.process,
            op,
            key: key.map(|key| key.to_string()),
            node,
        };
        record(self.recorder, &invocation, &self.nexus, path).await
    }
}

/// One client: runs its workload until its deadline.
pub async fn client_loop(spec: ClientSpec, nexus: NexusClient, recorder: &Recorder) {
    let mut client = Client {
        spec,
        nexus,
        recorder,
        rng: Rng::new(spec.seed ^ spec.process.wrapping_mul(0x2545_F491_4F6C_DD1D)),
        steps: 0,
        seen: HashMap::new(),
    };
    while Instant::now() < spec.deadline {
        client.steps += 1;
        match spec.workload {
            Workload::Register => register_step(&mut client).await,
            Workload::Set => set_step(&client).await,
            Workload::Lifecycle => lifecycle_step(&mut client).await,
            Workload::Policy => policy_step(&mut client).await,
            Workload::Rootkey => rootkey_step(&mut client).await,
            Workload::SelfRunning => self_running_step(&mut client).await,
        }
    }
}

/// A read, version read, write or compare-and-set of one of the keys in
/// use.
async fn register_step(client: &mut Client<'_>) {
    let keys = client.spec.keys.max(1);
    let epoch = client
        .spec
        .key_rotation
        .map_or(0, |rotation| rotation.epoch(Instant::now()));
    let key = epoch * keys + client.rng.below(keys);
    let expected = client.seen.get(&key).copied().unwrap_or(0);
    let value = client.unique();
    let op = match client.rng.below(100) {
        0..40 => Op::Read,
        40..55 => Op::Version,
        55..85 => Op::Write(value),
        _ => Op::Cas(Cas { expected, value }),
    };
    match client.invoke(Some(key), op, &register_path(key)).await {
        Completion::Ok(Reply::Version(Some(version))) => {
            client.seen.insert(key, version);
        }
        Completion::Ok(Reply::Cas(_)) => {
            client.seen.insert(key, expected + 1);
        }
        Completion::Fail(Failure {
            reply: Reply::Cas(_),
            error: ErrorKind::Conflict,
        }) => {
            client.seen.remove(&key);
        }
        _ => {}
    }
}

/// One add of a new element.
async fn set_step(client: &Client<'_>) {
    let element = client.unique();
    client
        .invoke(None, Op::Add(element), &SetKind::Set.path(element))
        .await;
}

/// A write, version read, read of one version, delete, undelete or
/// destroy on one of the keys.
async fn lifecycle_step(client: &mut Client<'_>) {
    let key = client.rng.below(client.spec.keys.max(1));
    let known = client.seen.get(&key).copied().unwrap_or(0);
    let version = VersionNumber {
        version: 1 + client.rng.below(known.max(1)),
    };
    let op = match client.rng.below(100) {
        0..30 => Op::Put(client.unique()),
        30..40 => Op::Version,
        40..75 => Op::ReadVersion(version),
        75..85 => Op::Delete(version),
        85..93 => Op::Undelete(version),
        _ => Op::Destroy(version),
    };
    if let Completion::Ok(Reply::Version(Some(current))) =
        client.invoke(Some(key), op, &lifecycle_path(key)).await
    {
        client.seen.insert(key, current.max(known));
    }
}

/// The admin grants or revokes (in turn, then a pause); a reader reads
/// the granted secret as the workload.
async fn policy_step(client: &mut Client<'_>) {
    if client.spec.process != ADMIN_PROCESS {
        client.invoke(None, Op::ReadAcl, &policy_secret()).await;
        return;
    }
    let op = if client.steps % 2 == 1 {
        Op::Grant
    } else {
        Op::Revoke
    };
    client.invoke(None, op, &policy_secret()).await;
    let pause_ms = 50 + client.rng.below(ADMIN_PAUSE_SPREAD_MS);
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
}

/// The operator rekeys or rotates the data key (in turn, then a pause);
/// everyone else adds a new element.
async fn rootkey_step(client: &mut Client<'_>) {
    if client.spec.process != ADMIN_PROCESS {
        let element = client.unique();
        client
            .invoke(None, Op::Add(element), &SetKind::Rootkey.path(element))
            .await;
        return;
    }
    let op = if client.steps % 2 == 1 {
        Op::Rekey
    } else {
        Op::Rotate
    };
    // Rekeys and rotations name no secret; the invocation's path is unused.
    client.invoke(None, op, &policy_secret()).await;
    let pause_ms = 300 + client.rng.below(OPERATOR_PAUSE_SPREAD_MS);
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
}

/// The operator sets the rotation schedule until it is acknowledged (a
/// new cluster takes it once it writes format 3), then adds like everyone
/// else.
async fn self_running_step(client: &mut Client<'_>) {
    if client.spec.process == ADMIN_PROCESS && !client.seen.contains_key(&SCHEDULE_SET) {
        // The settings name no secret; the invocation's path is unused.
        let completion = client.invoke(None, Op::SetRotation, &policy_secret()).await;
        if matches!(completion, Completion::Ok(_)) {
            client.seen.insert(SCHEDULE_SET, 1);
        } else {
            let pause_ms = 300 + client.rng.below(OPERATOR_PAUSE_SPREAD_MS);
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        return;
    }
    let element = client.unique();
    client
        .invoke(None, Op::Add(element), &SetKind::Rootkey.path(element))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_paths_name_their_element_and_nothing_else_does() {
        assert_eq!(
            SetKind::Set.element(SetKind::Set.path(42).as_str()),
            Some(42)
        );
        assert_eq!(
            SetKind::Rootkey.element(SetKind::Rootkey.path(7).as_str()),
            Some(7)
        );
        assert_eq!(
            SetKind::Set.element(SetKind::Rootkey.path(7).as_str()),
            None
        );
        assert_eq!(SetKind::Set.element("jepsen/settings/1"), None);
        assert_eq!(SetKind::Set.element(register_path(1).as_str()), None);
        assert_eq!(SetKind::Set.element("jepsen/set/x"), None);
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
