//! The coordinator's watcher sessions are capped (`--watch-sessions`): with a cap of 1 and two
//! other live nodes it holds exactly one watcher session; the node it does not watch is polled
//! (`pg_locks`, every `coordinator_interval`), so its SIGKILL is still noticed long before any
//! heartbeat deadline (60 s here), and so is the watched node's.

mod common;

use std::time::Duration;

use common::migrated_db;
use common::node::{owner, queue, wait_coordinator, wait_node_ready, wait_until, NodeProcess};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

/// The coordinator's (worker 3) watcher sessions: the worker ids they wait on.
async fn watched(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query(
            "SELECT substr(application_name, length('pgtaskd w3 watch w') + 1)::bigint
               FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE 'pgtaskd w3 watch w%'
              ORDER BY 1",
            &[],
        )
        .await
        .expect("watcher sessions")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn beyond_the_watcher_cap_a_killed_node_is_noticed_by_the_poll_not_its_heartbeat() {
    let (db, client) = migrated_db().await;
    // A 60 s heartbeat timeout: no round for want of a heartbeat within the test's waits, so only
    // a watcher or the poll can hand a killed node's task over.
    let slow = [
        "--heartbeat-timeout",
        "60s",
        "--heartbeat-interval",
        "2s",
        "--kill-grace",
        "500ms",
        "--watch-sessions",
        "1",
    ];
    let _c = NodeProcess::start_with(&db.url, 3, &[&["--max-tasks", "2"][..], &slow].concat());
    wait_node_ready(&client, 3).await;
    wait_coordinator(&client, 0, LONG, |w, _| w == 3).await;
    client
        .execute(
            "UPDATE long_task.worker SET max_task_count = 0 WHERE id = 3",
            &[],
        )
        .await
        .expect("the coordinator's node takes nothing yet");
    let mut nodes = std::collections::HashMap::new();
    for w in [1_i64, 2] {
        nodes.insert(
            w,
            NodeProcess::start_with(&db.url, w, &[&["--max-tasks", "1"][..], &slow].concat()),
        );
        wait_node_ready(&client, w).await;
    }
    let a = queue(&client, &["sleep", "1000"]).await;
    let b = queue(&client, &["sleep", "1000"]).await;
    wait_until(LONG, || async {
        let (x, y) = (owner(&client, a).await.0, owner(&client, b).await.0);
        matches!((x, y), (Some(1), Some(2)) | (Some(2), Some(1)))
    })
    .await
    .expect("one task on each of nodes 1 and 2");
    // exactly one watcher session, whatever the number of live nodes
    wait_until(LONG, || async { watched(&client).await.len() == 1 })
        .await
        .expect("the coordinator has one watcher session");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sessions = watched(&client).await;
    assert_eq!(sessions.len(), 1, "the cap holds: {sessions:?}");
    let watched_node = sessions[0];
    let polled_node = if watched_node == 1 { 2 } else { 1 };
    client
        .execute(
            "UPDATE long_task.worker SET max_task_count = 2 WHERE id = 3",
            &[],
        )
        .await
        .expect("the coordinator's node takes the orphans");

    for victim in [polled_node, watched_node] {
        let task = if owner(&client, a).await.0 == Some(victim) {
            a
        } else {
            b
        };
        let mut node = nodes.remove(&victim).expect("the victim");
        let killed = std::time::Instant::now();
        node.signal(Signal::SIGKILL);
        let _ = node.child.wait();
        wait_until(LONG, || async { owner(&client, task).await.0 == Some(3) })
            .await
            .unwrap_or_else(|_| panic!("node {victim}'s task was not handed over"));
        let took = killed.elapsed();
        // the poll runs every coordinator_interval (250 ms); far from the 60 s heartbeat timeout
        assert!(
            took < Duration::from_secs(5),
            "node {victim} noticed after {took:?}"
        );
        let detail: String = client
            .query_one(
                "SELECT detail FROM long_task.event WHERE kind = 'node_dead' AND worker_id = $1",
                &[&victim],
            )
            .await
            .expect("the victim declared dead once")
            .get(0);
        assert_eq!(detail, "liveness lock free");
    }
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE state_id IN ('AE', 'AW')",
            &[],
        )
        .await
        .expect("cancel");
}
