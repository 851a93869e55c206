//! `pgtaskd status`: the cluster overview (`pgtaskd::db::overview`) as text or JSON — the same
//! document `GET /cluster` serves. Must never query anything of its own.

use clap::Args;

use pgtaskd::db::overview::{cluster_overview, ClusterOverview};

use super::output::{human_bytes, human_secs, print_json, print_table, shorten};
use super::{connect, ClientArgs};

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Also list nodes that are stopped or dead.
    #[arg(long)]
    all: bool,
    /// At most this many recently finished tasks.
    #[arg(long, default_value_t = 10)]
    recent: i64,
    /// Warn when one transaction (or an inactive replication slot) has held the database's
    /// vacuum horizon back this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    horizon_warning: std::time::Duration,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let overview = cluster_overview(&client, 100, args.recent).await?;
    if args.client.json {
        return print_json(&overview);
    }
    print_text(&overview, args.all, args.horizon_warning);
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_text(o: &ClusterOverview, all: bool, horizon_warning: std::time::Duration) {
    for warning in o.warnings(horizon_warning) {
        println!("WARNING: {warning}\n");
    }
    let nodes: Vec<Vec<String>> = o
        .nodes
        .iter()
        .filter(|n| all || n.alive)
        .map(|n| {
            let state = match (n.alive, n.active, n.low_memory, n.stop) {
                (false, true, _, _) => "dead".to_owned(),
                (false, false, _, _) => "stopped".to_owned(),
                (true, _, true, _) => "LOW MEMORY (not claiming)".to_owned(),
                (true, _, _, 1) => "paused (stop 1)".to_owned(),
                (true, _, _, 2 | 3) => format!("stopping (stop {})", n.stop),
                _ => "alive".to_owned(),
            };
            vec![
                n.id.to_string(),
                opt(n.node_name.clone()),
                opt(n.host.clone()),
                n.group_id.to_string(),
                state,
                format!("{}/{}", n.task_count, n.max_task_count),
                n.heartbeat_age.map_or("-".into(), human_secs),
                n.load1.map_or("-".into(), |l| format!("{l:.2}")),
                n.free_memory.map_or("-".into(), human_bytes),
            ]
        })
        .collect();
    let hidden = o.nodes.len() - nodes.len();
    println!("NODES ({} alive)", o.live_nodes().count());
    print_table(
        &[
            "ID",
            "NAME",
            "HOST",
            "GROUP",
            "STATE",
            "TASKS",
            "HEARTBEAT",
            "LOAD",
            "FREE MEM",
        ],
        &nodes,
    );
    if hidden > 0 {
        println!("({hidden} stopped or dead nodes not shown; --all lists them)");
    }
    if !o.coordinators.is_empty() {
        println!("\nCOORDINATORS");
        let rows: Vec<Vec<String>> = o
            .coordinators
            .iter()
            .map(|c| {
                vec![
                    c.group_id.to_string(),
                    opt(c.worker_id),
                    c.term.to_string(),
                    opt(c.elected_at.clone()),
                ]
            })
            .collect();
        print_table(&["GROUP", "WORKER", "TERM", "ELECTED"], &rows);
    }
    println!("\nQUEUES");
    let rows: Vec<Vec<String>> = o
        .groups
        .iter()
        .map(|g| {
            vec![
                if g.paused {
                    format!("{} (paused)", g.group_id)
                } else {
                    g.group_id.to_string()
                },
                g.waiting.to_string(),
                g.running.to_string(),
                g.drafts.to_string(),
                g.scheduled.to_string(),
                g.oldest_waiting.map_or("-".into(), human_secs),
                g.nodes.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "WAITING",
            "RUNNING",
            "DRAFTS",
            "SCHEDULED",
            "OLDEST WAIT",
            "NODES",
        ],
        &rows,
    );
    if !o.limits.is_empty() {
        println!("\nLIMITS");
        let rows: Vec<Vec<String>> = o
            .limits
            .iter()
            .map(|l| {
                vec![
                    l.group_id.to_string(),
                    l.kind.clone(),
                    opt(l.key.clone()),
                    l.max_running.to_string(),
                    opt(l.running),
                    l.waiting.to_string(),
                    l.tokens_left.map_or("-".into(), |t| format!("{t:.1}")),
                ]
            })
            .collect();
        print_table(
            &[
                "GROUP", "KIND", "KEY", "LIMIT", "RUNNING", "WAITING", "TOKENS",
            ],
            &rows,
        );
    }
    for (title, tasks) in [("RUNNING", &o.running), ("RECENT", &o.recent)] {
        println!("\n{title}");
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    t.state_id.clone(),
                    t.group_id.to_string(),
                    opt(t.worker_id),
                    t.seconds.map_or("-".into(), human_secs),
                    shorten(&t.command.as_deref().unwrap_or_default().join(" "), 60),
                ]
            })
            .collect();
        print_table(
            &["ID", "STATE", "GROUP", "WORKER", "TIME", "COMMAND"],
            &rows,
        );
    }
}
