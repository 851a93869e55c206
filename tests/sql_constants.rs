//! Every value the Rust code and the schema must agree on (`pgtaskd::db::codes`), checked against
//! a migrated database: state codes, periods, advisory lock namespaces, notification channels and
//! payloads, and the verdicts of `long_task.running_state`.

mod common;

use std::time::Duration;

use pgtaskd::db::codes::{
    group_channel, GroupEvent, Period, TaskIds, TaskState, Verdict, DONE_CHANNEL, NS_CLAIM,
    NS_GROUP, NS_NODE, NS_RING, OUTPUT_CHANNEL, WORKER_CHANNEL,
};
use pgtaskd::db::{self, queries, Notice};
use tokio::sync::mpsc;

#[tokio::test]
async fn state_codes_and_periods_match_the_lookup_tables_and_constraints() {
    let (_db, client) = common::migrated_db().await;
    let mut in_db: Vec<String> = client
        .query("SELECT id::text FROM long_task.task_state ORDER BY id", &[])
        .await
        .expect("states")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut in_rust: Vec<String> = TaskState::ALL.iter().map(|s| s.code().to_owned()).collect();
    in_db.sort();
    in_rust.sort();
    assert_eq!(in_db, in_rust, "long_task.task_state vs TaskState");
    // the CHECK constraint admits exactly these codes
    let check: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'task_state_id_known'",
            &[],
        )
        .await
        .expect("constraint")
        .get(0);
    for s in TaskState::ALL {
        assert!(check.contains(&format!("'{}'", s.code())), "{check}");
    }
    assert_eq!(
        check.matches("::bpchar").count(),
        TaskState::ALL.len(),
        "{check}"
    );

    let periods = client
        .query(
            "SELECT id::text, extract(epoch FROM step)::float8, step = interval '1 month'
               FROM long_task.period ORDER BY id",
            &[],
        )
        .await
        .expect("periods");
    assert_eq!(periods.len(), Period::ALL.len());
    for row in &periods {
        let code: String = row.get(0);
        let period =
            Period::from_code(&code).unwrap_or_else(|| panic!("period {code} unknown to Rust"));
        let month: bool = row.get(2);
        match period.seconds() {
            Some(secs) => assert_eq!(row.get::<_, f64>(1), secs as f64, "{code}"),
            None => assert!(month, "{code}: only a month follows the calendar"),
        }
    }
}

#[tokio::test]
async fn lock_namespaces_and_channel_names_match_the_schema() {
    let (_db, client) = common::migrated_db().await;
    let row = client
        .query_one(
            "SELECT long_task.ns_node(), long_task.ns_group(), long_task.ns_ring(), long_task.ns_claim(), long_task.channel(7)",
            &[],
        )
        .await
        .expect("constants");
    assert_eq!(row.get::<_, i32>(0), NS_NODE);
    assert_eq!(row.get::<_, i32>(1), NS_GROUP);
    assert_eq!(row.get::<_, i32>(2), NS_RING);
    assert_eq!(row.get::<_, i32>(3), NS_CLAIM);
    assert_eq!(row.get::<_, String>(4), group_channel(7));
}

/// Waits for the next notification on the channel.
async fn next(rx: &mut mpsc::UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a notification within 5 s")
        .expect("the listening connection is open")
}

#[tokio::test]
async fn every_notification_payload_is_one_the_listener_knows() {
    let (db, client) = common::migrated_db().await;
    let group = group_channel(0);
    let (_listener, mut rx) = common::listen(&db.url, &[&group, WORKER_CHANNEL]).await;
    let event = |n: &Notice| {
        assert_eq!(n.channel, group_channel(0), "{n:?}");
        GroupEvent::from_payload(&n.payload)
            .unwrap_or_else(|| panic!("payload {:?} unknown to the listener", n.payload))
    };

    let id: i64 = client
        .query_one(
            "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}') RETURNING id",
            &[],
        )
        .await
        .expect("queue")
        .get(0);
    assert_eq!(event(&next(&mut rx).await), GroupEvent::Wake);

    client
        .execute("SELECT * FROM long_task.claim(1, 0, 1)", &[])
        .await
        .expect("claim");
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("cancel a running task");
    assert_eq!(event(&next(&mut rx).await), GroupEvent::Ctl);

    client
        .execute(
            "UPDATE long_task.task SET next_start = now() + interval '1 hour' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("schedule");
    assert_eq!(event(&next(&mut rx).await), GroupEvent::Sched);

    client
        .execute("SELECT long_task.publish('t')", &[])
        .await
        .expect("publish");
    assert_eq!(event(&next(&mut rx).await), GroupEvent::Wake);
    let lease_ms: i64 = client
        .query_one(
            "SELECT (extract(epoch FROM lease_until) * 1000)::bigint FROM long_task.consume(1)",
            &[],
        )
        .await
        .expect("consume")
        .get(0);
    match event(&next(&mut rx).await) {
        GroupEvent::Lease { due_ms } => assert!(
            (lease_ms..lease_ms + 101).contains(&due_ms),
            "the lease deadline {lease_ms} rounded up to 100 ms, not {due_ms}"
        ),
        other => panic!("a consume notifies its lease deadline, not {other:?}"),
    }

    queries::register_worker(&client, 5, 0, 1, "n5", "host", "nobody")
        .await
        .expect("register");
    assert_eq!(event(&next(&mut rx).await), GroupEvent::Peer);

    client
        .execute("UPDATE long_task.worker SET stop = 1 WHERE id = 5", &[])
        .await
        .expect("stop");
    let n = next(&mut rx).await;
    assert_eq!(
        (n.channel.as_str(), n.payload.as_str()),
        (WORKER_CHANNEL, "5")
    );
}

#[tokio::test]
async fn the_followers_channels_and_payloads_match_the_schema() {
    let (db, client) = common::migrated_db().await;
    let (_listener, mut rx) = common::listen(&db.url, &[DONE_CHANNEL, OUTPUT_CHANNEL]).await;
    let ids = vec![
        common::node::queue(&client, &["true"]).await,
        common::node::queue(&client, &["true"]).await,
    ];
    let (run, run_id): (i64, uuid::Uuid) = {
        let row = client
            .query_one("SELECT id, run_id FROM long_task.claim(1, 0, 1)", &[])
            .await
            .expect("claim");
        (row.get(0), row.get(1))
    };
    client
        .execute(
            "SELECT long_task.record_output(ARRAY[$1::bigint], ARRAY[$2::uuid], '{out}', '{NULL}')",
            &[&run, &run_id],
        )
        .await
        .expect("record output");
    let n = next(&mut rx).await;
    assert_eq!(n.channel, OUTPUT_CHANNEL);
    assert_eq!(
        TaskIds::from_payload(&n.payload),
        Some(TaskIds::Listed(vec![run]))
    );
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = ANY ($1)",
            &[&ids],
        )
        .await
        .expect("cancel both: the waiting one ends CC at once");
    let n = next(&mut rx).await;
    let waiting = ids.iter().copied().find(|&i| i != run).expect("the other");
    assert_eq!(
        (n.channel.as_str(), TaskIds::from_payload(&n.payload)),
        (DONE_CHANNEL, Some(TaskIds::Listed(vec![waiting])))
    );
    client
        .execute("DELETE FROM long_task.task WHERE id = $1", &[&run])
        .await
        .expect("delete the running one");
    let n = next(&mut rx).await;
    assert_eq!(
        (n.channel.as_str(), TaskIds::from_payload(&n.payload)),
        (DONE_CHANNEL, Some(TaskIds::Listed(vec![run]))),
        "an unfinished task deleted is an end for its followers"
    );
}

#[tokio::test]
async fn every_verdict_of_running_state_is_one_the_dispatcher_knows() {
    let (db, client) = common::migrated_db().await;
    for _ in 0..3 {
        client
            .execute(
                "INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}')",
                &[],
            )
            .await
            .expect("queue");
    }
    let claimed: Vec<(i64, uuid::Uuid)> = client
        .query("SELECT id, run_id FROM long_task.claim(1, 0, 3)", &[])
        .await
        .expect("claim")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let [(run, run_id), (cancel, cancel_id), (fenced, fenced_id)] = claimed[..] else {
        panic!("three claimed: {claimed:?}");
    };
    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&cancel],
        )
        .await
        .expect("cancel");
    let deleted = fenced + 1000;
    // a run of node 2 taken away by a hand-over of that node
    client
        .batch_execute(
            "INSERT INTO long_task.worker (id, group_id) VALUES (2, 0);
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}')",
        )
        .await
        .expect("node 2 and a task");
    let row = client
        .query_one("SELECT id, run_id FROM long_task.claim(2, 0, 1)", &[])
        .await
        .expect("claim as node 2");
    let (handed, handed_id): (i64, uuid::Uuid) = (row.get(0), row.get(1));
    client
        .execute("SELECT * FROM long_task.hand_over_node(2)", &[])
        .await
        .expect("hand over node 2");
    let pool = db::create_pool(&db.url, "test", 2).expect("pool");
    let runs = [
        (run, run_id),
        (cancel, cancel_id),
        (fenced, uuid::Uuid::new_v4()),
        (deleted, fenced_id),
        (handed, handed_id),
    ];
    let verdicts = queries::running_state(&pool, 1, &runs)
        .await
        .expect("every verdict parses");
    let of = |id: i64| verdicts.iter().find(|v| v.0 == id).map(|v| v.2);
    assert_eq!(of(run), Some(Verdict::Run));
    assert_eq!(of(cancel), Some(Verdict::Cancel));
    assert_eq!(of(fenced), Some(Verdict::Fenced));
    assert_eq!(of(deleted), Some(Verdict::Deleted));
    assert_eq!(of(handed), Some(Verdict::HandedOver));
}
