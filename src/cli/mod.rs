//! The command line: verbs, their flags, logging set-up and exit codes. One file per verb group:
//! `node.rs` (node settings), `dev.rs`, `tasks.rs` (submit, ls, show, cancel, requeue, logs),
//! `follow.rs` (wait, logs -f, submit --wait), `control.rs` (hand-over),
//! `status.rs`, `config.rs`, `output.rs` (exit codes, tables, JSON) and `logging.rs`.
//!
//! Owns turning user input into library calls and printing their results. Must never hold
//! business logic or SQL of its own (the statements live in `pgtaskd::db`).

mod config;
mod control;
mod dev;
mod follow;
mod generate;
mod logging;
mod node;
pub mod output;
mod status;
mod tasks;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use pgtaskd::config::LogFormat;

pub use generate::command;
pub use logging::init_logging;
pub use node::NodeArgs;
pub use output::Failure;

const EXIT_CODES: &str = "Exit codes:
  0  ok
  1  error (database unreachable, query failed, anything unexpected)
  2  usage (unknown flag, bad value on the command line)
  3  not found (no task, or no node for hand-over, with that id)
  4  refused (the task's state does not allow it, or the database refused the values)
  5  invalid configuration
  wait, logs -f and submit --wait end with the code of the tasks they followed: 0 all
  succeeded, else the first failed task's exit code (128+N for signal N), 125 cancelled,
  126 failed without an exit status, 124 --timeout passed first (see `pgtaskd wait --help`)";

/// A clustered task dispatcher and scheduler for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgtaskd", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log format (default: pretty, or the config file's `log_format`). Filter with RUST_LOG.
    #[arg(long, global = true, env = "PGTASKD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

/// How the client verbs reach the database and print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Print JSON for machines instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema migrations to the database (safe to run from many hosts at once).
    #[command(after_help = "Example:\n  pgtaskd migrate --database-url postgresql://app@db/app")]
    Migrate {
        /// PostgreSQL connection string.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Run a node: claim tasks of a group and run them as OS processes.
    ///
    /// The reference's positional form works too: `pgtaskd node 1 0 4 alpha` is
    /// `--worker-id 1 --group-id 0 --max-tasks 4 --node-name alpha`.
    #[command(
        after_help = "Examples:\n  DATABASE_URL=postgresql://app@db/app pgtaskd node --worker-id 1 --max-tasks 8\n  pgtaskd node 1 0 4 alpha --database-url postgresql://app@db/app\n  pgtaskd node --config cluster-configs/node.toml --http 127.0.0.1:8080 --log-format logfmt"
    )]
    Node(Box<NodeArgs>),
    /// Start a local PostgreSQL cluster under ./.pgtaskd (unless DATABASE_URL is set) and nodes on it.
    Dev(dev::DevArgs),
    /// Queue a task: `pgtaskd submit [options] -- PROGRAM ARGS...`; prints its id.
    #[command(after_help = tasks::SUBMIT_EXAMPLES)]
    Submit(Box<tasks::SubmitArgs>),
    /// List tasks, newest first.
    #[command(after_help = tasks::LS_EXAMPLES)]
    Ls(tasks::LsArgs),
    /// Show one task: its row, attempts and output tails.
    #[command(
        after_help = "Examples:\n  pgtaskd show 42\n  pgtaskd show 42 --json | jq .state_id"
    )]
    Show(tasks::IdArgs),
    /// Cancel a task: a waiting one ends CC at once, a running one is killed (whole process group).
    #[command(
        after_help = "Examples:\n  pgtaskd cancel 42\n  pgtaskd cancel 42 || echo \"exit $? (3: no such task, 4: already final)\""
    )]
    Cancel(tasks::IdArgs),
    /// Queue a finished (or draft) task again, as a new attempt.
    #[command(after_help = "Example:\n  pgtaskd requeue 42")]
    Requeue(tasks::IdArgs),
    /// Print a task's output tails: stdout to stdout, stderr to stderr; -f follows it to its end.
    #[command(after_help = follow::LOGS_EXAMPLES)]
    Logs(tasks::LogsArgs),
    /// Wait until tasks are final; exit 0 when all succeeded, else the first failure's code.
    #[command(after_help = follow::WAIT_EXAMPLES)]
    Wait(follow::WaitArgs),
    /// Hand a node's tasks over to the other nodes of its group: it claims nothing from now on,
    /// and its running tasks are killed and queued again (or, with --wait-for-finish, finish on it).
    ///
    /// A top-level verb: `pgtaskd node` takes the reference's positional arguments.
    #[command(after_help = control::HAND_OVER_EXAMPLES)]
    HandOver(control::HandOverArgs),
    /// Cluster overview: nodes, coordinators, queues, running tasks.
    #[command(
        alias = "cluster",
        after_help = "Examples:\n  pgtaskd status\n  pgtaskd status --json | jq '.nodes[] | select(.alive)'"
    )]
    Status(status::StatusArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print a shell completion script: `pgtaskd completions bash > /etc/bash_completion.d/pgtaskd`.
    #[command(
        after_help = "Examples:\n  pgtaskd completions bash > ~/.local/share/bash-completion/completions/pgtaskd\n  pgtaskd completions zsh > \"${fpath[1]}/_pgtaskd\"\n  pgtaskd completions fish > ~/.config/fish/completions/pgtaskd.fish"
    )]
    Completions(generate::CompletionsArgs),
    /// Print the manual page (roff), or write one page per verb with --out-dir.
    #[command(
        after_help = "Examples:\n  pgtaskd man | man -l -\n  pgtaskd man --out-dir /usr/local/share/man/man1"
    )]
    Man(generate::ManArgs),
}

/// Runs the chosen verb.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { database_url } => {
            init_logging(cli.log_format.unwrap_or_default(), None);
            let rt = runtime()?;
            rt.block_on(async {
                let mut client = pgtaskd::db::connect_dedicated(&database_url, "migrate").await?;
                let report = pgtaskd::db::migrate::migrate(&mut client).await?;
                if report.applied.is_empty() && !report.schema_files_applied {
                    println!("schema is up to date (version {})", report.to_version);
                } else if report.applied.is_empty() {
                    println!(
                        "schema functions, triggers and views updated (version {})",
                        report.to_version
                    );
                } else {
                    println!(
                        "schema migrated from version {} to {} (applied {:?})",
                        report.from_version, report.to_version, report.applied
                    );
                }
                if !report.missing_roles.is_empty() {
                    eprintln!(
                        "warning: the roles {} do not exist and this role may not create them (it needs CREATEROLE); \
                         their grants were skipped. As a superuser run: {} then `pgtaskd migrate` again (docs/security.md)",
                        report.missing_roles.join(", "),
                        pgtaskd::db::migrate::create_roles_sql(&report.missing_roles)
                    );
                }
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Node(args) => {
            let config = args
                .resolve()
                .map_err(|e| Failure::config(format!("invalid node configuration: {e:#}")))?;
            init_logging(
                cli.log_format.unwrap_or(config.log_format),
                config.log_level.as_deref(),
            );
            // SIGHUP reads the configuration again exactly as now: these flags and environment
            // over the file.
            let source = (*args).clone();
            let options = pgtaskd::node::NodeOptions {
                reload: Some(pgtaskd::reload::ConfigSource::new(move || {
                    source.resolve().map_err(|e| format!("{e:#}"))
                })),
                ..pgtaskd::node::NodeOptions::default()
            };
            pgtaskd::node::run(config, options, "pgtaskd-worker", |_| {}).context("node failed")
        }
        Command::Dev(args) => {
            init_logging(cli.log_format.unwrap_or_default(), None);
            dev::run(args, cli.log_format)
        }
        Command::Config(cmd) => config::run(cmd),
        Command::Completions(args) => generate::completions(args),
        Command::Man(args) => generate::man(args),
        Command::Submit(args) => client(cli.log_format, tasks::submit(*args)),
        Command::Ls(args) => client(cli.log_format, tasks::ls(args)),
        Command::Show(args) => client(cli.log_format, tasks::show(args)),
        Command::Cancel(args) => client(cli.log_format, tasks::cancel(args)),
        Command::Requeue(args) => client(cli.log_format, tasks::requeue(args)),
        Command::Logs(args) => client(cli.log_format, tasks::logs(args)),
        Command::Wait(args) => client(cli.log_format, follow::wait(args)),
        Command::Status(args) => client(cli.log_format, status::run(args)),
        Command::HandOver(args) => client(cli.log_format, control::hand_over(args)),
    }
}

/// Runs a client verb: warnings-only logging (unless RUST_LOG says otherwise), one runtime.
fn client(
    format: Option<LogFormat>,
    verb: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    logging::init_client_logging(format.unwrap_or_default());
    runtime()?.block_on(verb)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// A connection for one client verb.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<tokio_postgres::Client> {
    Ok(pgtaskd::db::connect_dedicated(&args.database_url, "cli").await?)
}
