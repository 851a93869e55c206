//! The task table's state machine and input checks, straight against the database (no node).

mod common;

use common::migrated_db;

async fn insert(client: &tokio_postgres::Client, state: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, $1, '{true}') RETURNING id",
            &[&state],
        )
        .await
        .expect("insert")
        .get(0)
}

async fn set_state(client: &tokio_postgres::Client, id: i64, state: &str) -> Result<u64, String> {
    client
        .execute(
            "UPDATE long_task.task SET state_id = $2 WHERE id = $1",
            &[&id, &state],
        )
        .await
        .map_err(|e| {
            let db = e.as_db_error().expect("a database error");
            format!("{} | {}", db.message(), db.hint().unwrap_or(""))
        })
}

#[tokio::test]
async fn illegal_transitions_are_rejected_with_a_clear_error() {
    let (_db, client) = migrated_db().await;
    let id = insert(&client, "DR").await;

    let err = set_state(&client, id, "CS").await.unwrap_err();
    assert!(
        err.contains("illegal task state transition DR -> CS"),
        "{err}"
    );
    assert!(err.contains("from DR a task may go to: AW, CC"), "{err}");

    // AE only through a node's claim
    set_state(&client, id, "AW").await.expect("DR -> AW");
    let err = set_state(&client, id, "AE").await.unwrap_err();
    assert!(
        err.contains("only enter AE through a node's claim"),
        "{err}"
    );

    // a final task cannot be cancelled or executed
    set_state(&client, id, "CC").await.expect("AW -> CC");
    for bad in ["AC", "AE", "CS", "CF"] {
        let err = set_state(&client, id, bad).await.unwrap_err();
        assert!(err.contains(&format!("CC -> {bad}")), "{err}");
    }
    assert_eq!(
        common::node::state(&client, id).await,
        "CC",
        "rejected updates change nothing"
    );
}

#[tokio::test]
async fn unknown_state_codes_and_periods_are_rejected() {
    let (_db, client) = migrated_db().await;
    let err = client
        .execute(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'XX', '{true}')",
            &[],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.message(), "unknown task state 'XX'");
    assert!(db.hint().unwrap_or("").contains("AW waiting"));

    let id = insert(&client, "DR").await;
    let err = set_state(&client, id, "ZZ").await.unwrap_err();
    assert!(err.contains("unknown task state 'ZZ'"), "{err}");

    let err = client
        .execute(
            "UPDATE long_task.task SET shed_period_id = 'YRS' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .expect("db")
        .message()
        .contains("unknown schedule period 'YRS'"));

    let err = client
        .execute(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'CS', '{true}')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .expect("db")
        .message()
        .contains("must start in state DR or AW"));

    // Writes that bypass the triggers (a replica's apply, a bulk fixture) still cannot store an
    // unknown code: the table's constraint holds without them.
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .expect("replica role");
    let err = client
        .execute(
            "UPDATE long_task.task SET state_id = 'QQ' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().expect("db").constraint(),
        Some("task_state_id_known")
    );
}

#[tokio::test]
async fn cancelling_a_waiting_task_ends_it_at_once() {
    let (_db, client) = migrated_db().await;
    let id = insert(&client, "AW").await;
    client
        .execute(
            "UPDATE long_task.task SET state_id='AC' WHERE id = $1 AND state_id like 'A%'",
            &[&id],
        )
        .await
        .expect("cancel");
    let row = client
        .query_one(
            "SELECT state_id::text, error, finished IS NOT NULL FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "CC");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("cancelled before start")
    );
    assert!(row.get::<_, bool>(2));
}

#[tokio::test]
async fn a_stale_run_cannot_overwrite_a_newer_attempt() {
    let (_db, client) = migrated_db().await;
    let id = insert(&client, "AW").await;
    let first: uuid::Uuid = client
        .query_one("SELECT run_id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim")
        .get(0);
    // re-queued (e.g. by an operator) and claimed again by another node
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AW', worker_id = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .expect("requeue");
    let second: uuid::Uuid = client
        .query_one("SELECT run_id FROM long_task.claim(2, 0, 1)", &[])
        .await
        .expect("claim")
        .get(0);
    assert_ne!(first, second);
    let written = client
        .query(
            "SELECT * FROM long_task.finish_runs($1, $2, '{CS}', '{NULL}', '{0}', '{NULL}', '{NULL}', '{NULL}')",
            &[&vec![id], &vec![first]],
        )
        .await
        .expect("finish");
    assert!(
        written.is_empty(),
        "the stale run's outcome must be discarded"
    );
    let row = client
        .query_one(
            "SELECT state_id::text, worker_id, attempt FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "AE");
    assert_eq!(row.get::<_, Option<i64>>(1), Some(2));
    assert_eq!(
        row.get::<_, i32>(2),
        2,
        "a re-queue of a running task counts the next claim as attempt 2"
    );
}

#[tokio::test]
async fn claim_order_is_priority_then_fifo_and_respects_pins() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.task (group_id, state_id, priority, command, params) VALUES
                (0, 'AW', 5, '{true}', '{\"n\": 1}'),
                (0, 'AW', 1, '{true}', '{\"n\": 2}'),
                (0, 'AW', 5, '{true}', '{\"n\": 3}'),
                (1, 'AW', 0, '{true}', '{\"n\": 4}');
             INSERT INTO long_task.task (group_id, state_id, priority, command, worker_id, params) VALUES
                (0, 'AW', 0, '{true}', 99, '{\"n\": 5}');",
        )
        .await
        .expect("insert");
    let rows = client
        .query(
            "SELECT (t.params->>'n')::int FROM long_task.claim(1, 0, 10) c JOIN long_task.task t ON t.id = c.id ORDER BY t.started, c.id",
            &[],
        )
        .await
        .expect("claim");
    let mut got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![1, 2, 3],
        "group 1 and the task pinned to worker 99 are not ours"
    );
    // order: claim 1 at a time
    client
        .batch_execute("UPDATE long_task.task SET state_id = 'CS' WHERE state_id = 'AE'; UPDATE long_task.task SET state_id = 'AW' WHERE state_id = 'CS'")
        .await
        .expect("reset");
    let mut order = Vec::new();
    for _ in 0..3 {
        let n: i32 = client
            .query_one(
                "SELECT (t.params->>'n')::int FROM long_task.claim(1, 0, 1) c JOIN long_task.task t ON t.id = c.id",
                &[],
            )
            .await
            .expect("claim one")
            .get(0);
        order.push(n);
    }
    assert_eq!(
        order,
        vec![2, 1, 3],
        "lowest priority value first, then first in first out"
    );
    let pinned: i32 = client
        .query_one(
            "SELECT (t.params->>'n')::int FROM long_task.claim(99, 0, 1) c JOIN long_task.task t ON t.id = c.id",
            &[],
        )
        .await
        .expect("pinned claim")
        .get(0);
    assert_eq!(
        pinned, 5,
        "the pinned task goes to its worker first (priority 0)"
    );
}
