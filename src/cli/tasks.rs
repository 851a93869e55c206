//! Task verbs: `submit`, `ls`, `show`, `cancel`, `requeue`, `logs` (following is `follow.rs`'s). Parses the flags into the
//! library's `NewTask`/`TaskFilter`, calls `pgtaskd::db::tasks`, prints text or JSON and maps the
//! result to the documented exit codes. Must never build SQL.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use pgtaskd::db::codes::{Period, TaskState};
use pgtaskd::db::tasks::{self, NewTask, TaskError, TaskFilter, Transition};

use pgtaskd::db::codes::{DONE_CHANNEL, OUTPUT_CHANNEL};
use pgtaskd::db::follow::Follower;

use super::follow;
use super::output::{self, cell, print_json, print_table, shorten, Failure};
use super::{connect, ClientArgs};

pub const SUBMIT_EXAMPLES: &str = "Examples:
  pgtaskd submit -- echo hello
  id=$(pgtaskd submit --group 2 --priority -5 --timeout 10m -- ./backup.sh --full)
  pgtaskd submit --at 2030-01-01T03:00:00Z -- ./yearly.sh
  pgtaskd submit --at +30m -- ./later.sh
  pgtaskd submit --every 10s -- ./poll.sh                 (runs now, then every 10 s)
  pgtaskd submit --every 1h --clone -- ./hourly.sh %TASK  (a new task each hour)
  pgtaskd submit --cron '30 2 * * *' --timezone Europe/Berlin -- ./nightly.sh
  pgtaskd submit --cron '*/10 * * * * *' --clone -- ./probe.sh  (six fields: seconds first)
  pgtaskd submit --max-attempts 3 --cwd /srv/app --json -- make report
  pgtaskd submit --wait --wait-timeout 10m -- ./job.sh    (exit code: the task's, as `wait`)
  pgtaskd submit --follow -- make test                    (its output as it runs, then its code)";

pub const LS_EXAMPLES: &str = "Examples:
  pgtaskd ls
  pgtaskd ls --state AW,AE --group 2 --limit 10
  pgtaskd ls --state CF --json | jq '.[].id'";

/// `submit` flags.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("schedule").args(["every", "cron"])))]
pub struct SubmitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Task group (nodes serve one group each).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    group: i32,
    /// Lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// First run at this time: RFC 3339 (2030-01-01T03:00:00Z) or +DURATION from now (+30m).
    #[arg(long, value_parser = parse_at)]
    at: Option<At>,
    /// Run again every DURATION (10s, 5m, 1h, 1day, 2weeks, 1month): a schedule.
    #[arg(long, value_parser = parse_every)]
    every: Option<Every>,
    /// Run at each slot of a cron expression: five fields (minute hour day month weekday) or six
    /// (seconds first); `*/5`, ranges, lists, `L`, `#`, month and day names.
    #[arg(long, value_parser = parse_cron)]
    cron: Option<String>,
    /// With --cron: the IANA time zone it is read in (default UTC), e.g. Europe/Berlin.
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    /// With --every or --cron: each firing queues a new copy (the submitted task is the template).
    #[arg(long, requires = "schedule")]
    clone: bool,
    /// Attempts before the task counts as failed.
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Kill the task after this long (e.g. 90s, 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Working directory (relative ones are relative to the node's cwd_root).
    #[arg(long)]
    cwd: Option<String>,
    /// Pin the task to this node (worker id).
    #[arg(long)]
    worker: Option<i64>,
    /// Parameters (JSON) stored with the task.
    #[arg(long, value_parser = parse_json)]
    params: Option<Value>,
    /// Wait until the task is final and exit like `pgtaskd wait` (prints the id first).
    #[arg(long, conflicts_with = "follow")]
    wait: bool,
    /// Print the task's output as it arrives until it is final, then exit like `pgtaskd wait`.
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --wait or --follow: give up after this long (exit 124).
    #[arg(long = "wait-timeout", value_parser = humantime::parse_duration)]
    wait_timeout: Option<Duration>,
    /// The program and its arguments (after `--`); `%TASK` becomes the task id.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum At {
    Time(chrono::DateTime<chrono::Utc>),
    In(Duration),
}

fn parse_at(text: &str) -> Result<At, String> {
    if let Some(rel) = text.strip_prefix('+') {
        return humantime::parse_duration(rel)
            .map(At::In)
            .map_err(|e| format!("`{text}`: {e}"));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| At::Time(t.with_timezone(&chrono::Utc)))
        .map_err(|e| {
            format!("`{text}` is neither RFC 3339 (2030-01-01T03:00:00Z) nor +DURATION: {e}")
        })
}

/// A period as the schema stores it: a period code and a count.
#[derive(Debug, Clone, PartialEq)]
struct Every {
    period: &'static str,
    count: i32,
    seconds: f64,
}

fn parse_every(text: &str) -> Result<Every, String> {
    let lower = text.trim().to_ascii_lowercase();
    // Months follow the calendar: only whole months map to MON.
    for suffix in ["months", "month", "mon"] {
        if let Some(n) = lower.strip_suffix(suffix) {
            let count: i32 = n
                .trim()
                .parse()
                .map_err(|_| format!("`{text}`: bad month count"))?;
            if count < 1 {
                return Err(format!("`{text}`: must be at least one month"));
            }
            return Ok(Every {
                period: Period::Month.code(),
                count,
                seconds: f64::from(count) * 30.0 * 86400.0,
            });
        }
    }
    let d = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(format!(
            "`{text}`: a period is a whole number of seconds, at least 1s"
        ));
    }
    let secs = d.as_secs();
    // the largest period that divides it: 14 days are 2 WEE, 90 minutes 90 MIN
    let (period, unit) = Period::ALL
        .into_iter()
        .rev()
        .filter_map(|p| p.seconds().map(|unit| (p.code(), unit)))
        .find(|(_, unit)| secs % unit == 0)
        .unwrap_or((Period::Second.code(), 1));
    let count = i32::try_from(secs / unit).map_err(|_| format!("`{text}` is too long"))?;
    Ok(Every {
        period,
        count,
        seconds: secs as f64,
    })
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// A cron expression the scheduler can evaluate (its time zone is checked with the task).
fn parse_cron(text: &str) -> Result<String, String> {
    pgtaskd::cron::CronSchedule::parse(text, None)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

impl SubmitArgs {
    /// The task to insert. Scheduling: `--at` alone runs once at that time; `--every` alone runs
    /// now and then every period; `--at --every` starts the schedule at that time; `--clone`
    /// keeps the submitted task as a template (a draft) that queues a copy at each firing.
    /// `--cron` makes a draft that fires at each slot of the expression (from `--at` on, else
    /// from now: the first firing is the first slot).
    fn new_task(&self) -> NewTask {
        let mut task = NewTask {
            command: Some(self.command.clone()),
            params: self.params.clone(),
            priority: Some(self.priority),
            group_id: Some(self.group),
            worker_id: self.worker,
            cwd: self.cwd.clone(),
            max_attempts: self.max_attempts,
            timeout: self.timeout.map(|t| t.as_secs_f64()),
            ..NewTask::default()
        };
        match self.at {
            Some(At::Time(t)) => task.next_start = Some(t),
            Some(At::In(d)) => task.next_start_in = Some(d.as_secs_f64()),
            None => {}
        }
        if let Some(every) = &self.every {
            task.shed_period_id = Some(every.period.to_owned());
            task.shed_period_count = Some(every.count);
            task.shed_clone = Some(self.clone);
            if self.at.is_none() {
                // A clone template fires at once; a re-run schedule runs now and fires next later.
                task.next_start_in = Some(if self.clone { 0.0 } else { every.seconds });
            }
        }
        if let Some(expr) = &self.cron {
            task.shed_cron = Some(expr.clone());
            task.shed_timezone = self.timezone.clone();
            task.shed_clone = Some(self.clone);
        }
        let waits = self.at.is_some() || self.clone || self.cron.is_some();
        task.state_id = Some(if waits { "DR" } else { "AW" }.to_owned());
        task
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let task = args.new_task();
    if args.wait_timeout.is_some() && !(args.wait || args.follow) {
        return Err(Failure::usage("--wait-timeout needs --wait or --follow"));
    }
    if args.wait || args.follow {
        return submit_and_follow(&args, &task).await;
    }
    let client = connect(&args.client).await?;
    let id = tasks::submit(&client, &task)
        .await
        .map_err(submit_failure)?;
    if args.client.json {
        print_json(&json!({ "id": id }))
    } else {
        println!("{id}");
        Ok(())
    }
}

fn submit_failure(e: TaskError) -> anyhow::Error {
    match e {
        TaskError::Field(e) => Failure::usage(e.to_string()),
        TaskError::Refused(m) => Failure::refused(m),
        e => e.into(),
    }
}

/// `submit --wait` / `--follow`: listens first, submits on the same connection, prints the id
/// (to stderr when following, so stdout is the task's), then follows it.
async fn submit_and_follow(args: &SubmitArgs, task: &NewTask) -> anyhow::Result<()> {
    let channels = [DONE_CHANNEL, OUTPUT_CHANNEL];
    let mut follower =
        Follower::connect(&args.client.database_url, "cli submit", &channels).await?;
    let id = tasks::submit(follower.client(), task)
        .await
        .map_err(submit_failure)?;
    if args.follow {
        eprintln!("pgtaskd: task {id}");
        let follow = follow::follow_output(&mut follower, id);
        return match args.wait_timeout {
            Some(limit) => tokio::time::timeout(limit, follow)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        code: output::exit::TASK_TIMEOUT,
                        message: format!("timed out following task {id}"),
                    }
                    .into())
                }),
            None => follow.await,
        };
    }
    if !args.client.json {
        println!("{id}");
    }
    follow::wait_on(&mut follower, &[id], args.wait_timeout, args.client.json).await
}

/// `logs` flags.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Follow: print new output as it arrives until the task is final, then exit with its code.
    #[arg(long, short = 'f')]
    follow: bool,
    /// The task id.
    id: i64,
}

/// `ls` flags.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only these states (DR AW AE AC CS CF CC; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    state: Vec<TaskState>,
    /// Only this group.
    #[arg(long, allow_negative_numbers = true)]
    group: Option<i32>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

fn parse_state(text: &str) -> Result<TaskState, String> {
    TaskState::from_code(&text.to_ascii_uppercase())
        .ok_or_else(|| format!("unknown state `{text}` (known: DR AW AE AC CS CF CC)"))
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let filter = TaskFilter {
        states: args.state.clone(),
        group_id: args.group,
        limit: args.limit,
    };
    let rows = tasks::list(&client, &filter).await?;
    if args.client.json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                cell(r.get("id")),
                cell(r.get("state_id")),
                cell(r.get("group_id")),
                cell(r.get("priority")),
                format!("{}/{}", cell(r.get("attempt")), cell(r.get("max_attempts"))),
                cell(r.get("worker_id")),
                shorten(&cell(r.get("command")), 60),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "STATE", "GROUP", "PRIO", "ATTEMPT", "WORKER", "COMMAND",
        ],
        &table,
    );
    Ok(())
}

/// A verb on one task.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The task id.
    id: i64,
}

async fn fetch(args: &IdArgs) -> anyhow::Result<Value> {
    let client = connect(&args.client).await?;
    tasks::get(&client, args.id)
        .await?
        .ok_or_else(|| Failure::not_found(args.id))
}

pub async fn show(args: IdArgs) -> anyhow::Result<()> {
    let row = fetch(&args).await?;
    if args.client.json {
        return print_json(&row);
    }
    let Value::Object(map) = &row else {
        return print_json(&row);
    };
    let tails = ["stdout_tail", "stderr_tail"];
    for (key, value) in map.iter().filter(|(k, _)| !tails.contains(&k.as_str())) {
        println!("{key:>18}: {}", cell(Some(value)));
    }
    for key in tails {
        if let Some(Value::String(text)) = map.get(key) {
            println!("--- {key} ---");
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    if args.follow {
        return follow::follow_logs(&args.client, args.id).await;
    }
    let row = fetch(&IdArgs {
        client: args.client.clone(),
        id: args.id,
    })
    .await?;
    if args.client.json {
        return print_json(&json!({
            "id": args.id,
            "state_id": row.get("state_id"),
            "stdout_tail": row.get("stdout_tail"),
            "stderr_tail": row.get("stderr_tail"),
        }));
    }
    // Tails are stored without their last newline; a non-empty one gets it back.
    let line_end = |t: &str| {
        if t.is_empty() || t.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    };
    if let Some(Value::String(out)) = row.get("stdout_tail") {
        print!("{out}{}", line_end(out));
    }
    if let Some(Value::String(err)) = row.get("stderr_tail") {
        eprint!("{err}{}", line_end(err));
    }
    Ok(())
}

fn report(args: &IdArgs, verb: &str, result: Transition) -> anyhow::Result<()> {
    match result {
        Transition::NotFound => Err(Failure::not_found(args.id)),
        Transition::Refused(state) => Err(Failure::refused(format!(
            "cannot {verb} task {}: it is in state {state}",
            args.id
        ))),
        Transition::Done { before, after } => {
            if args.client.json {
                print_json(&json!({ "id": args.id, "before": before, "after": after }))
            } else {
                println!("task {}: {before} -> {after}", args.id);
                Ok(())
            }
        }
    }
}

pub async fn cancel(args: IdArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let result = tasks::cancel(&client, args.id).await?;
    report(&args, "cancel", result)
}

pub async fn requeue(args: IdArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let result = tasks::requeue(&client, args.id).await?;
    report(&args, "requeue", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_map_to_the_schema() {
        let e = parse_every("10s").expect("10s");
        assert_eq!((e.period, e.count), ("SEC", 10));
        let e = parse_every("90m").expect("90m");
        assert_eq!((e.period, e.count), ("MIN", 90));
        let e = parse_every("2h").expect("2h");
        assert_eq!((e.period, e.count), ("HOU", 2));
        let e = parse_every("14days").expect("14days");
        assert_eq!((e.period, e.count), ("WEE", 2));
        let e = parse_every("3months").expect("3 months");
        assert_eq!((e.period, e.count), ("MON", 3));
        assert!(parse_every("500ms").is_err());
        assert!(parse_every("soon").is_err());
    }

    #[test]
    fn at_accepts_times_and_offsets() {
        assert!(matches!(parse_at("+5m"), Ok(At::In(d)) if d == Duration::from_secs(300)));
        assert!(matches!(parse_at("2030-01-01T03:00:00Z"), Ok(At::Time(_))));
        assert!(parse_at("tomorrow").is_err());
    }
}
