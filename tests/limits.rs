//! Concurrency and rate limits (migration 17, `migrations/schema/limits/`): a group's
//! `max_running`, per-key limits (`group_settings.key_limit`, `long_task.key_limit`) and its
//! rate limit hold across nodes and SQL consumers claiming at once, computed from the attempt
//! history (`task_run` start and end times, database clock); the `long_task.limits` view reads
//! each limit back with its usage.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::migrated_db;
use common::node::{wait_node_ready, NodeProcess};
use tokio_postgres::Client;

async fn wait_all_done(client: &Client, total: i64, limit: Duration) {
    let done = common::node::wait_until(limit, || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n == total
    })
    .await;
    let states = client
        .query(
            "SELECT state_id, count(*) FROM long_task.task GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("states");
    let states: Vec<(String, i64)> = states.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(done.is_ok(), "not every task ended CS: {states:?}");
}

#[tokio::test]
async fn group_and_key_limits_hold_across_four_nodes() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, 5, 2);",
        )
        .await
        .expect("limits");
    let nodes: Vec<NodeProcess> = (1..=4)
        .map(|id| NodeProcess::start(&db.url, id, &["--max-tasks", "4"]))
        .collect();
    for id in 1..=4 {
        wait_node_ready(&client, id).await;
    }
    // 1,000 short tasks over three keys, queued while the nodes claim
    for batch in 0..10 {
        client
            .execute(
                "INSERT INTO long_task.task (group_id, state_id, command, concurrency_key)
                 SELECT 0, 'AW', ARRAY['true'], 'customer-' || ((i + $1) % 3)
                   FROM generate_series(1, 100) i",
                &[&batch],
            )
            .await
            .expect("queue");
    }
    wait_all_done(&client, 1000, Duration::from_secs(120)).await;
    let (most, per_key) = common::overlap::most_overlapping(&client)
        .await
        .expect("history");
    eprintln!("most running at once: {most}, per key: {per_key:?}");
    assert!(most <= 5, "{most} ran at once (limit 5)");
    assert_eq!(per_key.len(), 3);
    for (key, n) in &per_key {
        assert!(*n <= 2, "{n} of key {key} ran at once (limit 2)");
    }
    // the limits did bind (a test where they never could would prove nothing)
    assert!(
        most >= 4,
        "never more than {most} at once: the limit was not reached"
    );
    let workers: i64 = client
        .query_one(
            "SELECT count(DISTINCT worker_id) FROM long_task.task_run",
            &[],
        )
        .await
        .expect("workers")
        .get(0);
    assert!(workers >= 2, "only {workers} node(s) ran tasks");
    drop(nodes);
}

#[tokio::test]
async fn a_rate_limit_spaces_the_starts() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, rate_limit, rate_interval) VALUES (0, 20, '1 second');",
        )
        .await
        .expect("limits");
    // default heartbeat timings: a node fenced under a loaded machine (FAST's 1 s timeout) would
    // stop claiming while its bucket fills to the brim and tokens are lost, which is not what
    // this test measures
    let _node = NodeProcess::start_with(&db.url, 1, &["--max-tasks", "8"]);
    wait_node_ready(&client, 1).await;
    let queued: DateTime<Utc> = client
        .query_one(
            "WITH q AS (INSERT INTO long_task.task (group_id, state_id, command)
                        SELECT 0, 'AW', ARRAY['true'] FROM generate_series(1, 200) RETURNING 1)
             SELECT now() FROM q LIMIT 1",
            &[],
        )
        .await
        .expect("queue")
        .get(0);
    wait_all_done(&client, 200, Duration::from_secs(60)).await;
    let starts: Vec<DateTime<Utc>> = client
        .query(
            "SELECT started FROM long_task.task_run ORDER BY started",
            &[],
        )
        .await
        .expect("starts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (a run lost to a node fenced under load starts again: every start counts)
    assert!(starts.len() >= 200, "{} starts", starts.len());
    // any one-second window: at most the rate plus the burst (a full bucket: 20 tokens)
    let mut busiest = 0;
    for (i, start) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s - *start < chrono::Duration::seconds(1))
            .count();
        busiest = busiest.max(within);
    }
    // the run: from its first start (the bucket's burst) to its last
    let took = (*starts.last().expect("starts") - starts[0]).num_milliseconds();
    let marks: Vec<i64> = starts
        .iter()
        .step_by(20)
        .map(|s| (*s - queued).num_milliseconds())
        .collect();
    eprintln!("every 20th start, ms after queueing: {marks:?}");
    eprintln!("busiest second: {busiest} starts; 200 starts took {took} ms");
    // 20/s and the burst of 20, plus the one token that accrues between the bucket's clock (read
    // when a claim takes the limit lock) and the `started` its rows get a moment later
    assert!(
        busiest <= 41,
        "{busiest} starts in one second (20/s + burst 20 + 1)"
    );
    // 20 at once, then 180 at 20/s: 9 s, never less; no more than 10 % over
    assert!(
        took >= 8_900,
        "200 starts in {took} ms: faster than the limit"
    );
    assert!(
        took <= 9_900,
        "200 starts took {took} ms: more than 10 % over the limit's 9 s"
    );
}

/// SQL consumers and the view: the group limit, an exact-key override and a pattern override,
/// and a key at its limit does not hold back the keys behind it.
#[tokio::test]
async fn consumers_get_only_what_the_limits_allow_and_the_view_shows_it() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, 6, 3);
             INSERT INTO long_task.key_limit VALUES (0, 'host-a', 1), (0, 'host-%', 2);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 't', k FROM unnest(ARRAY['host-a', 'host-a', 'host-a', 'host-b', 'host-b',
                                                       'host-b', 'other', 'other', 'other', 'other']) k;",
        )
        .await
        .expect("setup");
    let taken = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
    };
    let first = taken(
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume"),
    );
    let keys: Vec<String> = client
        .query(
            "SELECT concurrency_key FROM long_task.task WHERE id = ANY ($1) ORDER BY 1",
            &[&first],
        )
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // host-a: 1 (exact), host-b: 2 (pattern), other: 3 (group default), capped by 6 in all
    assert_eq!(
        keys,
        ["host-a", "host-b", "host-b", "other", "other", "other"]
    );
    assert!(taken(
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume")
    )
    .is_empty());

    let view: Vec<(String, Option<String>, i32, i64, i64)> = client
        .query(
            "SELECT kind, key, max_running, running, waiting FROM long_task.limits ORDER BY kind, key",
            &[],
        )
        .await
        .expect("view")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        view,
        [
            ("group".to_string(), None, 6, 6, 4),
            ("key".to_string(), Some("host-a".to_string()), 1, 1, 2),
            ("key".to_string(), Some("host-b".to_string()), 2, 2, 1),
            ("key".to_string(), Some("other".to_string()), 3, 3, 1),
        ]
    );

    // acking one host-a run lets exactly one more host-a start, and raising the limit more
    let host_a: i64 = client
        .query_one(
            "SELECT id FROM long_task.task WHERE concurrency_key = 'host-a' AND state_id = 'AE'",
            &[],
        )
        .await
        .expect("host-a")
        .get(0);
    let run_id: uuid::Uuid = client
        .query_one(
            "SELECT run_id FROM long_task.task WHERE id = $1",
            &[&host_a],
        )
        .await
        .expect("run id")
        .get(0);
    client
        .execute(
            "SELECT long_task.ack($1, p_run_id => $2)",
            &[&host_a, &run_id],
        )
        .await
        .expect("ack");
    let next = taken(
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume"),
    );
    assert_eq!(next.len(), 1, "{next:?}");
    client
        .batch_execute("UPDATE long_task.group_settings SET max_running = NULL WHERE group_id = 0")
        .await
        .expect("raise");
    let more = taken(
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume"),
    );
    // host-a at its 1, host-b at its 2 (one waits), other: 3 running, one waits → none of them
    assert!(more.is_empty(), "{more:?}");
    client
        .batch_execute(
            "UPDATE long_task.key_limit SET max_running = 5 WHERE key_pattern = 'host-%'",
        )
        .await
        .expect("raise key");
    let more = taken(
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume"),
    );
    assert_eq!(more.len(), 1, "the waiting host-b task: {more:?}");
}

/// Fair share: a key with 1,000 waiting tasks queued first does not starve a key with 10; the
/// claims take turns across keys within the best priority, and a better priority still comes
/// first.
#[tokio::test]
async fn fair_share_takes_turns_across_keys() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, fair_share) VALUES (0, true);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 't', 'big' FROM generate_series(1, 1000);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 't', 'small' FROM generate_series(1, 10);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key, priority)
             VALUES (0, 'AW', 't', 'urgent', -1);",
        )
        .await
        .expect("setup");
    let mut order: Vec<String> = Vec::new();
    for _ in 0..6 {
        let rows = client
            .query(
                "SELECT t.concurrency_key FROM long_task.consume(4) c
                   JOIN long_task.task t ON t.id = c.id ORDER BY c.id",
                &[],
            )
            .await
            .expect("consume");
        assert_eq!(rows.len(), 4, "a fair claim came back short");
        order.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    assert!(
        order[..4].contains(&"urgent".to_string()),
        "the better priority in the first claim: {order:?}"
    );
    let small = order.iter().filter(|k| *k == "small").count();
    // 24 taken: the urgent one, then big and small in turns (FIFO would give small none)
    assert_eq!(
        small, 10,
        "the small key's tasks were not served in turns: {order:?}"
    );
    let fifo_would: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE concurrency_key = 'big' AND state_id = 'AE'",
            &[],
        )
        .await
        .expect("big")
        .get(0);
    assert_eq!(fifo_would, 13);
}

/// A key's own rate (a long_task.key_limit row with rate_limit): its starts are spaced while
/// other keys start at once.
#[tokio::test]
async fn a_keys_own_rate_limit_spaces_only_that_key() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.key_limit (group_id, key_pattern, rate_limit, rate_interval)
             VALUES (0, 'api-%', 2, '1 second');
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 't', k FROM unnest(ARRAY['api-x', 'api-x', 'api-x', 'api-x', 'free', 'free', 'free']) k;",
        )
        .await
        .expect("setup");
    let keys = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let consume = "SELECT t.concurrency_key FROM long_task.consume(10) c
                     JOIN long_task.task t ON t.id = c.id ORDER BY 1";
    let first = keys(client.query(consume, &[]).await.expect("consume"));
    // the bucket holds 2: two api-x now, every free one
    assert_eq!(first, ["api-x", "api-x", "free", "free", "free"]);
    assert!(keys(client.query(consume, &[]).await.expect("consume")).is_empty());
    let view: (i32, f64) = {
        let row = client
            .query_one(
                "SELECT max_running, tokens_left FROM long_task.limits WHERE kind = 'key rate'",
                &[],
            )
            .await
            .expect("view");
        (row.get(0), row.get(1))
    };
    assert_eq!(view.0, 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // one token back after half a second
    assert_eq!(
        keys(client.query(consume, &[]).await.expect("consume")),
        ["api-x"]
    );
    let starved: bool = client
        .query_one(
            "SELECT starved FROM long_task.rate_bucket WHERE key = 'api-x'",
            &[],
        )
        .await
        .expect("bucket")
        .get(0);
    assert!(starved, "the empty bucket asks the scheduler for a wake");
}

/// The keys of what one consume(n) took, sorted.
async fn consume_keys(client: &Client, n: i32) -> Vec<String> {
    client
        .query(
            "SELECT t.concurrency_key FROM long_task.consume($1) c
               JOIN long_task.task t ON t.id = c.id ORDER BY 1",
            &[&n],
        )
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A claim that no key can take to its limit takes its entries straight (no count per key);
/// one that a running key could take past its limit counts each key. Both sides of that line,
/// with and without fair share.
#[tokio::test]
async fn a_key_near_its_limit_is_counted_however_far_the_others_are() {
    for fair in [false, true] {
        let (_db, client) = migrated_db().await;
        client
            .batch_execute(&format!(
                "INSERT INTO long_task.group_settings (group_id, key_limit, fair_share) VALUES (0, 10, {fair});
                 INSERT INTO long_task.key_limit VALUES (0, 'b', 20);
                 INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
                 SELECT 0, 'AW', 't', 'a' FROM generate_series(1, 14);"
            ))
            .await
            .expect("setup");
        // 6 of a run, then 2 more: 8 running, and a claim of 2 cannot take a past 10
        assert_eq!(consume_keys(&client, 6).await.len(), 6, "fair {fair}");
        assert_eq!(consume_keys(&client, 2).await, ["a", "a"], "fair {fair}");
        client
            .batch_execute(
                "INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
                 SELECT 0, 'AW', 't', 'b' FROM generate_series(1, 5)",
            )
            .await
            .expect("b");
        // a has 2 starts left, fewer than the claim asks for: 2 of a, then b (the a entries
        // passed over stay queued)
        let next = consume_keys(&client, 5).await;
        assert_eq!(next, ["a", "a", "b", "b", "b"], "fair {fair}");
        // a is at its limit: only b's are left to take
        let more = consume_keys(&client, 10).await;
        assert_eq!(more, ["b", "b"], "fair {fair}");
        let states: Vec<(String, String, i64)> = client
            .query(
                "SELECT concurrency_key, state_id, count(*) FROM long_task.task GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            )
            .await
            .expect("states")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            states,
            [
                ("a".to_string(), "AE".to_string(), 10),
                ("a".to_string(), "AW".to_string(), 4),
                ("b".to_string(), "AE".to_string(), 5)
            ],
            "fair {fair}"
        );
        let queued: i64 = client
            .query_one(
                "SELECT count(*) FROM long_task.ready r JOIN long_task.task t ON t.id = r.task_id
                  WHERE t.state_id = 'AW' AND r.lsc = t.last_state_change",
                &[],
            )
            .await
            .expect("ring")
            .get(0);
        assert_eq!(
            queued, 4,
            "fair {fair}: the waiting a's are still on the ring"
        );
    }
}

/// A fair-share claim finds a key's head across the ring's live slots (one statement per slot):
/// a key's better entry in a newer slot comes before its older one.
#[tokio::test]
async fn a_fair_claim_takes_a_keys_best_entry_across_slots() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, fair_share) VALUES (0, true);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key, priority, params)
             VALUES (0, 'AW', 't', 'a', 5, '{\"n\": \"old\"}');
             SELECT long_task.rotate_ready();",
        )
        .await
        .expect("setup");
    let slots: i64 = client
        .query_one(
            "SELECT cardinality(long_task.ready_live_slots())::bigint",
            &[],
        )
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 2, "the first slot was sealed");
    client
        .batch_execute(
            "INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key, priority, params)
             VALUES (0, 'AW', 't', 'a', 0, '{\"n\": \"new\"}')",
        )
        .await
        .expect("second");
    let taken: Vec<String> = client
        .query("SELECT params->>'n' FROM long_task.consume(1)", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(taken, ["new"]);
    let rest: Vec<String> = client
        .query("SELECT params->>'n' FROM long_task.consume(5)", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rest, ["old"]);
}

/// A consume across groups while a group is limited goes group by group; when no coordinator
/// turned the ring for 5 s the consume turns it itself, and emptying a slot then must not meet
/// the consume's own list of groups (it used to: "cannot TRUNCATE ready_0 because it is being
/// used by active queries in this session").
#[tokio::test]
async fn a_consume_across_groups_may_turn_the_ring_while_limits_are_set() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, max_running) VALUES (1, 100);
             INSERT INTO long_task.task (group_id, state_id, topic)
             SELECT g, 'AW', 't' FROM generate_series(0, 1) g, generate_series(1, 3);
             SELECT long_task.rotate_ready();
             -- the ring looks unturned for longer than 5 s, with a sealed slot to empty
             SELECT setval('long_task.ready_rotated_at', 1);",
        )
        .await
        .expect("setup");
    let groups: Vec<i32> = client
        .query("SELECT group_id FROM long_task.consume(10) ORDER BY 1", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(groups, [0, 0, 0, 1, 1, 1]);
    let head: i64 = client
        .query_one("SELECT last_value FROM long_task.ready_head", &[])
        .await
        .expect("head")
        .get(0);
    assert_eq!(head, 1, "the consume turned the ring");
}
