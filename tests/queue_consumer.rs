//! The SQL consumer API against the database (no node): publish, publish_bulk, consume,
//! consume_topic, ack, ack_many, nack, lease expiry, unique tasks, two concurrent consumers, and
//! plans of the hot paths that stay on the indexes once the table has grown.

mod common;

use common::{migrated_db, publish};
use tokio_postgres::Client;
use uuid::Uuid;

async fn text(client: &Client, sql: &str, id: i64) -> Option<String> {
    client.query_one(sql, &[&id]).await.expect(sql).get(0)
}

#[tokio::test]
async fn consume_ack_nack_and_topics() {
    let (_db, client) = migrated_db().await;
    let a = publish(&client, "mail.send").await;
    let b = publish(&client, "mail.bounce").await;
    let c = publish(&client, "sms.send").await;
    let got = client
        .query(
            "SELECT id, topic, params FROM long_task.consume_topic('mail.%', 10)",
            &[],
        )
        .await
        .expect("consume_topic");
    let mut ids: Vec<i64> = got.iter().map(|r| r.get(0)).collect();
    ids.sort();
    assert_eq!(ids, vec![a, b]);
    // ack with a result
    let s: Option<String> = client
        .query_one("SELECT long_task.ack($1, '{\"ok\": true}')::text", &[&a])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(s.as_deref(), Some("CS"));
    assert_eq!(
        text(
            &client,
            "SELECT result::text FROM long_task.task WHERE id = $1",
            a
        )
        .await
        .as_deref(),
        Some("{\"ok\": true}")
    );
    // ack again: nothing (already final)
    let s: Option<String> = client
        .query_one("SELECT long_task.ack($1)::text", &[&a])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(s, None);
    // nack with the default single attempt: CF with the error
    let s: Option<String> = client
        .query_one("SELECT long_task.nack($1, 'smtp down')::text", &[&b])
        .await
        .expect("nack")
        .get(0);
    assert_eq!(s.as_deref(), Some("CF"));
    assert_eq!(
        text(&client, "SELECT error FROM long_task.task WHERE id = $1", b)
            .await
            .as_deref(),
        Some("smtp down")
    );
    // consume(n) takes the rest; a stale run id is fenced
    let got = client
        .query("SELECT id, run_id FROM long_task.consume(10)", &[])
        .await
        .expect("consume");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].get::<_, i64>(0), c);
    let s: Option<String> = client
        .query_one(
            "SELECT long_task.ack($1, NULL, $2)::text",
            &[&c, &Uuid::new_v4()],
        )
        .await
        .expect("ack")
        .get(0);
    assert_eq!(s, None, "an ack with another run id is fenced");
    let run_id: Uuid = got[0].get(1);
    let s: Option<String> = client
        .query_one("SELECT long_task.ack($1, NULL, $2)::text", &[&c, &run_id])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(s.as_deref(), Some("CS"));
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task_run WHERE worker_id < 0",
            &[],
        )
        .await
        .expect("history")
        .get(0);
    assert_eq!(
        n, 3,
        "consumer attempts are recorded with the consumer's (negative) id"
    );
}

#[tokio::test]
async fn nack_with_attempts_left_retries_at_the_given_time() {
    let (_db, client) = migrated_db().await;
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('t', NULL, p_max_attempts => 2)",
            &[],
        )
        .await
        .expect("publish")
        .get(0);
    client
        .query("SELECT * FROM long_task.consume(1)", &[])
        .await
        .expect("consume");
    let s: Option<String> = client
        .query_one(
            "SELECT long_task.nack($1, 'later', now() + interval '1 hour')::text",
            &[&id],
        )
        .await
        .expect("nack")
        .get(0);
    assert_eq!(s.as_deref(), Some("AW"));
    let exact: bool = client
        .query_one(
            "SELECT run_after = finished + interval '1 hour' FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0);
    assert!(exact, "retry_at is honoured");
    assert!(
        client
            .query("SELECT * FROM long_task.consume(1)", &[])
            .await
            .expect("consume")
            .is_empty(),
        "not before run_after"
    );
    client
        .execute(
            "UPDATE long_task.task SET run_after = now() WHERE id = $1",
            &[&id],
        )
        .await
        .expect("due");
    client
        .query("SELECT * FROM long_task.consume(1)", &[])
        .await
        .expect("consume");
    let s: Option<String> = client
        .query_one("SELECT long_task.nack($1, 'again')::text", &[&id])
        .await
        .expect("nack")
        .get(0);
    assert_eq!(s.as_deref(), Some("CF"), "the second attempt was the last");
}

#[tokio::test]
async fn two_concurrent_consumers_never_get_the_same_task() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "SELECT long_task.publish_bulk(array_agg(ROW('t', jsonb_build_object('i', g), NULL, NULL, 0, 1, NULL)::long_task.bulk_task)) FROM generate_series(1, 2000) g",
        )
        .await
        .expect("bulk");
    let mut workers = Vec::new();
    for _ in 0..2 {
        let url = db.url.clone();
        workers.push(tokio::spawn(async move {
            let c = common::connect(&url).await;
            let mut seen = Vec::new();
            loop {
                let rows = c
                    .query("SELECT id FROM long_task.consume(7)", &[])
                    .await
                    .expect("consume");
                if rows.is_empty() {
                    break;
                }
                for r in rows {
                    let id: i64 = r.get(0);
                    seen.push(id);
                    c.query_one("SELECT long_task.ack($1)", &[&id])
                        .await
                        .expect("ack");
                }
            }
            seen
        }));
    }
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for w in workers {
        let seen = w.await.expect("consumer");
        per_consumer.push(seen.len());
        all.extend(seen);
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a task was handed out twice");
    assert_eq!(total, 2000, "every task consumed once");
    assert!(
        per_consumer.iter().all(|n| *n > 0),
        "both consumers worked: {per_consumer:?}"
    );
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2000);
}

#[tokio::test]
async fn expired_leases_are_requeued_then_failed() {
    let (_db, client) = migrated_db().await;
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('t', NULL, p_timeout => 30, p_max_attempts => 2)",
            &[],
        )
        .await
        .expect("publish")
        .get(0);
    let lease: f64 = client
        .query_one(
            "SELECT extract(epoch FROM lease_until - now())::float8 FROM long_task.consume(1)",
            &[],
        )
        .await
        .expect("consume")
        .get(0);
    assert_eq!(lease, 30.0, "lease = the task's timeout");
    // not expired yet: nothing happens, and the next deadline is reported
    let row = client
        .query_one(
            "SELECT expired, next_due_in FROM long_task.expire_leases(0)",
            &[],
        )
        .await
        .expect("expire");
    assert_eq!(row.get::<_, i32>(0), 0);
    let next: f64 = row.get::<_, Option<f64>>(1).expect("a deadline");
    assert!(next > 25.0 && next <= 30.0, "{next}");
    // the deadline passes (moved, instead of waiting)
    client
        .execute(
            "UPDATE long_task.task SET lease_until = now() - interval '1 second' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("expire");
    let expired_view: i64 = client
        .query_one("SELECT count(*) FROM long_task.expired", &[])
        .await
        .expect("view")
        .get(0);
    assert_eq!(expired_view, 1);
    let row = client
        .query_one(
            "SELECT expired, next_due_in FROM long_task.expire_leases(0)",
            &[],
        )
        .await
        .expect("expire");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, Option<f64>>(1), None, "no lease left");
    let row = client
        .query_one(
            "SELECT state_id::text, error, lease_until IS NULL FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, String>(0),
        "AW",
        "re-queued: an attempt was left"
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("lease expired")
    );
    assert!(row.get::<_, bool>(2));
    // the late ack of the expired attempt changes nothing (it is no longer running)
    let s: Option<String> = client
        .query_one("SELECT long_task.ack($1)::text", &[&id])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(s, None);
    // second and last attempt expires too: CF
    client
        .execute(
            "UPDATE long_task.task SET run_after = now() WHERE id = $1",
            &[&id],
        )
        .await
        .expect("due");
    client
        .query("SELECT * FROM long_task.consume(1)", &[])
        .await
        .expect("consume");
    client
        .execute(
            "UPDATE long_task.task SET lease_until = now() - interval '1 second' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("expire");
    client
        .query("SELECT * FROM long_task.expire_leases(0)", &[])
        .await
        .expect("expire");
    assert_eq!(common::node::state(&client, id).await, "CF");
}

#[tokio::test]
async fn dedup_returns_the_existing_id_while_active() {
    let (_db, client) = migrated_db().await;
    let publish = |key: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT long_task.publish('t', NULL, p_dedup_key => $1)",
                    &[&key],
                )
                .await
                .expect("publish")
                .get::<_, i64>(0)
        }
    };
    let a = publish("k1").await;
    assert_eq!(publish("k1").await, a, "same key while waiting: same id");
    let b = publish("k2").await;
    assert_ne!(a, b);
    // bulk: a taken key, a new key twice in the batch, no key
    let ids: Vec<i64> = client
        .query(
            "SELECT * FROM long_task.publish_bulk(ARRAY[
                ROW('t', NULL, NULL, NULL, 0, 1, 'k1'),
                ROW('t', NULL, NULL, NULL, 0, 1, 'k3'),
                ROW('t', NULL, NULL, NULL, 0, 1, 'k3'),
                ROW('t', NULL, NULL, NULL, 0, 1, NULL)]::long_task.bulk_task[])",
            &[],
        )
        .await
        .expect("bulk")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], a);
    assert_eq!(ids[1], ids[2], "a key repeated in one batch is one task");
    assert!(ids[3] != ids[1] && ids[1] != a);
    // once final, the key is free again
    client
        .query("SELECT * FROM long_task.consume_topic('t', 10)", &[])
        .await
        .expect("consume");
    client
        .query_one("SELECT long_task.ack($1)", &[&a])
        .await
        .expect("ack");
    let again = publish("k1").await;
    assert_ne!(again, a, "a finished task does not hold its key");
}

#[tokio::test]
async fn ack_many_acknowledges_a_batch_in_one_statement() {
    let (_db, client) = migrated_db().await;
    for _ in 0..3 {
        publish(&client, "t").await;
    }
    let ids: Vec<i64> = client
        .query("SELECT id FROM long_task.consume(10) ORDER BY id", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 3);
    let mut with_stranger = ids.clone();
    with_stranger.push(999_999);
    let results: Vec<serde_json::Value> = with_stranger
        .iter()
        .map(|i| serde_json::json!({ "n": i }))
        .collect();
    let written = client
        .query(
            "SELECT id, state_id::text FROM long_task.ack_many($1, $2) ORDER BY id",
            &[&with_stranger, &results],
        )
        .await
        .expect("ack_many");
    assert_eq!(written.len(), 3, "only running tasks are acknowledged");
    for (row, id) in written.iter().zip(&ids) {
        assert_eq!(row.get::<_, i64>(0), *id);
        assert_eq!(row.get::<_, String>(1), "CS");
        let result: Option<serde_json::Value> = client
            .query_one("SELECT result FROM long_task.task WHERE id = $1", &[id])
            .await
            .expect("row")
            .get(0);
        assert_eq!(
            result,
            Some(serde_json::json!({ "n": id })),
            "each id gets its own result"
        );
    }
}

#[tokio::test]
async fn a_lease_is_the_task_timeout_else_the_group_lease_else_60_s() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute("INSERT INTO long_task.group_settings (group_id, lease) VALUES (1, 7)")
        .await
        .expect("group settings");
    // group 1, with and without a task timeout
    let publish_in_group_1 = |timeout: Option<f64>| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT long_task.publish('t', NULL, NULL, $1, 0, NULL, 1)",
                    &[&timeout],
                )
                .await
                .expect("publish")
                .get::<_, i64>(0)
        }
    };
    let with_timeout = publish_in_group_1(Some(3.0)).await;
    let group_lease = publish_in_group_1(None).await;
    let default_lease = publish(&client, "t").await; // group 0: no settings
    let leases = client
        .query(
            // now(): the transaction's start, which consume stamps as the attempt's start
            "SELECT c.id, extract(epoch FROM c.lease_until - now())::float8
               FROM long_task.consume(10) c ORDER BY c.id",
            &[],
        )
        .await
        .expect("consume");
    let leases: Vec<(i64, f64)> = leases.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        leases,
        vec![
            (with_timeout, 3.0),
            (group_lease, 7.0),
            (default_lease, 60.0)
        ]
    );
}

/// One task through each hot path: a consumer's consume and ack_many (complete_runs), and a
/// node's claim and outcome (finish_runs).
async fn one_round(client: &Client) {
    client
        .execute("SELECT long_task.publish('plans')", &[])
        .await
        .expect("publish");
    let ids: Vec<i64> = client
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("consume")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 1, "one task consumed");
    client
        .execute("SELECT long_task.ack_many($1)", &[&ids])
        .await
        .expect("ack_many");
    client
        .execute(
            "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}')",
            &[],
        )
        .await
        .expect("insert");
    let row = client
        .query_one("SELECT id, run_id FROM long_task.claim(1, 0, 10)", &[])
        .await
        .expect("claim");
    let (id, run_id): (i64, Uuid) = (row.get(0), row.get(1));
    let state: String = client
        .query_one(
            "SELECT state_id::text FROM long_task.finish_runs(ARRAY[$1::bigint], ARRAY[$2::uuid], ARRAY['CS'],
                     ARRAY[NULL::text], ARRAY[0], ARRAY[NULL::int], ARRAY[''], ARRAY[''])",
            &[&id, &run_id],
        )
        .await
        .expect("finish_runs")
        .get(0);
    assert_eq!(state, "CS");
}

/// PL/pgSQL keeps a session's plans: those made while long_task.task held a handful of rows (a
/// fresh database, a node started on an empty queue) must still take the indexes once the table
/// has grown, or every claim, consume and outcome batch reads the whole table.
#[tokio::test]
async fn plans_made_on_a_small_table_use_the_indexes_once_it_has_grown() {
    let (_db, client) = migrated_db().await;
    // no autovacuum: an ANALYZE meanwhile would have the plans made again on the grown table
    client
        .batch_execute("ALTER TABLE long_task.task SET (autovacuum_enabled = false)")
        .await
        .expect("autovacuum off");
    // the session's plans are made here, on a table of a few rows
    one_round(&client).await;
    one_round(&client).await;
    // history: 20,000 finished tasks (a fixture, not state changes: no triggers)
    client
        .batch_execute(
            "SET session_replication_role = replica;
             INSERT INTO long_task.task (state_id, command, attempt, max_attempts, finished)
             SELECT 'CS', '{true}', 1, 1, now() FROM generate_series(1, 20000);
             SET session_replication_role = origin;",
        )
        .await
        .expect("history");
    // the scans this session has not reported yet, read twice in one transaction (a session
    // reports them only between transactions): the difference is the round's
    let seq_scans =
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'long_task.task'::regclass";
    client.batch_execute("BEGIN").await.expect("begin");
    let before: i64 = client
        .query_one(seq_scans, &[])
        .await
        .expect("stats")
        .get(0);
    one_round(&client).await;
    let after: i64 = client
        .query_one(seq_scans, &[])
        .await
        .expect("stats")
        .get(0);
    client.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        after - before,
        0,
        "a consume, an ack, a claim and an outcome read long_task.task by sequential scans"
    );
}
