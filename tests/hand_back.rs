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

/// Ends node `worker`'s listener session; the listener reconnects and resyncs.
async fn cut_listener(client: &Client, worker: i64) {
    let cut: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1",
            &[&format!("pgtaskd w{worker} listener")],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(cut, 1, "node {worker}'s listener session");
}

#[tokio::test]
async fn a_live_node_hands_back_rows_that_claim_a_run_it_does_not_have() {
    // what a failover that lost a node's latest commits leaves: the new primary says the node
    // runs a task whose run the node ended long ago
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    // a run the node really has, started a minute ago as far as the row says: it stays
    let real = queue(&client, &["sleep", "30"]).await;
    wait_state(&client, real, "AE", LONG).await;
    client
        .execute(
            "UPDATE long_task.task SET started = now() - interval '1 minute' WHERE id = $1",
            &[&real],
        )
        .await
        .expect("age it");
    let real_run: Uuid = client
        .query_one("SELECT run_id FROM long_task.task WHERE id = $1", &[&real])
        .await
        .expect("run")
        .get(0);
    // a row that claims node 1 runs it (pinned elsewhere first, so node 1 cannot claim it)
    let ghost: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, worker_id, max_lost_reruns)
             VALUES ('AW', '{true}', 999, 1) RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let ghost_run = Uuid::new_v4();
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AE', worker_id = 1, run_id = $2, attempt = 1,
                    started = now() - interval '1 minute' WHERE id = $1",
            &[&ghost, &ghost_run],
        )
        .await
        .expect("a row claiming node 1");

    cut_listener(&client, 1).await;
    // handed back (a new attempt under a new run id), run again by node 1, CS
    wait_state(&client, ghost, "CS", LONG).await;
    let (kinds, details): (Vec<String>, Vec<Option<String>>) = events(&client, ghost)
        .await
        .into_iter()
        .map(|(kind, _, detail)| (kind, detail))
        .unzip();
    assert!(kinds.contains(&"requeued".to_owned()), "{kinds:?}");
    assert!(
        details
            .iter()
            .flatten()
            .any(|d| d.contains("not running on its node")),
        "{details:?}"
    );
    let attempts = history(&client, ghost).await;
    assert!(
        attempts.iter().any(|(run, _, _)| *run == ghost_run),
        "the abandoned attempt is recorded: {attempts:?}"
    );
    // the real run was left alone
    let row = client
        .query_one(
            "SELECT state_id::text, run_id FROM long_task.task WHERE id = $1",
            &[&real],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "AE");
    assert_eq!(row.get::<_, Uuid>(1), real_run);
    assert_eq!(state(&client, real).await, "AE");
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&real],
        )
        .await
        .expect("cancel");
}
