//! Versions across the cluster: what each replica is, which on-disk
//! formats it reads, and the leader's switch of the cluster format once
//! every member reads a newer one (etcd's cluster version, Vault's
//! upgrade autopilot).
//!
//! A rolling upgrade replaces one replica at a time. Until the last member
//! runs a build that reads the newer format, the cluster keeps writing the
//! older one, so any replica may still be rolled back. The leader asks every
//! member its version (the `Version` RPC; a build from before versions
//! answers "unimplemented" and reads format 1 only) and, once all of them
//! read a newer format, commits `SwitchFormat`; from then on an older build
//! refuses the data directory with one line naming the file and format.
//!
//! Every cluster RPC carries the sender's cluster format in the
//! [`FORMAT_HEADER`] metadata, and a replica refuses a message in a format
//! it does not read rather than misread it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::raft::codec::{decode, encode};
use crate::raft::format::{ClusterFormat, FORMAT_NEWEST, FORMAT_OLDEST, FORMATS_READ};
use crate::raft::{Leadership, NexusNode};
use crate::state::command::{Command, MembershipCommand, Request};
use crate::transport::peers::Peers;
use crate::transport::proto::Frame;

/// This build's release (the workspace version).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
pub use crate::transport::peers::{FORMAT_HEADER, stamp};
/// How often the leader looks whether the cluster can switch formats.
/// Short, so a new cluster writes its newest format (and takes the commands
/// that need it) within about a second of forming; each check is one small
/// RPC per member, and none once the cluster writes this build's newest.
pub const SWITCH_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long the leader waits for one member's version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// What a replica says of itself (the `Version` RPC, and status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaVersion {
    /// Its release, `0.2.0`; `0.1.0` for a build from before versions.
    pub release: String,
    /// The oldest on-disk format it reads and writes.
    pub format_oldest: u32,
    /// The newest on-disk format it reads and writes.
    pub format_newest: u32,
    /// The cluster's format as it last applied it.
    pub cluster_format: u32,
}

impl ReplicaVersion {
    /// This replica, with the cluster format it applied.
    pub fn this_build(format: &ClusterFormat) -> Self {
        Self {
            release: RELEASE.to_owned(),
            format_oldest: FORMAT_OLDEST,
            format_newest: FORMAT_NEWEST,
            cluster_format: format.get(),
        }
    }

    /// A replica of the first release, which has no `Version` RPC.
    pub fn before_versions() -> Self {
        Self {
            release: "0.1.0".to_owned(),
            format_oldest: 1,
            format_newest: 1,
            cluster_format: 1,
        }
    }

    /// Whether it reads and writes `format`.
    pub fn reads(&self, format: u32) -> bool {
        (self.format_oldest..=self.format_newest).contains(&format)
    }
}

/// Refuses a cluster RPC whose sender writes a format this build does not
/// read; a sender without the header is a build from before versions,
/// which writes format 1.
pub fn check_sender<T>(request: &tonic::Request<T>) -> Result<(), Status> {
    let Some(value) = request.metadata().get(FORMAT_HEADER) else {
        return Ok(());
    };
    let format = value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .ok_or_else(|| Status::invalid_argument(format!("{FORMAT_HEADER} is not a number")))?;
    if FORMATS_READ.contains(&format) {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "the sender writes on-disk format {format}; this replica (release {RELEASE}) reads formats {FORMAT_OLDEST} to {FORMAT_NEWEST}"
        )))
    }
}

/// Asks the replica at `node` its version: `None` if it cannot be reached.
pub async fn ask(peers: &Peers, node: &NexusNode) -> Option<ReplicaVersion> {
    let mut client = peers.client(node.cluster_addr);
    let mut request = tonic::Request::new(Frame {
        payload: Vec::new(),
    });
    request.set_timeout(VERSION_TIMEOUT);
    stamp(&mut request, peers.format().get());
    match client.version(request).await {
        Ok(reply) => decode("version", &reply.into_inner().payload).ok(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            Some(ReplicaVersion::before_versions())
        }
        Err(_) => None,
    }
}

/// Encodes this replica's version as a `Version` reply.
pub fn reply(format: &ClusterFormat) -> Result<Frame, Status> {
    encode(&ReplicaVersion::this_build(format))
        .map(|payload| Frame { payload })
        .map_err(|e| Status::internal(e.to_string()))
}

/// The format the cluster can switch to: the newest every member in
/// `versions` reads, if it is above `current` and every member was heard.
pub fn switch_target(
    current: u32,
    versions: &BTreeMap<u64, Option<ReplicaVersion>>,
) -> Option<u32> {
    let mut target = FORMAT_NEWEST;
    for version in versions.values() {
        let version = version.as_ref()?;
        target = target.min(version.format_newest);
    }
    let readable = versions
        .values()
        .flatten()
        .all(|version| version.reads(target));
    (target > current && readable).then_some(target)
}

/// The leader's loop: every [`SWITCH_CHECK_INTERVAL`], while leading and
/// while the cluster runs an older format than this build's newest, asks
/// every member its version and switches once all read a newer one.
pub async fn switch_when_every_member_reads(
    leadership: Leadership,
    peers: Peers,
    format: ClusterFormat,
) {
    let mut tick = tokio::time::interval(SWITCH_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = format.get();
        if current >= FORMAT_NEWEST || !leadership.is_leader() {
            continue;
        }
        let view = leadership.view();
        let mut versions = BTreeMap::new();
        for member in &view.members {
            let version = if member.id == view.node_id {
                Some(ReplicaVersion::this_build(&format))
            } else {
                ask(&peers, &member.node).await
            };
            versions.insert(member.id, version);
        }
        let Some(target) = switch_target(current, &versions) else {
            let waiting: Vec<String> = versions
                .iter()
                .filter(|(_, version)| version.as_ref().is_none_or(|v| !v.reads(current + 1)))
                .map(|(id, version)| match version {
                    Some(version) => format!("{id} (release {})", version.release),
                    None => format!("{id} (unreachable)"),
                })
                .collect();
            tracing::debug!(
                cluster_format = current,
                waiting = waiting.join(", "),
                "the cluster format waits for members to read a newer one"
            );
            continue;
        };
        let request = Request {
            command: Command::Membership(MembershipCommand::SwitchFormat { format: target }),
            session: None,
            time_ns: 0,
        };
        match leadership.write(request).await {
            Ok(_) => tracing::info!(
                from = current,
                to = target,
                members = versions.len(),
                "every member reads a newer on-disk format: the cluster switched to it"
            ),
            Err(error) => tracing::warn!(%error, to = target, "switching the cluster format"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(newest: u32) -> Option<ReplicaVersion> {
        Some(ReplicaVersion {
            release: format!("0.{newest}.0"),
            format_oldest: 1,
            format_newest: newest,
            cluster_format: 1,
        })
    }

    #[test]
    fn the_cluster_switches_only_once_every_member_reads_the_newer_format() {
        let mixed = BTreeMap::from([(1, build(2)), (2, build(2)), (3, build(1))]);
        assert_eq!(
            switch_target(1, &mixed),
            None,
            "member 3 reads format 1 only"
        );
        let unheard = BTreeMap::from([(1, build(2)), (2, build(2)), (3, None)]);
        assert_eq!(switch_target(1, &unheard), None, "member 3 was not heard");
        let upgraded = BTreeMap::from([(1, build(2)), (2, build(2)), (3, build(2))]);
        assert_eq!(switch_target(1, &upgraded), Some(2));
        assert_eq!(switch_target(2, &upgraded), None, "already switched");
    }

    #[test]
    fn nexus_version_states_the_formats_this_build_reads() {
        let stated = format!(
            "{RELEASE} (on-disk formats {FORMAT_OLDEST} to {FORMAT_NEWEST}; keeper protocol {})",
            spike_sdk::keeper_api::PROTOCOL_VERSION
        );
        assert_eq!(crate::config::LONG_VERSION, stated);
    }

    #[test]
    fn a_member_that_no_longer_reads_the_target_blocks_the_switch() {
        let dropped_one = Some(ReplicaVersion {
            release: "9.0.0".to_owned(),
            format_oldest: 3,
            format_newest: 3,
            cluster_format: 1,
        });
        let versions = BTreeMap::from([(1, build(2)), (2, dropped_one)]);
        assert_eq!(switch_target(1, &versions), None);
    }

    #[test]
    fn a_sender_of_an_unread_format_is_refused_and_one_without_a_stamp_is_not() {
        let mut request = tonic::Request::new(());
        assert!(
            check_sender(&request).is_ok(),
            "a build from before versions"
        );
        stamp(&mut request, FORMAT_NEWEST);
        assert!(check_sender(&request).is_ok());
        stamp(&mut request, FORMAT_NEWEST + 1);
        let refused = check_sender(&request).expect_err("a newer format");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused
                .message()
                .contains(&format!("reads formats {FORMAT_OLDEST} to {FORMAT_NEWEST}")),
            "{}",
            refused.message()
        );
    }
}
