//! Shared integration-test harness: a fresh database per test on one shared throw-away cluster
//! (or on `DATABASE_URL` when set), and private clusters for tests that stop or restart Postgres.
//! Parallel-safe across threads and processes (nextest runs each test in its own process).
//! `migrated_db` adds the pgtaskd schema.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use nix::fcntl::{Flock, FlockArg};
use pgtaskd::pgcluster::{create_database, PgCluster};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// `<prefix>_<pid>_<counter>_<random>`: unique across threads, processes and runs.
fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Holds an exclusive `flock` on `path` until dropped (released when the file closes, so also
/// when the test process dies). `nix::fcntl::Flock` rather than std `File::lock`, which needs
/// Rust 1.89 while Cargo.toml declares rust-version 1.85.
struct FileLock(Flock<File>);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open lock file {}: {e}", path.display()));
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", path.display()));
        FileLock(lock)
    }
}

/// Opens (initdb the first time) and starts the shared test cluster, under a cross-process lock.
/// Done on every call (cheap when running) so a cluster killed between tests comes back.
fn shared_cluster() -> PgCluster {
    let root = tmp_root();
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let _lock = FileLock::acquire(&root.join("pgtaskd-test-pg.lock"));
    let dir = root.join("pgtaskd-test-pg");
    let cluster = PgCluster::open_or_init(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot initialise the test cluster in {}: {e}",
            dir.display()
        )
    });
    cluster
        .start()
        .unwrap_or_else(|e| panic!("cannot start the test cluster in {}: {e}", dir.display()));
    cluster
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Drops test databases left by earlier test processes that no longer exist (shared cluster only:
/// a pid means nothing on a `DATABASE_URL` server that other machines may use). Once per process.
async fn drop_stale_databases(admin_url: &str) {
    let client = connect(admin_url).await;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgtaskd_test_%'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot list test databases: {e}"));
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<i32>().ok());
        let Some(pid) = pid.filter(|p| *p > 0) else {
            continue;
        };
        let dead = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if dead {
            // Best effort: another process may be dropping it at the same time.
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A fresh, empty database for one test. Uses `DATABASE_URL` (as the admin URL) when set;
    /// otherwise the shared throw-away cluster under `CARGO_TARGET_TMPDIR/pgtaskd-test-pg`.
    pub async fn new() -> TestDb {
        let admin_url = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let cluster = tokio::task::spawn_blocking(shared_cluster)
                    .await
                    .unwrap_or_else(|e| panic!("starting the shared test cluster panicked: {e}"));
                let admin_url = cluster.url("postgres");
                let mut first = false;
                CLEANUP.call_once(|| first = true);
                if first {
                    drop_stale_databases(&admin_url).await;
                }
                admin_url
            }
        };
        let name = unique_name("pgtaskd_test");
        create_database(&admin_url, &name)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestDb {
            url: pgtaskd::db::with_dbname(&admin_url, &name),
            name,
        }
    }

    /// A new connection to this database, its driver spawned on the current runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

/// A private cluster for tests that restart or stop Postgres, under
/// `CARGO_TARGET_TMPDIR/pgtaskd-private-<unique>`; stopped and removed on Drop.
pub struct PrivateCluster {
    pub cluster: PgCluster,
}

impl PrivateCluster {
    pub fn new() -> PrivateCluster {
        let dir = tmp_root().join(unique_name("pgtaskd-private"));
        let cluster = PgCluster::open_or_init(&dir)
            .unwrap_or_else(|e| panic!("cannot initialise {}: {e}", dir.display()));
        let private = PrivateCluster { cluster };
        private
            .cluster
            .start()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", dir.display()));
        private
    }

    /// Creates database `name` (if missing) and returns its URL.
    pub async fn database(&self, name: &str) -> String {
        create_database(&self.cluster.url("postgres"), name)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        self.cluster.url(name)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop() {
            eprintln!("warning: cannot stop private cluster: {e}");
        }
        let _ = std::fs::remove_dir_all(self.cluster.dir());
        let _ = std::fs::remove_dir_all(self.cluster.socket_dir());
    }
}

/// Publishes a consumer task of `topic` with params `{"x": 1}`; returns its id.
pub async fn publish(client: &tokio_postgres::Client, topic: &str) -> i64 {
    client
        .query_one(
            "SELECT long_task.publish($1, '{\"x\": 1}'::jsonb)",
            &[&topic],
        )
        .await
        .expect("publish")
        .get(0)
}

/// How many rows `long_task.task` holds.
pub async fn task_count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await
        .expect("count the tasks")
        .get(0)
}

pub mod browser;
pub mod cli;
pub mod http;
pub mod node;
/// The chaos harness's partition proxy (one source for both: test-only code stays out of the library).
#[path = "../../chaos-tests/proxy.rs"]
pub mod proxy;

/// The chaos checker's overlap of runs (the check that concurrency limits held).
#[path = "../../chaos-tests/overlap.rs"]
pub mod overlap;
pub mod roles;
pub mod schema;
pub mod stall;
pub mod standby;

/// A fresh database with the pgtaskd schema applied, and a connection to it.
pub async fn migrated_db() -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    pgtaskd::db::migrate::migrate(&mut client)
        .await
        .unwrap_or_else(|e| panic!("migrating {}: {e}", db.name));
    (db, client)
}

/// A connection that LISTENs on `channels`, and the notifications it receives.
pub async fn listen(
    url: &str,
    channels: &[&str],
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<pgtaskd::db::Notice>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (listener, _ended) = pgtaskd::db::connect_listening(url, "test listener", tx)
        .await
        .expect("listen");
    pgtaskd::db::listen(&listener, channels, "test LISTEN")
        .await
        .expect("LISTEN");
    (listener, rx)
}

/// Every file under `dir`, recursively (none when it cannot be read).
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}
