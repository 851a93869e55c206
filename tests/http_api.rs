//! Every HTTP route of a node, with malformed bodies and unknown ids; the metrics text parsed by a
//! Prometheus text-format parser; the memory floor seen in status and metrics; log formats.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{node_with_http, request, request_json};
use common::node::{queue, state, wait_node_ready, wait_state, wait_until, FAST};
use common::{migrated_db, task_count};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

/// A waiting task in a group (no node of these tests serves groups other than 0).
async fn queue_in_group(client: &tokio_postgres::Client, group: i32, program: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES ($1, 'AW', ARRAY[$2]) RETURNING id",
            &[&group, &program],
        )
        .await
        .expect("insert")
        .get(0)
}

#[tokio::test]
async fn task_routes_and_bad_input() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 1, &[]).await;
    wait_node_ready(&client, 1).await;

    // A valid task runs.
    let (status, body) = request_json(
        "POST",
        &format!("{base}/tasks"),
        Some(
            r#"{"command": ["sh", "-c", "echo hi"], "group_id": 0, "priority": 5, "params": {"k": 1}}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().expect("id");
    wait_state(&client, id, "CS", LONG).await;
    let (status, row) = request_json("GET", &format!("{base}/tasks/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(row["state_id"], "CS");
    assert_eq!(row["priority"], 5);
    assert_eq!(row["params"], json!({"k": 1}));
    assert_eq!(row["stdout_tail"], "hi");

    // Malformed input: 4xx with a JSON error naming the problem, and nothing written.
    let before = task_count(&client).await;
    for (body, want, mentions) in [
        ("not json", 400, "bad task"),
        ("[1,2]", 400, "bad task"),
        (r#"{"command": "echo"}"#, 400, "bad task"),
        (r#"{"command": ["true"], "colour": "red"}"#, 400, "colour"),
        (r#"{"priority": 1}"#, 400, "command"),
        (r#"{"command": []}"#, 422, "command"),
        (
            r#"{"command": ["true"], "state_id": "AE"}"#,
            422,
            "state_id",
        ),
        (
            r#"{"command": ["true"], "max_attempts": 0}"#,
            422,
            "max_attempts",
        ),
        (r#"{"command": ["true"], "timeout": -3}"#, 422, "timeout"),
        (
            r#"{"command": ["true"], "shed_period_id": "YEAR", "shed_period_count": 1}"#,
            422,
            "shed_period_id",
        ),
        (
            r#"{"command": ["true"], "group_id": 99999999999}"#,
            400,
            "bad task",
        ),
    ] {
        let (status, err) = request_json("POST", &format!("{base}/tasks"), Some(body));
        assert_eq!(status, want, "{body}: {err}");
        let message = err["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}: no error field: {err}"));
        assert!(message.contains(mentions), "{body}: {message}");
    }
    assert_eq!(
        task_count(&client).await,
        before,
        "a refused request writes nothing"
    );

    // Unknown and malformed ids.
    let (status, err) = request_json("GET", &format!("{base}/tasks/987654"), None);
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].is_string());
    let (status, _) = request_json("GET", &format!("{base}/tasks/abc"), None);
    assert_eq!(status, 400);
    let (status, _) = request_json("POST", &format!("{base}/tasks/987654/cancel"), None);
    assert_eq!(status, 404);
    let (status, _) = request_json("POST", &format!("{base}/tasks/x/cancel"), None);
    assert_eq!(status, 400);
    let (status, _) = request_json("GET", &format!("{base}/nowhere"), None);
    assert_eq!(status, 404);

    // Listing.
    let (status, rows) = request_json("GET", &format!("{base}/tasks?state=CS"), None);
    assert_eq!(status, 200);
    let rows = rows.as_array().expect("array");
    assert!(rows.iter().any(|r| r["id"] == id), "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r["state_id"] == "CS" && r.get("stdout_tail").is_none()));
    let (status, rows) = request_json("GET", &format!("{base}/tasks?state=AW&group=0"), None);
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(0)));
    for bad in ["state=XX", "group=zero", "limit=0", "colour=red"] {
        let (status, err) = request_json("GET", &format!("{base}/tasks?{bad}"), None);
        assert_eq!(status, 400, "{bad}: {err}");
    }

    // Cancel a running task: its process is killed and it ends CC; a second cancel conflicts.
    let (_, body) = request_json(
        "POST",
        &format!("{base}/tasks"),
        Some(r#"{"command": ["sleep", "30"]}"#),
    );
    let sleeper = body["id"].as_i64().expect("id");
    wait_state(&client, sleeper, "AE", LONG).await;
    let (status, moved) = request_json("POST", &format!("{base}/tasks/{sleeper}/cancel"), None);
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["after"], "AC");
    wait_state(&client, sleeper, "CC", LONG).await;
    let (status, err) = request_json("POST", &format!("{base}/tasks/{sleeper}/cancel"), None);
    assert_eq!(status, 409, "{err}");
    let (status, moved) = request_json("POST", &format!("{base}/tasks/{sleeper}/requeue"), None);
    assert_eq!(
        (status, moved["after"].as_str()),
        (200, Some("AW")),
        "{moved}"
    );
    request_json("POST", &format!("{base}/tasks/{sleeper}/cancel"), None);
}

#[tokio::test]
async fn cluster_health_and_readiness() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 3, &["--node-name", "http-node"]).await;
    wait_node_ready(&client, 3).await;

    let (status, health) = request_json("GET", &format!("{base}/healthz"), None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    wait_until(LONG, || async {
        request("GET", &format!("{base}/readyz"), None).0 == 200
    })
    .await
    .expect("the node becomes ready");
    let (_, ready) = request_json("GET", &format!("{base}/readyz"), None);
    assert_eq!(ready["checks"]["migrated"]["ok"], true, "{ready}");

    queue_in_group(&client, 9, "true").await;
    let (status, cluster) = request_json("GET", &format!("{base}/cluster"), None);
    assert_eq!(status, 200);
    let node = cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == 3)
        .expect("node 3")
        .clone();
    assert_eq!(node["alive"], true);
    assert_eq!(node["node_name"], "http-node");
    let group9 = cluster["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group_id"] == 9)
        .expect("group 9")
        .clone();
    assert_eq!(group9["waiting"], 1, "{group9}");

    // Readiness fails when the schema is not the one this node expects.
    client
        .execute(
            "UPDATE long_task.schema_migrations SET checksum = checksum + 1 WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let (status, ready) = request_json("GET", &format!("{base}/readyz"), None);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["migrated"]["ok"], false, "{ready}");
}

type Samples = Vec<prometheus_parse::Sample>;

fn scrape(base: &str) -> Samples {
    let (status, text) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid Prometheus text format")
        .samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 4, &[]).await;
    wait_node_ready(&client, 4).await;
    let ok = queue(&client, &["true"]).await;
    let failing = queue(&client, &["false"]).await;
    wait_state(&client, ok, "CS", LONG).await;
    wait_state(&client, failing, "CF", LONG).await;
    let running = queue(&client, &["sleep", "30"]).await;
    wait_state(&client, running, "AE", LONG).await;
    for _ in 0..2 {
        queue_in_group(&client, 5, "true").await;
    }

    let mut samples = Samples::new();
    wait_until(LONG, || {
        samples = scrape(&base);
        let done = value(
            &samples,
            "pgtaskd_tasks_finished_total",
            &[("group", "0"), ("state", "CF")],
        ) == Some(1.0);
        async move { done }
    })
    .await
    .unwrap_or_else(|_| panic!("outcomes not counted: {samples:?}"));

    let g0 = [("group", "0")];
    assert_eq!(
        value(&samples, "pgtaskd_tasks_started_total", &g0),
        Some(3.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgtaskd_tasks_finished_total",
            &[("group", "0"), ("state", "CS")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgtaskd_dispatch_latency_seconds_count", &g0),
        Some(3.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgtaskd_run_duration_seconds_count",
            &[("group", "0"), ("state", "CS")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgtaskd_queue_depth", &[("group", "5")]),
        Some(2.0)
    );
    assert!(
        value(
            &samples,
            "pgtaskd_oldest_waiting_seconds",
            &[("group", "5")]
        )
        .expect("oldest")
            >= 0.0
    );
    assert_eq!(value(&samples, "pgtaskd_running_processes", &[]), Some(1.0));
    // three claims took a task each (more may have come back empty); two outcomes were written,
    // one batch or two
    let claims = value(
        &samples,
        "pgtaskd_db_write_seconds_count",
        &[("write", "claim")],
    )
    .expect("claim writes");
    assert!(claims >= 3.0, "{claims}");
    let writes = value(
        &samples,
        "pgtaskd_db_write_seconds_count",
        &[("write", "outcomes")],
    )
    .expect("outcome writes");
    assert!((1.0..=2.0).contains(&writes), "{writes}");
    let age = value(&samples, "pgtaskd_heartbeat_age_seconds", &[]).expect("heartbeat age");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(
        value(
            &samples,
            "pgtaskd_reconnects_total",
            &[("connection", "listener")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "pgtaskd_fenced_writes_total", &[]),
        Some(0.0)
    );
    assert_eq!(value(&samples, "pgtaskd_low_memory", &[]), Some(0.0));
    assert!(value(&samples, "pgtaskd_free_memory_bytes", &[]).expect("free memory") > 0.0);
    // the histogram buckets are cumulative and end with +Inf
    let latency = samples
        .iter()
        .find(|s| s.metric == "pgtaskd_dispatch_latency_seconds")
        .expect("latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &latency.value else {
        panic!("not a histogram: {latency:?}")
    };
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert!(buckets.last().expect("buckets").less_than.is_infinite());
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&running],
        )
        .await
        .expect("cancel");
    wait_state(&client, running, "CC", LONG).await;
}

#[tokio::test]
async fn a_node_under_its_memory_floor_claims_nothing_and_says_so() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 5, &["--min-free-memory", "1000TiB"]).await;
    wait_node_ready(&client, 5).await;
    let id = queue(&client, &["true"]).await;
    let mut samples = Samples::new();
    wait_until(LONG, || {
        samples = scrape(&base);
        let low = value(&samples, "pgtaskd_low_memory", &[]) == Some(1.0);
        async move { low }
    })
    .await
    .unwrap_or_else(|_| panic!("low memory not reported: {samples:?}"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        state(&client, id).await,
        "AW",
        "nothing is claimed under the floor"
    );
    let (_, cluster) = request_json("GET", &format!("{base}/cluster"), None);
    let node = cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == 5)
        .expect("node")
        .clone();
    assert_eq!(node["low_memory"], true, "{node}");
    assert_eq!(node["min_free_memory"], json!(1000u64 * (1u64 << 40)));
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["status", "--database-url", &db.url])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("LOW MEMORY"), "{text}");

    // Lifting the floor (a restart without it) lets the task run.
    drop(_node);
    let _node = common::node::NodeProcess::start(&db.url, 5, &[]);
    wait_state(&client, id, "CS", LONG).await;
}

/// Reads a node's stderr until a line contains `needle`; returns that line.
fn node_log_line(url: &str, format: &str, needle: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args([
            "node",
            "--database-url",
            url,
            "--worker-id",
            "6",
            "--log-format",
            format,
        ])
        .args(FAST)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut found = None;
    for line in BufReader::new(stderr).lines().take(200) {
        let line = line.expect("read");
        if line.contains(needle) {
            found = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("no `{needle}` line in the {format} log"))
}

#[tokio::test]
async fn log_formats_carry_the_node_span() {
    let (db, _client) = migrated_db().await;
    let url = db.url.clone();
    let (logfmt, json_line) = tokio::task::spawn_blocking(move || {
        (
            node_log_line(&url, "logfmt", "node started"),
            node_log_line(&url, "json", "node started"),
        )
    })
    .await
    .expect("join");
    assert!(logfmt.contains("level=info"), "{logfmt}");
    assert!(logfmt.contains("worker_id=6"), "{logfmt}");
    let parsed: HashMap<String, serde_json::Value> =
        serde_json::from_str(&json_line).unwrap_or_else(|e| panic!("not JSON ({e}): {json_line}"));
    assert_eq!(parsed["level"], "INFO");
    assert!(json_line.contains("\"worker_id\":6"), "{json_line}");
}
