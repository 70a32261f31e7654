//! The headers of the API: SPIKE's, and the ones our clients and servers
//! add (SPIKE's clients neither send nor read them).

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";
/// `Content-Type` of the cipher routes' stream mode and of backups.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// SPIKE's no-cache headers, on every JSON answer.
pub const NO_CACHE: [(&str, &str); 3] = [
    (
        "cache-control",
        "no-store, no-cache, must-revalidate, private",
    ),
    ("pragma", "no-cache"),
    ("expires", "0"),
];

/// Answer header naming the leader's API address, `https://host:port`, so
/// clients can send writes and linearizable reads straight there.
pub const LEADER: &str = "x-spike-leader";

/// Request header of a write that must apply at most once: a random
/// 128-bit client id, 32 hex digits. The server binds it to the caller's
/// SPIFFE ID, so no caller can touch another's session.
pub const CLIENT_ID: &str = "x-spike-client-id";

/// Request header: the write's sequence number within its client id,
/// from 1, strictly increasing. A retry carries the same number and gets
/// the first attempt's answer.
pub const SEQUENCE: &str = "x-spike-sequence";

/// Request header asking a read to be served from the contacted replica's
/// own state ([`STALE`]) instead of linearizably.
pub const CONSISTENCY: &str = "x-spike-consistency";
/// The [`CONSISTENCY`] value for a stale read.
pub const STALE: &str = "stale";

/// Answer header of a refusal whose code alone does not say enough (a
/// storage quota: the quota, the size and how to free space): one line
/// for people, never secret.
pub const REASON: &str = "x-spike-reason";

/// Answer header of a 429: seconds to wait before trying again (HTTP's
/// `Retry-After`, rounded up).
pub const RETRY_AFTER: &str = "retry-after";

/// The leader hint's value for an API address.
pub fn leader_hint(api_address: &std::net::SocketAddr) -> String {
    format!("https://{api_address}")
}

/// The API address a leader hint names: only literal IP addresses, since a
/// hint is an address the cluster was configured with, never looked up.
pub fn parse_leader_hint(hint: &str) -> Option<std::net::SocketAddr> {
    hint.strip_prefix("https://")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_are_literal_https_addresses() {
        let address = "127.0.0.1:8553".parse().expect("address");
        assert_eq!(parse_leader_hint(&leader_hint(&address)), Some(address));
        assert_eq!(parse_leader_hint("http://127.0.0.1:8553"), None);
        assert_eq!(parse_leader_hint("https://nexus.example:8553"), None);
    }
}
