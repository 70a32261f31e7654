//! The Helm chart's Grafana dashboard (deploy/helm/spike/dashboards) may
//! only query metrics the replicas really export: a panel on a metric that
//! does not exist shows "No data" exactly when it is needed.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use spike_dev_cluster::probe;
use spike_tests::{ApiClient, LocalCluster, get};

const DASHBOARD: &str = "../deploy/helm/spike/dashboards/spike.json";

/// The `spike_` metric names in a PromQL expression: identifiers that start
/// with `spike_`, outside quoted label values.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quote = None;
    let mut previous = ' ';
    let mut chars = expr.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match quote {
            Some(open) => {
                if c == '\\' {
                    chars.next();
                } else if c == open {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if !(previous.is_ascii_alphanumeric() || previous == '_' || previous == ':')
                && expr[at..].starts_with("spike_") =>
            {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                for _ in 1..name.len() {
                    chars.next();
                }
                previous = name.chars().last().unwrap_or(' ');
                names.insert(name);
                continue;
            }
            None => {}
        }
        previous = c;
    }
    names
}

/// Every panel target's `expr` (rows nest panels), with its panel's title.
fn panel_queries(panels: &Value, queries: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            queries.push((title.to_owned(), expr.to_owned()));
        }
        panel_queries(&panel["panels"], queries);
    }
}

#[test]
fn metric_names_are_read_outside_label_values() {
    let names = metric_names(
        r#"max(spike_raft_last_log_index{pod=~"spike_x.*"}) - on() group_right() spike_raft_applied_index"#,
    );
    let expected: BTreeSet<String> = ["spike_raft_applied_index", "spike_raft_last_log_index"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
    assert!(metric_names("up{job=\"spike\"} + not_spike_x").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_name_metrics_the_replicas_export() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");

    let mut queries = Vec::new();
    panel_queries(&dashboard["panels"], &mut queries);
    assert!(!queries.is_empty(), "the dashboard has no panel query");
    // The variables' queries (label_values(...)) name metrics too.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(definition) = variable["definition"].as_str() {
            queries.push((
                format!("variable ${}", variable["name"]),
                definition.to_owned(),
            ));
        }
    }
    let mut wanted = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{title:?} queries no spike_ metric: {expr}"
        );
        wanted.extend(names);
    }

    let cluster = LocalCluster::up(&[]);
    // A route's API series appear with its first request.
    let superuser = ApiClient::new(&cluster.identity("superuser").await);
    let read = get(&superuser, cluster.api(1), "apps/dashboard").await;
    assert_eq!(read.status, 404, "{:?}", read.body);
    let health = cluster.replica(1).health_addr;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| probe::gauge(health, name, probe::PROBE_TIMEOUT).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that {health}/metrics does not export: {missing:?} \
         (it names {wanted:?})"
    );
}
