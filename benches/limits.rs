//! Limits benchmark (issue 13's figures): what the concurrency and rate limits cost on the claim
//! path when configured but not binding, and what a fair-share claim costs with many keys
//! waiting. Prints figures, asserts none.
//!
//! 1. consumer API, throughput A/B in interleaved rounds: N keyed consumer tasks (100 keys)
//!    drained by 4 consumers doing consume(100) + ack_many, in each configuration of `CONFIGS`;
//! 2. an embedded node with a no-op handler (max_tasks 256), interleaved rounds: N keyed
//!    handler tasks inserted at once -> all CS, with no limits and with the limits;
//! 3. claim latency with `LIMITS_BENCH_KEYS` (10,000) distinct keys waiting (2 tasks each) and
//!    fair share on: 500 consume(4) calls, each timed (its ack untimed), after 10 the session
//!    warms up with (the first call's time is printed apart);
//! 4. an embedded node running OS processes (max_tasks 16, as `benches/dispatch.rs` runs its
//!    node), interleaved rounds: `LIMITS_BENCH_PROCS` (3000) keyed `/bin/true` tasks inserted at
//!    once -> all CS, with no limits and with the limits, each round next to the raw spawn rate
//!    of as many `/bin/true` (16 in flight) measured just before it.
//!
//! The limits a user would set, none of them binding here (at most 400 tasks run at once, over
//! 100 keys): a group limit well above that, a default per-key limit and two overrides; the
//! rate configuration adds a rate far above the bench's.
//!
//! Run: `cargo bench --bench limits`. Knobs: `LIMITS_BENCH_TASKS` (20000), `LIMITS_BENCH_ROUNDS`
//! (3), `LIMITS_BENCH_KEYS` (10000), `LIMITS_BENCH_PROCS` (3000),
//! `LIMITS_BENCH_ONLY=consumer,handler,latency,process` (any of them),
//! `DATABASE_URL` (an admin URL instead of the throw-away cluster).

mod support;

use std::time::{Duration, Instant};

use pgtaskd::config::NodeConfig;
use pgtaskd::embedded::Node;
use support::{connect, consume_and_ack, env_usize, fresh_db, summary, BenchServer};

/// Fair-share consume(4) calls made before the 500 timed ones (the session's warm-up).
const FAIR_WARMUP: usize = 10;

/// The process slots of the process part: those of `benches/dispatch.rs`'s node.
const PROCESS_SLOTS: usize = 16;

/// The limits: max_running, key_limit and two key overrides (one key, one pattern).
const LIMITS: &str = "INSERT INTO long_task.group_settings (group_id, max_running, key_limit)
     VALUES (0, 10000, 1000);
     INSERT INTO long_task.key_limit (group_id, key_pattern, max_running)
     VALUES (0, 'k1', 500), (0, 'k9%', 200)";

const CONFIGS: [(&str, &str); 4] = [
    ("no limits", ""),
    ("limits, not binding", LIMITS),
    (
        "limits + rate, not binding",
        "INSERT INTO long_task.group_settings (group_id, max_running, key_limit, rate_limit)
         VALUES (0, 10000, 1000, 1000000);
         INSERT INTO long_task.key_limit (group_id, key_pattern, max_running)
         VALUES (0, 'k1', 500), (0, 'k9%', 200)",
    ),
    (
        "limits + fair share, not binding",
        "INSERT INTO long_task.group_settings (group_id, max_running, key_limit, fair_share)
         VALUES (0, 10000, 1000, true);
         INSERT INTO long_task.key_limit (group_id, key_pattern, max_running)
         VALUES (0, 'k1', 500), (0, 'k9%', 200)",
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
            // two a key, and enough for every call to get its four
            (keys * 2).max((FAIR_WARMUP + 500) * 4)
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
    // the session's first calls compile the PL/pgSQL functions and plan their statements (about
    // 20 ms for the first): reported apart, not counted in the steady state's percentiles
    let mut times = Vec::new();
    for call in 0..FAIR_WARMUP + 500 {
        let t = Instant::now();
        let ids: Vec<i64> = client
            .query(&consume, &[])
            .await
            .expect("consume")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if call == 0 {
            eprintln!(
                "bench: the session's first consume(4): {:.1} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
        if call >= FAIR_WARMUP {
            times.push(t.elapsed());
        }
        assert_eq!(ids.len(), 4);
        client
            .query_one("SELECT count(*) FROM long_task.ack_many($1)", &[&ids])
            .await
            .expect("ack");
    }
    times
}

/// What an embedded node drains: no-op handler tasks (256 at a time) or `/bin/true` processes
/// (`PROCESS_SLOTS` at a time, as `benches/dispatch.rs` runs its node).
#[derive(Clone, Copy)]
enum Work {
    Handler,
    Process,
}

/// An embedded node drains `n` keyed tasks of `work` inserted at once; tasks/s.
async fn node_drain(url: &str, setup: &str, n: usize, work: Work) -> f64 {
    let client = connect(url).await;
    if !setup.is_empty() {
        client.batch_execute(setup).await.expect("limits");
    }
    let config = NodeConfig {
        database_url: Some(url.to_owned()),
        max_tasks: match work {
            Work::Handler => 256,
            Work::Process => PROCESS_SLOTS as u32,
        },
        pool_size: Some(8),
        ..NodeConfig::default()
    };
    let mut node = Node::new(config);
    let insert = match work {
        Work::Handler => {
            node.handler("noop", |_task| async move { Ok::<_, String>(()) });
            "INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
             SELECT 0, 'AW', 'noop', 'k' || (i % 100) FROM generate_series(1, $1::int) i"
        }
        Work::Process => {
            node.run_commands(true);
            "INSERT INTO long_task.task (group_id, state_id, command, concurrency_key)
             SELECT 0, 'AW', '{/bin/true}', 'k' || (i % 100) FROM generate_series(1, $1::int) i"
        }
    };
    let running = tokio::task::spawn_blocking(move || node.start())
        .await
        .expect("join")
        .expect("node");
    let started = Instant::now();
    client.execute(insert, &[&(n as i32)]).await.expect("queue");
    support::wait_all_cs(&client, n).await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .expect("join")
        .expect("stop");
    rate
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Each configuration's median and its difference to the first's (no limits).
fn report(part: &str, configs: &[&str], rates: &[Vec<f64>]) {
    let base = median(&rates[0]);
    for (name, r) in configs.iter().zip(rates) {
        let m = median(r);
        println!(
            "{part}, {name:<34} median {m:>6.0} tasks/s ({:+.1} % vs no limits; rounds {:?})",
            (m / base - 1.0) * 100.0,
            r.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }
}

#[tokio::main]
async fn main() {
    let server = BenchServer::start();
    let n = env_usize("LIMITS_BENCH_TASKS", 20_000);
    let rounds = env_usize("LIMITS_BENCH_ROUNDS", 3);
    let only = std::env::var("LIMITS_BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if runs("consumer") {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
        for round in 0..rounds {
            for (i, (name, setup)) in CONFIGS.iter().enumerate() {
                let url = fresh_db(&server.admin_url, "pgtaskd_bench_limits", false).await;
                let rate = drain(&url, setup, n).await;
                eprintln!("bench: round {round}: consumer API, {name}: {rate:.0} tasks/s");
                rates[i].push(rate);
            }
        }
        let names: Vec<&str> = CONFIGS.iter().map(|c| c.0).collect();
        report(&format!("consumer API, {n} keyed tasks"), &names, &rates);
    }
    if runs("handler") {
        let configs = [CONFIGS[0], CONFIGS[1]];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for round in 0..rounds {
            for (i, (name, setup)) in configs.iter().enumerate() {
                let url = fresh_db(&server.admin_url, "pgtaskd_bench_limits", false).await;
                let rate = node_drain(&url, setup, n, Work::Handler).await;
                eprintln!("bench: round {round}: no-op handler, {name}: {rate:.0} tasks/s");
                rates[i].push(rate);
            }
        }
        let names: Vec<&str> = configs.iter().map(|c| c.0).collect();
        report(
            &format!("embedded node, no-op handler, {n} keyed tasks"),
            &names,
            &rates,
        );
    }
    if runs("latency") {
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
    if runs("process") {
        let n = env_usize("LIMITS_BENCH_PROCS", 3000);
        let configs = [CONFIGS[0], CONFIGS[1]];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        let mut shares: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for round in 0..rounds {
            for (i, (name, setup)) in configs.iter().enumerate() {
                let raw = support::raw_spawn(n, PROCESS_SLOTS)
                    .await
                    .expect("raw spawn");
                let raw_rate = n as f64 / raw.as_secs_f64();
                let url = fresh_db(&server.admin_url, "pgtaskd_bench_limits", false).await;
                let rate = node_drain(&url, setup, n, Work::Process).await;
                let share = 100.0 * rate / raw_rate;
                eprintln!(
                    "bench: round {round}: processes, {name}: {rate:.0} tasks/s, raw spawn {raw_rate:.0}/s ({share:.0} %)"
                );
                rates[i].push(rate);
                shares[i].push(share);
            }
        }
        let names: Vec<&str> = configs.iter().map(|c| c.0).collect();
        let part = format!("embedded node, {n} /bin/true tasks, {PROCESS_SLOTS} slots");
        report(&part, &names, &rates);
        for (name, s) in names.iter().zip(&shares) {
            println!(
                "{part}, {name:<34} median {:>5.1} % of the raw spawn rate next to it (rounds {:?})",
                median(s),
                s.iter().map(|s| s.round()).collect::<Vec<_>>()
            );
        }
    }
}
