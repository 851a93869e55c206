//! Verbs that follow tasks until they end: `wait ID…`, `logs -f ID`, and `submit --wait`. Each
//! listens (`pgtaskd::db::follow::Follower`) before its first read, reads again when a
//! notification names one of its tasks (and at least every 5 s), and exits with the code of the
//! tasks' end (`task_exit_code`, documented in `pgtaskd --help`); a lost connection (a failover)
//! is taken again by the follower. Must never build SQL.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use pgtaskd::db::codes::{TaskState, DONE_CHANNEL, OUTPUT_CHANNEL};
use pgtaskd::db::follow::{Follower, OutputCursor, TaskStatus, Woke, REREAD};

use super::output::{exit, print_json, Failure};
use super::ClientArgs;

pub const WAIT_EXAMPLES: &str = "Examples:
  pgtaskd wait 42
  pgtaskd wait 42 43 44 --timeout 10m || echo \"exit $?\"
  pgtaskd wait 42 --json | jq '.[0].state_id'

Exit codes: 0 all succeeded; else the first failed task's (in argument order): its exit code,
128+N when signal N ended it, 125 when it was cancelled (CC, also 'dependency failed' and a
cancel before it ran), 126 when it failed without an exit status (never started: a refused or
missing program; worker lost; a handler's error; timed out while exiting 0); 124 when --timeout
passed first; 3 when a task does not exist (or was deleted while waited for).";

pub const LOGS_EXAMPLES: &str = "Examples:
  pgtaskd logs 42
  pgtaskd logs 42 2>/dev/null | tail -1
  pgtaskd logs -f 42; echo \"the task ended with $?\"

With -f: prints the output as it arrives (stdout to stdout, stderr to stderr; a new attempt and
skipped output are noted on stderr) until the task is final, then exits like `pgtaskd wait`.";

/// The exit code that stands for a final task (see `WAIT_EXAMPLES`); None while it is not final.
pub fn task_exit_code(status: &TaskStatus) -> Option<u8> {
    Some(match status.state {
        TaskState::Succeeded => 0,
        TaskState::Cancelled => exit::TASK_CANCELLED,
        TaskState::Failed => match (status.exit_code, status.exit_signal) {
            (Some(code), _) if code != 0 => u8::try_from(code & 0xff).unwrap_or(1).max(1),
            (_, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
            _ => exit::TASK_NO_STATUS,
        },
        _ => return None,
    })
}

/// A line about a final task, for people.
fn describe(status: &TaskStatus) -> String {
    let mut line = format!("{} {}", status.id, status.state.code());
    if let Some(code) = status.exit_code {
        line.push_str(&format!(" exit {code}"));
    }
    if let Some(signal) = status.exit_signal {
        line.push_str(&format!(" signal {signal}"));
    }
    if let Some(error) = &status.error {
        line.push_str(&format!(": {error}"));
    }
    line
}

fn status_json(status: &TaskStatus) -> serde_json::Value {
    json!({
        "id": status.id,
        "state_id": status.state.code(),
        "exit_code": status.exit_code,
        "exit_signal": status.exit_signal,
        "error": status.error,
    })
}

/// The end of a follow: the exit code alone (what was to say is printed already).
fn ended(code: u8) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(Failure {
        code,
        message: String::new(),
    }
    .into())
}

/// `wait` flags.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Give up after this long (e.g. 90s, 10m): exit 124.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The tasks to wait for.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<i64>,
}

pub async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let mut follower =
        Follower::connect(&args.client.database_url, "cli wait", &[DONE_CHANNEL]).await?;
    wait_on(&mut follower, &args.ids, args.timeout, args.client.json).await
}

/// Waits on an open follower until every task of `ids` is final (see `WAIT_EXAMPLES`).
pub async fn wait_on(
    follower: &mut Follower,
    ids: &[i64],
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut pending: Vec<i64> = ids.to_vec();
    pending.sort_unstable();
    pending.dedup();
    let mut done: BTreeMap<i64, TaskStatus> = BTreeMap::new();
    let mut first_read = true;
    loop {
        let read = follower.statuses(&pending).await?;
        for id in &pending {
            match read.iter().find(|s| s.id == *id) {
                None if first_read => return Err(Failure::not_found(*id)),
                None => {
                    return Err(Failure {
                        code: exit::NOT_FOUND,
                        message: format!("task {id} was deleted while waited for"),
                    }
                    .into())
                }
                Some(s) if s.state.is_final() => {
                    if !json {
                        println!("{}", describe(s));
                    }
                    done.insert(*id, s.clone());
                }
                Some(_) => {}
            }
        }
        first_read = false;
        pending.retain(|id| !done.contains_key(id));
        if pending.is_empty() {
            break;
        }
        let reread = Instant::now() + REREAD;
        let wake = deadline.map_or(reread, |d| d.min(reread));
        let woke = follower.next(|id| pending.binary_search(&id).is_ok(), Some(wake));
        if woke.await? == Woke::Deadline && deadline.is_some_and(|d| Instant::now() >= d) {
            let waiting: Vec<String> = read
                .iter()
                .filter(|s| !s.state.is_final())
                .map(|s| format!("{} {}", s.id, s.state.code()))
                .collect();
            return Err(Failure {
                code: exit::TASK_TIMEOUT,
                message: format!("timed out; still not final: {}", waiting.join(", ")),
            }
            .into());
        }
    }
    if json {
        let all: Vec<_> = ids
            .iter()
            .filter_map(|id| done.get(id))
            .map(status_json)
            .collect();
        print_json(&all)?;
    }
    let code = ids
        .iter()
        .filter_map(|id| done.get(id).and_then(task_exit_code))
        .find(|&c| c != 0)
        .unwrap_or(0);
    ended(code)
}

/// `logs -f`: prints a task's output as it arrives, until it is final.
pub async fn follow_logs(client: &ClientArgs, id: i64) -> anyhow::Result<()> {
    let mut follower = Follower::connect(
        &client.database_url,
        "cli logs",
        &[OUTPUT_CHANNEL, DONE_CHANNEL],
    )
    .await?;
    follow_output(&mut follower, id).await
}

/// Prints the output of task `id` on an open follower until the task is final.
pub async fn follow_output(follower: &mut Follower, id: i64) -> anyhow::Result<()> {
    let mut cursor = OutputCursor::default();
    let mut first_read = true;
    // whether the last text printed on each stream ended a line
    let (mut out_open, mut err_open) = (false, false);
    loop {
        let (view, advances) = match follower.read_output(id, &mut cursor).await? {
            Some(read) => read,
            None if first_read => return Err(Failure::not_found(id)),
            None => {
                return Err(Failure {
                    code: exit::NOT_FOUND,
                    message: format!("task {id} was deleted while followed"),
                }
                .into())
            }
        };
        first_read = false;
        for advance in advances {
            if let Some(attempt) = advance.new_attempt {
                end_lines(&mut out_open, &mut err_open);
                eprintln!("pgtaskd: task {id}: attempt {attempt}");
            }
            if advance.gap {
                end_lines(&mut out_open, &mut err_open);
                eprintln!("pgtaskd: task {id}: some output went by that the tails no longer hold");
            }
            if !advance.stdout.is_empty() {
                print!("{}", advance.stdout);
                out_open = !advance.stdout.ends_with('\n');
                std::io::stdout().flush()?;
            }
            if !advance.stderr.is_empty() {
                eprint!("{}", advance.stderr);
                err_open = !advance.stderr.ends_with('\n');
            }
        }
        if let Some(code) = task_exit_code(&view.status) {
            end_lines(&mut out_open, &mut err_open);
            if code != 0 {
                eprintln!("pgtaskd: task {}", describe(&view.status));
            }
            return ended(code);
        }
        follower
            .next(|x| x == id, Some(Instant::now() + REREAD))
            .await?;
    }
}

/// Ends the lines a stream left open (tails are stored without their last newline).
fn end_lines(out_open: &mut bool, err_open: &mut bool) {
    if std::mem::take(out_open) {
        println!();
    }
    if std::mem::take(err_open) {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TaskState, code: Option<i32>, signal: Option<i32>) -> TaskStatus {
        TaskStatus {
            id: 1,
            state,
            exit_code: code,
            exit_signal: signal,
            error: None,
        }
    }

    #[test]
    fn final_tasks_map_to_the_documented_codes() {
        use TaskState::*;
        assert_eq!(task_exit_code(&status(Succeeded, Some(0), None)), Some(0));
        assert_eq!(task_exit_code(&status(Succeeded, None, None)), Some(0));
        assert_eq!(task_exit_code(&status(Failed, Some(3), None)), Some(3));
        assert_eq!(task_exit_code(&status(Failed, None, Some(9))), Some(137));
        assert_eq!(task_exit_code(&status(Failed, None, None)), Some(126));
        assert_eq!(task_exit_code(&status(Failed, Some(0), None)), Some(126));
        assert_eq!(task_exit_code(&status(Failed, Some(256), None)), Some(1));
        assert_eq!(
            task_exit_code(&status(Cancelled, None, Some(15))),
            Some(125)
        );
        assert_eq!(task_exit_code(&status(Executing, None, None)), None);
        assert_eq!(task_exit_code(&status(Waiting, None, None)), None);
    }
}
