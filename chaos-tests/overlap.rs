//! The check that concurrency limits held: the most attempts that overlapped, overall and per
//! concurrency key, computed from `long_task.task_run` start and end times (database clock; a
//! lost node's run ends there when it was handed back, so it counts until then). Shared by the
//! chaos checker and `tests/limits.rs` (included there by path: test-only code stays out of the
//! library).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// The most runs at once over the whole history, and per key (an end at the same instant as a
/// start counts first).
pub async fn most_overlapping(
    client: &Client,
) -> Result<(usize, HashMap<String, usize>), tokio_postgres::Error> {
    let history = client
        .query(
            "SELECT r.started, r.finished, t.concurrency_key FROM long_task.task_run r
               JOIN long_task.task t ON t.id = r.task_id WHERE r.started IS NOT NULL",
            &[],
        )
        .await?;
    let mut events: Vec<(DateTime<Utc>, i64, Option<String>)> =
        Vec::with_capacity(history.len() * 2);
    for row in &history {
        let started: DateTime<Utc> = row.get(0);
        let finished: Option<DateTime<Utc>> = row.get(1);
        let key: Option<String> = row.get(2);
        events.push((started, 1, key.clone()));
        events.push((finished.unwrap_or(started), -1, key));
    }
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i64, 0usize);
    let mut per_key: HashMap<String, (i64, usize)> = HashMap::new();
    for (_, delta, key) in events {
        now += delta;
        most = most.max(now.max(0) as usize);
        if let Some(key) = key {
            let k = per_key.entry(key).or_default();
            k.0 += delta;
            k.1 = k.1.max(k.0.max(0) as usize);
        }
    }
    Ok((
        most,
        per_key.into_iter().map(|(k, (_, m))| (k, m)).collect(),
    ))
}
