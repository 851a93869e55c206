//! The node under a service manager, with the real binary: `sd_notify` messages through a
//! `NOTIFY_SOCKET` datagram socket the test owns (readiness after registration, status, watchdog
//! keep-alives at half `WATCHDOG_USEC`, `STOPPING=1`), and SIGHUP reloading the config file
//! (the process limit, the program allow-list; a broken file refused, the old config kept).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::migrated_db;
use common::node::{queue, wait_node_ready, wait_state, wait_until, FAST};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A node process with its stderr in a file; killed on drop.
struct Node {
    child: Child,
    log: std::path::PathBuf,
}

impl Node {
    fn start(url: &str, worker_id: i64, args: &[&str], env: &[(&str, &str)], log: &Path) -> Node {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
            .args(["--log-format", "json", "node", "--database-url", url])
            .args(["--worker-id", &worker_id.to_string()])
            .args(FAST)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pgtaskd node");
        Node {
            child,
            log: log.to_owned(),
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the node");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds a line containing every one of `parts`; panics with the log.
    async fn wait_log(&self, parts: &[&str]) -> String {
        let found = wait_until(Duration::from_secs(20), || async {
            self.log()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
        })
        .await;
        let log = self.log();
        assert!(found.is_ok(), "no log line with {parts:?}:\n{log}");
        log.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message that arrives on `socket` within `limit` (one datagram may hold several lines).
fn receive(
    socket: &UnixDatagram,
    until: impl Fn(&[String]) -> bool,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&seen) {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.extend(text.lines().map(str::to_owned));
        }
    }
    seen
}

async fn max_task_count(client: &tokio_postgres::Client, worker_id: i64) -> i32 {
    client
        .query_one(
            "SELECT max_task_count FROM long_task.worker WHERE id = $1",
            &[&worker_id],
        )
        .await
        .expect("worker row")
        .get(0)
}

#[tokio::test]
async fn readiness_status_watchdog_and_stopping_reach_the_notify_socket() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let socket_text = socket_path.to_str().expect("utf-8 path");
    let node = Node::start(
        &db.url,
        31,
        &[],
        &[("NOTIFY_SOCKET", socket_text), ("WATCHDOG_USEC", "600000")],
        &dir.path().join("node.log"),
    );

    let seen = receive(
        &socket,
        |seen| seen.iter().any(|m| m == "READY=1"),
        Duration::from_secs(30),
    );
    assert!(
        seen.iter().any(|m| m == "READY=1"),
        "no READY=1: {seen:?}\n{}",
        node.log()
    );
    // Ready means registered, holding the liveness lock, claiming: the row is active already.
    let active: bool = client
        .query_one("SELECT active FROM long_task.worker WHERE id = 31", &[])
        .await
        .expect("the worker row exists at READY=1")
        .get(0);
    assert!(active);
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=group 0: 0 task(s) running")),
        "{seen:?}"
    );

    // Half of 600 ms: about three keep-alives a second while the node is alive.
    let start = Instant::now();
    let seen = receive(
        &socket,
        |seen| seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 4,
        Duration::from_secs(10),
    );
    let beats = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        beats >= 4,
        "{beats} keep-alives in {:?}: {seen:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "keep-alives too slow: {beats} in {:?}",
        start.elapsed()
    );

    // A running task shows in the status line.
    let id = queue(&client, &["sleep", "30"]).await;
    wait_state(&client, id, "AE", Duration::from_secs(20)).await;
    let seen = receive(
        &socket,
        |seen| seen.iter().any(|m| m.contains("1 task(s) running")),
        Duration::from_secs(10),
    );
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=group 0: 1 task(s) running")),
        "{seen:?}"
    );

    node.signal(Signal::SIGTERM);
    let seen = receive(
        &socket,
        |seen| seen.iter().any(|m| m == "STOPPING=1"),
        Duration::from_secs(10),
    );
    assert!(seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=stopping")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn the_watchdog_is_fed_while_the_database_is_away_and_the_status_says_fenced() {
    // The chosen rule: heartbeat rounds that fail still prove the node alive (it fences itself);
    // a restart by the service manager would not bring the database back.
    let private = common::PrivateCluster::new();
    let url = private.database("watchdog").await;
    let mut admin = common::connect(&url).await;
    pgtaskd::db::migrate::migrate(&mut admin)
        .await
        .expect("migrate");
    drop(admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let node = Node::start(
        &url,
        34,
        &[
            "--state-dir",
            dir.path().join("state").to_str().expect("utf-8"),
        ],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8")),
            ("WATCHDOG_USEC", "600000"),
        ],
        &dir.path().join("node.log"),
    );
    let seen = receive(
        &socket,
        |seen| seen.iter().any(|m| m == "READY=1"),
        Duration::from_secs(30),
    );
    assert!(
        seen.iter().any(|m| m == "READY=1"),
        "{seen:?}\n{}",
        node.log()
    );

    private.cluster.stop().expect("stop PostgreSQL");
    let seen = receive(
        &socket,
        |seen| {
            seen.iter().any(|m| m.starts_with("STATUS=fenced"))
                && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 10
        },
        Duration::from_secs(15),
    );
    let beats = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        beats >= 10,
        "{beats} keep-alives while the database was away: {seen:?}"
    );
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=fenced")),
        "{seen:?}\n{}",
        node.log()
    );

    private.cluster.start().expect("start PostgreSQL again");
    let seen = receive(
        &socket,
        |seen| seen.iter().any(|m| m.starts_with("STATUS=group 0:")),
        Duration::from_secs(30),
    );
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=group 0:")),
        "{seen:?}\n{}",
        node.log()
    );
}

#[tokio::test]
async fn without_a_notify_socket_nothing_is_sent_and_the_node_runs() {
    // The same binary outside a service manager: no socket, no error, a working node.
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        &db.url,
        32,
        &[],
        &[("WATCHDOG_USEC", "600000")],
        &dir.path().join("n.log"),
    );
    wait_node_ready(&client, 32).await;
    let id = queue(&client, &["true"]).await;
    wait_state(&client, id, "CS", Duration::from_secs(20)).await;
    assert!(!node.log().contains("watchdog"), "{}", node.log());
}

fn write_config(path: &Path, body: &str) {
    std::fs::write(path, format!("[node]\nlog_level = \"info\"\n{body}")).expect("write config");
}

#[tokio::test]
async fn sighup_applies_the_live_settings_names_the_rest_and_refuses_a_broken_file() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    write_config(&config, "max_tasks = 2\n");
    let config_arg = config.to_str().expect("utf-8 path");
    let node = Node::start(
        &db.url,
        33,
        &["--config", config_arg],
        &[],
        &dir.path().join("node.log"),
    );
    wait_node_ready(&client, 33).await;
    assert_eq!(max_task_count(&client, 33).await, 2);

    // Live: the limit and the allow-list; needs a restart: tail_lines.
    write_config(
        &config,
        "max_tasks = 5\ntail_lines = 7\nallowed_programs = [\"/nonexistent/*\"]\n",
    );
    node.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(20), || async {
        max_task_count(&client, 33).await == 5
    })
    .await
    .unwrap_or_else(|_| panic!("the limit did not change:\n{}", node.log()));
    let line = node
        .wait_log(&["configuration reloaded", "max_tasks: 2 → 5"])
        .await;
    assert!(
        line.contains(r#"allowed_programs: unset (every program) → [\"/nonexistent/*\"]"#),
        "{line}"
    );
    let line = node.wait_log(&["only after a restart", "tail_lines"]).await;
    assert!(!line.contains("max_tasks"), "{line}");
    // The Dispatcher follows the row.
    node.wait_log(&["process limit changed", "\"to\":5"]).await;
    // The new allow-list holds for the next run.
    let refused = queue(&client, &["true"]).await;
    wait_state(&client, refused, "CF", Duration::from_secs(20)).await;
    let error: Option<String> = client
        .query_one(
            "SELECT error FROM long_task.task WHERE id = $1",
            &[&refused],
        )
        .await
        .expect("task")
        .get(0);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("allowed_programs")),
        "{error:?}"
    );

    // A broken file changes nothing and says why.
    std::fs::write(&config, "[node]\nmax_tasks = \"lots\"\n").expect("write");
    node.signal(Signal::SIGHUP);
    let line = node
        .wait_log(&["configuration reload refused", "max_tasks"])
        .await;
    assert!(line.contains("keeping the running configuration"), "{line}");
    assert_eq!(max_task_count(&client, 33).await, 5);
    let still_refused = queue(&client, &["true"]).await;
    wait_state(&client, still_refused, "CF", Duration::from_secs(20)).await;

    // A valid file again: the allow-list lifts, the node runs tasks.
    write_config(&config, "max_tasks = 5\n");
    node.signal(Signal::SIGHUP);
    node.wait_log(&[
        "configuration reloaded",
        r#"allowed_programs: [\"/nonexistent/*\"] → unset"#,
    ])
    .await;
    let ok = queue(&client, &["true"]).await;
    wait_state(&client, ok, "CS", Duration::from_secs(20)).await;
}
