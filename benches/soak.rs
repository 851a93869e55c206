//! Soak benchmark: a fixed offered rate through one path for minutes, in phases — clean, held
//! horizon (one session keeps a transaction with an xid open, the classic vacuum blocker), and
//! recovery — printing one line per window (offered/s, completed/s, pickup p50/p99 from publish to
//! start, backlog) with the dead tuples and size of every table and index of `long_task` and
//! what the server did meanwhile (WAL per second, checkpoints, autovacuum), then a summary per
//! phase. Figures printed, nothing asserted.
//!
//! Paths (`SOAK_PATH`):
//! - `consumer`: a producer `publish_bulk`s (batches up to `SOAK_PUBLISH_BATCH`, 128) and
//!   `SOAK_CONSUMERS` (4) SQL consumers `consume(SOAK_CONSUME_BATCH = 100)` + `ack_many`; pickup
//!   is publish → the consume that returned the task (the bench process's clock);
//! - `handler`: an embedded node with a no-op handler (`max_tasks` `SOAK_MAX_TASKS`, 256); pickup
//!   is publish → handler start;
//! - `process`: a `pgtaskd node` process (release build, `max_tasks` 16) running `/bin/true`;
//!   pickup is the task's `created` → its claim (`task_run.started`, database clock).
//!
//! The producer is credited by real elapsed time (`SOAK_RATE` tasks/s, default 5000; 400 for
//! processes), never by loop count, so a slow system shows as a growing backlog.
//! `SOAK_CLEAN` (60s), `SOAK_HELD` (120s), `SOAK_RECOVERY` (40s), `SOAK_WINDOW` (5s) set the
//! phases; `SOAK_RETENTION` (e.g. `5min`) turns retention on for the group; `DATABASE_URL` is an
//! admin URL of a server of yours (a fresh `pgtaskd_bench_soak` database is made on it);
//! `SOAK_OVERLAY=a.sql,b.sql` runs those files in it after it is migrated (A/B of a schema
//! function with one binary).
//!
//! `cargo build --release --bins && cargo bench --bench soak`

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pgtaskd::config::NodeConfig;
use pgtaskd::embedded::Node;
use support::{connect, env_duration, env_usize, server, BenchServer};
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Consumer,
    Handler,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Clean,
    Held,
    Recovery,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Clean => "clean",
            Phase::Held => "held",
            Phase::Recovery => "recovery",
        }
    }
}

/// Counters and latency histograms shared by the producer, the consumers and the reporter.
struct Stats {
    /// Microseconds since this instant stamp every published task.
    epoch: Instant,
    published: AtomicU64,
    completed: AtomicU64,
    /// Pickup latency (µs) of the current window.
    window: Mutex<Histogram<u64>>,
}

impl Stats {
    fn new() -> Arc<Stats> {
        Arc::new(Stats {
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            window: Mutex::new(histogram()),
        })
    }

    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records a pickup of a task stamped `t` (µs since the epoch).
    fn picked(&self, t: u64) {
        let latency = self.now_micros().saturating_sub(t).max(1);
        let mut h = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record(latency);
    }

    fn take_window(&self) -> Histogram<u64> {
        let mut h = self.window.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *h, histogram())
    }
}

/// 1 µs to 10 min, 3 significant digits: memory-bounded whatever the number of samples.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Publishes at `rate` tasks/s until `stop`, credited by elapsed time.
async fn produce(
    url: String,
    path: Path,
    rate: f64,
    batch: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicU64>,
) {
    let client = connect(&url).await;
    let publish = client
        .prepare(
            "SELECT count(*) FROM long_task.publish_bulk(
                 (SELECT array_agg(ROW($1::text, jsonb_build_object('t', $2::bigint), NULL, NULL, 0, 1, NULL)::long_task.bulk_task)
                    FROM generate_series(1, $3::int)))",
        )
        .await
        .expect("prepare publish");
    let insert = client
        .prepare(
            "INSERT INTO long_task.task (state_id, command, max_attempts)
             SELECT 'AW', '{/bin/true}', 1 FROM generate_series(1, $1::int)",
        )
        .await
        .expect("prepare insert");
    let started = Instant::now();
    let mut sent: u64 = 0;
    while stop.load(Ordering::Relaxed) == 0 {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(sent).min(batch as u64) as i32;
        if n == 0 {
            let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
            tokio::time::sleep(
                next.saturating_sub(started.elapsed())
                    .max(Duration::from_micros(200)),
            )
            .await;
            continue;
        }
        let t = stats.now_micros() as i64;
        let result = match path {
            Path::Process => client.execute(&insert, &[&n]).await.map(|_| ()),
            _ => client
                .query_one(&publish, &[&"soak", &t, &n])
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            eprintln!("soak: publish failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        sent += n as u64;
        stats.published.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One SQL consumer: consume(batch) + ack_many until `stop`.
async fn consume(url: String, batch: i32, stats: Arc<Stats>, stop: Arc<AtomicU64>) {
    let client = connect(&url).await;
    let take = client
        .prepare("SELECT id, (params->>'t')::bigint FROM long_task.consume($1)")
        .await
        .expect("prepare consume");
    let ack = client
        .prepare("SELECT count(*) FROM long_task.ack_many($1)")
        .await
        .expect("prepare ack");
    while stop.load(Ordering::Relaxed) == 0 {
        let rows = match client.query(&take, &[&batch]).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("soak: consume failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(r.get::<_, i64>(0));
            if let Some(t) = r.get::<_, Option<i64>>(1) {
                stats.picked(t as u64);
            }
        }
        match client.query_one(&ack, &[&ids]).await {
            Ok(_) => {
                stats
                    .completed
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Err(e) => eprintln!("soak: ack failed: {e}"),
        }
    }
}

/// Tables and indexes of `long_task`: (name, kind, dead tuples (tables), bytes).
async fn relations(client: &Client) -> Vec<(String, char, i64, i64)> {
    client
        .query(
            "SELECT c.relname::text, c.relkind::text, coalesce(s.n_dead_tup, 0), pg_relation_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
              WHERE n.nspname = 'long_task' AND c.relkind IN ('r', 'i', 'p')
                AND c.relname NOT LIKE 'schema_%' AND c.relname NOT IN
                    ('task_state', 'period', 'installation', 'period_pkey', 'task_state_pkey',
                     'installation_pkey', 'installation_singleton_key')
              ORDER BY c.relkind DESC, pg_relation_size(c.oid) DESC",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let kind: String = r.get(1);
                    (r.get(0), kind.chars().next().unwrap_or('?'), r.get(2), r.get(3))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn human(bytes: i64) -> String {
    pgtaskd::humanize::human_bytes(bytes)
}

/// Pickup latency of process tasks claimed in the last `window` (database clock): their
/// `created` to their claim (`task_run.started`).
async fn process_window(client: &Client, window: Duration) -> Histogram<u64> {
    let mut h = histogram();
    let rows = client
        .query(
            "SELECT (extract(epoch FROM r.started - t.created) * 1e6)::bigint
               FROM long_task.task_run r JOIN long_task.task t ON t.id = r.task_id
              WHERE r.group_id = 0 AND r.finished > now() - make_interval(secs => $1)",
            &[&window.as_secs_f64()],
        )
        .await
        .unwrap_or_default();
    for r in rows {
        let us: i64 = r.get(0);
        let _ = h.record(us.max(1) as u64);
    }
    h
}

#[derive(Default)]
struct PhaseSummary {
    windows: u32,
    offered: u64,
    completed: u64,
    worst_ratio: f64,
    worst_p99: u64,
    max_dead: i64,
    hist: Option<Histogram<u64>>,
}

#[tokio::main]
async fn main() {
    let path = match std::env::var("SOAK_PATH").as_deref() {
        Ok("handler") => Path::Handler,
        Ok("process") => Path::Process,
        Ok("consumer") | Err(_) => Path::Consumer,
        Ok(other) => panic!("SOAK_PATH={other}: one of consumer, handler, process"),
    };
    let rate = env_usize("SOAK_RATE", if path == Path::Process { 400 } else { 5000 }) as f64;
    let phases = [
        (
            Phase::Clean,
            env_duration("SOAK_CLEAN", Duration::from_secs(60)),
        ),
        (
            Phase::Held,
            env_duration("SOAK_HELD", Duration::from_secs(120)),
        ),
        (
            Phase::Recovery,
            env_duration("SOAK_RECOVERY", Duration::from_secs(40)),
        ),
    ];
    let window = env_duration("SOAK_WINDOW", Duration::from_secs(5));
    let server = BenchServer::start();
    let url = support::fresh_db(&server.admin_url, "pgtaskd_bench_soak", false).await;
    support::apply_overlay(&url, "SOAK_OVERLAY").await;
    if std::env::var("SOAK_PROFILE").is_ok() {
        // server time per SQL function, printed at the end (sessions opened from here on)
        connect(&server.admin_url)
            .await
            .batch_execute("ALTER DATABASE pgtaskd_bench_soak SET track_functions = 'all'")
            .await
            .expect("track_functions");
    }
    let admin = connect(&url).await;
    if let Ok(retention) = std::env::var("SOAK_RETENTION") {
        admin
            .execute(
                "INSERT INTO long_task.group_settings (group_id, retention, history_retention)
                 VALUES (0, $1::text::interval, $1::text::interval)",
                &[&retention],
            )
            .await
            .expect("retention");
    }
    println!(
        "soak: path {path:?}, {rate} tasks/s offered, phases {}, window {window:?}, retention {}",
        phases
            .iter()
            .map(|(p, d)| format!("{} {d:?}", p.name()))
            .collect::<Vec<_>>()
            .join(", "),
        std::env::var("SOAK_RETENTION").unwrap_or_else(|_| "off".into())
    );

    let stats = Stats::new();
    let stop = Arc::new(AtomicU64::new(0));
    // The executors: an embedded node, a node process, or SQL consumers. The coordinator (the
    // Scheduler: lease expiry, retention) is a node in every path.
    let mut node_process = None;
    let mut embedded = None;
    let mut workers = Vec::new();
    match path {
        Path::Handler | Path::Consumer => {
            let mut node = Node::new(NodeConfig {
                database_url: Some(url.clone()),
                max_tasks: env_usize("SOAK_MAX_TASKS", 256) as u32,
                ..NodeConfig::default()
            });
            if path == Path::Handler {
                let s = stats.clone();
                node.handler("soak", move |task| {
                    let s = s.clone();
                    async move {
                        if let Some(t) = task.params["t"].as_u64() {
                            s.picked(t);
                        }
                        s.completed.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, String>(())
                    }
                });
            } else {
                // the node is the group's coordinator (lease expiry, retention); it has no
                // handler, so it claims none of the consumers' tasks
                for _ in 0..env_usize("SOAK_CONSUMERS", 4) {
                    let batch = env_usize("SOAK_CONSUME_BATCH", 100) as i32;
                    workers.push(tokio::spawn(consume(
                        url.clone(),
                        batch,
                        stats.clone(),
                        stop.clone(),
                    )));
                }
            }
            embedded = Some(
                tokio::task::spawn_blocking(move || node.start())
                    .await
                    .expect("join")
                    .expect("embedded node starts"),
            );
        }
        Path::Process => {
            let exe = std::env::current_exe()
                .ok()
                .and_then(|p| Some(p.parent()?.parent()?.join("pgtaskd")))
                .filter(|p| p.is_file())
                .expect("target/release/pgtaskd: run `cargo build --release --bins` first");
            node_process = Some(
                std::process::Command::new(exe)
                    .args([
                        "node",
                        "--database-url",
                        &url,
                        "--worker-id",
                        "1",
                        "--max-tasks",
                        "16",
                    ])
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .expect("start the node"),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let producer = tokio::spawn(produce(
        url.clone(),
        path,
        rate,
        env_usize("SOAK_PUBLISH_BATCH", 128),
        stats.clone(),
        stop.clone(),
    ));

    let mut summaries: Vec<(Phase, PhaseSummary)> = Vec::new();
    let started = Instant::now();
    let mut last_published = 0;
    let mut server_before = server::Counters::read(&admin).await;
    let mut last_completed = 0;
    let mut holder: Option<Client> = None;
    for (phase, length) in phases {
        if phase == Phase::Held {
            let h = connect(&url).await;
            h.batch_execute("BEGIN").await.expect("begin");
            let row = h
                .query_one("SELECT txid_current()::text, pg_backend_pid()", &[])
                .await
                .expect("txid");
            println!(
                "soak: holding the horizon back: xid {} open in backend {}",
                row.get::<_, String>(0),
                row.get::<_, i32>(1)
            );
            holder = Some(h);
        } else if let Some(h) = holder.take() {
            h.batch_execute("COMMIT").await.expect("commit");
            println!("soak: horizon released");
        }
        let mut summary = PhaseSummary {
            worst_ratio: f64::INFINITY,
            ..PhaseSummary::default()
        };
        let phase_end = Instant::now() + length;
        while Instant::now() < phase_end {
            let w_start = Instant::now();
            tokio::time::sleep(window.min(phase_end - w_start)).await;
            let secs = w_start.elapsed().as_secs_f64();
            let published = stats.published.load(Ordering::Relaxed);
            let completed = stats.completed.load(Ordering::Relaxed);
            let hist = if path == Path::Process {
                stats.take_window();
                process_window(&admin, w_start.elapsed()).await
            } else {
                stats.take_window()
            };
            let (offered, done) = (published - last_published, completed - last_completed);
            let process_done = if path == Path::Process {
                hist.len()
            } else {
                done
            };
            last_published = published;
            last_completed = completed;
            let backlog = if path == Path::Process {
                admin
                    .query_one(
                        "SELECT count(*) FROM long_task.task WHERE state_id IN ('AW', 'AE')",
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, i64>(0) as u64)
                    .unwrap_or(0)
            } else {
                published.saturating_sub(completed)
            };
            let ring = admin
                .query_one(
                    "SELECT (SELECT last_value FROM long_task.ready_head), (SELECT last_value FROM long_task.ready_gen),
                            (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                              - (SELECT last_value FROM long_task.ready_rotated_at)",
                    &[],
                )
                .await
                .map(|r| format!("ring head {} gen {} turned {} ms ago", r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)))
                .unwrap_or_default();
            let server_now = server::Counters::read(&admin).await;
            let background = server_before.window(&server_now, secs, &admin).await;
            server_before = server_now;
            let rels = relations(&admin).await;
            let dead: i64 = rels.iter().filter(|r| r.1 != 'i').map(|r| r.2).sum();
            let (p50, p99) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));
            println!(
                "t={:>5.0}s {:<8} offered/s {:>6.0} completed/s {:>6.0} pickup p50 {:>8.2} ms p99 {:>8.2} ms backlog {:>7}",
                started.elapsed().as_secs_f64(),
                phase.name(),
                offered as f64 / secs,
                process_done as f64 / secs,
                ms(p50),
                ms(p99),
                backlog
            );
            let tables: Vec<String> = rels
                .iter()
                .filter(|r| r.1 != 'i' && (r.3 > 8192 || r.2 > 0))
                .map(|r| format!("{} dead {} {}", r.0, r.2, human(r.3)))
                .collect();
            let indexes: Vec<String> = rels
                .iter()
                .filter(|r| r.1 == 'i' && r.3 > 8192)
                .map(|r| format!("{} {}", r.0, human(r.3)))
                .collect();
            println!("        {ring}; tables: {}", tables.join(", "));
            println!("        indexes: {}", indexes.join(", "));
            println!("        {background}");
            summary.windows += 1;
            summary.offered += offered;
            summary.completed += process_done;
            if offered > 0 {
                summary.worst_ratio = summary
                    .worst_ratio
                    .min(process_done as f64 / offered as f64);
            }
            summary.worst_p99 = summary.worst_p99.max(p99);
            summary.max_dead = summary.max_dead.max(dead);
            match &mut summary.hist {
                Some(h) => {
                    let _ = h.add(&hist);
                }
                None => summary.hist = Some(hist),
            }
        }
        summaries.push((phase, summary));
    }
    stop.store(1, Ordering::Relaxed);
    let _ = producer.await;
    for w in workers {
        let _ = w.await;
    }
    println!("soak summary ({path:?}, {rate} tasks/s offered):");
    for (phase, s) in &summaries {
        let h = s.hist.clone().unwrap_or_else(histogram);
        let secs = s.windows as f64 * window.as_secs_f64();
        println!(
            "  {:<8} offered/s {:>6.0} completed/s {:>6.0} (worst window {:>5.1} %) pickup p50 {:.2} ms p99 {:.2} ms (worst window p99 {:.2} ms) max dead tuples {}",
            phase.name(),
            s.offered as f64 / secs.max(1e-9),
            s.completed as f64 / secs.max(1e-9),
            if s.worst_ratio.is_finite() { s.worst_ratio * 100.0 } else { 0.0 },
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(s.worst_p99),
            s.max_dead
        );
    }
    if std::env::var("SOAK_PROFILE").is_ok() {
        println!("  server time per function (calls, total ms, self ms):");
        for r in admin
            .query(
                "SELECT funcname::text, calls, total_time, self_time FROM pg_stat_user_functions
                  ORDER BY total_time DESC LIMIT 15",
                &[],
            )
            .await
            .unwrap_or_default()
        {
            println!(
                "    {:<24} {:>9} {:>11.0} {:>11.0}",
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, f64>(2),
                r.get::<_, f64>(3)
            );
        }
    }
    let rels = relations(&admin).await;
    let total: i64 = rels.iter().map(|r| r.3).sum();
    println!(
        "  sizes at the end: {} in all ({})",
        human(total),
        rels.iter()
            .map(|r| format!("{} {}", r.0, human(r.3)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(node) = embedded {
        let _ = tokio::task::spawn_blocking(move || node.stop()).await;
    }
    if let Some(mut child) = node_process {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    drop(server);
}
