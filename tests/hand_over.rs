//! The forced hand-over of a node's tasks (`long_task.hand_over_node`, `pgtaskd hand-over`,
//! `POST /nodes/{id}/hand-over`): the node stops claiming (`worker.stop = 1`); with kill its
//! running tasks are killed through the node's reconcile and run again on another node under new
//! run ids — not as lost runs, their attempt not charged —, without kill they finish where they
//! run. Pinned tasks stay. A refused call (unknown node, a role without the grant or the group)
//! changes nothing and says why.

mod common;

use std::time::Duration;

use common::cli::{code, pgtaskd};
use common::http::{node_with_http, request, request_with_token, token_file};
use common::migrated_db;
use common::node::{owner, set_stop, state, wait_node_ready, wait_state, wait_until, NodeProcess};
use common::roles::{drop_roles, login_role, refused};
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

/// Queues `argv` with no retry and no lost re-run: were a hand-over charged as a failed attempt
/// or as a lost run, the task would end CF instead of running again. `pin` pins it to a node.
async fn queue_strict(client: &Client, argv: &[&str], pin: Option<i64>) -> i64 {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, worker_id, max_attempts, max_lost_reruns)
             VALUES (0, 'AW', $1, $2, 1, 0) RETURNING id",
            &[&argv, &pin],
        )
        .await
        .expect("insert task")
        .get(0)
}

/// The node's stop code (`worker.stop`).
async fn stop_code(client: &Client, worker_id: i64) -> i16 {
    client
        .query_one(
            "SELECT stop FROM long_task.worker WHERE id = $1",
            &[&worker_id],
        )
        .await
        .expect("worker row")
        .get(0)
}

/// A task's attempts: (worker, run, state, error, attempt), oldest first.
async fn attempts(
    client: &Client,
    id: i64,
) -> Vec<(Option<i64>, Uuid, String, Option<String>, i32)> {
    client
        .query(
            "SELECT worker_id, run_id, state_id::text, error, attempt FROM long_task.task_run
              WHERE task_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// The events of kinds written by a hand-over: (kind, worker, task, detail), oldest first.
async fn hand_over_events(
    client: &Client,
) -> Vec<(String, Option<i64>, Option<i64>, Option<String>)> {
    client
        .query(
            "SELECT kind, worker_id, task_id, detail FROM long_task.event
              WHERE kind IN ('node_hand_over', 'handed_over') ORDER BY id",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// What `long_task.hand_over_node` returned: (task, run, action), by task id.
async fn hand_over(client: &Client, worker_id: i64, kill: bool) -> Vec<(i64, Uuid, String)> {
    client
        .query(
            "SELECT task_id, run_id, action FROM long_task.hand_over_node($1, $2)",
            &[&worker_id, &kill],
        )
        .await
        .expect("hand over")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Writes the outcome a node would send for this run (`complete_runs`); returns the rows written.
async fn late_outcome(client: &Client, id: i64, run: Uuid) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM long_task.complete_runs(ARRAY[$1::bigint], ARRAY[$2::uuid], '{CS}',
                    '{NULL}', '{0}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')",
            &[&id, &run],
        )
        .await
        .expect("complete_runs")
        .get(0)
}

/// Whether process `pid` still runs (a zombie has exited: it only waits to be reaped).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // the state follows the command's closing parenthesis
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The processes of task `id` once its tree has at least `n` of them (a shell and its sleeps).
async fn task_tree(client: &Client, id: i64, n: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    for _ in 0..250 {
        pids = common::node::task_processes(client, id).await;
        if pids.len() >= n {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "task {id} has {} process(es), not {n}: {pids:?}",
        pids.len()
    );
}

/// Waits until task `id` runs on `worker_id`; returns its run id.
async fn wait_owner(client: &Client, id: i64, worker_id: i64) -> Uuid {
    let mut now = (None, None);
    for _ in 0..250 {
        now = owner(client, id).await;
        if let (Some(w), Some(run)) = now {
            if w == worker_id {
                return run;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {id} does not run on node {worker_id}: {now:?}");
}

/// Nodes 1 and 2 of group 0, four slots each, node 1 serving HTTP (its base URL); node 2 starts
/// with stop code 1 (a restart keeps it), so what is queued first lands on node 1.
async fn two_nodes(url: &str, client: &Client) -> (NodeProcess, String, NodeProcess) {
    client
        .execute(
            "INSERT INTO long_task.worker (id, group_id, stop) VALUES (2, 0, 1)",
            &[],
        )
        .await
        .expect("node 2's row");
    let (node1, base1) = node_with_http(url, 1, &["--max-tasks", "4"]).await;
    let node2 = NodeProcess::start(url, 2, &["--max-tasks", "4"]);
    wait_node_ready(client, 1).await;
    wait_node_ready(client, 2).await;
    (node1, base1, node2)
}

#[tokio::test]
async fn with_kill_the_nodes_tasks_run_again_on_another_node_under_new_run_ids() {
    let (db, client) = migrated_db().await;
    let (_node1, base1, _node2) = two_nodes(&db.url, &client).await;
    // a process tree each: the shell and two sleeps
    let tree = ["sh", "-c", "sleep 5 & sleep 5; wait"];
    let moved = [
        queue_strict(&client, &tree, None).await,
        queue_strict(&client, &tree, None).await,
    ];
    let pinned = queue_strict(&client, &["sleep", "2"], Some(1)).await;
    let mut old = Vec::new();
    for id in moved {
        wait_state(&client, id, "AE", LONG).await;
        let (worker, run) = owner(&client, id).await;
        assert_eq!(worker, Some(1));
        old.push((id, run.expect("a run id"), task_tree(&client, id, 3).await));
    }
    wait_state(&client, pinned, "AE", LONG).await;
    let pinned_run = owner(&client, pinned).await.1.expect("run id");
    set_stop(&client, 2, 0).await;

    let handed_at = std::time::Instant::now();
    let did = hand_over(&client, 1, true).await;
    let mut want: Vec<(i64, Uuid, String)> = old
        .iter()
        .map(|(id, run, _)| (*id, *run, "requeued".to_owned()))
        .collect();
    want.push((pinned, pinned_run, "pinned".to_owned()));
    want.sort();
    assert_eq!(did, want, "the function says what became of each run");
    assert_eq!(stop_code(&client, 1).await, 1, "node 1 claims nothing now");

    for (id, old_run, pids) in &old {
        // its whole tree killed on node 1 through its reconcile (a 'ctl' notification), long
        // before sleep 5 ends
        wait_until(Duration::from_secs(3), || async {
            pids.iter().all(|p| !alive(*p))
        })
        .await
        .unwrap_or_else(|_| panic!("task {id}'s processes {pids:?} on node 1 were not all killed"));
        let killed_after = handed_at.elapsed();
        // and running on node 2 under a new run id
        let new_run = wait_owner(&client, *id, 2).await;
        assert_ne!(new_run, *old_run, "a new run id");
        // nothing but the hand-over's notifications moves it: the re-run starts within
        // milliseconds of the commit (database clock; the test fails past 1 s)
        let restart_ms: f64 = client
            .query_one(
                "SELECT extract(epoch FROM t.started - e.at)::float8 * 1000 FROM long_task.task t,
                        long_task.event e WHERE t.id = $1 AND e.kind = 'node_hand_over'",
                &[id],
            )
            .await
            .expect("latency")
            .get(0);
        eprintln!(
            "task {id}: tree killed within {killed_after:?} of the call (polled every 20 ms); \
             re-run started on node 2 {restart_ms:.1} ms after the hand-over (database clock)"
        );
        assert!(restart_ms < 1000.0, "{restart_ms} ms");
        // the old run's late outcome is refused by the run-id fence
        assert_eq!(late_outcome(&client, *id, *old_run).await, 0);
        assert_eq!(owner(&client, *id).await, (Some(2), Some(new_run)));
        assert_eq!(state(&client, *id).await, "AE");
    }
    // a task queued now goes to node 2: node 1 claims nothing meanwhile
    let fresh = queue_strict(&client, &["true"], None).await;
    wait_state(&client, fresh, "CS", LONG).await;
    assert_eq!(owner(&client, fresh).await.0, Some(2));

    for (id, old_run, _) in &old {
        wait_state(&client, *id, "CS", LONG).await;
        let runs = attempts(&client, *id).await;
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(
            (
                runs[0].0,
                runs[0].1,
                runs[0].2.as_str(),
                runs[0].3.as_deref(),
                runs[0].4
            ),
            (Some(1), *old_run, "CC", Some("handed over"), 1),
            "the handed-over attempt is recorded, not as a failure"
        );
        assert_eq!(
            (runs[1].0, runs[1].2.as_str(), runs[1].4),
            (Some(2), "CS", 1),
            "the re-run ends CS on node 2 under the same attempt number"
        );
        let lost: i32 = client
            .query_one(
                "SELECT lost_reruns FROM long_task.task WHERE id = $1",
                &[id],
            )
            .await
            .expect("row")
            .get(0);
        assert_eq!(lost, 0, "a hand-over is not a lost run");
    }
    // the pinned task kept running on node 1 and ended there
    wait_state(&client, pinned, "CS", LONG).await;
    assert_eq!(owner(&client, pinned).await, (Some(1), Some(pinned_run)));
    let claimed_by_1: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task_run WHERE worker_id = 1 AND state_id <> 'CC' AND task_id <> $1",
            &[&pinned],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(claimed_by_1, 0, "node 1 ran nothing else");

    let events = hand_over_events(&client).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let mut per_run: Vec<_> = events[..2]
        .iter()
        .map(|e| (e.0.as_str(), e.1, e.2))
        .collect();
    per_run.sort();
    let mut want: Vec<_> = old
        .iter()
        .map(|(id, _, _)| ("handed_over", Some(1), Some(*id)))
        .collect();
    want.sort();
    assert_eq!(
        per_run, want,
        "one event per run handed over, then the node's"
    );
    assert_eq!(events[2].0, "node_hand_over");
    assert_eq!(events[2].1, Some(1));
    let detail = events[2].3.as_deref().unwrap_or_default();
    assert!(
        detail
            .starts_with("kill: 2 re-queued, 0 finishing, 1 pinned, 0 cancelling; stop 0 -> 1 by "),
        "{detail}"
    );

    let (status, metrics) = request("GET", &format!("{base1}/metrics"), None);
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == "pgtaskd_handed_over_runs_total 2"),
        "node 1 counts the runs it lost to the hand-over:\n{metrics}"
    );
}

#[tokio::test]
async fn without_kill_the_runs_finish_on_the_node_and_new_tasks_go_elsewhere() {
    let (db, client) = migrated_db().await;
    let (_node1, _, _node2) = two_nodes(&db.url, &client).await;
    let running = [
        queue_strict(&client, &["sleep", "2"], None).await,
        queue_strict(&client, &["sleep", "2"], None).await,
    ];
    let mut runs = Vec::new();
    for id in running {
        wait_state(&client, id, "AE", LONG).await;
        let (worker, run) = owner(&client, id).await;
        assert_eq!(worker, Some(1));
        runs.push((id, run.expect("run id"), "finishing".to_owned()));
    }
    set_stop(&client, 2, 0).await;

    assert_eq!(hand_over(&client, 1, false).await, runs);
    assert_eq!(stop_code(&client, 1).await, 1);
    let fresh = queue_strict(&client, &["true"], None).await;
    wait_state(&client, fresh, "CS", LONG).await;
    assert_eq!(
        owner(&client, fresh).await.0,
        Some(2),
        "a new task goes to node 2"
    );
    for (id, run, _) in &runs {
        wait_state(&client, *id, "CS", LONG).await;
        let history = attempts(&client, *id).await;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(
            (history[0].0, history[0].1, history[0].2.as_str()),
            (Some(1), *run, "CS"),
            "the run finished on node 1 under its own run id"
        );
    }
    let events = hand_over_events(&client).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let detail = events[0].3.as_deref().unwrap_or_default();
    assert!(
        detail.starts_with(
            "wait for finish: 0 re-queued, 2 finishing, 0 pinned, 0 cancelling; stop 0 -> 1 by "
        ),
        "{detail}"
    );
}

/// A task claimed by worker 1 (a row, no process): (id, run id).
async fn claimed(client: &Client) -> (i64, Uuid) {
    client
        .execute(
            "INSERT INTO long_task.worker (id, group_id) VALUES (1, 0), (2, 0)",
            &[],
        )
        .await
        .expect("worker rows");
    queue_strict(client, &["true"], None).await;
    let row = client
        .query_one("SELECT id, run_id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim");
    (row.get(0), row.get(1))
}

/// Nothing of a hand-over happened: the node claims, its task runs under its run, no event.
async fn unchanged(client: &Client, id: i64, run: Uuid) {
    assert_eq!(stop_code(client, 1).await, 0, "the stop code is unchanged");
    assert_eq!(owner(client, id).await, (Some(1), Some(run)));
    assert_eq!(state(client, id).await, "AE");
    assert_eq!(hand_over_events(client).await, vec![]);
}

#[tokio::test]
async fn a_refused_hand_over_changes_nothing_and_says_why() {
    let (db, client) = migrated_db().await;
    let (url, name) = (&db.url, &db.name);
    let (id, run) = claimed(&client).await;

    let (code_, message) = refused(
        client
            .query("SELECT * FROM long_task.hand_over_node(99)", &[])
            .await,
        "an unknown node",
    );
    assert_eq!(
        (code_.as_str(), message.as_str()),
        ("P0002", "no node with worker id 99")
    );
    let out = pgtaskd(url, &["hand-over", "99"]);
    assert_eq!(code(&out), 3, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node with worker id 99"));

    let (sub, op) = (format!("{name}_hsub"), format!("{name}_hop"));
    let sub_url = login_role(&client, url, &sub, &["pgtaskd_submitter"], None).await;
    let op_url = login_role(&client, url, &op, &["pgtaskd_operator"], None).await;
    let submitter = common::connect(&sub_url).await;
    let (code_, message) = refused(
        submitter
            .query("SELECT * FROM long_task.hand_over_node(1)", &[])
            .await,
        "a hand-over by a submitter",
    );
    assert_eq!(code_, "42501");
    assert!(message.contains("hand_over_node"), "{message}");
    let out = pgtaskd(&sub_url, &["hand-over", "1"]);
    assert_eq!(code(&out), 4, "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission denied") && stderr.contains("pgtaskd_operator"),
        "{stderr}"
    );
    // an operator limited to another group may not hand over a node of group 0
    client
        .batch_execute(&format!(
            "INSERT INTO long_task.group_access VALUES ('\"{op}\"', 7)"
        ))
        .await
        .expect("group access");
    let operator = common::connect(&op_url).await;
    let (code_, message) = refused(
        operator
            .query("SELECT * FROM long_task.hand_over_node(1)", &[])
            .await,
        "a hand-over of another group's node",
    );
    assert_eq!(code_, "42501");
    assert!(message.contains("may not use group 0"), "{message}");
    unchanged(&client, id, run).await;

    // the operator of the group may
    client
        .batch_execute("DELETE FROM long_task.group_access")
        .await
        .expect("every group");
    let out = pgtaskd(&op_url, &["hand-over", "1", "--json"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["requeued"], 1, "{answer}");
    assert_eq!(answer["runs"][0]["task_id"], id);
    assert_eq!(answer["runs"][0]["action"], "requeued");
    assert_eq!(stop_code(&client, 1).await, 1);
    assert_eq!(state(&client, id).await, "AW");

    // the node told to stop claims nothing, even before it heard of it; another node does,
    // under a new run id and the same attempt
    let again = client
        .query("SELECT id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim");
    assert!(again.is_empty(), "a node with a stop code claims nothing");
    let row = client
        .query_one(
            "SELECT id, run_id, attempt FROM long_task.claim(2, 0, 1)",
            &[],
        )
        .await
        .expect("node 2 claims it");
    assert_eq!(row.get::<_, i64>(0), id);
    assert_ne!(row.get::<_, Uuid>(1), run);
    assert_eq!(row.get::<_, i32>(2), 1, "the attempt is not charged");
    // node 1 is told to kill its run, not to report it; its late outcome changes nothing
    let verdict: String = client
        .query_one(
            "SELECT verdict FROM long_task.running_state(1, ARRAY[$1::bigint], ARRAY[$2::uuid])",
            &[&id, &run],
        )
        .await
        .expect("running_state")
        .get(0);
    assert_eq!(verdict, "handed_over");
    assert_eq!(late_outcome(&client, id, run).await, 0);
    assert_eq!(owner(&client, id).await.0, Some(2));
    // the text form, letting node 2's run finish
    let out = pgtaskd(url, &["hand-over", "2", "--wait-for-finish"]);
    assert_eq!(code(&out), 0, "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("node 2: claims nothing now (stop code set); 1 finishing\nTASK")
            && text.contains(&format!("\n{id} ")),
        "{text}"
    );
    assert_eq!(
        state(&client, id).await,
        "AE",
        "without kill the run goes on"
    );
    drop((submitter, operator));
    drop_roles(&client, &[&sub, &op]).await;
}

#[tokio::test]
async fn the_http_hand_over_needs_the_write_scope() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let (read, write) = ("r".repeat(24), "w".repeat(24));
    let file = token_file(dir.path(), &format!("read {read}\nwrite {write}\n"));
    let (_node, base) = node_with_http(&db.url, 1, &["--http-token-file", &file]).await;
    wait_node_ready(&client, 1).await;
    let url = format!("{base}/nodes/1/hand-over");
    let (status, body) = request_with_token("POST", &url, &read, Some(r#"{"kill": false}"#));
    assert_eq!(status, 403, "{body}");
    let (status, _) = request("POST", &url, Some("{}"));
    assert_eq!(status, 401);
    assert_eq!(
        stop_code(&client, 1).await,
        0,
        "a refused request changes nothing"
    );
    let (status, body) = request_with_token("POST", &url, &write, Some(r#"{"kill": "yes"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`kill`"), "{body}");
    let (status, body) =
        request_with_token("POST", &format!("{base}/nodes/99/hand-over"), &write, None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(stop_code(&client, 1).await, 0);
    let (status, body) = request_with_token("POST", &url, &write, Some(r#"{"kill": false}"#));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["kill"], false);
    assert_eq!(answer["runs"], serde_json::json!([]));
    assert_eq!(stop_code(&client, 1).await, 1);
}
