//! The harness's hands: the node processes it owns (start, kill, stop/continue, restart), their
//! partition proxies (`proxy.rs`: one per node, a port per server; the `partition` fault), the
//! task feeder, and the fault injector. Every signal goes to a pid this harness spawned.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio_postgres::Client;

use super::postgres::Postgres;

/// Each node's `--max-tasks`.
pub const NODE_MAX_TASKS: usize = 4;
use super::proxy::Proxy;

/// How many faults of each kind were injected.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub kill_node: u32,
    pub kill_coordinator: u32,
    pub stop_node: u32,
    pub terminate_backends: u32,
    pub pg_restart: u32,
    pub pg_failover: u32,
    pub cancel: u32,
    pub partition: u32,
    pub node_restart: u32,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.kill_node
            + self.kill_coordinator
            + self.stop_node
            + self.terminate_backends
            + self.pg_restart
            + self.pg_failover
            + self.cancel
            + self.partition
    }

    pub fn summary(&self) -> String {
        format!(
            "total={} kill_node={} kill_coordinator={} sigstop={} terminate_backend={} pg_restart={} pg_failover={} cancel={} partition={} node_restarts={}",
            self.total(),
            self.kill_node,
            self.kill_coordinator,
            self.stop_node,
            self.terminate_backends,
            self.pg_restart,
            self.pg_failover,
            self.cancel,
            self.partition,
            self.node_restart
        )
    }
}

struct Node {
    worker_id: i64,
    child: Option<Child>,
    /// SIGSTOPped until then.
    stopped_until: Option<Instant>,
    /// Killed; restart at this time.
    restart_at: Option<Instant>,
    /// Its proxy to PostgreSQL, a port per server (none with `--no-partition`).
    proxy: Option<Proxy>,
    /// Partitioned (its proxy blackholed) until then.
    partitioned_until: Option<Instant>,
}

/// The node processes of the run.
pub struct Nodes {
    exe: PathBuf,
    url: String,
    dir: PathBuf,
    heartbeat_timeout: Duration,
    nodes: Vec<Node>,
}

impl Nodes {
    pub fn new(
        exe: &Path,
        url: &str,
        dir: &Path,
        n: usize,
        heartbeat_timeout: Duration,
        partitions: bool,
    ) -> anyhow::Result<Nodes> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut nodes = Vec::with_capacity(n);
        for worker_id in 1..=n as i64 {
            let proxy = if partitions {
                Some(Proxy::for_url(url).context("starting a partition proxy")?)
            } else {
                None
            };
            nodes.push(Node {
                worker_id,
                child: None,
                stopped_until: None,
                restart_at: None,
                proxy,
                partitioned_until: None,
            });
        }
        Ok(Nodes {
            exe: exe.to_owned(),
            url: url.to_owned(),
            dir: dir.to_owned(),
            heartbeat_timeout,
            nodes,
        })
    }

    /// Whether the nodes talk through proxies that can be cut.
    pub fn can_partition(&self) -> bool {
        self.nodes.iter().all(|n| n.proxy.is_some())
    }

    fn spawn(&self, worker_id: i64) -> anyhow::Result<Child> {
        let url = match self
            .nodes
            .iter()
            .find(|n| n.worker_id == worker_id)
            .and_then(|n| n.proxy.as_ref())
        {
            Some(proxy) => proxy.url(&self.url),
            None => self.url.clone(),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("node-{worker_id}.log")))?;
        let interval = (self.heartbeat_timeout / 5).max(Duration::from_millis(100));
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--database-url")
            .arg(&url)
            .arg("--worker-id")
            .arg(worker_id.to_string())
            .arg("--max-tasks")
            .arg(NODE_MAX_TASKS.to_string())
            .arg("--heartbeat-interval")
            .arg(humantime::format_duration(interval).to_string())
            .arg("--heartbeat-timeout")
            .arg(humantime::format_duration(self.heartbeat_timeout).to_string())
            .arg("--kill-grace")
            .arg("500ms")
            .arg("--shutdown-grace")
            .arg("10s")
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(child)
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let child = self.spawn(self.nodes[i].worker_id)?;
            self.nodes[i].child = Some(child);
        }
        Ok(())
    }

    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let client = connect(&self.url).await?;
        let deadline = Instant::now() + limit;
        loop {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM long_task.worker WHERE active AND heartbeat_at > now() - interval '2 seconds'",
                    &[],
                )
                .await?
                .get(0);
            if n as usize == self.nodes.len() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "nodes did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Continues stopped nodes and restarts killed ones when their time comes.
    pub fn maintain(&mut self, counts: &mut Counts) -> anyhow::Result<()> {
        let now = Instant::now();
        for i in 0..self.nodes.len() {
            if self.nodes[i].stopped_until.is_some_and(|t| t <= now) {
                self.nodes[i].stopped_until = None;
                self.signal(i, Signal::SIGCONT);
            }
            if self.nodes[i].partitioned_until.is_some_and(|t| t <= now) {
                self.nodes[i].partitioned_until = None;
                if let Some(proxy) = &self.nodes[i].proxy {
                    proxy.heal();
                }
            }
            let exited = match self.nodes[i].child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
                None => true,
            };
            if exited && self.nodes[i].restart_at.is_none() {
                // died by itself (or was killed): bring it back soon
                self.nodes[i].restart_at = Some(now + Duration::from_millis(500));
            }
            if exited && self.nodes[i].restart_at.is_some_and(|t| t <= now) {
                self.nodes[i].restart_at = None;
                let child = self.spawn(self.nodes[i].worker_id)?;
                self.nodes[i].child = Some(child);
                counts.node_restart += 1;
            }
        }
        Ok(())
    }

    fn signal(&self, i: usize, sig: Signal) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
        }
    }

    /// Indices of nodes that are running and not stopped.
    fn healthy(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let running = node
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if running
                && node.stopped_until.is_none()
                && node.restart_at.is_none()
                && node.partitioned_until.is_none()
            {
                out.push(i);
            }
        }
        out
    }

    fn kill_index(&mut self, i: usize, restart_after: Duration) {
        self.signal(i, Signal::SIGKILL);
        if let Some(child) = self.nodes[i].child.as_mut() {
            let _ = child.wait();
        }
        self.nodes[i].restart_at = Some(Instant::now() + restart_after);
    }

    /// Ends every fault: continue stopped nodes, start killed ones, heal partitions.
    pub fn heal(&mut self, counts: &mut Counts) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if node.stopped_until.is_some() {
                node.stopped_until = Some(Instant::now());
            }
            if node.partitioned_until.is_some() {
                node.partitioned_until = Some(Instant::now());
            }
            if node.restart_at.is_some() {
                node.restart_at = Some(Instant::now());
            }
        }
        self.maintain(counts)
    }

    /// SIGTERM every node, SIGKILL what is left after `limit`.
    pub async fn stop_all(&mut self, limit: Duration) {
        for i in 0..self.nodes.len() {
            self.signal(i, Signal::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        for i in 0..self.nodes.len() {
            if let Some(child) = self.nodes[i].child.as_mut() {
                loop {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    if Instant::now() >= deadline {
                        eprintln!("chaos: node {} did not stop; killing it", i + 1);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Nodes {
    /// An interrupted run leaves no node behind (their guardians take the task processes).
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(pgtaskd::db::connect_dedicated(url, "chaos harness").await?)
}

/// Injects one fault chosen at random.
pub async fn inject(
    rng: &mut impl Rng,
    nodes: &mut Nodes,
    pg: &Postgres,
    url: &str,
    pg_restart: bool,
    counts: &mut Counts,
) {
    let healthy = nodes.healthy();
    let roll = rng.gen_range(0..100);
    // Keep at least one node able to work, or faults on nodes would stall the whole run.
    let node_fault_ok = healthy.len() >= 2;
    match roll {
        0..=19 if node_fault_ok => {
            let i = healthy[rng.gen_range(0..healthy.len())];
            let restart = Duration::from_millis(rng.gen_range(300..3000));
            println!("fault: SIGKILL node {} (restart in {restart:?})", i + 1);
            nodes.kill_index(i, restart);
            counts.kill_node += 1;
        }
        20..=34 if node_fault_ok => {
            let coordinator = match connect(url).await {
                Ok(c) => c
                    .query_opt(
                        "SELECT worker_id FROM long_task.coordinator WHERE group_id = 0",
                        &[],
                    )
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.get::<_, Option<i64>>(0)),
                Err(_) => None,
            };
            if let Some(i) = coordinator
                .map(|w| (w - 1) as usize)
                .filter(|i| healthy.contains(i))
            {
                let restart = Duration::from_millis(rng.gen_range(300..3000));
                println!(
                    "fault: SIGKILL coordinator node {} (restart in {restart:?})",
                    i + 1
                );
                nodes.kill_index(i, restart);
                counts.kill_coordinator += 1;
            }
        }
        35..=49 if node_fault_ok => {
            let i = healthy[rng.gen_range(0..healthy.len())];
            let extra = Duration::from_millis(rng.gen_range(200..2000));
            let length = nodes.heartbeat_timeout + extra;
            println!("fault: SIGSTOP node {} for {length:?}", i + 1);
            nodes.signal(i, Signal::SIGSTOP);
            nodes.nodes[i].stopped_until = Some(Instant::now() + length);
            counts.stop_node += 1;
        }
        // half-open partition: the node's proxy blackholes its traffic (sockets stay open), most
        // often past heartbeat_timeout (the node must fence itself), sometimes not
        58..=64 if node_fault_ok && nodes.can_partition() => {
            let i = healthy[rng.gen_range(0..healthy.len())];
            let longest = nodes.heartbeat_timeout + Duration::from_secs(3);
            let length = Duration::from_millis(rng.gen_range(300..longest.as_millis() as u64));
            println!("fault: partition node {} for {length:?}", i + 1);
            if let Some(proxy) = &nodes.nodes[i].proxy {
                proxy.blackhole();
            }
            nodes.nodes[i].partitioned_until = Some(Instant::now() + length);
            counts.partition += 1;
        }
        50..=64 if !healthy.is_empty() => {
            let i = healthy[rng.gen_range(0..healthy.len())];
            let worker = nodes.nodes[i].worker_id;
            if let Ok(c) = connect(url).await {
                let ended = c
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                           FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name LIKE $1",
                        &[&format!("pgtaskd w{worker} %")],
                    )
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0);
                println!(
                    "fault: pg_terminate_backend of node {} ({ended} sessions)",
                    i + 1
                );
                counts.terminate_backends += 1;
            }
        }
        65..=69 if pg_restart => {
            println!("fault: PostgreSQL restart");
            let primary = pg.primary().clone();
            match tokio::task::spawn_blocking(move || primary.restart()).await {
                Ok(Ok(())) => counts.pg_restart += 1,
                other => eprintln!("chaos: PostgreSQL restart failed: {other:?}"),
            }
        }
        _ => {
            if let Ok(c) = connect(url).await {
                let row = c
                    .query_opt(
                        "UPDATE long_task.task SET state_id = 'AC'
                          WHERE id = (SELECT id FROM long_task.task WHERE state_id = 'AE'
                                       ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
                            AND state_id = 'AE'
                         RETURNING id",
                        &[],
                    )
                    .await
                    .ok()
                    .flatten();
                if let Some(row) = row {
                    let id: i64 = row.get(0);
                    println!("fault: cancel running task {id}");
                    let _ = c
                        .execute("INSERT INTO chaos_cancel (task_id) VALUES ($1)", &[&id])
                        .await;
                    counts.cancel += 1;
                }
            }
        }
    }
}

/// The `pg_failover` fault: the primary dies (`-m immediate`), the standby is promoted, the old
/// primary comes back as the new one's standby. A failure here is a harness error (the servers
/// are the harness's, not the system under test).
pub async fn pg_failover(pg: &mut Postgres, counts: &mut Counts) -> anyhow::Result<()> {
    let down = pg.fail_over().await?;
    println!(
        "fault: pg_failover (primary killed, standby promoted in {down:?}; now primary on port {})",
        pg.primary().port()
    );
    counts.pg_failover += 1;
    Ok(())
}

/// The task feeder: queues `rate` tasks per second until stopped; returns how many it knows
/// were committed.
pub struct Feeder {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Feeder {
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or(0)
    }
}

pub fn spawn_feeder(url: String, exec_log: PathBuf, rate: u32, max_secs: f64) -> Feeder {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    // $0 of the script is the sleep time; the line is appended before the task's "work".
    let script = format!(
        "echo \"$PGTASKD_TASK_ID $PGTASKD_RUN_ID\" >> {}; sleep \"$0\"",
        exec_log.display()
    );
    let handle = tokio::spawn(async move {
        let mut fed = 0u64;
        let mut client: Option<Client> = None;
        let per_tick = (rate / 10).max(1) as i32;
        let mut reported = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return fed,
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = connect(&url).await.ok();
            }
            let Some(c) = &client else { continue };
            let result = c
                .execute(
                    "INSERT INTO long_task.task (group_id, state_id, command, concurrency_key)
                     SELECT 0, 'AW', ARRAY['sh', '-c', $1,
                                           round((random() * $3)::numeric, 2)::text]::varchar[],
                            'k' || floor(random() * 3)
                       FROM generate_series(1, $2::int)",
                    &[&script, &per_tick, &max_secs],
                )
                .await;
            match result {
                Ok(n) => fed += n,
                Err(e) => {
                    if !reported {
                        eprintln!("chaos: feeder: {e} (reconnecting)");
                        reported = true;
                    }
                    client = None;
                }
            }
        }
    });
    Feeder { stop, handle }
}
