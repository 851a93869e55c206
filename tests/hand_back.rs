//! One rule for runs their node abandoned (`long_task.hand_back`), whoever hands them back: the
//! coordinator for a dead node, the node itself at restart or shutdown, a self-fenced node. Every
//! path counts lost re-runs against `max_lost_reruns`, and every abandoned attempt — a cancelled
//! one included — gets its `task_run` row and an event.

mod common;

use std::time::Duration;

use common::migrated_db;
use common::node::{queue, state, wait_node_ready, wait_state, NodeProcess};
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(20);

/// Queues a task with `max_lost_reruns` and claims it as worker 1; returns (id, run_id).
async fn running(client: &Client, max_lost_reruns: i32) -> (i64, Uuid) {
    client
        .execute(
            "INSERT INTO long_task.task (state_id, command, max_lost_reruns) VALUES ('AW', '{true}', $1)",
            &[&max_lost_reruns],
        )
        .await
        .expect("queue");
    let row = client
        .query_one("SELECT id, run_id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim");
    (row.get(0), row.get(1))
}

async fn row(client: &Client, id: i64) -> (String, Option<String>, i32) {
    let r = client
        .query_one(
            "SELECT state_id::text, error, lost_reruns FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    (r.get(0), r.get(1), r.get(2))
}

async fn history(client: &Client, id: i64) -> Vec<(Uuid, String, Option<String>)> {
    client
        .query(
            "SELECT run_id, state_id::text, error FROM long_task.task_run WHERE task_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn events(client: &Client, id: i64) -> Vec<(String, Option<i64>, Option<String>)> {
    client
        .query(
            "SELECT kind, term, detail FROM long_task.event WHERE task_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_lost_run_is_requeued_while_lost_reruns_remain_then_fails() {
    let (_db, client) = migrated_db().await;
    let (id, run1) = running(&client, 1).await;
    let kinds: Vec<String> = client
        .query(
            "SELECT kind FROM long_task.hand_back(1, 'node restarted', 1)",
            &[],
        )
        .await
        .expect("hand back")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["requeued"]);
    assert_eq!(
        row(&client, id).await,
        ("AW".into(), Some("node restarted".into()), 1)
    );
    assert_eq!(
        history(&client, id).await,
        [(run1, "CF".into(), Some("node restarted".into()))]
    );

    // The second loss exhausts max_lost_reruns = 1: CF 'worker lost', whoever hands it back.
    let run2: Uuid = client
        .query_one("SELECT run_id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim again")
        .get(0);
    client
        .execute(
            "SELECT * FROM long_task.hand_back(1, 'worker lost', 2, NULL, NULL, 0, 7)",
            &[],
        )
        .await
        .expect("hand back under a term");
    assert_eq!(
        row(&client, id).await,
        ("CF".into(), Some("worker lost".into()), 1)
    );
    assert_eq!(history(&client, id).await.len(), 2);
    assert_eq!(history(&client, id).await[1].0, run2);
    assert_eq!(
        events(&client, id).await,
        [
            ("requeued".into(), None, Some("node restarted".into())),
            ("lost_failed".into(), Some(7), Some("worker lost".into())),
        ]
    );
}

#[tokio::test]
async fn a_lost_cancel_request_ends_cc_with_its_attempt_recorded() {
    let (_db, client) = migrated_db().await;
    let (id, run_id) = running(&client, 1).await;
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("cancel");
    client
        .execute(
            "SELECT * FROM long_task.hand_back(1, 'worker lost', 2)",
            &[],
        )
        .await
        .expect("hand back");
    assert_eq!(
        row(&client, id).await,
        ("CC".into(), Some("cancelled (worker lost)".into()), 0)
    );
    assert_eq!(
        history(&client, id).await,
        [(run_id, "CC".into(), Some("cancelled (worker lost)".into()))],
        "every attempt is recorded, a cancelled one too"
    );
    assert_eq!(events(&client, id).await[0].0, "lost_cancelled");
}

#[tokio::test]
async fn only_the_named_runs_of_the_node_are_handed_back() {
    let (_db, client) = migrated_db().await;
    let (a, run_a) = running(&client, 1).await;
    let (b, _) = running(&client, 1).await;
    // a stale run id of `b` and the current one of `a`
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.hand_back(1, 'self-fenced', 1, $1, $2)",
            &[&vec![a, b], &vec![run_a, Uuid::new_v4()]],
        )
        .await
        .expect("hand back")
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(row(&client, a).await.0, "AW");
    assert_eq!(
        row(&client, b).await.0,
        "AE",
        "a stale run id changes nothing"
    );
    // another node's runs are never touched
    let n: i64 = client
        .query_one("SELECT count(*) FROM long_task.hand_back(2, 'x', 2)", &[])
        .await
        .expect("hand back")
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_restarted_node_counts_the_lost_rerun_like_the_coordinator_does() {
    let (db, client) = migrated_db().await;
    let mut node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = queue(&client, &["sleep", "1000"]).await;
    client
        .execute(
            "UPDATE long_task.task SET max_lost_reruns = 0 WHERE id = $1",
            &[&id],
        )
        .await
        .expect("never re-run this task");
    wait_state(&client, id, "AE", LONG).await;
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.wait_exit(Duration::from_secs(5));

    // The same worker restarts before any coordinator noticed: it must not re-run the task.
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_state(&client, id, "CF", LONG).await;
    assert_eq!(
        row(&client, id).await,
        ("CF".into(), Some("worker lost".into()), 0)
    );
    let attempt: i32 = client
        .query_one("SELECT attempt FROM long_task.task WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0);
    assert_eq!(attempt, 1, "it ran once");
    assert_eq!(history(&client, id).await.len(), 1);
    assert_eq!(state(&client, id).await, "CF");
}
