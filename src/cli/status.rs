//! `pgtaskd status`: one look at the cluster — every node with its liveness (lock held), heartbeat
//! age (database clock), running count and limit, and every group with its coordinator, term and
//! queue depth. Read-only: must never change anything.

use anyhow::Context as _;
use clap::Args;

use pgtaskd::db::cluster::{group_status, node_status};

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        let client = pgtaskd::db::connect_dedicated(&args.database_url, "status").await?;
        let nodes = node_status(&client).await?;
        let groups = group_status(&client).await?;
        print!("{}", render(&nodes, &groups));
        Ok(())
    })
}

fn render(
    nodes: &[pgtaskd::db::cluster::NodeStatus],
    groups: &[pgtaskd::db::cluster::GroupStatus],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NODES\n{:>8}  {:<16} {:>5}  {:<8} {:>10}  {:>9}  {:<10}",
        "worker", "name", "group", "state", "heartbeat", "running", "stop"
    );
    for n in nodes {
        let state = match (n.alive, n.active) {
            (true, _) => "alive",
            (false, true) => "dead?",
            (false, false) => "stopped",
        };
        let heartbeat = n
            .heartbeat_age_secs
            .map_or("never".to_owned(), |s| format!("{s:.1}s ago"));
        let stop = match n.stop {
            0 => "-",
            1 => "paused",
            2 => "draining",
            3 => "cancelling",
            _ => "?",
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<16} {:>5}  {:<8} {:>10}  {:>9}  {:<10}",
            n.worker_id,
            n.node_name.as_deref().unwrap_or("-"),
            n.group_id,
            state,
            heartbeat,
            format!("{}/{}", n.running, n.max_task_count),
            stop
        );
    }
    let _ = writeln!(
        out,
        "\nGROUPS\n{:>5}  {:>11}  {:>6}  {:>8}  {:>8}",
        "group", "coordinator", "term", "waiting", "running"
    );
    for g in groups {
        let coordinator = match (g.coordinator, g.coordinator_alive) {
            (Some(w), true) => w.to_string(),
            (Some(w), false) => format!("({w}) none"),
            (None, _) => "none".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:>5}  {:>11}  {:>6}  {:>8}  {:>8}",
            g.group_id,
            coordinator,
            g.term.map_or("-".to_owned(), |t| t.to_string()),
            g.waiting,
            g.running
        );
    }
    out
}
