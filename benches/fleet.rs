//! Fleet bench: 1, 4, 16, 32 … real nodes on one database with the same total process slots, one
//! table row per fleet size:
//! - claim throughput: `FLEET_TASKS` no-op `/bin/true` tasks queued at once, tasks/s by the
//!   database clock (first `created` to last `finished`);
//! - dispatch latency p50/p99: commit of one INSERT → `date` running in the task (one at a time);
//! - coordinator round: mean wall time of `long_task.coordinate` on the coordinator's node (its
//!   `pgtaskd_coordinator_round_seconds` histogram, every round of the phase) and the rounds run;
//! - poll: server time of one read of every node's liveness lock in `pg_locks` (the query the
//!   coordinator sends every `coordinator_interval` for the nodes beyond `watch_sessions`);
//! - idle transactions/s of the whole fleet (`pg_stat_database.xact_commit`, 10 s, nothing queued);
//! - SIGKILL failover p50/p99: a follower running one long task is killed, time until that task
//!   runs again on another node (database polled every 5 ms); `FLEET_KILLS` trials, victims
//!   taken in turn from the polled and the watched nodes (when there are both), each split into watched (the coordinator had a watcher session on it) and
//!   polled (its liveness lock read from `pg_locks` every `coordinator_interval`);
//! - sessions: per node (min–max over the followers) and on the coordinator's node, and in
//!   total, from `pg_stat_activity` by `application_name` (`pgtaskd w<id> …`), after the
//!   throughput run (pools warm).
//!
//! Prints the table; asserts nothing about timings. Build it, then run the binary:
//!
//!   cargo build --release --bench fleet && target/release/deps/fleet-<hash>
//!   cargo build --bench fleet && target/debug/deps/fleet-<hash>     (debug)
//!   FLEET_NODES=1,4,16,32 FLEET_SLOTS=32 FLEET_TASKS=2000 FLEET_KILLS=20 FLEET_WATCH_SESSIONS=8
//!
//! Uses `DATABASE_URL` as an admin URL when set (max_connections must cover the fleet: about
//! 12 sessions per node), else a cluster under the target directory (max_connections 500).

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::node_metrics::{self, free_port};
use support::{connect, env_usize, fresh_db, BenchServer};
use tokio_postgres::Client;
use uuid::Uuid;

/// How long any step of the bench may take before it is reported as not happening.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

struct Fleet {
    url: String,
    db: String,
    client: Client,
    slots_per_node: usize,
    nodes: Vec<Node>,
}

struct Node {
    worker: i64,
    port: u16,
    child: Option<Child>,
}

impl Fleet {
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtaskd"));
        cmd.args(["node", "--database-url", &self.url])
            .args(["--worker-id", &node.worker.to_string()])
            .args(["--max-tasks", &self.slots_per_node.to_string()])
            .args(["--http", &format!("127.0.0.1:{}", node.port)])
            .args(["--kill-grace", "200ms"])
            .env(
                "RUST_LOG",
                std::env::var("FLEET_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null());
        if let Ok(k) = std::env::var("FLEET_WATCH_SESSIONS") {
            cmd.args(["--watch-sessions", &k]);
        }
        if let Ok(t) = std::env::var("FLEET_HEARTBEAT_TIMEOUT") {
            cmd.args(["--heartbeat-timeout", &t]);
        }
        node.child = Some(cmd.spawn().expect("start a node"));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    async fn wait(&self, what: &str, mut cond: impl AsyncFnMut(&Client) -> bool) -> Duration {
        support::wait_until(what, WAIT_LIMIT, async || cond(&self.client).await).await
    }

    async fn count(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        self.client
            .query_one(sql, params)
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    }

    async fn wait_all_ready(&self) {
        let n = self.nodes.len() as i64;
        self.wait("nodes ready", async |c| {
            c.query_one(
                "SELECT count(*) FROM long_task.worker
                  WHERE active AND heartbeat_at > now() - interval '3 seconds'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == n)
            .unwrap_or(false)
        })
        .await;
        self.wait("a coordinator", async |c| {
            c.query_one(
                "SELECT count(*) FROM long_task.coordinator c
                   JOIN long_task.worker w ON w.id = c.worker_id AND w.active
                  WHERE c.group_id = 0",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
        })
        .await;
    }

    async fn coordinator(&self) -> i64 {
        self.client
            .query_one(
                "SELECT worker_id FROM long_task.coordinator WHERE group_id = 0",
                &[],
            )
            .await
            .expect("the coordinator")
            .get(0)
    }

    /// Sessions of this database by the worker id in their name (`pgtaskd w<id> …`).
    async fn sessions(&self) -> (BTreeMap<i64, i64>, Vec<String>) {
        let rows = self
            .client
            .query(
                "SELECT application_name FROM pg_stat_activity
                  WHERE datname = $1 AND application_name LIKE 'pgtaskd w%'",
                &[&self.db],
            )
            .await
            .expect("pg_stat_activity");
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut per = BTreeMap::new();
        for name in &names {
            let id = name
                .strip_prefix("pgtaskd w")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|id| id.parse::<i64>().ok());
            if let Some(id) = id {
                *per.entry(id).or_insert(0) += 1;
            }
        }
        (per, names)
    }

    /// (sum, count) of the coordinator's round histogram, from its `/metrics`.
    async fn rounds(&self, worker: i64) -> (f64, f64) {
        let port = self
            .nodes
            .iter()
            .find(|n| n.worker == worker)
            .map(|n| n.port)
            .expect("the coordinator's node");
        node_metrics::scrape(port)
            .await
            .histogram("pgtaskd_coordinator_round_seconds{group=\"0\"}")
    }

    /// Tasks/s of `n` `/bin/true` tasks queued at once (database clock).
    async fn throughput(&self, n: i64) -> f64 {
        let before: i64 = self
            .count("SELECT coalesce(max(id), 0) FROM long_task.task", &[])
            .await;
        self.client
            .execute(
                "INSERT INTO long_task.task (group_id, state_id, command)
                 SELECT 0, 'AW', '{/bin/true}' FROM generate_series(1, $1::bigint)",
                &[&n],
            )
            .await
            .expect("queue the throughput tasks");
        self.wait("the throughput tasks", async |c| {
            c.query_one(
                "SELECT count(*) FROM long_task.task WHERE id > $1 AND state_id LIKE 'A%'",
                &[&before],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
        })
        .await;
        let row = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE state_id = 'CS'),
                        extract(epoch FROM max(finished) - min(created))::float8
                   FROM long_task.task WHERE id > $1",
                &[&before],
            )
            .await
            .expect("the throughput result");
        let ok: i64 = row.get(0);
        assert_eq!(ok, n, "every throughput task ends CS");
        n as f64 / row.get::<_, f64>(1)
    }

    /// Commit of an INSERT → `date` running in the task, in ms; `samples` one after another.
    async fn latency(&self, samples: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples + 3 {
            let id: i64 = self
                .client
                .query_one(
                    "INSERT INTO long_task.task (group_id, state_id, command)
                     VALUES (0, 'AW', '{date,+%s.%N}') RETURNING id",
                    &[],
                )
                .await
                .expect("queue a latency task")
                .get(0);
            let committed = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            let mut ran = None;
            self.wait("a latency task", async |c| {
                match c
                    .query_one(
                        "SELECT state_id::text, stdout_tail FROM long_task.task WHERE id = $1",
                        &[&id],
                    )
                    .await
                {
                    Ok(r) if r.get::<_, String>(0) == "CS" => {
                        ran = r
                            .get::<_, Option<String>>(1)
                            .and_then(|s| s.trim().parse::<f64>().ok());
                        true
                    }
                    _ => false,
                }
            })
            .await;
            if i >= 3 {
                out.push((ran.expect("date's output") - committed) * 1e3);
            }
        }
        out
    }

    /// Gives worker `victim` one long task (every other node may take nothing meanwhile) and
    /// returns it with its run and the worker that claimed it: a node that had not yet heard
    /// of its limit of 0 may take it first, and then that node is the victim (never the
    /// coordinator: then it is tried again).
    async fn load(&self, victim: i64, coordinator: i64) -> (i64, Uuid, i64) {
        loop {
            support::reset_and_drain(&self.client, WAIT_LIMIT).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.client
                .execute(
                    "UPDATE long_task.worker SET max_task_count = 1 WHERE id = $1",
                    &[&victim],
                )
                .await
                .expect("limit");
            let id: i64 = self
                .client
                .query_one(
                    "INSERT INTO long_task.task (group_id, state_id, command)
                     VALUES (0, 'AW', '{sleep,1000}') RETURNING id",
                    &[],
                )
                .await
                .expect("queue")
                .get(0);
            let mut claimed = None;
            self.wait("a claim", async |c| {
                match c
                    .query_one(
                        "SELECT run_id, worker_id FROM long_task.task
                          WHERE id = $1 AND state_id = 'AE'",
                        &[&id],
                    )
                    .await
                {
                    Ok(r) => {
                        claimed = r.get::<_, Option<Uuid>>(0).zip(r.get::<_, Option<i64>>(1));
                        claimed.is_some()
                    }
                    Err(_) => false,
                }
            })
            .await;
            let slots = self.slots_per_node as i32;
            self.client
                .execute("UPDATE long_task.worker SET max_task_count = $1", &[&slots])
                .await
                .expect("limit");
            if let Some((run, worker)) = claimed {
                if worker != coordinator {
                    return (id, run, worker);
                }
            }
        }
    }

    /// Server time of one poll of every node's liveness lock (the coordinator's query for the
    /// nodes beyond `watch_sessions`), in ms: 500 in one `DO` block.
    async fn poll_cost(&self) -> f64 {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.worker.to_string()).collect();
        let sql = format!(
            "DO $$ BEGIN FOR i IN 1..500 LOOP PERFORM count(*)
               FROM long_task.advisory_holders(long_task.ns_node()) h
              WHERE h.key = ANY('{{{}}}'::bigint[]); END LOOP; END $$",
            ids.join(",")
        );
        let t = Instant::now();
        self.client
            .batch_execute(&sql)
            .await
            .expect("the poll loop");
        t.elapsed().as_secs_f64() * 1e3 / 500.0
    }

    /// Transactions committed per second in the database over `secs` seconds.
    async fn idle_xacts(&self, secs: u64) -> f64 {
        let q = "SELECT xact_commit FROM pg_stat_database WHERE datname = $1";
        // Backends report their counts at most every second, idle ones after up to 10 s: let
        // what the runs before committed reach the statistics first.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let _ = self
            .client
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await;
        let a: i64 = self
            .client
            .query_one(q, &[&self.db])
            .await
            .expect("stats")
            .get(0);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let _ = self
            .client
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await;
        let b: i64 = self
            .client
            .query_one(q, &[&self.db])
            .await
            .expect("stats")
            .get(0);
        // the bench's own two reads and two clears
        (b - a - 2).max(0) as f64 / secs as f64
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

async fn measure(server: &BenchServer, n: usize, slots: usize, tasks: i64, kills: usize) -> String {
    let db = format!("fleet_{n}");
    let url = fresh_db(&server.admin_url, &db, false).await;
    let client = connect(&url).await;
    let slots_per_node = (slots / n).max(1);
    let mut fleet = Fleet {
        url,
        db,
        client,
        slots_per_node,
        nodes: (0..n)
            .map(|i| Node {
                worker: i as i64 + 1,
                port: free_port(),
                child: None,
            })
            .collect(),
    };
    for i in 0..n {
        fleet.spawn(i);
    }
    fleet.wait_all_ready().await;
    let coordinator = fleet.coordinator().await;
    let (sum0, count0) = fleet.rounds(coordinator).await;

    let tput = fleet.throughput(tasks).await;
    let mut lat = fleet.latency(30).await;
    let (per, _) = fleet.sessions().await;
    let followers: Vec<i64> = per
        .iter()
        .filter(|(w, _)| **w != coordinator)
        .map(|(_, c)| *c)
        .collect();
    let total: i64 = per.values().sum();
    let on_coordinator = per.get(&coordinator).copied().unwrap_or(0);
    let idle = fleet.idle_xacts(10).await;
    let poll_ms = fleet.poll_cost().await;

    let (mut watched, mut polled) = (Vec::new(), Vec::new());
    let victims: Vec<usize> = (0..n)
        .filter(|&i| fleet.nodes[i].worker != coordinator)
        .collect();
    for trial in 0..if victims.is_empty() { 0 } else { kills } {
        // Watched and polled victims in turn (when the fleet has both), each class in turn.
        let (_, names) = fleet.sessions().await;
        let prefix = format!("pgtaskd w{coordinator} watch w");
        let watched_now: Vec<i64> = names
            .iter()
            .filter_map(|a| a.strip_prefix(&prefix))
            .filter_map(|w| w.parse().ok())
            .collect();
        let class: Vec<usize> = victims
            .iter()
            .copied()
            .filter(|&i| watched_now.contains(&fleet.nodes[i].worker) == (trial % 2 == 1))
            .collect();
        let pick = if class.is_empty() { &victims } else { &class };
        let i = pick[(trial / 2) % pick.len()];
        let (task, run, victim) = fleet.load(fleet.nodes[i].worker, coordinator).await;
        let i = fleet
            .nodes
            .iter()
            .position(|n| n.worker == victim)
            .expect("the victim's node");
        let (_, names) = fleet.sessions().await;
        let has_watcher = names
            .iter()
            .any(|a| *a == format!("pgtaskd w{coordinator} watch w{victim}"));
        let t0 = Instant::now();
        fleet.kill(i);
        fleet
            .wait("the victim's task running again", async |c| {
                c.query_one(
                    "SELECT count(*) FROM long_task.task
                      WHERE id = $1 AND state_id = 'AE' AND worker_id <> $2 AND run_id <> $3",
                    &[&task, &victim, &run],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
            })
            .await;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if has_watcher {
            watched.push(ms);
        } else {
            polled.push(ms);
        }
        fleet.spawn(i);
        fleet.wait_all_ready().await;
    }
    let (sum1, count1) = fleet.rounds(coordinator).await;
    let rounds = count1 - count0;
    let round = if rounds > 0.0 {
        format!("{:.2} ({rounds:.0})", (sum1 - sum0) / rounds * 1e3)
    } else {
        "- (0)".to_owned()
    };
    let _ = fleet
        .client
        .batch_execute("UPDATE long_task.task SET state_id = 'AC' WHERE state_id LIKE 'A%'")
        .await;
    for i in 0..n {
        fleet.kill(i);
    }
    let mut all: Vec<f64> = watched.iter().chain(&polled).copied().collect();
    let fo = |v: &mut Vec<f64>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}/{:.0} (n={})", pct(v, 0.5), pct(v, 0.99), v.len())
        }
    };
    format!(
        "| {n} | {} | {tput:.0} | {:.1} / {:.1} | {round} | {poll_ms:.3} | {idle:.1} | {} | {} | {} | {} | {on_coordinator} | {total} |",
        slots_per_node * n,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        fo(&mut all),
        fo(&mut watched),
        fo(&mut polled),
        match (followers.iter().min(), followers.iter().max()) {
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "-".to_owned(),
        },
    )
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("FLEET_NODES")
        .unwrap_or_else(|_| "1,4,16,32".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("FLEET_NODES: numbers, comma-separated")
        })
        .collect();
    let slots = env_usize("FLEET_SLOTS", 32);
    let tasks = env_usize("FLEET_TASKS", 2000) as i64;
    let kills = env_usize("FLEET_KILLS", 20);
    let server = BenchServer::start();
    println!(
        "fleet bench: {slots} slots in all, {tasks} /bin/true tasks, 30 latency samples, {kills} SIGKILL trials per size, watch_sessions {}",
        std::env::var("FLEET_WATCH_SESSIONS").unwrap_or_else(|_| "default (8)".into())
    );
    println!("| nodes | slots | claims/s | latency p50 / p99 ms | round ms (rounds) | poll ms | idle xact/s | SIGKILL → re-run p50/p99 ms | watched | polled | sessions per follower | on coordinator's node | total |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        println!("{}", measure(&server, n, slots, tasks, kills).await);
    }
}
