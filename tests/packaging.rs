//! What a packager and an operator get besides the node: `--version` with the schema version,
//! shell completions and manual pages generated from the command line definition, and the
//! Grafana dashboard, whose every queried metric must exist in a real node's `/metrics` (and
//! every metric a node exports must be on the dashboard).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::http::{node_with_http, request};
use common::migrated_db;
use common::node::{queue, wait_state};
use serde_json::Value;

fn pgtaskd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run pgtaskd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_binary_and_the_schema_it_carries() {
    let (code, out, _) = pgtaskd(&["--version"]);
    assert_eq!(code, 0);
    let want = format!(
        "pgtaskd {} (schema version {}, schema checksum {:016x})\n",
        env!("CARGO_PKG_VERSION"),
        pgtaskd::db::migrate::latest_version(),
        pgtaskd::db::migrate::schema_checksum()
    );
    assert_eq!(out, want);
}

#[test]
fn completions_and_manual_pages_cover_the_verbs() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = pgtaskd(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for verb in ["node", "dev", "submit", "completions", "man"] {
            assert!(out.contains(verb), "{shell} completions lack {verb}");
        }
        assert!(
            !out.contains("__guardian"),
            "{shell}: the hidden verb leaked"
        );
    }
    let (code, _, err) = pgtaskd(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{err}");

    let (code, page, _) = pgtaskd(&["man"]);
    assert_eq!(code, 0);
    assert!(
        page.starts_with(".ie") && page.contains(".TH pgtaskd 1"),
        "{page}"
    );
    assert!(page.contains("pgtaskd\\-node(1)"), "{page}");

    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("man1");
    let (code, _, err) = pgtaskd(&["man", "--out-dir", out_dir.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    for page in [
        "pgtaskd.1",
        "pgtaskd-node.1",
        "pgtaskd-dev.1",
        "pgtaskd-config-check.1",
    ] {
        let text =
            std::fs::read_to_string(out_dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}

/// Every `pgtaskd_*` identifier in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("pgtaskd_") {
                into.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
}

/// Every query of the dashboard: panel targets (`expr`) and template variables (`query`).
fn queries(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => into.push(s.clone()),
                    _ => queries(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, into)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_exists_in_a_nodes_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/pgtaskd.json");
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "pgtaskd");
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let mut queried = BTreeSet::new();
    for q in &all {
        metric_names(q, &mut queried);
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let exprs = panel["targets"].as_array().map_or(0, |t| t.len());
        assert!(exprs > 0, "panel {} queries nothing", panel["title"]);
    }

    // A node that has run a task (so labelled series and histograms have samples).
    let (db, client) = migrated_db().await;
    // (limits that never bind, so that their gauges have samples)
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running, rate_limit) VALUES (0, 100, 1000);
             INSERT INTO long_task.key_limit VALUES (0, 'k', 10);",
        )
        .await
        .expect("limits");
    let (_node, base) = node_with_http(&db.url, 41, &[]).await;
    let id = queue(&client, &["true"]).await;
    wait_state(&client, id, "CS", Duration::from_secs(20)).await;
    let (status, metrics) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200);
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.extend(rest.split_whitespace().next().map(str::to_owned));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if !name.is_empty() {
                samples.insert(name.to_owned());
            }
        }
    }
    let missing: Vec<_> = queried.difference(&samples).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics a node does not export: {missing:?}\nexported: {samples:?}"
    );
    // The other way round: a metric nobody can see on the dashboard is one nobody watches.
    let shown: BTreeSet<String> = queried
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|base| families.contains(*base))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let unshown: Vec<_> = families
        .iter()
        .filter(|f| f.starts_with("pgtaskd_") && !shown.contains(*f))
        .collect();
    assert!(
        unshown.is_empty(),
        "metrics missing from deploy/grafana/pgtaskd.json: {unshown:?}"
    );
}
