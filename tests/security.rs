//! The node's side of least privilege (docs/security.md), against real nodes and a real
//! PostgreSQL: the program allow-list of the node's config, the clean task environment, secrets
//! that never reach a task or a log line, and the HTTP API's bearer tokens.

mod common;

use std::process::Command;
use std::time::Duration;

use common::http::{free_port, node_with_http, request, request_with_token, token_file};
use common::node::{queue, wait_node_ready, wait_state, LoggedNode, NodeProcess, FAST};
use common::roles::with_credentials;
use common::{migrated_db, task_count};

const LONG: Duration = Duration::from_secs(30);

async fn task_row(client: &tokio_postgres::Client, id: i64) -> (String, Option<String>, String) {
    let row = client
        .query_one(
            "SELECT state_id, error, coalesce(stdout_tail, '') FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task row");
    (row.get(0), row.get(1), row.get(2))
}

/// Runs `pgtaskd ARGS` expecting it to refuse to start; returns what it said.
fn refused_start(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(args)
        .output()
        .expect("run pgtaskd");
    assert!(!out.status.success(), "pgtaskd {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[tokio::test]
async fn a_program_outside_the_nodes_allow_list_never_runs() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(
        dir.path(),
        "allowed_programs = [\"/usr/bin/true\", \"/bin/true\"]\n",
    );
    let _node = NodeProcess::start(&db.url, 41, &["--config", &config, "--node-name", "locked"]);
    wait_node_ready(&client, 41).await;

    let allowed = queue(&client, &["true"]).await;
    wait_state(&client, allowed, "CS", LONG).await;

    let marker = dir.path().join("ran");
    let refused = queue(
        &client,
        &["sh", "-c", &format!("touch {}", marker.display())],
    )
    .await;
    wait_state(&client, refused, "CF", LONG).await;
    let (_, error, _) = task_row(&client, refused).await;
    let error = error.expect("an error");
    assert!(
        error.contains("node 41 (locked)") && error.contains("allowed_programs"),
        "the error names the node and the rule: {error}"
    );
    assert!(error.contains("/bin/true"), "the rule is shown: {error}");
    // `..` does not get around the list
    let escaped = queue(&client, &["/usr/bin/../bin/sh", "-c", "true"]).await;
    wait_state(&client, escaped, "CF", LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the refused command ran");
}

#[tokio::test]
async fn a_broken_allow_list_stops_the_node_with_its_key_named() {
    let (db, _client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(dir.path(), "allowed_programs = [\"sh\"]\n");
    let stderr = refused_start(&["node", "--database-url", &db.url, "--config", &config]);
    assert!(
        stderr.contains("allowed_programs") && stderr.contains("absolute"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tasks_get_a_clean_environment_and_no_secret_reaches_them_or_the_log() {
    let (db, client) = migrated_db().await;
    // The password is never checked by the test cluster (trust), but it is in the node's
    // DATABASE_URL, where a careless node would pass it on or print it.
    let secret = "Sekr3t-pw-7f3a9c";
    let url = with_credentials(&db.url, None, Some(secret));
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(dir.path(), "env_passthrough = [\"PASSED_ON\"]\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtaskd"));
    cmd.arg("node")
        .args(["--worker-id", "42", "--config", &config])
        .args(FAST)
        .env("DATABASE_URL", &url)
        .env("PGPASSWORD", secret)
        .env("NODE_SENTINEL", "sentinel-value-91")
        .env("PASSED_ON", "passed-value-17")
        .env("RUST_LOG", "debug");
    let node = LoggedNode::spawn(cmd);
    wait_node_ready(&client, 42).await;

    let id = queue(&client, &["env"]).await;
    wait_state(&client, id, "CS", LONG).await;
    let (_, _, env) = task_row(&client, id).await;
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for expected in [
        "PATH",
        "HOME",
        "LANG",
        "PGTASKD_TASK_ID",
        "PGTASKD_RUN_ID",
        "PGTASKD_ATTEMPT",
        "PGTASKD_GROUP_ID",
        "PGTASKD_WORKER_ID",
        "PGTASKD_NODE",
        "PASSED_ON",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {env}");
    }
    assert!(env.contains(&format!("PGTASKD_TASK_ID={id}")), "{env}");
    assert!(env.contains("PGTASKD_ATTEMPT=1"), "{env}");
    assert!(env.contains("PASSED_ON=passed-value-17"), "{env}");
    assert_eq!(names.len(), 10, "only the documented variables: {env}");
    assert!(!env.contains("sentinel-value-91"), "{env}");
    assert!(!env.contains(secret), "{env}");

    // `show` and the events of the task carry no secret either
    let show = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["show", &id.to_string()])
        .env("DATABASE_URL", &url)
        .output()
        .expect("show");
    assert!(show.status.success(), "{show:?}");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&show.stdout),
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(!shown.contains(secret), "{shown}");
    let leaked: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.event WHERE detail::text LIKE '%' || $1 || '%'",
            &[&secret],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(leaked, 0, "an event row holds the password");

    let log = node.stop();
    assert!(log.contains("42"), "the node logged something: {log}");
    assert!(!log.contains(secret), "the password is in the node's log");
}

#[tokio::test]
async fn http_tokens_guard_every_route_but_healthz() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let (read, write) = ("read-token-0123456789", "write-token-0123456789");
    let file = token_file(dir.path(), &format!("read {read}\nwrite {write}\n"));
    let (_node, base) = node_with_http(&db.url, 43, &["--http-token-file", &file]).await;
    wait_node_ready(&client, 43).await;
    let body = r#"{"command": ["true"]}"#;

    assert_eq!(request("GET", &format!("{base}/healthz"), None).0, 200);
    let (status, text) = request("GET", &format!("{base}/tasks"), None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("bearer token"), "{text}");
    assert_eq!(request("GET", &format!("{base}/metrics"), None).0, 401);
    assert_eq!(request("GET", &format!("{base}/status"), None).0, 401);
    assert_eq!(request("POST", &format!("{base}/tasks"), Some(body)).0, 401);
    assert_eq!(
        task_count(&client).await,
        0,
        "a refused request wrote nothing"
    );

    let with = |token: &str, method: &str, path: &str, body: Option<&str>| {
        request_with_token(method, &format!("{base}{path}"), token, body).0
    };
    assert_eq!(with("wrong-token-0123456789", "GET", "/tasks", None), 401);
    assert_eq!(with(read, "GET", "/tasks", None), 200);
    assert_eq!(with(read, "GET", "/metrics", None), 200);
    assert_eq!(with(read, "GET", "/status", None), 200);
    assert_eq!(with(read, "POST", "/tasks", Some(body)), 403);
    assert_eq!(task_count(&client).await, 0, "a read token wrote nothing");
    let created = with(write, "POST", "/tasks", Some(body));
    assert!((200..300).contains(&created), "{created}");
    assert_eq!(task_count(&client).await, 1);
    // the live output stream is a read
    let id: i64 = client
        .query_one("SELECT id FROM long_task.task", &[])
        .await
        .expect("the task")
        .get(0);
    let output = format!("/tasks/{id}/output");
    assert_eq!(request("GET", &format!("{base}{output}"), None).0, 401);
    assert_eq!(with(read, "GET", &output, None), 200);
    // the page is a shell that asks for a token and holds no data itself
    let (status, shell) = request("GET", &format!("{base}/"), None);
    assert_eq!(status, 200);
    assert!(
        shell.contains("sessionStorage") && !shell.contains("<table"),
        "{shell}"
    );
}

#[tokio::test]
async fn a_public_http_address_without_a_token_is_refused() {
    let (db, _client) = migrated_db().await;
    let addr = format!("0.0.0.0:{}", free_port());
    let stderr = refused_start(&["node", "--database-url", &db.url, "--http", &addr]);
    assert!(
        stderr.contains("`http`") && stderr.contains("token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_command_outside_the_groups_allow_list_is_refused_at_insert() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.group_settings (group_id, allowed_programs)
             VALUES (0, ARRAY['/usr/bin/*', 'true', '/opt/a+b/*'])",
        )
        .await
        .expect("list");
    let insert = |argv: &'static [&'static str], group: i32| {
        let client = &client;
        async move {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            client
                .execute(
                    "INSERT INTO long_task.task (command, state_id, group_id) VALUES ($1, 'AW', $2)",
                    &[&argv, &group],
                )
                .await
        }
    };
    insert(&["/usr/bin/env"], 0)
        .await
        .expect("allowed by /usr/bin/*");
    insert(&["true"], 0).await.expect("allowed by name");
    insert(&["/opt/a+b/run"], 0)
        .await
        .expect("metacharacters stand for themselves");
    insert(&["/bin/sh", "-c", "anything"], 1)
        .await
        .expect("group 1 has no list");
    assert_eq!(task_count(&client).await, 4);

    for refused in [
        &["/bin/sh", "-c", "rm -rf /"][..],
        &["/usr/bin/x/y"],       // `*` stays within one directory
        &["/usr/bin/../bin/sh"], // `..` is refused whenever a list is set
        &["/opt/aab/run"],       // `+` is not a regex quantifier
        &["sh"],
    ] {
        let err = insert(refused, 0).await.expect_err("refused");
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "42501", "{db:?}");
        assert!(
            db.message().contains(refused[0]) && db.message().contains("group 0"),
            "names the program and the group: {}",
            db.message()
        );
        assert!(
            db.detail().unwrap_or_default().contains("/usr/bin/*"),
            "names the list: {db:?}"
        );
    }
    assert_eq!(
        task_count(&client).await,
        4,
        "a refused insert writes nothing"
    );

    // the one write path of the CLI, HTTP and Rust clients meets the same check
    let err = client
        .query_one(
            "SELECT long_task.submit(p_command => ARRAY['/bin/sh'], p_group_id => 0)",
            &[],
        )
        .await
        .expect_err("refused");
    let message = err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message.as_deref().unwrap_or_default().contains("/bin/sh"),
        "{err:?}"
    );
    // a changed command too, and the row stays as it was
    let id: i64 = client
        .query_one("SELECT min(id) FROM long_task.task WHERE group_id = 0", &[])
        .await
        .expect("id")
        .get(0);
    let err = client
        .execute(
            "UPDATE long_task.task SET command = ARRAY['/bin/sh'] WHERE id = $1",
            &[&id],
        )
        .await
        .expect_err("refused");
    let message = err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .unwrap_or_default()
            .contains("not allowed"),
        "{err:?}"
    );
    let command: Vec<String> = client
        .query_one("SELECT command FROM long_task.task WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0);
    assert_eq!(command, ["/usr/bin/env"]);
    // moving a task into a group whose list refuses it
    let other: i64 = client
        .query_one("SELECT id FROM long_task.task WHERE group_id = 1", &[])
        .await
        .expect("id")
        .get(0);
    assert!(client
        .execute(
            "UPDATE long_task.task SET group_id = 0 WHERE id = $1",
            &[&other]
        )
        .await
        .is_err());

    // a clone schedule whose copy the list now refuses makes no copy and says so
    let scheduled: i64 = client
        .query_one(
            "INSERT INTO long_task.task (command, state_id, group_id, next_start, shed_period_id,
                                         shed_period_count, shed_clone)
             VALUES (ARRAY['/usr/bin/env'], 'DR', 0, now() - interval '1 second', 'MIN', 1, true)
             RETURNING id",
            &[],
        )
        .await
        .expect("a clone schedule")
        .get(0);
    client
        .batch_execute("UPDATE long_task.group_settings SET allowed_programs = ARRAY['true'] WHERE group_id = 0")
        .await
        .expect("narrow the list");
    let before = task_count(&client).await;
    client
        .query_one("SELECT fired FROM long_task.fire_schedules(0)", &[])
        .await
        .expect("fire");
    assert_eq!(task_count(&client).await, before, "no copy was made");
    let refused: Vec<String> = client
        .query(
            "SELECT detail FROM long_task.event WHERE kind = 'schedule_refused' AND task_id = $1",
            &[&scheduled],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        refused,
        ["program \"/usr/bin/env\" is not allowed in group 0"]
    );
}

#[tokio::test]
async fn run_as_runs_tasks_as_the_configured_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: switching users needs a node started as root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("users")
        .expect("a nobody user");
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let config = config_file(dir.path(), "run_as = \"nobody\"\n");
    let _node = NodeProcess::start(&db.url, 44, &["--config", &config]);
    wait_node_ready(&client, 44).await;

    let id = queue(&client, &["sh", "-c", "id -u; id -g; echo \"$USER $HOME\""]).await;
    wait_state(&client, id, "CS", LONG).await;
    let (_, _, out) = task_row(&client, id).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{out}");
    assert_eq!(lines[1], nobody.gid.to_string(), "{out}");
    assert_eq!(
        lines[2],
        format!("nobody {}", nobody.dir.display()),
        "{out}"
    );

    let file = out_dir.join("made-by-task");
    let id = queue(&client, &["touch", &file.display().to_string()]).await;
    wait_state(&client, id, "CS", LONG).await;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&file).expect("file").uid(),
        nobody.uid.as_raw()
    );
    // and it cannot write where only root may
    let id = queue(
        &client,
        &["touch", &dir.path().join("root-only").display().to_string()],
    )
    .await;
    wait_state(&client, id, "CF", LONG).await;
}

#[tokio::test]
async fn a_task_past_its_limits_ends_cf_naming_the_limit() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(
        dir.path(),
        "[task_limits]\nmemory = \"256MiB\"\ncpu_seconds = 1\n",
    );
    let _node = NodeProcess::start(&db.url, 45, &["--config", &config]);
    wait_node_ready(&client, 45).await;

    let spin = queue(&client, &["sh", "-c", "while :; do :; done"]).await;
    // allocate 1 GiB in one go: past the address-space limit
    let hog = queue(
        &client,
        &["perl", "-e", "my $x = 'x' x (1 << 30); print length $x"],
    )
    .await;
    let small = queue(
        &client,
        &["perl", "-e", "my $x = 'x' x (1 << 20); print length $x"],
    )
    .await;
    wait_state(&client, spin, "CF", LONG).await;
    wait_state(&client, hog, "CF", LONG).await;
    wait_state(&client, small, "CS", LONG).await;
    let (_, error, _) = task_row(&client, spin).await;
    let error = error.expect("error");
    assert!(
        error.contains("SIGXCPU") && error.contains("cpu_seconds = 1"),
        "{error}"
    );
    let (_, error, _) = task_row(&client, hog).await;
    let error = error.expect("error");
    assert!(error.contains("limit memory = 256"), "{error}");
    // the node keeps running tasks
    let after = queue(&client, &["true"]).await;
    wait_state(&client, after, "CS", LONG).await;
}

#[tokio::test]
async fn the_row_records_who_created_cancelled_and_requeued_it() {
    let (db, client) = migrated_db().await;
    let (alice, bob) = (format!("{}_alice", db.name), format!("{}_bob", db.name));
    for role in [&alice, &bob] {
        common::roles::login_role(&client, &db.url, role, &["pgtaskd_submitter"], None).await;
    }
    let as_alice = common::connect(&with_credentials(&db.url, Some(&alice), None)).await;
    let as_bob = common::connect(&with_credentials(&db.url, Some(&bob), None)).await;
    let by = |id: i64| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT created_by, changed_by FROM long_task.task WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("row");
            (
                row.get::<_, Option<String>>(0),
                row.get::<_, Option<String>>(1),
            )
        }
    };
    // a submitter cannot name the columns (the owner's own value would be overwritten)
    let (code, _) = common::roles::refused(
        as_alice
            .query_one(
                "INSERT INTO long_task.task (command, state_id, created_by, changed_by)
                 VALUES (ARRAY['sleep', '100'], 'AW', 'mallory', 'mallory') RETURNING id",
                &[],
            )
            .await,
        "forging created_by at insert",
    );
    assert_eq!(code, "42501");
    let forged: i64 = client
        .query_one(
            "INSERT INTO long_task.task (command, state_id, created_by) VALUES ('{true}', 'DR', 'mallory') RETURNING id",
            &[],
        )
        .await
        .expect("insert as the owner")
        .get(0);
    assert_eq!(by(forged).await.0.as_deref(), Some("postgres"));
    let id: i64 = as_alice
        .query_one(
            "INSERT INTO long_task.task (command, state_id) VALUES (ARRAY['sleep', '100'], 'AW') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    assert_eq!(by(id).await, (Some(alice.clone()), None));
    as_bob
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("cancel");
    assert_eq!(by(id).await, (Some(alice.clone()), Some(bob.clone())));
    // and cannot be forged later: a submitter may not even name those columns
    let (code, _) = common::roles::refused(
        as_bob
            .execute(
                "UPDATE long_task.task SET created_by = 'mallory', changed_by = 'mallory' WHERE id = $1",
                &[&id],
            )
            .await,
        "forging created_by",
    );
    assert_eq!(code, "42501");
    assert_eq!(by(id).await, (Some(alice.clone()), Some(bob.clone())));
    as_alice
        .query_one("SELECT long_task.requeue($1)", &[&id])
        .await
        .expect("requeue");
    assert_eq!(by(id).await, (Some(alice.clone()), Some(alice.clone())));
    // shown by `pgtaskd show`
    let show = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["show", &id.to_string(), "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("show");
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains(&format!("\"created_by\": \"{alice}\""))
            || shown.contains(&format!("\"created_by\":\"{alice}\"")),
        "{shown}"
    );
    drop((as_alice, as_bob));
    for role in [&alice, &bob] {
        client
            .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\";"))
            .await
            .expect("drop role");
    }
}
