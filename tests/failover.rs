//! PostgreSQL failover to a streaming standby (docs/clustering.md, "PostgreSQL failover"): nodes
//! given a multi-host URL with `target_session_attrs=read-write` follow the promoted standby with
//! every session (pool, listener, membership, coordinator, watchers); with a synchronous standby
//! nothing is lost, and when a failover does lose recent commits (an asynchronous standby that
//! fell behind) every task still reaches a final state: rows that say a live node runs a run it
//! no longer has are handed back by that node, and outcomes land only on their own attempt.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::cli::{code, pgtaskd_async};
use common::node::{wait_all_final, wait_node_ready, wait_until, NodeProcess};
use common::standby::TestPair;
use tokio_postgres::Client;
use uuid::Uuid;

/// Connects through the multi-host URL, retrying while no server accepts writes.
async fn connect_retrying(url: &str) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match pgtaskd::db::connect_dedicated(url, "failover test").await {
            Ok(client) => return client,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no read-write server: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn migrated(url: &str) -> Client {
    let mut client = connect_retrying(url).await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    client
}

async fn queue_n(client: &Client, n: i32, argv: &[&str]) -> Vec<i64> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    client
        .query(
            "INSERT INTO long_task.task (group_id, state_id, command)
             SELECT 0, 'AW', $1 FROM generate_series(1, $2) RETURNING id",
            &[&argv, &n],
        )
        .await
        .expect("queue")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Waits until `n` tasks are running.
async fn wait_running(client: &Client, n: i64) {
    wait_until(Duration::from_secs(20), || async {
        count(
            client,
            "SELECT count(*) FROM long_task.task WHERE state_id = 'AE'",
        )
        .await
            == n
    })
    .await
    .unwrap_or_else(|_| panic!("{n} tasks did not start"));
}

/// (task id, run id) of the rows `sql` selects.
async fn runs(client: &Client, sql: &str) -> Vec<(i64, Uuid)> {
    client
        .query(sql, &[])
        .await
        .expect(sql)
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Events of these kinds, as (task id, kind, detail).
async fn events(client: &Client, kinds: &[&str]) -> Vec<(Option<i64>, String, Option<String>)> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    client
        .query(
            "SELECT task_id, kind, detail FROM long_task.event WHERE kind = ANY ($1) ORDER BY id",
            &[&kinds],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn every_node_follows_a_failover_to_a_synchronous_standby_and_no_task_is_lost() {
    let mut pair = TestPair::new(true).await;
    let url = pair.database("failover").await;
    let client = migrated(&url).await;
    // default timings (heartbeat 2 s, timeout 5 s): what an operator runs
    let _nodes: Vec<NodeProcess> = [1, 2]
        .into_iter()
        .map(|id| NodeProcess::start_with(&url, id, &["--max-tasks", "4"]))
        .collect();
    wait_node_ready(&client, 1).await;
    wait_node_ready(&client, 2).await;

    // two end before the failover, four run across it (free slots remain for what comes after)
    let mut before = queue_n(&client, 2, &["true"]).await;
    wait_until(Duration::from_secs(20), || async {
        count(
            &client,
            "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
        )
        .await
            == 2
    })
    .await
    .expect("two tasks done");
    before.extend(queue_n(&client, 4, &["sleep", "3"]).await);
    wait_running(&client, 4).await;
    let runs_before = runs(
        &client,
        "SELECT id, run_id FROM long_task.task WHERE state_id = 'AE' ORDER BY id",
    )
    .await;
    drop(client);

    let killed_at: DateTime<Utc> = Utc::now();
    let killed = pair.kill_primary();
    pair.promote_standby();
    let promoted_in = killed.elapsed();

    let client = connect_retrying(&url).await;
    let mut after = queue_n(&client, 4, &["true"]).await;
    // the CLI takes the same URL (its first host is dead now)
    let out = pgtaskd_async(&url, &["submit", "--wait", "--", "true"]).await;
    assert_eq!(
        code(&out),
        0,
        "pgtaskd submit --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    after.push(
        stdout
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("a task id first: {stdout:?}")),
    );
    wait_all_final(&client, Duration::from_secs(60)).await;

    // the first claim on the new primary, from the primary's death (database clock)
    let first_run: f64 = client
        .query_one(
            "SELECT extract(epoch FROM min(started) - $1)::float8 FROM long_task.task WHERE started > $1",
            &[&killed_at],
        )
        .await
        .expect("first start")
        .get(0);
    println!(
        "failover: primary killed -> standby promoted {} ms -> first task running on the new primary {:.0} ms",
        promoted_in.as_millis(),
        first_run * 1000.0
    );
    assert!(
        first_run <= 10.0,
        "the first task ran {first_run:.1} s after the primary died (target 10 s)"
    );

    // nothing lost, each ran once: every task succeeded in its first attempt
    let all: Vec<i64> = before.iter().chain(&after).copied().collect();
    let rows: Vec<(i64, String, i32)> = client
        .query(
            "SELECT id, state_id::text, attempt FROM long_task.task WHERE id = ANY ($1) ORDER BY id",
            &[&all],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows.len(),
        all.len(),
        "every queued task is on the new primary"
    );
    for (id, state, attempt) in &rows {
        assert_eq!((state.as_str(), *attempt), ("CS", 1), "task {id}");
    }
    // the runs that crossed the failover kept their run: their outcome came from that run
    for (id, run) in &runs_before {
        let now: Uuid = client
            .query_one("SELECT run_id FROM long_task.task WHERE id = $1", &[id])
            .await
            .expect("run")
            .get(0);
        assert_eq!(now, *run, "task {id}");
    }
    // no node was taken for dead while it reconnected (its tasks would have been re-run)
    assert_eq!(
        events(&client, &["node_dead", "requeued", "lost_failed"]).await,
        [],
        "nodes reconnecting after the failover are not dead"
    );
    // every node follows: fresh heartbeats and liveness locks on the new primary, a new term
    for worker in [1, 2] {
        wait_node_ready(&client, worker).await;
    }
    let held = count(
        &client,
        "SELECT count(*) FROM long_task.advisory_holders(long_task.ns_node())",
    )
    .await;
    assert_eq!(held, 2, "both liveness locks are held on the new primary");
    let elected: DateTime<Utc> = client
        .query_one(
            "SELECT elected_at FROM long_task.coordinator WHERE group_id = 0",
            &[],
        )
        .await
        .expect("coordinator")
        .get(0);
    assert!(
        elected > killed_at,
        "a coordinator was elected on the new primary"
    );
    // and its watcher session waits on the other node's liveness lock there
    let (coordinator, _) = common::node::coordinator(&client, 0)
        .await
        .expect("a coordinator");
    let other = 3 - coordinator;
    let watcher = format!("pgtaskd w{coordinator} watch w{other}");
    wait_until(Duration::from_secs(10), || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = $1",
                &[&watcher],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await
    .unwrap_or_else(|_| panic!("no {watcher:?} session on the new primary"));
}

#[tokio::test]
async fn a_failover_that_loses_recent_commits_still_ends_every_task() {
    // an asynchronous standby: what it has not replayed when the primary dies is lost
    let mut pair = TestPair::new(false).await;
    let url = pair.database("failover").await;
    let client = migrated(&url).await;
    // a heartbeat timeout longer than the whole failover: the nodes are never taken for dead,
    // so only the nodes themselves can notice rows claiming runs they ended
    let timings = [
        "--heartbeat-interval",
        "1s",
        "--heartbeat-timeout",
        "10s",
        "--max-tasks",
        "3",
    ];
    let _nodes: Vec<NodeProcess> = [1, 2]
        .into_iter()
        .map(|id| NodeProcess::start_with(&url, id, &timings))
        .collect();
    wait_node_ready(&client, 1).await;
    wait_node_ready(&client, 2).await;

    // `short` end on the old primary after the standby stopped (outcomes lost); `long` still run
    // when the primary dies (outcomes written to the new primary, onto the replicated claim)
    let short = queue_n(&client, 4, &["sleep", "1"]).await;
    let long = queue_n(&client, 2, &["sleep", "6"]).await;
    wait_running(&client, 6).await;
    let claimed = runs(&client, "SELECT id, run_id FROM long_task.task ORDER BY id").await;
    pair.wait_replayed().await;
    pair.pair.standby().stop().expect("stop the standby");
    wait_until(Duration::from_secs(20), || async {
        count(
            &client,
            "SELECT count(*) FROM long_task.task WHERE state_id = 'CS'",
        )
        .await
            == 4
    })
    .await
    .expect("the short tasks ended on the old primary");
    drop(client);
    pair.kill_primary();
    pair.promote_standby();

    let client = connect_retrying(&url).await;
    // the new primary says the short tasks still run on their nodes: the lost commits
    let lost = count(
        &client,
        "SELECT count(*) FROM long_task.task WHERE state_id = 'AE'",
    )
    .await;
    assert!(lost >= 4, "the outcomes were lost: {lost} rows still AE");
    wait_all_final(&client, Duration::from_secs(60)).await;

    for (id, old_run) in &claimed {
        let row = client
            .query_one(
                "SELECT state_id::text, run_id, attempt, worker_id FROM long_task.task WHERE id = $1",
                &[id],
            )
            .await
            .expect("row");
        let (state, run, attempt): (String, Uuid, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(state, "CS", "task {id}");
        if short.contains(id) {
            // handed back by its live node, run again under a new run
            assert_eq!(attempt, 2, "task {id}");
            assert_ne!(run, *old_run, "task {id}");
            let abandoned: (String, Option<String>) = client
                .query_one(
                    "SELECT state_id::text, error FROM long_task.task_run WHERE task_id = $1 AND run_id = $2",
                    &[id, old_run],
                )
                .await
                .map(|r| (r.get(0), r.get(1)))
                .expect("the lost attempt is recorded");
            assert_eq!(
                abandoned,
                ("CF".to_owned(), Some("not running on its node".to_owned())),
                "task {id}"
            );
        } else {
            assert!(long.contains(id));
            // its outcome (written after the failover) landed on its own, replicated attempt
            assert_eq!((attempt, run), (1, *old_run), "task {id}");
        }
    }
    let handed: Vec<(Option<i64>, String, Option<String>)> =
        events(&client, &["requeued", "lost_failed", "node_dead"]).await;
    let mut requeued: Vec<i64> = handed
        .iter()
        .filter(|(_, kind, detail)| {
            kind == "requeued" && detail.as_deref() == Some("not running on its node")
        })
        .filter_map(|(id, _, _)| *id)
        .collect();
    requeued.sort_unstable();
    assert_eq!(
        requeued, short,
        "the nodes handed back the lost runs: {handed:?}"
    );
    assert!(
        !handed.iter().any(|(_, kind, _)| kind == "node_dead"),
        "no node was taken for dead: {handed:?}"
    );
}
