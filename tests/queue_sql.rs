//! Queue semantics straight against the database (no node): retries and their back-off formula,
//! attempt history, node claims of topic tasks, dependencies, retention and the scheduler tick
//! (the consumer API is in queue_consumer.rs, the ready ring in ready_ring_sql.rs). Time is
//! asserted only with database timestamps.

mod common;

use common::{migrated_db, publish};
use tokio_postgres::Client;
use uuid::Uuid;

async fn insert_cmd(client: &Client, extra_cols: &str, extra_vals: &str) -> i64 {
    client
        .query_one(
            format!(
                "INSERT INTO long_task.task (group_id, state_id, command{extra_cols}) VALUES (0, 'AW', '{{true}}'{extra_vals}) RETURNING id"
            )
            .as_str(),
            &[],
        )
        .await
        .expect("insert")
        .get(0)
}

/// Claims for worker 1 (process tasks) and returns (id, run_id, attempt).
async fn claim(client: &Client, n: i32) -> Vec<(i64, Uuid, i32)> {
    client
        .query(
            "SELECT id, run_id, attempt FROM long_task.claim(1, 0, $1)",
            &[&n],
        )
        .await
        .expect("claim")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn fail(client: &Client, id: i64, run_id: Uuid, error: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT state_id::text FROM long_task.finish_runs(ARRAY[$1::bigint], ARRAY[$2::uuid], ARRAY['CF'], ARRAY[$3::text],
                     ARRAY[7], ARRAY[NULL::int], ARRAY['out'], ARRAY['err'])",
            &[&id, &run_id, &error],
        )
        .await
        .expect("finish_runs")
        .map(|r| r.get(0))
}

#[tokio::test]
async fn failed_attempts_back_off_by_the_formula_then_end_cf() {
    let (_db, client) = migrated_db().await;
    // base 2 s, max 5 s, jitter 0.5: delays d = 2, 4, 5 (capped), each in [d/2, d]
    let id = insert_cmd(
        &client,
        ", max_attempts, retry_base, retry_max, retry_jitter",
        ", 4, 2, 5, 0.5",
    )
    .await;
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        let claimed = claim(&client, 10).await;
        assert_eq!(claimed.len(), 1, "attempt {attempt}: the task is runnable");
        let (cid, run_id, n) = claimed[0];
        assert_eq!((cid, n), (id, attempt));
        let state = fail(&client, id, run_id, &format!("boom {attempt}")).await;
        if attempt < 4 {
            assert_eq!(
                state.as_deref(),
                Some("AW"),
                "attempts left: back to waiting"
            );
            // not claimable before run_after (database clock)
            assert!(
                claim(&client, 10).await.is_empty(),
                "claimed before run_after"
            );
            let row = client
                .query_one(
                    "SELECT extract(epoch FROM run_after - finished)::float8, error, exit_code FROM long_task.task WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("row");
            let delay: f64 = row.get(0);
            assert_eq!(
                row.get::<_, Option<String>>(1).as_deref(),
                Some(format!("boom {attempt}").as_str())
            );
            assert_eq!(
                row.get::<_, Option<i32>>(2),
                Some(7),
                "the row shows the latest outcome"
            );
            delays.push(delay);
            // make it due now (instead of sleeping)
            client
                .execute(
                    "UPDATE long_task.task SET run_after = now() WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("due");
        } else {
            assert_eq!(
                state.as_deref(),
                Some("CF"),
                "the last attempt's failure is final"
            );
        }
    }
    for (i, (delay, d)) in delays.iter().zip([2.0, 4.0, 5.0]).enumerate() {
        assert!(
            *delay >= d * 0.5 - 1e-6 && *delay <= d + 1e-6,
            "delay {i}: {delay} not in [{}, {d}]",
            d * 0.5
        );
    }
    let row = client
        .query_one(
            "SELECT state_id::text, error, attempt, run_after FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "CF");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("boom 4"));
    assert_eq!(row.get::<_, i32>(2), 4);
    assert!(row
        .get::<_, Option<chrono::DateTime<chrono::Utc>>>(3)
        .is_none());
    // one history row per attempt, in order, with the retry time on the retried ones
    let runs = client
        .query(
            "SELECT attempt, state_id::text, error, worker_id, exit_code, stdout_tail, started IS NOT NULL, retry_at IS NOT NULL
               FROM long_task.task_run WHERE task_id = $1 ORDER BY attempt",
            &[&id],
        )
        .await
        .expect("history");
    assert_eq!(runs.len(), 4);
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 + 1);
        assert_eq!(r.get::<_, String>(1), "CF");
        assert_eq!(
            r.get::<_, Option<String>>(2),
            Some(format!("boom {}", i + 1))
        );
        assert_eq!(r.get::<_, Option<i64>>(3), Some(1), "the node is recorded");
        assert_eq!(r.get::<_, Option<i32>>(4), Some(7));
        assert_eq!(r.get::<_, Option<String>>(5).as_deref(), Some("out"));
        assert!(r.get::<_, bool>(6));
        assert_eq!(
            r.get::<_, bool>(7),
            i < 3,
            "retry_at only on retried attempts"
        );
    }
}

#[tokio::test]
async fn group_defaults_apply_and_task_settings_win() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, retry_base, retry_max, retry_jitter) VALUES (0, 10, 1000, 0)",
        )
        .await
        .expect("settings");
    let sql = "SELECT long_task.retry_delay(0, $1, $2, NULL, NULL)";
    let d = |attempt: i32, base: Option<f64>| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[&attempt, &base])
                .await
                .expect("delay")
                .get::<_, f64>(0)
        }
    };
    assert_eq!(d(1, None).await, 10.0, "group base, no jitter");
    assert_eq!(d(3, None).await, 40.0, "doubles per attempt");
    assert_eq!(d(20, None).await, 1000.0, "capped at the group's max");
    assert_eq!(d(2, Some(1.0)).await, 2.0, "the task's base wins");
    // built-in defaults for a group without settings: base 1, max 300, jitter 0.1
    let v: f64 = client
        .query_one("SELECT long_task.retry_delay(7, 1, NULL, NULL, NULL)", &[])
        .await
        .expect("delay")
        .get(0);
    assert!((0.9..=1.0).contains(&v), "{v}");
    let v: f64 = client
        .query_one(
            "SELECT long_task.retry_delay(7, 10000, NULL, NULL, NULL)",
            &[],
        )
        .await
        .expect("huge attempt numbers do not overflow")
        .get(0);
    assert!((270.0..=300.0).contains(&v), "{v}");
}

#[tokio::test]
async fn success_and_cancel_are_final_and_recorded() {
    let (_db, client) = migrated_db().await;
    let a = insert_cmd(&client, ", max_attempts", ", 3").await;
    let b = insert_cmd(&client, ", max_attempts", ", 3").await;
    let claimed = claim(&client, 10).await;
    assert_eq!(claimed.len(), 2);
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&b],
        )
        .await
        .expect("cancel");
    for (id, run_id, _) in &claimed {
        let state = fail(&client, *id, *run_id, "x").await;
        // a cancelled run never retries; a plain failure does
        assert_eq!(state.as_deref(), Some(if *id == b { "CC" } else { "AW" }));
    }
    // a stale write (wrong run id) changes nothing and records nothing
    assert_eq!(fail(&client, a, Uuid::new_v4(), "stale").await, None);
    let n: i64 = client
        .query_one("SELECT count(*) FROM long_task.task_run", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn nodes_never_claim_consumer_tasks() {
    let (_db, client) = migrated_db().await;
    let t = publish(&client, "email.send").await;
    assert!(
        claim(&client, 10).await.is_empty(),
        "a process node skips topic tasks"
    );
    let with_handler = client
        .query(
            "SELECT id, topic, params FROM long_task.claim(1, 0, 10, ARRAY['other'], true)",
            &[],
        )
        .await
        .expect("claim");
    assert!(
        with_handler.is_empty(),
        "a handler for another topic does not match"
    );
    let with_handler = client
        .query(
            "SELECT id, topic FROM long_task.claim(1, 0, 10, ARRAY['email.send'], false)",
            &[],
        )
        .await
        .expect("claim");
    assert_eq!(with_handler.len(), 1);
    assert_eq!(with_handler[0].get::<_, i64>(0), t);
}

#[tokio::test]
async fn dependency_chains_run_in_order_and_failures_propagate() {
    let (_db, client) = migrated_db().await;
    let id = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get::<_, i64>(0)
        }
    };
    let a = id("SELECT long_task.publish('stage')").await;
    let b: i64 = client
        .query_one(
            "SELECT long_task.publish('stage', p_depends_on => ARRAY[$1::bigint])",
            &[&a],
        )
        .await
        .expect("b")
        .get(0);
    let c: i64 = client
        .query_one(
            "SELECT long_task.publish('stage', p_depends_on => ARRAY[$1::bigint])",
            &[&b],
        )
        .await
        .expect("c")
        .get(0);
    let consume = || async {
        client
            .query("SELECT id FROM long_task.consume(10)", &[])
            .await
            .expect("consume")
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(consume().await, vec![a], "only the first stage is runnable");
    client
        .query_one("SELECT long_task.ack($1)", &[&a])
        .await
        .expect("ack");
    assert_eq!(consume().await, vec![b], "b runs once a succeeded");
    client
        .query_one("SELECT long_task.nack($1, 'broken')", &[&b])
        .await
        .expect("nack");
    let row = client
        .query_one(
            "SELECT state_id::text, error FROM long_task.task WHERE id = $1",
            &[&c],
        )
        .await
        .expect("c");
    assert_eq!(row.get::<_, String>(0), "CC");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("dependency failed")
    );
    // a chain cascades: d -> e -> f, cancelling d ends all three
    let d = id("SELECT long_task.publish('x', p_run_after => now() + interval '1 hour')").await;
    let e: i64 = client
        .query_one(
            "SELECT long_task.publish('x', p_depends_on => ARRAY[$1::bigint])",
            &[&d],
        )
        .await
        .expect("e")
        .get(0);
    let f: i64 = client
        .query_one(
            "SELECT long_task.publish('x', p_depends_on => ARRAY[$1::bigint, $2])",
            &[&d, &e],
        )
        .await
        .expect("f")
        .get(0);
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&d],
        )
        .await
        .expect("cancel d");
    for t in [e, f] {
        assert_eq!(common::node::state(&client, t).await, "CC", "task {t}");
    }
    // depending on an already failed task: cancelled at once; on a missing one: refused
    let g: i64 = client
        .query_one(
            "SELECT long_task.publish('x', p_depends_on => ARRAY[$1::bigint])",
            &[&b],
        )
        .await
        .expect("g")
        .get(0);
    assert_eq!(common::node::state(&client, g).await, "CC");
    let err = client
        .query_one(
            "SELECT long_task.publish('x', p_depends_on => ARRAY[999999::bigint])",
            &[],
        )
        .await
        .expect_err("missing dependency");
    assert!(
        err.to_string().contains("does not exist") || format!("{err:?}").contains("999999"),
        "{err:?}"
    );
}

#[tokio::test]
async fn retention_deletes_old_final_tasks_in_batches() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.task (group_id, state_id, command) SELECT 0, 'AW', '{true}' FROM generate_series(1, 25);
             SELECT count(*) FROM long_task.claim(1, 0, 25);
             UPDATE long_task.task SET state_id = 'CS' WHERE state_id = 'AE';
             -- five stay young, twenty are old
             UPDATE long_task.task SET finished = now() - interval '2 days' WHERE id > 5;
             INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'AW', '{true}');",
        )
        .await
        .expect("setup");
    let purge = || async {
        let r = client
            .query_one(
                "SELECT deleted, next_due_in FROM long_task.purge_finished(0)",
                &[],
            )
            .await
            .expect("purge");
        (r.get::<_, i32>(0), r.get::<_, Option<f64>>(1))
    };
    assert_eq!(purge().await, (0, None), "retention off by default: keep");
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, retention, purge_batch) VALUES (0, interval '1 day', 8)",
        )
        .await
        .expect("settings");
    assert_eq!(
        purge().await,
        (8, Some(0.0)),
        "a full batch: go again at once"
    );
    assert_eq!(purge().await.0, 8);
    let (n, next) = purge().await;
    assert_eq!(n, 4);
    let next = next.expect("the young tasks fall out later");
    assert!(next > 86_000.0 && next <= 86_400.0, "{next}");
    let left: i64 = client
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        left, 6,
        "the five young final tasks and the waiting one stay"
    );
}

#[tokio::test]
async fn scheduler_tick_reports_the_earliest_due_moment_and_wakes_due_retries() {
    let (db, client) = migrated_db().await;
    let listener = {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (lc, conn) = pgtaskd::db::connect_listening(&db.url, "test listener", tx)
            .await
            .expect("listen");
        lc.batch_execute("LISTEN long_task_g0")
            .await
            .expect("listen");
        (
            lc,
            move || {
                let mut got = Vec::new();
                while let Ok(n) = rx.try_recv() {
                    got.push(n.payload);
                }
                got
            },
            conn,
        )
    };
    let (_lc, mut drain, _conn) = listener;
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('t', p_run_after => now() + interval '100 seconds')",
            &[],
        )
        .await
        .expect("publish")
        .get(0);
    let row = client
        .query_one(
            "SELECT woken, next_due_in, db_now FROM long_task.scheduler_tick(0, NULL)",
            &[],
        )
        .await
        .expect("tick");
    assert_eq!(row.get::<_, i32>(0), 0);
    let next: f64 = row.get::<_, Option<f64>>(1).expect("due later");
    assert!(next > 95.0 && next <= 100.0, "{next}");
    let since: chrono::DateTime<chrono::Utc> = row.get(2);
    client
        .execute(
            "UPDATE long_task.task SET run_after = now() WHERE id = $1",
            &[&id],
        )
        .await
        .expect("due");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drain();
    let row = client
        .query_one(
            "SELECT woken, next_due_in FROM long_task.scheduler_tick(0, $1)",
            &[&since],
        )
        .await
        .expect("tick");
    assert_eq!(row.get::<_, i32>(0), 1, "the due retry is woken");
    assert_eq!(row.get::<_, Option<f64>>(1), None);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        drain().contains(&"wake".to_owned()),
        "a wake notification was sent"
    );
}
