//! Clustering and failover (docs/design.md §4) with real node processes: a SIGKILLed node's tasks run
//! again on a survivor and the event log says who moved them; a SIGKILLed coordinator is replaced
//! under a higher term; a SIGSTOPped node loses its tasks, cannot write a stale outcome and kills
//! its stale processes when it wakes; a schedule fires once across three nodes; spooled outcomes
//! survive a node restart while the database is down.

mod common;

use std::time::Duration;

use common::node::{
    owner, processes_with_env, queue, state, wait_coordinator, wait_node_ready, wait_state,
    wait_until, NodeProcess,
};
use common::{migrated_db, PrivateCluster};
use nix::sys::signal::Signal;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

async fn wait_owned_by(client: &tokio_postgres::Client, id: i64, worker: i64) {
    wait_state(client, id, "AE", LONG).await;
    wait_until(LONG, || async { owner(client, id).await.0 == Some(worker) })
        .await
        .unwrap_or_else(|_| panic!("task {id} did not run on worker {worker}"));
}

/// Lets a node that started with `--max-tasks 0` (a survivor that must not take the victim's
/// tasks first) claim up to `n`.
async fn set_limit(client: &tokio_postgres::Client, worker: i64, n: i32) {
    client
        .execute(
            "UPDATE long_task.worker SET max_task_count = $2 WHERE id = $1",
            &[&worker, &n],
        )
        .await
        .expect("set limit");
}

async fn cancel_all(client: &tokio_postgres::Client) {
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE state_id IN ('AE', 'AW')",
            &[],
        )
        .await
        .expect("cancel");
}

#[tokio::test]
async fn a_killed_nodes_tasks_run_again_on_a_survivor_and_the_event_log_says_who_moved_them() {
    let (db, client) = migrated_db().await;
    // the survivor claims nothing until the victim has the tasks
    let _b = NodeProcess::start(&db.url, 2, &["--max-tasks", "0"]);
    wait_node_ready(&client, 2).await;
    let (_, term) = wait_coordinator(&client, 0, LONG, |w, _| w == 2).await;
    let mut a = NodeProcess::start(&db.url, 1, &["--max-tasks", "8"]);
    wait_node_ready(&client, 1).await;

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(queue(&client, &["sleep", "1000"]).await);
    }
    // (set at insert: an UPDATE racing the claim would make the claim skip the locked row)
    let no_rerun: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, max_lost_reruns)
             VALUES (0, 'AW', '{sleep,1000}', 0) RETURNING id",
            &[],
        )
        .await
        .expect("no re-run for this one")
        .get(0);
    let mut old_runs = Vec::new();
    for &id in ids.iter().chain([no_rerun].iter()) {
        wait_owned_by(&client, id, 1).await;
        old_runs.push(owner(&client, id).await.1.expect("run id"));
    }
    set_limit(&client, 2, 8).await;

    a.signal(Signal::SIGKILL);
    let _ = a.child.wait();

    for &id in &ids {
        wait_owned_by(&client, id, 2).await;
        let (_, run) = owner(&client, id).await;
        assert!(!old_runs.contains(&run.expect("run")), "a new run_id");
    }
    wait_state(&client, no_rerun, "CF", LONG).await;
    let row = client
        .query_one(
            "SELECT error, attempt, lost_reruns FROM long_task.task WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(1), 2, "the re-run is attempt 2");
    assert_eq!(row.get::<_, i32>(2), 1, "one lost re-run used");
    let error: Option<String> = client
        .query_one(
            "SELECT error FROM long_task.task WHERE id = $1",
            &[&no_rerun],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(error.as_deref(), Some("worker lost"));

    // The event log: node 2 under its term declared node 1 dead and moved each task.
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind = 'node_dead' AND worker_id = 1
                AND by_worker_id = 2 AND term = $1",
            &[&term],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(dead, 1, "node 1 declared dead once, by the coordinator");
    for (i, &id) in ids.iter().enumerate() {
        let row = client
            .query_one(
                "SELECT by_worker_id, term, worker_id, run_id FROM long_task.event
                  WHERE kind = 'requeued' AND task_id = $1",
                &[&id],
            )
            .await
            .expect("one requeued event per task");
        assert_eq!(row.get::<_, Option<i64>>(0), Some(2));
        assert_eq!(row.get::<_, Option<i64>>(1), Some(term));
        assert_eq!(row.get::<_, Option<i64>>(2), Some(1));
        assert_eq!(row.get::<_, Option<Uuid>>(3), Some(old_runs[i]));
    }
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind = 'lost_failed' AND task_id = $1",
            &[&no_rerun],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(failed, 1);
    // Each lost attempt is in the attempt history, with the node that lost it.
    for (i, &id) in ids.iter().chain([no_rerun].iter()).enumerate() {
        let row = client
            .query_one(
                "SELECT attempt, worker_id, state_id::text, error FROM long_task.task_run
                  WHERE task_id = $1 AND run_id = $2",
                &[&id, &old_runs[i]],
            )
            .await
            .expect("one task_run row for the lost attempt");
        assert_eq!(
            (
                row.get::<_, i32>(0),
                row.get::<_, Option<i64>>(1),
                row.get::<_, String>(2),
                row.get::<_, Option<String>>(3)
            ),
            (1, Some(1), "CF".to_owned(), Some("worker lost".to_owned()))
        );
    }
    // The killed node left no process of its runs.
    for run in &old_runs {
        wait_until(Duration::from_secs(5), || async {
            processes_with_env("PGTASKD_RUN_ID", &run.to_string()).is_empty()
        })
        .await
        .expect("no process of the dead node's runs survives");
    }
    cancel_all(&client).await;
}

#[tokio::test]
async fn a_killed_coordinator_is_replaced_under_a_higher_term() {
    let (db, client) = migrated_db().await;
    let mut a = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let (_, first_term) = wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    // a task on the coordinator is handed back too
    let task = queue(&client, &["sleep", "1000"]).await;
    wait_owned_by(&client, task, 1).await;
    let _b = NodeProcess::start(&db.url, 2, &[]);
    let _c = NodeProcess::start(&db.url, 3, &[]);
    wait_node_ready(&client, 2).await;
    wait_node_ready(&client, 3).await;

    a.signal(Signal::SIGKILL);
    let _ = a.child.wait();
    let (new, new_term) = wait_coordinator(&client, 0, LONG, |w, t| w != 1 && t > first_term).await;
    assert!(new == 2 || new == 3);
    wait_until(LONG, || async {
        matches!(owner(&client, task).await.0, Some(2) | Some(3))
    })
    .await
    .expect("the dead coordinator's task runs on a survivor");
    let row = client
        .query_one(
            "SELECT by_worker_id, term FROM long_task.event WHERE kind = 'requeued' AND task_id = $1",
            &[&task],
        )
        .await
        .expect("requeued event");
    assert_eq!(row.get::<_, Option<i64>>(0), Some(new));
    assert_eq!(row.get::<_, Option<i64>>(1), Some(new_term));
    // every term was acted on by one node only
    let mixed: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT term FROM long_task.event WHERE term IS NOT NULL
                                    AND kind <> 'coordinator_deposed'
                                    GROUP BY term HAVING count(DISTINCT by_worker_id) > 1) x",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(mixed, 0, "never two coordinators acting in one term");
    cancel_all(&client).await;
}

#[tokio::test]
async fn a_stopped_node_loses_its_tasks_cannot_write_a_stale_outcome_and_kills_its_processes() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran-once");
    let _b = NodeProcess::start(&db.url, 2, &["--max-tasks", "0"]);
    wait_node_ready(&client, 2).await;
    wait_coordinator(&client, 0, LONG, |w, _| w == 2).await;
    let a = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;

    // First run: ends by itself (success) while its node is stopped. Later runs: run on.
    let script = format!(
        "if [ -e {m} ]; then sleep 1000; else touch {m}; sleep 1; fi",
        m = marker.display()
    );
    let finishes = queue(&client, &["sh", "-c", &script]).await;
    let lingers = queue(&client, &["sleep", "1000"]).await;
    wait_owned_by(&client, finishes, 1).await;
    wait_owned_by(&client, lingers, 1).await;
    let stale_finish = owner(&client, finishes).await.1.expect("run");
    let stale_linger = owner(&client, lingers).await.1.expect("run");
    set_limit(&client, 2, 4).await;

    a.signal(Signal::SIGSTOP);
    wait_owned_by(&client, finishes, 2).await;
    wait_owned_by(&client, lingers, 2).await;
    let terminated: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind = 'sessions_terminated' AND worker_id = 1",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    assert!(
        terminated >= 1,
        "the hung node was fenced before its tasks moved"
    );
    // the first run's process ends while its node is still stopped
    wait_until(LONG, || async {
        processes_with_env("PGTASKD_RUN_ID", &stale_finish.to_string()).is_empty()
    })
    .await
    .expect("the first run ended");
    assert!(
        !processes_with_env("PGTASKD_RUN_ID", &stale_linger.to_string()).is_empty(),
        "the stopped node's other process still runs"
    );

    a.signal(Signal::SIGCONT);
    wait_until(LONG, || async {
        processes_with_env("PGTASKD_RUN_ID", &stale_linger.to_string()).is_empty()
    })
    .await
    .expect("the woken node kills the process it no longer owns");
    wait_node_ready(&client, 1).await;
    // Give the woken node ample time to try writing its stale success.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state(&client, finishes).await,
        "AE",
        "the stale success was not written over the new run"
    );
    let (worker, run) = owner(&client, finishes).await;
    assert_eq!(worker, Some(2));
    assert_ne!(run, Some(stale_finish));
    cancel_all(&client).await;
}

#[tokio::test]
async fn a_schedule_fires_once_across_three_nodes() {
    let (db, client) = migrated_db().await;
    let _nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| NodeProcess::start(&db.url, id, &[]))
        .collect();
    for id in 1..=3 {
        wait_node_ready(&client, id).await;
    }
    let (coordinator, _) = wait_coordinator(&client, 0, LONG, |_, _| true).await;
    let parent: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, next_start, shed_period_id,
                                         shed_period_count, shed_clone)
             VALUES (0, 'DR', '{true}', now(), 'SEC', 1, true) RETURNING id",
            &[],
        )
        .await
        .expect("schedule")
        .get(0);
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE shed_parent_id = $1 AND state_id = 'CS'",
                &[&parent],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
            >= 4
    })
    .await
    .expect("the schedule fires every second");
    client
        .execute(
            "UPDATE long_task.task SET next_start = NULL WHERE id = $1",
            &[&parent],
        )
        .await
        .expect("unschedule");
    let rows = client
        .query(
            "SELECT extract(epoch FROM created - lag(created) OVER (ORDER BY created))::float8
               FROM long_task.task WHERE shed_parent_id = $1 ORDER BY created",
            &[&parent],
        )
        .await
        .expect("clones");
    for row in rows.iter().skip(1) {
        let gap: f64 = row.get(0);
        assert!(
            gap > 0.5,
            "two clones {gap:.3}s apart: a planned second fired twice"
        );
    }
    let firers: Vec<Option<i64>> = client
        .query(
            "SELECT DISTINCT by_worker_id FROM long_task.event WHERE kind = 'fired'",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        firers,
        vec![Some(coordinator)],
        "only the coordinator fires"
    );
}

#[tokio::test]
async fn outcomes_spooled_while_the_database_is_down_are_written_after_a_restart() {
    let private = PrivateCluster::new();
    let url = private.database("spool").await;
    let mut client = common::connect(&url).await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    let state = tempfile::tempdir().expect("state dir");
    let state_arg = state.path().to_str().expect("utf-8 path").to_owned();
    let work = tempfile::tempdir().expect("work dir");
    let runs = work.path().join("runs");
    // Slow heartbeat timeout: the run must end (and be spooled) before the node fences itself.
    let args = [
        "--heartbeat-interval",
        "500ms",
        "--heartbeat-timeout",
        "10s",
        "--state-dir",
        &state_arg,
    ];
    let mut node = NodeProcess::start_with(&url, 1, &args);
    wait_node_ready(&client, 1).await;
    let script = format!("echo run >> {}; sleep 2", runs.display());
    let task = queue(&client, &["sh", "-c", &script]).await;
    wait_state(&client, task, "AE", LONG).await;
    drop(client);
    let cluster = private.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("join")
        .expect("stop postgres");

    // The run ends while the database is down: its outcome goes to the spool.
    let spool_has_file = || {
        common::walk(state.path())
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "msgpack"))
    };
    wait_until(LONG, || async { spool_has_file() })
        .await
        .expect("the outcome was spooled");
    node.signal(Signal::SIGKILL);
    let _ = node.child.wait();

    let cluster = private.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.start())
        .await
        .expect("join")
        .expect("start postgres");
    let client = common::connect(&url).await;
    let _node = NodeProcess::start_with(&url, 1, &args);
    wait_state(&client, task, "CS", LONG).await;
    let executions = std::fs::read_to_string(&runs).expect("runs file");
    assert_eq!(
        executions.lines().count(),
        1,
        "the spooled outcome was written, not re-run"
    );
    // the node removes the file once the write committed: just after CS became visible
    wait_until(Duration::from_secs(10), || async { !spool_has_file() })
        .await
        .expect("the replayed spool file is gone");
}

#[test]
fn every_cluster_config_parses_and_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-configs");
    let files: Vec<_> = common::walk(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(
        files.len() >= 7,
        "three-node and two-group configs exist: {files:?}"
    );
    let mut groups = std::collections::BTreeMap::<i32, usize>::new();
    for file in &files {
        let cfg = pgtaskd::config::NodeConfig::from_file(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if file.to_string_lossy().contains("two-group") {
            *groups.entry(cfg.group_id).or_default() += 1;
        }
    }
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![(1, 2), (2, 2)]);
}

#[tokio::test]
async fn status_shows_nodes_coordinator_term_and_queue_depth() {
    let (db, client) = migrated_db().await;
    let _a = NodeProcess::start(&db.url, 1, &["--max-tasks", "1"]);
    wait_node_ready(&client, 1).await;
    let (_, term) = wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    let running = queue(&client, &["sleep", "1000"]).await;
    wait_state(&client, running, "AE", LONG).await;
    queue(&client, &["true"]).await;
    queue(&client, &["true"]).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["status", "--json", "--database-url", &db.url])
        .output()
        .expect("run status");
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    let node = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == 1))
        .unwrap_or_else(|| panic!("node 1 listed: {status}"));
    assert_eq!(
        (&node["alive"], &node["task_count"], &node["max_task_count"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{status}"
    );
    assert!(node["heartbeat_age"].as_f64().is_some(), "{status}");
    let coordinator = status["coordinators"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["group_id"] == 0))
        .unwrap_or_else(|| panic!("group 0's coordinator listed: {status}"));
    assert_eq!(
        (&coordinator["worker_id"], &coordinator["term"]),
        (&serde_json::json!(1), &serde_json::json!(term)),
        "{status}"
    );
    let group = status["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group_id"] == 0))
        .unwrap_or_else(|| panic!("group 0 listed: {status}"));
    assert_eq!(
        (&group["waiting"], &group["running"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "{status}"
    );
    cancel_all(&client).await;
}

#[tokio::test]
async fn the_coordinator_leaves_a_sql_consumers_lease_alone() {
    let (db, client) = migrated_db().await;
    let _a = NodeProcess::start(&db.url, 1, &["--max-tasks", "1"]);
    wait_node_ready(&client, 1).await;
    wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    let id: i64 = client
        .query_one(
            "SELECT long_task.publish('report.build', '{}', NULL, 60)",
            &[],
        )
        .await
        .expect("publish")
        .get(0);
    let consumer = common::connect(&db.url).await;
    let leased: i64 = consumer
        .query_one("SELECT id FROM long_task.consume(1)", &[])
        .await
        .expect("consume")
        .get(0);
    assert_eq!(leased, id);
    // Its worker_id is minus the consumer's backend pid: no liveness lock, no heartbeat. The
    // coordinator (round every 250 ms by default) must not take it for a dead node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row = client
        .query_one(
            "SELECT state_id::text, worker_id, lost_reruns FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "AE", "still leased");
    assert!(row.get::<_, i64>(1) < 0, "still the consumer's");
    assert_eq!(row.get::<_, i32>(2), 0);
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind = 'node_dead'",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(dead, 0, "no node declared dead");
    let acked: Option<String> = consumer
        .query_one("SELECT long_task.ack($1, NULL)::text", &[&id])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(acked.as_deref(), Some("CS"), "the consumer still owns it");
}

#[tokio::test]
async fn a_killed_node_is_noticed_through_its_liveness_lock_not_a_poll() {
    let (db, client) = migrated_db().await;
    // With a 60 s heartbeat timeout, rounds without news come at most every 60 s, and the test's
    // waits are shorter: the hand-over can only come through the watcher on node 1's lock.
    let slow = [
        "--heartbeat-timeout",
        "60s",
        "--heartbeat-interval",
        "2s",
        "--kill-grace",
        "500ms",
    ];
    let _b = NodeProcess::start_with(&db.url, 2, &[&["--max-tasks", "0"][..], &slow].concat());
    wait_node_ready(&client, 2).await;
    wait_coordinator(&client, 0, LONG, |w, _| w == 2).await;
    let mut a = NodeProcess::start_with(&db.url, 1, &[&["--max-tasks", "1"][..], &slow].concat());
    wait_node_ready(&client, 1).await;
    let id = queue(&client, &["sleep", "1000"]).await;
    wait_owned_by(&client, id, 1).await;
    // the coordinator watches node 1 (a shared request waiting on its lock)
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND NOT l.granted AND l.mode = 'ShareLock'
                    AND l.objid = 1 AND a.application_name = 'pgtaskd w2 watch w1'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await
    .expect("the coordinator watches node 1");
    set_limit(&client, 2, 1).await;
    a.signal(Signal::SIGKILL);
    let _ = a.child.wait();
    // No heartbeat deadline passes within the wait (60 s timeout): only the watcher can hand it over.
    wait_owned_by(&client, id, 2).await;
    let noticed: String = client
        .query_one(
            "SELECT detail FROM long_task.event WHERE kind = 'node_dead' AND worker_id = 1",
            &[],
        )
        .await
        .expect("node 1 declared dead once")
        .get(0);
    assert_eq!(noticed, "liveness lock free");
    cancel_all(&client).await;
}

#[tokio::test]
async fn standby_nodes_wait_for_the_coordinator_lock_without_errors_in_the_server_log() {
    let private = PrivateCluster::new();
    let url = private.database("quiet").await;
    let mut client = common::connect(&url).await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    let log = private.cluster.log_file();
    let lock_errors = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("lock timeout") || l.contains("canceling statement"))
            .count()
    };
    let before = lock_errors();
    // heartbeat timeout 1 s: the old wait was cut, with an ERROR, every 0.5 s per standby
    let mut a = NodeProcess::start(&url, 1, &[]);
    wait_node_ready(&client, 1).await;
    wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    let _b = NodeProcess::start(&url, 2, &[]);
    let _c = NodeProcess::start(&url, 3, &[]);
    wait_node_ready(&client, 2).await;
    wait_node_ready(&client, 3).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lock_errors() - before,
        0,
        "standby nodes' lock waits ended in server errors"
    );
    // and a standby still takes over at once when the coordinator dies
    a.signal(Signal::SIGKILL);
    let _ = a.child.wait();
    let (new, _) = wait_coordinator(&client, 0, LONG, |w, _| w != 1).await;
    assert!(new == 2 || new == 3);
}
