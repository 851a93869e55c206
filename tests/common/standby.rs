//! Test support: a PostgreSQL primary and a streaming standby of its own (`pgtaskd::pgstandby`)
//! under `CARGO_TARGET_TMPDIR/pgtaskd-pair-<unique>`, the multi-host URL a node uses to follow a
//! failover, and the failover's two steps; both servers stopped and removed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Instant;

use pgtaskd::pgcluster::create_database;
use pgtaskd::pgstandby::StandbyPair;

use super::{tmp_root, unique_name};

pub struct TestPair {
    pub pair: StandbyPair,
    root: PathBuf,
}

impl TestPair {
    /// A running primary with a running standby streaming from it; with `synchronous` every
    /// commit waits for the standby (a failover then loses no acknowledged commit).
    pub async fn new(synchronous: bool) -> TestPair {
        let root = tmp_root().join(unique_name("pgtaskd-pair"));
        let pair = StandbyPair::start(&root.join("primary"), &root.join("standby"), synchronous)
            .await
            .unwrap_or_else(|e| panic!("cannot start a primary and a standby: {e}"));
        TestPair { pair, root }
    }

    /// Creates `name` on the primary (the standby gets it by replication); its multi-host URL.
    pub async fn database(&self, name: &str) -> String {
        create_database(&self.pair.primary().url("postgres"), name)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        self.pair.url(name)
    }

    pub async fn wait_replayed(&self) {
        self.pair
            .wait_replayed()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Kills the primary as a crash would (`-m immediate`); returns when it was killed.
    pub fn kill_primary(&self) -> Instant {
        let killed = Instant::now();
        self.pair.kill_primary().expect("kill the primary");
        killed
    }

    /// Promotes the standby (started first if stopped); returns when it accepts writes.
    pub fn promote_standby(&mut self) {
        self.pair.promote_standby().expect("promote the standby");
    }
}

impl Drop for TestPair {
    fn drop(&mut self) {
        if let Err(e) = self.pair.stop() {
            eprintln!("warning: cannot stop the pair: {e}");
        }
        for dir in self.pair.socket_dirs() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
