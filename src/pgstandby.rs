//! Owns a local PostgreSQL primary with one streaming standby (two `PgCluster`s: the standby made
//! by `pg_basebackup -R`, each on its own port), for the failover tests, the chaos harness's
//! `pg_failover` fault and the failover bench: the multi-host URL nodes use to follow a failover
//! (`target_session_attrs=read-write`), waiting for the standby to stream or to replay, the
//! failover itself (kill the primary with `-m immediate`, promote the standby) and rebuilding the
//! old primary as the new one's standby.
//!
//! Like `pgcluster`, it must never be used for a user-provided `DATABASE_URL`: it only manages
//! servers it created. Starting, stopping, promoting and copying block the calling thread.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::pgcluster::{ClusterError, PgCluster};

/// How long a standby may take to stream or to replay a position.
const REPLICATION_WAIT: Duration = Duration::from_secs(60);

/// A primary and its standby; which of the two is the primary changes with each failover.
#[derive(Debug)]
pub struct StandbyPair {
    /// In the order of the URL's hosts.
    servers: [PgCluster; 2],
    primary: usize,
}

impl StandbyPair {
    /// Creates (initdb) and starts a primary under `primary_dir`, copies it into a standby under
    /// `standby_dir`, starts that and waits until it streams. With `synchronous`, every commit
    /// then waits until the standby has flushed it (`synchronous_standby_names = '*'`).
    pub async fn start(
        primary_dir: &Path,
        standby_dir: &Path,
        synchronous: bool,
    ) -> Result<StandbyPair, ClusterError> {
        let primary = PgCluster::open_or_init(primary_dir)?;
        primary.start()?;
        let standby = primary.base_backup(standby_dir)?;
        standby.start()?;
        let pair = StandbyPair {
            servers: [primary, standby],
            primary: 0,
        };
        pair.wait_streaming().await?;
        if synchronous {
            pair.primary().set_synchronous(true)?;
        }
        Ok(pair)
    }

    /// The server that accepts writes (after `promote_standby`: the promoted one).
    pub fn primary(&self) -> &PgCluster {
        &self.servers[self.primary]
    }

    /// The other server.
    pub fn standby(&self) -> &PgCluster {
        &self.servers[1 - self.primary]
    }

    /// `postgresql://postgres@127.0.0.1:<first>,127.0.0.1:<second>/<db>?target_session_attrs=read-write`:
    /// whichever server accepts writes, chosen at each connect. It stays valid across failovers
    /// (a rebuilt standby keeps its port).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/{dbname}?target_session_attrs=read-write",
            self.servers[0].port(),
            self.servers[1].port()
        )
    }

    /// Waits until the standby streams from the primary.
    pub async fn wait_streaming(&self) -> Result<(), ClusterError> {
        let client = self.connect_primary().await?;
        let deadline = Instant::now() + REPLICATION_WAIT;
        loop {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?;
            if row.get::<_, i64>(0) > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    action: "stream to its standby",
                    output: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    pub async fn wait_replayed(&self) -> Result<(), ClusterError> {
        let client = self.connect_primary().await?;
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let deadline = Instant::now() + REPLICATION_WAIT;
        loop {
            let row = client
                .query_one(
                    "SELECT coalesce(bool_or(replay_lsn >= $1::text::pg_lsn), false) FROM pg_stat_replication",
                    &[&lsn],
                )
                .await?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    action: "replay the primary's WAL on the standby",
                    output: format!("position {lsn}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the primary as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill_primary(&self) -> Result<(), ClusterError> {
        self.primary().stop_immediate()
    }

    /// Promotes the standby (starting it first if it was stopped); from then on it is the
    /// primary. The old primary must be dead: two servers accepting writes is a split brain.
    pub fn promote_standby(&mut self) -> Result<(), ClusterError> {
        let standby = self.standby();
        if !standby.is_running() {
            standby.start()?;
        }
        standby.promote()?;
        self.primary = 1 - self.primary;
        Ok(())
    }

    /// Rebuilds the standby (the old primary, dead) as a copy of the primary in its own
    /// directory and on its own port, starts it, waits until it streams; with `synchronous`
    /// the primary's commits then wait for it.
    pub async fn rebuild_standby(&mut self, synchronous: bool) -> Result<(), ClusterError> {
        let old = 1 - self.primary;
        self.servers[old].stop_immediate()?;
        let dir = self.servers[old].dir().to_owned();
        let rebuilt = self.primary().base_backup(&dir)?;
        rebuilt.start()?;
        self.servers[old] = rebuilt;
        self.wait_streaming().await?;
        if synchronous {
            self.primary().set_synchronous(true)?;
        }
        Ok(())
    }

    /// Stops both servers (`-m immediate`: nothing of a throw-away server needs a checkpoint).
    pub fn stop(&self) -> Result<(), ClusterError> {
        let first = self.servers[0].stop_immediate();
        let second = self.servers[1].stop_immediate();
        first.and(second)
    }

    /// Both servers' socket directories (to remove after `stop`).
    pub fn socket_dirs(&self) -> [&Path; 2] {
        [self.servers[0].socket_dir(), self.servers[1].socket_dir()]
    }

    async fn connect_primary(&self) -> Result<tokio_postgres::Client, ClusterError> {
        let (client, connection) =
            tokio_postgres::connect(&self.primary().url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // ends with the client; its error no longer matters then
            let _ = connection.await;
        });
        Ok(client)
    }
}
