//! One write path for every client: a task submitted by a plain INSERT, `long_task.submit`,
//! `publish`, `publish_bulk`, the CLI/HTTP library path and the Rust `Client` gets the same
//! defaults, and a cancel or re-queue has the same effect whichever client sends it.

mod common;

use common::migrated_db;
use pgtaskd::client::{Client, NewTask};
use pgtaskd::db::tasks::{self, Transition};
use tokio_postgres::Client as Pg;

async fn max_attempts(client: &Pg, id: i64) -> i32 {
    client
        .query_one(
            "SELECT max_attempts FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0)
}

/// The id of a task submitted to `group` by each client, in the same order as `CLIENTS`.
const CLIENTS: [&str; 6] = [
    "INSERT",
    "long_task.submit",
    "long_task.publish",
    "long_task.publish_bulk",
    "db::tasks::submit (CLI, HTTP)",
    "client::Client",
];

async fn one_of_each(db: &common::TestDb, client: &Pg, group: i32) -> Vec<i64> {
    let insert: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command) VALUES ($1, 'AW', '{true}') RETURNING id",
            &[&group],
        )
        .await
        .expect("insert")
        .get(0);
    let submit: i64 = client
        .query_one(
            "SELECT long_task.submit(p_command => '{true}', p_group_id => $1)",
            &[&group],
        )
        .await
        .expect("submit")
        .get(0);
    let publish: i64 = client
        .query_one("SELECT long_task.publish('t', p_group_id => $1)", &[&group])
        .await
        .expect("publish")
        .get(0);
    let bulk: i64 = client
        .query_one(
            "SELECT * FROM long_task.publish_bulk(ARRAY[ROW('t', NULL, NULL, NULL, NULL, NULL, NULL)::long_task.bulk_task], $1)",
            &[&group],
        )
        .await
        .expect("publish_bulk")
        .get(0);
    let library = tasks::submit(client, &NewTask::command(["true"]).group(group))
        .await
        .expect("library submit");
    let rust = Client::connect(&db.url)
        .await
        .expect("client")
        .submit(&NewTask::topic("t").group(group))
        .await
        .expect("client submit");
    vec![insert, submit, publish, bulk, library, rust]
}

#[tokio::test]
async fn every_client_gets_the_groups_max_attempts_by_default() {
    let (db, client) = migrated_db().await;
    client
        .execute(
            "INSERT INTO long_task.group_settings (group_id, max_attempts) VALUES (5, 3)",
            &[],
        )
        .await
        .expect("group setting");
    for (group, want) in [(0, 1), (5, 3)] {
        let ids = one_of_each(&db, &client, group).await;
        for (id, how) in ids.into_iter().zip(CLIENTS) {
            assert_eq!(
                max_attempts(&client, id).await,
                want,
                "{how} in group {group}"
            );
        }
    }
    // an explicit value wins everywhere
    let id = tasks::submit(
        &client,
        &NewTask::command(["true"]).group(5).max_attempts(7),
    )
    .await
    .expect("submit");
    assert_eq!(max_attempts(&client, id).await, 7);
}

async fn state_and_error(client: &Pg, id: i64) -> (String, Option<String>) {
    let r = client
        .query_one(
            "SELECT state_id::text, error FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn a_cancel_has_the_same_effect_from_every_client() {
    let (db, client) = migrated_db().await;
    let rust = Client::connect(&db.url).await.expect("client");
    let draft = || async {
        tasks::submit(
            &client,
            &NewTask {
                state_id: Some("DR".into()),
                ..NewTask::command(["true"])
            },
        )
        .await
        .expect("draft")
    };
    let (a, b, c) = (draft().await, draft().await, draft().await);
    client
        .query("SELECT * FROM long_task.cancel($1)", &[&a])
        .await
        .expect("SQL cancel");
    assert!(rust.cancel(b).await.expect("client cancel"));
    assert_eq!(
        tasks::cancel(&client, c).await.expect("library cancel"),
        Transition::Done {
            before: "DR".into(),
            after: "CC".into()
        }
    );
    let want = ("CC".to_owned(), Some("cancelled before start".to_owned()));
    for id in [a, b, c] {
        assert_eq!(state_and_error(&client, id).await, want, "task {id}");
    }

    // A waiting task ends CC at once, as by the reference UPDATE; a final one is refused and
    // left alone; an unknown id is not found.
    let waiting = tasks::submit(&client, &NewTask::command(["true"]))
        .await
        .expect("queue");
    assert!(rust.cancel(waiting).await.expect("cancel"));
    assert_eq!(state_and_error(&client, waiting).await, want);
    assert_eq!(
        tasks::cancel(&client, waiting).await.expect("again"),
        Transition::Refused("CC".into())
    );
    assert!(!rust.cancel(waiting).await.expect("again"));
    assert_eq!(
        tasks::cancel(&client, 987_654).await.expect("missing"),
        Transition::NotFound
    );

    // Re-queue: a final task goes back to AW with a clean outcome; a running one is refused.
    assert_eq!(
        tasks::requeue(&client, waiting).await.expect("requeue"),
        Transition::Done {
            before: "CC".into(),
            after: "AW".into()
        }
    );
    assert_eq!(state_and_error(&client, waiting).await, ("AW".into(), None));
    client
        .execute("SELECT * FROM long_task.claim(1, 0, 10)", &[])
        .await
        .expect("claim");
    assert_eq!(
        tasks::requeue(&client, waiting)
            .await
            .expect("requeue running"),
        Transition::Refused("AE".into())
    );
}

#[tokio::test]
async fn a_submit_refused_by_the_database_writes_nothing_and_says_why() {
    let (_db, client) = migrated_db().await;
    let err = client
        .query_one("SELECT long_task.submit(p_params => '{}')", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .expect("db")
            .message()
            .contains("needs a command or a topic"),
        "{err}"
    );
    let err = tasks::submit(&client, &NewTask::command(["true"]).depends_on([987_654]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("987654"), "{err}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
}
