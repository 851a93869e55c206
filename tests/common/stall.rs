//! What a test prints when a task it waits for never ends: the task's row, its ready-ring
//! entries, the ring's head and generation, the group's coordinator and the latest events — so
//! a stall seen once in CI says where it stopped (not claimed, not promoted, not on the ring).

use tokio_postgres::Client;

/// A report of where task `id` stands, for a test's failure message (never fails itself).
pub async fn stall_report(client: &Client, id: i64) -> String {
    let queries: [(&str, &str); 5] = [
        (
            "task",
            "SELECT format('state %s attempt %s/%s run_after %s lease_until %s (now %s) lsc %s \
                            worker %s error %s',
                           state_id, attempt, max_attempts, run_after, lease_until, now(),
                           last_state_change, worker_id, error)
               FROM long_task.task WHERE id = $1",
        ),
        (
            "ring entries",
            "SELECT format('slot %s lsc %s worker %s topic %s', slot, lsc, worker_id, topic)
               FROM long_task.ready WHERE task_id = $1",
        ),
        (
            "ring",
            "SELECT format('head %s gen %s rotated %s ms ago; slots with storage %s',
                           (SELECT last_value FROM long_task.ready_head),
                           (SELECT last_value FROM long_task.ready_gen),
                           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                             - (SELECT last_value FROM long_task.ready_rotated_at),
                           (SELECT array_agg(s) FROM generate_series(0, 7) s
                             WHERE pg_relation_size(format('long_task.ready_%s', s)::regclass) > 0))
",
        ),
        (
            "coordinators",
            "SELECT format('group %s term %s worker %s elected %s', group_id, term, worker_id,
                           elected_at)
               FROM long_task.coordinator",
        ),
        (
            "events (latest 20)",
            "SELECT format('%s %s task %s worker %s %s', at, kind, task_id, worker_id, detail)
               FROM (SELECT * FROM long_task.event ORDER BY id DESC LIMIT 20) e
",
        ),
    ];
    let mut report = format!("where task {id} stands:\n");
    for (what, sql) in queries {
        report.push_str(&format!("  {what}:\n"));
        let rows = if sql.contains("$1") {
            client.query(sql, &[&id]).await
        } else {
            client.query(sql, &[]).await
        };
        match rows {
            Ok(rows) => {
                for row in rows {
                    let line: Option<String> = row.get(0);
                    report.push_str(&format!("    {}\n", line.unwrap_or_default()));
                }
            }
            Err(e) => report.push_str(&format!("    (could not read: {e})\n")),
        }
    }
    report
}
