//! The shared path of a limited group's claims (`long_task.take_limited`, its claim slots):
//! claims far from every limit run side by side without waiting for each other's commits; a
//! change of the limits waits for the claims in flight and holds from the first claim after
//! it; a session lost while holding a slot frees it and loses nothing; and under four nodes
//! claiming at once with limits the shared path can reach, the most that overlapped (from
//! `task_run`, database clock) never exceeds either limit. The end of a limited group's run
//! wakes its nodes.

mod common;

use std::time::Duration;

use common::node::{wait_node_ready, NodeProcess};
use common::{connect, migrated_db};
use tokio_postgres::Client;

/// The limits a user would set, far from binding for the few tasks the SQL tests take.
const FAR: &str =
    "INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, 1000, 100);
     INSERT INTO long_task.key_limit VALUES (0, 'k1', 50);
     INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
     SELECT 0, 'AW', 't', 'k' || (i % 10) FROM generate_series(1, 200) i;";

async fn consume_ids(client: &Client, n: i32) -> Vec<i64> {
    client
        .query("SELECT id FROM long_task.consume($1)", &[&n])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn running(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE state_id IN ('AE', 'AC')",
            &[],
        )
        .await
        .expect("running")
        .get(0)
}

#[tokio::test]
async fn claims_far_from_the_limits_do_not_wait_for_each_other() {
    let (db, client) = migrated_db().await;
    client.batch_execute(FAR).await.expect("setup");
    let a = connect(&db.url).await;
    let b = connect(&db.url).await;
    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(consume_ids(&a, 10).await.len(), 10);
    // a's claim is not committed: b's must not wait for it (it would with the group taken whole)
    b.batch_execute("SET lock_timeout = '2s'")
        .await
        .expect("timeout");
    assert_eq!(consume_ids(&b, 10).await.len(), 10, "b waited for a");
    // two claims in one transaction: the second takes a slot of its own
    b.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(consume_ids(&b, 5).await.len(), 5);
    assert_eq!(consume_ids(&b, 5).await.len(), 5);
    b.batch_execute("COMMIT").await.expect("commit");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(running(&client).await, 30);

    // near the group limit the claim is counted exactly, the group taken whole: it waits for a
    // claim in flight
    client
        .batch_execute("UPDATE long_task.group_settings SET max_running = 40 WHERE group_id = 0")
        .await
        .expect("lower");
    a.batch_execute("BEGIN").await.expect("begin");
    // a slot's share is now 40 / 16 = 2, and 30 running + 7 other slots' shares + 2 > 40: the
    // claim is counted, the group taken whole
    assert_eq!(consume_ids(&a, 2).await.len(), 2);
    let err = b
        .query("SELECT id FROM long_task.consume(2)", &[])
        .await
        .expect_err("a near-limit claim beside a claim holding the group whole");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{err}"
    );
    a.batch_execute("COMMIT").await.expect("commit");
    // 32 running: 8 left, and exactly 8 more start however the claim asks
    assert_eq!(consume_ids(&b, 100).await.len(), 8);
    assert_eq!(consume_ids(&b, 100).await.len(), 0);
    assert_eq!(running(&client).await, 40);
}

/// A limit lowered while claims hold slots waits for them, and holds from the next claim on.
#[tokio::test]
async fn a_limit_lowered_while_slots_hold_shares_waits_for_them_and_then_holds() {
    let (db, client) = migrated_db().await;
    client.batch_execute(FAR).await.expect("setup");
    let a = connect(&db.url).await;
    let admin = connect(&db.url).await;
    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(consume_ids(&a, 10).await.len(), 10);
    // the change waits for the claim in flight (it read the old limits)
    admin
        .batch_execute("SET lock_timeout = '300ms'")
        .await
        .expect("timeout");
    let err = admin
        .batch_execute("UPDATE long_task.group_settings SET max_running = 16 WHERE group_id = 0")
        .await
        .expect_err("the change did not wait for the claim in flight");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{err}"
    );
    let err = admin
        .batch_execute("INSERT INTO long_task.key_limit VALUES (0, 'k2', 1)")
        .await
        .expect_err("a key limit did not wait for the claim in flight");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{err}"
    );
    // the change in flight now: a claim waits for it, and then reads the new limit
    admin
        .batch_execute("SET lock_timeout = 0")
        .await
        .expect("timeout");
    let lower = tokio::spawn(async move {
        admin
            .batch_execute(
                "BEGIN;
                 UPDATE long_task.group_settings SET max_running = 16 WHERE group_id = 0;
                 SELECT pg_sleep(0.3);
                 COMMIT;",
            )
            .await
            .expect("lower");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.batch_execute("COMMIT").await.expect("commit");
    let b = connect(&db.url).await;
    // 10 running, limit 16 (the pause lock order: the claim waits for the change's commit)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = consume_ids(&b, 100).await;
    lower.await.expect("join");
    assert_eq!(got.len(), 6, "the lowered limit did not hold");
    assert_eq!(consume_ids(&b, 100).await.len(), 0);
    assert_eq!(running(&client).await, 16);
}

/// A session that dies while its claim holds a slot: the claim is rolled back (every task waits
/// again), its slot is free, and a change of the limits does not wait for it.
#[tokio::test]
async fn a_session_lost_while_holding_a_slot_frees_it_and_loses_nothing() {
    let (db, client) = migrated_db().await;
    client.batch_execute(FAR).await.expect("setup");
    let a = connect(&db.url).await;
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(consume_ids(&a, 10).await.len(), 10);
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    common::node::wait_until(Duration::from_secs(10), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("activity")
            .get(0);
        n == 0
    })
    .await
    .expect("the session did not end");
    assert_eq!(
        running(&client).await,
        0,
        "the lost claim was not rolled back"
    );
    client
        .batch_execute(
            "SET lock_timeout = '2s';
             UPDATE long_task.group_settings SET max_running = 20 WHERE group_id = 0;",
        )
        .await
        .expect("a limit change waited for a lost session");
    // every task is still there to take, up to the new limit
    assert_eq!(consume_ids(&client, 100).await.len(), 20);
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE state_id = 'AW'",
            &[],
        )
        .await
        .expect("waiting")
        .get(0);
    assert_eq!(waiting, 180);
}

/// Four nodes claiming at once, limits the shared path reaches (a group limit of 40: 2 per
/// slot, a key limit of 20: 1 per key and slot) and that do bind (64 process slots, tasks that
/// last 0.2 s): the most that overlapped never exceeds either limit.
#[tokio::test]
async fn limits_the_shared_path_reaches_hold_across_four_nodes() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, 40, 20);",
        )
        .await
        .expect("limits");
    let nodes: Vec<NodeProcess> = (1..=4)
        .map(|id| NodeProcess::start(&db.url, id, &["--max-tasks", "16"]))
        .collect();
    for id in 1..=4 {
        wait_node_ready(&client, id).await;
    }
    client
        .execute(
            "INSERT INTO long_task.task (group_id, state_id, command, concurrency_key)
             SELECT 0, 'AW', ARRAY['sleep', '0.2'], 'customer-' || (i % 3)
               FROM generate_series(1, 600) i",
            &[],
        )
        .await
        .expect("queue");
    let done = common::node::wait_until(Duration::from_secs(120), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n == 600
    })
    .await;
    assert!(done.is_ok(), "not every task ended CS");
    let (most, per_key) = common::overlap::most_overlapping(&client)
        .await
        .expect("history");
    eprintln!("most running at once: {most}, per key: {per_key:?}");
    assert!(most <= 40, "{most} ran at once (limit 40)");
    assert_eq!(per_key.len(), 3);
    for (key, n) in &per_key {
        assert!(*n <= 20, "{n} of key {key} ran at once (limit 20)");
    }
    // the limits did bind (a test where they never could would prove nothing)
    assert!(
        most >= 30,
        "never more than {most} at once: the limit was not approached"
    );
    drop(nodes);
}

/// A claim of many tasks of one key on the shared path gets the key's share (m per slot held:
/// the lowest key limit / 16), and what it took over that share goes back onto the ring, still
/// claimable: nothing is lost.
#[tokio::test]
async fn what_is_over_a_keys_share_goes_back_onto_the_ring() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, key_limit) VALUES (0, 32);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 't', 'hot' FROM generate_series(1, 10);",
        )
        .await
        .expect("setup");
    // no group limit: one slot; m = 32 / 16 = 2 of the key per slot
    assert_eq!(consume_ids(&client, 10).await.len(), 2);
    let queued: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.ready r JOIN long_task.task t ON t.id = r.task_id
              WHERE t.state_id = 'AW' AND r.lsc = t.last_state_change",
            &[],
        )
        .await
        .expect("ring")
        .get(0);
    assert_eq!(queued, 8, "the entries over the share were not put back");
    let mut total = 2;
    for _ in 0..10 {
        total += consume_ids(&client, 10).await.len();
    }
    assert_eq!(total, 10, "every task taken once");
    assert_eq!(running(&client).await, 10);
}

/// The end of a run of a limited group wakes the group's nodes (a claim cut short by a limit
/// waits for it), whoever ends it, and only then: an unlimited group's run end and a cancel
/// request (AE -> AC, still running) send no wake.
#[tokio::test]
async fn the_end_of_a_limited_groups_run_wakes_its_nodes() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running) VALUES (0, 100);
             INSERT INTO long_task.task (group_id, state_id, topic)
             SELECT g, 'AW', 't' FROM generate_series(0, 1) g, generate_series(1, 3);",
        )
        .await
        .expect("setup");
    let taken: Vec<(i64, i32)> = client
        .query("SELECT id, group_id FROM long_task.consume(10)", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(taken.len(), 6);
    let of = |g: i32| -> Vec<i64> { taken.iter().filter(|t| t.1 == g).map(|t| t.0).collect() };
    let (limited, unlimited) = (of(0), of(1));
    let (_listener, mut notices) = common::listen(&db.url, &["long_task_g0", "long_task_g1"]).await;
    let ack = |id: i64| {
        let client = &client;
        async move {
            client
                .query_one("SELECT long_task.ack($1)", &[&id])
                .await
                .expect("ack");
        }
    };
    // notifications come in commit order: what arrived before the limited group's wake is all
    // the earlier statements sent
    let wake_of_group_0 =
        async |notices: &mut tokio::sync::mpsc::UnboundedReceiver<pgtaskd::db::Notice>| {
            let mut before = Vec::new();
            loop {
                let n = tokio::time::timeout(Duration::from_secs(10), notices.recv())
                    .await
                    .expect("no wake of group 0")
                    .expect("listener ended");
                if (n.channel.as_str(), n.payload.as_str()) == ("long_task_g0", "wake") {
                    return before;
                }
                before.push((n.channel, n.payload));
            }
        };
    ack(unlimited[0]).await;
    client
        .execute("SELECT long_task.cancel($1)", &[&limited[0]])
        .await
        .expect("cancel");
    ack(limited[1]).await;
    let before = wake_of_group_0(&mut notices).await;
    assert!(
        !before.iter().any(|(_, p)| p == "wake"),
        "an unlimited run's end or a cancel request woke a group: {before:?}"
    );
    // an outcome of the cancelled run (it ends CC) wakes too
    client
        .query_one(
            "SELECT count(*) FROM long_task.complete_runs(ARRAY[$1::bigint],
                 ARRAY[(SELECT run_id FROM long_task.task WHERE id = $1)], ARRAY['CF'],
                 NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            &[&limited[0]],
        )
        .await
        .expect("end the cancelled run");
    wake_of_group_0(&mut notices).await;
    let state: String = client
        .query_one(
            "SELECT state_id::text FROM long_task.task WHERE id = $1",
            &[&limited[0]],
        )
        .await
        .expect("state")
        .get(0);
    assert_eq!(state, "CC");
}
