//! Operator verbs on a node: `hand-over` (`long_task.hand_over_node`, through
//! `pgtaskd::db::admin`). Parses the flags, prints what the database did (text or JSON) and maps
//! the result to the documented exit codes. Must never build SQL.

use clap::Args;
use serde_json::json;
use tokio_postgres::error::SqlState;

use pgtaskd::db::admin::{self, HandOver};
use pgtaskd::db::DbError;

use super::output::{exit, print_json, print_table, Failure};
use super::{connect, ClientArgs};

pub const HAND_OVER_EXAMPLES: &str = "Examples:
  pgtaskd hand-over 3                     (node 3 claims nothing; its tasks are killed and run elsewhere)
  pgtaskd hand-over 3 --wait-for-finish   (node 3 claims nothing; its running tasks finish on it)
  pgtaskd hand-over 3 --json | jq .requeued
Resume the node afterwards with: UPDATE long_task.worker SET stop = 0 WHERE id = 3
Exit codes: 0 done, 3 no such node, 4 refused by the database (a role without the grant).";

/// `hand-over` flags.
#[derive(Debug, Clone, Args)]
pub struct HandOverArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The node's worker id.
    worker_id: i64,
    /// Let the node's running tasks finish on it instead of killing them (only new tasks go to
    /// other nodes).
    #[arg(long)]
    wait_for_finish: bool,
}

pub async fn hand_over(args: HandOverArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let kill = !args.wait_for_finish;
    let runs = match admin::hand_over_node(&client, args.worker_id, kill).await {
        Ok(HandOver::Done(runs)) => runs,
        Ok(HandOver::NotFound) => {
            return Err(Failure {
                code: exit::NOT_FOUND,
                message: format!("no node with worker id {}", args.worker_id),
            }
            .into())
        }
        Err(DbError::Query { source, .. })
            if source.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            let why = source
                .as_db_error()
                .map_or_else(|| source.to_string(), |d| d.message().to_owned());
            return Err(Failure::refused(format!(
                "cannot hand node {} over: {why} (it needs the pgtaskd_operator role)",
                args.worker_id
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let counts = admin::count_actions(&runs);
    if args.client.json {
        let mut answer = json!({ "id": args.worker_id, "kill": kill, "runs": runs });
        for (action, n) in counts {
            answer[action] = json!(n);
        }
        return print_json(&answer);
    }
    let summary: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(action, n)| format!("{n} {action}"))
        .collect();
    println!(
        "node {}: claims nothing now (stop code set); {}",
        args.worker_id,
        if summary.is_empty() {
            "it was running nothing".to_owned()
        } else {
            summary.join(", ")
        }
    );
    if !runs.is_empty() {
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.task_id.to_string(),
                    r.run_id.map_or_else(|| "-".into(), |u| u.to_string()),
                    r.action.clone(),
                ]
            })
            .collect();
        print_table(&["TASK", "RUN", "ACTION"], &rows);
    }
    Ok(())
}
