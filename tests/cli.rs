//! The CLI verbs end to end against a real database: exit codes, text and JSON output.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::cli::{code, pgtaskd};
use common::migrated_db;
use common::node::{wait_node_ready, wait_state, NodeProcess};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    assert_eq!(code(out), 0, "stderr: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test]
async fn submit_show_ls_cancel_requeue_with_exit_codes() {
    let (db, _client) = migrated_db().await;
    let url = db.url.as_str();

    let out = pgtaskd(
        url,
        &[
            "submit",
            "--group",
            "3",
            "--priority",
            "-2",
            "--",
            "echo",
            "hi",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id: i64 = stdout(&out).trim().parse().expect("submit prints the id");

    let row = json(&pgtaskd(url, &["show", &id.to_string(), "--json"]));
    assert_eq!(row["state_id"], "AW");
    assert_eq!(row["group_id"], 3);
    assert_eq!(row["priority"], -2);
    assert_eq!(row["command"], serde_json::json!(["echo", "hi"]));

    let second = json(&pgtaskd(
        url,
        &[
            "submit",
            "--json",
            "--max-attempts",
            "3",
            "--timeout",
            "90s",
            "--",
            "true",
        ],
    ));
    let id2 = second["id"].as_i64().expect("json id");
    let row = json(&pgtaskd(url, &["show", &id2.to_string(), "--json"]));
    assert_eq!(row["max_attempts"], 3);
    assert_eq!(row["timeout"], 90.0);

    let listed = json(&pgtaskd(
        url,
        &["ls", "--state", "AW", "--group", "3", "--json"],
    ));
    let ids: Vec<i64> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, vec![id], "only group 3's waiting task");
    let text = stdout(&pgtaskd(url, &["ls"]));
    assert!(text.starts_with("ID") && text.contains("echo hi"), "{text}");

    let cancelled = json(&pgtaskd(url, &["cancel", &id.to_string(), "--json"]));
    assert_eq!(cancelled["before"], "AW");
    assert_eq!(cancelled["after"], "CC", "a waiting task ends CC at once");
    let again = pgtaskd(url, &["cancel", &id.to_string()]);
    assert_eq!(
        code(&again),
        4,
        "a final task cannot be cancelled: {}",
        stderr(&again)
    );
    assert!(stderr(&again).contains("CC"), "{}", stderr(&again));

    let out = pgtaskd(url, &["requeue", &id.to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("CC -> AW"), "{}", stdout(&out));

    for verb in ["show", "cancel", "requeue", "logs"] {
        let out = pgtaskd(url, &[verb, "987654"]);
        assert_eq!(code(&out), 3, "{verb} of an unknown id: {}", stderr(&out));
    }
}

#[tokio::test]
async fn usage_errors_exit_2_and_database_errors_exit_1() {
    let (db, _client) = migrated_db().await;
    let url = db.url.as_str();
    for args in [
        vec!["ls", "--state", "XX"],
        vec!["submit", "--clone", "--", "true"],
        vec!["submit", "--every", "500ms", "--", "true"],
        vec!["submit", "--at", "tomorrow", "--", "true"],
        vec!["submit"],
        vec!["show", "abc"],
        vec!["frobnicate"],
    ] {
        let out = pgtaskd(url, &args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    let out = pgtaskd(
        "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
        &["ls"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("connect"), "{}", stderr(&out));
    let out = pgtaskd(url, &["submit", "--", ""]);
    assert_eq!(
        code(&out),
        2,
        "an empty program is refused: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn schedules_from_the_command_line() {
    let (db, _client) = migrated_db().await;
    let url = db.url.as_str();
    let every = json(&pgtaskd(
        url,
        &["submit", "--json", "--every", "10s", "--", "true"],
    ));
    let row = json(&pgtaskd(url, &["show", &every["id"].to_string(), "--json"]));
    assert_eq!(row["state_id"], "AW", "runs now");
    assert_eq!(row["shed_period_id"], "SEC");
    assert_eq!(row["shed_period_count"], 10);
    assert!(row["next_start"].is_string(), "{row}");

    let at = json(&pgtaskd(
        url,
        &["submit", "--json", "--at", "+1h", "--", "true"],
    ));
    let row = json(&pgtaskd(url, &["show", &at["id"].to_string(), "--json"]));
    assert_eq!(row["state_id"], "DR", "waits for its time");
    assert!(row["shed_period_id"].is_null());

    let clone = json(&pgtaskd(
        url,
        &[
            "submit",
            "--json",
            "--every",
            "1day",
            "--clone",
            "--at",
            "2030-01-01T00:00:00Z",
            "--",
            "true",
        ],
    ));
    let row = json(&pgtaskd(url, &["show", &clone["id"].to_string(), "--json"]));
    assert_eq!(row["shed_clone"], true);
    assert_eq!(row["shed_period_id"], "DAY");
    assert!(
        row["next_start"]
            .as_str()
            .expect("next_start")
            .starts_with("2030-01-01"),
        "{row}"
    );
}

#[tokio::test]
async fn logs_and_status_with_a_running_node() {
    let (db, client) = migrated_db().await;
    let url = db.url.as_str();
    let _node = NodeProcess::start(url, 7, &["--node-name", "cli-node"]);
    wait_node_ready(&client, 7).await;
    let out = pgtaskd(
        url,
        &[
            "submit",
            "--",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exit 3",
        ],
    );
    let id: i64 = stdout(&out).trim().parse().expect("id");
    wait_state(&client, id, "CF", LONG).await;

    let out = pgtaskd(url, &["logs", &id.to_string()]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "out-line\n");
    assert_eq!(stderr(&out), "err-line\n");
    let logs = json(&pgtaskd(url, &["logs", &id.to_string(), "--json"]));
    assert_eq!(logs["stdout_tail"], "out-line");

    let text = stdout(&pgtaskd(url, &["show", &id.to_string()]));
    assert!(
        text.contains("exit_code: 3") && text.contains("--- stderr_tail ---"),
        "{text}"
    );

    let status = json(&pgtaskd(url, &["status", "--json"]));
    let node = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == 7)
        .expect("node 7")
        .clone();
    assert_eq!(node["alive"], true, "{node}");
    assert!(
        node["free_memory"].as_i64().expect("free memory reported") > 0,
        "{node}"
    );
    assert!(
        status["recent"]
            .as_array()
            .expect("recent")
            .iter()
            .any(|t| t["id"] == id),
        "{status}"
    );
    let text = stdout(&pgtaskd(url, &["status"]));
    assert!(
        text.contains("cli-node") && text.contains("QUEUES"),
        "{text}"
    );
}

#[test]
fn config_check_prints_the_effective_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[node]\ngroup_id = 4\nmax_tasks = 2\nhttp = \"127.0.0.1:9100\"\nmin_free_memory = \"256MiB\"\ndatabase_url = \"postgresql://app:secret@db/app\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["config", "check"])
        .arg(&good)
        .env_remove("DATABASE_URL")
        .env("PGTASKD_MAX_TASKS", "16")
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("group_id = 4"), "{text}");
    assert!(
        text.contains("max_tasks = 16"),
        "the environment layers over the file: {text}"
    );
    assert!(text.contains("min_free_memory = 268435456"), "{text}");
    assert!(!text.contains("secret"), "the password is masked: {text}");

    for (content, key) in [
        ("max_taks = 3\n", "max_taks"),
        ("heartbeat_interval = \"soon\"\n", "heartbeat_interval"),
        ("pool_size = 1\n", "pool_size"),
        ("http = \"nowhere\"\n", "http"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, content).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
            .args(["config", "check"])
            .arg(&bad)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run");
        assert_eq!(code(&out), 5, "{content}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{content}: {}", stderr(&out));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["config", "check", "/nonexistent/node.toml"])
        .output()
        .expect("run");
    assert_eq!(code(&out), 5, "{}", stderr(&out));
}
