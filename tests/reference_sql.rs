//! Every SQL example of the reference README (seeds/000), verbatim, against a real node, with the
//! effect the reference describes.

mod common;

use std::time::Duration;

use common::migrated_db;
use common::node::{state, task_processes, wait_node_ready, wait_state, wait_until, NodeProcess};

const LONG: Duration = Duration::from_secs(20);

async fn create_draft(client: &tokio_postgres::Client) -> i64 {
    // "Create new task in the Draft state" — verbatim
    client
        .query_one(
            "INSERT INTO long_task.task(group_id, state_id, priority, command)
VALUES (0, 'DR', 0, '{ping,-n,1,127.0.0.1}')
RETURNING id;",
            &[],
        )
        .await
        .expect("insert draft")
        .get(0)
}

async fn exec(client: &tokio_postgres::Client, sql: &str, id: i64) -> u64 {
    let sql = sql.replace("<id>", &id.to_string());
    client
        .execute(sql.as_str(), &[])
        .await
        .expect("reference statement")
}

const QUEUE_DRAFT: &str = "UPDATE long_task.task
SET state_id='AW', worker_id=null
WHERE id = <id>";
const REQUEUE_COMPLETED: &str = "UPDATE long_task.task
SET state_id='AW', worker_id=null
WHERE id = <id> AND state_id like 'C%'";
const CANCEL: &str = "UPDATE long_task.task
SET state_id='AC'
WHERE id = <id> AND state_id like 'A%'";
const EVERY_2_HOURS: &str = "UPDATE long_task.task
SET 
	next_start=now(),
	shed_period_id='HOU',
	shed_period_count=2,
	shed_clone=false
WHERE id = <id>";
const EVERY_10_SECONDS: &str = "UPDATE long_task.task
SET 
	next_start=now(),
	shed_period_id='SEC',
	shed_period_count=10,
	shed_clone=false
WHERE id = <id>";

#[tokio::test]
async fn draft_queue_requeue_and_cancel_examples() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;

    // A draft is not run.
    let id = create_draft(&client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&client, id).await, "DR", "a draft must not run");

    // Queue it: a node runs it to a final state (ping may or may not exist here; either way final).
    assert_eq!(exec(&client, QUEUE_DRAFT, id).await, 1);
    wait_until(LONG, || async { state(&client, id).await.starts_with('C') })
        .await
        .expect("queued draft runs to a final state");
    let first_started: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT started FROM long_task.task WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0);

    // Re-queue the completed task: it runs again.
    assert_eq!(exec(&client, REQUEUE_COMPLETED, id).await, 1);
    wait_until(LONG, || async {
        let row = client
            .query_one(
                "SELECT state_id::text, started FROM long_task.task WHERE id = $1",
                &[&id],
            )
            .await
            .expect("row");
        row.get::<_, String>(0).starts_with('C')
            && row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(1) > Some(first_started)
    })
    .await
    .expect("re-queued task runs again");
    // The re-queue statement matches nothing while the task is active.
    client
        .execute(
            "UPDATE long_task.task SET command = '{sleep,30}' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("change command");
    assert_eq!(exec(&client, REQUEUE_COMPLETED, id).await, 1);
    wait_state(&client, id, "AE", LONG).await;
    assert_eq!(
        exec(&client, REQUEUE_COMPLETED, id).await,
        0,
        "an active task is not re-queued"
    );

    // Cancel an executing task: it ends CC and its process is gone.
    assert_eq!(exec(&client, CANCEL, id).await, 1);
    wait_state(&client, id, "CC", LONG).await;
    wait_until(LONG, || async {
        task_processes(&client, id).await.is_empty()
    })
    .await
    .expect("the cancelled task's process is gone");

    // Cancel a queued task: ends CC at once (nothing to kill).
    let waiting = create_draft(&client).await;
    client
        .execute("UPDATE long_task.worker SET stop = 1 WHERE id = 1", &[])
        .await
        .expect("pause node");
    tokio::time::sleep(Duration::from_millis(300)).await;
    exec(&client, QUEUE_DRAFT, waiting).await;
    assert_eq!(exec(&client, CANCEL, waiting).await, 1);
    assert_eq!(state(&client, waiting).await, "CC");
    // A final task is not matched by the cancel statement.
    assert_eq!(exec(&client, CANCEL, waiting).await, 0);
}

#[tokio::test]
async fn schedule_every_two_hours_runs_now_then_waits() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = create_draft(&client).await;
    client
        .execute(
            "UPDATE long_task.task SET command = '{true}' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("portable command");
    exec(&client, EVERY_2_HOURS, id).await;
    // A draft with a schedule is started by it, then the next start is two hours later.
    wait_state(&client, id, "CS", LONG).await;
    let row = client
        .query_one(
            "SELECT extract(epoch FROM next_start - now())::float8, attempt FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    let secs: f64 = row.get(0);
    assert!(
        (7100.0..=7200.0).contains(&secs),
        "next start in ~2h, got {secs}s"
    );
    assert_eq!(row.get::<_, i32>(1), 1);

    // While the task is active, a due run is skipped (not queued twice).
    client
        .execute(
            "UPDATE long_task.task SET command = '{sleep,30}', state_id = 'AW' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("requeue long");
    wait_state(&client, id, "AE", LONG).await;
    exec(&client, EVERY_2_HOURS, id).await; // due now again
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT next_start > now() + interval '1 hour' FROM long_task.task WHERE id = $1",
                &[&id],
            )
            .await
            .expect("row")
            .get::<_, bool>(0)
    })
    .await
    .expect("the schedule moved on");
    assert_eq!(
        state(&client, id).await,
        "AE",
        "the running task was not disturbed"
    );
    let clones: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task WHERE shed_parent_id = $1",
            &[&id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(clones, 0, "a re-run schedule never clones");
}

#[tokio::test]
async fn schedule_every_ten_seconds_reruns_without_drift() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = create_draft(&client).await;
    client
        .execute(
            "UPDATE long_task.task SET command = '{sh,-c,echo run}' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("portable command");
    exec(&client, EVERY_10_SECONDS, id).await;
    let planned0: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .expect("now")
        .get(0);
    wait_state(&client, id, "CS", LONG).await;
    let first: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT started FROM long_task.task WHERE id = $1", &[&id])
        .await
        .expect("row")
        .get(0);
    // The second run starts about 10 s after the first planned time (anchored, no drift).
    wait_until(Duration::from_secs(25), || async {
        client
            .query_one(
                "SELECT coalesce(started > $2, false) FROM long_task.task WHERE id = $1",
                &[&id, &first],
            )
            .await
            .expect("row")
            .get::<_, bool>(0)
    })
    .await
    .expect("a second run within 25 s");
    let row = client
        .query_one(
            "SELECT next_start, started FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    let next: chrono::DateTime<chrono::Utc> = row.get(0);
    let offset = (next - planned0).num_milliseconds();
    assert!(
        (19_900..=20_100).contains(&offset),
        "the third run is planned 20 s after the first planned time, got {offset} ms"
    );
}

#[tokio::test]
async fn clone_schedule_inserts_waiting_copies() {
    let (db, client) = migrated_db().await;
    let _node = NodeProcess::start(&db.url, 1, &[]);
    wait_node_ready(&client, 1).await;
    let id = create_draft(&client).await;
    client
        .execute(
            "UPDATE long_task.task SET command = '{true}', next_start = now(), shed_period_id = 'SEC',
                    shed_period_count = 1, shed_clone = true WHERE id = $1",
            &[&id],
        )
        .await
        .expect("clone schedule");
    wait_until(LONG, || async {
        client
            .query_one(
                "SELECT count(*) FROM long_task.task WHERE shed_parent_id = $1 AND state_id = 'CS'",
                &[&id],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
            >= 2
    })
    .await
    .expect("clones are queued and run");
    assert_eq!(
        state(&client, id).await,
        "DR",
        "the template itself stays a draft"
    );
    // No burst: stop the schedule and check that clones were at most one per second.
    client
        .execute(
            "UPDATE long_task.task SET next_start = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .expect("unschedule");
    let row = client
        .query_one(
            "SELECT count(*), extract(epoch FROM max(created) - min(created))::float8 FROM long_task.task WHERE shed_parent_id = $1",
            &[&id],
        )
        .await
        .expect("stats");
    let (n, span): (i64, f64) = (row.get(0), row.get(1));
    assert!(
        n as f64 <= span + 1.5,
        "{n} clones in {span:.1}s: at most one per second"
    );
}
