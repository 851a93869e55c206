//! Half-open network partitions (issue 14): a node's traffic to PostgreSQL is blackholed by the
//! test proxy (`chaos-tests/proxy.rs`: sockets stay open, nothing is forwarded, TCP keepalives
//! are answered by the proxy's kernel), then healed. The cut-off node fences itself within
//! `heartbeat_timeout` and the coordinator hands its run back to another node; a cut-off
//! coordinator is replaced under a higher term and never writes under its old one; after the
//! heal the node is a standby again whose listener hears the next wake at once, and no task ran
//! more often than the at-least-once rule allows (one run plus one per `requeued` event).
//!
//! Each test prints its figures (`partition: ...`); run with `--nocapture` to see them.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::migrated_db;
use common::node::{
    coordinator, processes_with_env, queue, set_stop, state, wait_all_final, wait_coordinator,
    wait_node_ready, wait_state, wait_until, NodeProcess,
};
use common::proxy::Proxy;
use tokio_postgres::Client;
use uuid::Uuid;

/// The nodes' `--heartbeat-timeout` (common::node::FAST).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// Their `--kill-grace`.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Scheduling slack of a loaded test machine (debug build, shared cores).
const SLACK: Duration = Duration::from_millis(1500);
/// A wake must reach a listening node well within this; a deaf listener would only notice at
/// its next check (`listener_check_interval`, 10 s), then resync.
const WAKE_LIMIT: Duration = Duration::from_secs(3);
const LONG: Duration = Duration::from_secs(30);

/// A task command that appends "task_id run_id" to `log`, then sleeps `secs`.
fn recording(log: &Path, secs: f64) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"$PGTASKD_TASK_ID $PGTASKD_RUN_ID\" >> {}; sleep \"$0\"",
            log.display()
        ),
        secs.to_string(),
    ]
}

async fn queue_recording(client: &Client, log: &Path, secs: f64) -> i64 {
    let argv = recording(log, secs);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    queue(client, &argv).await
}

/// Every run the tasks recorded, by task.
fn executions(log: &Path) -> HashMap<i64, Vec<Uuid>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: HashMap<i64, Vec<Uuid>> = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(Ok(id)), Some(Ok(run))) = (
            parts.next().map(str::parse::<i64>),
            parts.next().map(str::parse::<Uuid>),
        ) {
            runs.entry(id).or_default().push(run);
        }
    }
    runs
}

/// The at-least-once rule, as the chaos checker states it: every task final, each ran at most
/// once plus once per lost run (`requeued` event), a `CS` under a run that really ran, and no
/// final state written by a lost run. Returns the number of re-runs.
async fn assert_at_least_once(client: &Client, log: &Path) -> usize {
    let runs = executions(log);
    let rows = client
        .query(
            "SELECT t.id, t.state_id::text, t.run_id, t.error,
                    coalesce(array_agg(e.run_id) FILTER (WHERE e.run_id IS NOT NULL), '{}')
               FROM long_task.task t
               LEFT JOIN long_task.event e ON e.task_id = t.id AND e.kind = 'requeued'
              WHERE t.command[1] = 'sh'
              GROUP BY t.id",
            &[],
        )
        .await
        .expect("tasks and their lost runs");
    let mut reruns = 0;
    for row in &rows {
        let id: i64 = row.get(0);
        let state: String = row.get(1);
        let run_id: Option<Uuid> = row.get(2);
        let error: Option<String> = row.get(3);
        let lost: Vec<Uuid> = row.get(4);
        let ran = runs.get(&id).map_or(&[][..], Vec::as_slice);
        assert!(
            ["CS", "CF", "CC"].contains(&state.as_str()),
            "task {id} not final: {state}"
        );
        assert!(
            ran.len() <= 1 + lost.len(),
            "task {id} ran {} times but lost its node only {} time(s)",
            ran.len(),
            lost.len()
        );
        if state == "CS" {
            assert!(
                run_id.is_some_and(|r| ran.contains(&r)),
                "task {id} CS under run {run_id:?}, which never ran"
            );
        }
        if run_id.is_some_and(|r| lost.contains(&r)) {
            assert!(
                state != "CS" && error.as_deref() == Some("worker lost"),
                "task {id} {state} written by its lost run {run_id:?}"
            );
        }
        reruns += ran.len().saturating_sub(1);
    }
    reruns
}

/// Waits until the worker's heartbeat is a fresh one (newer than `within`).
async fn wait_beating(client: &Client, worker: i64, within: Duration) {
    let secs = within.as_secs_f64();
    wait_until(LONG, || async {
        client
            .query_opt(
                "SELECT 1 FROM long_task.worker
                  WHERE id = $1 AND active AND heartbeat_at > now() - make_interval(secs => $2)",
                &[&worker, &secs],
            )
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await
    .unwrap_or_else(|_| panic!("node {worker} did not heartbeat again"));
}

/// Queues a task pinned to `worker` and returns how long until it was claimed; panics past
/// `WAKE_LIMIT` (the node's listener did not hear the wake).
async fn pinned_claim_time(client: &Client, worker: i64) -> Duration {
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, worker_id)
             VALUES (0, 'AW', '{true}', $1) RETURNING id",
            &[&worker],
        )
        .await
        .expect("queue a pinned task")
        .get(0);
    let queued = Instant::now();
    if wait_until(WAKE_LIMIT, || async { state(client, id).await != "AW" })
        .await
        .is_err()
    {
        panic!("node {worker} did not claim its pinned task {id} within {WAKE_LIMIT:?} of the insert: its listener is deaf");
    }
    let claimed = queued.elapsed();
    wait_state(client, id, "CS", LONG).await;
    claimed
}

async fn requeued(client: &Client, id: i64) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE task_id = $1 AND kind = 'requeued'",
            &[&id],
        )
        .await
        .expect("requeued events")
        .get(0)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_fences_itself_its_run_moves_and_after_the_heal_it_hears_wakes() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("executions.log");
    let proxy = Proxy::for_url(&db.url).expect("proxy");
    // node 2 (direct) first, so it is the coordinator; node 1 talks through the proxy
    let _n2 = NodeProcess::start(&db.url, 2, &[]);
    wait_coordinator(&client, 0, LONG, |w, _| w == 2).await;
    let mut n1 = NodeProcess::start(&proxy.url(&db.url), 1, &[]);
    wait_node_ready(&client, 1).await;

    let mut figures = Vec::new();
    for trial in 1..=3 {
        // node 2 claims nothing until node 1 runs the long task
        set_stop(&client, 2, 1).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let id = queue_recording(&client, &log, 3.0).await;
        wait_state(&client, id, "AE", LONG).await;
        let (worker, run1) = common::node::owner(&client, id).await;
        assert_eq!(worker, Some(1), "trial {trial}: node 1 runs the task");
        let run1 = run1.expect("a claimed task has a run id").to_string();
        // node 1's process of this run (node 2's re-run has another run id)
        let run_processes = || processes_with_env("PGTASKD_RUN_ID", &run1);
        wait_until(LONG, || async { !run_processes().is_empty() })
            .await
            .expect("the task's process runs");
        set_stop(&client, 2, 0).await;

        proxy.blackhole();
        let cut = Instant::now();
        // the node fences itself: its task's process is killed, the node lives on
        wait_until(LONG, || async { run_processes().is_empty() })
            .await
            .expect("the cut-off node kills its task");
        let fenced = cut.elapsed();
        assert!(n1.is_running(), "a fenced node keeps running");
        // the coordinator hands the run back, node 2 runs it under a new run id
        wait_until(LONG, || async { requeued(&client, id).await >= 1 })
            .await
            .expect("the coordinator hands the run back");
        let handed_back = cut.elapsed();
        wait_until(LONG, || async {
            let (w, r) = common::node::owner(&client, id).await;
            w == Some(2)
                && r.is_some_and(|r| r.to_string() != run1)
                && state(&client, id).await == "AE"
        })
        .await
        .unwrap_or_else(|_| panic!("trial {trial}: node 2 did not run task {id} again"));
        let rerun = cut.elapsed();
        assert!(
            fenced <= HEARTBEAT_TIMEOUT + KILL_GRACE + SLACK,
            "trial {trial}: the node fenced itself {fenced:?} after the cut (heartbeat_timeout {HEARTBEAT_TIMEOUT:?})"
        );
        // a coordinator round follows the node's heartbeat deadline (after a heal, too: the
        // node's first heartbeat announces it again, or a lone peer waited out a 30 s round)
        assert!(
            handed_back <= 2 * HEARTBEAT_TIMEOUT + SLACK,
            "trial {trial}: the run was handed back {handed_back:?} after the cut"
        );
        assert!(
            handed_back >= fenced.saturating_sub(KILL_GRACE),
            "trial {trial}: handed back ({handed_back:?}) before the node could have fenced itself ({fenced:?})"
        );

        // stay cut a moment longer (the node's checks and reconnects time out meanwhile), heal
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.heal();
        let healed = Instant::now();
        wait_beating(&client, 1, Duration::from_millis(300)).await;
        let beating = healed.elapsed();
        assert!(n1.is_running(), "the node survives the partition");
        // its listener is not deaf: a task pinned to it is claimed at once
        tokio::time::sleep(Duration::from_millis(300)).await;
        let wake = pinned_claim_time(&client, 1).await;
        wait_state(&client, id, "CS", LONG).await;
        let (w, _) = common::node::owner(&client, id).await;
        assert_eq!(w, Some(2), "trial {trial}: node 2 finished the task");
        println!(
            "partition: trial {trial}: cut -> self-fence (process killed) {} ms, -> hand-back {} ms, -> re-run on node 2 {} ms; heal -> heartbeat {} ms; pinned wake -> claim {} ms",
            ms(fenced), ms(handed_back), ms(rerun), ms(beating), ms(wake)
        );
        figures.push((fenced, handed_back));
    }
    let reruns = assert_at_least_once(&client, &log).await;
    assert_eq!(reruns, 3, "exactly the three cut-off runs ran again");
    let fenced: Vec<u128> = figures.iter().map(|f| ms(f.0)).collect();
    let handed: Vec<u128> = figures.iter().map(|f| ms(f.1)).collect();
    println!("partition: self-fence ms {fenced:?}, hand-back ms {handed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_coordinator_is_replaced_never_writes_under_its_term_and_rejoins_as_a_standby() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("executions.log");
    let proxy = Proxy::for_url(&db.url).expect("proxy");
    let n1 = NodeProcess::start(&proxy.url(&db.url), 1, &[]);
    let (_, term1) = wait_coordinator(&client, 0, LONG, |w, _| w == 1).await;
    let _n2 = NodeProcess::start(&db.url, 2, &[]);
    let _n3 = NodeProcess::start(&db.url, 3, &[]);
    wait_node_ready(&client, 2).await;
    wait_node_ready(&client, 3).await;

    // work on every node when the cut comes
    for _ in 0..24 {
        queue_recording(&client, &log, 0.8).await;
    }
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id = 'AE' AND worker_id = 1",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    })
    .await
    .expect("node 1 runs tasks");

    proxy.blackhole();
    let cut = Instant::now();
    let (new, term2) = wait_coordinator(&client, 0, LONG, |w, t| w != 1 && t > term1).await;
    let elected = cut.elapsed();
    // more work while cut off
    for _ in 0..12 {
        queue_recording(&client, &log, 0.3).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();
    let healed = Instant::now();
    wait_beating(&client, 1, Duration::from_millis(300)).await;
    let beating = healed.elapsed();
    let wake = pinned_claim_time(&client, 1).await;
    // a standby now: the new coordinator keeps its term
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        coordinator(&client, 0).await,
        Some((new, term2)),
        "the new coordinator keeps its term after the heal"
    );
    drop(n1);

    // every task finishes
    wait_all_final(&client, Duration::from_secs(60)).await;

    // the old coordinator wrote nothing under its term once the new term began
    let elected_id: i64 = client
        .query_one(
            "SELECT min(id) FROM long_task.event WHERE kind = 'elected' AND term = $1",
            &[&term2],
        )
        .await
        .expect("the new term's election event")
        .get::<_, Option<i64>>(0)
        .expect("the new coordinator's election is recorded");
    let late: Vec<(i64, String)> = client
        .query(
            "SELECT id, kind FROM long_task.event
              WHERE term = $1 AND id > $2 AND kind <> 'coordinator_deposed'",
            &[&term1, &elected_id],
        )
        .await
        .expect("events under the old term")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        late.is_empty(),
        "the old coordinator acted under term {term1} after term {term2} began: {late:?}"
    );
    let split = client
        .query(
            "SELECT term FROM long_task.event
              WHERE term IS NOT NULL AND kind <> 'coordinator_deposed'
              GROUP BY term HAVING count(DISTINCT by_worker_id) > 1",
            &[],
        )
        .await
        .expect("terms acted on by two nodes");
    assert!(split.is_empty(), "two coordinators acted in one term");
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind = 'node_dead' AND worker_id = 1 AND term = $1",
            &[&term2],
        )
        .await
        .expect("node_dead events")
        .get(0);
    assert!(
        dead >= 1,
        "the new coordinator declared the cut-off node dead"
    );
    let reruns = assert_at_least_once(&client, &log).await;
    println!(
        "partition: coordinator cut -> new coordinator (node {new}, term {term1} -> {term2}) {} ms; heal -> heartbeat {} ms; pinned wake -> claim {} ms; re-runs {reruns}",
        ms(elected), ms(beating), ms(wake)
    );
}

/// With a multi-host URL (a primary and its standby) the proxy forwards each host through a port
/// of its own and one cut stalls them all: a node behind it follows a failover and is still cut
/// from every server by one partition. Both hosts here are the test server, so each port proves
/// its own route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cut_stalls_every_host_of_a_multi_host_url() {
    let db = common::TestDb::new().await;
    let upstream = db
        .url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next());
    let host = upstream
        .and_then(|a| a.rsplit('@').next())
        .expect("host:port");
    let multi = db.url.replacen(host, &format!("{host},{host}"), 1);
    let proxy = Proxy::for_url(&multi).expect("proxy");
    let proxied = proxy.url(&multi);
    let ports: Vec<&str> = proxied
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .and_then(|a| a.rsplit('@').next())
        .expect("hosts")
        .split(',')
        .collect();
    assert_eq!(ports.len(), 2, "{proxied}");
    assert_ne!(ports[0], ports[1], "a port per host: {proxied}");
    assert!(!ports.contains(&host), "no host left unproxied: {proxied}");

    let mut clients = Vec::new();
    for port in &ports {
        let url = proxied.replacen(&ports.join(","), port, 1);
        let client = pgtaskd::db::connect_dedicated(&url, "partition test")
            .await
            .expect("connect through the proxy");
        clients.push(client);
    }
    proxy.blackhole();
    for (client, port) in clients.iter().zip(&ports) {
        let stalled =
            tokio::time::timeout(Duration::from_millis(500), client.simple_query("SELECT 1")).await;
        assert!(stalled.is_err(), "{port} answered during the cut");
    }
    proxy.heal();
    for (client, port) in clients.iter().zip(&ports) {
        tokio::time::timeout(LONG, client.simple_query("SELECT 1"))
            .await
            .unwrap_or_else(|_| panic!("{port} still stalled after the heal"))
            .expect("query after the heal");
    }
}
