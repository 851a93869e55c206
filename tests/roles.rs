//! The database's least privilege (docs/security.md), with real login roles: what
//! `pgtaskd_submitter`, `pgtaskd_operator`, `pgtaskd_reader` and `pgtaskd_node` may and may not
//! do, per-group isolation through `long_task.group_access`, and a node that runs on a
//! password-authenticated `pgtaskd_node` login without its password reaching anything it wrote.

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::{wait_node_ready, wait_state, LoggedNode, FAST};
use common::roles::{drop_roles, login_role, refused, require_password};
use common::{connect, migrated_db, task_count};
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(30);

async fn state(client: &Client, id: i64) -> String {
    client
        .query_one(
            "SELECT state_id::text FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("state")
        .get(0)
}

#[tokio::test]
async fn a_submitter_runs_the_reference_examples_and_nothing_more() {
    let (db, admin) = migrated_db().await;
    let name = format!("{}_sub", db.name);
    let url = login_role(&admin, &db.url, &name, &["pgtaskd_submitter"], None).await;
    let sub = connect(&url).await;

    // the reference examples (seed 000), verbatim
    let id: i64 = sub
        .query_one(
            "INSERT INTO long_task.task(group_id, state_id, priority, command)
             VALUES (0, 'DR', 0, '{ping,-n,1,127.0.0.1}')
             RETURNING id",
            &[],
        )
        .await
        .expect("insert a draft")
        .get(0);
    let queued = sub
        .execute(
            "UPDATE long_task.task SET state_id='AW', worker_id=null WHERE id = $1",
            &[&id],
        )
        .await
        .expect("queue the draft");
    assert_eq!(queued, 1);
    sub.execute(
        "UPDATE long_task.task SET state_id='AC' WHERE id = $1 AND state_id like 'A%'",
        &[&id],
    )
    .await
    .expect("cancel");
    assert_eq!(state(&admin, id).await, "CC");
    sub.execute(
        "UPDATE long_task.task SET state_id='AW', worker_id=null WHERE id = $1 AND state_id like 'C%'",
        &[&id],
    )
    .await
    .expect("re-queue");
    sub.execute(
        "UPDATE long_task.task SET next_start=now(), shed_period_id='HOU', shed_period_count=2,
                shed_clone=false WHERE id = $1",
        &[&id],
    )
    .await
    .expect("schedule");
    // the SQL API
    let published: i64 = sub
        .query_one("SELECT long_task.publish('t.a', '{\"x\": 1}')", &[])
        .await
        .expect("publish")
        .get(0);
    let consumed = sub
        .query("SELECT id, run_id FROM long_task.consume(10)", &[])
        .await
        .expect("consume");
    assert_eq!(consumed.len(), 1);
    let acked: Option<String> = sub
        .query_one("SELECT long_task.ack($1)::text", &[&published])
        .await
        .expect("ack")
        .get(0);
    assert_eq!(acked.as_deref(), Some("CS"));

    // and nothing of the control plane or of a node; each refusal changes nothing
    let workers_before: i64 = admin
        .query_one("SELECT count(*) FROM long_task.worker", &[])
        .await
        .expect("count")
        .get(0);
    let tasks_before = task_count(&admin).await;
    for (what, sql) in [
        ("pausing a node", "UPDATE long_task.worker SET stop = 1"),
        (
            "a node's registration",
            "INSERT INTO long_task.worker (id, group_id) VALUES (1, 0)",
        ),
        (
            "changing group settings",
            "INSERT INTO long_task.group_settings (group_id, allowed_programs) VALUES (0, NULL)",
        ),
        (
            "a node's claim",
            "SELECT * FROM long_task.claim(1, 0, 10, '{}', true)",
        ),
        (
            "a node's outcome",
            "SELECT * FROM long_task.complete_runs('{1}', '{00000000-0000-0000-0000-000000000000}', '{CS}', NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        ),
        ("a hand-back", "SELECT * FROM long_task.hand_back(1, 'x', 1)"),
        (
            "writing a run id",
            "UPDATE long_task.task SET run_id = gen_random_uuid()",
        ),
        ("writing an outcome", "UPDATE long_task.task SET exit_code = 0"),
        ("deleting tasks", "DELETE FROM long_task.task"),
        (
            "the ready ring",
            "INSERT INTO long_task.ready (slot, task_id) VALUES (0, 1)",
        ),
        (
            "granting itself groups",
            "INSERT INTO long_task.group_access SELECT current_user::text::regrole, 5",
        ),
    ] {
        let (code, message) = refused(sub.execute(sql, &[]).await, what);
        assert_eq!(code, "42501", "{what}: {message}");
        assert!(message.contains("permission denied"), "{what}: {message}");
    }
    let workers_after: i64 = admin
        .query_one("SELECT count(*) FROM long_task.worker", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(workers_before, workers_after);
    assert_eq!(tasks_before, task_count(&admin).await);
    let settings: i64 = admin
        .query_one("SELECT count(*) FROM long_task.group_settings", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(settings, 0);

    drop(sub);
    drop_roles(&admin, &[&name]).await;
}

#[tokio::test]
async fn the_operator_holds_the_control_plane_and_the_reader_only_reads() {
    let (db, admin) = migrated_db().await;
    let (op, reader) = (format!("{}_op", db.name), format!("{}_rd", db.name));
    let op_url = login_role(&admin, &db.url, &op, &["pgtaskd_operator"], None).await;
    let rd_url = login_role(&admin, &db.url, &reader, &["pgtaskd_reader"], None).await;
    let (as_op, as_reader) = (connect(&op_url).await, connect(&rd_url).await);
    admin
        .batch_execute("INSERT INTO long_task.worker (id, group_id, node_name) VALUES (7, 0, 'n7')")
        .await
        .expect("a node row");

    as_op
        .execute(
            "UPDATE long_task.worker SET stop = 1, max_task_count = 3 WHERE id = 7",
            &[],
        )
        .await
        .expect("the operator pauses a node");
    as_op
        .execute(
            "INSERT INTO long_task.group_settings (group_id, retention, allowed_programs)
             VALUES (0, '1 day', '{/usr/bin/*}')",
            &[],
        )
        .await
        .expect("the operator sets a group's settings");
    // but a node's own columns are not the operator's
    let (code, _) = refused(
        as_op
            .execute(
                "UPDATE long_task.worker SET heartbeat_at = now() WHERE id = 7",
                &[],
            )
            .await,
        "an operator faking a heartbeat",
    );
    assert_eq!(code, "42501");

    let id: i64 = admin
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{/usr/bin/true}') RETURNING id",
            &[],
        )
        .await
        .expect("task")
        .get(0);
    let seen: i64 = as_reader
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await
        .expect("the reader reads tasks")
        .get(0);
    assert_eq!(seen, 1);
    as_reader
        .query("SELECT * FROM long_task.queue_stats", &[])
        .await
        .expect("and the views");
    for (what, sql) in [
        (
            "a reader cancelling",
            "UPDATE long_task.task SET state_id = 'AC'",
        ),
        ("a reader submitting", "SELECT long_task.publish('t')"),
        ("a reader pausing", "UPDATE long_task.worker SET stop = 1"),
    ] {
        let (code, message) = refused(as_reader.execute(sql, &[]).await, what);
        assert_eq!(code, "42501", "{what}: {message}");
    }
    assert_eq!(state(&admin, id).await, "AW");

    drop((as_op, as_reader));
    drop_roles(&admin, &[&op, &reader]).await;
}

#[tokio::test]
async fn a_submitter_limited_to_a_group_neither_sees_nor_touches_another() {
    let (db, admin) = migrated_db().await;
    let (a, b, all) = (
        format!("{}_a", db.name),
        format!("{}_b", db.name),
        format!("{}_all", db.name),
    );
    let a_url = login_role(&admin, &db.url, &a, &["pgtaskd_submitter"], None).await;
    let b_url = login_role(&admin, &db.url, &b, &["pgtaskd_submitter"], None).await;
    let all_url = login_role(&admin, &db.url, &all, &["pgtaskd_submitter"], None).await;
    admin
        .batch_execute(&format!(
            "INSERT INTO long_task.group_access VALUES ('\"{a}\"', 1), ('\"{b}\"', 2)"
        ))
        .await
        .expect("grants");
    let (as_a, as_b, as_all) = (
        connect(&a_url).await,
        connect(&b_url).await,
        connect(&all_url).await,
    );

    let a_task: i64 = as_a
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (1, 'AW', '{sleep,100}') RETURNING id",
            &[],
        )
        .await
        .expect("a queues in its group")
        .get(0);
    let b_task: i64 = as_b
        .query_one(
            "SELECT long_task.publish('t.b', NULL, p_group_id => 2)",
            &[],
        )
        .await
        .expect("b publishes in its group")
        .get(0);

    // a cannot queue into b's group: a clear error, nothing written
    let before = task_count(&admin).await;
    let (code, message) = refused(
        as_a.execute(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES (2, 'AW', '{true}')",
            &[],
        )
        .await,
        "queueing into another team's group",
    );
    assert_eq!(code, "42501");
    assert!(message.contains("may not use group 2"), "{message}");
    let (code, _) = refused(
        as_a.query(
            "SELECT long_task.publish_bulk(ARRAY[ROW('t', NULL, NULL, NULL, NULL, NULL, NULL)::long_task.bulk_task], 2)",
            &[],
        )
        .await,
        "a bulk publish into another team's group",
    );
    assert_eq!(code, "42501");
    let (code, _) = refused(
        as_a.execute(
            "UPDATE long_task.task SET group_id = 2 WHERE id = $1",
            &[&a_task],
        )
        .await,
        "moving a task into another team's group",
    );
    assert_eq!(code, "42501");
    assert_eq!(task_count(&admin).await, before);

    // a sees its own tasks only, and cannot cancel, re-queue, consume or ack b's
    let seen: Vec<i64> = as_a
        .query("SELECT id FROM long_task.task ORDER BY id", &[])
        .await
        .expect("a reads")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![a_task]);
    let cancelled = as_a
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&b_task],
        )
        .await
        .expect("the update runs");
    assert_eq!(cancelled, 0, "b's task is not there for a");
    let via_api = as_a
        .query("SELECT * FROM long_task.cancel($1)", &[&b_task])
        .await
        .expect("cancel runs");
    assert!(via_api.is_empty(), "long_task.cancel finds no such task");
    let consumed = as_a
        .query("SELECT id FROM long_task.consume(10)", &[])
        .await
        .expect("a consumes");
    assert!(consumed.is_empty(), "a consumed b's task: {consumed:?}");
    let (code, _) = refused(
        as_a.query("SELECT * FROM long_task.consume(10, 2)", &[])
            .await,
        "consuming another team's group",
    );
    assert_eq!(code, "42501");
    assert_eq!(state(&admin, b_task).await, "AW");

    // b consumes its task; a's ack of it changes nothing, b's does
    let run: uuid::Uuid = as_b
        .query_one("SELECT run_id FROM long_task.consume(10)", &[])
        .await
        .expect("b consumes its own")
        .get(0);
    let a_ack: Option<String> = as_a
        .query_one("SELECT long_task.ack($1)::text", &[&b_task])
        .await
        .expect("ack runs")
        .get(0);
    assert_eq!(a_ack, None);
    let a_acks = as_a
        .query(
            "SELECT * FROM long_task.ack_many(ARRAY[$1::bigint])",
            &[&b_task],
        )
        .await
        .expect("ack_many runs");
    assert!(a_acks.is_empty());
    assert_eq!(state(&admin, b_task).await, "AE");
    let b_ack: Option<String> = as_b
        .query_one("SELECT long_task.ack($1, NULL, $2)::text", &[&b_task, &run])
        .await
        .expect("b acks")
        .get(0);
    assert_eq!(b_ack.as_deref(), Some("CS"));
    let b_history: i64 = as_a
        .query_one("SELECT count(*) FROM long_task.task_run", &[])
        .await
        .expect("a reads history")
        .get(0);
    assert_eq!(b_history, 0, "b's attempt history is not a's to read");

    // a role with no grant row may use every group (isolation is opt-in)
    let everything: i64 = as_all
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await
        .expect("reads")
        .get(0);
    assert_eq!(everything, 2);

    drop((as_a, as_b, as_all));
    drop_roles(&admin, &[&a, &b, &all]).await;
}

#[tokio::test]
async fn a_node_runs_on_a_password_checked_node_login_and_never_shows_the_password() {
    let (db, admin) = migrated_db().await;
    let name = format!("{}_node", db.name);
    let secret = "Sekr3t-node-pw-5b1e";
    let url = login_role(&admin, &db.url, &name, &["pgtaskd_node"], Some(secret)).await;
    let checked = require_password(&admin, &name).await.is_some();
    if checked {
        // the server really checks it: a wrong password is refused, and says nothing of it
        let wrong = common::roles::with_credentials(&db.url, Some(&name), Some("wrong-pw-x"));
        let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong password is refused");
        let reason = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| err.to_string());
        assert!(
            reason.contains("password authentication failed"),
            "{reason}"
        );
    } else {
        eprintln!("pg_hba.conf is not writable here: the password is carried, not checked");
    }

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtaskd"));
    cmd.arg("node")
        .args(["--worker-id", "61", "--no-migrate"])
        .args(FAST)
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "debug");
    let node = LoggedNode::spawn(cmd);
    wait_node_ready(&admin, 61).await;

    // a node on pgtaskd_node runs tasks end to end: claim, live output, outcome, the
    // coordinator's round
    let ok: i64 = admin
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{sh,-c,echo live; sleep 2}') RETURNING id",
            &[],
        )
        .await
        .expect("task")
        .get(0);
    let live = common::node::wait_until(LONG, || async {
        let row = admin
            .query_one(
                "SELECT state_id::text, coalesce(stdout_tail, '') FROM long_task.task WHERE id = $1",
                &[&ok],
            )
            .await
            .expect("row");
        row.get::<_, String>(0) == "AE" && row.get::<_, String>(1) == "live"
    })
    .await;
    assert!(
        live.is_ok(),
        "the running task's output never reached its row"
    );
    wait_state(&admin, ok, "CS", LONG).await;
    // elected under pgtaskd_node (the election may come after the first task)
    let elected = common::node::wait_until(LONG, || async {
        admin
            .query_opt(
                "SELECT 1 FROM long_task.coordinator WHERE group_id = 0 AND worker_id = 61",
                &[],
            )
            .await
            .expect("coordinator")
            .is_some()
    })
    .await;
    assert!(elected.is_ok(), "the node was never elected coordinator");
    // but the login cannot write a task's outcome directly
    let as_node = connect(&url).await;
    let (code, _) = refused(
        as_node
            .execute(
                "UPDATE long_task.task SET exit_code = 0, run_id = NULL",
                &[],
            )
            .await,
        "a node login writing outcome columns directly",
    );
    assert_eq!(code, "42501");

    // `status` on the same URL, the events and the log carry no password
    let status = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["status"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("status");
    assert!(status.status.success(), "{status:?}");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(!shown.contains(secret), "{shown}");
    let leaked: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM long_task.event WHERE detail LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM long_task.task
                      WHERE concat(error, stdout_tail, stderr_tail) LIKE '%' || $1 || '%')",
            &[&secret],
        )
        .await
        .expect("rows")
        .get(0);
    assert_eq!(leaked, 0, "a row holds the password");

    let log = node.stop();
    assert!(log.contains("61"), "the node logged something: {log}");
    assert!(!log.contains(secret), "the password is in the node's log");

    drop(as_node);
    drop_roles(&admin, &[&name]).await;
}

#[tokio::test]
async fn a_migrating_role_that_may_not_create_roles_is_told_what_to_run() {
    // roles are global to a server: a private one, where they do not exist yet
    let private = common::PrivateCluster::new();
    let admin = connect(&private.cluster.url("postgres")).await;
    for sql in [
        "CREATE ROLE app_owner LOGIN",
        "CREATE DATABASE app OWNER app_owner",
    ] {
        admin
            .batch_execute(sql)
            .await
            .expect("an owner without CREATEROLE");
    }
    let owner_url =
        common::roles::with_credentials(&private.cluster.url("app"), Some("app_owner"), None);
    let mut owner = connect(&owner_url).await;
    let report = pgtaskd::db::migrate::migrate(&mut owner)
        .await
        .expect("the schema migrates without the roles");
    assert_eq!(report.missing_roles.len(), 4, "{report:?}");
    let sql = pgtaskd::db::migrate::create_roles_sql(&report.missing_roles);
    assert!(
        sql.contains("CREATE ROLE pgtaskd_node NOLOGIN IN ROLE pgtaskd_submitter"),
        "{sql}"
    );

    // the DBA runs what it was told; the next migrate grants
    admin
        .batch_execute(&sql)
        .await
        .expect("the printed SQL runs");
    let report = pgtaskd::db::migrate::migrate(&mut owner)
        .await
        .expect("migrate again");
    assert!(report.missing_roles.is_empty(), "{report:?}");
    admin
        .batch_execute("CREATE ROLE app_sub LOGIN IN ROLE pgtaskd_submitter")
        .await
        .expect("a submitter login");
    let sub = connect(&common::roles::with_credentials(
        &private.cluster.url("app"),
        Some("app_sub"),
        None,
    ))
    .await;
    let id: i64 = sub
        .query_one(
            "INSERT INTO long_task.task(group_id, state_id, priority, command)
             VALUES (0, 'DR', 0, '{ping,-n,1,127.0.0.1}') RETURNING id",
            &[],
        )
        .await
        .expect("the submitter works once the grants are in")
        .get(0);
    assert!(id > 0);
}
