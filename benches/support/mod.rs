//! What the benches share: a throw-away PostgreSQL cluster under the target directory (or
//! `DATABASE_URL` as an admin URL), fresh migrated databases, plain connections. Used with
//! `mod support;` from each bench. `cpu` reads where a phase's CPU went (`/proc`), `server`
//! what the server did in the background over a window, `node_metrics` a node's `/metrics`.
#![allow(dead_code)]

pub mod cpu;
pub mod node_metrics;
pub mod server;

use pgtaskd::pgcluster::{create_database, PgCluster};
use tokio_postgres::{Client, NoTls};

/// The server the bench runs against; a cluster it started is stopped on drop.
pub struct BenchServer {
    cluster: Option<PgCluster>,
    pub admin_url: String,
}

impl BenchServer {
    /// `DATABASE_URL` when set, else a cluster in `<target>/pgtaskd-bench-pg` (fsync on).
    pub fn start() -> BenchServer {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                return BenchServer {
                    cluster: None,
                    admin_url: url,
                };
            }
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let cluster = PgCluster::open_or_init(&target.join("pgtaskd-bench-pg"))
            .unwrap_or_else(|e| panic!("cannot create the bench cluster: {e}"));
        cluster
            .start()
            .unwrap_or_else(|e| panic!("cannot start the bench cluster: {e}"));
        let admin_url = cluster.url("postgres");
        BenchServer {
            cluster: Some(cluster),
            admin_url,
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.stop() {
                eprintln!("warning: cannot stop the bench cluster: {e}");
            }
        }
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// Drops and creates database `name`, migrates it, returns its URL. With `sync_commit_off` the
/// database's commits do not wait for the disk (a CPU-cost measurement, not the default).
pub async fn fresh_db(admin_url: &str, name: &str, sync_commit_off: bool) -> String {
    let admin = connect(admin_url).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop the bench database");
    create_database(admin_url, name)
        .await
        .expect("create the bench database");
    if sync_commit_off {
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET synchronous_commit = off"
            ))
            .await
            .expect("alter");
    }
    let url = pgtaskd::db::with_dbname(admin_url, name);
    let mut client = connect(&url).await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .expect("migrate the bench database");
    url
}

/// Runs the SQL files named in the environment variable `var` (comma-separated) in the database
/// at `url`, after it was migrated: one release binary then compares two versions of a schema
/// function (the database keeps the binary's checksums, so an embedded node accepts it).
pub async fn apply_overlay(url: &str, var: &str) {
    let overlay = std::env::var(var).unwrap_or_default();
    let client = connect(url).await;
    for file in overlay.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let sql = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("overlay {file}: {e}"));
    }
}

pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A duration from the environment (`90s`, `10min`), or the default.
pub fn env_duration(key: &str, default: std::time::Duration) -> std::time::Duration {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => {
            humantime::parse_duration(v.trim()).unwrap_or_else(|e| panic!("{key}={v:?}: {e}"))
        }
        _ => default,
    }
}

/// Polls `cond` every 5 ms until it holds and returns how long that took; panics naming `what`
/// once `limit` has passed (a drill that never gets there has nothing to measure).
pub async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what} did not happen");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Waits until `n` tasks of `topic` are CS, polling every 20 ms (the end of a throughput run).
pub async fn wait_all_succeeded(client: &Client, topic: &str, n: usize) {
    wait_cs(client, Some(topic), n).await
}

/// Waits until `n` tasks of the database, whatever their topic, are CS, polling every 20 ms.
pub async fn wait_all_cs(client: &Client, n: usize) {
    wait_cs(client, None, n).await
}

async fn wait_cs(client: &Client, topic: Option<&str>, n: usize) {
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM long_task.task
                  WHERE ($1::text IS NULL OR topic = $1) AND state_id = 'CS'",
                &[&topic],
            )
            .await
            .expect("count")
            .get(0);
        if done as usize >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Ends a drill's round: cancels every waiting and running task, sets every node's
/// `max_task_count` to 0 (so nothing new is claimed while the next round is set up), and waits
/// until no task is active any more.
pub async fn reset_and_drain(client: &Client, limit: std::time::Duration) {
    client
        .batch_execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE state_id IN ('AE', 'AW');
             UPDATE long_task.worker SET max_task_count = 0",
        )
        .await
        .expect("reset");
    wait_until("drain", limit, async || {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE state_id LIKE 'A%'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await;
}

/// `name  p50 … ms  p99 … ms  max … ms  (n=…)` of a non-empty set of durations.
pub fn summary(name: &str, mut v: Vec<std::time::Duration>) -> String {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "{name:<44} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  (n={})",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        v.len()
    )
}

/// A batch consumer as one in any language would write it (statements prepared once, one round
/// trip per call): `consume(batch)`, then one `ack_many` for the whole batch, until the queue
/// has been empty for `idle_polls` polls 5 ms apart (0: the first empty answer ends it).
/// Returns how many tasks it acknowledged.
pub async fn consume_and_ack(url: &str, batch: i32, idle_polls: usize) -> usize {
    let c = connect(url).await;
    let consume = c
        .prepare(&format!("SELECT id FROM long_task.consume({batch})"))
        .await
        .expect("prepare consume");
    let ack = c
        .prepare("SELECT count(*) FROM long_task.ack_many($1)")
        .await
        .expect("prepare ack");
    let (mut done, mut idle) = (0usize, 0usize);
    loop {
        let ids: Vec<i64> = c
            .query(&consume, &[])
            .await
            .expect("consume")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            idle += 1;
            if idle > idle_polls {
                return done;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        idle = 0;
        c.execute(&ack, &[&ids]).await.expect("ack");
        done += ids.len();
    }
}

/// Spawns and waits for `count` `/bin/true`, `in_flight` at a time, stdout/stderr piped and read
/// (as a node does for its tails): the ceiling of a node's process throughput on this host.
pub async fn raw_spawn(count: usize, in_flight: usize) -> anyhow::Result<std::time::Duration> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    use std::process::Stdio;
    let start = std::time::Instant::now();
    stream::iter(0..count)
        .map(|_| async {
            let out = tokio::process::Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .await
                .map_err(|e| anyhow::anyhow!("cannot spawn /bin/true: {e}"))?;
            if !out.status.success() {
                anyhow::bail!("/bin/true failed: {}", out.status);
            }
            Ok(())
        })
        .buffer_unordered(in_flight)
        .try_collect::<()>()
        .await?;
    Ok(start.elapsed())
}
