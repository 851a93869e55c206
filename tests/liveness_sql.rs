//! The SQL that must never leave a waiting task behind with nothing left to wake it: a task
//! queued due now while a claim ran (the claim took its ring entry and dropped it). Before
//! this was fixed, it waited silently for the Scheduler's next full pass, up to five minutes
//! later.

mod common;

use common::migrated_db;

/// A claim whose transaction began before a task was queued with `run_after = now()` (what
/// `NewTask::delay(Duration::ZERO)` sends) takes that task: its entry on the ring was written
/// for a run_after already reached, and a claim that dropped it unclaimed (judging run_after by
/// its own, earlier, transaction start) left the task waiting with no entry and nothing to
/// write one. `queue_node`'s retry test stalled on this in CI.
#[tokio::test]
async fn a_claim_begun_before_a_task_due_now_was_queued_takes_it() {
    let (db, client) = migrated_db().await;
    for (topic, claim) in [
        ("t.consumer", "SELECT id FROM long_task.consume(10)"),
        (
            "t.node",
            "SELECT id FROM long_task.claim(4242, 0, 10, ARRAY['t.node'], false)",
        ),
    ] {
        let claimer = db.client().await;
        claimer
            .batch_execute("BEGIN; SELECT now();")
            .await
            .expect("a claimer's transaction starts");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let id: i64 = client
            .query_one(
                "SELECT long_task.publish($1, p_run_after => now())",
                &[&topic],
            )
            .await
            .expect("publish")
            .get(0);
        let taken: Vec<i64> = claimer
            .query(claim, &[])
            .await
            .expect("claim")
            .iter()
            .map(|r| r.get(0))
            .collect();
        claimer.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(
            taken,
            vec![id],
            "{topic}: the due task was dropped unclaimed"
        );
    }
}
