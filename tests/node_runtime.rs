//! A real node process against a real database: limits, order, cancel, timeouts, output, bad
//! commands, and surviving lost connections.

mod common;

use std::time::Duration;

use common::migrated_db;
use common::node::{
    queue, state, task_processes, wait_node_ready, wait_state, wait_until, NodeProcess,
};

const LONG: Duration = Duration::from_secs(20);

async fn row_text(client: &tokio_postgres::Client, id: i64, column: &str) -> Option<String> {
    client
        .query_one(
            format!("SELECT {column}::text FROM long_task.task WHERE id = $1").as_str(),
            &[&id],
        )
        .await
        .expect("row")
        .get(0)
}

#[tokio::test]
async fn process_limit_is_never_exceeded_and_order_is_priority_then_fifo() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    std::fs::create_dir(&live).expect("mkdir");
    let log = dir.path().join("log");
    // Each task registers itself as live, records how many are live and its own name, then leaves.
    let script = format!(
        "touch {live}/$$; echo \"$(ls {live} | wc -l) $1\" >> {log}; sleep 0.2; rm {live}/$$",
        live = live.display(),
        log = log.display()
    );
    // The node starts paused (stop = 1) so that every task is waiting before the first claim.
    let _node = NodeProcess::start(&db.url, 1, &["--max-tasks", "3"]);
    wait_node_ready(&client, 1).await;
    client
        .execute("UPDATE long_task.worker SET stop = 1 WHERE id = 1", &[])
        .await
        .expect("pause");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let argv = |name: &str| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            script.clone(),
            "sh".to_owned(),
            name.to_owned(),
        ]
    };
    for (name, priority) in [
        ("a", 5),
        ("b", 1),
        ("c", 5),
        ("d", 0),
        ("e", 9),
        ("f", 1),
        ("g", 5),
        ("h", 5),
        ("i", 5),
    ] {
        client
            .execute(
                "INSERT INTO long_task.task (group_id, state_id, priority, command) VALUES (0, 'AW', $1, $2)",
                &[&priority, &argv(name)],
            )
            .await
            .expect("insert");
    }
    client
        .execute("UPDATE long_task.worker SET stop = 0 WHERE id = 1", &[])
        .await
        .expect("resume");
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
                &[],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
            == 9
    })
    .await
    .expect("all tasks succeed");

    let lines = std::fs::read_to_string(&log).expect("log");
    let mut max_live = 0;
    let mut order = Vec::new();
    for line in lines.lines() {
        let (n, name) = line.trim().split_once(' ').expect("line");
        max_live = max_live.max(n.trim().parse::<i32>().expect("count"));
        order.push(name.to_owned());
    }
    assert!(max_live <= 3, "at most 3 tasks at once, saw {max_live}");
    assert!(max_live >= 2, "tasks do run in parallel (saw {max_live})");
    // Started in claim order: priority first, then FIFO. Within one claim batch of 3 the start
    // order is not defined, so compare batches.
    let started: Vec<String> = client
        .query(
            "SELECT command[5]::text FROM long_task.task ORDER BY started, priority, id",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        &started[..3]
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        &["b", "d", "f"].iter().map(|s| s.to_string()).collect(),
        "the first batch is the three lowest priority values: {started:?}"
    );
    // Priority 9 runs last, give or take the claims in flight beside the one that took it (up
    // to three at once, each taking the best rows the others have not locked): at most two
    // tasks, each claimed concurrently with it, may start after it.
    let e_at = started.iter().position(|n| n == "e").expect("e started");
    assert!(
        e_at + 3 >= started.len(),
        "priority 9 runs in the last claim round: {started:?}"
    );
}

#[tokio::test]
async fn cancel_kills_the_whole_process_tree_even_when_sigterm_is_ignored() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    // Ignores SIGTERM and has a child that ignores it too.
    let id = queue(
        &client,
        &["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"],
    )
    .await;
    wait_state(&client, id, "AE", LONG).await;
    wait_until(LONG, || async {
        task_processes(&client, id).await.len() >= 3
    })
    .await
    .expect("the task and its children run");
    client
        .execute(
            "UPDATE long_task.task SET state_id='AC' WHERE id = $1 AND state_id like 'A%'",
            &[&id],
        )
        .await
        .expect("cancel");
    wait_state(&client, id, "CC", LONG).await;
    wait_until(Duration::from_secs(5), || async {
        task_processes(&client, id).await.is_empty()
    })
    .await
    .expect("no process of the cancelled task survives");
    assert_eq!(
        row_text(&client, id, "error").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        row_text(&client, id, "exit_signal").await.as_deref(),
        Some("9"),
        "SIGTERM ignored, so SIGKILL ended it"
    );
}

#[tokio::test]
async fn task_placeholder_cwd_timeout_and_output_tails() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &["--tail-lines", "3"]);
    wait_node_ready(&client, 1).await;

    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, cwd)
             VALUES (0, 'AW', '{sh,-c,\"echo task $1 in $(pwd); echo oops >&2\",sh,%TASK}', '/tmp') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    wait_state(&client, id, "CS", LONG).await;
    assert_eq!(
        row_text(&client, id, "stdout_tail").await,
        Some(format!("task {id} in /tmp"))
    );
    assert_eq!(
        row_text(&client, id, "stderr_tail").await.as_deref(),
        Some("oops")
    );
    assert_eq!(
        row_text(&client, id, "exit_code").await.as_deref(),
        Some("0")
    );

    let tail = queue(&client, &["seq", "1", "1000"]).await;
    wait_state(&client, tail, "CS", LONG).await;
    assert_eq!(
        row_text(&client, tail, "stdout_tail").await.as_deref(),
        Some("998\n999\n1000")
    );

    let failing = queue(&client, &["sh", "-c", "echo bad >&2; exit 7"]).await;
    wait_state(&client, failing, "CF", LONG).await;
    assert_eq!(
        row_text(&client, failing, "exit_code").await.as_deref(),
        Some("7")
    );
    assert_eq!(
        row_text(&client, failing, "error").await.as_deref(),
        Some("exited with code 7")
    );

    let slow: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, timeout) VALUES (0, 'AW', '{sleep,1000}', 0.5) RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    wait_state(&client, slow, "CF", LONG).await;
    assert_eq!(
        row_text(&client, slow, "error").await.as_deref(),
        Some("timeout")
    );
    wait_until(Duration::from_secs(2), || async {
        task_processes(&client, slow).await.is_empty()
    })
    .await
    .expect("no process of the timed-out task survives");
}

#[tokio::test]
async fn malformed_commands_fail_clearly_and_the_node_keeps_running() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let empty: i64 = client
        .query_one("INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'AW', '{}') RETURNING id", &[])
        .await
        .expect("insert")
        .get(0);
    let null: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id) VALUES (0, 'AW') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let missing = queue(&client, &["/nonexistent/program", "x"]).await;
    let bad_cwd: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, cwd) VALUES (0, 'AW', '{true}', '/no/such/dir') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    for (id, needle) in [
        (empty, "command is empty"),
        (null, "command is empty"),
        (missing, "not found"),
        (bad_cwd, "does not exist"),
    ] {
        wait_state(&client, id, "CF", LONG).await;
        let error = row_text(&client, id, "error").await.unwrap_or_default();
        assert!(
            error.contains(needle),
            "task {id}: error {error:?} should say {needle:?}"
        );
    }
    let ok = queue(&client, &["true"]).await;
    wait_state(&client, ok, "CS", LONG).await;
    assert!(node.is_running());
}

#[tokio::test]
async fn node_survives_terminated_backends_and_misses_no_task() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let warmup = queue(&client, &["true"]).await;
    wait_state(&client, warmup, "CS", LONG).await;

    for round in 0..3 {
        let killed: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name LIKE 'pgtaskd%') t",
                &[],
            )
            .await
            .expect("terminate")
            .get(0);
        assert!(
            killed >= 2,
            "round {round}: the node's listener and membership sessions were terminated ({killed})"
        );
        // Queued while the node has no listener: found by the resync after reconnect.
        let id = queue(&client, &["true"]).await;
        wait_state(&client, id, "CS", LONG).await;
    }
    assert!(node.is_running());
}

#[tokio::test]
async fn sigkilled_node_leaves_no_process_and_its_task_is_rerun_on_restart() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = queue(&client, &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]).await;
    wait_state(&client, id, "AE", LONG).await;
    wait_until(LONG, || async {
        task_processes(&client, id).await.len() >= 3
    })
    .await
    .expect("task tree runs");
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait_exit(Duration::from_secs(5));
    wait_until(Duration::from_secs(5), || async {
        task_processes(&client, id).await.is_empty()
    })
    .await
    .expect("no task process outlives a SIGKILLed node");
    assert_eq!(
        state(&client, id).await,
        "AE",
        "nobody else has taken it yet"
    );

    // The same worker restarted hands the task back to the queue and runs it again.
    client
        .execute(
            "UPDATE long_task.task SET command = '{true}' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("shorten");
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_state(&client, id, "CS", LONG).await;
    let attempt: i32 = client
        .query_one("SELECT attempt FROM long_task.task WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0);
    assert_eq!(attempt, 2);
}

#[tokio::test]
async fn a_second_node_with_the_same_worker_id_is_refused() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--database-url", &db.url, "--worker-id", "1"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker id 1 is in use by a live node"),
        "{stderr}"
    );
}
