//! Live output and following tasks against a real database and real nodes: the tails of a
//! running task reach its row (fenced by run id, without waking nodes), `pgtaskd logs -f`,
//! `pgtaskd wait` and `submit --wait/--follow` with their exit codes, and the HTTP output stream.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::cli::{code, pgtaskd, pgtaskd_async};
use common::node::{queue, state, wait_node_ready, wait_state, wait_until, NodeProcess};
use common::{listen, migrated_db};
use pgtaskd::db::codes::{group_channel, DONE_CHANNEL, OUTPUT_CHANNEL};
use pgtaskd::db::Notice;
use tokio::sync::mpsc;
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(20);
/// Prints a line, sleeps 3 s, prints another: the first must be visible while it runs.
const TWO_LINES: &str = "echo first; sleep 3; echo second";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn tails(client: &Client, id: i64) -> (String, Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT state_id::text, stdout_tail, stderr_tail FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("task exists");
    (row.get(0), row.get(1), row.get(2))
}

/// Everything that arrives within `window`.
async fn notices_within(rx: &mut mpsc::UnboundedReceiver<Notice>, window: Duration) -> Vec<Notice> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(n)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        got.push(n);
    }
    got
}

async fn node(url: &str, client: &Client, worker_id: i64) -> NodeProcess {
    let node = NodeProcess::start(url, worker_id, &["--max-tasks", "4"]);
    wait_node_ready(client, worker_id).await;
    node
}

#[tokio::test]
async fn record_output_is_fenced_by_run_id_and_wakes_no_node() {
    let (db, client) = migrated_db().await;
    let id = queue(&client, &["true"]).await;
    let run_id: uuid::Uuid = client
        .query_one("SELECT run_id FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim")
        .get(0);
    let group = group_channel(0);
    let (_listener, mut rx) = listen(&db.url, &[&group, OUTPUT_CHANNEL, DONE_CHANNEL]).await;
    let record = |run: uuid::Uuid, out: Option<&'static str>, err: Option<&'static str>| {
        let client = &client;
        async move {
            let ids: Vec<i64> = client
                .query(
                    "SELECT id FROM long_task.record_output($1, $2, $3, $4)",
                    &[&vec![id], &vec![run], &vec![out], &vec![err]],
                )
                .await
                .expect("record_output")
                .iter()
                .map(|r| r.get(0))
                .collect();
            ids
        }
    };

    let stale = uuid::Uuid::new_v4();
    assert!(record(stale, Some("stale"), Some("stale")).await.is_empty());
    assert_eq!(
        tails(&client, id).await,
        ("AE".into(), None, None),
        "a stale run id writes nothing"
    );

    assert_eq!(record(run_id, Some("one"), None).await, vec![id]);
    assert_eq!(
        tails(&client, id).await,
        ("AE".into(), Some("one".into()), None)
    );
    assert_eq!(record(run_id, None, Some("err")).await, vec![id]);
    assert_eq!(
        tails(&client, id).await,
        ("AE".into(), Some("one".into()), Some("err".into())),
        "a NULL tail leaves that stream as it is"
    );
    let got = notices_within(&mut rx, Duration::from_millis(500)).await;
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|n| (n.channel.as_str(), n.payload.as_str()))
        .collect();
    let id_text = id.to_string();
    assert_eq!(
        seen,
        vec![
            (OUTPUT_CHANNEL, id_text.as_str()),
            (OUTPUT_CHANNEL, id_text.as_str())
        ],
        "one output notification per write, nothing on the group's channel"
    );

    // the run ends: its outcome is final, a late flush of the same run changes nothing
    client
        .execute(
            "SELECT * FROM long_task.finish_runs($1, $2, '{CS}', '{NULL}', '{0}', '{NULL}', '{final}', '{NULL}')",
            &[&vec![id], &vec![run_id]],
        )
        .await
        .expect("finish");
    assert!(record(run_id, Some("late"), None).await.is_empty());
    assert_eq!(
        tails(&client, id).await,
        ("CS".into(), Some("final".into()), None)
    );
    let got = notices_within(&mut rx, Duration::from_millis(500)).await;
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|n| (n.channel.as_str(), n.payload.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![(DONE_CHANNEL, id_text.as_str())],
        "the end is announced to followers, and the late flush says nothing"
    );
}

#[tokio::test]
async fn a_running_tasks_output_is_live_and_logs_follow_prints_it_all() {
    let (db, client) = migrated_db().await;
    let _node = node(&db.url, &client, 1).await;
    let id = queue(
        &client,
        &["sh", "-c", &format!("{TWO_LINES}; echo oops >&2; exit 3")],
    )
    .await;
    let follow = {
        let url = db.url.clone();
        tokio::spawn(async move { pgtaskd_async(&url, &["logs", "-f", &id.to_string()]).await })
    };
    let live = wait_until(LONG, || async {
        tails(&client, id).await == ("AE".into(), Some("first".into()), None)
    })
    .await;
    if live.is_err() {
        panic!(
            "no first line while running: {:?}",
            tails(&client, id).await
        );
    }
    assert_eq!(state(&client, id).await, "AE", "still running");

    let out = follow.await.expect("logs -f");
    assert_eq!(
        code(&out),
        3,
        "the task's exit code; stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "first\nsecond\n");
    let err = text(&out.stderr);
    assert!(err.starts_with("oops\n"), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");

    // a finished task: logs -f prints its tails and exits at once
    let out = pgtaskd(&db.url, &["logs", "-f", &id.to_string()]);
    assert_eq!(
        (code(&out), text(&out.stdout)),
        (3, "first\nsecond\n".into())
    );
    let out = pgtaskd(&db.url, &["logs", "-f", "999999"]);
    assert_eq!(code(&out), 3, "no such task");
    assert!(text(&out.stderr).contains("no task with id 999999"));
}

#[tokio::test]
async fn wait_returns_the_documented_codes() {
    let (db, client) = migrated_db().await;
    let _node = node(&db.url, &client, 1).await;
    let ok = queue(&client, &["sh", "-c", "sleep 1"]).await;
    let failed = queue(&client, &["sh", "-c", "sleep 1; exit 7"]).await;
    let (ok_s, failed_s) = (ok.to_string(), failed.to_string());

    let out = pgtaskd_async(&db.url, &["wait", &ok_s]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{ok} CS exit 0\n"));

    let out = pgtaskd_async(&db.url, &["wait", &ok_s, &failed_s]).await;
    assert_eq!(
        code(&out),
        7,
        "the failure's exit code: {}",
        text(&out.stderr)
    );
    let out = pgtaskd(&db.url, &["wait", &ok_s, &failed_s, "--json"]);
    assert_eq!(code(&out), 7);
    let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(statuses[1]["state_id"], "CF");
    assert_eq!(statuses[1]["exit_code"], 7);

    let long = queue(&client, &["sleep", "30"]).await;
    wait_state(&client, long, "AE", LONG).await;
    let started = std::time::Instant::now();
    let out = pgtaskd_async(&db.url, &["wait", &long.to_string(), "--timeout", "1s"]).await;
    assert_eq!(code(&out), 124, "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        text(&out.stderr).contains(&format!("{long} AE")),
        "{}",
        text(&out.stderr)
    );

    // a cancel while waited for: notification-driven, 125
    let waiting = {
        let url = db.url.clone();
        let long = long.to_string();
        tokio::spawn(async move { pgtaskd_async(&url, &["wait", &long]).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(code(&pgtaskd(&db.url, &["cancel", &long.to_string()])), 0);
    let cancelled = std::time::Instant::now();
    let out = waiting.await.expect("wait");
    assert_eq!(code(&out), 125, "cancelled: {}", text(&out.stderr));
    // the kill takes up to kill_grace (500 ms); a waiter reading every 5 s would take longer
    assert!(
        cancelled.elapsed() < Duration::from_secs(3),
        "woken by the done notification, not the 5 s re-read: {:?}",
        cancelled.elapsed()
    );

    let out = pgtaskd(&db.url, &["wait", &ok_s, "424242"]);
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("no task with id 424242"));
}

/// The backends of `pgtaskd wait`/`logs -f` followers now connected (application_name
/// `pgtaskd cli …`), counted once they sent a query: a connection is made by then.
async fn follower_backends(client: &Client, purpose: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1
                AND query <> ''",
            &[&format!("pgtaskd {purpose}")],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A follower outlives its connection (a failover, a restart, a terminated backend): `wait` and
/// `logs -f` connect again, LISTEN again and still end with the task's code.
#[tokio::test]
async fn wait_and_logs_follow_through_a_lost_connection() {
    let (db, client) = migrated_db().await;
    // no node: the task waits until the test cancels it
    let id = queue(&client, &["true"]).await;
    let waiting = {
        let (url, id) = (db.url.clone(), id.to_string());
        tokio::spawn(async move { pgtaskd_async(&url, &["wait", &id]).await })
    };
    let following = {
        let (url, id) = (db.url.clone(), id.to_string());
        tokio::spawn(async move { pgtaskd_async(&url, &["logs", "-f", &id]).await })
    };
    let both = async || {
        let mut pids = follower_backends(&client, "cli wait").await;
        pids.extend(follower_backends(&client, "cli logs").await);
        pids
    };
    let started = std::time::Instant::now();
    let first = loop {
        let pids = both().await;
        if pids.len() == 2 {
            break pids;
        }
        assert!(
            started.elapsed() < LONG,
            "both followers connected: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
            &[&first],
        )
        .await
        .expect("terminate the followers' backends");
    let terminated = std::time::Instant::now();
    loop {
        let again = both().await;
        if again.len() == 2 && again.iter().all(|pid| !first.contains(pid)) {
            break;
        }
        assert!(
            terminated.elapsed() < LONG,
            "both followers connected again: {again:?} (were {first:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("cancel");
    for (verb, out) in [("wait", waiting), ("logs -f", following)] {
        let out = out.await.expect("follower ran");
        assert_eq!(
            code(&out),
            125,
            "{verb} ends with the cancel's code: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn submit_wait_and_follow() {
    let (db, client) = migrated_db().await;
    let _node = node(&db.url, &client, 1).await;
    let out = pgtaskd_async(&db.url, &["submit", "--wait", "--", "sh", "-c", "exit 5"]).await;
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].ends_with("CF exit 5: exited with code 5"),
        "{lines:?}"
    );

    let out = pgtaskd_async(
        &db.url,
        &[
            "submit",
            "--follow",
            "--",
            "sh",
            "-c",
            "echo a; sleep 1; echo b",
        ],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\nb\n");

    let out = pgtaskd(
        &db.url,
        &[
            "submit",
            "--wait",
            "--wait-timeout",
            "1s",
            "--",
            "sleep",
            "20",
        ],
    );
    assert_eq!(code(&out), 124, "{}", text(&out.stderr));
}

#[tokio::test]
async fn the_http_output_stream_delivers_the_lines_until_the_end() {
    let (db, client) = migrated_db().await;
    let (_node, base) = common::http::node_with_http(&db.url, 1, &[]).await;
    wait_node_ready(&client, 1).await;
    let (status, _) = common::http::request("GET", &format!("{base}/tasks/999999/output"), None);
    assert_eq!(status, 404);

    // a draft: the stream is open before the task starts
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('DR', ARRAY['sh', '-c', $1])
             RETURNING id",
            &[&TWO_LINES],
        )
        .await
        .expect("a draft")
        .get(0);
    let url = format!("{base}/tasks/{id}/output");
    let reader = tokio::task::spawn_blocking(move || {
        let resp = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build()
            .get(&url)
            .call()
            .expect("the stream answers");
        assert_eq!(resp.content_type(), "text/event-stream");
        // (when each line arrived, the event) until the end
        let started = std::time::Instant::now();
        let mut events = Vec::new();
        let (mut name, mut data) = (String::new(), Vec::new());
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.expect("a line");
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_owned());
            } else if line.is_empty() && !name.is_empty() {
                events.push((
                    started.elapsed(),
                    std::mem::take(&mut name),
                    data.join("\n"),
                ));
                data.clear();
            } // else a comment line (`: still running`) or the end of one
        }
        events
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .execute("SELECT long_task.requeue($1)", &[&id])
        .await
        .expect("start the draft");
    let events = reader.await.expect("read the stream");
    let stdout: String = events
        .iter()
        .filter(|e| e.1 == "stdout")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(stdout, "first\nsecond", "{events:?}");
    let first = events
        .iter()
        .find(|e| e.1 == "stdout")
        .expect("a stdout event");
    assert_eq!(
        first.2, "first",
        "the first line alone, while the task ran: {events:?}"
    );
    let end = events.last().expect("events");
    assert_eq!(end.1, "end", "{events:?}");
    assert!(end.2.contains("\"state_id\":\"CS\""), "{events:?}");
    assert!(
        end.0 >= first.0 + Duration::from_secs(2),
        "the first line came while the task ran: {events:?}"
    );
}

#[tokio::test]
async fn a_task_that_prints_a_lot_is_flushed_at_a_bounded_rate() {
    let (db, client) = migrated_db().await;
    let _node = node(&db.url, &client, 1).await;
    let (_listener, mut rx) = listen(&db.url, &[OUTPUT_CHANNEL]).await;
    // ~2.5 s of bursts of 20,000 lines: far more than tail_lines (20) between two rounds
    let id = queue(
        &client,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 25); do seq 1 20000; sleep 0.1; done",
        ],
    )
    .await;
    let started = std::time::Instant::now();
    wait_state(&client, id, "CS", Duration::from_secs(60)).await;
    let ran = started.elapsed();
    let flushes = notices_within(&mut rx, Duration::from_millis(300))
        .await
        .iter()
        .filter(|n| n.payload == id.to_string())
        .count();
    println!("500,000 lines in {ran:?}: {flushes} live-output writes");
    assert!(flushes >= 2, "live output while it ran: {flushes}");
    let bound = (ran.as_secs_f64() / 0.1).ceil() as usize + 1;
    assert!(
        flushes <= bound,
        "at most one round per 100 ms: {flushes} writes in {ran:?}"
    );
    let (_, stdout, _) = tails(&client, id).await;
    let want: Vec<String> = (19_981..=20_000).map(|i| i.to_string()).collect();
    assert_eq!(
        stdout,
        Some(want.join("\n")),
        "the final tail is the outcome's"
    );
}

#[tokio::test]
async fn logs_follow_prints_every_attempt_of_a_retried_task() {
    let (db, client) = migrated_db().await;
    let _node = node(&db.url, &client, 1).await;
    // the last line of each attempt comes right before its exit, after any live flush
    let script =
        "echo \"start $PGTASKD_ATTEMPT\"; sleep 1.5; echo \"end $PGTASKD_ATTEMPT\"; exit 4";
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, max_attempts, retry_base)
             VALUES ('AW', ARRAY['sh', '-c', $1], 2, 0) RETURNING id",
            &[&script],
        )
        .await
        .expect("queue")
        .get(0);
    let out = pgtaskd_async(&db.url, &["logs", "-f", &id.to_string()]).await;
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "start 1\nend 1\nstart 2\nend 2\n");
    assert!(
        text(&out.stderr).contains(&format!("task {id}: attempt 2")),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn output_streams_are_bounded_per_node_and_end_when_the_client_goes() {
    let (db, client) = migrated_db().await;
    let (_node, base) = common::http::node_with_http(&db.url, 1, &[]).await;
    wait_node_ready(&client, 1).await;
    let id = queue(&client, &["sleep", "60"]).await;
    wait_state(&client, id, "AE", LONG).await;
    let url = format!("{base}/tasks/{id}/output");
    let streams = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(15))
            .build();
        let open: Vec<ureq::Response> = (0..16)
            .map(|i| {
                agent
                    .get(&url)
                    .call()
                    .unwrap_or_else(|e| panic!("stream {i}: {e}"))
            })
            .collect();
        let refused = match agent.get(&url).call() {
            Err(ureq::Error::Status(code, _)) => code,
            other => panic!("a 17th stream: {:?}", other.map(|r| r.status())),
        };
        (open, refused)
    })
    .await
    .expect("open the streams");
    let (open, refused) = streams;
    assert_eq!(refused, 503, "16 streams at most");
    let sessions = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name LIKE '%http output%'",
                &[],
            )
            .await
            .expect("sessions")
            .get::<_, i64>(0)
    };
    assert_eq!(sessions().await, 16, "one follower connection per stream");
    drop(open); // the clients go away: their followers end, and a new stream opens
    let freed = wait_until(Duration::from_secs(15), || async { sessions().await == 0 }).await;
    assert!(freed.is_ok(), "followers left: {}", sessions().await);
    let (status, _) = tokio::task::spawn_blocking({
        let url = format!("{base}/tasks/{id}/output");
        move || {
            let resp = ureq::get(&url).call().expect("a stream again");
            (resp.status(), ())
        }
    })
    .await
    .expect("reopen");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn full_output_is_captured_up_to_the_cap_and_served_by_the_node_that_ran_it() {
    use std::os::unix::fs::PermissionsExt;
    let (db, client) = migrated_db().await;
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = state.path().display().to_string();
    let (_node, base) = common::http::node_with_http(
        &db.url,
        1,
        &["--state-dir", &state_dir, "--output-capture-bytes", "2000"],
    )
    .await;
    wait_node_ready(&client, 1).await;
    let small = queue(&client, &["seq", "1", "100"]).await;
    let big = queue(&client, &["sh", "-c", "seq 1 1000; echo err >&2"]).await;
    wait_state(&client, small, "CS", LONG).await;
    wait_state(&client, big, "CS", LONG).await;

    let (status, text) =
        common::http::request("GET", &format!("{base}/tasks/{small}/output/full"), None);
    assert_eq!(status, 200, "{text}");
    let all: String = (1..=100).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, all, "every line, not the 20 of the tail");
    let (_, tail, _) = tails(&client, small).await;
    assert_eq!(tail.expect("a tail").lines().count(), 20);

    let (status, text) = common::http::request(
        "GET",
        &format!("{base}/tasks/{big}/output/full?attempt=1"),
        None,
    );
    assert_eq!(status, 200);
    let seq: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        text,
        format!(
            "{}\n[pgtaskd: output capture stopped at 2000 bytes]\n",
            &seq[..2000]
        ),
        "the cap, then a line saying so"
    );
    let (status, text) = common::http::request(
        "GET",
        &format!("{base}/tasks/{big}/output/full?stream=stderr"),
        None,
    );
    assert_eq!((status, text.as_str()), (200, "err\n"));

    for (path, want) in [
        (format!("/tasks/{big}/output/full?attempt=2"), 404),
        ("/tasks/999999/output/full".to_owned(), 404),
        (format!("/tasks/{big}/output/full?stream=both"), 400),
        (format!("/tasks/{big}/output/full?colour=red"), 400),
    ] {
        assert_eq!(
            common::http::request("GET", &format!("{base}{path}"), None).0,
            want,
            "{path}"
        );
    }
    // the files: under the node's state dir, readable by its user only
    let files: Vec<_> = common::walk(state.path())
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "stdout" || e == "stderr")
        })
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}
