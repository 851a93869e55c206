//! Upgrading a database in place: a version-6 database (as released) holding tasks in every
//! state is migrated by this binary; a reader sees exactly the rows it saw before, and what was
//! waiting is claimable (the ready ring got an entry for each claimable task) while what was
//! not (delayed, waiting on a dependency, running, final) is not.

mod common;

use common::TestDb;
use pgtaskd::db::migrate;

const ROWS: &str =
    "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]') FROM long_task.task t";

/// The same rows without the columns versions after 6 added (`created_by`, `changed_by`:
/// who made a row before version 10 was not recorded; the isolation of version 11; version 15's
/// cron columns, all NULL; the concurrency key of version 17).
const ROWS_AS_OF_V6: &str =
    "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'created_by' - 'changed_by' - 'env' - 'limit_memory'
                              - 'limit_cpu_seconds' - 'limit_open_files' - 'limit_processes'
                              - 'shed_cron' - 'shed_timezone' - 'planned_start' - 'concurrency_key'
                              ORDER BY t.id), '[]')
       FROM long_task.task t";

/// The ids a statement returns in its first column.
async fn ids(client: &tokio_postgres::Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_version_6_database_with_tasks_in_every_state_upgrades_unchanged_for_a_reader() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    migrate::migrate_numbered_up_to(&mut client, 6)
        .await
        .expect("migrations 1-6 as released");
    client
        .batch_execute(
            "INSERT INTO long_task.task (state_id, command, priority) VALUES
                 ('DR', '{true}', 0),            -- 1 draft
                 ('AW', '{true}', 5),            -- 2 waiting
                 ('AW', '{true}', 1);            -- 3 waiting, runs first
             INSERT INTO long_task.task (state_id, command, run_after)
                 VALUES ('AW', '{true}', now() + interval '1 hour');   -- 4 delayed
             INSERT INTO long_task.task (state_id, topic) VALUES ('AW', 'mail');   -- 5 consumer task
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'); -- 6 -> running
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'); -- 7 -> cancelling
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'); -- 8 -> CS
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'); -- 9 -> CF
             INSERT INTO long_task.task (state_id, command) VALUES ('AW', '{true}'); -- 10 -> CC
             INSERT INTO long_task.task (state_id, command, depends_on) VALUES ('AW', '{true}', '{6}'); -- 11 waits on 6
             INSERT INTO long_task.task (state_id, command, next_start, shed_period_id, shed_period_count)
                 VALUES ('DR', '{true}', now() + interval '1 day', 'DAY', 1);          -- 12 scheduled
             -- claim 6..10 as node 9 (version 6's claim), then move them on
             UPDATE long_task.task SET state_id = 'AE', worker_id = 9, run_id = gen_random_uuid(),
                    attempt = 1, started = now() WHERE id BETWEEN 6 AND 10;
             UPDATE long_task.task SET state_id = 'AC' WHERE id = 7;
             UPDATE long_task.task SET state_id = 'CS' WHERE id = 8;
             UPDATE long_task.task SET state_id = 'CF', error = 'boom' WHERE id = 9;
             UPDATE long_task.task SET state_id = 'CC' WHERE id = 10;",
        )
        .await
        .expect("tasks in every state");
    let before: serde_json::Value = client.query_one(ROWS, &[]).await.expect("rows").get(0);

    let report = migrate::migrate(&mut client).await.expect("upgrade");
    assert!(report.applied.contains(&8), "{report:?}");
    let after: serde_json::Value = client
        .query_one(ROWS_AS_OF_V6, &[])
        .await
        .expect("rows")
        .get(0);
    assert_eq!(
        before, after,
        "a reader sees the same rows after the upgrade"
    );
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM long_task.task
              WHERE created_by IS NOT NULL OR changed_by IS NOT NULL OR env IS NOT NULL
                 OR num_nonnulls(limit_memory, limit_cpu_seconds, limit_open_files, limit_processes) > 0",
            &[],
        )
        .await
        .expect("who")
        .get(0);
    assert_eq!(
        recorded, 0,
        "no one is named for rows made before version 10, and no env or limit appears"
    );

    // The waiting process tasks are claimable, best priority first; nothing else is.
    let claimed: Vec<i64> = ids(
        &client,
        "SELECT id FROM long_task.claim(1, 0, 100, '{}', true)",
    )
    .await;
    assert_eq!(claimed, vec![3, 2]);
    let consumed: Vec<i64> = ids(&client, "SELECT id FROM long_task.consume(100)").await;
    assert_eq!(consumed, vec![5]);
    // The dependent becomes claimable when its dependency succeeds.
    let run_id: uuid::Uuid = client
        .query_one("SELECT run_id FROM long_task.task WHERE id = 6", &[])
        .await
        .expect("row")
        .get(0);
    client
        .execute(
            "SELECT * FROM long_task.finish_runs(ARRAY[6::bigint], ARRAY[$1::uuid], ARRAY['CS'],
                    ARRAY[NULL::text], ARRAY[0], ARRAY[NULL::int], ARRAY[''], ARRAY[''])",
            &[&run_id],
        )
        .await
        .expect("finish 6");
    let claimed: Vec<i64> = ids(
        &client,
        "SELECT id FROM long_task.claim(1, 0, 100, '{}', true)",
    )
    .await;
    assert_eq!(claimed, vec![11]);
}
