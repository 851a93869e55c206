//! The web console in a real headless Chromium, driven over the DevTools protocol
//! (`common::browser`): each view loads with data, a filter narrows the list, the actions change
//! the rows (and leave events), a running task's output appears as the row holds it, the charts
//! show what happened, and a read token cannot act. Screenshots go to
//! `target/console-screenshots/`. The JSON routes without a browser: tests/console_api.rs.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::http::{node_with_http, token_file};
use common::migrated_db;
use common::node::{queue, wait_node_ready, wait_state, wait_until};
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(30);
const NODE: i64 = 31;

/// Clicks `selector`, then the confirm dialog's button (after typing `value` into its field).
fn confirm_action(b: &mut Browser, selector: &str, value: Option<&str>) {
    let sel = serde_json::to_string(selector).expect("json");
    b.wait_for(selector, &format!("document.querySelector({sel})"), LONG);
    b.eval(&format!("document.querySelector({sel}).click()"));
    b.wait_for(
        "the confirm dialog",
        "document.getElementById('confirm').open",
        LONG,
    );
    if let Some(v) = value {
        let v = serde_json::to_string(v).expect("json");
        b.eval(&format!(
            "document.getElementById('confirm-input').value = {v}"
        ));
    }
    b.eval("document.getElementById('confirm-ok').click()");
    let said = b.wait_for(
        "the console's answer",
        "document.getElementById('flash').innerText",
        LONG,
    );
    assert!(
        b.eval("document.getElementById('flash').className") == "ok",
        "{selector}: the console said {said}"
    );
    eprintln!("{selector}: {said}");
}

/// Opens a task's page and waits until it shows that task (a fragment change keeps the previous
/// page until the new one is read).
fn open_task(b: &mut Browser, base: &str, id: i64) {
    b.goto(&format!("{base}/#/task/{id}"));
    b.wait_for(
        &format!("task {id}'s page"),
        &format!("document.querySelector('#task-title[data-task-id=\"{id}\"]')"),
        LONG,
    );
}

async fn stdout_tail(client: &Client, id: i64) -> Option<String> {
    client
        .query_one(
            "SELECT stdout_tail FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0)
}

async fn events(client: &Client, kind: &str) -> Vec<String> {
    client
        .query(
            "SELECT coalesce(detail, '') FROM long_task.event WHERE kind = $1 ORDER BY id",
            &[&kind],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_headless_browser() {
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, NODE, &["--node-name", "console-node"]).await;
    wait_node_ready(&client, NODE).await;

    // the data: one success, one failure, one that streams output, one to cancel, a draft, and a
    // task depending on the success
    let ok = queue(&client, &["true"]).await;
    let failed = queue(&client, &["sh", "-c", "echo disk full >&2; exit 3"]).await;
    wait_state(&client, ok, "CS", LONG).await;
    wait_state(&client, failed, "CF", LONG).await;
    // prints a line, waits for the test's go, prints another: both must reach the page live
    let go_dir = tempfile::tempdir().expect("dir");
    let go = go_dir.path().join("go");
    let script = format!(
        "echo hello from the task; while [ ! -e {} ]; do sleep 0.1; done; echo second line; sleep 60",
        go.display()
    );
    let streaming = queue(&client, &["sh", "-c", &script]).await;
    let victim = queue(&client, &["sleep", "61"]).await;
    wait_state(&client, streaming, "AE", LONG).await;
    wait_state(&client, victim, "AE", LONG).await;
    let draft: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, depends_on) VALUES ('DR', '{true}', $1)
             RETURNING id",
            &[&vec![ok]],
        )
        .await
        .expect("draft")
        .get(0);

    // the overview: the node, the queues, the charts
    b.goto(&format!("{base}/"));
    b.wait_for(
        "the node row",
        &format!("document.querySelector('#nodes tr[data-node-id=\"{NODE}\"]')"),
        LONG,
    );
    let text = b.eval("document.getElementById('main').innerText");
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("console-node"), "{text}");
    assert!(
        !text.contains("null") && !text.contains("undefined") && !text.contains("[object"),
        "no value shown raw: {text}"
    );
    b.wait_for(
        "attempts in the started chart",
        "document.querySelector('#chart-started').dataset.points > 0",
        LONG,
    );
    b.wait_for(
        "a failure in the finished chart",
        "document.querySelector('#chart-finished rect[data-key=\"CF\"]')",
        LONG,
    );
    b.wait_for(
        "the coordinator's queue sample",
        "document.querySelector('#chart-queue').dataset.points > 0",
        LONG,
    );
    assert!(
        b.eval("document.querySelectorAll('script[src], link[href]').length") == 0,
        "self-contained"
    );

    // the list, then a filter that narrows it
    b.goto(&format!("{base}/#/tasks"));
    b.wait_for(
        "every task in the list",
        "document.querySelectorAll('#tasks tr.task').length === 5",
        LONG,
    );
    b.eval("document.querySelector('#filters input[value=\"CF\"]').click()");
    b.eval("document.getElementById('apply').click()");
    let shown = b.wait_for(
        "only the failed task",
        "document.querySelectorAll('#tasks tr.task').length === 1 && \
         document.querySelector('#tasks tr.task').dataset.taskId",
        LONG,
    );
    assert_eq!(shown.as_str(), Some(failed.to_string().as_str()));
    b.goto(&format!("{base}/#/tasks?q=hello+from"));
    b.wait_for(
        "the text filter",
        &format!(
            "document.querySelectorAll('#tasks tr.task').length === 1 && \
             document.querySelector('#tasks tr.task').dataset.taskId === '{streaming}'"
        ),
        LONG,
    );
    b.goto(&format!("{base}/#/tasks"));
    b.wait_for(
        "the list again",
        "document.querySelectorAll('#tasks tr.task').length === 5",
        LONG,
    );
    b.screenshot("tasks.png");

    // a failed task: its attempt, exit code and stderr
    open_task(&mut b, &base, failed);
    b.wait_for(
        "the failed attempt",
        "document.querySelector('#runs tr.run td:nth-child(6)').innerText === '3'",
        LONG,
    );
    let stderr = b.eval("document.getElementById('stderr').innerText");
    assert!(
        stderr.as_str().unwrap_or_default().contains("disk full"),
        "{stderr}"
    );

    // a running task's output, flushed to its row by the node while it runs (live output)
    open_task(&mut b, &base, streaming);
    b.wait_for("the task page", "document.getElementById('stdout')", LONG);
    wait_until(LONG, || async {
        stdout_tail(&client, streaming)
            .await
            .is_some_and(|t| t.contains("hello from the task"))
    })
    .await
    .expect("the node wrote the running task's tail");
    b.wait_for(
        "the output on the page, without a reload",
        "document.getElementById('stdout').innerText.indexOf('hello from the task') >= 0 && \
         document.querySelector('.output .live')",
        LONG,
    );
    // and a later line shows up by itself (the node flushes it, the page re-reads the row)
    std::fs::write(&go, "").expect("go");
    b.wait_for(
        "the next line",
        "document.getElementById('stdout').innerText.indexOf('second line') >= 0",
        LONG,
    );
    b.screenshot("task-running.png");

    // cancel from the console: the row ends CC (its node killed it), an event says who
    open_task(&mut b, &base, victim);
    confirm_action(&mut b, "button[data-action=cancel]", None);
    wait_state(&client, victim, "CC", LONG).await;
    b.wait_for(
        "the cancel event on the page",
        "document.querySelector('#events tr.event[data-kind=\"cancel\"]')",
        LONG,
    );
    let cancels = events(&client, "cancel").await;
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert!(cancels[0].starts_with("AE -> AC by "), "{cancels:?}");

    // change a priority, then run the draft now
    open_task(&mut b, &base, draft);
    b.wait_for(
        "the draft's dependency",
        &format!("document.querySelector('ul.deps li[data-task-id=\"{ok}\"]')"),
        LONG,
    );
    confirm_action(&mut b, "button[data-action=priority]", Some("-7"));
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT priority FROM long_task.task WHERE id = $1",
                &[&draft],
            )
            .await
            .expect("row")
            .get::<_, i32>(0)
            == -7
    })
    .await
    .expect("the priority changed");
    assert_eq!(events(&client, "priority").await.len(), 1);
    b.wait_for(
        "the page after the change",
        "document.querySelector('#task-title') && document.querySelector('button[data-action=run]')",
        LONG,
    );
    confirm_action(&mut b, "button[data-action=run]", None);
    wait_state(&client, draft, "CS", LONG).await;
    assert_eq!(events(&client, "requeue").await.len(), 1);

    // the task that depends on `ok` lists it; `ok` lists its dependent
    open_task(&mut b, &base, ok);
    b.wait_for(
        "the dependent",
        &format!("document.querySelector('ul.deps li[data-task-id=\"{draft}\"]')"),
        LONG,
    );

    // node actions: pause, then change the limit
    b.goto(&format!("{base}/#/"));
    confirm_action(
        &mut b,
        &format!("button[data-action=pause][data-node-id=\"{NODE}\"]"),
        None,
    );
    let node_row = |c: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    &format!("SELECT {c}::int FROM long_task.worker WHERE id = $1"),
                    &[&NODE],
                )
                .await
                .expect("worker")
                .get::<_, i32>(0)
        }
    };
    wait_until(LONG, || async { node_row("stop").await == 1 })
        .await
        .expect("paused");
    b.wait_for(
        "the paused node",
        &format!("document.querySelector('button[data-action=resume][data-node-id=\"{NODE}\"]')"),
        LONG,
    );
    confirm_action(
        &mut b,
        &format!("button[data-action=resume][data-node-id=\"{NODE}\"]"),
        None,
    );
    wait_until(LONG, || async { node_row("stop").await == 0 })
        .await
        .expect("resumed");
    b.wait_for(
        "the resumed node",
        &format!("document.querySelector('button[data-action=limit][data-node-id=\"{NODE}\"]')"),
        LONG,
    );
    confirm_action(
        &mut b,
        &format!("button[data-action=limit][data-node-id=\"{NODE}\"]"),
        Some("6"),
    );
    wait_until(LONG, || async { node_row("max_task_count").await == 6 })
        .await
        .expect("the limit changed");
    assert_eq!(events(&client, "node_stop").await.len(), 2);
    let limits = events(&client, "node_limit").await;
    assert!(
        limits.len() == 1 && limits[0].starts_with("2 -> 6 by "),
        "{limits:?}"
    );

    // the charts show the cancel and the running task's start; this is the README's picture
    b.goto(&format!("{base}/#/tasks"));
    b.goto(&format!("{base}/#/"));
    b.wait_for(
        "the cancel in the finished chart",
        "document.querySelector('#chart-finished rect[data-key=\"CC\"]')",
        LONG,
    );
    b.wait_for(
        "the limit on the page",
        &format!(
            "document.querySelector('#nodes tr[data-node-id=\"{NODE}\"]').innerText.indexOf('/ 6') >= 0"
        ),
        LONG,
    );
    b.screenshot("overview.png");

    client
        .execute("SELECT long_task.cancel($1)", &[&streaming])
        .await
        .expect("cancel");
    wait_state(&client, streaming, "CC", LONG).await;

    // hand the node's tasks over (it runs none now): it claims nothing, the event says so
    b.goto(&format!("{base}/#/"));
    confirm_action(
        &mut b,
        &format!("button[data-action=hand-over][data-node-id=\"{NODE}\"]"),
        None,
    );
    wait_until(LONG, || async { node_row("stop").await == 1 })
        .await
        .expect("handed over");
    let handed = events(&client, "node_hand_over").await;
    assert!(
        handed.len() == 1 && handed[0].starts_with("kill: 0 re-queued, "),
        "{handed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_everything_and_changes_nothing() {
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let token = "console-only-reads-0123456789";
    let file = token_file(dir.path(), &format!("read {token}\n"));
    let (_node, base) = node_with_http(&db.url, 33, &["--http-token-file", &file]).await;
    wait_node_ready(&client, 33).await;
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('DR', '{true}') RETURNING id",
            &[],
        )
        .await
        .expect("draft")
        .get(0);

    // without a token: the prompt, no data
    b.goto(&format!("{base}/#/task/{id}"));
    b.wait_for(
        "the token prompt",
        "document.getElementById('token-form')",
        LONG,
    );
    // with one, from the link's fragment (which the page then removes from the address bar)
    b.goto(&format!("{base}/#token={token}"));
    b.wait_for(
        "the overview with the token",
        "document.querySelector('#nodes tr[data-node-id=\"33\"]')",
        LONG,
    );
    assert_eq!(b.eval("location.hash"), "#/");
    open_task(&mut b, &base, id);
    b.eval("document.querySelector('button[data-action=cancel]').click()");
    b.wait_for(
        "the confirm dialog",
        "document.getElementById('confirm').open",
        LONG,
    );
    b.eval("document.getElementById('confirm-ok').click()");
    let said = b.wait_for(
        "the refusal",
        "document.getElementById('flash').className === 'bad' && \
         document.getElementById('flash').innerText",
        LONG,
    );
    assert!(
        said.as_str().unwrap_or_default().contains("write token"),
        "{said}"
    );
    assert_eq!(
        common::node::state(&client, id).await,
        "DR",
        "nothing changed"
    );
    assert!(events(&client, "cancel").await.is_empty());
}
