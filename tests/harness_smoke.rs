//! Smoke tests for the integration-test harness itself (tests/common).
mod common;

use common::{PrivateCluster, TestDb};

#[tokio::test]
async fn two_test_dbs_are_distinct_and_connectable() {
    let (a, b) = tokio::join!(TestDb::new(), TestDb::new());
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    for db in [&a, &b] {
        let client = db.client().await;
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .expect("query current_database");
        let name: String = row.get(0);
        assert_eq!(name, db.name);
        // Fresh and empty: no user tables.
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await
            .expect("count tables");
        assert_eq!(row.get::<_, i64>(0), 0);
    }
}

#[tokio::test]
async fn private_cluster_keeps_data_across_restart() {
    let pc = PrivateCluster::new();
    let url = pc.database("smoke").await;
    let port = pc.cluster.port();
    {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2), (3);")
            .await
            .expect("create and fill table");
        drop(client);
        let _ = driver.await;
    }
    pc.cluster.restart().expect("restart");
    assert!(pc.cluster.is_running());
    assert_eq!(pc.cluster.port(), port, "restart keeps the port");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect after restart");
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT sum(v)::int FROM t", &[])
        .await
        .expect("read after restart");
    assert_eq!(row.get::<_, i32>(0), 6);
}

#[tokio::test]
async fn private_cluster_starts_after_postmaster_sigkill() {
    let pc = PrivateCluster::new();
    let pid_file = pc.cluster.data_dir().join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).expect("read postmaster.pid");
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid in postmaster.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill postmaster");
    // The stale postmaster.pid stays behind; start must cope with it.
    for _ in 0..50 {
        if !pc.cluster.is_running() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(pid_file.exists(), "a stale postmaster.pid is left behind");
    pc.cluster.start().expect("start after SIGKILL");
    let url = pc.database("after_kill").await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect after SIGKILL + start");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.expect("query");
}

#[test]
fn start_failure_reports_the_server_log() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "pgtaskd-startfail-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let cluster = pgtaskd::pgcluster::PgCluster::open_or_init(&dir).expect("init");
    // Someone else holds the cluster's port: the start must fail, quoting the server log.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", cluster.port())).expect("bind port");
    let err = cluster.start().expect_err("start on an occupied port");
    drop(squatter);
    let text = err.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(cluster.socket_dir());
    assert!(
        text.contains("could not bind") || text.contains("in use"),
        "error should quote the server log: {text}"
    );
}

/// A cluster the harness (or `pgtaskd dev`) creates compresses the full-page images in its WAL
/// when its server was built with lz4 (`pgcluster::wal_compression_setting`), and vacuums every
/// 15 s.
#[tokio::test]
async fn a_new_cluster_compresses_its_wal_and_vacuums_often() {
    let pc = PrivateCluster::new();
    let client = common::connect(&pc.database("walcomp").await).await;
    let row = client
        .query_one(
            "SELECT setting, 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'wal_compression'",
            &[],
        )
        .await
        .expect("read wal_compression");
    let (setting, has_lz4): (String, bool) = (row.get(0), row.get(1));
    let expected = if has_lz4 { "lz4" } else { "off" };
    assert_eq!(setting, expected, "lz4 available: {has_lz4}");
    let naptime: String = client
        .query_one("SHOW autovacuum_naptime", &[])
        .await
        .expect("read autovacuum_naptime")
        .get(0);
    assert_eq!(naptime, "15s");
}
