//! The node's metrics: one process-wide Prometheus registry and the few calls the actors make to
//! feed it (claim, outcome written, the time of those writes, process start/end, reconnects,
//! fenced writes, runs handed over, heartbeat), plus the rendering of the text exposition format
//! for `GET /metrics`.
//!
//! Built on the `prometheus` crate (default features off: no protobuf, no HTTP server of its own;
//! our own registry, labelled counters, gauges and histograms, and a text encoder). Values that
//! describe the whole cluster (queue depth, oldest waiting age, coordinator terms) are read from
//! the database at scrape time by the HTTP layer and set here through `set_cluster_gauges`.
//!
//! One node per process: the registry is global. Recording must never block, fail or panic: a
//! metric that cannot be registered is logged once and recording into it is skipped.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Every metric of a node.
struct Metrics {
    registry: Registry,
    tasks_started: IntCounterVec,
    tasks_finished: IntCounterVec,
    dispatch_latency: HistogramVec,
    run_duration: HistogramVec,
    coordinator_rounds: HistogramVec,
    db_writes: HistogramVec,
    queue_depth: GaugeVec,
    oldest_waiting: GaugeVec,
    group_paused: GaugeVec,
    coordinator_term: GaugeVec,
    running: IntGauge,
    heartbeat_age: Gauge,
    reconnects: IntCounterVec,
    fenced_writes: IntCounter,
    handed_over_runs: IntCounter,
    scheduler_ticks: IntCounter,
    low_memory: IntGauge,
    free_memory: Gauge,
    load1: Gauge,
    horizon_age: GaugeVec,
    horizon_xid_age: Gauge,
    table_dead_tuples: GaugeVec,
    table_bytes: GaugeVec,
    limit_max: GaugeVec,
    limit_running: GaugeVec,
    rate_tokens: GaugeVec,
    last_heartbeat: Mutex<Option<Instant>>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ROUND_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Errors of building the registry (a programming error: duplicate or malformed metric names).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    fn build() -> Result<Metrics, prometheus::Error> {
        let metrics = Self::register()?;
        // Known label values show from the start (a counter that appears only later is easy to
        // miss in a dashboard).
        for connection in ["listener", "membership"] {
            metrics.reconnects.with_label_values(&[connection]);
        }
        for write in [DbWrite::Claim, DbWrite::Outcomes] {
            metrics.db_writes.with_label_values(&[write.label()]);
        }
        Ok(metrics)
    }

    fn register() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        Ok(Metrics {
            tasks_started: reg!(IntCounterVec::new(
                Opts::new(
                    "pgtaskd_tasks_started_total",
                    "Runs this node started, by group."
                ),
                &["group"]
            )?),
            tasks_finished: reg!(IntCounterVec::new(
                Opts::new(
                    "pgtaskd_tasks_finished_total",
                    "Outcomes this node wrote, by group and final state (CS, CF, CC)."
                ),
                &["group", "state"]
            )?),
            dispatch_latency: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "pgtaskd_dispatch_latency_seconds",
                    "Time from a task becoming waiting (AW) to this node claiming it (database clock)."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["group"]
            )?),
            run_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "pgtaskd_run_duration_seconds",
                    "Wall time of a run on this node, from spawn to exit, by group and final state."
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["group", "state"]
            )?),
            coordinator_rounds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "pgtaskd_coordinator_round_seconds",
                    "Wall time of this node's coordinator rounds (long_task.coordinate), by group."
                )
                .buckets(ROUND_BUCKETS.to_vec()),
                &["group"]
            )?),
            db_writes: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "pgtaskd_db_write_seconds",
                    "Wall time of this node's writes on the task path, commit included, by write \
                     (claim: long_task.claim; outcomes: a batch of long_task.complete_runs)."
                )
                .buckets(ROUND_BUCKETS.to_vec()),
                &["write"]
            )?),
            queue_depth: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_queue_depth",
                    "Waiting (AW) tasks per group, read at scrape time."
                ),
                &["group"]
            )?),
            oldest_waiting: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_oldest_waiting_seconds",
                    "Age of the oldest waiting (AW) task per group, read at scrape time."
                ),
                &["group"]
            )?),
            limit_max: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_limit",
                    "A concurrency limit (kind group: max_running; kind key: a configured key's limit) or a rate limit (kind rate: starts per interval), read at scrape time."
                ),
                &["group", "kind", "key"]
            )?),
            limit_running: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_limit_running",
                    "Tasks running under a concurrency limit (long_task.limits), read at scrape time."
                ),
                &["group", "kind", "key"]
            )?),
            rate_tokens: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_rate_tokens",
                    "Starts left in a rate-limited group's token bucket now, read at scrape time."
                ),
                &["group"]
            )?),
            group_paused: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_group_paused",
                    "1 while the group is paused (group_settings.paused: no task of it starts), read at scrape time."
                ),
                &["group"]
            )?),
            coordinator_term: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_coordinator_term",
                    "The coordinator's fencing term per group (long_task.coordinator)."
                ),
                &["group"]
            )?),
            running: reg!(IntGauge::new(
                "pgtaskd_running_processes",
                "Task processes this node is running now."
            )?),
            heartbeat_age: reg!(Gauge::new(
                "pgtaskd_heartbeat_age_seconds",
                "Seconds since this node's last successful heartbeat (-1: none yet)."
            )?),
            reconnects: reg!(IntCounterVec::new(
                Opts::new(
                    "pgtaskd_reconnects_total",
                    "Dedicated connections re-established, by connection (listener, membership)."
                ),
                &["connection"]
            )?),
            fenced_writes: reg!(IntCounter::new(
                "pgtaskd_fenced_writes_total",
                "Outcomes discarded because the run no longer owned its task (run_id fencing)."
            )?),
            handed_over_runs: reg!(IntCounter::new(
                "pgtaskd_handed_over_runs_total",
                "Runs this node killed because an operator handed its tasks over to other nodes \
                 (long_task.hand_over_node): re-queued, not failed."
            )?),
            scheduler_ticks: reg!(IntCounter::new(
                "pgtaskd_scheduler_ticks_total",
                "Scheduler ticks this node ran as its group's coordinator (schedules, leases, retention, retries)."
            )?),
            low_memory: reg!(IntGauge::new(
                "pgtaskd_low_memory",
                "1 while free memory is under min_free_memory and the node claims nothing."
            )?),
            free_memory: reg!(Gauge::new(
                "pgtaskd_free_memory_bytes",
                "Available memory of the host at the last heartbeat."
            )?),
            load1: reg!(Gauge::new(
                "pgtaskd_load1",
                "One-minute load average of the host at the last heartbeat."
            )?),
            horizon_age: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_db_horizon_age_seconds",
                    "Age of the transaction holding the database's vacuum horizon back the most \
                     (0: none; a replication slot has no age, see pgtaskd_db_horizon_xid_age), \
                     labelled with what it is, who and its pid. Read at scrape time."
                ),
                &["kind", "holder", "pid"]
            )?),
            horizon_xid_age: reg!(Gauge::new(
                "pgtaskd_db_horizon_xid_age",
                "Transactions since the xid the oldest holder of the vacuum horizon keeps (0: none)."
            )?),
            table_dead_tuples: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_table_dead_tuples",
                    "Dead rows of the hot-path tables (task, task_run, event, ready), read at scrape time."
                ),
                &["table"]
            )?),
            table_bytes: reg!(GaugeVec::new(
                Opts::new(
                    "pgtaskd_table_bytes",
                    "Size with indexes of the hot-path tables, read at scrape time."
                ),
                &["table"]
            )?),
            last_heartbeat: Mutex::new(None),
            registry,
        })
    }
}

fn metrics() -> Option<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match Metrics::build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics disabled: cannot build the registry");
                None
            }
        })
        .as_ref()
}

/// A run was claimed and started; `waited` is how long it had been waiting (seconds).
pub fn task_started(group_id: i32, waited: Option<f64>) {
    if let Some(m) = metrics() {
        let group = group_id.to_string();
        m.tasks_started.with_label_values(&[&group]).inc();
        if let Some(w) = waited {
            m.dispatch_latency
                .with_label_values(&[&group])
                .observe(w.max(0.0));
        }
    }
}

/// A coordinator round of `group_id` took `seconds` (the call of `long_task.coordinate`).
pub fn coordinator_round(group_id: i32, seconds: f64) {
    if let Some(m) = metrics() {
        m.coordinator_rounds
            .with_label_values(&[&group_id.to_string()])
            .observe(seconds);
    }
}

/// A write of the task path, for `pgtaskd_db_write_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbWrite {
    /// A claim of waiting tasks (`long_task.claim`).
    Claim,
    /// A batch of outcomes (`long_task.complete_runs`).
    Outcomes,
}

impl DbWrite {
    fn label(self) -> &'static str {
        match self {
            DbWrite::Claim => "claim",
            DbWrite::Outcomes => "outcomes",
        }
    }
}

/// Runs a write of the task path and records how long it took, from the call to its answer (a
/// pool wait, the statement and its commit), whether it succeeded or not.
pub async fn timed_db_write<F: std::future::Future>(write: DbWrite, call: F) -> F::Output {
    let began = Instant::now();
    let answer = call.await;
    if let Some(m) = metrics() {
        m.db_writes
            .with_label_values(&[write.label()])
            .observe(began.elapsed().as_secs_f64());
    }
    answer
}

/// The number of task processes this node runs now (set at scrape time).
pub fn set_running(n: usize) {
    if let Some(m) = metrics() {
        m.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// An outcome was written in `state` for a run that lasted `seconds`.
pub fn task_finished(group_id: i32, state: &str, seconds: Option<f64>) {
    if let Some(m) = metrics() {
        let labels = [group_id.to_string(), state.trim().to_owned()];
        m.tasks_finished.with_label_values(&labels).inc();
        if let Some(s) = seconds {
            m.run_duration.with_label_values(&labels).observe(s);
        }
    }
}

/// An outcome was discarded: the run had been fenced.
pub fn fenced_write() {
    if let Some(m) = metrics() {
        m.fenced_writes.inc();
    }
}

/// A hand-over of this node's tasks took a run away: it is being killed (and runs elsewhere).
pub fn run_handed_over() {
    if let Some(m) = metrics() {
        m.handed_over_runs.inc();
    }
}

/// The Scheduler ran a tick.
pub fn scheduler_tick() {
    if let Some(m) = metrics() {
        m.scheduler_ticks.inc();
    }
}

/// A dedicated connection (`listener`, `membership`) was re-established.
pub fn reconnected(connection: &str) {
    if let Some(m) = metrics() {
        m.reconnects.with_label_values(&[connection]).inc();
    }
}

/// A heartbeat succeeded, with the host's resources at that moment.
pub fn heartbeat_ok(resources: Option<&crate::resources::Resources>, low_memory: bool) {
    if let Some(m) = metrics() {
        *m.last_heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if let Some(r) = resources {
            m.free_memory.set(r.free_memory as f64);
            m.load1.set(r.load1);
        }
        m.low_memory.set(i64::from(low_memory));
    }
}

/// Seconds since the last successful heartbeat of this process's node (None: none yet).
pub fn heartbeat_age() -> Option<f64> {
    let m = metrics()?;
    let last = *m.last_heartbeat.lock().unwrap_or_else(|e| e.into_inner());
    last.map(|t| t.elapsed().as_secs_f64())
}

/// Whether the node stopped claiming for lack of memory.
pub fn is_low_memory() -> bool {
    metrics().is_some_and(|m| m.low_memory.get() != 0)
}

/// One group's figures read from the database at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct GroupGauges {
    pub group_id: i32,
    pub waiting: i64,
    pub oldest_waiting_secs: Option<f64>,
    pub coordinator_term: Option<i64>,
    pub paused: bool,
}

/// Replaces the cluster-wide gauges (groups that vanished disappear from the output).
pub fn set_cluster_gauges(groups: &[GroupGauges]) {
    if let Some(m) = metrics() {
        m.queue_depth.reset();
        m.oldest_waiting.reset();
        m.group_paused.reset();
        m.coordinator_term.reset();
        for g in groups {
            let label = [g.group_id.to_string()];
            m.queue_depth
                .with_label_values(&label)
                .set(g.waiting as f64);
            m.oldest_waiting
                .with_label_values(&label)
                .set(g.oldest_waiting_secs.unwrap_or(0.0));
            m.group_paused
                .with_label_values(&label)
                .set(if g.paused { 1.0 } else { 0.0 });
            if let Some(term) = g.coordinator_term {
                m.coordinator_term
                    .with_label_values(&label)
                    .set(term as f64);
            }
        }
    }
}

/// Replaces the limit gauges from `long_task.limits` (the rows `db::overview` reads: group and
/// rate limits, and keys with a limit of their own, so the label set stays bounded).
pub fn set_limit_gauges(limits: &[crate::db::overview::LimitInfo]) {
    if let Some(m) = metrics() {
        m.limit_max.reset();
        m.limit_running.reset();
        m.rate_tokens.reset();
        for l in limits {
            let group = l.group_id.to_string();
            let labels = [
                group.as_str(),
                l.kind.as_str(),
                l.key.as_deref().unwrap_or(""),
            ];
            m.limit_max
                .with_label_values(&labels)
                .set(f64::from(l.max_running));
            if let Some(running) = l.running {
                m.limit_running
                    .with_label_values(&labels)
                    .set(running as f64);
            }
            if let Some(tokens) = l.tokens_left {
                m.rate_tokens.with_label_values(&[&group]).set(tokens);
            }
        }
    }
}

/// Sets the database gauges read at scrape time: the vacuum horizon's oldest holder and the
/// hot-path tables (`db::overview`).
pub fn set_database_gauges(
    horizon: Option<&crate::db::overview::HorizonHolder>,
    tables: &[crate::db::overview::TableInfo],
) {
    if let Some(m) = metrics() {
        m.horizon_age.reset();
        match horizon {
            Some(h) => {
                let pid = h.pid.map(|p| p.to_string()).unwrap_or_default();
                m.horizon_age
                    .with_label_values(&[&h.kind, h.holder.as_deref().unwrap_or(""), &pid])
                    .set(h.age_seconds.unwrap_or(0.0));
                m.horizon_xid_age.set(h.xid_age.unwrap_or(0) as f64);
            }
            None => {
                m.horizon_age.with_label_values(&["none", "", ""]).set(0.0);
                m.horizon_xid_age.set(0.0);
            }
        }
        m.table_dead_tuples.reset();
        m.table_bytes.reset();
        for t in tables {
            m.table_dead_tuples
                .with_label_values(&[&t.table])
                .set(t.dead_tuples as f64);
            m.table_bytes
                .with_label_values(&[&t.table])
                .set(t.bytes as f64);
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Result<String, MetricsError> {
    let Some(m) = metrics() else {
        return Ok(String::new());
    };
    m.heartbeat_age.set(heartbeat_age().unwrap_or(-1.0));
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&m.registry.gather(), &mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_show_in_the_text() {
        task_started(7, Some(0.02));
        task_finished(7, "CS ", Some(1.5));
        fenced_write();
        reconnected("listener");
        set_cluster_gauges(&[GroupGauges {
            group_id: 7,
            waiting: 3,
            oldest_waiting_secs: Some(4.0),
            paused: false,
            coordinator_term: Some(2),
        }]);
        let text = render().expect("renders");
        assert!(
            text.contains("pgtaskd_tasks_started_total{group=\"7\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgtaskd_tasks_finished_total{group=\"7\",state=\"CS\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgtaskd_queue_depth{group=\"7\"} 3"),
            "{text}"
        );
        assert!(text.contains("pgtaskd_heartbeat_age_seconds -1"), "{text}");
    }
}
