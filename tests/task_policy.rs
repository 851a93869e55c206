//! What the database may ask of a task's process, and how the node bounds it
//! (docs/security.md): a group's `run_as` (only users the node's `run_as_allowed` names), a
//! task's own `env` (checked at insert and again on the node), resource limits per task with
//! group defaults, and `status` naming a node that runs tasks as root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::{queue, wait_node_ready, wait_state, NodeProcess};
use common::roles::refused;
use common::{migrated_db, task_count};
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(30);

async fn outcome(client: &Client, id: i64) -> (Option<String>, String) {
    let row = client
        .query_one(
            "SELECT error, coalesce(stdout_tail, '') FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task row");
    (row.get(0), row.get(1))
}

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

async fn set_group(client: &Client, sql_set: &str) {
    client
        .batch_execute(&format!(
            "INSERT INTO long_task.group_settings (group_id) VALUES (0) ON CONFLICT DO NOTHING;
             UPDATE long_task.group_settings SET {sql_set} WHERE group_id = 0"
        ))
        .await
        .expect("group settings");
}

#[tokio::test]
async fn a_groups_run_as_is_honoured_only_for_users_the_node_allows() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs a root test run");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("nobody exists");
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(
        dir.path(),
        "run_as_allowed = [\"nobody\", \"no-such-user-pgtaskd\"]\n",
    );
    let _node = NodeProcess::start(&db.url, 71, &["--config", &config]);
    wait_node_ready(&client, 71).await;

    // without a group run_as the task runs as the node's user; `status` says it is root
    let id = queue(&client, &["id", "-u"]).await;
    wait_state(&client, id, "CS", LONG).await;
    assert_eq!(outcome(&client, id).await.1.trim(), "0");
    let status = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("status");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("node 71") && shown.contains("runs tasks as root"),
        "{shown}"
    );

    set_group(&client, "run_as = 'nobody'").await;
    let id = queue(&client, &["sh", "-c", "id -u; echo \"$USER $HOME\""]).await;
    wait_state(&client, id, "CS", LONG).await;
    let out = outcome(&client, id).await.1;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{out}");
    assert_eq!(
        lines[1],
        format!("nobody {}", nobody.dir.display()),
        "{out}"
    );

    // a user the node does not allow: CF naming the rule, and nothing ran
    set_group(&client, "run_as = 'daemon'").await;
    let marker = dir.path().join("ran");
    let id = queue(&client, &["touch", &marker.display().to_string()]).await;
    wait_state(&client, id, "CF", LONG).await;
    let error = outcome(&client, id).await.0.expect("error");
    assert!(
        error.contains("node 71") && error.contains("run_as_allowed") && error.contains("daemon"),
        "{error}"
    );
    assert!(!marker.exists(), "the refused task ran");

    // an allowed user that does not exist on the node
    set_group(&client, "run_as = 'no-such-user-pgtaskd'").await;
    let id = queue(&client, &["true"]).await;
    wait_state(&client, id, "CF", LONG).await;
    let error = outcome(&client, id).await.0.expect("error");
    assert!(error.contains("no user 'no-such-user-pgtaskd'"), "{error}");
}

#[tokio::test]
async fn a_tasks_own_env_is_checked_at_insert_and_reaches_its_process() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 72, &[]);
    wait_node_ready(&client, 72).await;

    let argv = ["sh", "-c", "echo \"$GREETING $LANG\""];
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, env)
             VALUES ('AW', $1::text[], '{\"GREETING\": \"hi\", \"LANG\": \"C\"}') RETURNING id",
            &[&&argv[..]],
        )
        .await
        .expect("a task with env")
        .get(0);
    wait_state(&client, id, "CS", LONG).await;
    assert_eq!(outcome(&client, id).await.1.trim(), "hi C");

    let before = task_count(&client).await;
    for (env, code, says) in [
        (r#"{"LD_PRELOAD": "/tmp/x.so"}"#, "42501", "LD_PRELOAD"),
        (r#"{"PATH": "/tmp"}"#, "42501", "PATH"),
        (r#"{"PGTASKD_TASK_ID": "1"}"#, "42501", "PGTASKD_TASK_ID"),
        (r#"{"A-B": "x"}"#, "22023", "not a valid variable name"),
        (r#"{"N": 1}"#, "22023", "must be a string"),
        (r#"["x"]"#, "22023", "JSON object"),
    ] {
        let (got, message) = refused(
            client
                .execute(
                    "INSERT INTO long_task.task (state_id, command, env) VALUES ('AW', '{true}', $1::text::jsonb)",
                    &[&env],
                )
                .await,
            env,
        );
        assert_eq!(got, code, "{env}: {message}");
        assert!(message.contains(says), "{env}: {message}");
    }
    assert_eq!(
        task_count(&client).await,
        before,
        "a refused env wrote nothing"
    );
}

#[tokio::test]
async fn limits_come_from_the_task_else_its_group() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 73, &[]);
    wait_node_ready(&client, 73).await;
    set_group(&client, "limit_cpu_seconds = 1").await;

    // the group's CPU limit
    let spin = queue(&client, &["sh", "-c", "while :; do :; done"]).await;
    // the task's own memory limit (1 GiB in one go, past 256 MiB)
    let hog_argv = ["perl", "-e", "my $x = 'x' x (1 << 30); print length $x"];
    let hog: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, limit_memory)
             VALUES ('AW', $1::text[], 268435456) RETURNING id",
            &[&&hog_argv[..]],
        )
        .await
        .expect("a task with a limit")
        .get(0);
    // a task may ask for more CPU than its group's default: 1.5 s of CPU, user and system time
    // together (what RLIMIT_CPU counts; the loop's own times() calls are system time, and on a
    // loaded machine counting user time alone once ran past the task's 5 s)
    let patient_argv = [
        "perl",
        "-e",
        "my @t = times; 1 while (times)[0] + (times)[1] - $t[0] - $t[1] < 1.5; print 'done'",
    ];
    let patient: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, limit_cpu_seconds)
             VALUES ('AW', $1::text[], 5) RETURNING id",
            &[&&patient_argv[..]],
        )
        .await
        .expect("a task with its own CPU limit")
        .get(0);
    wait_state(&client, spin, "CF", LONG).await;
    wait_state(&client, hog, "CF", LONG).await;
    wait_state(&client, patient, "CS", LONG).await;
    let error = outcome(&client, spin).await.0.expect("error");
    assert!(error.contains("cpu_seconds = 1"), "{error}");
    let error = outcome(&client, hog).await.0.expect("error");
    assert!(error.contains("limit memory = 256"), "{error}");

    let (code, _) = refused(
        client
            .execute(
                "INSERT INTO long_task.task (state_id, command, limit_memory) VALUES ('AW', '{true}', 0)",
                &[],
            )
            .await,
        "a zero limit",
    );
    assert_eq!(code, "23514");
}
