//! Cron schedules (`shed_cron`, `shed_timezone`; `src/cron.rs`, `long_task.due_crons`,
//! `long_task.fire_crons`) against a real PostgreSQL and real nodes: the database refuses what it
//! can tell is wrong at INSERT/UPDATE; an UPDATE setting `shed_cron` starts the schedule and wakes
//! the coordinator at once; an expression only the Scheduler can refuse is recorded and stopped;
//! the CLI and the HTTP API submit cron tasks; and a `*/1 * * * * *` schedule fires exactly once
//! per second slot across a coordinator killed at a firing moment, and an outage of every node
//! ends in one late firing, not a burst.

mod common;

use std::time::Duration;

use common::cli::{code, pgtaskd};
use common::http::{node_with_http, request_json};
use common::node::{wait_coordinator, wait_node_ready, wait_until, NodeProcess};
use common::{listen, migrated_db};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

async fn insert_err(client: &tokio_postgres::Client, cron: &str, tz: Option<&str>) -> String {
    let e = client
        .execute(
            "INSERT INTO long_task.task (state_id, command, shed_cron, shed_timezone)
             VALUES ('DR', '{true}', $1, $2)",
            &[&cron, &tz],
        )
        .await
        .expect_err("refused");
    e.as_db_error()
        .expect("a database error")
        .message()
        .to_owned()
}

async fn clones(client: &tokio_postgres::Client, parent: i64) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE shed_parent_id = $1",
            &[&parent],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn the_database_refuses_a_malformed_cron_row_and_an_update_setting_cron_starts_it() {
    let (db, client) = migrated_db().await;
    for (cron, tz, says) in [
        ("* * * *", None, "malformed cron expression"),
        ("* * * * * * *", None, "malformed cron expression"),
        ("* * * * ;", None, "malformed cron expression"),
        ("", None, "malformed cron expression"),
        ("* * * * *", Some("Europe/Berlinn"), "unknown time zone"),
        ("* * * * *", Some("europe/berlin"), "unknown time zone"),
    ] {
        let message = insert_err(&client, cron, tz).await;
        assert!(message.contains(says), "{cron:?} {tz:?}: {message}");
    }
    let both = client
        .execute(
            "INSERT INTO long_task.task (state_id, command, shed_cron, shed_period_id, shed_period_count)
             VALUES ('DR', '{true}', '* * * * *', 'MIN', 1)",
            &[],
        )
        .await
        .expect_err("both rules");
    assert!(
        both.as_db_error()
            .expect("db error")
            .message()
            .contains("not both"),
        "{both}"
    );
    assert_eq!(
        common::task_count(&client).await,
        0,
        "nothing refused was written"
    );

    // A row without a schedule, then an UPDATE giving it one: next_start becomes now() and the
    // group's channel hears 'sched' (the coordinator plans it at once).
    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('DR', '{true}') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let (_listener, mut notices) = listen(&db.url, &["long_task_g0"]).await;
    let moved: bool = client
        .query_one(
            "UPDATE long_task.task SET shed_cron = '0 3 * * *', shed_timezone = 'Europe/Berlin'
              WHERE id = $1 RETURNING next_start = now()",
            &[&id],
        )
        .await
        .expect("update")
        .get(0);
    assert!(moved, "next_start set to now()");
    let notice = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = notices.recv().await.expect("notice");
            if n.payload == "sched" {
                return n;
            }
        }
    })
    .await
    .expect("a sched notification");
    assert_eq!(notice.channel, "long_task_g0");
    // a bad value in an UPDATE is refused too, and the row keeps its schedule
    let e = client
        .execute(
            "UPDATE long_task.task SET shed_timezone = 'Nowhere/Land' WHERE id = $1",
            &[&id],
        )
        .await
        .expect_err("bad zone");
    let message = e.as_db_error().expect("a database error").message();
    assert!(message.contains("unknown time zone"), "{message}");
    let kept: Option<String> = client
        .query_one(
            "SELECT shed_timezone FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(kept.as_deref(), Some("Europe/Berlin"));
}

#[tokio::test]
async fn an_update_setting_cron_fires_at_once_and_a_refused_expression_is_recorded_and_stopped() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    wait_coordinator(&client, 0, LONG, |_, _| true).await;

    let parent: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, shed_clone) VALUES ('DR', '{true}', true)
             RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    client
        .execute(
            "UPDATE long_task.task SET shed_cron = '* * * * * *' WHERE id = $1",
            &[&parent],
        )
        .await
        .expect("schedule by UPDATE");
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(5), || async {
        clones(&client, parent).await >= 1
    })
    .await
    .expect("the UPDATE's schedule fires within its first second or two");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "first firing after {:?}",
        started.elapsed()
    );

    // Shapes SQL accepts but the Scheduler cannot evaluate: an event says why, next_start is
    // cleared (no loop), shed_cron is kept for the owner to fix.
    for (cron, says) in [
        ("61 * * * *", "cron expression \"61 * * * *\""),
        ("0 0 30 2 *", "has no firing"),
    ] {
        let id: i64 = client
            .query_one(
                "INSERT INTO long_task.task (state_id, command, shed_cron) VALUES ('DR', '{true}', $1)
                 RETURNING id",
                &[&cron],
            )
            .await
            .expect("accepted by SQL")
            .get(0);
        wait_until(LONG, || async {
            client
                .query_one(
                    "SELECT next_start IS NULL FROM long_task.task WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("row")
                .get::<_, bool>(0)
        })
        .await
        .expect("the refused schedule is stopped");
        let detail: String = client
            .query_one(
                "SELECT detail FROM long_task.event WHERE kind = 'schedule_refused' AND task_id = $1",
                &[&id],
            )
            .await
            .expect("one schedule_refused event")
            .get(0);
        assert!(detail.contains(says), "{cron}: {detail}");
        let (cron_kept, state): (Option<String>, String) = client
            .query_one(
                "SELECT shed_cron, state_id::text FROM long_task.task WHERE id = $1",
                &[&id],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .expect("row");
        assert_eq!(cron_kept.as_deref(), Some(cron));
        assert_eq!(state, "DR", "a refused schedule runs nothing");
    }
    client
        .execute(
            "UPDATE long_task.task SET shed_cron = NULL, next_start = NULL WHERE id = $1",
            &[&parent],
        )
        .await
        .expect("unschedule");
}

#[tokio::test]
async fn the_cli_and_the_http_api_submit_cron_tasks_and_refuse_bad_ones() {
    let (db, client) = migrated_db().await;
    let out = pgtaskd(
        &db.url,
        &[
            "submit",
            "--json",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--",
            "true",
        ],
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["id"]
        .as_i64()
        .expect("id");
    let row = client
        .query_one(
            "SELECT state_id::text, shed_cron, shed_timezone, shed_clone, next_start IS NOT NULL
               FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "DR");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("30 2 * * *")
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("Europe/Berlin")
    );
    assert!(!row.get::<_, bool>(3));
    assert!(row.get::<_, bool>(4), "scheduled from now on");

    let before = common::task_count(&client).await;
    for args in [
        &["submit", "--cron", "* * 32 * *", "--", "true"][..],
        &[
            "submit",
            "--cron",
            "* * * * *",
            "--timezone",
            "Mars/Base",
            "--",
            "true",
        ],
        &[
            "submit",
            "--cron",
            "* * * * *",
            "--every",
            "1m",
            "--",
            "true",
        ],
        &["submit", "--timezone", "UTC", "--", "true"],
    ] {
        let out = pgtaskd(&db.url, args);
        assert_eq!(
            code(&out),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(common::task_count(&client).await, before);

    let (_node, base) = node_with_http(&db.url, 1, &[]).await;
    wait_node_ready(&client, 1).await;
    let (status, body) = request_json(
        "POST",
        &format!("{base}/tasks"),
        Some(
            r#"{"command": ["true"], "state_id": "DR", "shed_cron": "0 9 * * MON-FRI", "shed_timezone": "America/New_York", "shed_clone": true}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().expect("id");
    let (status, row) = request_json("GET", &format!("{base}/tasks/{id}"), None);
    assert_eq!(status, 200);
    assert_eq!(row["shed_cron"], "0 9 * * MON-FRI");
    assert_eq!(row["shed_timezone"], "America/New_York");
    let before = common::task_count(&client).await;
    for (body, mentions) in [
        (
            r#"{"command": ["true"], "shed_cron": "0 25 * * *"}"#,
            "shed_cron",
        ),
        (
            r#"{"command": ["true"], "shed_cron": "* * * * *", "shed_timezone": "Berlin"}"#,
            "shed_timezone",
        ),
        (
            r#"{"command": ["true"], "shed_cron": "* * * * *", "shed_period_id": "MIN", "shed_period_count": 1}"#,
            "not both",
        ),
    ] {
        let (status, reply) = request_json("POST", &format!("{base}/tasks"), Some(body));
        assert_eq!(status, 422, "{body}: {reply}");
        assert!(reply["error"].to_string().contains(mentions), "{reply}");
    }
    assert_eq!(common::task_count(&client).await, before);
}

#[tokio::test]
async fn fire_crons_fires_a_row_only_as_read_and_only_under_the_term() {
    let (_db, client) = migrated_db().await;
    client
        .execute(
            "INSERT INTO long_task.coordinator (group_id, term, worker_id, elected_at)
             VALUES (0, 7, 1, now())",
            &[],
        )
        .await
        .expect("a coordinator row (no node runs)");
    let (id, planned): (i64, chrono::DateTime<chrono::Utc>) = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command, shed_cron, shed_clone, next_start)
             VALUES ('DR', '{true}', '* * * * * *', true, now() - interval '5 seconds')
             RETURNING id, next_start",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("a due cron row");
    let due = client
        .query("SELECT id FROM long_task.due_crons(0)", &[])
        .await
        .expect("due_crons");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].get::<_, i64>(0), id);
    let fire = |term: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT long_task.fire_crons(0, 1, $1, ARRAY[$2::bigint], ARRAY[$3::timestamptz],
                                 ARRAY['* * * * * *'], ARRAY[NULL::text],
                                 ARRAY[date_trunc('second', $3::timestamptz) + interval '1 second'],
                                 ARRAY[date_trunc('second', now()) + interval '1 second'],
                                 ARRAY[NULL::text])",
                    &[&term, &id, &planned],
                )
                .await
                .expect("fire_crons")
                .get::<_, i32>(0)
        }
    };
    // another term's call changes nothing
    assert_eq!(fire(6).await, -1);
    assert_eq!(clones(&client, id).await, 0);
    // the first call fires once and moves the row; the same call again (a second reader of the
    // same due row) finds it moved and fires nothing
    assert_eq!(fire(7).await, 1);
    assert_eq!(fire(7).await, 0);
    assert_eq!(clones(&client, id).await, 1);
    let (moved, planned_start): (bool, Option<chrono::DateTime<chrono::Utc>>) = client
        .query_one(
            "SELECT t.next_start > now(), c.planned_start
               FROM long_task.task t JOIN long_task.task c ON c.shed_parent_id = t.id
              WHERE t.id = $1",
            &[&id],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("rows");
    assert!(moved, "next_start moved past now");
    assert!(planned_start.is_some_and(|p| p > planned));
    assert!(client
        .query("SELECT id FROM long_task.due_crons(0)", &[])
        .await
        .expect("due_crons")
        .is_empty());
}

/// The database clock as seconds since the epoch.
async fn db_epoch(client: &tokio_postgres::Client) -> f64 {
    client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .expect("now")
        .get(0)
}

#[tokio::test]
async fn a_seconds_cron_fires_once_per_slot_across_a_coordinator_killed_at_a_firing() {
    let (db, client) = migrated_db().await;
    let mut nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| NodeProcess::start(&db.url, id, &[]))
        .collect();
    for id in 1..=3 {
        wait_node_ready(&client, id).await;
    }
    let (first, first_term) = wait_coordinator(&client, 0, LONG, |_, _| true).await;
    let parent: i64 = client
        .query_one(
            "INSERT INTO long_task.task (group_id, state_id, command, shed_cron, shed_clone)
             VALUES (0, 'DR', '{true}', '*/1 * * * * *', true) RETURNING id",
            &[],
        )
        .await
        .expect("schedule")
        .get(0);
    wait_until(LONG, || async { clones(&client, parent).await >= 4 })
        .await
        .expect("the schedule fires every second");

    // Kill the coordinator a few milliseconds after a slot: while it fires (its tick is armed
    // 5 ms after the due time).
    let now = db_epoch(&client).await;
    let wait = now.ceil() - now + 0.004;
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let killed_at = db_epoch(&client).await;
    let coordinator = nodes
        .iter_mut()
        .find(|n| n.worker_id == first)
        .expect("the coordinator's process");
    coordinator.signal(Signal::SIGKILL);
    let _ = coordinator.child.wait();
    let (second, _) = wait_coordinator(&client, 0, LONG, |w, t| w != first && t > first_term).await;
    let after_kill = clones(&client, parent).await;
    wait_until(LONG, || async {
        clones(&client, parent).await >= after_kill + 4
    })
    .await
    .expect("the new coordinator fires the schedule on");

    // Every node down for 3 s: the slots in between are missed, and the next coordinator fires
    // the overdue row once, late, then waits for the first slot after that firing.
    for node in nodes.iter_mut().filter(|n| n.worker_id != first) {
        node.signal(Signal::SIGKILL);
        let _ = node.child.wait();
    }
    let down_at = db_epoch(&client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = db_epoch(&client).await;
    let before_up = clones(&client, parent).await;
    let _back = NodeProcess::start(&db.url, 4, &[]);
    wait_node_ready(&client, 4).await;
    wait_until(LONG, || async {
        clones(&client, parent).await >= before_up + 3
    })
    .await
    .expect("a restarted node fires the schedule on");
    client
        .execute(
            "UPDATE long_task.task SET shed_cron = NULL, next_start = NULL WHERE id = $1",
            &[&parent],
        )
        .await
        .expect("unschedule");

    let rows = client
        .query(
            "SELECT extract(epoch FROM planned_start)::float8, extract(epoch FROM created)::float8
               FROM long_task.task WHERE shed_parent_id = $1 ORDER BY planned_start, created",
            &[&parent],
        )
        .await
        .expect("clones");
    let slots: Vec<(f64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(slots.len() >= 8, "{} firings", slots.len());
    for pair in slots.windows(2) {
        let ((slot, created), (next_slot, _)) = (pair[0], pair[1]);
        assert!(
            next_slot > slot,
            "slot {slot} fired twice (clones created at {created} and later)"
        );
        // a late firing fires once and moves past now: no catch-up burst of the missed slots
        assert!(
            next_slot > created - 0.5,
            "slot {next_slot} fired after the firing of slot {slot} at {created}: a catch-up burst"
        );
    }
    for (slot, created) in &slots {
        assert_eq!(slot.fract(), 0.0, "a slot is a whole second: {slot}");
        assert!(
            created >= slot,
            "fired before its slot: {slot} at {created}"
        );
    }
    // firings before and after the kill, by both coordinators
    assert!(slots.iter().filter(|(_, c)| *c < killed_at).count() >= 4);
    assert!(
        slots
            .iter()
            .filter(|(_, c)| *c > killed_at && *c < down_at)
            .count()
            >= 4
    );
    // the outage: exactly one firing for its slots (the overdue one, fired late), none in between
    let last_before_down = slots
        .iter()
        .filter(|(_, c)| *c < down_at)
        .map(|(s, _)| *s)
        .fold(f64::MIN, f64::max);
    let in_outage: Vec<&(f64, f64)> = slots
        .iter()
        .filter(|(s, _)| *s > last_before_down && *s < up_at)
        .collect();
    assert_eq!(
        in_outage.len(),
        1,
        "one late firing for the {:.1} s without a node: {in_outage:?}",
        up_at - down_at
    );
    assert!(
        in_outage[0].1 > up_at,
        "the overdue slot fired after the restart"
    );
    let firers: Vec<i64> = client
        .query(
            "SELECT DISTINCT by_worker_id FROM long_task.event
              WHERE kind = 'fired' AND detail LIKE '%cron%' AND by_worker_id <> 4 ORDER BY 1",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want = vec![first, second];
    want.sort_unstable();
    assert_eq!(
        firers, want,
        "the two coordinators fired before the outage, nobody else"
    );
    // every firing ran (the clones are plain `true`)
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE shed_parent_id = $1 AND state_id <> 'CS'",
                &[&parent],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
            == 0
    })
    .await
    .expect("every firing's run succeeds");
}
