//! pgtaskd: a clustered task dispatcher and scheduler for PostgreSQL.
//!
//! Tasks are rows of `long_task.task`; nodes (`pgtaskd node`) claim them and run each as an OS
//! process. See ARCHITECTURE.md for the code map and the invariants.

pub mod actors;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cron;
pub mod db;
pub mod embedded;
pub mod error;
pub mod handler;
pub mod http;
pub mod humanize;
pub mod live_output;
pub mod metrics;
pub mod node;
pub mod pgcluster;
pub mod pgstandby;
pub mod process;
pub mod reload;
pub mod resources;
pub mod service;
