//! Queue semantics with real nodes: retries driven by the Scheduler's timer (no polling), lease
//! expiry by the node, and the Rust API (client and embedded node with handlers).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{node_with_http, request};
use common::migrated_db;
use common::node::{state, wait_coordinator, wait_node_ready, wait_state, wait_until, NodeProcess};
use pgtaskd::client::{Client, NewTask, TaskState};
use pgtaskd::config::NodeConfig;
use pgtaskd::embedded::Node;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_failing_command_is_retried_after_its_backoff_then_ends_cf() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &["--max-tasks", "2"]);
    wait_node_ready(&client, 1).await;
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, max_attempts, retry_base, retry_max, retry_jitter)
             VALUES (0, 'AW', '{sh,-c,echo try >&2; exit 3}', 3, 0.3, 10, 0.2) RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    wait_state(&client, id, "CF", LONG).await;
    let row = client
        .query_one(
            "SELECT attempt, error, exit_code, stderr_tail FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(0), 3);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("exited with code 3")
    );
    assert_eq!(row.get::<_, Option<i32>>(2), Some(3));
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref().map(str::trim),
        Some("try")
    );
    // history: three failed attempts; each retry started no earlier than its retry time, and each
    // back-off lies within the formula's bounds: d = 0.3 * 2^(n-1), delay in [0.8 d, d]
    let runs = client
        .query(
            "SELECT attempt, state_id::text, worker_id,
                    extract(epoch FROM retry_at - finished)::float8,
                    lead(started) OVER (ORDER BY attempt) >= retry_at
               FROM long_task.task_run WHERE task_id = $1 ORDER BY attempt",
            &[&id],
        )
        .await
        .expect("history");
    assert_eq!(runs.len(), 3);
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 + 1);
        assert_eq!(r.get::<_, String>(1), "CF");
        assert_eq!(r.get::<_, Option<i64>>(2), Some(1));
        let delay: Option<f64> = r.get(3);
        let waited: Option<bool> = r.get(4);
        if i < 2 {
            let d = 0.3 * 2f64.powi(i as i32);
            let delay = delay.expect("a retry time");
            assert!(
                delay >= 0.8 * d - 1e-6 && delay <= d + 1e-6,
                "attempt {}: {delay}",
                i + 1
            );
            assert_eq!(
                waited,
                Some(true),
                "attempt {} started before its retry time",
                i + 2
            );
        } else {
            assert_eq!(delay, None, "the last attempt is not retried");
        }
    }
}

/// Publishes a consumer task with a lease of `lease_secs` and two attempts, and consumes it
/// (never acked); its id.
async fn consume_with_lease(client: &tokio_postgres::Client, lease_secs: f64) -> i64 {
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('slow', NULL, p_timeout => $1, p_max_attempts => 2)",
            &[&lease_secs],
        )
        .await
        .expect("publish")
        .get(0);
    let got = client
        .query("SELECT id FROM long_task.consume(1)", &[])
        .await
        .expect("consume");
    assert_eq!(got.len(), 1);
    id
}

/// Waits until the lease of task `id` has expired and the task is back in the queue (one
/// attempt was left); panics after `limit` with the task's stall report.
async fn wait_lease_requeued(client: &tokio_postgres::Client, id: i64, limit: Duration) {
    let requeued = wait_until(limit, || async {
        client
            .query_one(
                "SELECT state_id = 'AW' AND error = 'lease expired' FROM long_task.task WHERE id = $1",
                &[&id],
            )
            .await
            .expect("row")
            .get::<_, bool>(0)
    })
    .await;
    if let Err(e) = requeued {
        let report = common::stall::stall_report(client, id).await;
        panic!("the expired lease was not re-queued within {limit:?}: {e:?}\n{report}");
    }
}

#[tokio::test]
async fn the_node_expires_a_consumer_lease_and_requeues_it() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = consume_with_lease(&client, 0.5).await;
    // the consumer never acks: the node's Scheduler (timer at the lease deadline) fails the
    // attempt, which goes back to the queue since one attempt is left
    wait_lease_requeued(&client, id, LONG).await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task_run WHERE task_id = $1 AND error = 'lease expired'",
            &[&id],
        )
        .await
        .expect("history")
        .get(0);
    assert_eq!(n, 1);
    // and the process node never ran the consumer task
    assert_eq!(state(&client, id).await, "AW");
}

/// A lease consumed before any node listened has no notification anyone heard: the
/// coordinator learns its deadline from its first full pass only. A tick in between (here one a
/// `sched` notification asks for, which looks only at what came due since the last tick) must
/// not make it forget that deadline: before the fix the lease waited for the next full pass,
/// five minutes on.
#[tokio::test]
async fn a_lease_no_node_heard_of_expires_after_a_tick_in_between() {
    let (db, client) = migrated_db().await;
    let id = consume_with_lease(&client, 5.0).await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    // the term's full pass has run (or runs now): a tick asked for after it is incremental
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .execute("SELECT pg_notify(long_task.channel(0), 'sched')", &[])
        .await
        .expect("notify");
    wait_lease_requeued(&client, id, Duration::from_secs(20)).await;
}

/// The node's `pgtaskd_scheduler_ticks_total`.
fn scheduler_ticks(base: &str) -> u64 {
    let (status, text) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("pgtaskd_scheduler_ticks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pgtaskd_scheduler_ticks_total in {text}"))
}

#[tokio::test]
async fn a_burst_of_consumes_costs_the_coordinator_a_few_scheduler_ticks() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 1, &[]).await;
    wait_node_ready(&client, 1).await;
    wait_coordinator(&client, 0, LONG, |worker, _| worker == 1).await;
    // leases of 1 s, one attempt: each expires to CF 'lease expired'
    client
        .execute(
            "SELECT long_task.publish_bulk(array_agg(
                 ROW('burst', NULL::jsonb, NULL::timestamptz, 1::float8, 0, 1, NULL::text)::long_task.bulk_task))
               FROM generate_series(1, 60)",
            &[],
        )
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scheduler_ticks(&base);
    // 60 consumes pipelined on one connection, each its own transaction: 60 `lease`
    // notifications, one per new lease deadline
    let started = Instant::now();
    let consumes = (0..60).map(|_| client.query("SELECT id FROM long_task.consume(1)", &[]));
    let consumed: usize = futures_util::future::try_join_all(consumes)
        .await
        .expect("consume")
        .iter()
        .map(Vec::len)
        .sum();
    let burst = started.elapsed();
    assert_eq!(consumed, 60);
    // a lease notification arms the timer for its deadline: no tick before the leases end
    let during = scheduler_ticks(&base) - before;
    assert_eq!(
        during, 0,
        "{during} ticks for 60 consumes before any lease ended"
    );
    // after the deadlines (1 s, announced rounded up to 100 ms) every lease has expired
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) = 60 FROM long_task.task WHERE topic = 'burst' AND error = 'lease expired'",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await
    .expect("every lease expired");
    let ticks = scheduler_ticks(&base) - before;
    // the deadlines spread over the burst: one tick per 100 ms of it at most, plus two
    let bound = 2 + u64::try_from(burst.as_millis() / 100).unwrap_or(u64::MAX);
    assert!(
        (1..=bound).contains(&ticks),
        "{ticks} scheduler ticks for 60 leases taken in {burst:?} (at most {bound})"
    );
}

fn embedded_config(url: &str) -> NodeConfig {
    NodeConfig {
        database_url: Some(url.to_owned()),
        max_tasks: 4,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        kill_grace: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(2),
        ..NodeConfig::default()
    }
}

#[tokio::test]
async fn embedded_handlers_run_tasks_and_a_panic_retries_without_killing_the_node() {
    let (db, _pg) = migrated_db().await;
    let calls = Arc::new(AtomicU32::new(0));
    let mut node = Node::new(embedded_config(&db.url));
    node.handler("add", |task| async move {
        let a = task.params["a"].as_i64().unwrap_or(0);
        let b = task.params["b"].as_i64().unwrap_or(0);
        Ok::<_, String>(serde_json::json!({ "sum": a + b }))
    });
    let seen = calls.clone();
    node.handler("flaky", move |task| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            if task.attempt == 1 {
                panic!("first attempt explodes");
            }
            Ok::<_, String>(task.attempt)
        }
    });
    node.handler("fails", |_task| async move { Err::<(), _>("no such user") });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node starts");

    let client = Client::connect(&db.url).await.expect("client");
    let add = client
        .submit(&NewTask::topic("add").params(serde_json::json!({"a": 2, "b": 40})))
        .await
        .expect("submit");
    let done = client.wait(add, LONG).await.expect("add ends");
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result, Some(serde_json::json!({"sum": 42})));

    let flaky = client
        .submit(
            &NewTask::topic("flaky")
                .max_attempts(2)
                .delay(Duration::ZERO),
        )
        .await
        .expect("submit");
    let done = match client.wait(flaky, LONG).await {
        Ok(done) => done,
        Err(e) => {
            let pg = common::connect(&db.url).await;
            panic!(
                "flaky ends: {e:?}\n{}",
                common::stall::stall_report(&pg, flaky).await
            )
        }
    };
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.result, Some(serde_json::json!(2)));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let pg = common::connect(&db.url).await;
    let first_error: Option<String> = pg
        .query_one(
            "SELECT error FROM long_task.task_run WHERE task_id = $1 AND attempt = 1",
            &[&flaky],
        )
        .await
        .expect("history")
        .get(0);
    assert_eq!(
        first_error.as_deref(),
        Some("handler panicked: first attempt explodes")
    );

    let fails = client
        .submit(&NewTask::topic("fails"))
        .await
        .expect("submit");
    let done = client.wait(fails, LONG).await.expect("fails ends");
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.as_deref(), Some("no such user"));

    // the node survived the panic: it still runs tasks
    let again = client
        .submit(&NewTask::topic("add").params(serde_json::json!({"a": 1, "b": 1})))
        .await
        .expect("submit");
    assert_eq!(
        client.wait(again, LONG).await.expect("ends").state,
        TaskState::Succeeded
    );
    // a topic without a handler is left for SQL consumers
    let other = client
        .submit(&NewTask::topic("other"))
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&pg, other).await, "AW");

    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("node stops");
}

#[tokio::test]
async fn cancel_fires_the_handlers_token_and_timeouts_fail_the_attempt() {
    let (db, pg) = migrated_db().await;
    let mut node = Node::new(embedded_config(&db.url));
    node.handler("wait", |task| async move {
        task.cancel.cancelled().await;
        Ok::<_, String>("saw the cancel")
    });
    node.handler("stuck", |_task| async move {
        // ignores its token: dropped after kill_grace
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, String>(())
    });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node starts");
    let client = Client::connect(&db.url).await.expect("client");
    let id = client
        .submit(&NewTask::topic("wait"))
        .await
        .expect("submit");
    wait_state(&pg, id, "AE", LONG).await;
    assert!(client.cancel(id).await.expect("cancel"));
    let done = client.wait(id, LONG).await.expect("ends");
    assert_eq!(done.state, TaskState::Cancelled);

    let stuck = client
        .submit(&NewTask::topic("stuck").timeout(Duration::from_millis(300)))
        .await
        .expect("submit");
    let done = client.wait(stuck, LONG).await.expect("ends");
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.as_deref(), Some("timeout"));
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("node stops");
}

#[tokio::test]
async fn submit_in_a_rolled_back_transaction_leaves_nothing() {
    let (db, _pg) = migrated_db().await;
    let client = Client::connect(&db.url).await.expect("client");
    let mut pg = common::connect(&db.url).await;
    let tx = pg.transaction().await.expect("begin");
    let id = client
        .submit_in(&tx, &NewTask::topic("t").dedup_key("once"))
        .await
        .expect("submit_in");
    tx.rollback().await.expect("rollback");
    assert!(
        client.get(id).await.expect("get").is_none(),
        "the rolled-back task exists"
    );
    let tx = pg.transaction().await.expect("begin");
    let kept = client
        .submit_in(&tx, &NewTask::topic("t").dedup_key("once"))
        .await
        .expect("submit_in");
    tx.commit().await.expect("commit");
    assert!(client.get(kept).await.expect("get").is_some());
    // dedup through the client: the same key while active returns the same id
    let again = client
        .submit(&NewTask::topic("t").dedup_key("once"))
        .await
        .expect("submit");
    assert_eq!(again, kept);
}

#[tokio::test]
async fn a_three_stage_pipeline_of_handlers_runs_in_order() {
    let (db, pg) = migrated_db().await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut node = Node::new(embedded_config(&db.url));
    let log = order.clone();
    node.handler("stage", move |task| {
        let log = log.clone();
        async move {
            log.lock()
                .expect("lock")
                .push(task.params["n"].as_i64().unwrap_or(0));
            if task.params["fail"].as_bool() == Some(true) {
                return Err("stage failed".to_owned());
            }
            Ok(())
        }
    });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node starts");
    let client = Client::connect(&db.url).await.expect("client");
    // publish the last stages first so that only the dependencies order them
    let a = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"n": 1}))
                .delay(Duration::from_millis(300)),
        )
        .await
        .expect("a");
    let b = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"n": 2}))
                .depends_on([a]),
        )
        .await
        .expect("b");
    let c = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"n": 3}))
                .depends_on([b]),
        )
        .await
        .expect("c");
    assert_eq!(
        client.wait(c, LONG).await.expect("c").state,
        TaskState::Succeeded
    );
    assert_eq!(*order.lock().expect("lock"), vec![1, 2, 3]);
    // a failing stage cancels the rest of its chain
    let x = client
        .submit(&NewTask::topic("stage").params(serde_json::json!({"n": 4, "fail": true})))
        .await
        .expect("x");
    let y = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"n": 5}))
                .depends_on([x]),
        )
        .await
        .expect("y");
    let z = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"n": 6}))
                .depends_on([y]),
        )
        .await
        .expect("z");
    let done = client.wait(z, LONG).await.expect("z");
    assert_eq!(done.state, TaskState::Cancelled);
    assert_eq!(done.error.as_deref(), Some("dependency failed"));
    assert_eq!(state(&pg, y).await, "CC");
    assert!(
        !order.lock().expect("lock").contains(&5),
        "a dependent of a failed task ran"
    );
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("node stops");
}

#[tokio::test]
async fn an_embedded_node_starts_like_pgtaskd_node_and_serves_http_when_configured() {
    let (db, _pg) = migrated_db().await;
    let port = common::http::free_port();
    let mut config = embedded_config(&db.url);
    config.http = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
    let mut node = Node::new(config);
    node.handler("noop", |_task| async move { Ok::<_, String>(()) });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node starts");
    let worker_id = running.worker_id();
    let (status, body) = tokio::task::spawn_blocking(move || {
        common::http::request_json("GET", &format!("http://127.0.0.1:{port}/healthz"), None)
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["worker_id"], worker_id);
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("stop");
}
