//! Controlling a node through its `worker` row and signals: pause, drain, cancel-all, SIGTERM,
//! a live process limit, and surviving a PostgreSQL restart.

mod common;

use std::time::Duration;

use common::node::{
    queue, set_stop, state, task_processes, wait_node_ready, wait_state, wait_until, NodeProcess,
};
use common::{migrated_db, PrivateCluster};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(20);

async fn worker_row(client: &tokio_postgres::Client, worker_id: i64) -> (bool, i16) {
    let row = client
        .query_one(
            "SELECT active, stop FROM long_task.worker WHERE id = $1",
            &[&worker_id],
        )
        .await
        .expect("worker row stays");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn stop_1_pauses_claiming_and_0_resumes() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let running = queue(&client, &["sleep", "2"]).await;
    wait_state(&client, running, "AE", LONG).await;
    set_stop(&client, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = queue(&client, &["true"]).await;
    // The running task finishes, the new one is not claimed while paused.
    wait_state(&client, running, "CS", LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state(&client, waiting).await,
        "AW",
        "a paused node claims nothing"
    );
    set_stop(&client, 1, 0).await;
    wait_state(&client, waiting, "CS", LONG).await;
}

#[tokio::test]
async fn stop_2_drains_then_exits_and_keeps_the_worker_row() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let running = queue(&client, &["sleep", "1"]).await;
    wait_state(&client, running, "AE", LONG).await;
    set_stop(&client, 1, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = queue(&client, &["true"]).await;
    let status = node.wait_exit(LONG);
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    assert_eq!(
        state(&client, running).await,
        "CS",
        "the running task was allowed to finish"
    );
    assert_eq!(
        state(&client, waiting).await,
        "AW",
        "nothing new was claimed while draining"
    );
    assert_eq!(
        worker_row(&client, 1).await,
        (false, 2),
        "the row stays, inactive"
    );

    // A restart clears the exit request and works again.
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_state(&client, waiting, "CS", LONG).await;
    assert_eq!(worker_row(&client, 1).await, (true, 0));
}

#[tokio::test]
async fn stop_3_cancels_everything_then_exits() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let a = queue(&client, &["sleep", "1000"]).await;
    let b = queue(&client, &["sh", "-c", "trap '' TERM; sleep 1000"]).await;
    wait_state(&client, a, "AE", LONG).await;
    wait_state(&client, b, "AE", LONG).await;
    set_stop(&client, 1, 3).await;
    let status = node.wait_exit(LONG);
    assert!(status.success(), "{status:?}");
    assert_eq!(state(&client, a).await, "CC");
    assert_eq!(state(&client, b).await, "CC");
    for id in [a, b] {
        // SIGKILL is delivered asynchronously: allow the kernel a moment
        wait_until(Duration::from_secs(2), || async {
            task_processes(&client, id).await.is_empty()
        })
        .await
        .expect("no process of a cancelled task survives");
    }
}

#[tokio::test]
async fn sigterm_drains_within_the_grace_then_requeues_the_rest() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &["--shutdown-grace", "1s"]);
    wait_node_ready(&client, 1).await;
    let short = queue(&client, &["sleep", "0.3"]).await;
    let long = queue(&client, &["sleep", "1000"]).await;
    wait_state(&client, short, "AE", LONG).await;
    wait_state(&client, long, "AE", LONG).await;
    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(LONG);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        state(&client, short).await,
        "CS",
        "a task that ends within the grace finishes"
    );
    let row = client
        .query_one(
            "SELECT state_id::text, worker_id, error FROM long_task.task WHERE id = $1",
            &[&long],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, String>(0),
        "AW",
        "a task cut off by shutdown is re-queued"
    );
    assert_eq!(row.get::<_, Option<i64>>(1), None, "for any node");
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("node stopped")
    );
    wait_until(Duration::from_secs(2), || async {
        task_processes(&client, long).await.is_empty()
    })
    .await
    .expect("no process of the re-queued task survives");
    assert!(
        !worker_row(&client, 1).await.0,
        "the worker row is inactive"
    );
}

#[tokio::test]
async fn the_process_limit_changes_live() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &["--max-tasks", "1"]);
    wait_node_ready(&client, 1).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(queue(&client, &["sleep", "1000"]).await);
    }
    let executing = || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id = 'AE'",
                &[],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    wait_until(LONG, || async { executing().await == 1 })
        .await
        .expect("one runs");
    client
        .execute(
            "UPDATE long_task.worker SET max_task_count = 3 WHERE id = 1",
            &[],
        )
        .await
        .expect("raise limit");
    wait_until(LONG, || async { executing().await == 3 })
        .await
        .expect("three run");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executing().await, 3, "never more than the limit");
    // cancel all to clean up
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE state_id LIKE 'A%'",
            &[],
        )
        .await
        .expect("cancel");
    for id in ids {
        wait_state(&client, id, "CC", LONG).await;
    }
}

#[tokio::test]
async fn node_survives_a_postgres_restart_and_misses_no_task() {
    let private = PrivateCluster::new();
    let url = private.database("restart").await;
    let mut client = common::connect(&url).await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    let mut node = NodeProcess::start(&url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let before = queue(&client, &["true"]).await;
    wait_state(&client, before, "CS", LONG).await;
    // A task running across the restart finishes and its outcome is written afterwards.
    let across = queue(&client, &["sleep", "3"]).await;
    wait_state(&client, across, "AE", LONG).await;
    drop(client);

    let cluster = private.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.restart())
        .await
        .expect("join")
        .expect("restart postgres");

    let client = common::connect(&url).await;
    // Queued right after the restart, possibly before the node's listener is back.
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(queue(&client, &["true"]).await);
    }
    for id in after {
        wait_state(&client, id, "CS", LONG).await;
    }
    wait_state(&client, across, "CS", LONG).await;
    assert!(node.is_running());
}

#[tokio::test]
async fn sigterm_works_when_the_log_reader_is_gone() {
    let (db, client) = migrated_db().await;
    // stderr into a pipe whose reader goes away: every later log write fails with EPIPE
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--database-url", &db.url, "--worker-id", "1"])
        .args(common::node::FAST)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node");
    drop(child.stderr.take());
    wait_node_ready(&client, 1).await;
    let id = queue(&client, &["true"]).await;
    wait_state(&client, id, "CS", LONG).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .expect("sigterm");
    let deadline = std::time::Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node ignored SIGTERM after its log reader went away");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
