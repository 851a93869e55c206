//! `chaos`: the chaos harness (docs/design.md §4's guarantees under faults). Starts a throw-away
//! PostgreSQL and N real `pgtaskd node` processes, feeds tasks that record each execution (task id
//! and run id appended to a file), injects faults at random from a printed seed for a bounded
//! time, then lets the cluster settle and checks the invariants (see `check.rs`). Exit 1 on any
//! violation; the last line is a summary.
//!
//!   short (CI):  chaos --duration 40s
//!   soak:        chaos --duration 10m --rate 40 --max-task-secs 0.3 --fault-every 2s
//!   failover:    chaos --duration 60s --pg-failover-every 15s   (a primary and a standby)
//!
//!   soak with every fault (30 min, README):
//!                chaos --duration 30m --pg-failover-every 60s --fault-every 3s
//!
//! Each node talks to PostgreSQL through its own proxy (`proxy.rs`: a port per server, so with a
//! standby the node's multi-host URL still names both), which the `partition` fault blackholes
//! for a while (sockets open, nothing forwarded); not with `--no-partition`.
//!
//! Owns only what it starts (its cluster directory, its PostgreSQL, its nodes): it must never
//! signal any other process.

mod check;
mod faults;
mod overlap;
mod postgres;
mod proxy;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rand::{Rng, SeedableRng};

use faults::{Counts, Nodes};
use pgtaskd::pgcluster::create_database;
use postgres::Postgres;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "pgtaskd chaos harness: faults at random, then invariants"
)]
struct Args {
    /// How long to inject faults (then the cluster settles and is checked).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Tasks queued per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Longest task run time in seconds (each task sleeps a random time up to this).
    #[arg(long, default_value_t = 1.5)]
    max_task_secs: f64,
    /// Mean time between faults.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Random seed (printed; a run's fault sequence follows from it, its timing does not).
    #[arg(long)]
    seed: Option<u64>,
    /// Node heartbeat timeout (death of a hung node; SIGSTOPs last longer than this).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Never restart PostgreSQL.
    #[arg(long)]
    no_pg_restart: bool,
    /// No `partition` fault: the nodes connect to PostgreSQL directly, not through a proxy each.
    #[arg(long)]
    no_partition: bool,
    /// Run PostgreSQL as a primary with a synchronous streaming standby, the nodes on a
    /// multi-host URL, and fail over to the standby this often (the `pg_failover` fault: kill
    /// the primary, promote the standby, rebuild the old primary as its standby).
    #[arg(long, value_parser = humantime::parse_duration)]
    pg_failover_every: Option<Duration>,
    /// Working directory (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory (cluster, node logs, execution log) afterwards.
    #[arg(long)]
    keep: bool,
    /// The group's cluster-wide concurrency limit (group_settings.max_running; 0: none). The
    /// checker proves it held (overlap of runs from task_run, lost runs counted until handed back).
    #[arg(long, default_value_t = 16)]
    max_running: i32,
    /// The per-key limit over the feeder's three concurrency keys (0: none).
    #[arg(long, default_value_t = 6)]
    key_limit: i32,
    /// How long the cluster may take to finish every task after the faults stop.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<usize> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("chaos: seed {seed} (rerun with --seed {seed})");
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("pgtaskd-chaos-{}-{seed}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let exe = sibling_exe("pgtaskd")?;

    let mut pg = Postgres::start(&dir, args.pg_failover_every.is_some()).await?;
    // Ctrl-C or SIGTERM ends the run early; dropping it kills the nodes, then PostgreSQL stops.
    let result = tokio::select! {
        result = run_on(&args, seed, &dir, &exe, &mut pg) => result,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    pg.stop();
    if !args.keep && result.as_ref().is_ok_and(|v| *v == 0) {
        let _ = std::fs::remove_dir_all(&dir);
        pg.remove_sockets();
    } else {
        println!("chaos: kept {}", dir.display());
    }
    result
}

async fn run_on(
    args: &Args,
    seed: u64,
    dir: &std::path::Path,
    exe: &std::path::Path,
    pg: &mut Postgres,
) -> anyhow::Result<usize> {
    create_database(&pg.primary().url("postgres"), "chaos").await?;
    let url = pg.url("chaos");
    {
        let mut client = pgtaskd::db::connect_dedicated(&url, "chaos").await?;
        pgtaskd::db::migrate::migrate(&mut client).await?;
        client
            .batch_execute("CREATE TABLE chaos_cancel (task_id bigint NOT NULL)")
            .await?;
        let limit = |n: i32| (n > 0).then_some(n);
        client
            .execute(
                "INSERT INTO long_task.group_settings (group_id, max_running, key_limit) VALUES (0, $1, $2)",
                &[&limit(args.max_running), &limit(args.key_limit)],
            )
            .await?;
    }
    let limits = check::Limits {
        max_running: (args.max_running > 0).then_some(args.max_running as usize),
        key_limit: (args.key_limit > 0).then_some(args.key_limit as usize),
    };
    let exec_log = dir.join("executions.log");
    std::fs::write(&exec_log, b"")?;
    // a proxy per node (the `partition` fault), a port per server of the multi-host URL
    let partitions = !args.no_partition;
    let mut nodes = Nodes::new(
        exe,
        &url,
        dir,
        args.nodes,
        args.heartbeat_timeout,
        partitions,
    )?;
    nodes.start_all()?;
    nodes.wait_ready(Duration::from_secs(30)).await?;

    warn_if_over_capacity(args);
    let feeder = faults::spawn_feeder(url.clone(), exec_log.clone(), args.rate, args.max_task_secs);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut counts = Counts::default();
    let deadline = Instant::now() + args.duration;
    println!(
        "chaos: {} nodes, {} tasks/s, a fault every ~{:?} for {:?}, limits {:?}{}",
        args.nodes,
        args.rate,
        args.fault_every,
        args.duration,
        limits,
        match args.pg_failover_every {
            Some(every) => format!(", a PostgreSQL failover every {every:?}"),
            None => String::new(),
        }
    );
    let mut failover_at = args.pg_failover_every.map(|every| Instant::now() + every);
    while Instant::now() < deadline {
        let mean = args.fault_every.as_secs_f64();
        let wait = Duration::from_secs_f64(rng.gen_range(mean * 0.5..mean * 1.5));
        let tick = Instant::now() + wait;
        while Instant::now() < tick {
            nodes.maintain(&mut counts)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let (Some(at), Some(every)) = (failover_at, args.pg_failover_every) {
            if Instant::now() >= at {
                faults::pg_failover(pg, &mut counts).await?;
                failover_at = Some(Instant::now() + every);
                continue;
            }
        }
        faults::inject(
            &mut rng,
            &mut nodes,
            pg,
            &url,
            !args.no_pg_restart,
            &mut counts,
        )
        .await;
    }
    let fed = feeder.stop().await;
    println!("chaos: faults over; settling");
    nodes.heal(&mut counts)?;
    if !pg.primary().is_running() {
        pg.primary()
            .start()
            .context("restarting PostgreSQL for the checks")?;
    }
    let settled = check::settle(&url, args.settle).await;
    nodes.stop_all(Duration::from_secs(30)).await;
    let report = check::run(&url, &exec_log, fed, &counts, settled, &limits).await?;
    println!(
        "chaos: seed={seed} tasks={} executions={} reruns={} most_running={} faults: {} violations={}",
        report.tasks,
        report.executions,
        report.reruns,
        report.most_running,
        counts.summary(),
        report.violations.len()
    );
    Ok(report.violations.len())
}

/// Says so when the offered load needs most of the slots the limits leave: faults take slots
/// away, so a backlog then builds up that `--settle` may not drain, and the check reports tasks
/// not final although nothing was lost (a run to redo with a lower `--rate` or
/// `--max-task-secs`, not a failure of the system).
fn warn_if_over_capacity(args: &Args) {
    let slots = [
        (args.nodes * faults::NODE_MAX_TASKS) as f64,
        if args.max_running > 0 {
            args.max_running as f64
        } else {
            f64::INFINITY
        },
        if args.key_limit > 0 {
            3.0 * args.key_limit as f64 // the feeder's three keys
        } else {
            f64::INFINITY
        },
    ]
    .into_iter()
    .fold(f64::INFINITY, f64::min);
    // tasks sleep uniformly up to max_task_secs: the mean is half of it
    let busy = args.rate as f64 * args.max_task_secs / 2.0;
    if busy > 0.6 * slots {
        println!(
            "chaos: warning: {} tasks/s of {:.2} s on average keep {busy:.1} slots busy of {slots} \
             the limits leave; with faults a backlog builds up that --settle may not drain \
             (lower --rate or --max-task-secs)",
            args.rate,
            args.max_task_secs / 2.0
        );
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A binary built next to this one (same target directory).
fn sibling_exe(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no parent directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("cannot find the {name} binary next to {}", me.display())
}
