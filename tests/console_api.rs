//! The console's JSON routes and reads without a browser: bad input refused by key, the write
//! scope required for changes (and nothing changed without it), keyset paging and combined
//! filters of `db::search`, the charts' sources (a task cancelled while waiting counts, the
//! coordinator's queue sample) and `sample_queue`'s term check.

mod common;

use std::time::Duration;

use common::http::{node_with_http, request, request_json, request_with_token, token_file};
use common::migrated_db;
use common::node::wait_node_ready;

#[tokio::test]
async fn the_console_routes_refuse_bad_input_and_need_the_write_scope() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let (read, write) = (
        "console-read-token-0123456789",
        "console-write-token-0123456789",
    );
    let file = token_file(dir.path(), &format!("read {read}\nwrite {write}\n"));
    let (_node, base) = node_with_http(&db.url, 32, &["--http-token-file", &file]).await;
    wait_node_ready(&client, 32).await;
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, priority) VALUES ('DR', '{true}', 1)
             RETURNING id",
            &[],
        )
        .await
        .expect("draft")
        .get(0);

    let call = |method: &str, path: &str, token: &str, body: Option<&str>| {
        request_with_token(method, &format!("{base}{path}"), token, body)
    };

    // the page itself is open (it holds no data); its data is not
    let (status, page) = request("GET", &format!("{base}/"), None);
    assert_eq!(status, 200);
    assert!(page.contains("id=\"main\"") && !page.contains("<script src"));
    assert_eq!(
        request_json("GET", &format!("{base}/tasks/search"), None).0,
        401
    );
    assert_eq!(request_json("GET", &format!("{base}/charts"), None).0, 401);

    // reads with a read token; bad input named by key
    let (s, body) = call("GET", "/tasks/search?state=DR", read, None);
    assert_eq!(s, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["tasks"][0]["id"], id);
    assert_eq!(page["next"], serde_json::Value::Null);
    for (path, key) in [
        ("/tasks/search?state=XX", "`state`"),
        ("/tasks/search?limit=0", "`limit`"),
        ("/tasks/search?from=yesterday", "`from`"),
        ("/tasks/search?colour=red", "colour"),
        ("/charts?minutes=100000", "`minutes`"),
        ("/tasks/x/detail", "not a task id"),
    ] {
        let (s, body) = call("GET", path, read, None);
        assert_eq!(s, 400, "{path}: {body}");
        assert!(body.contains(key), "{path}: {body}");
    }
    assert_eq!(call("GET", "/tasks/999999/detail", read, None).0, 404);
    let (s, body) = call("GET", "/charts?minutes=5", read, None);
    assert_eq!(s, 200, "{body}");

    // changes need the write scope, and nothing changes without it
    let prio = format!("/tasks/{id}/priority");
    assert_eq!(call("POST", &prio, read, Some(r#"{"priority": 5}"#)).0, 403);
    assert_eq!(
        call("POST", "/nodes/32/stop", read, Some(r#"{"stop": 1}"#)).0,
        403
    );
    assert_eq!(
        call(
            "POST",
            "/nodes/32/limit",
            read,
            Some(r#"{"max_task_count": 1}"#)
        )
        .0,
        403
    );
    let row = client
        .query_one(
            "SELECT t.priority, w.stop::int, w.max_task_count
               FROM long_task.task t, long_task.worker w WHERE t.id = $1 AND w.id = 32",
            &[&id],
        )
        .await
        .expect("rows");
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, i32>(2)
        ),
        (1, 0, 2),
        "priority, stop and limit as they were"
    );
    for (path, body, key) in [
        (prio.as_str(), r#"{"priority": "high"}"#, "`priority`"),
        (
            prio.as_str(),
            r#"{"priority": 1, "x": 1}"#,
            "unknown key `x`",
        ),
        ("/nodes/32/stop", r#"{"stop": 9}"#, "`stop`"),
        (
            "/nodes/32/limit",
            r#"{"max_task_count": -1}"#,
            "`max_task_count`",
        ),
    ] {
        let (s, answer) = call("POST", path, write, Some(body));
        assert_eq!(s, 400, "{path} {body}: {answer}");
        assert!(answer.contains(key), "{path} {body}: {answer}");
    }
    let (s, answer) = call("POST", &prio, write, Some(r#"{"priority": 5}"#));
    assert_eq!(s, 200, "{answer}");
    assert!(
        answer.contains("\"before\":1") && answer.contains("\"after\":5"),
        "{answer}"
    );
    assert_eq!(
        call("POST", "/nodes/999/stop", write, Some(r#"{"stop": 1}"#)).0,
        404
    );
    let (s, answer) = call("GET", &format!("/tasks/{id}/detail"), read, None);
    assert_eq!(s, 200, "{answer}");
    let detail: serde_json::Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(detail["task"]["priority"], 5);
    assert_eq!(detail["events"][0]["kind"], "priority");
    assert!(
        detail["events"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("1 -> 5 by ")),
        "{detail}"
    );
}

#[tokio::test]
async fn search_pages_by_keyset_and_filters_combine() {
    let (_db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO long_task.task (state_id, group_id, topic, command, params)
             SELECT 'DR', g % 2, CASE WHEN g % 3 = 0 THEN 'mail' END,
                    ARRAY['echo', 'job-' || g], jsonb_build_object('n', g)
               FROM generate_series(1, 25) g",
        )
        .await
        .expect("tasks");
    let q = |before: Option<i64>| pgtaskd::db::search::TaskQuery {
        group_id: Some(1),
        limit: 5,
        before,
        ..Default::default()
    };
    // group 1: the 13 odd ones, newest first, 5 per page, then 3
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = pgtaskd::db::search::search(&client, &q(before))
            .await
            .expect("page");
        seen.extend(page.tasks.iter().map(|t| t["id"].as_i64().expect("id")));
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 13, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let one = pgtaskd::db::search::search(
        &client,
        &pgtaskd::db::search::TaskQuery {
            topic: Some("mail".into()),
            text: Some("JOB-2".into()),
            limit: 50,
            ..Default::default()
        },
    )
    .await
    .expect("search");
    // job-21 and job-24 have topic mail and contain "job-2" (job-2 itself has no topic)
    let ids: Vec<String> = one
        .tasks
        .iter()
        .map(|t| t["command"][1].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["job-24", "job-21"]);
    let wild = pgtaskd::db::search::search(
        &client,
        &pgtaskd::db::search::TaskQuery {
            text: Some("%".into()),
            limit: 50,
            ..Default::default()
        },
    )
    .await
    .expect("search");
    assert!(wild.tasks.is_empty(), "a % is matched literally");
}

#[tokio::test]
async fn charts_count_a_cancel_before_start_and_the_coordinators_samples() {
    let (db, client) = migrated_db().await;
    let (_node, base) = node_with_http(&db.url, 34, &[]).await;
    wait_node_ready(&client, 34).await;
    // pinned to a node that does not exist: it waits until cancelled, and never runs
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, worker_id) VALUES ('AW', '{true}', 999)
             RETURNING id",
            &[],
        )
        .await
        .expect("task")
        .get(0);
    client
        .execute("SELECT long_task.cancel($1)", &[&id])
        .await
        .expect("cancel");
    let (status, charts) = request_json("GET", &format!("{base}/charts?minutes=5"), None);
    assert_eq!(status, 200, "{charts}");
    let finished = charts["finished"].as_array().expect("finished");
    assert!(
        finished.iter().any(|f| f["state"] == "CC" && f["n"] == 1),
        "a cancel before start has no attempt but counts: {charts}"
    );
    // the coordinator samples its group when its term starts, then once a minute
    common::node::wait_until(Duration::from_secs(30), || async {
        let (_, c) = request_json("GET", &format!("{base}/charts?minutes=5"), None);
        c["queue"].as_array().is_some_and(|q| !q.is_empty())
    })
    .await
    .expect("a queue sample");
    let term: i64 = client
        .query_one(
            "SELECT term FROM long_task.coordinator WHERE group_id = 0",
            &[],
        )
        .await
        .expect("term")
        .get(0);
    let stale: bool = client
        .query_one("SELECT long_task.sample_queue(0, $1)", &[&(term - 1)])
        .await
        .expect("sample")
        .get(0);
    assert!(!stale, "a superseded term writes no sample");
    let current: bool = client
        .query_one("SELECT long_task.sample_queue(0, $1)", &[&term])
        .await
        .expect("sample")
        .get(0);
    assert!(current);
    let samples: i64 = client
        .query_one(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM long_task.queue_sample
                                   GROUP BY group_id, at) x",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(samples, 1, "one row per group and minute");
}

#[tokio::test]
async fn a_recorded_change_names_its_real_author_and_only_known_kinds() {
    let (_db, client) = migrated_db().await;
    client
        .execute(
            "SELECT long_task.record_change('priority', 0, 1, NULL, NULL, '1 -> 2 by mallory')",
            &[],
        )
        .await
        .expect("recorded");
    let detail: String = client
        .query_one("SELECT detail FROM long_task.event", &[])
        .await
        .expect("event")
        .get(0);
    let me: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("role")
        .get(0);
    assert_eq!(
        detail,
        format!("1 -> 2 by mallory by {me}"),
        "the real role comes last"
    );
    let err = client
        .execute(
            "SELECT long_task.record_change('elected', 0, NULL, 1, NULL, 'x')",
            &[],
        )
        .await
        .expect_err("a coordinator's kind is not a person's change");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("unknown change kind")),
        "{err:?}"
    );
}
