//! Limits benchmark (issue 13's figures): what the concurrency and rate limits cost on the claim
//! path when configured but not binding, and what a fair-share claim costs with many keys
//! waiting. SQL consumers only (no node: the dispatch bench's `BENCH_LIMITS=1` covers node
//! processes). Prints figures, asserts none.
//!
//! 1. throughput A/B, interleaved rounds: N keyed consumer tasks (100 keys) drained by 4
//!    consumers doing consume(100) + ack_many, with (a) no limits, (b) max_running, key_limit and
//!    rate_limit too high to bind, (c) the same and fair_share;
//! 2. claim latency with `LIMITS_BENCH_KEYS` (10,000) distinct keys waiting (2 tasks each) and
//!    fair share on: 500 consume(4) calls, each timed (its ack untimed).
//!
//! Run: `cargo bench --bench limits`. Knobs: `LIMITS_BENCH_TASKS` (20000), `LIMITS_BENCH_ROUNDS`
//! (3), `LIMITS_BENCH_KEYS` (10000), `DATABASE_URL` (an admin URL instead of the throw-away
//! cluster).

mod support;

use std::time::{Duration, Instant};

use support::{connect, consume_and_ack, env_usize, fresh_db, summary, BenchServer};

const CONFIGS: [(&str, &str); 3] = [
    ("no limits", ""),
    (
        "limits, not binding",
        "INSERT INTO long_task.group_settings (group_id, max_running, key_limit, rate_limit)
         VALUES (0, 1000000, 1000000, 1000000)",
    ),
    (
        "limits + fair share, not binding",
        "INSERT INTO long_task.group_settings (group_id, max_running, key_limit, rate_limit, fair_share)
         VALUES (0, 1000000, 1000000, 1000000, true)",
    ),
];

async fn drain(url: &str, setup: &str, n: usize) -> f64 {
    let client = connect(url).await;
    if !setup.is_empty() {
        client.batch_execute(setup).await.expect("limits");
    }
    client
        .execute(
            "INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 'bench', 'k' || (i % 100) FROM generate_series(1, $1::int) i",
            &[&(n as i32)],
        )
        .await
        .expect("queue");
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let url = url.to_owned();
        consumers.push(tokio::spawn(
            async move { consume_and_ack(&url, 100, 0).await },
        ));
    }
    let mut total = 0;
    for c in consumers {
        total += c.await.expect("consumer");
    }
    assert_eq!(total, n, "every task consumed once");
    n as f64 / started.elapsed().as_secs_f64()
}

async fn fair_claim_latency(url: &str, keys: usize) -> Vec<Duration> {
    let client = connect(url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO long_task.group_settings (group_id, fair_share) VALUES (0, true);
             INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 'bench', 'key-' || (i % {keys}) FROM generate_series(1, {}) i;
             ANALYZE long_task.fair_key;",
            keys * 2
        ))
        .await
        .expect("queue");
    let waiting: i64 = client
        .query_one("SELECT count(*) FROM long_task.fair_key", &[])
        .await
        .expect("keys")
        .get(0);
    eprintln!("bench: {waiting} distinct keys waiting, fair share on");
    let consume = client
        .prepare("SELECT id FROM long_task.consume(4)")
        .await
        .expect("prepare");
    let mut times = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let ids: Vec<i64> = client
            .query(&consume, &[])
            .await
            .expect("consume")
            .iter()
            .map(|r| r.get(0))
            .collect();
        times.push(t.elapsed());
        assert_eq!(ids.len(), 4);
        client
            .query_one("SELECT count(*) FROM long_task.ack_many($1)", &[&ids])
            .await
            .expect("ack");
    }
    times
}

#[tokio::main]
async fn main() {
    let server = BenchServer::start();
    let n = env_usize("LIMITS_BENCH_TASKS", 20_000);
    let rounds = env_usize("LIMITS_BENCH_ROUNDS", 3);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    for round in 0..rounds {
        for (i, (name, setup)) in CONFIGS.iter().enumerate() {
            let url = fresh_db(&server.admin_url, "pgtaskd_bench_limits", false).await;
            let rate = drain(&url, setup, n).await;
            eprintln!("bench: round {round}: {name}: {rate:.0} tasks/s");
            rates[i].push(rate);
        }
    }
    for (i, (name, _)) in CONFIGS.iter().enumerate() {
        let mut v = rates[i].clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = v[v.len() / 2];
        let base = {
            let mut b = rates[0].clone();
            b.sort_by(|a, b| a.total_cmp(b));
            b[b.len() / 2]
        };
        println!(
            "consumer API, {n} keyed tasks, {name:<34} median {median:>6.0} tasks/s ({:+.1} % vs no limits; rounds {:?})",
            (median / base - 1.0) * 100.0,
            rates[i].iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
    let keys = env_usize("LIMITS_BENCH_KEYS", 10_000);
    let url = fresh_db(&server.admin_url, "pgtaskd_bench_limits", false).await;
    let times = fair_claim_latency(&url, keys).await;
    println!(
        "{}",
        summary(
            &format!("fair-share consume(4), {keys} keys waiting"),
            times
        )
    );
}
