//! Failover drill: a private PostgreSQL and three real nodes, each behind its own partition proxy
//! (`chaos-tests/proxy.rs`); each repeat SIGKILLs the coordinator, SIGKILLs a node running tasks,
//! SIGSTOPs a node running tasks, cuts a node running tasks off (a half-open partition: sockets
//! open, nothing forwarded) and cuts the coordinator off, and measures (database polled every
//! 5 ms, from the fault):
//! - time to a new coordinator (a higher term held by another node),
//! - time until every orphaned task runs again on a survivor (new run_id, another worker),
//! - after a partition's heal, time until the node beats again.
//!
//! Prints p50/p99/max per fault; asserts nothing about timings.
//!
//!   CARGO_TARGET_DIR=... cargo bench --bench failover
//!   FAILOVER_REPEATS=20 FAILOVER_HEARTBEAT_TIMEOUT=5s cargo bench --bench failover

#[path = "../chaos-tests/proxy.rs"]
mod proxy;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgtaskd::pgcluster::{create_database, PgCluster};
use proxy::Proxy;
use support::summary;
use tokio_postgres::Client;
use uuid::Uuid;

const NODES: i64 = 3;
const TASKS_PER_NODE: i64 = 3;
/// How long any step of the drill may take before it is reported as not happening.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

struct Drill {
    url: String,
    client: Client,
    heartbeat_timeout: Duration,
    children: Vec<Option<Child>>,
    /// Node `w`'s proxy is `proxies[w - 1]`.
    proxies: Vec<Proxy>,
}

impl Drill {
    fn spawn(&mut self, worker: i64) {
        let interval = (self.heartbeat_timeout / 5).max(Duration::from_millis(100));
        let url = self.proxies[(worker - 1) as usize].url(&self.url);
        let child = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
            .args(["node", "--database-url", &url])
            .args(["--worker-id", &worker.to_string(), "--max-tasks", "0"])
            .args([
                "--heartbeat-interval",
                &humantime::format_duration(interval).to_string(),
            ])
            .args([
                "--heartbeat-timeout",
                &humantime::format_duration(self.heartbeat_timeout).to_string(),
            ])
            .args(["--kill-grace", "200ms"])
            .env(
                "RUST_LOG",
                std::env::var("FAILOVER_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("start node");
        self.children[(worker - 1) as usize] = Some(child);
    }

    fn signal(&self, worker: i64, sig: Signal) {
        if let Some(c) = &self.children[(worker - 1) as usize] {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    fn reap(&mut self, worker: i64) {
        if let Some(mut c) = self.children[(worker - 1) as usize].take() {
            let _ = c.wait();
        }
    }

    async fn wait(&self, what: &str, mut cond: impl AsyncFnMut(&Client) -> bool) -> Duration {
        support::wait_until(what, WAIT_LIMIT, async || cond(&self.client).await).await
    }

    /// Time until `sql` (a count) returns `want`.
    async fn wait_count(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        want: i64,
    ) -> Duration {
        self.wait(what, async |c| {
            c.query_one(sql, params)
                .await
                .map(|r| r.get::<_, i64>(0) == want)
                .unwrap_or(false)
        })
        .await
    }

    /// The database's clock now.
    async fn db_now(&self) -> SystemTime {
        self.client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .expect("clock")
            .get(0)
    }

    async fn coordinator(&self) -> (i64, i64) {
        let row = self
            .client
            .query_one(
                "SELECT worker_id, term FROM long_task.coordinator WHERE group_id = 0",
                &[],
            )
            .await
            .expect("coordinator");
        (row.get(0), row.get(1))
    }

    /// Cancels everything, then gives each node TASKS_PER_NODE long tasks (pinned by limits).
    async fn fill(&self) {
        support::reset_and_drain(&self.client, WAIT_LIMIT).await;
        // Every node must know its limit is 0 before the tasks below are queued, or one that
        // missed the notification (a healed partition's listener still reconnecting) claims
        // another node's share: a heartbeat begun after the update reads the new limit back.
        let since = self.db_now().await;
        self.wait_count(
            "every node saw its limit",
            "SELECT count(*) FROM long_task.worker WHERE active AND heartbeat_at > $1",
            &[&since],
            NODES,
        )
        .await;
        for w in 1..=NODES {
            self.client
                .execute(
                    "UPDATE long_task.worker SET max_task_count = $2 WHERE id = $1",
                    &[&w, &(TASKS_PER_NODE as i32)],
                )
                .await
                .expect("limit");
            self.client
                .execute(
                    "INSERT INTO long_task.task (group_id, state_id, command)
                     SELECT 0, 'AW', '{sleep,1000}' FROM generate_series(1, $1::int)",
                    &[&(TASKS_PER_NODE as i32)],
                )
                .await
                .expect("queue");
            self.wait_count(
                "tasks claimed",
                "SELECT count(*) FROM long_task.task WHERE state_id = 'AE' AND worker_id = $1",
                &[&w],
                TASKS_PER_NODE,
            )
            .await;
        }
        // Room for the orphans on the survivors.
        self.client
            .execute("UPDATE long_task.worker SET max_task_count = 16", &[])
            .await
            .expect("limit");
    }

    /// Time until another node than `victim` holds a higher term than `term`.
    async fn new_coordinator(&self, victim: i64, term: i64) -> Duration {
        self.wait("new coordinator", async |c| {
            c.query_one(
                "SELECT worker_id, term FROM long_task.coordinator WHERE group_id = 0",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) != victim && r.get::<_, i64>(1) > term)
            .unwrap_or(false)
        })
        .await
    }

    /// Time until `worker` writes a heartbeat newer than now.
    async fn beating_again(&self, worker: i64) -> Duration {
        let since = self.db_now().await;
        self.wait("heartbeat after the heal", async |c| {
            c.query_one(
                "SELECT heartbeat_at > $2 AND active FROM long_task.worker WHERE id = $1",
                &[&worker, &since],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
        })
        .await
    }

    async fn runs_of(&self, worker: i64) -> Vec<(i64, Uuid)> {
        self.client
            .query(
                "SELECT id, run_id FROM long_task.task WHERE state_id = 'AE' AND worker_id = $1",
                &[&worker],
            )
            .await
            .expect("runs")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Time until every one of `runs` is executing again under a new run on another worker.
    async fn rerun_time(&self, victim: i64, runs: &[(i64, Uuid)]) -> Duration {
        let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
        let old: Vec<Uuid> = runs.iter().map(|r| r.1).collect();
        self.wait_count(
            "orphans running again",
            "SELECT count(*) FROM long_task.task
              WHERE id = ANY($1) AND state_id = 'AE' AND worker_id <> $2 AND run_id <> ALL($3)",
            &[&ids, &victim, &old],
            ids.len() as i64,
        )
        .await
    }

    async fn wait_all_ready(&self) {
        self.wait_count(
            "nodes ready",
            "SELECT count(*) FROM long_task.worker WHERE active AND heartbeat_at > now() - interval '1 second'",
            &[],
            NODES,
        )
        .await;
    }
}

#[tokio::main]
async fn main() {
    let repeats: usize = std::env::var("FAILOVER_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let heartbeat_timeout = std::env::var("FAILOVER_HEARTBEAT_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(1));
    let dir = std::env::temp_dir().join(format!("pgtaskd-failover-{}", std::process::id()));
    let cluster = PgCluster::open_or_init(&dir).expect("initdb");
    cluster.start().expect("start postgres");
    create_database(&cluster.url("postgres"), "drill")
        .await
        .expect("db");
    let url = cluster.url("drill");
    let mut admin = pgtaskd::db::connect_dedicated(&url, "drill")
        .await
        .expect("connect");
    pgtaskd::db::migrate::migrate(&mut admin)
        .await
        .expect("migrate");
    let proxies = (0..NODES)
        .map(|_| Proxy::for_url(&url).expect("partition proxy"))
        .collect();
    let mut drill = Drill {
        url,
        client: admin,
        heartbeat_timeout,
        children: (0..NODES).map(|_| None).collect(),
        proxies,
    };
    for w in 1..=NODES {
        drill.spawn(w);
    }
    drill.wait_all_ready().await;
    println!(
        "failover drill: {NODES} nodes, {TASKS_PER_NODE} tasks each, heartbeat_timeout {heartbeat_timeout:?}, {repeats} repeats"
    );

    let (mut coord_new, mut coord_tasks, mut kill_tasks, mut stop_tasks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cut_tasks, mut cut_heal, mut cut_coord_new, mut cut_coord_tasks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        // 1. SIGKILL the coordinator.
        drill.fill().await;
        let (victim, term) = drill.coordinator().await;
        let runs = drill.runs_of(victim).await;
        let t0 = Instant::now();
        drill.signal(victim, Signal::SIGKILL);
        coord_new.push(drill.new_coordinator(victim, term).await);
        drill.rerun_time(victim, &runs).await;
        coord_tasks.push(t0.elapsed());
        drill.reap(victim);
        drill.spawn(victim);
        drill.wait_all_ready().await;

        // 2. SIGKILL a node (not the coordinator) running tasks.
        drill.fill().await;
        let (coordinator, _) = drill.coordinator().await;
        let victim = (1..=NODES).find(|w| *w != coordinator).expect("a follower");
        let runs = drill.runs_of(victim).await;
        let t0 = Instant::now();
        drill.signal(victim, Signal::SIGKILL);
        drill.rerun_time(victim, &runs).await;
        kill_tasks.push(t0.elapsed());
        drill.reap(victim);
        drill.spawn(victim);
        drill.wait_all_ready().await;

        // 3. SIGSTOP a node running tasks (hung): its heartbeat goes stale.
        drill.fill().await;
        let (coordinator, _) = drill.coordinator().await;
        let victim = (1..=NODES)
            .rev()
            .find(|w| *w != coordinator)
            .expect("a follower");
        let runs = drill.runs_of(victim).await;
        let t0 = Instant::now();
        drill.signal(victim, Signal::SIGSTOP);
        drill.rerun_time(victim, &runs).await;
        stop_tasks.push(t0.elapsed());
        drill.signal(victim, Signal::SIGCONT);
        drill.wait_all_ready().await;

        // 4. Cut a node running tasks off (half-open: its sockets stay open, nothing passes).
        drill.fill().await;
        let (coordinator, _) = drill.coordinator().await;
        let victim = (1..=NODES).find(|w| *w != coordinator).expect("a follower");
        let runs = drill.runs_of(victim).await;
        let t0 = Instant::now();
        drill.proxies[(victim - 1) as usize].blackhole();
        drill.rerun_time(victim, &runs).await;
        cut_tasks.push(t0.elapsed());
        drill.proxies[(victim - 1) as usize].heal();
        cut_heal.push(drill.beating_again(victim).await);
        drill.wait_all_ready().await;

        // 5. Cut the coordinator off.
        drill.fill().await;
        let (victim, term) = drill.coordinator().await;
        let runs = drill.runs_of(victim).await;
        let t0 = Instant::now();
        drill.proxies[(victim - 1) as usize].blackhole();
        cut_coord_new.push(drill.new_coordinator(victim, term).await);
        drill.rerun_time(victim, &runs).await;
        cut_coord_tasks.push(t0.elapsed());
        drill.proxies[(victim - 1) as usize].heal();
        drill.beating_again(victim).await;
        drill.wait_all_ready().await;
    }
    println!(
        "{}",
        summary("SIGKILL coordinator -> new coordinator", coord_new)
    );
    println!(
        "{}",
        summary(
            "SIGKILL coordinator -> its tasks running again",
            coord_tasks
        )
    );
    println!(
        "{}",
        summary("SIGKILL node -> its tasks running again", kill_tasks)
    );
    println!(
        "{}",
        summary("SIGSTOP node -> its tasks running again", stop_tasks)
    );
    println!(
        "{}",
        summary("partition node -> its tasks running again", cut_tasks)
    );
    println!(
        "{}",
        summary("partition healed -> node beating again", cut_heal)
    );
    println!(
        "{}",
        summary("partition coordinator -> new coordinator", cut_coord_new)
    );
    println!(
        "{}",
        summary(
            "partition coordinator -> its tasks running again",
            cut_coord_tasks
        )
    );

    let _ = drill
        .client
        .batch_execute("UPDATE long_task.task SET state_id = 'AC' WHERE state_id LIKE 'A%'")
        .await;
    for w in 1..=NODES {
        drill.signal(w, Signal::SIGKILL);
        drill.reap(w);
    }
    let _ = cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(cluster.socket_dir());
}
