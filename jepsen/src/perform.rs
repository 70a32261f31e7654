//! Operations through the SDK: the one place the harness's operations meet
//! the client API, and where an SDK error becomes a completion. Timeouts
//! and unreachable clusters are `info` for anything that writes (it may
//! have happened); a failed read is `fail` (it changed nothing).

use std::collections::BTreeMap;

use spike_sdk::api::SecretValues;
use spike_sdk::client::{Error, NexusClient};
use spike_sdk::domain::{Permission, PolicyName, PolicyRef, SecretPath};

use crate::history::{Completion, Failure};
use crate::op::{Access, Cas, ErrorKind, Op, Reply, VersionNumber};
use crate::recorder::{Invocation, Recorder};
use crate::workload::{POLICY_NAME, POLICY_PATH_PATTERN, POLICY_SPIFFE_ID_PATTERN, SetKind};

/// Shares a rekey hands out: the harness's cluster has 5 keepers.
const REKEY_SHARES: u8 = 5;
/// The self-running workload's rotation settings: data keys age out each second, the
/// root key every 3 s, and old versions move at 100 a second, so every
/// fault meets key changes in flight.
const SELF_RUNNING_ROTATION: spike_sdk::api::RotationSettings = spike_sdk::api::RotationSettings {
    data_key_rotate_after_ops: 1 << 30,
    data_key_max_age_seconds: 1,
    root_key_max_age_seconds: 3,
    reencrypt_per_second: 100,
};
/// Shares a rekey's root key needs back.
const REKEY_THRESHOLD: u8 = 3;

/// Metadata reads a final set read keeps in flight: a set of thousands of
/// elements is read in seconds, not one round trip after another.
const SET_READS_IN_FLIGHT: usize = 16;

/// A value as the secret that holds it: `{"v": "<value>"}`.
pub fn secret_values(value: u64) -> SecretValues {
    [("v", value.to_string())].into_iter().collect()
}

/// The value a secret holds, if it is one [`secret_values`] made.
pub fn value_of(secret: &SecretValues) -> Option<u64> {
    secret.get("v")?.parse().ok()
}

/// The policy the policy workload grants and revokes.
fn policy_name() -> PolicyName {
    PolicyName::try_from(POLICY_NAME).expect("the harness's policy name follows the name rule")
}

/// Records `invocation`, performs its operation on `path`, records how it
/// ended.
pub async fn record(
    recorder: &Recorder,
    invocation: &Invocation,
    nexus: &NexusClient,
    path: &SecretPath,
) -> Completion {
    recorder.invoke(invocation);
    let done = perform(nexus, invocation.op, path).await;
    recorder.complete(invocation, done);
    done
}

/// Runs `op` on the secret at `path`. Grants, revokes, rekeys and
/// rotations name no secret and ignore `path`.
pub async fn perform(nexus: &NexusClient, op: Op, path: &SecretPath) -> Completion {
    match op {
        Op::Read => match read_value(nexus, path, None).await {
            Ok(value) => Completion::Ok(Reply::Read(value)),
            Err(error) => read_failed(&error, Reply::Read(None)),
        },
        Op::ReadVersion(VersionNumber { version }) => {
            match read_value(nexus, path, Some(version)).await {
                Ok(value) => Completion::Ok(Reply::ReadVersion(value)),
                Err(error) => read_failed(&error, Reply::ReadVersion(None)),
            }
        }
        Op::Version => match nexus.secret_metadata(path, None).await {
            Ok(answer) => Completion::Ok(Reply::Version(Some(answer.metadata.current_version))),
            Err(Error::NotFound) => Completion::Ok(Reply::Version(Some(0))),
            Err(error) => read_failed(&error, Reply::Version(None)),
        },
        Op::Write(value) => written(
            write_value(nexus, path, value, None).await,
            Reply::Write(value),
        ),
        Op::Put(value) => written(
            write_value(nexus, path, value, None).await,
            Reply::Put(value),
        ),
        Op::Add(value) => written(
            write_value(nexus, path, value, None).await,
            Reply::Add(value),
        ),
        Op::Cas(cas @ Cas { expected, value }) => written(
            write_value(nexus, path, value, Some(expected)).await,
            Reply::Cas(cas),
        ),
        Op::Delete(VersionNumber { version }) => {
            written(nexus.delete_secret(path, &[version]).await, Reply::Delete)
        }
        Op::Undelete(VersionNumber { version }) => written(
            nexus.undelete_secret(path, &[version]).await,
            Reply::Undelete,
        ),
        Op::Destroy(VersionNumber { version }) => {
            written(nexus.destroy_secret(path, &[version]).await, Reply::Destroy)
        }
        Op::Grant => {
            let granted = nexus
                .put_policy(
                    &policy_name(),
                    POLICY_SPIFFE_ID_PATTERN,
                    POLICY_PATH_PATTERN,
                    &[Permission::Read],
                )
                .await
                .map(drop);
            written(granted, Reply::Grant)
        }
        Op::Revoke => written(
            nexus.delete_policy(&PolicyRef::from(policy_name())).await,
            Reply::Revoke,
        ),
        Op::ReadAcl => match nexus.get_secret(path, None).await {
            Ok(_) => Completion::Ok(Reply::ReadAcl(Some(Access::Allowed))),
            Err(Error::Denied) => Completion::Ok(Reply::ReadAcl(Some(Access::Denied))),
            Err(error) => read_failed(&error, Reply::ReadAcl(None)),
        },
        Op::Rekey => match nexus.rekey(REKEY_SHARES, REKEY_THRESHOLD).await {
            Ok(id) => Completion::Ok(Reply::Rekey(Some(id))),
            Err(error) => write_failed(&error, Reply::Rekey(None)),
        },
        Op::Rotate => match nexus.rotate_data_key().await {
            Ok(id) => Completion::Ok(Reply::Rotate(Some(u64::from(id)))),
            Err(error) => write_failed(&error, Reply::Rotate(None)),
        },
        Op::SetRotation => written(
            nexus.set_rotation(SELF_RUNNING_ROTATION).await.map(drop),
            Reply::SetRotation,
        ),
    }
}

/// The value of `path` (at `version`), linearizable: `None` when there is
/// none.
async fn read_value(
    nexus: &NexusClient,
    path: &SecretPath,
    version: Option<u64>,
) -> Result<Option<u64>, Error> {
    match nexus.get_secret(path, version).await {
        Ok(secret) => Ok(value_of(&secret)),
        Err(Error::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The current value of `path` as the node `nexus` asks first holds it,
/// without a read index (it may be behind): `None` when there is none.
pub async fn read_value_stale(
    nexus: &NexusClient,
    path: &SecretPath,
) -> Result<Option<u64>, Error> {
    match nexus.get_secret_stale(path, None).await {
        Ok(secret) => Ok(value_of(&secret)),
        Err(Error::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Writes `value` to `path` (only over version `cas`, if given).
async fn write_value(
    nexus: &NexusClient,
    path: &SecretPath,
    value: u64,
    cas: Option<u64>,
) -> Result<(), Error> {
    nexus.put_secret(path, &secret_values(value), cas).await
}

/// The elements of `kind` listed by the node `nexus` asks.
pub async fn list_elements(nexus: &NexusClient, kind: SetKind) -> Result<Vec<u64>, Error> {
    Ok(nexus
        .list_secrets()
        .await?
        .iter()
        .filter_map(|path| kind.element(path.as_str()))
        .collect())
}

/// The set as it stands: element -> versions of its path.
pub async fn read_set(nexus: &NexusClient, kind: SetKind) -> Result<BTreeMap<u64, u64>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let elements = list_elements(nexus, kind).await?;
    futures_util::stream::iter(elements)
        .map(|element| async move {
            let answer = nexus.secret_metadata(&kind.path(element), None).await?;
            Ok::<_, Error>((element, answer.metadata.current_version))
        })
        .buffer_unordered(SET_READS_IN_FLIGHT)
        .try_collect()
        .await
}

/// The kind of an SDK error, as a completion records it.
fn error_kind(error: &Error) -> ErrorKind {
    match error {
        Error::Conflict => ErrorKind::Conflict,
        Error::NotFound => ErrorKind::NotFound,
        Error::NotReady(_) => ErrorKind::NotReady,
        Error::Unreachable(_) => ErrorKind::Unreachable,
        Error::Denied => ErrorKind::Denied,
        Error::BadRequest => ErrorKind::BadRequest,
        Error::TooLarge => ErrorKind::TooLarge,
        Error::Server { .. } => ErrorKind::Server,
        Error::Decode(_) => ErrorKind::Decode,
        Error::Settings(_) => ErrorKind::Settings,
        // An error kind this harness does not know yet.
        _ => ErrorKind::Server,
    }
}

/// A failed read: it changed nothing, so it certainly did not happen.
fn read_failed(error: &Error, reply: Reply) -> Completion {
    Completion::Fail(Failure {
        reply,
        error: error_kind(error),
    })
}

/// A failed write: `fail` only when it certainly did not happen, else
/// `info` (timeouts, unreachable nodes, a leader that lost its quorum).
/// Public for the simulator, whose operator rekeys with its own cluster's
/// share counts.
pub fn write_failed(error: &Error, reply: Reply) -> Completion {
    let failure = Failure {
        reply,
        error: error_kind(error),
    };
    match failure.error {
        // Refused before it was applied, or nothing to act on.
        ErrorKind::Denied
        | ErrorKind::BadRequest
        | ErrorKind::TooLarge
        | ErrorKind::Settings
        | ErrorKind::Conflict
        | ErrorKind::NotFound => Completion::Fail(failure),
        ErrorKind::NotReady | ErrorKind::Unreachable | ErrorKind::Server | ErrorKind::Decode => {
            Completion::Info(failure)
        }
    }
}

/// A write's completion: `reply` if it happened.
fn written(result: Result<(), Error>, reply: Reply) -> Completion {
    match result {
        Ok(()) => Completion::Ok(reply),
        Err(error) => write_failed(&error, reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_and_nothing_else_parses() {
        assert_eq!(value_of(&secret_values(42)), Some(42));
        let other: SecretValues = [("v", "x")].into_iter().collect();
        assert_eq!(value_of(&other), None);
        assert_eq!(value_of(&SecretValues::new()), None);
    }

    #[test]
    fn only_writes_refused_outright_are_failures() {
        let refused = write_failed(&Error::Conflict, Reply::Write(1));
        assert!(matches!(refused, Completion::Fail(_)));
        let unknown = write_failed(&Error::NotReady("no leader".to_owned()), Reply::Write(1));
        assert!(matches!(unknown, Completion::Info(_)));
        let read = read_failed(&Error::NotReady("no leader".to_owned()), Reply::Read(None));
        assert!(matches!(read, Completion::Fail(_)));
    }
}
