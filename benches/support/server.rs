//! What the server did in the background over a bench window: WAL written, checkpoints, and
//! autovacuum (the workers running at the window's end, and the `long_task` tables whose
//! autovacuum count moved). A soak prints it beside each window's latency, so a slow window
//! shows whether it met a checkpoint or a vacuum pass without the server's log.

use tokio_postgres::Client;

/// Cumulative counters, read once per window.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    wal_bytes: f64,
    checkpoints: i64,
    /// `long_task` tables and their `autovacuum_count`.
    vacuums: Vec<(String, i64)>,
}

/// The background work of one window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub wal_mib_per_sec: f64,
    pub checkpoints: i64,
    /// Tables whose autovacuum pass ended in the window.
    pub vacuumed: Vec<String>,
    /// What the autovacuum workers were doing at the window's end (`VACUUM long_task.task`).
    pub vacuuming: Vec<String>,
}

impl Counters {
    /// Reads the counters (PostgreSQL 14 to 16 keep checkpoints in `pg_stat_bgwriter`, 17 and
    /// later in `pg_stat_checkpointer`); what cannot be read stays zero.
    pub async fn read(client: &Client) -> Counters {
        let wal_bytes = client
            .query_one("SELECT wal_bytes::float8 FROM pg_stat_wal", &[])
            .await
            .map(|r| r.get::<_, f64>(0))
            .unwrap_or(0.0);
        let checkpoints = match client
            .query_one(
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
                &[],
            )
            .await
        {
            Ok(row) => row.get::<_, i64>(0),
            Err(_) => client
                .query_one(
                    "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0),
        };
        let vacuums = client
            .query(
                "SELECT relname::text, autovacuum_count FROM pg_stat_user_tables
                  WHERE schemaname = 'long_task' ORDER BY relname",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        Counters {
            wal_bytes,
            checkpoints,
            vacuums,
        }
    }

    /// The window from `self` (its start) to `now` (its end), `secs` long.
    pub async fn window(&self, now: &Counters, secs: f64, client: &Client) -> Window {
        let vacuumed = now
            .vacuums
            .iter()
            .filter(|(name, count)| {
                self.vacuums
                    .iter()
                    .find(|(n, _)| n == name)
                    .is_none_or(|(_, before)| count > before)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let vacuuming = client
            .query(
                "SELECT regexp_replace(query, '^autovacuum: ', '') FROM pg_stat_activity
                  WHERE backend_type = 'autovacuum worker' AND query <> ''",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        Window {
            wal_mib_per_sec: (now.wal_bytes - self.wal_bytes) / secs.max(1e-9) / (1024.0 * 1024.0),
            checkpoints: now.checkpoints - self.checkpoints,
            vacuumed,
            vacuuming,
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server: WAL {:.1} MiB/s, checkpoints {}",
            self.wal_mib_per_sec, self.checkpoints
        )?;
        if !self.vacuumed.is_empty() {
            write!(f, ", autovacuum ended on {}", self.vacuumed.join(" "))?;
        }
        if !self.vacuuming.is_empty() {
            write!(f, ", autovacuum running: {}", self.vacuuming.join("; "))?;
        }
        Ok(())
    }
}
