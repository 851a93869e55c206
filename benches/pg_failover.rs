//! PostgreSQL failover drill: a primary with a synchronous streaming standby (`pgtaskd::pgstandby`)
//! and three real nodes on the multi-host URL (`target_session_attrs=read-write`), default
//! timings unless told otherwise. Each trial kills the primary (`pg_ctl stop -m immediate`),
//! promotes the standby (at once, or `PG_FAILOVER_PROMOTE_AFTER` later: a failover tool's
//! detection time), and queues one task through the same URL as soon as a server accepts
//! writes; it measures, from the kill:
//! - the standby promoted (writes accepted again),
//! - the first task running on the new primary (its `started`, database clock = this machine's),
//! - every node back (its liveness lock held and its heartbeat stamped on the new primary).
//!
//! Then the old primary is rebuilt as the new one's standby (not timed) for the next trial. Also
//! counts the runs handed back meanwhile (a node taken for dead, or self-fenced). Prints
//! p50/p99/max; asserts nothing about timings.
//!
//!   cargo bench --bench pg_failover
//!   PG_FAILOVER_REPEATS=5 PG_FAILOVER_HEARTBEAT_TIMEOUT=1s cargo bench --bench pg_failover
//!   PG_FAILOVER_PROMOTE_AFTER=2s cargo bench --bench pg_failover

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgtaskd::pgcluster::create_database;
use pgtaskd::pgstandby::StandbyPair;
use support::{env_duration, env_usize, summary};
use tokio_postgres::Client;

const NODES: i64 = 3;

async fn connect_retrying(url: &str, limit: Duration) -> Client {
    let deadline = Instant::now() + limit;
    loop {
        match pgtaskd::db::connect_dedicated(url, "pg failover drill").await {
            Ok(client) => return client,
            Err(e) => {
                assert!(Instant::now() < deadline, "no read-write server: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Polls `cond` every 5 ms; panics after a minute.
async fn wait(what: &str, cond: impl AsyncFnMut() -> bool) {
    support::wait_until(what, Duration::from_secs(60), cond).await;
}

async fn nodes_back(client: &Client, since: DateTime<Utc>) -> bool {
    client
        .query_one(
            "SELECT (SELECT count(*) FROM long_task.advisory_holders(long_task.ns_node())) = $2
                AND (SELECT count(*) FROM long_task.worker WHERE active AND heartbeat_at > $1) = $2",
            &[&since, &NODES],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(false)
}

fn spawn_node(url: &str, worker: i64, timings: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--database-url", url])
        .args(["--worker-id", &worker.to_string(), "--max-tasks", "4"])
        .args(timings)
        .env(
            "RUST_LOG",
            std::env::var("PG_FAILOVER_NODE_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("start node")
}

#[tokio::main]
async fn main() {
    let repeats = env_usize("PG_FAILOVER_REPEATS", 20);
    let timings: Vec<String> = match std::env::var("PG_FAILOVER_HEARTBEAT_TIMEOUT") {
        Ok(t) => {
            let timeout = humantime::parse_duration(&t).expect("PG_FAILOVER_HEARTBEAT_TIMEOUT");
            let interval = (timeout * 2 / 5).max(Duration::from_millis(100));
            vec![
                "--heartbeat-timeout".into(),
                t,
                "--heartbeat-interval".into(),
                humantime::format_duration(interval).to_string(),
            ]
        }
        Err(_) => Vec::new(), // the defaults: heartbeat 2 s, timeout 5 s
    };
    let promote_after = env_duration("PG_FAILOVER_PROMOTE_AFTER", Duration::ZERO);
    let dir = std::env::temp_dir().join(format!("pgtaskd-pg-failover-{}", std::process::id()));
    let mut pair = StandbyPair::start(&dir.join("a"), &dir.join("b"), true)
        .await
        .expect("start a primary and a standby");
    create_database(&pair.primary().url("postgres"), "drill")
        .await
        .expect("db");
    let url = pair.url("drill");
    {
        let mut admin = connect_retrying(&url, Duration::from_secs(10)).await;
        pgtaskd::db::migrate::migrate(&mut admin)
            .await
            .expect("migrate");
    }
    let mut children: Vec<Child> = (1..=NODES).map(|w| spawn_node(&url, w, &timings)).collect();
    {
        let client = connect_retrying(&url, Duration::from_secs(10)).await;
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        wait("nodes ready", async || nodes_back(&client, epoch).await).await;
    }
    println!(
        "pg failover drill: {NODES} nodes, synchronous standby, timings {}, promoted {promote_after:?} after the kill, {repeats} trials",
        if timings.is_empty() {
            "default".to_owned()
        } else {
            timings.join(" ")
        }
    );

    let (mut promoted, mut first_task, mut all_back) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..repeats {
        // a little work in flight across the failover
        {
            let client = connect_retrying(&url, Duration::from_secs(10)).await;
            client
                .execute(
                    "INSERT INTO long_task.task (group_id, state_id, command)
                     SELECT 0, 'AW', '{sleep,1}' FROM generate_series(1, 3)",
                    &[],
                )
                .await
                .expect("queue");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed_at: DateTime<Utc> = Utc::now();
        let killed = Instant::now();
        pair.kill_primary().expect("kill the primary");
        tokio::time::sleep(promote_after).await;
        pair.promote_standby().expect("promote");
        promoted.push(killed.elapsed());
        let client = connect_retrying(&url, Duration::from_secs(30)).await;
        client
            .execute(
                "INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'AW', '{true}')",
                &[],
            )
            .await
            .expect("queue after the failover");
        let mut first: Option<f64> = None;
        wait("a task running on the new primary", async || {
            first = client
                .query_one(
                    "SELECT extract(epoch FROM min(started) - $1)::float8 FROM long_task.task WHERE started > $1",
                    &[&killed_at],
                )
                .await
                .ok()
                .and_then(|r| r.get(0));
            first.is_some()
        })
        .await;
        first_task.push(Duration::from_secs_f64(first.unwrap_or_default().max(0.0)));
        wait("every node back", async || {
            nodes_back(&client, killed_at).await
        })
        .await;
        all_back.push(killed.elapsed());
        drop(client);
        pair.rebuild_standby(true)
            .await
            .unwrap_or_else(|e| panic!("trial {trial}: rebuilding the standby: {e}"));
    }
    let client = connect_retrying(&url, Duration::from_secs(10)).await;
    wait("every task final", async || {
        client
            .query_one(
                "SELECT count(*) = 0 FROM long_task.task WHERE state_id LIKE 'A%'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false)
    })
    .await;
    let handed_back: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE kind IN ('requeued', 'lost_failed', 'lost_cancelled')",
            &[],
        )
        .await
        .expect("events")
        .get(0);
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE state_id <> 'CS'",
            &[],
        )
        .await
        .expect("states")
        .get(0);
    println!(
        "{}",
        summary("primary killed -> standby promoted", promoted)
    );
    println!(
        "{}",
        summary("primary killed -> first task on new primary", first_task)
    );
    println!("{}", summary("primary killed -> every node back", all_back));
    println!("runs handed back over all trials: {handed_back}; tasks not CS: {failed}");

    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = pair.stop();
    for socket in pair.socket_dirs() {
        let _ = std::fs::remove_dir_all(socket);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
