//! The readiness probe: a replica is ready when its health listener
//! answers `GET /readyz` with 200, that is, once it holds the root key and
//! serves. Its gauges (`GET /metrics`) are read the same way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A timeout for each step of one probe (connect, send, read) that a
/// replica on this machine meets even when the machine is loaded.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the health listener at `health_addr` says ready, each step of
/// the exchange given `timeout`. Anything but a 200 (no listener, a
/// timeout, a 503) is "not ready".
pub fn ready(health_addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&health_addr, timeout) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
        || stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: local\r\n\r\n")
            .is_err()
    {
        return false;
    }
    // `HTTP/1.x NNN`: the status code ends the first 12 bytes.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Largest `/metrics` answer read: the histograms of every route on a
/// replica that served them all stay far below it.
const METRICS_SIZE_MAX_BYTES: u64 = 1024 * 1024;

/// The health listener's whole answer to `GET /metrics` (status line,
/// headers and the text), or `None` if it does not answer.
pub fn scrape(health_addr: SocketAddr, timeout: Duration) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&health_addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: local\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream
        .take(METRICS_SIZE_MAX_BYTES)
        .read_to_string(&mut answer)
        .ok()?;
    Some(answer)
}

/// The value of gauge (or counter) `name` in the health listener's
/// `/metrics` (Prometheus or OpenMetrics text, with or without labels; the
/// first series of it), or `None` if it does not answer or has no such
/// metric.
pub fn gauge(health_addr: SocketAddr, name: &str, timeout: Duration) -> Option<u64> {
    scrape(health_addr, timeout)?.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !rest.starts_with([' ', '{']) {
            return None;
        }
        rest.split_whitespace().last()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A listener that answers one connection with `reply`.
    fn answering(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 64];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(reply);
            }
        });
        address
    }

    #[test]
    fn only_a_200_is_ready() {
        let ok = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(ready(ok, PROBE_TIMEOUT));
        let locked = answering(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(!ready(locked, PROBE_TIMEOUT));
        let silent = answering(b"");
        assert!(!ready(silent, PROBE_TIMEOUT));
        let nobody = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a port");
        assert!(!ready(nobody, PROBE_TIMEOUT), "nothing listens there now");
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let metrics = answering(
            b"HTTP/1.1 200 OK\r\n\r\n# HELP spike_raft_applied_index x\nspike_raft_applied_index_total 9\nspike_raft_applied_index{node=\"1\"} 42\n",
        );
        assert_eq!(
            gauge(metrics, "spike_raft_applied_index", PROBE_TIMEOUT),
            Some(42)
        );
        let empty = answering(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            gauge(empty, "spike_raft_applied_index", PROBE_TIMEOUT),
            None
        );
    }
}
