//! docs/metrics.md lists every metric an operator alerts on; a running
//! replica must export exactly those, and traffic must move them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use spike_dev_cluster::probe;
use spike_tests::{ApiClient, LocalCluster};

use crate::support::{get, phase, put};

const METRICS_DOC: &str = "../docs/metrics.md";

/// The metric names in the first column of docs/metrics.md's table.
fn documented() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(METRICS_DOC);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.strip_prefix("| `spike_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("spike_{name}"))
        .collect()
}

/// One scrape: the HTTP head and the metric text.
struct Scrape {
    head: String,
    text: String,
}

impl Scrape {
    fn of(health: SocketAddr) -> Self {
        let answer = probe::scrape(health, probe::PROBE_TIMEOUT)
            .unwrap_or_else(|| panic!("{health}/metrics does not answer"));
        let (head, text) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {answer:?}"));
        Self {
            head: head.to_owned(),
            text: text.to_owned(),
        }
    }

    /// The `spike_` families as queried: a counter by its `_total` series,
    /// anything else by its family name.
    fn families(&self) -> BTreeSet<String> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .filter(|(name, _)| name.starts_with("spike_"))
            .map(|(name, kind)| match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            })
            .collect()
    }

    /// Every sample, by series (name and labels as printed).
    fn samples(&self) -> BTreeMap<String, f64> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
            .collect()
    }

    /// The value of one series, 0 when absent.
    fn value(&self, series: &str) -> f64 {
        self.samples().get(series).copied().unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_and_requests_move_theirs() {
    let cluster = LocalCluster::up(&[]);
    let replica = cluster.replica(1);
    let (health, id) = (replica.health_addr, replica.id);
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let route = "/v1/store/secrets?action=get";
    let requests =
        format!("spike_api_requests_total{{node=\"{id}\",route=\"{route}\",code=\"200\"}}");
    let latencies =
        format!("spike_api_request_duration_seconds_count{{node=\"{id}\",route=\"{route}\"}}");

    phase("a read moves its route's counter and histogram");
    let reply = put(&superuser, cluster.api(1), "apps/metrics", "v").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let before = Scrape::of(health);
    let writes_before: f64 = (1..=3)
        .map(|id| {
            Scrape::of(cluster.replica(id).health_addr).value(&format!(
                "spike_raft_write_duration_seconds_count{{node=\"{id}\"}}"
            ))
        })
        .sum();
    let reply = get(&superuser, cluster.api(1), "apps/metrics").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let after = Scrape::of(health);
    assert_eq!(
        after.value(&requests) - before.value(&requests),
        1.0,
        "{requests} in:\n{}",
        after.text
    );
    assert_eq!(
        after.value(&latencies) - before.value(&latencies),
        1.0,
        "{latencies} in:\n{}",
        after.text
    );

    phase("a write is timed on the leader");
    let reply = put(&superuser, cluster.api(1), "apps/metrics", "w").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let writes_after: f64 = (1..=3)
        .map(|id| {
            Scrape::of(cluster.replica(id).health_addr).value(&format!(
                "spike_raft_write_duration_seconds_count{{node=\"{id}\"}}"
            ))
        })
        .sum();
    assert!(
        writes_after > writes_before,
        "no leader timed the write: {writes_before} then {writes_after}"
    );

    phase("the exported families are exactly the documented ones");
    let scrape = Scrape::of(health);
    let exported = scrape.families();
    let documented = documented();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{health}/metrics exports {undocumented:?} that docs/metrics.md does not list, \
         and lacks {missing:?} that it lists:\n{}",
        scrape.text
    );
    assert!(
        scrape
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        scrape.head
    );
    assert!(scrape.text.ends_with("# EOF\n"), "{}", scrape.text);
    let expiry = scrape.value(&format!("spike_svid_expiry_seconds{{node=\"{id}\"}}"));
    assert!(expiry > 60.0, "the dev SVID expires in {expiry} s");
    assert_eq!(
        scrape.value(&format!("spike_audit_writable{{node=\"{id}\"}}")),
        1.0
    );

    phase("followers hold the leader's connection on their cluster port");
    for id in 1..=3 {
        let scrape = Scrape::of(cluster.replica(id).health_addr);
        if scrape.value(&format!("spike_raft_is_leader{{node=\"{id}\"}}")) == 0.0 {
            let open = format!("spike_connections_open{{node=\"{id}\",listener=\"cluster\"}}");
            assert!(scrape.value(&open) >= 1.0, "{open} in:\n{}", scrape.text);
        }
    }

    phase("a handshake that is not TLS is counted by reason");
    let failures = format!(
        "spike_tls_handshake_failures_total{{node=\"{id}\",listener=\"cluster\",reason=\"protocol\"}}"
    );
    let failed_before = Scrape::of(health).value(&failures);
    let mut plain = std::net::TcpStream::connect(replica.cluster_addr).expect("cluster port");
    plain
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("send plain text");
    let began = tokio::time::Instant::now();
    while Scrape::of(health).value(&failures) <= failed_before {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{failures} did not move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
