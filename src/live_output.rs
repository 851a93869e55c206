//! Live output: the tails of a node's running processes reach their task rows while they run.
//!
//! Owns the registry of running processes' tails (`LiveOutputs`, in the `NodeContext`) and the
//! flush loop (`run`, one task on the node's arbiter). A round takes every tail whose version
//! moved since it was last written and writes them all in one statement,
//! `long_task.record_output` (fenced by run_id, rows held by another transaction skipped). Rounds
//! happen every `live_output_interval`, or sooner when a stream printed `tail_lines` lines since
//! its last snapshot (its reader rings the alarm), but never within `MIN_GAP` of the last round
//! and never two at a time; nothing is sent when nothing changed, and the loop sleeps on the
//! alarm alone while nothing runs.
//!
//! Must never block a reader of a process's pipe (readers only lock their own tail for one push
//! and ring a `Notify`), hold a tail's lock across an await, or write anything but tails of runs
//! it was given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;
use uuid::Uuid;

use crate::db::queries::{self, LiveOutput};
use crate::node::NodeContext;
use crate::process::{LiveTails, OutputAlarm};

/// The least time between two rounds (a stream printing fast asks for many).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// Bound on one round's write: a hung connection delays live output, nothing else.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

struct LiveRun {
    run_id: Uuid,
    tails: LiveTails,
    /// The versions of stdout and stderr last written.
    written: (u64, u64),
}

/// What one round takes from a run: the write, and the versions it carries.
struct Change {
    output: LiveOutput,
    versions: (u64, u64),
}

/// The running processes whose tails are flushed, and the alarm their readers ring.
pub struct LiveOutputs {
    runs: Mutex<HashMap<i64, LiveRun>>,
    alarm: Arc<Notify>,
    interval: Duration,
    lines: usize,
}

impl LiveOutputs {
    /// A registry flushing every `interval` (zero: off) or after `lines` new lines.
    pub fn new(interval: Duration, lines: usize) -> LiveOutputs {
        LiveOutputs {
            runs: Mutex::new(HashMap::new()),
            alarm: Arc::new(Notify::new()),
            interval,
            lines,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<i64, LiveRun>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a process's readers ring (None when live output is off).
    pub fn alarm(&self) -> Option<OutputAlarm> {
        self.enabled().then(|| OutputAlarm {
            notify: Arc::clone(&self.alarm),
            lines: self.lines,
        })
    }

    /// A process started: flush its tails from now on.
    pub fn register(&self, task_id: i64, run_id: Uuid, tails: LiveTails) {
        if !self.enabled() {
            return;
        }
        let was_empty = {
            let mut runs = self.runs();
            let was_empty = runs.is_empty();
            runs.insert(
                task_id,
                LiveRun {
                    run_id,
                    tails,
                    written: (0, 0),
                },
            );
            was_empty
        };
        // the loop sleeps on the alarm alone while nothing runs; otherwise its timer is armed
        // (waking it for every start would turn a busy node's rounds from 1/s into 10/s)
        if was_empty {
            self.alarm.notify_one();
        }
    }

    /// A process ended (its outcome carries the final tails).
    pub fn unregister(&self, task_id: i64) {
        self.runs().remove(&task_id);
    }

    fn is_empty(&self) -> bool {
        self.runs().is_empty()
    }

    /// Every run whose tails moved since they were last written, rendered now.
    fn changes(&self) -> Vec<Change> {
        self.runs()
            .iter()
            .filter_map(|(&task_id, run)| {
                let (stdout, stderr) = run.tails.changed_since(run.written);
                if stdout.is_none() && stderr.is_none() {
                    return None;
                }
                let versions = (
                    stdout.as_ref().map_or(run.written.0, |s| s.0),
                    stderr.as_ref().map_or(run.written.1, |s| s.0),
                );
                Some(Change {
                    output: LiveOutput {
                        task_id,
                        run_id: run.run_id,
                        stdout_tail: stdout.map(|s| s.1),
                        stderr_tail: stderr.map(|s| s.1),
                    },
                    versions,
                })
            })
            .collect()
    }

    /// The database took these: their versions count as written (rows it skipped are retried
    /// in the next round, with whatever they hold then).
    fn written(&self, changes: &[Change], ids: &[i64]) {
        let mut runs = self.runs();
        for change in changes.iter().filter(|c| ids.contains(&c.output.task_id)) {
            if let Some(run) = runs
                .get_mut(&change.output.task_id)
                .filter(|r| r.run_id == change.output.run_id)
            {
                run.written = change.versions;
            }
        }
    }
}

/// The flush loop of a node (until the node's System stops), in a span with the node's worker
/// and group ids. See the module header.
pub async fn run(node: Arc<NodeContext>) {
    let live = &node.live_output;
    if !live.enabled() {
        return;
    }
    let mut last = Instant::now();
    loop {
        if live.is_empty() {
            live.alarm.notified().await;
        } else {
            let _ = tokio::time::timeout_at(last + live.interval, live.alarm.notified()).await;
        }
        let since = last.elapsed();
        if since < MIN_GAP {
            tokio::time::sleep(MIN_GAP - since).await;
        }
        last = Instant::now();
        let changes = live.changes();
        if changes.is_empty() {
            continue;
        }
        let outputs: Vec<LiveOutput> = changes.iter().map(|c| c.output.clone()).collect();
        match tokio::time::timeout(WRITE_DEADLINE, queries::record_output(&node.pool, &outputs))
            .await
        {
            Ok(Ok(ids)) => {
                debug!(
                    changed = changes.len(),
                    written = ids.len(),
                    "live output written"
                );
                live.written(&changes, &ids);
            }
            // best effort: the next round writes what the tails hold then
            Ok(Err(e)) => debug!(error = %e, "live output not written"),
            Err(_) => debug!("live output write timed out"),
        }
    }
}
