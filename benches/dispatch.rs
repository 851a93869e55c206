//! Dispatch benchmark: one real `pgtaskd node` process against a throw-away PostgreSQL (or
//! `DATABASE_URL`), measuring what a user of the dispatcher feels. Prints figures, asserts none.
//!
//! 1. dispatch latency: commit of one `AW` row → the task's process running (`date +%s.%N`;
//!    the end is heard on `long_task_done`, not polled for),
//!    beside the raw spawn latency of the same `date` started by this process (the floor);
//! 2. throughput: N `/bin/true` tasks inserted in one statement → all `CS` (first start to
//!    last finish by the database's clock);
//! 3. raw spawn rate: the same N `/bin/true` spawned here, 16 in flight (the ceiling for 2.);
//! 4. idle load: transactions per second the idle node causes in its database.
//!
//! Run: `cargo build --release --bin pgtaskd && cargo bench --bench dispatch`.
//! Knobs: `BENCH_TASKS` (5000), `BENCH_SAMPLES` (300), `BENCH_IDLE_SECS` (30), `DATABASE_URL`
//! (admin URL of an existing server; a fresh database `pgtaskd_bench_<pid>` is made and dropped),
//! `BENCH_NODE_CONFIG` (a config file for the node, e.g. one with `allowed_programs`, to measure
//! what its checks cost), `BENCH_LIMITS=1` (group 0 gets what a user would set, none of it
//! binding: max_running 10000, key_limit 1000, key overrides `k1` 500 and `k9%` 200; the
//! throughput tasks carry 100 keys either way), `BENCH_LIMITS=rate` (the same and a rate_limit
//! of 1,000,000/s): what the limited claim path costs. Compare with interleaved runs (or
//! `LIMITS_BENCH_ONLY=process cargo bench --bench limits`: both configurations in one run).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use pgtaskd::db::codes::{TaskIds, DONE_CHANNEL};
use pgtaskd::pgcluster::{create_database, PgCluster};
use support::{cpu, node_metrics};
use tokio_postgres::Client;

const WORKER_ID: i64 = 1;
const MAX_TASKS: usize = 16;
const WARMUP: usize = 20;
/// The node's default `--heartbeat-interval` (see `config.rs`); the bench does not override it.
const HEARTBEAT_SECS: u64 = 2;

struct Knobs {
    tasks: usize,
    samples: usize,
    idle_secs: u64,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

impl Knobs {
    fn from_env() -> Result<Knobs> {
        let k = Knobs {
            tasks: knob("BENCH_TASKS", 5000)?,
            samples: knob("BENCH_SAMPLES", 300)?,
            idle_secs: knob("BENCH_IDLE_SECS", 30)?,
        };
        if k.tasks == 0 || k.samples == 0 || k.idle_secs == 0 {
            bail!("BENCH_TASKS, BENCH_SAMPLES and BENCH_IDLE_SECS must be > 0");
        }
        Ok(k)
    }
}

/// Stops the throw-away cluster when dropped, also on error paths.
struct ClusterGuard(PgCluster);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop() {
            eprintln!("warning: could not stop the bench cluster: {e}");
        }
    }
}

/// The node process: SIGTERM, then SIGKILL if it has not exited within 5 s. Dropped also on
/// error paths, so a failing bench leaves no node (its task processes die with it: PDEATHSIG).
struct NodeGuard(Child);

impl NodeGuard {
    fn start(url: &str, http_port: u16) -> Result<NodeGuard> {
        let exe = node_binary()?;
        let mut command = Command::new(&exe);
        command.arg("node");
        if let Ok(config) = std::env::var("BENCH_NODE_CONFIG") {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("--database-url")
            .arg(url)
            .arg("--worker-id")
            .arg(WORKER_ID.to_string())
            .arg("--max-tasks")
            .arg(MAX_TASKS.to_string())
            .arg("--http")
            .arg(format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(NodeGuard(child))
    }

    fn check_running(&mut self) -> Result<()> {
        match self.0.try_wait().context("cannot poll the node process")? {
            None => Ok(()),
            Some(status) => bail!("the node exited early: {status}"),
        }
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/release/pgtaskd`, next to the bench executable's `deps/` directory.
fn node_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot locate the bench executable")?;
    let deps = me
        .parent()
        .context("the bench executable has no parent directory")?;
    let profile_dir = deps
        .parent()
        .context("the bench executable's directory has no parent")?;
    let exe = profile_dir.join("pgtaskd");
    if !exe.is_file() {
        bail!(
            "node binary {} not found; run `cargo build --release --bin pgtaskd` first \
             (with the same CARGO_TARGET_DIR)",
            exe.display()
        );
    }
    Ok(exe)
}

async fn connect(url: &str) -> Result<Client> {
    pgtaskd::db::connect_dedicated(url, "bench")
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Parses `date +%s.%N` output into nanoseconds since the epoch.
fn parse_epoch_nanos(text: &str) -> Result<i128> {
    let text = text.trim();
    let (secs, nanos) = text
        .split_once('.')
        .with_context(|| format!("unexpected `date` output {text:?}"))?;
    let secs: i128 = secs
        .parse()
        .with_context(|| format!("unexpected `date` output {text:?}"))?;
    if nanos.len() != 9 {
        bail!("unexpected `date` output {text:?} (want 9 fractional digits)");
    }
    let nanos: i128 = nanos
        .parse()
        .with_context(|| format!("unexpected `date` output {text:?}"))?;
    Ok(secs * 1_000_000_000 + nanos)
}

fn epoch_nanos(t: SystemTime) -> Result<i128> {
    Ok(t.duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_nanos() as i128)
}

async fn wait_node_ready(client: &Client, node: &mut NodeGuard) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    loop {
        node.check_running()?;
        let ready = client
            .query_opt(
                "SELECT 1 FROM long_task.worker WHERE id = $1 AND active",
                &[&WORKER_ID],
            )
            .await
            .context("cannot read long_task.worker")?
            .is_some();
        if ready {
            return Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            bail!("the node did not become active within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a latency sample learns that its task ended: `long_task_done` notifications on a
/// connection of its own (what `pgtaskd wait` listens to), so the sample reads the row once
/// instead of polling the server while the node works.
struct DoneListener {
    notices: tokio::sync::mpsc::UnboundedReceiver<pgtaskd::db::Notice>,
    /// Keeps the listening connection open.
    _client: Client,
}

impl DoneListener {
    async fn connect(url: &str) -> Result<DoneListener> {
        let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
        let (client, _ended) = pgtaskd::db::connect_listening(url, "dispatch bench", tx)
            .await
            .context("cannot open the listening connection")?;
        pgtaskd::db::listen(&client, &[DONE_CHANNEL], "listening for ended tasks")
            .await
            .context("cannot LISTEN for ended tasks")?;
        Ok(DoneListener {
            notices,
            _client: client,
        })
    }

    /// Waits until a notification names `id` (or many tasks), for at most `limit`.
    async fn ended(&mut self, id: i64, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                Ok(Some(n)) if TaskIds::concerns(&n.payload, id) => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the listening connection closed"),
                Err(_) => bail!("latency task {id} not finished within {limit:?}"),
            }
        }
    }
}

/// One latency sample in milliseconds: commit of the INSERT → `date` running in the task.
async fn latency_sample(
    client: &Client,
    done: &mut DoneListener,
    insert: &tokio_postgres::Statement,
    read: &tokio_postgres::Statement,
) -> Result<f64> {
    let id: i64 = client
        .query_one(insert, &[])
        .await
        .context("cannot insert a latency task")?
        .get(0);
    // Autocommit: the INSERT has committed when its reply arrives.
    let committed = epoch_nanos(SystemTime::now())?;
    done.ended(id, Duration::from_secs(30)).await?;
    let row = client
        .query_one(read, &[&id])
        .await
        .context("cannot read a latency task")?;
    let state: String = row.get(0);
    if state != "CS" {
        let error: Option<String> = row.get(2);
        bail!("latency task {id} ended in {state}: {error:?}");
    }
    let out: Option<String> = row.get(1);
    let ran = parse_epoch_nanos(out.as_deref().unwrap_or(""))?;
    Ok((ran - committed) as f64 / 1e6)
}

struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    min: f64,
    n: usize,
    over_10ms: usize,
}

async fn measure_latency(client: &Client, url: &str, samples: usize) -> Result<Latency> {
    let mut done = DoneListener::connect(url).await?;
    let insert = client
        .prepare(
            "INSERT INTO long_task.task (group_id, state_id, command) \
             VALUES (0, 'AW', '{date,+%s.%N}') RETURNING id",
        )
        .await
        .context("cannot prepare the latency insert")?;
    let read = client
        .prepare("SELECT state_id::text, stdout_tail, error FROM long_task.task WHERE id = $1")
        .await
        .context("cannot prepare the latency read")?;
    for _ in 0..WARMUP {
        latency_sample(client, &mut done, &insert, &read).await?;
    }
    let mut values = Vec::with_capacity(samples);
    for _ in 0..samples {
        values.push(latency_sample(client, &mut done, &insert, &read).await?);
    }
    Ok(Latency::of(values))
}

/// One raw sample in milliseconds: this process spawning the latency tasks' own command
/// (`date +%s.%N`) → `date` running: what a dispatch costs at the least, on this machine now.
async fn raw_spawn_sample() -> Result<f64> {
    let before = epoch_nanos(SystemTime::now())?;
    let out = tokio::process::Command::new("date")
        .arg("+%s.%N")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .await
        .context("cannot spawn date")?;
    let ran = parse_epoch_nanos(&String::from_utf8_lossy(&out.stdout))?;
    Ok((ran - before) as f64 / 1e6)
}

/// Raw spawn latency of `date`, sampled one at a time like the dispatch latency.
async fn measure_raw_latency(samples: usize) -> Result<Latency> {
    for _ in 0..WARMUP {
        raw_spawn_sample().await?;
    }
    let mut values = Vec::with_capacity(samples);
    for _ in 0..samples {
        values.push(raw_spawn_sample().await?);
    }
    Ok(Latency::of(values))
}

impl Latency {
    fn of(mut values: Vec<f64>) -> Latency {
        values.sort_by(f64::total_cmp);
        Latency {
            p50: percentile(&values, 0.50),
            p90: percentile(&values, 0.90),
            p99: percentile(&values, 0.99),
            max: values[values.len() - 1],
            min: values[0],
            n: values.len(),
            over_10ms: values.iter().filter(|v| **v > 10.0).count(),
        }
    }
}

struct Throughput {
    tasks: usize,
    wall: Duration,
    /// Last `finished` − first `started` by the database clock: the span the node worked on
    /// the tasks, with neither the INSERT's own time nor the poll's quantisation in it.
    db_secs: f64,
    /// Mean number of `AE` (running) tasks seen by the polls.
    mean_running: f64,
}

async fn measure_throughput(client: &Client, tasks: usize) -> Result<Throughput> {
    let before: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM long_task.task", &[])
        .await
        .context("cannot read the last task id")?
        .get(0);
    let n = i64::try_from(tasks).context("BENCH_TASKS too large")?;
    let poll = client
        .prepare(
            // Counts only the unfinished rows, through the claim and running-task partial
            // indexes: a scan of every task each 50 ms would compete with the node for the CPU.
            "SELECT (SELECT count(*) FROM long_task.task \
                      WHERE group_id = 0 AND state_id = 'AW' AND id > $1), \
                    (SELECT count(*) FROM long_task.task \
                      WHERE state_id IN ('AE', 'AC') AND id > $1)",
        )
        .await
        .context("cannot prepare the throughput poll")?;
    client
        .execute(
            "INSERT INTO long_task.task (group_id, state_id, command, concurrency_key) \
             SELECT 0, 'AW', '{/bin/true}', 'k' || (i % 100) FROM generate_series(1, $1::bigint) i",
            &[&n],
        )
        .await
        .context("cannot insert the throughput tasks")?;
    let start = Instant::now();
    let mut last_done = -1_i64;
    let mut last_progress = Instant::now();
    let mut running_sum = 0_i64;
    let mut polls = 0_i64;
    loop {
        // Not more often: with 20,000 tasks waiting one poll costs the server ~8 ms, and every
        // 50 ms that was 15 % of a core taken from the node it measures. The rate comes from
        // the database's clock (db_secs), so the interval does not quantise it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let row = client
            .query_one(&poll, &[&before])
            .await
            .context("cannot poll the throughput tasks")?;
        let (waiting, running): (i64, i64) = (row.get(0), row.get(1));
        let done = n - waiting - running;
        running_sum += running;
        polls += 1;
        if done >= n {
            break;
        }
        if done > last_done {
            last_done = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(60) {
            bail!("throughput: no progress for 60 s ({done} of {n} tasks final)");
        }
    }
    let wall = start.elapsed();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state_id = 'CS'), \
                    count(*) FILTER (WHERE state_id = 'CF'), \
                    count(*) FILTER (WHERE state_id = 'CC'), \
                    extract(epoch FROM max(finished) - min(started))::float8, \
                    min(error) FILTER (WHERE state_id <> 'CS') \
               FROM long_task.task WHERE id > $1",
            &[&before],
        )
        .await
        .context("cannot check the throughput tasks")?;
    let (cs, cf, cc): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if cs != n {
        let error: Option<String> = row.get(4);
        bail!("throughput: only {cs} of {n} tasks succeeded ({cf} CF, {cc} CC; e.g. {error:?})");
    }
    Ok(Throughput {
        tasks,
        wall,
        db_secs: row.get::<_, Option<f64>>(3).unwrap_or(f64::NAN),
        mean_running: running_sum as f64 / polls.max(1) as f64,
    })
}

/// `xact_commit + xact_rollback` of database `db`, read through `admin` (a connection to a
/// different database, so the reads themselves are not counted in `db`).
async fn xact_count(admin: &Client, db: &str) -> Result<i64> {
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .context("cannot clear the stats snapshot")?;
    let row = admin
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .context("cannot read pg_stat_database")?;
    Ok(row.get(0))
}

struct IdleLoad {
    tx: i64,
    secs: u64,
}

/// How long to let pending statistics settle before the idle window. PG 15 backends flush their
/// transaction counts when they go idle, but at most once a second: a backend that flushed less
/// than 1 s before going idle keeps its counts pending for `PGSTAT_IDLE_INTERVAL` (10 s). The
/// node's pool connections that ran the throughput step are such backends (the first version of
/// this bench waited 3 s and counted ~20 tx/s of their deferred counts as idle load).
const STATS_SETTLE: Duration = Duration::from_secs(12);

async fn measure_idle(client: Client, admin: &Client, db: &str, secs: u64) -> Result<IdleLoad> {
    let busy: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE state_id IN ('AW', 'AE', 'AC')",
            &[],
        )
        .await
        .context("cannot check that the node is idle")?
        .get(0);
    if busy != 0 {
        bail!("idle load: {busy} tasks are still waiting or running");
    }
    // Leave autovacuum nothing to do in the window (its transactions would count).
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .context("cannot vacuum the bench database")?;
    // Our own backend in the bench database exits (and flushes its counts) now; from here on
    // only the node (and autovacuum) touch the bench database: the reads go through `admin`.
    drop(client);
    tokio::time::sleep(STATS_SETTLE).await;
    let first = xact_count(admin, db).await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let second = xact_count(admin, db).await?;
    Ok(IdleLoad {
        tx: second - first,
        secs,
    })
}

async fn run(knobs: &Knobs, url: &str, admin_url: &str, db: &str) -> Result<()> {
    let mut client = connect(url).await?;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .context("cannot migrate the bench database")?;
    let admin = connect(admin_url).await?;
    let limits = std::env::var("BENCH_LIMITS").unwrap_or_default();
    if limits == "1" || limits == "rate" {
        // what a user would set, none of it binding here (16 run at most, 100 keys): a group
        // limit, a default per-key limit and two overrides; `rate` adds a rate far above ours
        client
            .batch_execute(&format!(
                "INSERT INTO long_task.group_settings (group_id, max_running, key_limit, rate_limit)
                 VALUES (0, 10000, 1000, {});
                 INSERT INTO long_task.key_limit (group_id, key_pattern, max_running)
                 VALUES (0, 'k1', 500), (0, 'k9%', 200)",
                if limits == "rate" { "1000000" } else { "NULL" }
            ))
            .await
            .context("configuring the limits")?;
        eprintln!(
            "bench: group 0 has max_running 10000, key_limit 1000, overrides k1 500 and k9% 200{} (not binding)",
            if limits == "rate" { ", rate_limit 1000000/s" } else { "" }
        );
    }

    let http_port = node_metrics::free_port();
    let mut node = NodeGuard::start(url, http_port)?;
    let ready = wait_node_ready(&client, &mut node).await?;
    eprintln!("bench: node active after {:.2} s", ready.as_secs_f64());

    eprintln!(
        "bench: dispatch latency, {} samples after {WARMUP} warm-up…",
        knobs.samples
    );
    let writes_before = NodeWrites::read(http_port).await;
    let lat = measure_latency(&client, url, knobs.samples).await?;
    let lat_writes = NodeWrites::read(http_port).await.since(&writes_before);
    node.check_running()?;
    eprintln!(
        "bench: raw spawn latency of the same command, {} samples…",
        knobs.samples
    );
    let raw_lat = measure_raw_latency(knobs.samples).await?;

    eprintln!(
        "bench: raw spawn rate, {} /bin/true, {MAX_TASKS} in flight…",
        knobs.tasks
    );
    let before = cpu::Snapshot::take("self");
    let raw = support::raw_spawn(knobs.tasks, MAX_TASKS).await?;
    let raw_cpu = cpu::PhaseCpu::between(&before, &cpu::Snapshot::take("self"), knobs.tasks);

    eprintln!("bench: throughput, {} /bin/true tasks…", knobs.tasks);
    let node_pid = node.0.id().to_string();
    let before = cpu::Snapshot::take(&node_pid);
    let writes_before = NodeWrites::read(http_port).await;
    let tp = measure_throughput(&client, knobs.tasks).await?;
    let tp_cpu = cpu::PhaseCpu::between(&before, &cpu::Snapshot::take(&node_pid), knobs.tasks);
    let tp_writes = NodeWrites::read(http_port).await.since(&writes_before);
    node.check_running()?;

    eprintln!(
        "bench: idle load over {} s (after {} s for the statistics to settle)…",
        knobs.idle_secs,
        STATS_SETTLE.as_secs()
    );
    let idle = measure_idle(client, &admin, db, knobs.idle_secs).await?;
    node.check_running()?;
    drop(node);

    let tp_rate = tp.tasks as f64 / tp.db_secs;
    let raw_rate = knobs.tasks as f64 / raw.as_secs_f64();
    let idle_rate = idle.tx as f64 / idle.secs as f64;
    println!();
    println!(
        "pgtaskd dispatch benchmark (1 node, max_tasks {MAX_TASKS}, fsync on, {} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "dispatch latency  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (min {:.1} ms, {} > 10 ms, n={})",
        lat.p50, lat.p90, lat.p99, lat.max, lat.min, lat.over_10ms, lat.n
    );
    println!("                  commit → `date +%s.%N` in the task; includes date's own exec time");
    println!(
        "raw spawn latency p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  (the same `date` spawned here, one at a time; dispatch p50 {:+.1} ms over it)",
        raw_lat.p50,
        raw_lat.p90,
        raw_lat.p99,
        lat.p50 - raw_lat.p50
    );
    println!(
        "throughput        {} tasks in {:.2} s = {:.0} tasks/s  (first start → last finish by the db clock; {:.2} s wall from the INSERT's commit; mean {:.1} running)",
        tp.tasks,
        tp.db_secs,
        tp_rate,
        tp.wall.as_secs_f64(),
        tp.mean_running
    );
    println!(
        "raw spawn rate    {} /bin/true in {:.2} s = {:.0} procs/s ({MAX_TASKS} in flight)",
        knobs.tasks,
        raw.as_secs_f64(),
        raw_rate
    );
    println!(
        "ratio             {:.0} % of raw",
        100.0 * tp_rate / raw_rate
    );
    print_cpu(&tp_cpu, &raw_cpu, raw_rate);
    println!(
        "node writes       latency phase: claim {}; throughput phase: claim {}, outcomes {}",
        lat_writes.claim, tp_writes.claim, tp_writes.outcomes
    );
    println!(
        "                  wall time per call as the node saw it (pool wait, statement, durable commit; pgtaskd_db_write_seconds)"
    );
    println!(
        "idle load         {:.2} transactions/s over {} s ({} tx; node heartbeat every {HEARTBEAT_SECS} s by default)",
        idle_rate, idle.secs, idle.tx
    );
    println!(
        "                  node statements expected: heartbeat 1 / {HEARTBEAT_SECS} s + listener check 1 / 10 s"
    );
    Ok(())
}

/// The node's claim and outcome writes over a phase (`pgtaskd_db_write_seconds`).
struct NodeWrites {
    claim: Calls,
    outcomes: Calls,
}

/// Calls of one write and their total wall time.
struct Calls {
    secs: f64,
    n: f64,
}

impl std::fmt::Display for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n < 1.0 {
            return write!(f, "none");
        }
        write!(f, "{:.2} ms × {:.0}", 1000.0 * self.secs / self.n, self.n)
    }
}

impl NodeWrites {
    async fn read(port: u16) -> NodeWrites {
        let scrape = node_metrics::scrape(port).await;
        let calls = |series| {
            let (secs, n) = scrape.histogram(series);
            Calls { secs, n }
        };
        NodeWrites {
            claim: calls(r#"pgtaskd_db_write_seconds{write="claim"}"#),
            outcomes: calls(r#"pgtaskd_db_write_seconds{write="outcomes"}"#),
        }
    }

    fn since(&self, before: &NodeWrites) -> NodeWrites {
        let minus = |a: &Calls, b: &Calls| Calls {
            secs: a.secs - b.secs,
            n: a.n - b.n,
        };
        NodeWrites {
            claim: minus(&self.claim, &before.claim),
            outcomes: minus(&self.outcomes, &before.outcomes),
        }
    }
}

/// Where the CPU of the throughput and raw-spawn phases went, per task, and the rate that CPU
/// allows: at this CPU per task, every core busy all the time runs `cores / cpu per task`
/// tasks a second, whatever the scheduling; its share of the raw rate measured bounds the
/// throughput ratio.
fn print_cpu(tp: &cpu::PhaseCpu, raw: &cpu::PhaseCpu, raw_rate: f64) {
    println!(
        "cpu per task      {:.2} ms = task processes {:.2} + node {:.2} + postgres {:.2}  (machine {:.0} % busy)",
        tp.total_ms(),
        tp.children_ms,
        tp.own_ms,
        tp.postgres_ms,
        100.0 * tp.busy_share
    );
    println!(
        "cpu per raw spawn {:.2} ms = /bin/true {:.2} + spawner {:.2}  (machine {:.0} % busy)",
        raw.own_ms + raw.children_ms,
        raw.children_ms,
        raw.own_ms,
        100.0 * raw.busy_share
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ceiling = 1000.0 * cores / tp.total_ms();
    println!(
        "cpu ceiling       {ceiling:.0} tasks/s = {:.0} % of raw: every core busy at this CPU per task",
        100.0 * ceiling / raw_rate
    );
}

async fn drop_database(admin_url: &str, db: &str) -> Result<()> {
    let admin = connect(admin_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("cannot drop database {db}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let (admin_url, db, _cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, format!("pgtaskd_bench_{}", std::process::id()), None),
        _ => {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pgtaskd-bench-pg");
            let cluster = tokio::task::spawn_blocking(move || -> Result<PgCluster> {
                let cluster = PgCluster::open_or_init(&dir)
                    .with_context(|| format!("cannot initialise a cluster in {}", dir.display()))?;
                cluster
                    .start()
                    .with_context(|| format!("cannot start the cluster in {}", dir.display()))?;
                Ok(cluster)
            })
            .await
            .context("starting the cluster panicked")??;
            let admin_url = cluster.url("postgres");
            (admin_url, "bench".to_owned(), Some(ClusterGuard(cluster)))
        }
    };
    // A fresh database each run (a previous run may have left one behind).
    drop_database(&admin_url, &db).await?;
    create_database(&admin_url, &db)
        .await
        .with_context(|| format!("cannot create database {db}"))?;
    let url = pgtaskd::db::with_dbname(&admin_url, &db);

    let result = run(&knobs, &url, &admin_url, &db).await;
    if let Err(e) = drop_database(&admin_url, &db).await {
        eprintln!("warning: {e:#}");
    }
    result
    // `_cluster` drops here: the throw-away cluster is stopped.
}
