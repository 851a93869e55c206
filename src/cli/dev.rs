//! `pgtaskd dev`: the embedded default. Without `DATABASE_URL` it creates (first run) or reuses a
//! local PostgreSQL cluster under `./.pgtaskd/`, migrates it, starts N node processes on it,
//! prints how to connect, and on Ctrl-C stops the nodes (they drain and re-queue) and the cluster.
//!
//! Must never touch a database given by `DATABASE_URL` beyond migrating it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use pgtaskd::config::LogFormat;
use pgtaskd::pgcluster::{create_database, PgCluster};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Process limit of each node.
    #[arg(long, default_value_t = 4)]
    max_tasks: u32,
    /// Where the embedded cluster lives.
    #[arg(long, default_value = ".pgtaskd")]
    dir: PathBuf,
    /// Use this database instead of the embedded cluster.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of per-node config files `node-<i>.toml` (node i uses the i-th; flags set only
    /// the database). Default with --nodes > 1: `cluster-configs/three-node` when it exists.
    #[arg(long)]
    cluster: Option<PathBuf>,
}

/// The config file of node `i`, if a cluster directory applies.
fn node_config(args: &DevArgs, i: u32) -> Option<PathBuf> {
    let dir = match &args.cluster {
        Some(dir) => dir.clone(),
        None if args.nodes > 1 => PathBuf::from("cluster-configs/three-node"),
        None => return None,
    };
    let file = dir.join(format!("node-{i}.toml"));
    file.is_file().then_some(file)
}

const DEV_DATABASE: &str = "pgtaskd";

pub fn run(args: DevArgs, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(run_async(args, log_format))
}

async fn run_async(args: DevArgs, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    if args.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let (url, cluster) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = std::path::absolute(&args.dir)
                .with_context(|| format!("resolving {}", args.dir.display()))?;
            let cluster = PgCluster::open_or_init(&dir.join("pg"))
                .context("preparing the embedded PostgreSQL cluster")?;
            cluster
                .start()
                .context("starting the embedded PostgreSQL cluster")?;
            create_database(&cluster.url("postgres"), DEV_DATABASE)
                .await
                .context("creating the pgtaskd database")?;
            (cluster.url(DEV_DATABASE), Some(cluster))
        }
    };
    let result = run_nodes(&args, &url, log_format).await;
    if let Some(cluster) = cluster {
        eprintln!("stopping the embedded PostgreSQL cluster");
        cluster
            .stop()
            .context("stopping the embedded PostgreSQL cluster")?;
    }
    result
}

async fn run_nodes(args: &DevArgs, url: &str, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let mut client = pgtaskd::db::connect_dedicated(url, "dev").await?;
    pgtaskd::db::migrate::migrate(&mut client).await?;
    drop(client);

    let exe = std::env::current_exe().context("finding the pgtaskd executable")?;
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=args.nodes {
        let mut cmd = Command::new(&exe);
        if let Some(format) = log_format {
            cmd.arg("--log-format").arg(match format {
                LogFormat::Pretty => "pretty",
                LogFormat::Logfmt => "logfmt",
                LogFormat::Json => "json",
            });
        }
        cmd.arg("node").arg("--database-url").arg(url);
        match node_config(args, i) {
            Some(file) => {
                println!("node {i}: {}", file.display());
                cmd.arg("--config").arg(file);
            }
            None => {
                cmd.arg("--worker-id")
                    .arg(i.to_string())
                    .arg("--max-tasks")
                    .arg(args.max_tasks.to_string())
                    .arg("--node-name")
                    .arg(format!("dev-{i}"));
            }
        }
        cmd.stdin(Stdio::null())
            // own process group: a terminal Ctrl-C reaches only us, and we stop the nodes in order
            .process_group(0);
        children.push(cmd.spawn().context("starting a node")?);
    }

    println!();
    println!("pgtaskd is running: {} node(s).", args.nodes);
    println!("  cluster:  pgtaskd status --database-url '{url}'");
    println!("  connect:  psql '{url}'");
    println!("  queue a task:");
    println!("    INSERT INTO long_task.task (group_id, state_id, priority, command)");
    println!("    VALUES (0, 'AW', 0, '{{echo,hello from task,%TASK}}') RETURNING id;");
    println!("  watch it: SELECT id, state_id, exit_code, stdout_tail FROM long_task.task ORDER BY id DESC LIMIT 5;");
    println!("Press Ctrl-C to stop.");
    println!();

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let exited = wait_any(&mut children);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        which = exited => eprintln!("node {which} exited; stopping the others"),
    }
    stop_children(&mut children).await;
    Ok(())
}

/// Resolves with the index (1-based) of the first child that exits.
async fn wait_any(children: &mut [Child]) -> usize {
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(_)) = child.try_wait() {
                return i + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every node (they drain and re-queue), then SIGKILL what is left after a bound.
async fn stop_children(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for child in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("a node did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
