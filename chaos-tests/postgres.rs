//! The harness's PostgreSQL: one throw-away server, or (with `--pg-failover-every`) a primary and
//! a synchronous streaming standby (`pgtaskd::pgstandby`) whose `pg_failover` fault kills the
//! primary (`-m immediate`), promotes the standby and rebuilds the old primary as the new one's
//! standby (same port), so the nodes' multi-host URL stays valid and the next failover finds a
//! standby again. Commits wait for the standby whenever one streams, so a failover loses no
//! acknowledged commit and every invariant of `check.rs` holds as it is. Owns only the servers
//! it created.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use pgtaskd::pgcluster::PgCluster;
use pgtaskd::pgstandby::StandbyPair;

pub enum Postgres {
    Single(PgCluster),
    Pair(StandbyPair),
}

impl Postgres {
    /// One server under `dir/pg`, or with `standby` a primary under `dir/pg` and a standby
    /// under `dir/pg-standby`, both running.
    pub async fn start(dir: &Path, standby: bool) -> anyhow::Result<Postgres> {
        if standby {
            let pair = StandbyPair::start(&dir.join("pg"), &dir.join("pg-standby"), true)
                .await
                .context("starting a primary and a standby")?;
            return Ok(Postgres::Pair(pair));
        }
        let cluster = PgCluster::open_or_init(&dir.join("pg")).context("initdb")?;
        cluster.start().context("starting PostgreSQL")?;
        Ok(Postgres::Single(cluster))
    }

    /// The server that accepts writes now.
    pub fn primary(&self) -> &PgCluster {
        match self {
            Postgres::Single(cluster) => cluster,
            Postgres::Pair(pair) => pair.primary(),
        }
    }

    /// The URL of `dbname` for the nodes and the harness (with a standby: both servers, the
    /// writable one chosen at connect time).
    pub fn url(&self, dbname: &str) -> String {
        match self {
            Postgres::Single(cluster) => cluster.url(dbname),
            Postgres::Pair(pair) => pair.url(dbname),
        }
    }

    /// The `pg_failover` fault: kill the primary, promote the standby, then rebuild the old
    /// primary as the new one's synchronous standby. Returns how long no server accepted
    /// writes (kill to promoted).
    pub async fn fail_over(&mut self) -> anyhow::Result<Duration> {
        let Postgres::Pair(pair) = self else {
            anyhow::bail!("no standby to fail over to");
        };
        let killed = Instant::now();
        // blocking (pg_ctl), on this worker thread; the feeder and the checks run on the other
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            pair.kill_primary().context("killing the primary")?;
            pair.promote_standby().context("promoting the standby")?;
            Ok(())
        })?;
        let down = killed.elapsed();
        pair.rebuild_standby(true)
            .await
            .context("rebuilding the old primary as a standby")?;
        Ok(down)
    }

    /// Stops every server (best effort).
    pub fn stop(&self) {
        match self {
            Postgres::Single(cluster) => {
                let _ = cluster.stop();
            }
            Postgres::Pair(pair) => {
                let _ = pair.stop();
            }
        }
    }

    /// Removes every server's socket directory (after `stop`).
    pub fn remove_sockets(&self) {
        let dirs: Vec<&Path> = match self {
            Postgres::Single(cluster) => vec![cluster.socket_dir()],
            Postgres::Pair(pair) => pair.socket_dirs().to_vec(),
        };
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
