//! `pgtaskd migrate`: idempotent, safe when many nodes start at once, and refusing a schema that
//! is newer than the binary or was edited after it was applied.

mod common;

use common::TestDb;
use pgtaskd::db::migrate::{self, latest_version, MigrateError};

#[tokio::test]
async fn concurrent_migrations_apply_each_file_once() {
    let db = TestDb::new().await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let url = db.url.clone();
        handles.push(tokio::spawn(async move {
            let mut client = common::connect(&url).await;
            migrate::migrate(&mut client).await
        }));
    }
    let mut applied_total = 0;
    for handle in handles {
        let report = handle.await.expect("join").expect("migrate succeeds");
        assert_eq!(report.to_version, latest_version());
        applied_total += report.applied.len();
    }
    assert_eq!(
        applied_total,
        migrate::MIGRATIONS.len(),
        "each migration applied exactly once"
    );

    // Running it again changes nothing.
    let mut client = db.client().await;
    let report = migrate::migrate(&mut client).await.expect("idempotent");
    assert!(report.applied.is_empty());
    assert!(
        !report.schema_files_applied,
        "unchanged schema files are not applied again"
    );
    migrate::check(&client).await.expect("schema is current");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate::migrate(&mut client).await.expect("migrate");
    client
        .execute(
            "INSERT INTO long_task.schema_migrations (version, name, checksum) VALUES ($1, 'future', 0)",
            &[&(latest_version() + 1)],
        )
        .await
        .expect("pretend a newer binary migrated");
    let err = migrate::migrate(&mut client).await.unwrap_err();
    assert!(matches!(err, MigrateError::TooNew { .. }), "{err}");
    assert!(
        err.to_string().contains("newer than this pgtaskd supports"),
        "{err}"
    );

    // A node refuses to start on it too, with the same message.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--database-url", &db.url, "--worker-id", "1"])
        .output()
        .expect("run node");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("newer than this pgtaskd supports"));
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate::migrate(&mut client).await.expect("migrate");
    client
        .execute(
            "UPDATE long_task.schema_migrations SET checksum = checksum + 1 WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let err = migrate::migrate(&mut client).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::Changed { version: 1, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_migrate_verb_reports_and_a_node_without_auto_migrate_refuses_an_empty_database() {
    let db = TestDb::new().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args([
            "node",
            "--database-url",
            &db.url,
            "--worker-id",
            "1",
            "--no-migrate",
        ])
        .output()
        .expect("run node");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("run `pgtaskd migrate`"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["migrate", "--database-url", &db.url])
        .output()
        .expect("run migrate");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("schema migrated from version 0"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["migrate", "--database-url", &db.url])
        .output()
        .expect("run migrate again");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("schema is up to date"));
}

fn node_stderr(url: &str, extra: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--database-url", url, "--worker-id", "1"])
        .args(extra)
        .output()
        .expect("run node");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn schema_files_newer_than_the_binary_are_refused_and_older_ones_replaced() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate::migrate(&mut client).await.expect("migrate");

    // A newer pgtaskd replaced the functions after this binary's were applied.
    client
        .execute(
            "INSERT INTO long_task.schema_files (checksum, migration_version, pgtaskd_version)
             VALUES (12345, $1, '9.9.9')",
            &[&latest_version()],
        )
        .await
        .expect("pretend a newer binary applied its schema files");
    let before: i64 = client
        .query_one("SELECT count(*) FROM long_task.schema_files", &[])
        .await
        .expect("count")
        .get(0);
    for err in [
        migrate::migrate(&mut client).await.unwrap_err(),
        migrate::check(&client).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, MigrateError::SchemaFilesNewer { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("newer than this pgtaskd") && text.contains("9.9.9"),
            "{text}"
        );
    }
    let after: i64 = client
        .query_one("SELECT count(*) FROM long_task.schema_files", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(before, after, "a refused migrate writes nothing");
    for extra in [&[][..], &["--no-migrate"][..]] {
        let stderr = node_stderr(&db.url, extra);
        assert!(stderr.contains("upgrade pgtaskd"), "{extra:?}: {stderr}");
    }

    // Older (or never applied) schema files: a node that may not migrate says what to run, and
    // migrate replaces them.
    client
        .batch_execute(
            "DELETE FROM long_task.schema_files;
             INSERT INTO long_task.schema_files (checksum, migration_version, pgtaskd_version)
             VALUES (54321, 6, '0.0.1')",
        )
        .await
        .expect("pretend an older binary applied its schema files");
    let err = migrate::check(&client).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::SchemaFilesOlder { .. }),
        "{err}"
    );
    let stderr = node_stderr(&db.url, &["--no-migrate"]);
    assert!(stderr.contains("run `pgtaskd migrate`"), "{stderr}");
    let report = migrate::migrate(&mut client).await.expect("migrate");
    assert!(report.applied.is_empty() && report.schema_files_applied);
    migrate::check(&client).await.expect("current again");
}
