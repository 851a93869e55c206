//! The ready ring straight against the database (no node): claim order within a slot and merged
//! across live slots, claimers racing on one slot's head (each passes over what the other holds,
//! nothing is taken twice), and a rotation that moves waiting entries waking their group.

mod common;

use common::{migrated_db, publish};
use tokio_postgres::Client;

/// A rotation of the ready ring that moves live entries wakes their group when it commits: a
/// claim that ran meanwhile read the live slots without them (the head had advanced, the move
/// was not committed), came back empty and took the queue for empty.
#[tokio::test]
async fn a_rotation_that_moves_waiting_entries_wakes_their_group() {
    let (db, client) = migrated_db().await;
    let rotate = "SELECT setval('long_task.ready_rotated_at', 1); SELECT long_task.rotate_ready();";
    for _ in 0..3 {
        publish(&client, "t.moved").await;
    }
    // seal the insert slot: the three entries are now in the head slot, behind a new insert slot
    client.batch_execute(rotate).await.expect("seal");
    let (head, gen): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT h.last_value, g.last_value FROM long_task.ready_head h, long_task.ready_gen g",
                &[],
            )
            .await
            .expect("ring");
        (row.get(0), row.get(1))
    };
    assert_eq!(gen, head + 1, "the insert slot was sealed");

    let (_listener, mut notices) = common::listen(&db.url, &["long_task_g0"]).await;
    let rotation = db.client().await;
    rotation.batch_execute("BEGIN").await.expect("begin");
    rotation
        .batch_execute(rotate)
        .await
        .expect("retire the head");
    // meanwhile a consumer finds nothing: the head has advanced, the move is not committed
    let seen = client
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("consume during the rotation");
    assert!(
        seen.is_empty(),
        "the uncommitted move was visible: {seen:?}"
    );
    assert!(notices.try_recv().is_err(), "woken before the commit");
    rotation.batch_execute("COMMIT").await.expect("commit");
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), notices.recv())
        .await
        .expect("no wake after the rotation committed")
        .expect("listener ended");
    assert_eq!(
        (woken.channel.as_str(), woken.payload.as_str()),
        ("long_task_g0", "wake")
    );
    let taken = client
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("consume after the rotation");
    assert_eq!(taken.len(), 3, "the moved entries are claimable");
}

/// Ids of up to `n` entries taken off the ring by a SQL consumer (take_ready, in claim order).
async fn take(client: &Client, n: i32) -> Vec<i64> {
    client
        .query(
            "SELECT task_id FROM long_task.take_ready($1, NULL, NULL, NULL, NULL, NULL)",
            &[&n],
        )
        .await
        .expect("take_ready")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Two claimers racing on the same slot head: while one holds the head (its transaction
/// open), the other passes over what it holds and takes what follows, in claim order, even one
/// at a time (each of its reads looks past more held entries than it wants); once the first
/// commits, nothing is taken twice and nothing is lost.
#[tokio::test]
async fn two_claimers_on_the_same_slot_head_take_disjoint_entries_in_claim_order() {
    let (db, client) = migrated_db().await;
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(publish(&client, "t.race").await);
    }
    let holder = db.client().await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let held = take(&holder, 50).await;
    assert_eq!(held, ids[..50], "the first claimer takes the head in order");
    // the second claimer, one entry at a time past the 50 held ones, then a batch
    let mut second = Vec::new();
    for _ in 0..5 {
        second.extend(take(&client, 1).await);
    }
    second.extend(take(&client, 20).await);
    assert_eq!(
        second,
        ids[50..75],
        "the second claimer passes over the held head and takes what follows, in order"
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    let rest = take(&client, 1000).await;
    assert_eq!(rest, ids[75..], "the rest, once, in order");
    assert!(take(&client, 10).await.is_empty(), "the ring is empty");
}

/// Entries spread over several live slots come off the ring merged in claim order (priority,
/// then first in first out), whatever the batch size: a slot read in part never lets a later
/// entry of another slot jump ahead of its unread ones.
#[tokio::test]
async fn takes_across_live_slots_are_merged_in_claim_order() {
    let (_db, client) = migrated_db().await;
    let rotate = "SELECT setval('long_task.ready_rotated_at', 1); SELECT long_task.rotate_ready();";
    for batch in 0..2 {
        if batch > 0 {
            // seal the insert slot: the next batch goes into the next one (a further rotation
            // would move the head slot's few entries on)
            client.batch_execute(rotate).await.expect("seal");
        }
        client
            .batch_execute(
                "SELECT long_task.publish_bulk(ARRAY(
                    SELECT ROW('t.merge', NULL, NULL, NULL, g % 4, 1, NULL)::long_task.bulk_task
                      FROM generate_series(1, 60) g))",
            )
            .await
            .expect("publish_bulk");
    }
    let live: i64 = client
        .query_one("SELECT count(DISTINCT slot) FROM long_task.ready", &[])
        .await
        .expect("live slots")
        .get(0);
    assert!(live >= 2, "the entries span {live} slots");
    let expected: Vec<i64> = client
        .query(
            "SELECT task_id FROM long_task.ready ORDER BY priority, lsc, task_id",
            &[],
        )
        .await
        .expect("expected order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), 120);
    let mut got = Vec::new();
    for n in [1, 7, 3, 30, 2, 50, 100] {
        got.extend(take(&client, n).await);
    }
    assert_eq!(got, expected, "taken in claim order across the slots");
}

/// A claimer that passes over entries another one holds does not let a later slot jump ahead:
/// the head slot's unread entries (beyond the held ones it read) still come before a worse
/// priority in the next slot.
#[tokio::test]
async fn passing_over_held_entries_keeps_the_claim_order_across_slots() {
    let (db, client) = migrated_db().await;
    let bulk = |priority: i32| {
        format!(
            "SELECT long_task.publish_bulk(ARRAY(
                SELECT ROW('t.pass', NULL, NULL, NULL, {priority}, 1, NULL)::long_task.bulk_task
                  FROM generate_series(1, 60) g))"
        )
    };
    client.batch_execute(&bulk(0)).await.expect("first slot");
    client
        .batch_execute(
            "SELECT setval('long_task.ready_rotated_at', 1); SELECT long_task.rotate_ready();",
        )
        .await
        .expect("seal");
    client.batch_execute(&bulk(1)).await.expect("second slot");
    let first: Vec<i64> = client
        .query(
            "SELECT task_id FROM long_task.ready WHERE priority = 0 ORDER BY lsc, task_id",
            &[],
        )
        .await
        .expect("first slot's entries")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(first.len(), 60);
    let holder = db.client().await;
    holder.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(
        take(&holder, 40).await,
        first[..40],
        "the holder takes the head"
    );
    assert_eq!(
        take(&client, 1).await,
        first[40..41],
        "past the held entries, the head slot's next one comes before the next slot's"
    );
    holder.batch_execute("ROLLBACK").await.expect("rollback");
}
