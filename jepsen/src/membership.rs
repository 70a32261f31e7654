//! Membership changes as an operator makes them, through the SDK: used by
//! the harness's membership nemesis and by the simulation's operator.

use std::net::SocketAddr;
use std::time::Duration;

use spike_sdk::api::{ClusterStatus, Member};
use spike_sdk::client::{Error, NexusClient};
use tokio::time::Instant;

/// Retries `operation` while its errors are retryable, until `deadline`.
pub async fn until<F, Fut>(deadline: Instant, mut operation: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    loop {
        match operation().await {
            Err(error) if error.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done,
        }
    }
}

/// `ok`, or `failed (why)`, for a note.
pub fn outcome(result: &Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!("failed ({error})"),
    }
}

/// The leader's own status (the only current view of the membership),
/// found by asking `hosts` in turn and following the leader each names
/// (a removed replica may name none). `connect` makes a client bound to
/// one address. The last status seen is the error if no leader answers
/// before `deadline`.
pub async fn leader_status<F, Fut>(
    hosts: &[SocketAddr],
    mut connect: F,
    deadline: Instant,
) -> Result<ClusterStatus, Option<ClusterStatus>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Option<NexusClient>>,
{
    let mut last = None;
    let mut next_host = 0;
    let mut ask = *hosts.first().ok_or(None)?;
    loop {
        let mut hint = None;
        if let Some(client) = connect(ask).await
            && let Ok(status) = client.cluster_status().await
        {
            if status.leader_id == Some(status.node_id) {
                return Ok(status);
            }
            hint = status.leader_api_addr;
            last = Some(status);
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        ask = hint.unwrap_or_else(|| {
            next_host = (next_host + 1) % hosts.len();
            hosts[next_host]
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The members a status lists: (id, voter, API address).
pub fn members(status: &ClusterStatus) -> Vec<(u64, bool, Option<SocketAddr>)> {
    status
        .members
        .iter()
        .map(|member: &Member| (member.id, member.voter, Some(member.api_addr)))
        .collect()
}
