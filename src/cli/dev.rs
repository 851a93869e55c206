//! `pgtaskd dev`: the embedded default. Without `DATABASE_URL` it creates (first run) or reuses a
//! local PostgreSQL cluster under `./.pgtaskd/`, migrates it, starts N node processes on it,
//! prints how to connect, and on Ctrl-C stops the nodes (they drain and re-queue) and the cluster.
//!
//! Node 1 serves HTTP (the console, the API, `/metrics`) on `127.0.0.1:8080` by default, or the
//! next free port when that one is taken (probed here, then handed to the node: another program
//! could take it in between, and then node 1 fails to start and says so); `--http off` serves
//! nothing, `--http ADDR` picks another loopback address (dev configures no tokens).
//!
//! Must never touch a database given by `DATABASE_URL` beyond migrating it.

use std::net::{SocketAddr, TcpListener, TcpStream};
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
    /// Where node 1 serves HTTP (console, API, /metrics): a loopback address, tried and then the
    /// next ports up while taken; `off` serves nothing.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_http, value_name = "ADDR|off")]
    http: Http,
}

/// `--http`: off, or where to start looking for a free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    Off,
    On(SocketAddr),
}

fn parse_http(text: &str) -> Result<Http, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Http::Off);
    }
    let addr: SocketAddr = text.parse().map_err(|e| {
        format!("'{text}' is neither `off` nor an address like 127.0.0.1:8080: {e}")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: `dev` configures no HTTP tokens; run `pgtaskd node` with http_token_file to serve other hosts (docs/security.md)"
        ));
    }
    Ok(Http::On(addr))
}

/// How many ports after the asked one are tried.
const PORT_TRIES: u16 = 20;

/// The first address from `addr` up (`PORT_TRIES` ports) that can be bound now; port 0 lets the
/// system choose.
fn free_address(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let mut last = None;
    for step in 0..PORT_TRIES {
        let Some(port) = addr.port().checked_add(step) else {
            break;
        };
        let candidate = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(candidate) {
            Ok(listener) => return Ok(listener.local_addr().unwrap_or(candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
                last = Some(e);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot serve HTTP on {candidate}")),
        }
    }
    let last = last.map(|e| e.to_string()).unwrap_or_default();
    anyhow::bail!(
        "no free port for HTTP from {addr} up ({PORT_TRIES} tried, {last}): pass --http ADDR or --http off"
    )
}

/// Waits until `addr` accepts connections (node 1 bound it) or `child` exits; false on timeout.
async fn wait_http(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
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
    let http = match args.http {
        Http::Off => None,
        Http::On(addr) => Some(free_address(addr)?),
    };
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
        if let (1, Some(addr)) = (i, http) {
            cmd.arg("--http").arg(addr.to_string());
        }
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
            // `dev` is not a service: its nodes must not speak to a service manager
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            // own process group: a terminal Ctrl-C reaches only us, and we stop the nodes in order
            .process_group(0);
        children.push(cmd.spawn().context("starting a node")?);
    }

    let console = match (http, children.first_mut()) {
        (Some(addr), Some(first)) => {
            if !wait_http(addr, first).await {
                eprintln!("node 1 does not answer on http://{addr}/ yet (see its log above)");
            }
            Some(addr)
        }
        _ => None,
    };

    println!();
    println!("pgtaskd is running: {} node(s).", args.nodes);
    if let Some(addr) = console {
        println!("  console:  http://{addr}/");
    }
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
