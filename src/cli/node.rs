//! `pgtaskd node` settings: the flags and environment variables of a node, layered over its
//! config file (flags beat env beat file beat defaults). Must never start anything itself.

use std::path::PathBuf;

use clap::Args;

use pgtaskd::config::NodeConfig;

/// Node settings; each flag beats its environment variable, which beats the config file.
#[derive(Debug, Clone, Args, Default)]
pub struct NodeArgs {
    /// Worker id (positional form of --worker-id).
    #[arg(value_name = "WORKER_ID", conflicts_with = "worker_id")]
    pub pos_worker_id: Option<i64>,
    /// Group id (positional form of --group-id).
    #[arg(value_name = "GROUP_ID", conflicts_with = "group_id")]
    pos_group_id: Option<i32>,
    /// Process limit (positional form of --max-tasks).
    #[arg(value_name = "MAX_TASK_COUNT", conflicts_with = "max_tasks")]
    pos_max_tasks: Option<u32>,
    /// Node name (positional form of --node-name).
    #[arg(value_name = "NODE_NAME", conflicts_with = "node_name")]
    pos_node_name: Option<String>,

    /// TOML configuration file.
    #[arg(long, env = "PGTASKD_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// This node's id in long_task.worker (allocated when unset).
    #[arg(long, env = "PGTASKD_WORKER_ID")]
    pub worker_id: Option<i64>,
    /// The task group this node serves.
    #[arg(long, env = "PGTASKD_GROUP_ID")]
    pub group_id: Option<i32>,
    /// At most this many tasks at once.
    #[arg(long, env = "PGTASKD_MAX_TASKS")]
    pub max_tasks: Option<u32>,
    /// Name shown in long_task.worker.node_name.
    #[arg(long, env = "PGTASKD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Heartbeat interval (e.g. 2s, 500ms).
    #[arg(long, env = "PGTASKD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<std::time::Duration>,
    /// A node silent for this long counts as dead.
    #[arg(long, env = "PGTASKD_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<std::time::Duration>,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, env = "PGTASKD_KILL_GRACE", value_parser = humantime::parse_duration)]
    pub kill_grace: Option<std::time::Duration>,
    /// How long running tasks may finish after SIGTERM before they are killed and re-queued.
    #[arg(long, env = "PGTASKD_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<std::time::Duration>,
    /// Least time between two coordinator rounds (e.g. 250ms).
    #[arg(long, env = "PGTASKD_COORDINATOR_INTERVAL", value_parser = humantime::parse_duration)]
    pub coordinator_interval: Option<std::time::Duration>,
    /// Most dedicated watcher sessions of the coordinator (one per watched node; the others are
    /// polled every coordinator interval; default 8).
    #[arg(long, env = "PGTASKD_WATCH_SESSIONS")]
    pub watch_sessions: Option<usize>,
    /// Local state directory (the outcome spool).
    #[arg(long, env = "PGTASKD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Lines of stdout/stderr kept per run.
    #[arg(long, env = "PGTASKD_TAIL_LINES")]
    pub tail_lines: Option<usize>,
    /// How often a running task's output tails are written to its row (e.g. 1s; 0s: off).
    #[arg(long, env = "PGTASKD_LIVE_OUTPUT_INTERVAL", value_parser = humantime::parse_duration)]
    pub live_output_interval: Option<std::time::Duration>,
    /// Capture every task's full output, up to this size per stream (e.g. 10MiB; 0: off).
    #[arg(long, env = "PGTASKD_OUTPUT_CAPTURE_BYTES", value_parser = pgtaskd::resources::parse_bytes)]
    pub output_capture_bytes: Option<u64>,
    /// Delete captured output older than this (e.g. 7days).
    #[arg(long, env = "PGTASKD_OUTPUT_CAPTURE_KEEP", value_parser = humantime::parse_duration)]
    pub output_capture_keep: Option<std::time::Duration>,
    /// Base directory for relative task cwd values.
    #[arg(long, env = "PGTASKD_CWD_ROOT")]
    pub cwd_root: Option<PathBuf>,
    /// Database pool size.
    #[arg(long, env = "PGTASKD_POOL_SIZE")]
    pub pool_size: Option<u32>,
    /// Serve the HTTP API, /metrics and the status page on this address (e.g. 127.0.0.1:8080).
    #[arg(long, env = "PGTASKD_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// File of HTTP bearer tokens (`read <token>` / `write <token>` lines; tokens themselves
    /// are never taken from the command line).
    #[arg(long, env = "PGTASKD_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Claim nothing while the host's available memory is under this size (e.g. 512MiB; 0: off).
    #[arg(long, env = "PGTASKD_MIN_FREE_MEMORY", value_parser = pgtaskd::resources::parse_bytes)]
    pub min_free_memory: Option<u64>,
    /// Warn (status page, /cluster) when a transaction has held the vacuum horizon back this long.
    #[arg(long, env = "PGTASKD_HORIZON_WARNING", value_parser = humantime::parse_duration)]
    pub horizon_warning: Option<std::time::Duration>,
    /// Do not apply migrations at start-up; refuse to run on an older schema instead.
    #[arg(long)]
    pub no_migrate: bool,
}

impl NodeArgs {
    /// Layers flags and environment (clap already merged those) over the file over the defaults.
    pub fn resolve(&self) -> anyhow::Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($field:ident, $value:expr) => {
                if let Some(v) = $value {
                    cfg.$field = v;
                }
            };
        }
        if let Some(url) = self.database_url.clone() {
            cfg.database_url = Some(url);
        }
        if let Some(id) = self.pos_worker_id.or(self.worker_id) {
            cfg.worker_id = Some(id);
        }
        set!(group_id, self.pos_group_id.or(self.group_id));
        set!(max_tasks, self.pos_max_tasks.or(self.max_tasks));
        if let Some(name) = self.pos_node_name.clone().or(self.node_name.clone()) {
            cfg.node_name = Some(name);
        }
        set!(heartbeat_interval, self.heartbeat_interval);
        set!(heartbeat_timeout, self.heartbeat_timeout);
        set!(kill_grace, self.kill_grace);
        set!(shutdown_grace, self.shutdown_grace);
        set!(tail_lines, self.tail_lines);
        set!(live_output_interval, self.live_output_interval);
        set!(output_capture_bytes, self.output_capture_bytes);
        set!(output_capture_keep, self.output_capture_keep);
        set!(coordinator_interval, self.coordinator_interval);
        set!(watch_sessions, self.watch_sessions);
        if let Some(dir) = self.state_dir.clone() {
            cfg.state_dir = Some(dir);
        }
        if let Some(n) = self.pool_size {
            cfg.pool_size = Some(n);
        }
        if let Some(root) = self.cwd_root.clone() {
            cfg.cwd_root = Some(root);
        }
        if let Some(addr) = self.http {
            cfg.http = Some(addr);
        }
        if let Some(file) = self.http_token_file.clone() {
            cfg.http_token_file = Some(file);
        }
        set!(min_free_memory, self.min_free_memory);
        set!(horizon_warning, self.horizon_warning);
        if self.no_migrate {
            cfg.auto_migrate = false;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
