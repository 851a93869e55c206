//! The invariant checker: after the faults stop and the cluster settles, every guarantee of
//! docs/design.md §4 is checked against the tables, the event log, the execution log the tasks wrote,
//! and the host's process table. Prints each violation; the caller prints the summary.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::faults::{connect, Counts};

/// The concurrency limits the run configured (group_settings of group 0).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_running: Option<usize>,
    pub key_limit: Option<usize>,
}

pub struct Report {
    pub tasks: i64,
    /// The most runs that overlapped (task_run start to end).
    pub most_running: usize,
    pub executions: usize,
    pub reruns: usize,
    pub violations: Vec<String>,
}

/// Waits until no task is active (AW/AE/AC); false after `limit`.
pub async fn settle(url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut last_print = Instant::now();
    loop {
        if let Ok(client) = connect(url).await {
            if let Ok(row) = client
                .query_one(
                    "SELECT count(*) FROM long_task.task WHERE state_id LIKE 'A%'",
                    &[],
                )
                .await
            {
                let active: i64 = row.get(0);
                if active == 0 {
                    return true;
                }
                if last_print.elapsed() > Duration::from_secs(5) {
                    println!("chaos: settling, {active} task(s) still active");
                    last_print = Instant::now();
                }
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(
    url: &str,
    exec_log: &Path,
    fed: u64,
    counts: &Counts,
    settled: bool,
    limits: &Limits,
) -> anyhow::Result<Report> {
    let client = connect(url).await?;
    let mut violations = Vec::new();
    let mut violate = |v: String| {
        if violations.len() < 50 {
            println!("VIOLATION: {v}");
        }
        violations.push(v);
    };
    if !settled {
        violate("not every task reached a final state in time".into());
    }

    // Executions as the tasks recorded them, in order.
    let text = std::fs::read_to_string(exec_log)?;
    let mut runs: HashMap<i64, Vec<Uuid>> = HashMap::new();
    let mut executions = 0;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(run)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(id), Ok(run)) = (id.parse::<i64>(), run.parse::<Uuid>()) {
            runs.entry(id).or_default().push(run);
            executions += 1;
        }
    }

    // Every task final; none lost.
    let tasks: i64 = client
        .query_one("SELECT count(*) FROM long_task.task", &[])
        .await?
        .get(0);
    if (tasks as u64) < fed {
        violate(format!("{fed} tasks were queued but only {tasks} exist"));
    }
    let active = client
        .query(
            "SELECT id, state_id::text, worker_id FROM long_task.task WHERE state_id NOT IN ('CS', 'CF', 'CC') ORDER BY id LIMIT 20",
            &[],
        )
        .await?;
    for row in &active {
        violate(format!(
            "task {} not final: {} on worker {:?}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, Option<i64>>(2)
        ));
    }

    // Re-runs only where a node was lost mid-run (each loss is an event naming the lost run),
    // and no final state written by a lost (stale) run.
    let mut lost_runs: HashMap<i64, Vec<Uuid>> = HashMap::new();
    for r in client
        .query(
            "SELECT task_id, run_id FROM long_task.event
              WHERE kind = 'requeued' AND task_id IS NOT NULL",
            &[],
        )
        .await?
    {
        let run: Option<Uuid> = r.get(1);
        lost_runs.entry(r.get(0)).or_default().extend(run);
    }
    let rows = client
        .query(
            "SELECT id, state_id::text, run_id, error FROM long_task.task WHERE state_id IN ('CS', 'CF', 'CC')",
            &[],
        )
        .await?;
    let mut reruns = 0;
    for row in &rows {
        let id: i64 = row.get(0);
        let state: String = row.get(1);
        let run_id: Option<Uuid> = row.get(2);
        let error: Option<String> = row.get(3);
        let ran = runs.get(&id).map_or(&[][..], |v| v.as_slice());
        reruns += ran.len().saturating_sub(1);
        let lost = lost_runs.get(&id).map_or(&[][..], |v| v.as_slice());
        let allowed = 1 + lost.len();
        let stale_writer = run_id.is_some_and(|r| lost.contains(&r));
        let mut problem = None;
        if ran.len() > allowed {
            problem = Some(format!(
                "task {id} ran {} times but lost its node only {} time(s)",
                ran.len(),
                allowed - 1
            ));
        } else if state == "CS" && !run_id.is_some_and(|r| ran.contains(&r)) {
            problem = Some(format!(
                "task {id} CS under run {run_id:?}, which never ran"
            ));
        } else if stale_writer && (state == "CS" || error.as_deref() != Some("worker lost")) {
            problem = Some(format!(
                "task {id} {state} written by the lost (stale) run {run_id:?}"
            ));
        }
        if let Some(p) = problem {
            violate(p);
        }
    }

    // Every cancel honoured.
    let not_cancelled = client
        .query(
            "SELECT c.task_id, t.state_id::text FROM chaos_cancel c JOIN long_task.task t ON t.id = c.task_id
              WHERE t.state_id <> 'CC'",
            &[],
        )
        .await?;
    for row in &not_cancelled {
        violate(format!(
            "cancelled task {} ended {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1)
        ));
    }

    // Never two coordinators acting in one term.
    let split = client
        .query(
            "SELECT group_id, term, array_agg(DISTINCT by_worker_id) FROM long_task.event
              WHERE term IS NOT NULL AND kind <> 'coordinator_deposed'
              GROUP BY group_id, term HAVING count(DISTINCT by_worker_id) > 1",
            &[],
        )
        .await?;
    for row in &split {
        violate(format!(
            "group {} term {}: acted on by {:?}",
            row.get::<_, i32>(0),
            row.get::<_, i64>(1),
            row.get::<_, Vec<Option<i64>>>(2)
        ));
    }

    // No limit exceeded: the most attempts that overlapped, overall and per key, from task_run
    // (a lost node's run ends there when it was handed back, so it counts until then).
    let (most_running, per_key) = super::overlap::most_overlapping(&client).await?;
    if let Some(max) = limits.max_running.filter(|max| most_running > *max) {
        violate(format!(
            "{most_running} runs overlapped: the group limit is {max}"
        ));
    }
    if let Some(max) = limits.key_limit {
        for (key, most) in &per_key {
            if *most > max {
                violate(format!(
                    "{most} runs of key {key} overlapped: the key limit is {max}"
                ));
            }
        }
    }

    // No orphan process: nothing of this installation runs after the nodes stopped.
    let installation: Uuid = client
        .query_one("SELECT id FROM long_task.installation", &[])
        .await?
        .get(0);
    let marker = format!("PGTASKD_NODE={installation}/");
    let deadline = Instant::now() + Duration::from_secs(5);
    let orphans = loop {
        let found = processes_with_prefix(&marker);
        if found.is_empty() || Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for pid in orphans {
        violate(format!("orphan task process {pid} outlived its node"));
    }
    let _ = counts;
    Ok(Report {
        tasks,
        most_running,
        executions,
        reruns,
        violations,
    })
}

/// Live, non-zombie processes whose environment has an entry starting with `prefix`.
fn processes_with_prefix(prefix: &str) -> Vec<i32> {
    pgtaskd::process::processes_with_env(|kv| kv.starts_with(prefix.as_bytes()))
}
