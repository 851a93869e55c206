//! Operators see a held vacuum horizon coming: `pgtaskd status`, `/metrics` and the status page
//! name the transaction that holds it (pid, application name, age), and the hot tables' dead
//! rows and sizes are metrics.

mod common;

use std::time::Duration;

use common::http::{node_with_http, request};
use common::migrated_db;
use common::node::wait_node_ready;

fn status(url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["status", "--database-url", url, "--horizon-warning", "1s"])
        .output()
        .expect("status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The warnings of `status` about the vacuum horizon (a root test run adds one about root).
fn horizon_warnings(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("WARNING") && l.contains("vacuum horizon"))
        .collect()
}

#[tokio::test]
async fn a_transaction_holding_the_horizon_is_named_by_status_and_metrics() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 1, &["--horizon-warning", "1s"]).await;
    wait_node_ready(&client, 1).await;
    assert!(
        horizon_warnings(&status(&db.url)).is_empty(),
        "nothing held yet"
    );

    let holder = common::connect(&format!("{}?application_name=nightly-report", db.url)).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let pid: i32 = holder
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT txid_current()) x",
            &[],
        )
        .await
        .expect("xid")
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let text = status(&db.url);
    let warning = horizon_warnings(&text)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    assert!(
        warning.contains("\"nightly-report\"") && warning.contains(&format!("pid {pid}")),
        "{warning}"
    );
    let (code, metrics) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(code, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pgtaskd_db_horizon_age_seconds{"))
        .unwrap_or_else(|| panic!("no horizon gauge in {metrics}"));
    assert!(
        line.contains("holder=\"nightly-report\"") && line.contains(&format!("pid=\"{pid}\"")),
        "{line}"
    );
    let age: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(age >= 1.0, "{line}");
    for table in ["task", "task_run", "ready"] {
        assert!(
            metrics.contains(&format!("pgtaskd_table_bytes{{table=\"{table}\"}}")),
            "no size of {table} in {metrics}"
        );
    }
    let (_, page) = request("GET", &format!("{base}/status"), None);
    assert!(page.contains("nightly-report"), "the status page warns too");

    holder.batch_execute("COMMIT").await.expect("commit");
    assert!(
        horizon_warnings(&status(&db.url)).is_empty(),
        "released: no warning"
    );
}
