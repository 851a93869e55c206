//! Pausing a group (migration 14, `long_task.pause_group` / `resume_group`): after the pause
//! commits no node starts a task of the group and no SQL consumer takes one, however many keep
//! arriving; running tasks go on (or are cancelled when asked); `status` and `/metrics` show the
//! pause; a resume wakes the nodes at once.

mod common;

use std::time::Duration;

use common::http::{node_with_http, request};
use common::migrated_db;
use common::node::{queue, wait_node_ready, wait_state};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_paused_group_starts_nothing_and_a_resume_starts_at_once() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 1, &["--max-tasks", "4"]).await;
    wait_node_ready(&client, 1).await;

    // a task running before the pause goes on
    let before = queue(&client, &["sleep", "2"]).await;
    wait_state(&client, before, "AE", LONG).await;
    let cancelled: i32 = client
        .query_one("SELECT long_task.pause_group(0)", &[])
        .await
        .expect("pause")
        .get(0);
    assert_eq!(cancelled, 0);

    // 100 tasks keep arriving for 2 s: none starts; a SQL consumer gets nothing either
    let mut ids = Vec::new();
    for _ in 0..20 {
        for _ in 0..5 {
            ids.push(queue(&client, &["true"]).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published: i64 = client
        .query_one("SELECT long_task.publish('t.paused')", &[])
        .await
        .expect("publish")
        .get(0);
    let consumed = client
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("consume");
    assert!(consumed.is_empty(), "a paused group's task was consumed");
    let consumed = client
        .query("SELECT id FROM long_task.consume(10, 0)", &[])
        .await
        .expect("consume");
    assert!(consumed.is_empty(), "a paused group's task was consumed");
    wait_state(&client, before, "CS", LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE id = ANY ($1) AND started IS NOT NULL",
            &[&ids],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(started, 0, "tasks started while the group was paused");

    // the pause shows in `status` and the metrics
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["status", "--database-url", &db.url])
        .output()
        .expect("status");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("0 (paused)"), "{shown}");
    let (_, metrics) = request("GET", &format!("{base}/metrics"), None);
    assert!(
        metrics.contains("pgtaskd_group_paused{group=\"0\"} 1"),
        "{metrics}"
    );

    // resume: the first start follows at once (database clock, resume commit → claim)
    let resumed_at: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT now() FROM (SELECT long_task.resume_group(0)) r",
            &[],
        )
        .await
        .expect("resume")
        .get(0);
    for id in &ids {
        wait_state(&client, *id, "CS", LONG).await;
    }
    let first: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT min(r.started) FROM long_task.task_run r WHERE r.task_id = ANY ($1)",
            &[&ids],
        )
        .await
        .expect("first start")
        .get(0);
    let after = first - resumed_at;
    eprintln!("first start {after} after the resume");
    // Nothing but the resume's notification makes the node claim again (no timer polls the
    // queue), so a start at all proves the wake. The bound only keeps the check of "at once"
    // honest on a loaded machine: alone, this test measures 1.7-2.6 ms; six copies at once on two
    // cores, up to 210 ms. The figure is reported (docs/interfaces.md), not asserted at 50 ms.
    assert!(
        after >= chrono::Duration::zero() && after < chrono::Duration::seconds(1),
        "the first start came {after} after the resume"
    );
    let consumed = client
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("consume");
    assert_eq!(
        consumed
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>(),
        vec![published]
    );
    let (_, metrics) = request("GET", &format!("{base}/metrics"), None);
    assert!(
        metrics.contains("pgtaskd_group_paused{group=\"0\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_pause_can_cancel_what_runs() {
    let (db, client) = migrated_db().await;
    let _node = common::node::NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let running = queue(&client, &["sleep", "60"]).await;
    wait_state(&client, running, "AE", LONG).await;
    let cancelled: i32 = client
        .query_one("SELECT long_task.pause_group(0, true)", &[])
        .await
        .expect("pause")
        .get(0);
    assert_eq!(cancelled, 1);
    wait_state(&client, running, "CC", LONG).await;
    let waiting = queue(&client, &["true"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::node::state(&client, waiting).await, "AW");
    let resumed: Option<bool> = client
        .query_one("SELECT long_task.resume_group(0)", &[])
        .await
        .expect("resume")
        .get(0);
    assert_eq!(resumed, Some(true));
    wait_state(&client, waiting, "CS", LONG).await;
}

/// A pause waits for the group's claims in flight (they hold `ns_pause` shared until they
/// commit), also for a group that had no `group_settings` row: the pause inserts it. Otherwise a
/// claim that read the group unpaused could go on taking tasks queued after the pause committed.
#[tokio::test]
async fn a_pause_waits_for_claims_in_flight_whether_or_not_the_group_had_settings() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute("INSERT INTO long_task.group_settings (group_id) VALUES (1)")
        .await
        .expect("settings of group 1");
    let claimer = common::connect(&db.url).await;
    for group in [0, 1] {
        claimer.batch_execute("BEGIN").await.expect("begin");
        claimer
            .query(
                "SELECT id FROM long_task.claim(1, $1, 1, '{}', true)",
                &[&group],
            )
            .await
            .expect("claim");
        // the claim is in flight (not committed): the pause must wait for it
        let waited = client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '300ms'; SELECT long_task.pause_group({group}); COMMIT;"
            ))
            .await;
        client.batch_execute("ROLLBACK").await.expect("rollback");
        let err = waited.expect_err("the pause did not wait for the claim in flight");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "group {group}: {err}"
        );
        claimer.batch_execute("COMMIT").await.expect("commit");
        // once the claim committed, the same pause goes through
        let cancelled: i32 = client
            .query_one("SELECT long_task.pause_group($1)", &[&group])
            .await
            .expect("pause")
            .get(0);
        assert_eq!(cancelled, 0);
    }
}
