//! Test support: run real `pgtaskd node` processes against a test database and watch task rows.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// A node process; killed (SIGKILL) on drop so a failing test leaves nothing behind.
pub struct NodeProcess {
    pub child: Child,
    pub worker_id: i64,
}

/// A node started from `cmd` with stdin closed and everything it writes to stdout and stderr
/// kept, for tests that search a node's whole output (a log that must never hold a secret).
/// Killed (SIGKILL) on drop like `NodeProcess`.
pub struct LoggedNode {
    child: Child,
    output: Vec<std::thread::JoinHandle<String>>,
}

impl LoggedNode {
    pub fn spawn(mut cmd: Command) -> LoggedNode {
        use std::io::Read;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgtaskd node");
        let drain = |mut from: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = from.read_to_string(&mut text);
                text
            })
        };
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        LoggedNode {
            child,
            output: vec![stderr, stdout],
        }
    }

    /// Stops the node (SIGTERM), waits for it, and returns everything it wrote.
    pub fn stop(mut self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("stop the node");
        let _ = self.child.wait();
        std::mem::take(&mut self.output)
            .into_iter()
            .map(|h| h.join().expect("output reader"))
            .collect()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fast settings for tests (seconds matter in a test suite).
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "1s",
    "--kill-grace",
    "500ms",
];

impl NodeProcess {
    /// Starts `pgtaskd node --database-url URL --worker-id ID EXTRA...` with fast timings.
    pub fn start(url: &str, worker_id: i64, extra: &[&str]) -> NodeProcess {
        let mut args: Vec<&str> = FAST.to_vec();
        args.extend_from_slice(extra);
        NodeProcess::start_with(url, worker_id, &args)
    }

    /// Starts `pgtaskd node --database-url URL --worker-id ID ARGS...` (no preset timings).
    pub fn start_with(url: &str, worker_id: i64, args: &[&str]) -> NodeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtaskd"));
        cmd.arg("node")
            .arg("--database-url")
            .arg(url)
            .arg("--worker-id")
            .arg(worker_id.to_string())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn pgtaskd node");
        NodeProcess { child, worker_id }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal node");
    }

    /// Waits for the process to exit by itself; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the node's worker row is active with a fresh heartbeat.
pub async fn wait_node_ready(client: &Client, worker_id: i64) {
    wait_until(Duration::from_secs(20), || async {
        client
            .query_opt(
                "SELECT 1 FROM long_task.worker WHERE id = $1 AND active AND heartbeat_at > now() - interval '5 seconds'",
                &[&worker_id],
            )
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await
    .unwrap_or_else(|_| panic!("node {worker_id} did not become ready"));
}

/// Polls `cond` every 20 ms until it holds; Err after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state code of a task.
pub async fn state(client: &Client, id: i64) -> String {
    let row = client
        .query_one(
            "SELECT state_id::text FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task exists");
    row.get(0)
}

/// Waits until the task is in `want`; panics with the row after `limit`.
pub async fn wait_state(client: &Client, id: i64, want: &str, limit: Duration) {
    if wait_until(limit, || async { state(client, id).await == want })
        .await
        .is_err()
    {
        let row = client
            .query_one(
                "SELECT state_id::text, error, exit_code, exit_signal, stdout_tail, stderr_tail FROM long_task.task WHERE id = $1",
                &[&id],
            )
            .await
            .expect("task exists");
        panic!(
            "task {id} did not reach {want} within {limit:?}: state {:?} error {:?} exit {:?}/{:?} stdout {:?} stderr {:?}",
            row.get::<_, String>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<i32>>(2),
            row.get::<_, Option<i32>>(3),
            row.get::<_, Option<String>>(4),
            row.get::<_, Option<String>>(5),
        );
    }
}

/// Inserts a waiting task with this argv; returns its id.
pub async fn queue(client: &Client, argv: &[&str]) -> i64 {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (0, 'AW', $1) RETURNING id",
            &[&argv],
        )
        .await
        .expect("insert task")
        .get(0)
}

/// Live processes of task `id` of this database (task ids repeat across test databases, so the
/// installation id in the node marker tells them apart).
pub async fn task_processes(client: &Client, id: i64) -> Vec<i32> {
    let installation: uuid::Uuid = client
        .query_one("SELECT id FROM long_task.installation", &[])
        .await
        .expect("installation id")
        .get(0);
    let node_prefix = format!("PGTASKD_NODE={installation}/");
    processes_with_env("PGTASKD_TASK_ID", &id.to_string())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv.starts_with(node_prefix.as_bytes()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Live (non-zombie) processes whose environment carries `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    pgtaskd::process::processes_with_env(|kv| kv == needle.as_bytes())
}

/// The group's coordinator and its term, as the coordinator table says.
pub async fn coordinator(client: &Client, group_id: i32) -> Option<(i64, i64)> {
    client
        .query_opt(
            "SELECT worker_id, term FROM long_task.coordinator WHERE group_id = $1",
            &[&group_id],
        )
        .await
        .expect("read coordinator")
        .map(|r| (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get(1)))
}

/// Waits until the group has a coordinator matching `pred`; returns it.
pub async fn wait_coordinator(
    client: &Client,
    group_id: i32,
    limit: Duration,
    pred: impl Fn(i64, i64) -> bool,
) -> (i64, i64) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((w, t)) = coordinator(client, group_id).await {
            if pred(w, t) {
                return (w, t);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no matching coordinator within {limit:?}: {:?}",
            coordinator(client, group_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The (worker_id, run_id) of a task.
pub async fn owner(client: &Client, id: i64) -> (Option<i64>, Option<uuid::Uuid>) {
    let row = client
        .query_one(
            "SELECT worker_id, run_id FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task exists");
    (row.get(0), row.get(1))
}

/// Sets a worker's stop code (1 pauses claiming, 0 resumes).
pub async fn set_stop(client: &Client, worker_id: i64, code: i16) {
    client
        .execute(
            "UPDATE long_task.worker SET stop = $2 WHERE id = $1",
            &[&worker_id, &code],
        )
        .await
        .expect("set stop");
}

/// Waits until no task is active; panics with the active rows after `limit`.
pub async fn wait_all_final(client: &Client, limit: Duration) {
    let settled = wait_until(limit, || async {
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
    if settled.is_err() {
        let rows: Vec<(i64, String, Option<i64>, Option<uuid::Uuid>)> = client
            .query(
                "SELECT id, state_id::text, worker_id, run_id FROM long_task.task
                  WHERE state_id LIKE 'A%' ORDER BY id",
                &[],
            )
            .await
            .expect("active rows")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        panic!("tasks still active after {limit:?} (id, state, worker, run): {rows:?}");
    }
}
