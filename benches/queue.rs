//! Queue benchmarks (figures printed, nothing asserted):
//! 1. SQL consumer API: publish_bulk (batches of 100) → 4 consumers consume(100) → ack, tasks/s;
//! 2. an embedded node with a no-op handler: publish → CS, tasks/s on one node;
//! 3. an embedded handler's pickup latency: the commit of a publish to the handler's start;
//! 4. claim latency (claim 1, finish it) with 0 and with 1,000,000 final rows in the table.
//!
//! `cargo bench --bench queue` starts a throw-away PostgreSQL under the target dir (or uses
//! `DATABASE_URL` as an admin URL); `QUEUE_BENCH_TASKS` (default 20000) and `QUEUE_BENCH_FINAL`
//! (default 1000000) change the sizes; `QUEUE_BENCH_SYNC_COMMIT=off` sets the bench databases'
//! `synchronous_commit = off` (every commit otherwise waits for the disk's fsync);
//! `QUEUE_BENCH_ONLY=consumer,handler,latency,claim` (any of them) runs only those parts;
//! `QUEUE_BENCH_CONSUMERS` (default 4) sets the number of SQL consumers;
//! `QUEUE_BENCH_PROCESSED=N` measures claim latency once more after N more tasks went through
//! the consumer API (a queue's real history: dead index entries, not inserted final rows);
//! `QUEUE_BENCH_PROFILE=1` turns `track_functions = all` on for the bench databases and prints,
//! after each part, the functions' self time per task (`pg_stat_user_functions`);
//! `QUEUE_BENCH_OVERLAY=a.sql,b.sql` runs those files in each bench database after it is
//! migrated (a schema file of another version, to compare two versions of a function with one
//! binary: the database keeps this binary's checksums, so the node accepts it).

use std::time::{Duration, Instant};

use pgtaskd::config::NodeConfig;
use pgtaskd::embedded::Node;
use tokio_postgres::Client;

mod support;

use support::{connect, consume_and_ack, env_usize, BenchServer};

async fn fresh_db(admin_url: &str, name: &str) -> String {
    let sync_off = std::env::var("QUEUE_BENCH_SYNC_COMMIT").as_deref() == Ok("off");
    let url = support::fresh_db(admin_url, name, sync_off).await;
    if profiling() {
        connect(admin_url)
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET track_functions = 'all'"
            ))
            .await
            .expect("track_functions");
    }
    support::apply_overlay(&url, "QUEUE_BENCH_OVERLAY").await;
    url
}

fn profiling() -> bool {
    std::env::var("QUEUE_BENCH_PROFILE").as_deref() == Ok("1")
}

/// With `QUEUE_BENCH_PROFILE=1`: the functions' self time in the part just run, per task, from
/// `pg_stat_user_functions` (the sessions that ran them have ended: their counts are flushed).
async fn print_profile(url: &str, tasks: usize) {
    if !profiling() {
        return;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = connect(url).await;
    let rows = c
        .query(
            "SELECT funcname, calls, self_time, total_time FROM pg_stat_user_functions
              WHERE schemaname = 'long_task' ORDER BY self_time DESC LIMIT 12",
            &[],
        )
        .await
        .expect("pg_stat_user_functions");
    println!("  function                     calls   self ms  total ms  self µs/task");
    for r in rows {
        let (name, calls, self_ms, total_ms): (String, i64, f64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        println!(
            "  {name:<26} {calls:>7} {self_ms:>9.0} {total_ms:>9.0} {:>13.1}",
            self_ms * 1000.0 / tasks.max(1) as f64
        );
    }
}

async fn publish(client: &Client, n: usize, topic: &str) {
    for start in (0..n).step_by(100) {
        let count = 100.min(n - start) as i64;
        client
            .execute(
                "SELECT long_task.publish_bulk(array_agg(ROW($1::text, jsonb_build_object('i', g), NULL, NULL, 0, 1, NULL)::long_task.bulk_task))
                   FROM generate_series(1, $2::bigint) g",
                &[&topic, &count],
            )
            .await
            .expect("publish_bulk");
    }
}

async fn consumer_api(url: &str, n: usize) {
    let started = Instant::now();
    let publisher = {
        let url = url.to_owned();
        tokio::spawn(async move { publish(&connect(&url).await, n, "bench").await })
    };
    let mut consumers = Vec::new();
    let n_consumers = env_usize("QUEUE_BENCH_CONSUMERS", 4);
    for _ in 0..n_consumers {
        let url = url.to_owned();
        // 1 s without work: the publisher is done
        consumers.push(tokio::spawn(async move {
            consume_and_ack(&url, 100, 200).await
        }));
    }
    publisher.await.expect("publisher");
    let mut total = 0;
    for c in consumers {
        total += c.await.expect("consumer");
    }
    // the consumers' final idle second is not work
    let elapsed = started.elapsed().saturating_sub(Duration::from_secs(1));
    println!(
        "consumer API: {total} tasks published (publish_bulk x100) -> consumed ({n_consumers} consumers, consume(100)) -> acked in {:.2} s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}

async fn handler_throughput(url: &str, n: usize) {
    let config = NodeConfig {
        database_url: Some(url.to_owned()),
        max_tasks: 256,
        pool_size: Some(8),
        ..NodeConfig::default()
    };
    let mut node = Node::new(config);
    node.handler("noop", |_task| async move { Ok::<_, String>(()) });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node");
    let client = connect(url).await;
    let started = Instant::now();
    publish(&client, n, "noop").await;
    support::wait_all_succeeded(&client, "noop", n).await;
    let elapsed = started.elapsed();
    println!(
        "embedded node, no-op handler (max_tasks 256): {n} tasks published -> CS in {:.2} s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("stop");
}

/// Pickup latency of an embedded node's handler: one task at a time, from the commit of its
/// publish (the statement's reply) to the handler's start, 300 samples after 20 warm-up.
async fn handler_latency(url: &str) {
    let config = NodeConfig {
        database_url: Some(url.to_owned()),
        max_tasks: 16,
        ..NodeConfig::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut node = Node::new(config);
    node.handler("latency", move |_task| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            Ok::<_, String>(())
        }
    });
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node");
    let client = connect(url).await;
    let publish = client
        .prepare("SELECT long_task.publish('latency')")
        .await
        .expect("prepare");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for i in 0..320 {
        client.query_one(&publish, &[]).await.expect("publish");
        let committed = Instant::now();
        let started = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the handler ran within 10 s")
            .expect("handler channel");
        if i >= 20 {
            samples.push(started.saturating_duration_since(committed));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "embedded handler pickup latency (commit -> handler start): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms over {} tasks",
        p(0.5),
        p(0.9),
        p(0.99),
        samples.len()
    );
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("stop");
}

async fn claim_latency(url: &str, label: &str) {
    let c = connect(url).await;
    let mut samples = Vec::new();
    for _ in 0..500 {
        c.execute(
            "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}')",
            &[],
        )
        .await
        .expect("insert");
        let t = Instant::now();
        let row = c
            .query_one("SELECT id, run_id FROM long_task.claim(1, 0, 1)", &[])
            .await
            .expect("claim");
        samples.push(t.elapsed());
        let (id, run_id): (i64, uuid::Uuid) = (row.get(0), row.get(1));
        c.execute(
            "SELECT long_task.finish_runs(ARRAY[$1::bigint], ARRAY[$2::uuid], ARRAY['CS'], ARRAY[NULL::text], ARRAY[0], ARRAY[NULL::int], ARRAY[''], ARRAY[''])",
            &[&id, &run_id],
        )
        .await
        .expect("finish");
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "claim latency ({label}): median {:.3} ms, p99 {:.3} ms over {} claims",
        p(0.5),
        p(0.99),
        samples.len()
    );
}

async fn fill_final(url: &str, n: usize) {
    let c = connect(url).await;
    let t = Instant::now();
    // bulk history without the triggers (a benchmark fixture, not a state change)
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         INSERT INTO long_task.task (state_id, command, attempt, max_attempts, started, finished, last_state_change)
         SELECT (ARRAY['CS','CF','CC'])[1 + g % 3], '{{true}}', 1, 1, now() - interval '1 hour', now() - interval '1 hour' + g * interval '1 ms', now()
           FROM generate_series(1, {n}) g;
         SET session_replication_role = origin;"
    ))
    .await
    .expect("fill");
    c.batch_execute("VACUUM ANALYZE long_task.task")
        .await
        .expect("vacuum");
    println!(
        "({n} final rows inserted and vacuumed in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let n = env_usize("QUEUE_BENCH_TASKS", 20_000);
    let n_final = env_usize("QUEUE_BENCH_FINAL", 1_000_000);
    let server = BenchServer::start();
    let admin_url = server.admin_url.clone();
    let only = std::env::var("QUEUE_BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if runs("consumer") {
        let url = fresh_db(&admin_url, "pgtaskd_bench_queue").await;
        consumer_api(&url, n).await;
        print_profile(&url, n).await;
    }
    if runs("handler") {
        let url = fresh_db(&admin_url, "pgtaskd_bench_handler").await;
        handler_throughput(&url, n).await;
        print_profile(&url, n).await;
    }
    if runs("latency") {
        let url = fresh_db(&admin_url, "pgtaskd_bench_latency").await;
        handler_latency(&url).await;
    }
    if runs("claim") {
        let url = fresh_db(&admin_url, "pgtaskd_bench_claim").await;
        claim_latency(&url, "0 final rows").await;
        fill_final(&url, n_final).await;
        claim_latency(&url, &format!("{n_final} final rows")).await;
        let processed = env_usize("QUEUE_BENCH_PROCESSED", 0);
        if processed > 0 {
            // the same table after that many more tasks went through publish -> consume -> ack:
            // their dead claim-index entries are what autovacuum has to keep up with
            consumer_api(&url, processed).await;
            claim_latency(
                &url,
                &format!("{n_final} final rows + {processed} processed through the queue"),
            )
            .await;
        }
    }
    drop(server);
}
