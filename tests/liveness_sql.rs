//! The SQL that must never leave a waiting task behind with nothing left to wake it: a task
//! queued due now while a claim ran (the claim took its ring entry and dropped it), a due retry
//! the scheduler tick could not promote (its row locked at that moment), and an entry that
//! landed in a ring slot no claim reads (inserted while its slot was being retired); and one
//! that comes back empty because a rotation was moving the entries it would have taken (a SQL
//! consumer has nothing to wake it and look again). Before
//! these were fixed, each waited silently for something unrelated to happen (the Scheduler's
//! next full pass, up to five minutes later; the next task queued in the database).

mod common;

use common::{migrated_db, publish};
use tokio_postgres::Client;

async fn tick(client: &Client, since: Option<chrono::DateTime<chrono::Utc>>) -> (i32, Option<f64>) {
    let row = client
        .query_one(
            "SELECT woken, next_due_in FROM long_task.scheduler_tick(0, $1)",
            &[&since],
        )
        .await
        .expect("tick");
    (row.get(0), row.get(1))
}

/// Sets when the ring was last rotated (ms since the epoch, an SQL expression), then turns it;
/// whether `turn_ready` asks to be called again.
async fn turn(client: &Client, rotated_at: &str) -> bool {
    client
        .query_one(
            &format!(
                "SELECT setval('long_task.ready_rotated_at', {rotated_at}), long_task.turn_ready()"
            ),
            &[],
        )
        .await
        .expect("turn")
        .get(1)
}

/// The task ids a claim or consume statement returns.
async fn ids(client: &Client, sql: &str) -> Vec<i64> {
    let rows = client.query(sql, &[]).await.expect(sql);
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_due_retry_held_locked_at_its_tick_is_looked_at_again_shortly() {
    let (db, client) = migrated_db().await;
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('t', p_run_after => now() + interval '100 seconds')",
            &[],
        )
        .await
        .expect("publish")
        .get(0);
    let since: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT db_now FROM long_task.scheduler_tick(0, NULL)", &[])
        .await
        .expect("full tick")
        .get(0);
    client
        .execute(
            "UPDATE long_task.task SET run_after = now() - interval '10 milliseconds' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("due");
    // another session holds the row (as a foreign key check of an insert does) at the tick
    let holder = db.client().await;
    holder.batch_execute("BEGIN").await.expect("begin");
    holder
        .execute(
            "SELECT 1 FROM long_task.task WHERE id = $1 FOR KEY SHARE",
            &[&id],
        )
        .await
        .expect("hold the row");
    let (woken, next) = tick(&client, Some(since)).await;
    assert_eq!(woken, 0, "a locked row is skipped, not waited for");
    let next = next.expect("the skipped retry is due: the tick must say when to look again");
    assert!(next <= 0.5, "looked at again in {next} s");
    holder.batch_execute("COMMIT").await.expect("release");
    let (woken, _) = tick(&client, Some(since)).await;
    assert_eq!(woken, 1, "promoted once the row is free");
    let state: String = client
        .query_one(
            "SELECT state_id || coalesce(run_after::text, '') FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task")
        .get(0);
    assert_eq!(state, "AW", "waiting with no run_after: claimable");
}

#[tokio::test]
async fn an_entry_left_in_a_retired_slot_keeps_the_ring_turning_until_it_is_moved() {
    let (_db, client) = migrated_db().await;
    let id = publish(&client, "t.stray").await;
    // The entry ends up in slot 3, outside the live slots (head = gen = 0), and the insert slot
    // is empty: what an insert that read the insert slot just before its retirement leaves.
    client
        .batch_execute(
            "UPDATE long_task.ready SET slot = 3;
             TRUNCATE long_task.ready_0;",
        )
        .await
        .expect("strand the entry");
    // a turn whose rotation is skipped (another came within 200 ms) must still ask for the next
    let now_ms = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    assert!(
        turn(&client, now_ms).await,
        "the ring stopped turning with an entry no claim reads"
    );
    let before = ids(&client, "SELECT id FROM long_task.consume(10)").await;
    assert!(before.is_empty(), "a claim read a retired slot: {before:?}");
    // the next rotation moves it to the insert slot, where claims find it
    turn(&client, "1").await;
    let after = ids(&client, "SELECT id FROM long_task.consume(10)").await;
    assert_eq!(after, vec![id]);
}

/// A claim whose transaction began before a task was queued with `run_after = now()` (what
/// `NewTask::delay(Duration::ZERO)` sends) takes that task: its entry on the ring was written
/// for a run_after already reached, and a claim that dropped it unclaimed (judging run_after by
/// its own, earlier, transaction start) left the task waiting with no entry and nothing to
/// write one. `queue_node`'s retry test stalled on this in CI.
#[tokio::test]
async fn a_claim_begun_before_a_task_due_now_was_queued_takes_it() {
    let (db, client) = migrated_db().await;
    for (topic, claim) in [
        ("t.consumer", "SELECT id FROM long_task.consume(10)"),
        (
            "t.node",
            "SELECT id FROM long_task.claim(4242, 0, 10, ARRAY['t.node'], false)",
        ),
    ] {
        let claimer = db.client().await;
        claimer
            .batch_execute("BEGIN; SELECT now();")
            .await
            .expect("a claimer's transaction starts");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let id: i64 = client
            .query_one(
                "SELECT long_task.publish($1, p_run_after => now())",
                &[&topic],
            )
            .await
            .expect("publish")
            .get(0);
        let taken = ids(&claimer, claim).await;
        claimer.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(
            taken,
            vec![id],
            "{topic}: the due task was dropped unclaimed"
        );
    }
}

/// A consume that runs while a rotation is moving the head slot's entries into the insert slot
/// (the rotation not yet committed) waits for that rotation and takes what it moved. It used to
/// read the live slots after the head had advanced, miss the moved entries (not committed yet)
/// and come back empty with a task waiting; a SQL consumer has no wake-up to tell it to look
/// again. `queue_node`'s burst-of-consumes test saw 59 of 60 consumes get a task.
#[tokio::test]
async fn a_consume_during_a_rotation_that_moves_the_head_takes_what_it_moved() {
    let (db, client) = migrated_db().await;
    let id = publish(&client, "t.moved").await;
    // seal the insert slot: the entry's slot becomes the head, a new insert slot follows it
    turn(&client, "1").await;
    let rotator = db.client().await;
    rotator
        .batch_execute(
            "BEGIN;
             SELECT setval('long_task.ready_rotated_at', (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1000);
             SELECT long_task.rotate_ready();",
        )
        .await
        .expect("a rotation moves the head's entry, not committed yet");
    let moved: i64 = rotator
        .query_one(
            "SELECT count(*) FROM long_task.ready
              WHERE slot <> (SELECT (h.last_value - 1) % 8 FROM long_task.ready_head h)",
            &[],
        )
        .await
        .expect("where the entry is")
        .get(0);
    assert_eq!(moved, 1, "the rotation moved the entry out of the old head");
    let consumer = db.client().await;
    let consume =
        tokio::spawn(async move { ids(&consumer, "SELECT id FROM long_task.consume(10)").await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    rotator.batch_execute("COMMIT").await.expect("commit");
    let taken = tokio::time::timeout(std::time::Duration::from_secs(10), consume)
        .await
        .expect("the consume returned")
        .expect("the consume task");
    assert_eq!(taken, vec![id], "the consume missed the moved entry");
}
