//! The coordinator's round (`long_task.coordinate`) when the database changes between its read
//! and its writes. The round reads pg_locks and the worker rows once, then takes the coordinator
//! row `FOR UPDATE` before acting on a dead node — a lock a scheduler tick (`scheduler_tick_as`,
//! `FOR SHARE`) can make it wait for. A node that came back meanwhile keeps its new run; one still
//! dead is handed back as before. (Found by the protocol model, tests/protocol_model.rs.)

mod common;

use std::time::Duration;

use common::migrated_db;
use tokio_postgres::Client;
use uuid::Uuid;

const NS_GROUP: i32 = 1886678530;
const NS_NODE: i32 = 1886678529;

/// Workers 1 (the coordinator) and 2 in group 0, two waiting tasks, and task 1 claimed by
/// worker 2, which then crashed (its liveness lock is free). Worker 2 beat after the round's
/// session began, so a free lock means death at once (not a node reconnecting after a restart
/// of the server). Returns the round's session, its term and its backend pid.
async fn crashed_node_and_a_coordinator(db: &common::TestDb, setup: &Client) -> (Client, i64, i32) {
    let coordinator = db.client().await;
    setup
        .batch_execute(
            "INSERT INTO long_task.worker (id, group_id, active, heartbeat_at, started_at)
                  VALUES (1, 0, true, now(), now()), (2, 0, true, now(), now());
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'), ('AW', '{true}');
             SELECT * FROM long_task.claim(2, 0, 1);",
        )
        .await
        .expect("set-up");
    coordinator
        .execute("SELECT pg_advisory_lock($1, 0)", &[&NS_GROUP])
        .await
        .expect("group lock");
    let term: i64 = coordinator
        .query_one("SELECT long_task.become_coordinator(0, 1)", &[])
        .await
        .expect("term")
        .get(0);
    let pid: i32 = coordinator
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (coordinator, term, pid)
}

/// Waits until session `pid` waits for a lock (the round has read and now waits to act).
async fn wait_for_lock_wait(client: &Client, pid: i32) {
    for _ in 0..500 {
        let waiting: bool = client
            .query_one(
                "SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the round never waited for the coordinator row");
}

/// One row a round returns: `(kind, worker_id, task_id)`.
type Action = (String, Option<i64>, Option<i64>);

/// Runs a round in the background; returns its rows, 'live' left out.
fn round(coordinator: Client, term: i64) -> tokio::task::JoinHandle<Vec<Action>> {
    tokio::spawn(async move {
        coordinator
            .query(
                "SELECT kind, worker_id, task_id FROM long_task.coordinate(0, 1, $1, 5) WHERE kind <> 'live'",
                &[&term],
            )
            .await
            .expect("round")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    })
}

#[tokio::test]
async fn a_node_that_comes_back_during_a_round_keeps_its_new_run() {
    let (db, setup) = migrated_db().await;
    let (coordinator, term, pid) = crashed_node_and_a_coordinator(&db, &setup).await;
    // a scheduler tick holds the coordinator row
    let mut ticker = db.client().await;
    let tick = ticker.transaction().await.expect("tick");
    tick.execute(
        "SELECT 1 FROM long_task.coordinator WHERE group_id = 0 FOR SHARE",
        &[],
    )
    .await
    .expect("share lock");
    let actions = round(coordinator, term);
    wait_for_lock_wait(&setup, pid).await;

    // meanwhile node 2 restarts (node::prepare): its liveness lock, its registration, the
    // hand-back of what it left, then a claim
    let node2 = db.client().await;
    let locked: bool = node2
        .query_one("SELECT pg_try_advisory_lock($1, 2)", &[&NS_NODE])
        .await
        .expect("liveness lock")
        .get(0);
    assert!(locked);
    node2
        .batch_execute(
            "UPDATE long_task.worker SET active = true, heartbeat_at = now(), started_at = now() WHERE id = 2;
             SELECT * FROM long_task.hand_back(2, 'node restarted', 2);",
        )
        .await
        .expect("restart");
    let claimed = node2
        .query_one("SELECT id, run_id FROM long_task.claim(2, 0, 1)", &[])
        .await
        .expect("claim");
    let (task, run): (i64, Uuid) = (claimed.get(0), claimed.get(1));

    tick.commit().await.expect("tick commits");
    let actions = actions.await.expect("round task");
    assert!(
        actions.is_empty(),
        "the round acted on a node that holds its lock with a fresh heartbeat: {actions:?}"
    );
    let row = setup
        .query_one(
            "SELECT state_id::text, worker_id, run_id, (SELECT active FROM long_task.worker WHERE id = 2)
               FROM long_task.task WHERE id = $1",
            &[&task],
        )
        .await
        .expect("task");
    assert_eq!(row.get::<_, String>(0), "AE");
    assert_eq!(row.get::<_, Option<i64>>(1), Some(2));
    assert_eq!(row.get::<_, Option<Uuid>>(2), Some(run));
    assert!(row.get::<_, bool>(3), "node 2 stays active");
}

#[tokio::test]
async fn a_node_still_dead_after_the_rounds_wait_is_handed_back() {
    let (db, setup) = migrated_db().await;
    let (coordinator, term, pid) = crashed_node_and_a_coordinator(&db, &setup).await;
    let mut ticker = db.client().await;
    let tick = ticker.transaction().await.expect("tick");
    tick.execute(
        "SELECT 1 FROM long_task.coordinator WHERE group_id = 0 FOR SHARE",
        &[],
    )
    .await
    .expect("share lock");
    let actions = round(coordinator, term);
    wait_for_lock_wait(&setup, pid).await;
    tick.commit().await.expect("tick commits");

    let actions = actions.await.expect("round task");
    let kinds: Vec<&str> = actions.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["node_dead", "requeued"], "{actions:?}");
    assert!(actions.iter().all(|(_, w, _)| *w == Some(2)));
    let state: String = setup
        .query_one(
            "SELECT state_id::text FROM long_task.task WHERE id = $1",
            &[&actions[1].2],
        )
        .await
        .expect("task")
        .get(0);
    assert_eq!(state, "AW");
}
